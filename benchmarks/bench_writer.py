"""Peak memory of the COG writer on a Dask cluster: a bounded window of blocks in flight.

Writes a lazy single-band float32 raster of ``SIDE`` x ``SIDE`` blocks of 512 px (a cheap
computation, so the cluster outruns the one thread that writes) with
:func:`pipeline.io.write_cog` on a ``distributed.LocalCluster`` of two single-threaded
worker processes, each time in a fresh child process, sampled with
:mod:`process_tree`:

- ``all at once``: the writer's window widened to every place of the grid, which is what
  the writer did before issue #19 (every block submitted at once: finished blocks wait
  in the workers for the writer);
- ``bounded``: the writer as it is (``PLACES_PER_THREAD`` places per thread in flight), on
  the same grid and on a quarter of it.

Prints, for each, the peak RSS of the driver (the child: client, scheduler, writer) and
of the busiest worker, the wall time, and the ratios bounded / all at once and, for the
bounded writer, 4x area / 1x area (flat memory keeps it near 1). The files of both
windows are compared byte for byte.

Run: ``.venv/bin/python benchmarks/bench_writer.py`` (about 2 minutes on two cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from process_tree import run_sampled, two_worker_processes

#: blocks per side of the large grid (SIDE**2 blocks of BLOCK_PX); the small one has half
SIDE = 40
BLOCK_PX = 512


def _child(side: int, window: str, out: Path) -> None:
    """In a fresh process: write the ``side`` x ``side``-block raster on a local cluster."""
    import dask.array as da
    import numpy as np
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    from pipeline import io

    n = side * BLOCK_PX
    if window == "all":
        io.PLACES_PER_THREAD = side * side  # every place, whatever the threads
    data = da.fromfunction(
        lambda b, y, x: y * 0.25 + x, shape=(1, n, n), chunks=(1, BLOCK_PX, BLOCK_PX), dtype="f4"
    )
    coords = {
        "band": ["v"],
        "y": 3_000_000 - 10.0 * (np.arange(n) + 0.5),
        "x": 500_000 + 10.0 * (np.arange(n) + 0.5),
    }
    arr = xr.DataArray(data, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32650")
    with two_worker_processes() as client:
        t0 = time.perf_counter()
        io.write_cog(arr, out, client=client)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": round(seconds, 2), "blocks": side * side}))


def _measure(side: int, window: str, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(side), window, str(out)]
    r = run_sampled(cmd)
    r["driver_mb"] = max(mb for role, mb in r["peaks_mb"] if role == "driver")
    r["worker_mb"] = max(mb for role, mb in r["peaks_mb"] if role == "worker")
    r["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    return r


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_child":
        _child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=SIDE, help="blocks per side of the large grid")
    side = ap.parse_args().side
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            (name, s): _measure(s, window, Path(tmp) / f"{window}_{s}.tif")
            for name, s, window in (
                ("all at once", side, "all"),
                ("bounded", side, "bounded"),
                ("bounded", side // 2, "bounded"),
            )
        }
    print(f"COG writer, {BLOCK_PX}-px float32 blocks, LocalCluster 2 workers x 1 thread")
    for (name, s), r in runs.items():
        print(
            f"  {name:<11} {s * s:5d} blocks: driver {r['driver_mb']:5.0f} MB, busiest worker "
            f"{r['worker_mb']:5.0f} MB, tree {r['peak_rss_mb']:5.0f} MB, {r['seconds']:6.1f} s"
        )
    before, after = runs[("all at once", side)], runs[("bounded", side)]
    quarter = runs[("bounded", side // 2)]
    for what in ("driver_mb", "worker_mb", "peak_rss_mb"):
        print(
            f"  {what[:-3]:<8} bounded / all at once {after[what] / before[what]:.2f}; "
            f"bounded 4x / 1x area {after[what] / quarter[what]:.2f}"
        )
    same = "identical" if before["sha256"] == after["sha256"] else "DIFFERENT"
    print(f"  files of both windows: {same} (sha256)")


if __name__ == "__main__":
    main()
