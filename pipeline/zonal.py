"""Fractional-coverage zonal sums of rasters over polygons (exactextract).

A parcel boundary cuts through pixels. Counting a pixel by whether its centre falls in
the polygon biases small and narrow parcels and makes neighbouring parcels' totals fail
to add up to the area's total. Here every pixel is weighted by the exact fraction of its
area inside the polygon, computed by exactextract (Baston 2022, the ``exactextract``
library, https://github.com/isciences/exactextract): for a partition of the area into
parcels the fractions of each pixel sum to one, so parcel totals add up to the total.

:func:`coverage_cells` asks exactextract once per polygon for the covered cells and their
coverage fractions (operations ``cell_id`` and ``coverage``); the sums over any number of
value arrays on the same grid are then plain numpy (:func:`weighted_sum`), which also
allows non-linear aggregates such as the root sum of squares of pixel SDs.

Over a large grid the value arrays are not held whole: :func:`coverage_windows` groups the
polygons by the raster block (the rasters' Dask chunk, at most :data:`MAX_BLOCK_PX` a side)
their bounding box starts in and
gives each group's coverage on the window its cells span, so a caller reads its rasters
one window at a time (:meth:`Window.grid`) and memory follows a block and the largest
polygon, not the grid. A polygon's cells are the same on the window as on the whole grid,
in the same order, so its sums are the same to the bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dask.array
import geopandas as gpd
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from exactextract import exact_extract
from exactextract.raster import NumPyRasterSource
from odc.geo.geobox import GeoBox

from pipeline.errors import InputDataError


@dataclass(frozen=True)
class Coverage:
    """The cells a polygon covers (flat row-major indices) and their covered fractions."""

    cell: np.ndarray
    fraction: np.ndarray


def coverage_cells(
    polygons: gpd.GeoDataFrame,
    *,
    transform: Affine,
    shape: tuple[int, int],
    crs: str,
) -> list[Coverage]:
    """Covered cells and coverage fractions of each polygon on a north-up grid.

    Parameters
    ----------
    polygons
        Polygons with a CRS; reprojected to ``crs`` if needed.
    transform
        Affine transform of the grid (north-up: no rotation, negative y step).
    shape
        ``(ny, nx)`` of the grid.
    crs
        CRS of the grid (e.g. ``"EPSG:32650"``).

    Returns
    -------
    list of Coverage
        One entry per polygon, in the order of ``polygons``.
    """
    if polygons.crs is None:
        raise InputDataError("the parcel polygons have no CRS; write the GeoPackage with one")
    if transform.b != 0 or transform.d != 0 or transform.e >= 0:
        raise InputDataError(f"the raster grid must be north-up, got transform {transform}")
    ny, nx = shape
    xmin, ymax = transform.c, transform.f
    xmax, ymin = xmin + nx * transform.a, ymax + ny * transform.e
    # a placeholder raster: only the grid matters for cell ids and coverage fractions (one
    # zero repeated, so it takes no memory; exactextract reads each polygon's window of it)
    placeholder = np.broadcast_to(np.zeros(1, dtype=np.uint8).reshape(1, 1), (ny, nx))
    src = NumPyRasterSource(placeholder, xmin, ymin, xmax, ymax)
    geoms = polygons[[polygons.geometry.name]].to_crs(crs).reset_index(drop=True)
    if len(geoms) == 0:
        return []
    table = exact_extract(src, geoms, ["cell_id", "coverage"], output="pandas")
    out = []
    for cells, fractions in zip(table["cell_id"], table["coverage"], strict=True):
        out.append(
            Coverage(np.asarray(cells, dtype=np.int64), np.asarray(fractions, dtype=np.float64))
        )
    return out


def weighted_sum(cov: Coverage, values: np.ndarray, *, power: int = 1) -> float:
    """Sum of ``values**power x fraction**power`` over the covered cells, NaN counted as 0.

    ``power=1`` is the fractional-coverage sum; ``power=2`` is the sum of squared
    contributions used for the variance of a sum of independent pixel errors.
    """
    v = values.reshape(-1)[cov.cell].astype(np.float64)
    contrib = np.where(np.isfinite(v), v * cov.fraction, 0.0)
    return float(np.sum(contrib**power))


def covered_fraction_sum(cov: Coverage, mask: np.ndarray | None = None) -> float:
    """Sum of coverage fractions (in cells), optionally only where ``mask`` is true."""
    if mask is None:
        return float(np.sum(cov.fraction))
    m = mask.reshape(-1)[cov.cell]
    return float(np.sum(np.where(m, cov.fraction, 0.0)))


def fraction_raster(cov: Coverage, shape: tuple[int, int]) -> np.ndarray:
    """The covered fraction of every cell of a ``shape`` grid (0 where not covered)."""
    out = np.zeros(shape[0] * shape[1], dtype=np.float64)
    out[cov.cell] = cov.fraction
    return out.reshape(shape)


def grid_fraction(cov: Coverage, *, polygon_area_m2: float, cell_area_m2: float) -> float:
    """The share of a polygon's area on the grid: 1 inside it, 0 entirely off it."""
    return min(covered_fraction_sum(cov) * cell_area_m2 / polygon_area_m2, 1.0)


def grid_fractions(polygons: gpd.GeoDataFrame, *, grid: GeoBox) -> np.ndarray:
    """:func:`grid_fraction` of every polygon on a north-up ``grid`` (with a CRS)."""
    crs = str(grid.crs)
    ny, nx = grid.shape
    covs = coverage_cells(polygons, transform=grid.affine, shape=(ny, nx), crs=crs)
    areas = polygons.geometry.to_crs(crs).area.to_numpy()
    cell = abs(grid.affine.a * grid.affine.e)
    return np.array(
        [
            grid_fraction(c, polygon_area_m2=a, cell_area_m2=cell)
            for c, a in zip(covs, areas, strict=True)
        ]
    )


@dataclass(frozen=True)
class Window:
    """A group of polygons (``members``: their rows in the polygon table) and their
    coverage on the window of the grid their cells span (rows ``y``, columns ``x``;
    ``covs`` index the window's cells, flat row-major)."""

    members: np.ndarray
    covs: list[Coverage]
    y: slice
    x: slice

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.stop - self.y.start, self.x.stop - self.x.start

    def grid(self, raster: xr.DataArray) -> xr.DataArray:
        """``raster`` (on the whole grid) cut to the window (:func:`cut`)."""
        return cut(raster, y=self.y, x=self.x)


def cut(raster: xr.DataArray, *, y: slice, x: slice) -> xr.DataArray:
    """``raster`` cut to rows ``y`` and columns ``x`` (lazy if ``raster`` is), georeferenced
    as the cut: its transform is written, since one row or column of cell centres does not
    give it."""
    transform = raster.rio.transform(recalc=True) @ Affine.translation(x.start, y.start)
    return raster.isel(y=y, x=x).rio.write_transform(transform)


#: the largest side (cells) of the blocks windows are grouped by: a window's layers and
#: the graph computing them take about 300 bytes a cell in the parcels stage, some 80 MB
#: for a block of 512 (a window reads only its own cells of a file's chunks)
MAX_BLOCK_PX = 512


def block_shape(raster: xr.DataArray) -> tuple[int, int]:
    """The block a raster is read in (rows, columns): its Dask chunk, or the whole grid,
    at most :data:`MAX_BLOCK_PX` a side."""
    if isinstance(raster.data, dask.array.Array):
        chunks = dict(zip(raster.dims, raster.data.chunksize, strict=True))
        ny, nx = chunks["y"], chunks["x"]
    else:
        ny, nx = raster.sizes["y"], raster.sizes["x"]
    return min(int(ny), MAX_BLOCK_PX), min(int(nx), MAX_BLOCK_PX)


def coverage_windows(
    polygons: gpd.GeoDataFrame,
    *,
    transform: Affine,
    shape: tuple[int, int],
    crs: str,
    block: tuple[int, int],
) -> Iterator[Window]:
    """The polygons in groups, one per ``block`` of the grid that their bounding boxes'
    top-left corners fall in (clipped to the grid), each with its coverage on its window
    (see :func:`coverage_cells` for the arguments). Every polygon is in one group; a group
    whose polygons lie off the grid has an empty window."""
    if polygons.crs is None:
        raise InputDataError("the parcel polygons have no CRS; write the GeoPackage with one")
    ny, nx = shape
    geoms = polygons[[polygons.geometry.name]].to_crs(crs).reset_index(drop=True)
    if len(geoms) == 0:
        return
    bounds = geoms.geometry.bounds
    col = np.floor((bounds["minx"].to_numpy() - transform.c) / transform.a)
    row = np.floor((bounds["maxy"].to_numpy() - transform.f) / transform.e)
    by, bx = block
    key = np.clip(row, 0, ny - 1).astype(np.int64) // by * (nx // bx + 1) + (
        np.clip(col, 0, nx - 1).astype(np.int64) // bx
    )
    # the groups in the order of their blocks, each polygon's rows ascending (stable sort)
    order = np.argsort(key, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        covs = coverage_cells(geoms.iloc[members], transform=transform, shape=shape, crs=crs)
        rows_cols = [np.divmod(c.cell, nx) for c in covs]
        cells = np.concatenate([c.cell for c in covs])
        if cells.size:
            r, c = np.divmod(cells, nx)
            r0, c0, r1, c1 = int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1
        else:
            r0 = c0 = r1 = c1 = 0
        local = [
            Coverage((r - r0) * (c1 - c0) + (c - c0), cov.fraction)
            for (r, c), cov in zip(rows_cols, covs, strict=True)
        ]
        yield Window(members=members, covs=local, y=slice(r0, r1), x=slice(c0, c1))
