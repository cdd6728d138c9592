"""Throughput of the seasonal composite next to a plain rasterio + numpy baseline.

Writes a seeded set of synthetic Sentinel-2 scenes (``tests/test_composite.py``'s layout,
larger), then times, in the same run:

- the pipeline: odc-stac load, scale/offset, SCL mask with dilation, median of all ten
  bands, indices and n_valid, computed with Dask (threads);
- the baseline: reading the same COG windows with rasterio, the same scale/offset and
  SCL mask (no dilation), and ``numpy.nanmedian`` per band.

Prints pixels per second (model-grid pixels x bands x scenes) of both and their ratio.
Run: ``.venv/bin/python benchmarks/bench_composite.py``.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pystac
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import composite as C

CRS = "EPSG:32650"
X0, Y0, RES = 700000.0, 2950000.0, 10.0
N_PX = 1024
N_SCENES = 8
BANDS = C.REFLECTANCE_BANDS


def _write(path: Path, arr: np.ndarray) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=N_PX, height=N_PX, count=1, dtype=arr.dtype, crs=CRS,
        transform=from_origin(X0, Y0, RES, RES), nodata=0, tiled=True, blockxsize=256,
        blockysize=256, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(arr, 1)


def make(root: Path, seed: int = 1) -> list[pystac.Item]:
    rng = np.random.default_rng(seed)
    items = []
    for k in range(N_SCENES):
        sid = f"S2_BENCH_{k}"
        (root / sid).mkdir(parents=True)
        assets = {}
        for b in BANDS:
            _write(root / sid / f"{b}.tif", rng.integers(200, 4000, (N_PX, N_PX), dtype="uint16"))
            assets[b] = {"href": (root / sid / f"{b}.tif").as_uri(), "type": "image/tiff"}
        scl = np.where(rng.random((N_PX, N_PX)) < 0.1, 9, 4).astype("uint8")
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = make(root)
        gbox = GeoBox.from_bbox(
            BoundingBox(X0, Y0 - N_PX * RES, X0 + N_PX * RES, Y0, crs=CRS), crs=CRS, resolution=RES
        )
        work = N_PX * N_PX * len(BANDS) * len(items)
        settings = C.CompositeSettings(cloud_dilation_px=2, resampling="nearest", chunk_px=512)
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


if __name__ == "__main__":
    main()
