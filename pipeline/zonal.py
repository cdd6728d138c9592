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
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
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
    # a placeholder raster: only the grid matters for cell ids and coverage fractions
    src = NumPyRasterSource(np.zeros((ny, nx), dtype=np.uint8), xmin, ymin, xmax, ymax)
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
