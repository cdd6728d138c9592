"""Grids: one type, odc-geo's ``GeoBox``, and the cell arithmetic the pipeline does on it.

Every raster the pipeline writes on the model grid uses :func:`region_geobox`, so the
composites, the LiDAR area-based metrics and the biomass maps align cell for cell. The
grid is the AOI's bounding box in the region CRS, snapped outwards to whole multiples of
the resolution (so grids at 10 m and 1 m nest exactly).

The LiDAR engine and the simulator work on north-up grids of square cells, in map
coordinates or in the relative frame of a chunk's points (a GeoBox without CRS, made by
:func:`north_up_geobox`). The functions below index points into such a grid and give its
cell centres; they read only the GeoBox's affine (origin ``c``, ``f`` and cell side
``a``), a few attribute lookups per call of vectorised numpy, so the LiDAR hot loop needs
no plain-number copy of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import geopandas as gpd
import numpy as np
from affine import Affine
from odc.geo import MaybeCRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox


def snapped_bounds(
    bounds: tuple[float, float, float, float], resolution_m: float
) -> tuple[float, float, float, float]:
    """Bounds snapped outwards to multiples of ``resolution_m``."""
    minx, miny, maxx, maxy = bounds
    r = resolution_m
    return (
        math.floor(minx / r) * r,
        math.floor(miny / r) * r,
        math.ceil(maxx / r) * r,
        math.ceil(maxy / r) * r,
    )


def region_geobox(aoi: gpd.GeoDataFrame, *, crs: str, resolution_m: float) -> GeoBox:
    """The model grid covering ``aoi`` in ``crs`` at ``resolution_m`` (north-up)."""
    if aoi.crs is None:
        raise ValueError(
            "the AOI has no CRS; write it with an explicit CRS (e.g. GeoJSON in WGS84)"
        )
    bounds = snapped_bounds(tuple(aoi.to_crs(crs).total_bounds), resolution_m)
    return GeoBox.from_bbox(BoundingBox(*bounds, crs=crs), crs=crs, resolution=resolution_m)


def north_up_geobox(
    shape: tuple[int, int], *, x0_m: float, ytop_m: float, res_m: float, crs: MaybeCRS = None
) -> GeoBox:
    """A grid of ``shape`` (rows, cols) square cells of side ``res_m``, north up.

    (``x0_m``, ``ytop_m``) is its top-left corner. Without ``crs`` the coordinates are a
    local frame (e.g. metres from the corner of a LiDAR chunk).
    """
    return GeoBox(shape, Affine(res_m, 0.0, x0_m, 0.0, -res_m, ytop_m), crs)


def cell_centres(grid: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre coordinates of a north-up grid (x of each column, y of each row)."""
    a = grid.affine
    xc = a.c + (np.arange(grid.width) + 0.5) * a.a
    yc = a.f - (np.arange(grid.height) + 0.5) * a.a
    return xc, yc


def cell_index(grid: GeoBox, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (int32) of points in a north-up grid (may be out of range).

    Cells are closed-open in both map axes, ``[west, east) x [south, north)``, like the
    LiDAR chunk cores, so a return on a cell edge belongs to exactly one cell and chunk.
    """
    a = grid.affine
    col = np.floor((x - a.c) / a.a).astype(np.int32)
    row = np.ceil((a.f - y) / a.a).astype(np.int32)
    row -= 1
    return row, col


def flat_index(grid: GeoBox, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat (row-major) cell index of points and the mask of points inside the grid."""
    row, col = cell_index(grid, x, y)
    rows, cols = grid.shape
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    # int32 halves the memory of a chunk's indices; grids stay far below 2**31 cells
    row *= cols
    row += col
    return row, inside


def flat_index_blocks(
    grid: GeoBox, x: np.ndarray, y: np.ndarray, *, block: int = 1_000_000
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """:func:`flat_index` over slices of ``block`` points: ``(slice, flat, inside)``."""
    n = x.shape[0]
    for start in range(0, n, block):
        sl = slice(start, min(start + block, n))
        flat, inside = flat_index(grid, x[sl], y[sl])
        yield sl, flat, inside


def cell_window(grid: GeoBox, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Row/col range ``(r0, r1, c0, c1)`` of a north-up grid's cells inside ``box`` (clipped)."""
    a = grid.affine
    rows, cols = grid.shape
    c0 = round((box[0] - a.c) / a.a)
    c1 = round((box[2] - a.c) / a.a)
    r0 = round((a.f - box[3]) / a.a)
    r1 = round((a.f - box[1]) / a.a)
    return (max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols))
