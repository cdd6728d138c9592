"""Benchmark of the demo-region simulator: time and output size versus region area.

Builds the tiny region's world at 1x, 4x and 16x its area (``simulate.size_km`` times 1,
2 and 4, LiDAR block scaled alike) into temporary folders and prints wall time, output
size and counts per size. Run: ``.venv/bin/python benchmarks/bench_simulate.py``
(``make bench`` runs every benchmark).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pipeline.config import load_config, region_config_path
from pipeline.simulate import simulate_region


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    base = load_config(region_config_path("tiny"))
    rows = []
    for factor in (1, 2, 4):
        sim = base.simulate.model_copy(
            update={
                "size_km": base.simulate.size_km * factor,
                "lidar_km": base.simulate.lidar_km * factor,
                "lidar2_km": base.simulate.lidar2_km * factor,
                "n_plots": base.simulate.n_plots * factor**2,
            }
        )
        config = base.model_copy(update={"simulate": sim})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "region"
            out.mkdir()
            t0 = time.perf_counter()
            summary = simulate_region(config, out, seed=config.seed)
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "area_factor": factor**2,
                    "size_km": sim.size_km,
                    "wall_s": round(wall, 2),
                    "size_mb": round(_size_mb(out), 2),
                    "n_items": summary["n_items"],
                    "n_lidar_points": sum(t["n_points"] for t in summary["lidar"]["tiles"]),
                    "n_trees": summary["n_trees"],
                    "timings_s": summary["timings_s"],
                }
            )
            print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
