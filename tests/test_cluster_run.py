"""The tiny region on a real Dask cluster: a scheduler and two worker processes started
with ``dask scheduler`` and ``dask worker`` on 127.0.0.1, reached with ``--scheduler``.
Every output's content checksum equals that of the same run on the default local cluster,
both workers compute, and the manifest records the workers' peak memory."""

from __future__ import annotations

import json

import pytest
from helpers import write_tiny_config

from pipeline.cli import main

pytestmark = pytest.mark.slow


def test_tiny_region_through_a_scheduler_and_two_workers_matches_the_local_run(
    tiny_run, tiny_data, tmp_path, external_cluster
):
    from distributed import Client

    address = external_cluster(workers=2)
    cfg = write_tiny_config(tiny_data, tmp_path)
    assert main(["run", "--config", str(cfg), "--scheduler", address, "--quiet"]) == 0

    local = json.loads((tiny_run[1] / "manifest.json").read_text())
    remote = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert remote["cluster"] == {"scheduler": address, "workers": 2, "threads": 2}
    assert len(local["outputs"]) > 20
    assert sorted(remote["outputs"]) == sorted(local["outputs"])
    differ = [
        rel
        for rel, out in local["outputs"].items()
        if remote["outputs"][rel]["checksum"] != out["checksum"]
    ]
    assert differ == []

    # the workers' own peak memory, which the run's process tree does not include here
    ran = [s for s in remote["stages"].values() if s["status"] == "ran"]
    assert len(ran) == len(local["stages"])
    assert all(50 < s["peak_worker_mb"] < 2048 for s in ran), ran  # workers: 2 GiB each

    with Client(address, timeout="30s") as client:
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    # (about 6,500 tasks each when measured): neither worker is left idle
    assert len(executed) == 2
    assert min(executed.values()) > 0.1 * sum(executed.values()), executed
