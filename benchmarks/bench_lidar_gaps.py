"""Benchmark of the LiDAR steps that degenerate on odd clouds: gaps in the ground, and
returns at one XYZ.

1. Terrain (issue 17 defect 6): 1 km tiles (LAS 1.4, point format 8) of sparse ground
   returns, one per 200 m2 as the 186 KB tile of the issue, with no gap, a lake (a disc of
   350 m radius) or a river (a diagonal band 600 m wide) and the same number of returns.
   The whole stage runs on each (one chunk, no Dask); the traced peak memory of the gap
   tiles is printed as a ratio to the no-gap tile's, which the grid sets: about 1 means the
   gap no longer matters.
2. Outlier filter (issue 18 item 12): the statistical outlier filter on 200,000 returns
   spread over a 100 m square, then on the same number with half of them at one XYZ; CPU
   seconds and their ratio (at most about 1: the duplicates are collapsed before the k-d
   tree is built).

Figures of 1 December 2026 (shared 2-core machine), with those of the code before in
brackets: peak 134 MB for each 192 KB tile, ratios 1.0 (no gap 448 MB, lake 534 MB,
river 1939 MB: ratios 1.19 and 4.33); outlier filter 1.0 s spread, 0.55 s half at one XYZ
(0.8 s and 20.3 s: ratio 24.8, growing with the square of the duplicates).

Run: ``.venv/bin/python benchmarks/bench_lidar_gaps.py`` (``make bench`` runs every
benchmark).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.config import LidarParams
from pipeline.grid import north_up_geobox
from pipeline.lidar.noise import statistical_outlier_mask
from pipeline.stages.lidar import LidarJob, run_lidar

ROOT = Path(__file__).resolve().parents[1]
X0, Y0, SIDE = 500_000.0, 2_900_000.0, 1000.0
SEED = 20261201


def terrain() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from lidar_fixtures import sparse_ground_tile

    model = north_up_geobox((100, 100), x0_m=X0, ytop_m=Y0 + SIDE, res_m=10.0)
    job = LidarJob(LidarParams(), crs="EPSG:32650", resolution_m=10.0)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gap in ("none", "lake", "river"):
            tile = sparse_ground_tile(Path(tmp) / f"{gap}.las", SIDE, gap, seed=SEED)
            tracemalloc.start()
            t0 = time.process_time()
            run_lidar(job, tiles=(tile,), model_grid=model, use_dask=False)
            seconds = time.process_time() - t0
            peaks[gap] = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            row = {
                "tile": gap,
                "kb": round(tile.stat().st_size / 1e3),
                "cpu_s": round(seconds, 2),
                "peak_mb": round(peaks[gap]),
                "peak_ratio_to_no_gap": round(peaks[gap] / peaks["none"], 2),
            }
            print(json.dumps(row), flush=True)


def outliers() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from lidar_fixtures import point_set

    rng = np.random.default_rng(SEED)
    n = 200_000
    x, y = rng.uniform(0, 100, (2, n))
    z = 100 + rng.normal(0, 0.3, n)
    spread = point_set(x, y, z)
    x[: n // 2], y[: n // 2], z[: n // 2] = 50.0, 50.0, 100.0
    stacked = point_set(x, y, z)
    times = {}
    for name, pts in (("spread", spread), ("half_at_one_xyz", stacked)):
        t0 = time.process_time()
        statistical_outlier_mask(pts, k=8, multiplier=2.0)
        times[name] = time.process_time() - t0
    print(
        json.dumps(
            {
                "outlier_filter_points": n,
                **{f"{k}_cpu_s": round(v, 2) for k, v in times.items()},
                "ratio": round(times["half_at_one_xyz"] / times["spread"], 2),
            }
        )
    )


if __name__ == "__main__":
    terrain()
    outliers()
