"""The runner on real Dask clusters: skip/rerun, subsets, atomic writes under SIGKILL,
an external scheduler, the manifest, and reproduce."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import rasterio
import toy_stages
from helpers import subprocess_env

from models.errors import ModelsWarning
from pipeline.config import load_config
from pipeline.errors import ConfigError, InputDataError, PipelineWarning
from pipeline.reproduce import reproduce
from pipeline.runner import TREE_INTERVAL_S, Runner, RunOptions, peak_rss, peak_worker_rss


def _run(cfg_path: Path, **options) -> dict:
    config = load_config(cfg_path)
    return Runner(config, toy_stages.stages(), options=RunOptions(quiet=True, **options)).run()


def test_runs_on_local_cluster_of_two_processes_then_skips(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    m1 = _run(cfg)
    summary = json.loads((tmp_path / "out/toy/summary.json").read_text())
    assert m1["cluster"]["workers"] == 2
    assert summary["bands"] == ["noise"]
    assert 0.45 < summary["mean"] < 0.55  # uniform(0, 1) over 65536 pixels
    assert m1["stages"]["noise"]["status"] == "ran"
    m2 = _run(cfg)
    assert m2["stages"]["noise"]["status"].startswith("skipped")
    assert m2["stages"]["summary"]["status"].startswith("skipped")
    assert m2["outputs"] == m1["outputs"]


def test_parameter_change_reruns_the_stage_and_its_dependants(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    _run(cfg)
    before = json.loads((tmp_path / "out/toy/summary.json").read_text())["mean"]
    toy_stages.write_config(tmp_path, scale=2.0)  # the noise stage's input changes
    m = _run(cfg)
    assert m["stages"]["noise"]["status"] == "ran"
    assert m["stages"]["summary"]["status"] == "ran"
    after = json.loads((tmp_path / "out/toy/summary.json").read_text())["mean"]
    assert after == pytest.approx(2 * before, rel=1e-6)


def _warning_noise(job, *, params):
    warnings.warn("noise: the parameters look odd", PipelineWarning, stacklevel=2)
    warnings.warn("the science took a fallback", ModelsWarning, stacklevel=2)
    warnings.warn("a library speaks", UserWarning, stacklevel=2)
    coded = PipelineWarning("noise: 3 cells look odd", code="toy_odd_cells", values={"n": 3})
    warnings.warn(coded, stacklevel=2)
    return toy_stages.noise(job, params=params)


def test_stage_warnings_reach_console_manifest_and_the_next_stages(tmp_path, capsys):
    cfg = toy_stages.write_config(tmp_path)
    noise, summary = toy_stages.stages()
    stages = (replace(noise, func=_warning_noise), summary)
    config = load_config(cfg)

    def run() -> dict:
        return Runner(config, stages, options=RunOptions(quiet=True)).run()

    first = run()
    own = [
        "noise: the parameters look odd",
        "the science took a fallback",
        "noise: 3 cells look odd",
    ]
    assert first["stages"]["noise"]["warnings"] == own
    # a warning with a code has it recorded beside its message, with its values
    codes = {"noise: 3 cells look odd": {"code": "toy_odd_cells", "values": {"n": 3}}}
    assert first["stages"]["noise"]["warning_codes"] == codes
    # libraries the stage calls may add their own (deprecations...): ours is among them
    library = first["stages"]["noise"]["library_warnings"]
    (speaks,) = [w for w in library if w.endswith("a library speaks")]
    assert speaks.startswith("UserWarning (")
    assert not set(own) & set(library)
    assert first["stages"]["summary"]["warnings"] == []
    assert "noise: the parameters look odd" in capsys.readouterr().err  # also under --quiet
    # what the stages after it read (the report does)
    before_summary = json.loads((tmp_path / "out/.state/warnings.json").read_text())
    assert before_summary == [
        {"stage": "noise", "warnings": own, "library_warnings": library, "warning_codes": codes}
    ]
    # a skipped stage keeps its warnings, and says them again
    second = run()
    assert second["stages"]["noise"]["status"].startswith("skipped")
    assert second["stages"]["noise"]["warnings"] == own
    assert "noise: the parameters look odd" in capsys.readouterr().err
    assert json.loads((tmp_path / "out/manifest.json").read_text())["stages"] == second["stages"]


def test_the_console_shows_the_dashboard_and_run_log_keeps_every_runs_lines(tmp_path, capsys):
    cfg = toy_stages.write_config(tmp_path)
    config = load_config(cfg)
    Runner(config, toy_stages.stages(), options=RunOptions()).run()
    shown = capsys.readouterr().err
    assert re.search(r"^Dask dashboard: http://127\.0\.0\.1:\d+/status\b", shown, re.M), shown
    Runner(config, toy_stages.stages(), options=RunOptions(quiet=True)).run()
    assert "skipped" not in capsys.readouterr().err  # quiet
    log = (tmp_path / "out/run.log").read_text()
    runs = re.split(r"^── .*$\n", log, flags=re.M)
    assert runs[0] == "" and len(runs) == 3
    # the first run's lines as the console showed them (which wraps them), the second's
    # also under --quiet
    assert runs[1].split() == shown.split()
    assert "✓ noise" in runs[1] and "✓ summary" in runs[1]
    assert runs[2].count("skipped: inputs and parameters unchanged") == 2
    assert log.startswith(f"── {datetime.date.today().year}")
    assert "region toy, stages noise, summary\n" in log


def test_a_failed_run_logs_its_error(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    _run(cfg)
    noise, summary = toy_stages.stages()

    def fail(*args, **kwargs):
        raise RuntimeError("the toy broke")

    config = load_config(cfg)
    with pytest.raises(RuntimeError):
        Runner(
            config, (replace(noise, func=fail), summary), options=RunOptions(quiet=True, force=True)
        ).run()
    assert (
        (tmp_path / "out/run.log")
        .read_text()
        .endswith("▶ noise      running\nfailed: RuntimeError: the toy broke\n")
    )


def test_force_and_stage_subset(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    first = _run(cfg)
    # unchanged, the selected stage is skipped; forced, it runs again (its status says so:
    # its wall time can round to the first run's)
    again = _run(cfg, stages=("summary",))
    assert again["stages"]["summary"]["status"] == "skipped (unchanged)"
    m = _run(cfg, stages=("summary",), force=True)
    assert m["stages"]["summary"]["status"] == "ran"
    assert m["stages"]["noise"] == first["stages"]["noise"]  # not selected: record kept
    with pytest.raises(Exception, match="unknown stage"):
        _run(cfg, stages=("nosuch",))


def test_raster_output_is_a_cog_with_band_description(tmp_path):
    cfg = toy_stages.write_config(tmp_path, size_px=1100)
    _run(cfg, stages=("noise",))
    path = tmp_path / "out/toy/noise.tif"
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.descriptions == ("noise",)
        assert src.crs.to_epsg() == 32650
        assert src.overviews(1), "a COG carries overviews"
        assert src.profile["tiled"]
        values = src.read(1)
    assert values.shape == (1100, 1100)
    # the block-by-block write equals the same seeded array computed in memory
    expected = np.asarray(
        toy_stages.noise(
            toy_stages.NoiseJob(7, "EPSG:32650", 10.0),
            params=pd.DataFrame({"size_px": [1100], "scale": [1.0]}),
        )["toy/noise.tif"]
    )[0]
    np.testing.assert_array_equal(values, expected)


def test_manifest_records_config_inputs_outputs_and_costs(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    _run(cfg)
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    config = load_config(cfg)
    assert m["config_sha256"] == config.sha256
    assert m["seeds"] == {"seed": 7}
    assert {"numpy", "dask", "rasterio"} <= set(m["packages"])
    assert m["code_version"]["source_sha256"]
    assert m["inputs"]["noise.params"]["sha256"]
    assert set(m["outputs"]) == {"toy/noise.tif", "toy/summary.json"}
    for name in ("noise", "summary"):
        assert m["stages"][name]["wall_s"] > 0
        assert m["stages"][name]["peak_rss_mb"] > 0
        assert m["stages"][name]["peak_cluster_mb"] > 0
        assert m["stages"][name]["peak_worker_mb"] > 0


KILLABLE = """
import sys, toy_stages
from pathlib import Path
from pipeline.config import load_config
from pipeline.runner import RunOptions, Runner
Runner(load_config(Path(sys.argv[1])), toy_stages.stages(pause_s=float(sys.argv[2])),
       options=RunOptions(quiet=True)).run()
"""


def test_sigkill_while_writing_leaves_no_partial_file_and_resumes(tmp_path):
    cfg = toy_stages.write_config(tmp_path, size_px=512)
    final = tmp_path / "out/toy/noise.tif"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(cfg), "0.4"],
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out/toy").glob(".noise.tmp-*")):
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the block-by-block write
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not final.exists()
    assert list((tmp_path / "out/toy").glob(".noise.tmp-*")), "the killed run was mid-write"
    m = _run(cfg)  # resumes: reruns the interrupted stage, cleans the temporaries
    assert m["stages"]["noise"]["status"] == "ran"
    assert final.is_file()
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))


def test_a_run_killed_between_a_stages_state_and_the_manifest_gets_its_records_back(tmp_path):
    """The state of ``summary`` was written, the manifest was not (what SIGKILL between the
    two leaves): the next run skips the stage and the manifest has its records again,
    content checksum included (``reproduce`` compares those)."""
    cfg = toy_stages.write_config(tmp_path)
    first = _run(cfg)
    path = tmp_path / "out/manifest.json"
    older = json.loads(path.read_text())
    older["outputs"] = {r: o for r, o in older["outputs"].items() if o["stage"] != "summary"}
    del older["stages"]["summary"]
    path.write_text(json.dumps(older))
    again = _run(cfg)
    assert again["stages"]["summary"]["status"] == "skipped (unchanged)"
    assert again["outputs"] == first["outputs"]
    assert json.loads(path.read_text())["outputs"] == first["outputs"]


def test_runs_through_an_external_scheduler(tmp_path, external_cluster):
    cfg = toy_stages.write_config(tmp_path)
    address = external_cluster(workers=1)
    m = _run(cfg, scheduler=address)
    assert m["cluster"] == {"scheduler": address, "workers": 1, "threads": 1}
    assert m["stages"]["noise"]["peak_worker_mb"] > 0
    assert (tmp_path / "out/toy/summary.json").is_file()


def test_peak_rss_counts_a_process_started_inside_the_block():
    # the sampler walks the process tree every TREE_INTERVAL_S only: a child that holds
    # 200 MB for longer than that is counted on top of this process
    hold = "import time, numpy; a = numpy.ones(200 * 2**20, 'u1'); time.sleep(3)"
    with peak_rss() as peak:
        mine = psutil.Process().memory_info().rss / 2**20
        subprocess.run([sys.executable, "-c", hold], check=True)
    assert TREE_INTERVAL_S < 3
    assert peak[0] > mine + 200


def test_peak_worker_rss_is_the_peak_of_the_busiest_worker():
    # a task holds 300 MB on one of two worker processes for 2 s (the monitors sample every
    # 0.5 s): the peak is that worker's memory before the task plus 300 MB, give or take
    # what the task's other objects take
    from pipeline.cluster import dask_client
    from pipeline.config import DaskSettings

    size = 300 * 2**20

    def hold(nbytes: int) -> int:
        block = np.ones(nbytes, dtype=np.uint8)  # written: every page resident
        time.sleep(2.0)
        return int(block[-1])

    settings = DaskSettings(processes=True, n_workers=2, threads_per_worker=1, memory_limit="2GiB")
    with dask_client(settings) as c:
        with peak_worker_rss(c) as peak:
            before = c.run(lambda dask_worker: dask_worker.monitor.proc.memory_info().rss)
            busy = min(before)
            assert c.submit(hold, size, workers=[busy], pure=False).result() == 1
    assert peak[0] is not None
    expected = (before[busy] + size) / 2**20
    assert expected - 10 < peak[0] < max(expected, max(before.values()) / 2**20) + 60


def test_dashboard_link_is_where_the_dashboard_answers():
    # distributed's own Client.dashboard_link names the machine's network address, where
    # the default dashboard (127.0.0.1 only) does not listen; without bokeh (not in the
    # lock file) the page asks for it, and the link says so
    import importlib.util

    from pipeline.cluster import dashboard_link, dask_client
    from pipeline.config import DaskSettings

    settings = DaskSettings(memory_limit="1GiB")
    with dask_client(settings) as c:
        link = dashboard_link(c, settings)
        assert link is not None and link.startswith("http://127.0.0.1:")
        url, _, note = link.partition(" ")
        with urllib.request.urlopen(url, timeout=30) as answer:
            page = answer.read().decode()
        if importlib.util.find_spec("bokeh") is None:
            assert "Dask needs bokeh" in page
            assert note == "(its pages need bokeh, which is not installed: pip install bokeh)"
        else:
            assert "Dask needs bokeh" not in page and note == ""


def test_workers_that_do_not_see_the_runs_paths_are_refused(
    tmp_path, external_cluster, monkeypatch
):
    # the config's paths relative to the run's working directory; the worker runs elsewhere
    cfg = toy_stages.write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(f"{tmp_path}/", ""))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    address = external_cluster(workers=1, cwd=elsewhere)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=rf"does not see data, out \(its working directory is {elsewhere},"
    ):
        _run(cfg, scheduler=address)
    assert not (tmp_path / "out").exists()  # a failed first run leaves no folder


def test_bad_scheduler_address_is_a_clear_error(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    with pytest.raises(Exception, match="cannot connect to a Dask scheduler"):
        _run(cfg, scheduler="tcp://127.0.0.1:9")


def test_reproduce_identical_then_different_after_input_change(tmp_path):
    cfg = toy_stages.write_config(tmp_path)
    _run(cfg)
    manifest = tmp_path / "out/manifest.json"
    same = reproduce(manifest, toy_stages.stages(), out=tmp_path / "again", quiet=True)
    assert same.identical
    assert [v for _, v in same.outputs] == ["identical", "identical"]
    toy_stages.write_config(tmp_path, scale=1.5)  # alter an input of the recorded run
    params = tmp_path / "data" / toy_stages.PARAMS_CSV
    # checked before anything reruns, and named by its path
    with pytest.raises(InputDataError, match=f"input files differ .*: {params}: changed;"):
        reproduce(manifest, toy_stages.stages(), out=tmp_path / "again2", quiet=True)
    assert not (tmp_path / "again2").exists()
    diff = reproduce(
        manifest,
        toy_stages.stages(),
        out=tmp_path / "again2",
        quiet=True,
        allow_changed_inputs=True,
    )
    assert not diff.identical
    assert dict(diff.outputs)["toy/noise.tif"] == "different"
    assert diff.changed_inputs == (f"{params}: changed",)


def test_local_cluster_does_not_time_out_workers_busy_in_compiled_code():
    # the cloth simulation filter holds the GIL for minutes on a 1 km chunk: with the
    # default 5-minute TTL the scheduler would declare the worker dead and retry the task
    from pipeline.cluster import dask_client
    from pipeline.config import DaskSettings

    with dask_client(DaskSettings(n_workers=1, threads_per_worker=1, memory_limit="1GiB")) as c:
        assert c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_ttl) is None


def test_default_cluster_is_one_in_process_worker_with_a_thread_per_core(monkeypatch):
    # chosen by benchmarks/bench_cluster.py (docs/performance.md); processes: true gives
    # the former single-threaded worker process per core, and the sizes still override
    from pipeline import cluster
    from pipeline.config import DaskSettings

    monkeypatch.setattr(cluster.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cluster.local_cluster_size(DaskSettings(memory_limit="1GiB")) == (1, 4, "1GiB")
    procs = DaskSettings(processes=True, memory_limit="1GiB")
    assert cluster.local_cluster_size(procs) == (4, 1, "1GiB")
    sized = DaskSettings(processes=True, n_workers=2, memory_limit="1GiB")
    assert cluster.local_cluster_size(sized) == (2, 2, "1GiB")
    with cluster.dask_client(DaskSettings(threads_per_worker=2, memory_limit="1GiB")) as c:
        assert c.scheduler.address.startswith("inproc://")
        assert list(c.nthreads().values()) == [2]


#: two threads allocate and free arrays of 0.2-24 MB with small survivors between them,
#: as chunk tasks do; prints the process's resident MB at the end
_FREED_HEAP = """
import sys, threading
import numpy as np, psutil
from pipeline.cluster import trim_freed_heap
if sys.argv[1] == "trim":
    assert trim_freed_heap()
def work(seed):
    rng, keep = np.random.default_rng(seed), []
    for _ in range(200):
        a = np.ones(int(rng.integers(20_000, 3_000_000)))
        keep.append(np.ones(1000))
        del a
threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(psutil.Process().memory_info().rss / 2**20)
"""


def _resident_mb(mode: str) -> float:
    argv = [sys.executable, "-c", _FREED_HEAP, mode]
    # without the variable a Dask nanny started earlier in this process leaves behind
    # (distributed's pre-spawn-environ writes it into os.environ)
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("MALLOC_")}
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_in_process_worker_hands_freed_heap_back() -> None:
    # glibc keeps what threads free (measured: 126 MB resident against 56 MB with the
    # threshold the run sets, as Dask's nanny sets it for its worker processes; the
    # interpreter and its imports are about 55 MB)
    rss = {mode: _resident_mb(mode) for mode in ("keep", "trim")}
    assert rss["trim"] < 0.8 * rss["keep"], rss
