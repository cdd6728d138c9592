"""A two-stage toy pipeline for testing the runner itself (not science).

``noise`` turns a CSV of parameters into a seeded random raster on a small UTM grid;
``summary`` reads that raster back (lazily, as any stage input) and writes its mean.
With ``pause_s``, ``noise`` sleeps in every block, so a test can kill a run mid-write.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from pipeline.config import Config
from pipeline.contracts import RunLayout
from pipeline.stage import Stage

# the worker processes of a LocalCluster cannot import this test module
cloudpickle.register_pickle_by_value(__import__(__name__))

PARAMS_CSV = "params.csv"


@dataclass(frozen=True)
class NoiseJob:
    seed: int
    crs: str
    resolution_m: float
    pause_s: float = 0.0


def _pause(block: np.ndarray, pause_s: float) -> np.ndarray:
    time.sleep(pause_s)
    return block


def noise(job: NoiseJob, *, params: pd.DataFrame) -> dict[str, object]:
    n = int(params["size_px"].iloc[0])
    scale = float(params["scale"].iloc[0])
    data = da.random.default_rng(job.seed).random((1, n, n), chunks=(1, 64, 64)) * scale
    if job.pause_s:
        data = data.map_blocks(_pause, job.pause_s, dtype=data.dtype)
    x0, y0 = 700_000.0, 2_940_000.0
    r = job.resolution_m
    arr = xr.DataArray(
        data.astype("float32"),
        dims=("band", "y", "x"),
        coords={
            "band": ["noise"],
            "y": y0 - r * (np.arange(n) + 0.5),
            "x": x0 + r * (np.arange(n) + 0.5),
        },
        attrs={"units": "1"},
    ).rio.write_crs(job.crs)
    return {"toy/noise.tif": arr}


def summary(seed: int, *, raster: xr.DataArray) -> dict[str, object]:
    return {
        "toy/summary.json": {
            "mean": float(raster.mean().compute()),
            "bands": [str(b) for b in raster.coords["band"].values],
        }
    }


def _inputs_noise(config: Config, layout: RunLayout) -> dict[str, Path]:
    return {"params": config.data_dir / PARAMS_CSV}


def stages(pause_s: float = 0.0) -> tuple[Stage, ...]:
    return (
        Stage(
            name="noise",
            func=noise,
            params=lambda c: NoiseJob(c.seed, c.crs, c.resolution_m, pause_s),
            inputs=_inputs_noise,
        ),
        Stage(
            name="summary",
            func=summary,
            params=lambda c: c.seed,
            inputs=lambda c, layout: {"raster": layout.path("toy/noise.tif")},
        ),
    )


def write_config(tmp: Path, *, size_px: int = 256, scale: float = 1.0, n_workers: int = 2) -> Path:
    """A minimal valid config and its parameter CSV under ``tmp``."""
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"size_px": [size_px], "scale": [scale]}).to_csv(data / PARAMS_CSV, index=False)
    # a small AOI at the demo's place: `run` checks the AOI before any stage
    aoi = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[118.10, 26.60], [118.11, 26.60], [118.11, 26.61], [118.10, 26.61], [118.10, 26.60]]
    ]}}  # fmt: skip
    (tmp / "aoi.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [aoi]}))
    cfg = tmp / "toy.yaml"
    cfg.write_text(
        f"""region: toy
aoi: {tmp}/aoi.geojson
crs: EPSG:32650
resolution_m: 10
epochs:
  - {{name: "2019", start: 2019-03-01, end: 2019-11-30}}
  - {{name: "2024", start: 2024-03-01, end: 2024-11-30}}
data_dir: {data}
output_dir: {tmp}/out
seed: 7
dask: {{n_workers: {n_workers}, threads_per_worker: 1, memory_limit: 2GiB, chunk_px: 128}}
"""
    )
    return cfg
