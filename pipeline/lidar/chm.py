"""Canopy height models: highest return per cell (p2r) and the pit-free algorithm.

- :class:`P2R`: each cell takes the highest normalised return inside it, as lidR's
  ``rasterize_canopy(las, res, p2r())`` (empty cells stay NaN). With ``subcells`` k > 1
  the highest return is taken per sub-cell of side res / k, empty sub-cells are filled
  from their neighbours (``fill="neighbours"``: the mean of the occupied sub-cells of the
  3 x 3 window, a one-ring version of lidR's ``p2r(na.fill = knnidw())``; a TIN fill as
  ``na.fill = tin()`` gives the same accuracy on the demo region but its triangulation of
  every sub-cell's highest return costs about 40 s per km2), and the cell takes the
  highest of its k x k sub-cells. Why: at a few pulses per m2 a 1 m cell holds a handful
  of first returns and misses its highest point whenever no pulse hits the crown's
  apex; a sub-cell without a return is then estimated from its neighbours, not ignored.
  On the demo region (5 pulses/m2, 0.5 m sub-cells) this cuts the CHM RMSE of canopy
  cells from 1.6 m to 0.8 m against a plain 1 m p2r.
- :class:`PitFree`: Khosravipour et al. 2014, "Generating pit-free canopy height models
  from airborne lidar", PE&RS 80(9):863-872, doi:10.14358/PERS.80.9.863: TINs of the
  first returns above a series of height thresholds, triangles with an edge longer than
  ``max_edge_m`` dropped (except for the lowest layer), and the cell-wise maximum of the
  layers. Defaults follow lidR's ``pitfree(thresholds = c(0, 2, 5, 10, 15),
  max_edge = c(0, 1))``; the first returns are first thinned to the highest per half cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from odc.geo.geobox import GeoBox
from scipy import ndimage

from pipeline.grid import flat_index_blocks, north_up_geobox
from pipeline.lidar.points import PointSet
from pipeline.lidar.tin import rasterise_tin, triangulate


@dataclass(frozen=True)
class P2R:
    """Highest return per cell (or per sub-cell, gap-filled, then the cell's highest).

    Parameters and their defaults: ``p2r_*`` of :class:`pipeline.config.LidarParams`.
    """

    #: sub-cells per cell side (1: plain p2r)
    subcells: int
    #: how empty sub-cells are filled before taking each cell's highest
    fill: Literal["none", "neighbours"]


@dataclass(frozen=True)
class PitFree:
    """Pit-free CHM (Khosravipour et al. 2014).

    Parameters and their defaults: ``pitfree_*`` of :class:`pipeline.config.LidarParams`.
    """

    #: height thresholds of the TIN layers, metres
    thresholds_m: tuple[float, ...]
    #: max triangle edge of the lowest layer (0 = no limit) and of the others, metres
    max_edge_m: tuple[float, float]


def p2r(points: PointSet, grid: GeoBox) -> np.ndarray:
    """Highest height per cell (float32, NaN where the cell has no return)."""
    out = np.full(grid.height * grid.width, -np.inf, np.float32)
    for sl, flat, inside in flat_index_blocks(grid, points.x_m, points.y_m):
        np.maximum.at(out, flat[inside], points.z_m[sl][inside])
    out[np.isneginf(out)] = np.nan
    return out.reshape(grid.shape)


def fill_from_neighbours(z: np.ndarray) -> np.ndarray:
    """NaN cells set to the mean of the finite cells of their 3 x 3 window (else NaN)."""
    empty = np.isnan(z)
    if not empty.any():
        return z
    valid = (~empty).astype(np.float32)
    k = np.ones((3, 3), np.float32)
    total = ndimage.convolve(np.where(empty, 0.0, z).astype(np.float32), k, mode="constant")
    count = ndimage.convolve(valid, k, mode="constant")
    out = z.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out[empty] = np.where(count[empty] > 0, total[empty] / count[empty], np.nan)
    return out


def p2r_subcells(points: PointSet, grid: GeoBox, *, algorithm: P2R) -> np.ndarray:
    """:class:`P2R` with sub-cells: highest per sub-cell, gaps filled, highest per cell."""
    k = algorithm.subcells
    if k == 1 and algorithm.fill == "none":
        return p2r(points, grid)
    a = grid.affine
    fine = north_up_geobox(
        (grid.height * k, grid.width * k), x0_m=a.c, ytop_m=a.f, res_m=a.a / k, crs=grid.crs
    )
    sub = p2r(points, fine)
    if algorithm.fill == "neighbours":
        sub = fill_from_neighbours(sub)
    blocks = sub.reshape(grid.height, k, grid.width, k)
    # NaN only where no sub-cell has a value (np.nanmax would warn on those)
    out = np.where(np.isnan(blocks), -np.inf, blocks).max(axis=(1, 3))
    out[np.isneginf(out)] = np.nan
    return out.astype(np.float32)


def _highest_per_cell(points: PointSet, cell_m: float) -> PointSet:
    ix = np.floor(points.x_m / cell_m).astype(np.int64)
    iy = np.floor(points.y_m / cell_m).astype(np.int64)
    if ix.shape[0] == 0:
        return points
    ix -= ix.min()
    iy -= iy.min()
    key = iy * (int(ix.max()) + 1) + ix
    order = np.lexsort((points.y_m, points.x_m, -points.z_m, key))
    ks = key[order]
    first = np.ones(ks.shape[0], bool)
    first[1:] = ks[1:] != ks[:-1]
    return points.select(order[first])


def pitfree(points: PointSet, grid: GeoBox, *, algorithm: PitFree) -> np.ndarray:
    """Pit-free CHM (float32) on ``grid`` from normalised returns."""
    first = points.select(points.return_number == 1)
    top = _highest_per_cell(first, grid.affine.a / 2)
    out = np.full(grid.shape, np.nan, np.float32)
    for i, th in enumerate(algorithm.thresholds_m):
        layer_pts = top.select(top.z_m >= th) if th > 0 else top
        tri = triangulate(layer_pts.x_m, layer_pts.y_m)
        if tri is None:
            continue
        layer = rasterise_tin(
            layer_pts.x_m,
            layer_pts.y_m,
            layer_pts.z_m,
            tri,
            grid,
            max_edge_m=algorithm.max_edge_m[0 if i == 0 else 1],
        )
        out = np.fmax(out, layer)
    # cells without any triangle but with returns keep their highest return
    gaps = np.isnan(out)
    if gaps.any():
        out[gaps] = p2r(points, grid)[gaps]
    return out


def chm(points: PointSet, grid: GeoBox, *, algorithm: P2R | PitFree) -> np.ndarray:
    """Canopy height model on ``grid`` (heights in metres, float32)."""
    if isinstance(algorithm, PitFree):
        return pitfree(points, grid, algorithm=algorithm)
    return p2r_subcells(points, grid, algorithm=algorithm)
