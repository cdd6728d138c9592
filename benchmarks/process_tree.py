"""Peak resident memory of a benchmark's child process and its Dask processes.

A benchmark that measures memory runs the measured work in a fresh child process (so
nothing the parent imported or allocated counts) and samples, with psutil, the resident
set size (RSS) of the child and of every descendant: the worker processes of a
``distributed.LocalCluster``. :func:`run_sampled` returns the peak of the tree's total and
each process's own peak, by role: the ``driver`` is the child itself (it holds the client,
the writer and, in a ``LocalCluster``, the scheduler and the nannies), a ``worker`` a
process started by multiprocessing's spawn (a Dask worker). The child's last line of
output is a JSON object, returned with the figures. The children compute on
:func:`two_worker_processes`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil

#: seconds between two samples of the process tree
SAMPLE_S = 0.05


@contextlib.contextmanager
def two_worker_processes() -> Iterator[Any]:
    """A client of a ``LocalCluster`` of two single-threaded worker processes (what
    :mod:`pipeline.cluster` gives a run on two cores with ``processes: true``)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(total RSS in bytes, number of processes) of ``proc`` and its descendants."""
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total, n = 0, 0
    for p in procs:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.NoSuchProcess:
            pass
    return total, n


def _role(proc: psutil.Process, driver: psutil.Process) -> str:
    """Which part of the cluster a process of the measured tree is."""
    if proc.pid == driver.pid:
        # LocalCluster keeps the scheduler and the nannies in the client's process
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    return "worker" if "spawn_main" in cmd else "other"


def run_sampled(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` and sample its process tree until it ends.

    Returns the child's report (its last output line, JSON) with ``peak_rss_mb`` (the
    tree's total at its peak), ``processes`` (how many there were then) and ``peaks_mb``
    (``(role, peak MB)`` of every process, sorted: the peaks need not coincide).
    """
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak, peak_n = 0, 0
    per_pid: dict[int, tuple[str, int]] = {}  # pid: (role, peak RSS)
    while child.poll() is None:
        rss, n = tree_rss(proc)
        if rss > peak:
            peak, peak_n = rss, n
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p_rss = p.memory_info().rss
                role = per_pid[p.pid][0] if p.pid in per_pid else _role(p, proc)
            except psutil.NoSuchProcess:
                continue
            per_pid[p.pid] = (role, max(p_rss, per_pid.get(p.pid, ("", 0))[1]))
        time.sleep(SAMPLE_S)
    stdout = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {child.returncode})")
    return {
        "peak_rss_mb": peak / 2**20,
        "processes": peak_n,
        "peaks_mb": sorted((r, m / 2**20) for r, m in per_pid.values()),
        **json.loads(stdout.strip().splitlines()[-1]),
    }
