"""Writing the simulator's files: Cloud Optimized GeoTIFFs and deterministic JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine


def write_cog(
    path: Path,
    data: npt.NDArray[Any],
    *,
    transform: Affine,
    crs: str,
    nodata: float | None,
    descriptions: Sequence[str] | None = None,
    units: str | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Write a 2-D or 3-D (band, y, x) array as a deflate-compressed COG."""
    arr = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    predictor = 3 if np.issubdtype(arr.dtype, np.floating) else 2
    profile = {
        "driver": "COG",
        "width": arr.shape[2],
        "height": arr.shape[1],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": predictor,
        "blocksize": 512,
        "bigtiff": "NO",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        for i in range(arr.shape[0]):
            if descriptions is not None:
                dst.set_band_description(i + 1, descriptions[i])
            if units is not None:
                dst.update_tags(i + 1, units=units)
        if tags:
            dst.update_tags(**tags)


def write_json(path: Path, value: Any) -> None:
    """JSON with sorted keys and a trailing newline (byte-stable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_gpkg(path: Path, frame: Any, *, layer: str) -> None:
    """Write a GeoDataFrame as GeoPackage with a fixed ``last_change`` timestamp.

    GDAL stamps the current time into ``gpkg_contents``; ``OGR_CURRENT_DATE`` pins it so
    the same data give the same bytes.
    """
    import pyogrio

    path.parent.mkdir(parents=True, exist_ok=True)
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        frame.to_file(path, driver="GPKG", layer=layer, engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
