"""Benchmark of the LiDAR stage against raw LAZ decoding and whitebox-workflows.

Generates (once, cached under ``data/bench/``) a seeded synthetic LAZ of about 20 million
returns (1 km x 1 km, 30 degree slope, crowns, classified, LAS 1.4 point format 6), then
times, each in its own process (so the peak memory of each is its own):

- ``decode``: raw lazrs decoding of every field (laspy chunk iterator, one thread): the
  yardstick; every other figure is a throughput ratio to it (>1 = faster than decoding),
  on CPU time (``time.process_time``: throughput per core, robust to other jobs on a
  shared machine), with wall-clock ratios alongside;
- ``decode_selected``: decoding only the fields the pipeline uses (XY, Z, class);
- ``chm``: read + highest return per 1 m cell (the p2r CHM / whitebox block maximum);
- ``stage``: the whole LiDAR stage on the classified file (noise, DTM TIN, normalise,
  CHM, 10 m metrics, QA), one core (Dask synchronous scheduler);
- ``stage_ground``: the same with the file's ground class ignored (``min_ground_share``
  1), so the outlier filter and the SMRF ground filter run as on an unclassified tile;
- ``wbw_chm`` / ``wbw_dtm``: whitebox-workflows ``lidar_block_maximum`` and
  ``lidar_tin_gridding`` (ground only) on the same file, one core (``max_procs = 1``).

Goals (issue 5): chm >= 0.70 x decode, stage >= 0.40 x decode, peak memory < 2 GB.

Run: ``.venv/bin/python benchmarks/bench_lidar.py [--points N]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "data" / "bench"
SEED = 20240501
PULSES_M2 = 13.0  # about 1.55 returns per pulse: 20 returns/m2
PARTS = ("decode", "decode_selected", "chm", "stage", "stage_ground", "wbw_chm", "wbw_dtm")


def bench_file(points: int) -> Path:
    """The cached benchmark LAZ (generated on first use)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from lidar_fixtures import make_scene, write_tiles

    side = max(10 * round(math.sqrt(points / (PULSES_M2 * 1.55)) / 10), 50)
    path = BENCH_DIR / f"lidar_{points}_{SEED}.laz"
    if path.is_file():
        return path
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    x0, y0 = 500_000.0, 2_900_000.0
    print(f"generating {path} ({side} m x {side} m) ...", flush=True)
    scene = make_scene(
        seed=SEED, bounds=(x0, y0, x0 + side, y0 + side), slope_deg=30.0, pulses_m2=PULSES_M2
    )
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        (tile,) = write_tiles(scene, Path(tmp), tile_m=float(side))
        tile.replace(path)
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its (finished) children, MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


def run_part(part: str, path: Path) -> dict[str, float]:
    """Time one part in this process."""
    # imports first: the timings are of the work, not of loading modules
    import dask
    import laspy
    import numpy as np

    # imported by name: the package's type stub does not parse under mypy
    wbw = importlib.import_module("whitebox_workflows")

    from pipeline.config import LidarParams
    from pipeline.contracts import LIDAR_QA_RELPATH
    from pipeline.grid import north_up_geobox
    from pipeline.lidar.chm import p2r
    from pipeline.lidar.read import SELECTION, PointSink, Target, read_targets
    from pipeline.stages.lidar import LidarJob, run_lidar

    with laspy.open(path) as r:
        n = int(r.header.point_count)
        mins, maxs = r.header.mins, r.header.maxs
    t0 = time.perf_counter()
    c0 = time.process_time()
    if part in ("decode", "decode_selected"):
        sel = SELECTION if part == "decode_selected" else laspy.DecompressionSelection.all()
        with laspy.open(path, laz_backend=laspy.LazBackend.Lazrs, decompression_selection=sel) as r:
            for chunk in r.chunk_iterator(1_000_000):
                _ = chunk.array  # decoded records
    elif part == "chm":
        x0, y0 = math.floor(mins[0]), math.floor(mins[1])
        x1, y1 = math.ceil(maxs[0]) + 1, math.ceil(maxs[1]) + 1
        sink = PointSink(n)
        read_targets(path, [Target(((x0, y0, x1, y1),), (x0, y0), sink)])
        pts = sink.points((x0, y0))
        shape = (int(y1 - y0), int(x1 - x0))
        cgrid = north_up_geobox(shape, x0_m=0.0, ytop_m=float(y1 - y0), res_m=1.0)
        chm = p2r(pts, cgrid)
        assert np.isfinite(chm).any()
    elif part in ("stage", "stage_ground"):
        x0, y0 = 10 * math.floor(mins[0] / 10), 10 * math.floor(mins[1] / 10)
        x1, y1 = 10 * math.ceil(maxs[0] / 10), 10 * math.ceil(maxs[1] / 10)
        shape = (int((y1 - y0) / 10), int((x1 - x0) / 10))
        grid = north_up_geobox(shape, x0_m=x0, ytop_m=y1, res_m=10.0)
        params = LidarParams(min_ground_share=1.0 if part == "stage_ground" else 0.01)
        job = LidarJob(params, crs="EPSG:32650", resolution_m=10.0)
        with dask.config.set(scheduler="sync"):
            out = run_lidar(job, tiles=(path,), model_grid=grid)
        qa = out[LIDAR_QA_RELPATH]
        assert qa["n_tiles_ok"] == 1  # type: ignore[index]
    elif part in ("wbw_chm", "wbw_dtm"):
        wbe = wbw.WbEnvironment()
        wbe.max_procs = 1
        wbe.verbose = False
        with tempfile.TemporaryDirectory() as tmp:
            ig = wbe.lidar.interpolation_gridding
            if part == "wbw_chm":
                ig.lidar_block_maximum(
                    input=str(path),
                    resolution=1.0,
                    excluded_classes="7,18",
                    output=f"{tmp}/chm.tif",
                )
            else:
                non_ground = ",".join(str(c) for c in range(19) if c != 2)
                ig.lidar_tin_gridding(
                    input=str(path),
                    resolution=1.0,
                    excluded_classes=non_ground,
                    output=f"{tmp}/dtm.tif",
                )
    else:
        raise SystemExit(f"unknown part {part}")
    cpu = time.process_time() - c0
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_seconds": cpu, "points": n, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20_000_000, help="returns in the test file")
    ap.add_argument(
        "--skip-whitebox",
        action="store_true",
        help="skip the whitebox-workflows parts (they hold the whole cloud: ~13 GB at 20 M)",
    )
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args.file)))
        return 0
    path = bench_file(args.points)
    results: dict[str, dict[str, float]] = {}
    for part in PARTS:
        if args.skip_whitebox and part.startswith("wbw"):
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--part", part, "--file", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if proc.returncode != 0:
            print(f"{part}: failed\n{proc.stderr[-2000:]}")
            continue
        results[part] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results["decode"]
    n = base["points"]
    print(f"\nfile: {path.name}, {n / 1e6:.1f} M returns, one core per part")
    print("throughput per CPU-second (process time: robust to other jobs on the machine);")
    print("wall-clock figures alongside\n")
    print(
        f"{'part':<16}{'Mpts/cpu-s':>11}{'x decode':>10}{'wall s':>8}{'x decode':>10}{'peak MB':>9}"
    )
    for part, r in results.items():
        print(
            f"{part:<16}{n / r['cpu_seconds'] / 1e6:>11.2f}"
            f"{base['cpu_seconds'] / r['cpu_seconds']:>10.2f}{r['seconds']:>8.1f}"
            f"{base['seconds'] / r['seconds']:>10.2f}{r['peak_rss_mb']:>9.0f}"
        )
    ratio = {p: base["cpu_seconds"] / r["cpu_seconds"] for p, r in results.items()}
    peak = max(r["peak_rss_mb"] for p, r in results.items() if not p.startswith("wbw"))
    print()
    print(
        f"goal chm >= 0.70 x decode: {ratio.get('chm', 0):.2f} "
        f"{'met' if ratio.get('chm', 0) >= 0.7 else 'NOT met'}"
    )
    print(
        f"goal stage >= 0.40 x decode: {ratio.get('stage', 0):.2f} "
        f"{'met' if ratio.get('stage', 0) >= 0.4 else 'NOT met'}"
    )
    print(f"goal peak memory < 2048 MB: {peak:.0f} MB {'met' if peak < 2048 else 'NOT met'}")
    if "wbw_chm" in ratio and "chm" in ratio:
        print(f"pipeline CHM vs whitebox block maximum: {ratio['chm'] / ratio['wbw_chm']:.2f} x")
    if "wbw_dtm" in ratio and "stage" in ratio:
        print(
            f"pipeline whole stage vs whitebox TIN DTM alone: "
            f"{ratio['stage'] / ratio['wbw_dtm']:.2f} x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
