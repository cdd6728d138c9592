"""CPU time, wall time and peak memory of a run's stages on three Dask schedulers.

Simulates the tiny region into a temporary folder, runs the stages before ``model`` once
(the preparation, not measured), then runs the ``composite``, ``lidar``, ``model`` and
``predict`` stages of a copy of that run folder, each time in a fresh child process:

- ``processes``: ``forest-carbon run --stages ... --force`` on a
  ``distributed.LocalCluster`` of one single-threaded worker process per core (the
  default before issue #19);
- ``threads``: the same command on a ``LocalCluster`` of one worker process with one
  thread per core;
- ``in-process``: the same command on a ``LocalCluster`` of one worker inside the run's
  own process (``processes: false``) with one thread per core;
- ``local-threads``: the same stage functions and inputs, with Dask's threaded scheduler
  and no ``distributed``: each output computed with ``dask.compute``, then written with
  :func:`pipeline.io.write_output` (no input checks, no run manifest beyond the outputs'
  checksums: the fixed cost of the runner is left out).

For each child the parent prints the CPU time (user + system) of its process tree (the
child and every descendant: the Dask worker processes) and its wall time, both also as
ratios against ``processes`` measured in the same run, and the peak resident set size
of the tree (sampled with psutil every 50 ms), then each stage's wall time (the run
manifest's). It then compares the sha256 of every output file of the measured stages
across the runs and names any file that differs.

Run: ``.venv/bin/python benchmarks/bench_cluster.py`` (about 3-4 minutes on two cores).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEASURED = ("composite", "lidar", "model", "predict")
PREPARE = ("acquire", "composite", "lidar", "plots")
SAMPLE_S = 0.05
LOCAL_WALLS = "local-threads-walls.json"
CORES = len(os.sched_getaffinity(0))
#: name -> the config's ``dask`` section (``None``: the in-process threaded scheduler)
SCHEDULERS: dict[str, dict[str, Any] | None] = {
    "processes": {"n_workers": CORES, "threads_per_worker": 1, "processes": True},
    "threads": {"n_workers": 1, "threads_per_worker": CORES, "processes": True},
    "in-process": {"n_workers": 1, "threads_per_worker": CORES, "processes": False},
    "local-threads": None,
}


def _config(tmp: Path, dask: dict[str, Any] | None) -> Path:
    """The tiny region's config reading the data simulated under ``tmp``."""
    text = (ROOT / "configs" / "regions" / "tiny.yaml").read_text()
    cfg = yaml.safe_load(text.replace("data/tiny", str(tmp / "data")))
    cfg["dask"] = {**cfg.get("dask", {}), **(dask or {})}
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _measure(cmd: list[str]) -> tuple[float, float, float]:
    """CPU seconds, wall seconds and peak RSS (MB) of ``cmd``'s process tree.

    CPU time is what the child and every descendant it reaped used (``getrusage`` of this
    process's children: the Dask worker processes are the child's own children, reaped
    when the cluster closes); the RSS of the tree is sampled with psutil.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    child = psutil.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak = 0
    while child.poll() is None:
        rss = 0
        try:
            procs = [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, rss)
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - t0
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {child.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return cpu, wall, peak / 2**20


def _run_cmd(config: Path, out: Path, stages: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--out", str(out),
            "--stages", ",".join(stages), "--force", "--quiet"]  # fmt: skip


def local_threads(config_path: Path, out: Path) -> None:
    """The measured stages on Dask's threaded scheduler, without ``distributed``."""
    import dask

    from pipeline import io
    from pipeline.config import load_config
    from pipeline.inputs import read_settings
    from pipeline.run_folder import record_outputs
    from pipeline.runner import Runner, code_version, group_inputs
    from pipeline.stages import STAGES

    config = load_config(config_path, overrides={"output_dir": str(out)})
    runner = Runner(config, STAGES)
    source = code_version()["source_sha256"]
    walls: dict[str, float] = {}
    for stage in (s for s in STAGES if s.name in MEASURED):
        t0 = time.perf_counter()
        now = runner._fingerprint(stage, source)
        loaded = {
            name: io.read_input(
                spec, chunk_px=config.dask.chunk_px, **read_settings(config.sources, spec)
            )
            for name, spec in now.specs.items()
        }
        with dask.config.set(scheduler="threads", num_workers=CORES):
            outputs = dict(stage.func(now.params, **group_inputs(loaded)))
            # one output at a time, as the runner writes them
            for rel, obj in outputs.items():
                (computed,) = dask.compute(obj)
                io.write_output(computed, runner.layout.path(rel))
        # the checksums the next stage's inputs are checked against, as the runner records
        record_outputs(runner.layout.root, outputs, command=stage.name)
        walls[stage.name] = time.perf_counter() - t0
    (out / LOCAL_WALLS).write_text(json.dumps(walls))


def _outputs(run: Path) -> tuple[dict[str, str], dict[str, float]]:
    """sha256 of each output file of the measured stages, and each stage's wall time."""
    manifest = json.loads((run / "manifest.json").read_text())
    sums = {
        rel: rec["file_sha256"]
        for rel, rec in manifest["outputs"].items()
        if rec.get("stage") in MEASURED
    }
    local = run / LOCAL_WALLS
    if local.exists():
        return sums, json.loads(local.read_text())
    return sums, {name: manifest["stages"][name]["wall_s"] for name in MEASURED}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        base_cfg = _config(tmp, SCHEDULERS["processes"])
        subprocess.run([sys.executable, "-m", "pipeline", "simulate", "--config", str(base_cfg),
                        "--out", str(tmp / "data")], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        prepared = tmp / "prepared"
        subprocess.run(_run_cmd(base_cfg, prepared, PREPARE), env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        results: dict[str, tuple[float, float, float]] = {}
        sums: dict[str, dict[str, str]] = {}
        walls: dict[str, dict[str, float]] = {}
        for name, dask_section in SCHEDULERS.items():
            run = tmp / f"run-{name}"
            shutil.copytree(prepared, run)
            cfg = _config(tmp, dask_section)
            if dask_section is None:
                cmd = [sys.executable, __file__, "--local-threads", str(cfg), str(run)]
            else:
                cmd = _run_cmd(cfg, run, MEASURED)
            results[name] = _measure(cmd)
            sums[name], walls[name] = _outputs(run)
    base_cpu, base_wall, _ = results["processes"]
    print(f"stages {', '.join(MEASURED)} of the tiny region, {CORES} cores; the whole child")
    print(f"{'scheduler':<15}{'CPU s':>8}{'CPU ratio':>11}{'wall s':>8}{'wall ratio':>12}"
          f"{'peak RSS MB':>13}")  # fmt: skip
    for name, (cpu, wall, peak) in results.items():
        print(f"{name:<15}{cpu:8.1f}{cpu / base_cpu:11.2f}{wall:8.1f}{wall / base_wall:12.2f}"
              f"{peak:13.0f}")  # fmt: skip
    print("wall time of each stage (s; ratio to processes)")
    print(f"{'scheduler':<15}" + "".join(f"{s:>17}" for s in MEASURED))
    for name, stage_walls in walls.items():
        cells = (f"{stage_walls[s]:8.1f} ({stage_walls[s] / walls['processes'][s]:4.2f})"
                 for s in MEASURED)  # fmt: skip
        print(f"{name:<15}" + "".join(f"{c:>17}" for c in cells))
    ref = sums["processes"]
    for name, got in sums.items():
        differ = sorted(rel for rel in ref.keys() | got.keys() if ref.get(rel) != got.get(rel))
        print(
            f"outputs of {name} vs processes: {len(ref)} files, "
            + ("identical (sha256)" if not differ else f"differ: {', '.join(differ)}")
        )


def _args(argv: list[str]) -> Any:
    if argv[:1] == ["--local-threads"]:
        return local_threads(Path(argv[1]), Path(argv[2]))
    return main()


if __name__ == "__main__":
    _args(sys.argv[1:])
