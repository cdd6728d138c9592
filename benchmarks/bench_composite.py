"""Throughput and peak memory of the seasonal composite.

Throughput: writes a seeded set of synthetic Sentinel-2 scenes (``tests/test_composite.py``'s
layout, larger), then times, in the same run:

- the pipeline: odc-stac load, scale/offset, SCL mask with dilation, median of all ten
  bands, indices and n_valid, computed with Dask (threads);
- the baseline: reading the same COG windows with rasterio, the same scale/offset and
  SCL mask (no dilation), and ``numpy.nanmedian`` per band.

Prints pixels per second (model-grid pixels x bands x scenes) of both and their ratio.

Memory: writes seeded scenes covering a 2M x 2M-pixel square, then runs the composite
as a run does (``pipeline.io.write_cog`` onto a ``distributed.LocalCluster`` of two
single-threaded worker processes, as :mod:`pipeline.cluster` sizes it on two cores) once
on the top-left M x M region and once on the whole square (4x the area), each in a fresh
child process. The parent samples the resident set size (RSS) of the child and all its
descendants (the Dask worker processes) every 50 ms and prints the peak of the tree's
total for both regions and their ratio; a flat-memory composite keeps the ratio near 1 (a
composite that held the region in memory would approach 4). It also prints each process's
own peak: the "driver" is the child itself, which holds the client, the writer and (in a
``LocalCluster``) the scheduler and nannies; the graph's task count is printed with it.

Run: ``.venv/bin/python benchmarks/bench_composite.py [--part throughput|memory|all]``
(about 2-3 minutes on two cores for ``all``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import psutil
import pystac
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from process_tree import run_sampled, tree_rss, two_worker_processes

from pipeline import composite as C
from pipeline.config import CompositeParams

CRS = "EPSG:32650"
X0, Y0, RES = 700000.0, 2950000.0, 10.0
N_PX = 1024
N_SCENES = 8
BANDS = C.REFLECTANCE_BANDS
#: memory part: side of the small region (pixels); the large one is twice the side
MEM_PX = 512
MEM_SCENES = 6
MEM_CHUNK_PX = 256


def _write(path: Path, arr: np.ndarray) -> None:
    ny, nx = arr.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=nx, height=ny, count=1, dtype=arr.dtype, crs=CRS,
        transform=from_origin(X0, Y0, RES, RES), nodata=0, tiled=True, blockxsize=256,
        blockysize=256, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(arr, 1)


def make(
    root: Path, seed: int = 1, *, n_px: int = N_PX, n_scenes: int = N_SCENES
) -> list[pystac.Item]:
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n_scenes):
        sid = f"S2_BENCH_{k}"
        (root / sid).mkdir(parents=True)
        assets = {}
        for b in BANDS:
            _write(root / sid / f"{b}.tif", rng.integers(200, 4000, (n_px, n_px), dtype="uint16"))
            assets[b] = {"href": (root / sid / f"{b}.tif").as_uri(), "type": "image/tiff"}
        scl = np.where(rng.random((n_px, n_px)) < 0.1, 9, 4).astype("uint8")
        _write(root / sid / "scl.tif", scl)
        assets["scl"] = {"href": (root / sid / "scl.tif").as_uri(), "type": "image/tiff"}
        when = dt.datetime(2021, 6, 1) + dt.timedelta(days=5 * k)
        items.append(pystac.Item.from_dict({
            "type": "Feature", "stac_version": "1.0.0", "id": sid, "collection": "sentinel-2-l2a",
            "bbox": [118.5, 26.3, 119.5, 27.0],
            "geometry": {"type": "Polygon", "coordinates": [[[118.5, 26.3], [119.5, 26.3],
                         [119.5, 27.0], [118.5, 27.0], [118.5, 26.3]]]},
            "links": [], "assets": assets,
            "properties": {"datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "s2:processing_baseline": "03.01", "proj:epsg": 32650},
        }))  # fmt: skip
    return items


def baseline(root: Path, items: list[pystac.Item]) -> np.ndarray:
    out = np.empty((len(BANDS), N_PX, N_PX), dtype="float32")
    scl = [rasterio.open(root / i.id / "scl.tif").read(1) for i in items]
    bad = [np.isin(s, [0, 1, 3, 8, 9, 10, 11]) for s in scl]
    for bi, b in enumerate(BANDS):
        stack = np.empty((len(items), N_PX, N_PX), dtype="float32")
        for k, i in enumerate(items):
            with rasterio.open(root / i.id / f"{b}.tif") as src:
                dn = src.read(1)
            stack[k] = np.where((dn == 0) | bad[k], np.nan, dn * np.float32(1e-4))
        out[bi] = np.nanmedian(stack, axis=0)
    return out


def _geobox(n_px: int) -> GeoBox:
    return GeoBox.from_bbox(
        BoundingBox(X0, Y0 - n_px * RES, X0 + n_px * RES, Y0, crs=CRS), crs=CRS, resolution=RES
    )


def throughput() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = make(root)
        gbox = _geobox(N_PX)
        work = N_PX * N_PX * len(BANDS) * len(items)
        settings = C.CompositeSettings.from_params(
            CompositeParams(cloud_dilation_px=2, resampling="nearest"),
            chunk_px=512,
            default_provider=None,
        )
        t0 = time.perf_counter()
        comp, _ = C.seasonal_composite(items, gbox, settings=settings)
        with dask.config.set(scheduler="threads", num_workers=2):
            result = comp.values
        t_pipe = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = baseline(root, items)
        t_base = time.perf_counter() - t0
        # same data, same median where dilation did not change the mask
        diff = np.nanmax(np.abs(result[0] - ref[0]))
        print(f"scenes {len(items)}, grid {N_PX}x{N_PX}, bands {len(BANDS)}")
        print(f"pipeline (odc-stac + dask, masks dilated, +indices): {t_pipe:6.2f} s "
              f"{work / t_pipe / 1e6:7.2f} Mpx/s")  # fmt: skip
        print(f"baseline (rasterio + numpy nanmedian):                {t_base:6.2f} s "
              f"{work / t_base / 1e6:7.2f} Mpx/s")  # fmt: skip
        print(f"ratio pipeline/baseline throughput: {t_base / t_pipe:.2f}")
        print(f"max |blue difference| (dilation masks more in the pipeline): {diff:.4f}")


# --------------------------------------------------------------------------- memory


def _measure_child(items_path: Path, n_px: int, out: Path) -> None:
    """In a fresh process: the composite of the top-left ``n_px`` square, written as a run does."""
    from pipeline.io import write_cog

    items = [pystac.Item.from_dict(f) for f in json.loads(items_path.read_text())["features"]]
    settings = C.CompositeSettings.from_params(
        CompositeParams(cloud_dilation_px=2), chunk_px=MEM_CHUNK_PX, default_provider=None
    )
    t0 = time.perf_counter()
    with two_worker_processes() as client:
        idle, _ = tree_rss(psutil.Process())
        comp, _ = C.seasonal_composite(items, _geobox(n_px), settings=settings)
        graph = {"tasks": len(comp.data.__dask_graph__()), "chunks": comp.data.npartitions}
        write_cog(comp, out, client=client)
    seconds = round(time.perf_counter() - t0, 2)
    print(json.dumps({"seconds": seconds, "idle_rss_mb": idle / 2**20, **graph}))


def _run_measured(items_path: Path, n_px: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(items_path)]
    return run_sampled([*cmd, str(n_px), str(out)])


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = make(root / "scenes", seed=2, n_px=2 * MEM_PX, n_scenes=MEM_SCENES)
        items_path = root / "items.json"
        items_path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
        rows = {}
        for n_px in (MEM_PX, 2 * MEM_PX):
            rows[n_px] = _run_measured(items_path, n_px, root / f"composite_{n_px}.tif")
        small, large = rows[MEM_PX], rows[2 * MEM_PX]
        print(f"memory: {MEM_SCENES} scenes x {len(BANDS)} bands, {MEM_CHUNK_PX}-px chunks, "
              "LocalCluster 2 workers x 1 thread, write_cog")  # fmt: skip
        for n_px, r in rows.items():
            print(
                f"  region {n_px}x{n_px} px: peak process-tree RSS {r['peak_rss_mb']:6.0f} MB "
                f"({r['processes']} processes; idle cluster {r['idle_rss_mb']:.0f} MB, "
                f"compute adds {r['peak_rss_mb'] - r['idle_rss_mb']:.0f} MB), "
                f"{r['seconds']:.1f} s; graph {r['tasks']} tasks, {r['chunks']} output chunks"
            )
            # each process's own peak (they need not coincide with the tree's peak)
            print("    per-process peak RSS: " + ", ".join(
                f"{role} {mb:.0f} MB" for role, mb in r["peaks_mb"]))  # fmt: skip
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        added = (large["peak_rss_mb"] - large["idle_rss_mb"]) / (
            small["peak_rss_mb"] - small["idle_rss_mb"]
        )
        print(f"  area ratio 4.00: peak RSS ratio {ratio:.2f}, "
              f"ratio of what compute adds {added:.2f}")  # fmt: skip


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_child":
        _measure_child(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("throughput", "memory", "all"), default="all")
    args = ap.parse_args()
    if args.part in ("throughput", "all"):
        throughput()
    if args.part in ("memory", "all"):
        memory()


if __name__ == "__main__":
    main()
