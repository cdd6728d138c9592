"""Writing the simulator's files: rasters for the pipeline's COG writer, deterministic JSON.

Rasters go through :func:`pipeline.io.write_cog`, the one COG writer of the project;
:func:`raster` puts a simulated array on its grid for it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from odc.geo.geobox import GeoBox


def raster(
    data: npt.NDArray[Any],
    grid: GeoBox,
    *,
    nodata: float | None,
    bands: Sequence[str] | None = None,
) -> xr.DataArray:
    """A 2-D or ``(band, y, x)`` array on ``grid`` as a DataArray for the COG writer.

    Georeferenced by the grid's CRS and affine alone, without x/y coordinates, so the
    file gets the grid's transform exactly (rather than one recomputed from cell
    centres). ``bands`` names the bands (their descriptions); ``nodata=None`` writes none.
    """
    arr = xr.DataArray(
        data if data.ndim == 3 else data[None], dims=("band", "y", "x"), attrs={"nodata": nodata}
    )
    if bands is not None:
        arr = arr.assign_coords(band=list(bands))
    return arr.rio.write_crs(grid.crs).rio.write_transform(grid.affine)


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
