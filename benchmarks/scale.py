"""How the pipeline's cost grows with the area, and what the whole Nanping prefecture costs.

Simulates copies of the demo region (``configs/regions/nanping.yaml``: its settings,
epochs, scenes, plot and project designs) whose areas are 0.25, 1 and 4 times (16 with
``--max-factor 16``) a square of ``--base-km`` side. Every copy shares one design: the
LiDAR block covers the same share of its side (the demo's 2 of 10 km, the repeat flight
half of that) and the inventory plots have the same density (the demo's 0.8 per km2),
both raised for all copies where the smallest copy would get a LiDAR block under
``MIN_LIDAR_KM`` or fewer than ``MIN_PLOTS`` plots: with fewer, its inventory LiDAR
stratum or its satellite model has too few plots to fit. Each copy is centred on a
corner of the model's cross-validation blocks (``stages.model.cv_block_m``), so that its
LiDAR block, at the centre, spans more than one. Parcels are the simulator's
(``simulation.yaml``'s density).

Each copy is simulated and run into its own run folder in a temporary directory, one
stage per fresh process (``python -m pipeline run --stages S``), with GDAL's read cache
held at ``READ_CACHE_MB`` (a bounded cache would otherwise pass for memory growing with
the area). The run manifest records each stage's wall time and peak memory
(``peak_rss_mb``: the peak resident memory of the process tree while the stage ran; one
stage per process keeps it the stage's own, plus the interpreter and its imports) but no
CPU time: the benchmark reads the console and takes the CPU time (user + system) of the
process tree when a stage starts and when it ends. With the default Dask cluster (one
worker inside the run's process) the driver and the worker are one process, so the peak
is the driver's and the worker's.

Memory bounded by the chunks in flight shows as flat only where every copy has several
chunks: with the demo's raster chunks (1024 cells, 10 km) and LiDAR chunks (1 km) every
copy of a small benchmark is one chunk, whose memory grows with the area by construction.
``--split-chunks`` gives the copies chunks sized to split the smallest copy's side (and its
LiDAR block's) in ``CHUNKS_PER_SIDE``; at the default ``--base-km`` those are the settings'
smallest (64 cells, 200 m), whose per-chunk overhead makes a run many times slower (the
first copy's composite took 11 minutes on a loaded machine), so it is opt-in and the CPU per
km2 it prints carries more per-chunk overhead than the prefecture would.

It prints, per stage, the CPU seconds per km2 (LiDAR: per km2 flown) at each factor with
the ratio to 1x (issue #19's goal: within +-20 %) and the peak memory at each factor with
its growth from 1x to the largest factor (goal: under 15 %); then the cost of the
prefecture (26,300 km2) extrapolated from the largest copy, with the assumptions it
prints. The ratios are measured in one invocation; nothing is asserted.

Run: ``.venv/bin/python benchmarks/scale.py`` (about 12 minutes on two cores with the
default ``--base-km 2.5``; ``--base-km 10`` puts the demo's area at 1x; ``make bench``
runs it with the defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from pyproj import Transformer

from pipeline.config import ModelParams
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "regions" / "nanping.yaml"
FACTORS = (0.25, 1.0, 4.0, 16.0)
#: fewest inventory plots a copy gets: with 12 on 1.4 km2, the satellite model of one
#: seed had 2 training rows with a clear composite to fit on
MIN_PLOTS = 20
#: shortest side of a copy's LiDAR block (the tiny region's): with a 0.25 km block the
#: inventory's LiDAR stratum got no plot, and its variance needs two
MIN_LIDAR_KM = 0.4
PREFECTURE_KM2 = 26_300.0
#: share of the prefecture flown with LiDAR, once
LIDAR_SHARE = 0.10
#: the model stage's default ``cv_block_m``
CV_BLOCK_M = ModelParams().cv_block_m
#: a realistic count of Sentinel-2 + Landsat scenes per season over a prefecture
SCENES_PER_SEASON = (60, 90)
#: the one machine of the estimate
MACHINE_CORES = 2
MACHINE_MEMORY_GB = 24.0
#: a stage's memory "grows with the area" when its peak grew by more than this share from
#: 1x to the largest copy (issue #19's goal)
FLAT_GROWTH = 0.15
#: GDAL's raster block cache of the measured runs (MB). GDAL's default, 5 % of the RAM
#: (1.2 GB on 24 GB), fills as a run reads rasters and would show as memory growing with
#: the area up to that bound; the pipeline's writer sets its own (``pipeline.io``)
READ_CACHE_MB = 64
#: chunks along the side of the smallest copy (its grid, and its LiDAR block)
CHUNKS_PER_SIDE = 2
#: a console line of the runner: "▶ stage  running" or "✓ stage  12.3 s, peak ..."
STAGE_LINE = re.compile(r"^([▶✓]) (\w+)\s")


@dataclass(frozen=True)
class Design:
    """What every copy shares: the side of the 1x copy (km), the density of inventory
    plots (per km2), the side of the first LiDAR block as a share of the region's, and the
    processing chunks: raster chunks of ``chunk_px`` cells and LiDAR chunks of
    ``lidar_chunk_m`` (None: the demo's)."""

    base_km: float
    plots_per_km2: float
    lidar_side_share: float
    chunk_px: int | None = None
    lidar_chunk_m: float | None = None

    @classmethod
    def for_factors(
        cls, factors: list[float], *, base_km: float, split_chunks: bool = False
    ) -> Design:
        """The demo's plot density and LiDAR share, raised for all copies where the
        smallest would get fewer than ``MIN_PLOTS`` plots or a LiDAR block with a side
        under ``MIN_LIDAR_KM``."""
        config = yaml.safe_load(DEMO.read_text())
        demo = config["simulate"]
        smallest_km = base_km * math.sqrt(min(factors))
        lidar_side_share = max(demo["lidar_km"] / demo["size_km"], MIN_LIDAR_KM / smallest_km)
        chunks: dict[str, Any] = {}
        if split_chunks:
            chunks = {
                "chunk_px": chunk_px_for(smallest_km * 1000 / config["resolution_m"]),
                "lidar_chunk_m": smallest_km * 1000 * lidar_side_share / CHUNKS_PER_SIDE,
            }
        return cls(
            base_km=base_km,
            plots_per_km2=max(demo_plots_per_km2(), MIN_PLOTS / smallest_km**2),
            lidar_side_share=lidar_side_share,
            **chunks,
        )


def chunk_px_for(side_px: float) -> int:
    """The largest power-of-two raster chunk that splits a grid of ``side_px`` cells into
    at least ``CHUNKS_PER_SIDE`` chunks a side (never under the settings' 64).

    A stage whose memory is bounded by its chunks in flight can only show it when every
    copy has more than one chunk: with the demo's 1024-cell chunks (10 km at 10 m) every
    copy of a small benchmark is one chunk, whose memory grows with the area by
    construction.
    """
    return max(64, 2 ** math.floor(math.log2(side_px / CHUNKS_PER_SIDE)))


@dataclass(frozen=True)
class StageCost:
    cpu_s: float
    wall_s: float
    peak_mb: float


@dataclass(frozen=True)
class Copy:
    """One scaled copy of the demo region and what its run cost, stages in run order."""

    factor: float
    area_km2: float
    #: area flown with LiDAR, both flights (km2)
    flown_km2: float
    n_plots: int
    scenes_per_season: float
    stages: dict[str, StageCost]

    @property
    def cpu_s(self) -> float:
        return sum(s.cpu_s for s in self.stages.values())

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.stages.values())

    def km2(self, stage: str) -> float:
        """The area a stage's cost is counted against: flown for ``lidar``."""
        return self.flown_km2 if stage == "lidar" else self.area_km2


def scaled_config(tmp: Path, factor: float, design: Design) -> Path:
    """A config of the demo region with its area scaled by ``factor``, reading and writing
    under ``tmp`` (``tmp/data`` the simulated inputs, ``tmp/run`` the run folder)."""
    text = DEMO.read_text().replace("data/nanping", str(tmp / "data"))
    cfg = yaml.safe_load(text.replace("outputs/nanping", str(tmp / "run")))
    sim = cfg["simulate"]
    side_km = design.base_km * math.sqrt(factor)
    repeat_share = sim["lidar2_km"] / sim["lidar_km"]
    sim["size_km"] = side_km
    sim["lidar_km"] = design.lidar_side_share * side_km
    sim["lidar2_km"] = repeat_share * sim["lidar_km"]
    sim["n_plots"] = round(design.plots_per_km2 * side_km**2)
    # the model's spatial cross-validation needs the LiDAR plots in two of its blocks: the
    # copy (and the LiDAR block at its centre) is centred on a corner of those blocks
    block_m = cfg.get("stages", {}).get("model", {}).get("cv_block_m", CV_BLOCK_M)
    to_crs = Transformer.from_crs("EPSG:4326", cfg["crs"], always_xy=True)
    x, y = to_crs.transform(sim["center_lon"], sim["center_lat"])
    lon, lat = to_crs.transform(
        round(x / block_m) * block_m, round(y / block_m) * block_m, direction="INVERSE"
    )
    sim["center_lon"], sim["center_lat"] = float(lon), float(lat)
    cfg["aoi"] = str(tmp / "data" / "aoi.geojson")
    if design.chunk_px is not None:
        cfg.setdefault("dask", {})["chunk_px"] = design.chunk_px
    if design.lidar_chunk_m is not None:
        stages = cfg.setdefault("stages", {})
        stages.setdefault("lidar", {})["chunk_size_m"] = design.lidar_chunk_m
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and its descendants, living and reaped."""
    total = 0.0
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def run_pipeline(config: Path, out: Path) -> dict[str, float]:
    """Run the pipeline on ``config``, each stage in a fresh process (``--stages``), so that
    a stage's peak memory is its own and not what earlier stages left allocated; CPU
    seconds per stage, from the console's stage marks (imports not counted)."""
    cpu: dict[str, float] = {}
    for stage in STAGES:
        cpu |= _run_stage(config, out, stage.name)
    return cpu


def _run_stage(config: Path, out: Path, stage: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--out", str(out),
           "--stages", stage]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GDAL_CACHEMAX": str(READ_CACHE_MB)}
    child = psutil.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    started: dict[str, float] = {}
    cpu: dict[str, float] = {}
    tail: list[str] = []
    try:
        for line in child.stderr or ():
            tail = [*tail[-20:], line]
            if m := STAGE_LINE.match(line):
                mark, name = m.groups()
                now = _tree_cpu_s(child)
                if mark == "▶":
                    started[name] = now
                elif name in started:
                    cpu[name] = now - started[name]
    except BaseException:  # interrupted: the run must not outlive the benchmark
        child.kill()
        raise
    if child.wait():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return cpu


def measure(tmp: Path, factor: float, design: Design) -> Copy:
    """Simulate the copy of ``factor`` under ``tmp``, run the pipeline on it, and collect
    its stages' costs from the console and the manifest."""
    config = scaled_config(tmp, factor, design)
    data, run = tmp / "data", tmp / "run"
    subprocess.run(
        [sys.executable, "-m", "pipeline", "simulate", "--config", str(config), "--out", str(data)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cpu = run_pipeline(config, run)
    records = json.loads((run / "manifest.json").read_text())["stages"]
    summary = json.loads((data / "truth" / "summary.json").read_text())
    xmin, ymin, xmax, ymax = summary["bounds"]
    tiles = summary["lidar"]["tiles"]
    return Copy(
        factor=factor,
        area_km2=(xmax - xmin) * (ymax - ymin) / 1e6,
        flown_km2=sum((t["xmax"] - t["xmin"]) * (t["ymax"] - t["ymin"]) for t in tiles) / 1e6,
        n_plots=summary["n_plots"]["inventory"],
        scenes_per_season=sum(summary["n_scenes"].values()) / len(summary["epochs"]),
        stages={
            name: StageCost(cpu_s, records[name]["wall_s"], records[name]["peak_rss_mb"])
            for name, cpu_s in cpu.items()
        },
    )


def mb_per_km2(one: Copy, top: Copy, stage: str) -> float:
    """Growth of a stage's peak memory per km2 (``lidar``: flown) from ``one`` to ``top``."""
    rise = top.stages[stage].peak_mb - one.stages[stage].peak_mb
    return rise / (top.km2(stage) - one.km2(stage))


def prefecture_cpu_s(
    top: Copy, *, scenes_per_season: float, plots_per_km2: float
) -> dict[str, float]:
    """Each stage's CPU seconds over the prefecture, from its costs in ``top``.

    ``lidar`` by the km2 flown (both of ``top``'s flights counted) over ``LIDAR_SHARE`` of
    the prefecture, ``plots`` by the inventory plot at ``plots_per_km2``, ``composite`` by
    the km2 times ``scenes_per_season`` over ``top``'s, every other stage by the km2.
    """
    out = {}
    for name, s in top.stages.items():
        per_km2 = s.cpu_s / top.km2(name)
        if name == "lidar":
            out[name] = per_km2 * LIDAR_SHARE * PREFECTURE_KM2
        elif name == "plots":
            out[name] = s.cpu_s / top.n_plots * plots_per_km2 * PREFECTURE_KM2
        elif name == "composite":
            out[name] = per_km2 * PREFECTURE_KM2 * scenes_per_season / top.scenes_per_season
        else:
            out[name] = per_km2 * PREFECTURE_KM2
    return out


def grows(one: Copy, top: Copy, stage: str) -> bool:
    """Whether a stage's peak memory grew by more than the goal's ``FLAT_GROWTH``."""
    return top.stages[stage].peak_mb > (1 + FLAT_GROWTH) * one.stages[stage].peak_mb


def prefecture_memory_mb(one: Copy, top: Copy) -> dict[str, float]:
    """Each stage's peak memory (MB) over the prefecture in one process: its peak in
    ``top``, plus, where it grew beyond the goal from ``one`` to ``top``, that growth per
    km2 carried over the rest of the prefecture (``lidar``: of the area flown)."""
    out = {}
    for name, s in top.stages.items():
        target = LIDAR_SHARE * PREFECTURE_KM2 if name == "lidar" else PREFECTURE_KM2
        slope = mb_per_km2(one, top, name) if grows(one, top, name) else 0.0
        out[name] = s.peak_mb + slope * (target - top.km2(name))
    return out


def demo_plots_per_km2() -> float:
    """The demo region's density of inventory plots."""
    demo = yaml.safe_load(DEMO.read_text())["simulate"]
    return float(demo["n_plots"] / demo["size_km"] ** 2)


def _cell(value: float, ref: float) -> str:
    return f"{value:.2f} ({value / ref:.2f})" if ref > 0 else f"{value:.2f}"


def print_scaling(copies: list[Copy]) -> None:
    """Per stage: CPU s per km2 (ratio to 1x) and peak memory (growth from 1x)."""
    one = next(c for c in copies if c.factor == 1.0)
    top = copies[-1]
    for c in copies:
        print(
            f"{c.factor:g}x: {c.area_km2:.2f} km2, {c.flown_km2:.2f} km2 flown (both flights), "
            f"{c.n_plots} inventory plots, {c.scenes_per_season:g} scenes per season: "
            f"CPU {c.cpu_s:.0f} s, wall {c.wall_s:.0f} s"
        )
    heads = "".join(f"{f'{c.factor:g}x':>16}" for c in copies)
    print("\nCPU s per km2, lidar per km2 flown (ratio to 1x; goal 0.8-1.2)")
    print(f"{'stage':<11}{heads}")
    for name in one.stages:
        per = [c.stages[name].cpu_s / c.km2(name) for c in copies]
        ref = one.stages[name].cpu_s / one.km2(name)
        print(f"{name:<11}" + "".join(f"{_cell(v, ref):>16}" for v in per))
    per = [c.cpu_s / c.area_km2 for c in copies]
    ref = one.cpu_s / one.area_km2
    print(f"{'all':<11}" + "".join(f"{_cell(v, ref):>16}" for v in per))
    low = copies[0]
    print(
        f"\npeak memory of the stage's process tree, MB; growth from {low.factor:g}x to "
        f"{top.factor:g}x (goal < 15 %) and per km2 from 1x (lidar: flown)"
    )
    print(f"{'stage':<11}{heads}{'growth':>9}{'MB/km2':>9}")
    for name in one.stages:
        peaks = "".join(f"{c.stages[name].peak_mb:16.0f}" for c in copies)
        growth = top.stages[name].peak_mb / low.stages[name].peak_mb - 1
        print(f"{name:<11}{peaks}{growth:9.0%}{mb_per_km2(one, top, name):9.2f}")


def print_prefecture(copies: list[Copy], *, workers: int, worker_cores: int) -> None:
    """The prefecture's cost extrapolated from the largest copy, with its assumptions."""
    one, top = next(c for c in copies if c.factor == 1.0), copies[-1]
    lo, hi = SCENES_PER_SEASON
    plots_per_km2 = demo_plots_per_km2()
    busy = top.cpu_s / (top.wall_s * MACHINE_CORES)
    assumptions = [
        f"- each stage costs its CPU per km2 of the {top.factor:g}x copy "
        f"({top.area_km2:.1f} km2) wall to wall, but:",
        f"  - lidar its CPU per km2 flown, over {LIDAR_SHARE:.0%} of the prefecture "
        f"({LIDAR_SHARE * PREFECTURE_KM2:,.0f} km2), flown once",
        f"  - plots its CPU per inventory plot, at the demo's {plots_per_km2:g} plots per km2 "
        f"(the copies have {top.n_plots / top.area_km2:.1f}; the model stage's fitting, "
        "also by the plot, is counted by the km2)",
        f"  - composite its CPU per km2 times {lo} or {hi} scenes per season over the "
        f"copy's {top.scenes_per_season:g} (its cost taken as proportional to the scenes)",
        f"- wall time: the CPU time over all cores, on one {MACHINE_CORES}-core machine and on "
        f"{workers} workers of {worker_cores} cores, the work split evenly (a lower bound: "
        f"the {top.factor:g}x run kept {busy:.0%} of its cores busy on this machine, shared "
        "with other work; the driver's serial work and transfers between machines are "
        "left out)",
        f"- memory: a stage's peak in the {top.factor:g}x copy; where it grew by more than "
        f"{FLAT_GROWTH:.0%} from 1x, plus that growth per km2 over the rest of the "
        "prefecture, in one process (the run's driver holds what grows, however many "
        "workers there are)",
    ]
    print(f"\nthe prefecture, {PREFECTURE_KM2:,.0f} km2. Assumptions:")
    print("\n".join(assumptions))
    by_scenes = {
        n: prefecture_cpu_s(top, scenes_per_season=n, plots_per_km2=plots_per_km2)
        for n in SCENES_PER_SEASON
    }
    memory = prefecture_memory_mb(one, top)
    print(f"{'stage':<11}{f'CPU-h, {lo} scenes':>18}{f'{hi} scenes':>12}{'memory GB':>11}")
    for name in top.stages:
        print(
            f"{name:<11}{by_scenes[lo][name] / 3600:18,.1f}{by_scenes[hi][name] / 3600:12,.1f}"
            f"{memory[name] / 1024:11.1f}"
            + ("  grows with the area" if grows(one, top, name) else "")
        )
    for scenes, cpu in by_scenes.items():
        cpu_h = sum(cpu.values()) / 3600
        print(
            f"{scenes} scenes per season: {cpu_h:,.0f} CPU-hours; one {MACHINE_CORES}-core "
            f"machine {cpu_h / MACHINE_CORES:,.0f} h wall; {workers} workers of "
            f"{worker_cores} cores {cpu_h / (workers * worker_cores):,.2f} h wall"
        )
    worst = max(memory, key=memory.__getitem__)
    fits = "fits" if memory[worst] <= MACHINE_MEMORY_GB * 1024 else "does not fit"
    print(
        f"memory: the {worst} stage needs {memory[worst] / 1024:.1f} GB, which {fits} in "
        f"{MACHINE_MEMORY_GB:g} GB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-km", type=float, default=2.5,
                        help="side of the 1x copy in km (10: the demo's area)")  # fmt: skip
    parser.add_argument("--max-factor", type=float, choices=(4, 16), default=4)
    parser.add_argument("--split-chunks", action="store_true",
                        help="chunks splitting the smallest copy in two a side (slow)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--worker-cores", type=int, default=4)
    args = parser.parse_args(argv)
    factors = [f for f in FACTORS if f <= args.max_factor]
    design = Design.for_factors(factors, base_km=args.base_km, split_chunks=args.split_chunks)
    copies = []
    for factor in factors:
        with tempfile.TemporaryDirectory() as tmp:
            copies.append(measure(Path(tmp), factor, design))
    print(
        f"the demo region at {', '.join(f'{f:g}' for f in factors)} x {args.base_km:g} km "
        f"squared; {design.plots_per_km2:.1f} plots per km2, LiDAR over "
        f"{design.lidar_side_share:.2f} of the side; {psutil.cpu_count()} cores"
    )
    print_scaling(copies)
    print_prefecture(copies, workers=args.workers, worker_cores=args.worker_cores)


if __name__ == "__main__":
    main()
