"""The Dask cluster a run computes on.

By default a ``distributed.LocalCluster`` of one worker inside the run's own process,
with one thread per available core, allowed 80% of physical memory. Measured on the
run's own stages (``benchmarks/bench_cluster.py``, docs/performance.md), it cost 0.47
to 0.92 of the CPU time and half the peak memory of one single-threaded worker process
per core, with bit-identical outputs: the stages' work is numpy, GDAL, scipy and the
LAZ decoder, which release the GIL, and threads spare the pickling of every block
between processes. Threads are safe here: GDAL functions are
re-entrant as long as each thread uses its own dataset (every task opens its own), and
each LiDAR task decodes its tiles with its own ``laspy`` reader. ``processes: true`` in
the config's ``dask`` section gives one single-threaded worker process per core (for
work that holds the GIL); the section overrides each figure, and its
``dashboard_address`` where the dashboard listens (by default
``127.0.0.1`` on a free port: the dashboard has no authentication, so it is not offered
to the network unless the config asks), and with it the workers' own HTTP servers
(metrics, health, their diagnostic pages), which a worker in the run's process would
otherwise open on every interface; ``--scheduler tcp://HOST:PORT`` connects to an
existing cluster instead, which is how a run outgrows one machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dask
import psutil

from pipeline.config import DaskSettings
from pipeline.errors import ConfigError

#: share of physical memory the default local cluster may use
MEMORY_SHARE = 0.8


def local_cluster_size(settings: DaskSettings) -> tuple[int, int, int | str]:
    """(workers, threads per worker, memory limit per worker) for this machine."""
    cores = len(os.sched_getaffinity(0))
    n_workers = settings.n_workers or (cores if settings.processes else 1)
    threads = settings.threads_per_worker or max(1, cores // n_workers)
    memory: int | str = settings.memory_limit or int(
        psutil.virtual_memory().total * MEMORY_SHARE / n_workers
    )
    return n_workers, threads, memory


#: glibc's M_TRIM_THRESHOLD (``mallopt``'s parameter) and the value Dask's nanny gives the
#: worker processes it starts (``distributed.nanny.pre-spawn-environ``:
#: ``MALLOC_TRIM_THRESHOLD_=65536``)
M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD_BYTES = 65536


def trim_freed_heap() -> bool:
    """Hand freed heap memory back to the system as Dask's own worker processes do.

    glibc keeps what threads free up to a threshold that grows with the largest block
    freed, so a run whose chunk tasks free large arrays keeps growing (the LiDAR stage: +46
    % from 1x to 4x of the scale benchmark's copies, +9 % with the threshold at 64 KB).
    Dask sets the threshold for the worker processes its nanny starts; the default worker
    lives in the run's own process, so the run sets it here, with ``mallopt``. A no-op
    (False) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def dask_client(
    settings: DaskSettings, *, scheduler: str | None = None, shared: Sequence[Path] = ()
) -> Iterator[object]:
    """A ``distributed.Client`` on a new local cluster, or on ``scheduler`` if given,
    whose workers must see the existing ones of the ``shared`` paths (:func:`check_shared`)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except OSError as err:
            raise ConfigError(
                f"--scheduler {scheduler}: cannot connect to a Dask scheduler there ({err}); "
                "start one with `dask scheduler` or omit --scheduler for a local cluster"
            ) from None
        with client:
            check_shared(client, shared, scheduler=scheduler)
            yield client
        return
    n_workers, threads, memory = local_cluster_size(settings)
    host = settings.dashboard_address.rpartition(":")[0]
    if not settings.processes:
        trim_freed_heap()
    with (
        # a compiled filter (e.g. the cloth simulation filter on a 1 km chunk) can hold
        # the GIL for longer than the default 5-minute worker TTL; the scheduler would then
        # declare the busy worker dead and retry the task until it gives up
        dask.config.set({"distributed.scheduler.worker-ttl": None}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            memory_limit=memory,
            processes=settings.processes,
            # 127.0.0.1:0 by default: this machine only (no login), a free port
            dashboard_address=settings.dashboard_address,
            # the workers' HTTP servers on the same host, each on a free port
            worker_dashboard_address=f"{host}:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _existing(paths: Sequence[str]) -> tuple[str, list[bool]]:
    """This process's working directory, and whether each of ``paths`` exists here."""
    return os.getcwd(), [os.path.exists(p) for p in paths]


def check_shared(client: Any, paths: Sequence[Path], *, scheduler: str) -> None:
    """Refuse a cluster on which a worker does not see one of ``paths`` that this process
    sees. The run gives the workers paths as the config has them, and a relative path is
    resolved against each process's own working directory: workers on other machines need
    the data and run folders on a shared file system, under the same paths, and are
    started in the run's working directory when the config's paths are relative."""
    here = [str(p) for p in paths if p.exists()]
    for worker, (cwd, found) in client.run(_existing, here).items():
        missing = [p for p, ok in zip(here, found, strict=True) if not ok]
        if missing:
            raise ConfigError(
                f"--scheduler {scheduler}: worker {worker} does not see {', '.join(missing)} "
                f"(its working directory is {cwd}, this run's {os.getcwd()}): every worker "
                "needs the data and run folders under the same paths (a shared file system); "
                "start the workers in this directory or give absolute paths in the config "
                "(docs/cluster.md)"
            )


def _has_bokeh() -> bool:
    """Whether this process can draw the dashboard's pages (bokeh is installed)."""
    return importlib.util.find_spec("bokeh") is not None


def dashboard_link(
    client: Any, settings: DaskSettings, *, scheduler: str | None = None
) -> str | None:
    """The address of the cluster's dashboard, or None if its scheduler runs none, with a
    note when the scheduler's environment lacks bokeh (the lock file has none): then the
    address shows only Dask's request to install it.

    The port is the scheduler's; the host is where the local cluster's dashboard listens
    (``settings.dashboard_address``; this machine's name when that is every interface),
    or the host of ``scheduler``. (``Client.dashboard_link`` names the machine's network
    address, where the default dashboard, on 127.0.0.1, does not listen.)
    """
    port = client.scheduler_info()["services"].get("dashboard")
    if port is None:
        return None
    host = (
        urlsplit(scheduler).hostname if scheduler else settings.dashboard_address.rpartition(":")[0]
    )
    if host in (None, "", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    link = f"http://{host}:{port}/status"
    if not client.run_on_scheduler(_has_bokeh):
        link += " (its pages need bokeh, which is not installed: pip install bokeh)"
    return link
