"""Shared fixtures: the tiny simulated region, built and run once per test session, and
Dask clusters of separate scheduler and worker processes on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import subprocess_env, write_tiny_config

from pipeline.cli import main


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``forest-carbon simulate --region tiny`` into a session folder."""
    out = tmp_path_factory.mktemp("region") / "tiny"
    assert main(["simulate", "--region", "tiny", "--out", str(out)]) == 0
    return out


@pytest.fixture
def tiny_config(tiny_data: Path, tmp_path: Path) -> Path:
    """The pinned tiny config, reading the session's data and writing under ``tmp_path``."""
    return write_tiny_config(tiny_data, tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The whole pipeline run once on the tiny region on the default local cluster:
    (config, run folder)."""
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_tiny_config(tiny_data, tmp)
    assert main(["run", "--config", str(cfg), "--quiet"]) == 0
    return cfg, tmp / "run"


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Starts ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes
    on 127.0.0.1 (the venv's ``dask`` executable; the workers in ``cwd``, by default this
    process's working directory), waits for the workers and returns the scheduler's
    address; everything is stopped after the test."""
    dask = Path(sys.executable).with_name("dask")
    procs: list[subprocess.Popen[bytes]] = []

    def launch(*args: str, cwd: Path | None = None) -> None:
        procs.append(
            subprocess.Popen(
                [str(dask), *args, "--no-dashboard"],
                cwd=cwd,
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def start(workers: int = 1, memory_limit: str = "2GiB", cwd: Path | None = None) -> str:
        from distributed import Client

        sched_file = tmp_path / "scheduler.json"
        launch(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(sched_file)
        )
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        for _ in range(workers):
            launch(
                "worker",
                "--scheduler-file",
                str(sched_file),
                "--nthreads",
                "1",
                "--memory-limit",
                memory_limit,
                cwd=cwd,
            )
        address: str = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=120)
        return address

    yield start
    for p in reversed(procs):
        p.terminate()
        p.wait(timeout=30)
