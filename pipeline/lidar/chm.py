"""Canopy height models: highest return per cell (p2r) and the pit-free algorithm.

- :class:`P2R`: each cell takes the highest normalised return inside it, as lidR's
  ``rasterize_canopy(las, res, p2r())`` (empty cells stay NaN).
- :class:`PitFree`: Khosravipour et al. 2014, "Generating pit-free canopy height models
  from airborne lidar", PE&RS 80(9):863-872, doi:10.14358/PERS.80.9.863: TINs of the
  first returns above a series of height thresholds, triangles with an edge longer than
  ``max_edge_m`` dropped (except for the lowest layer), and the cell-wise maximum of the
  layers. Defaults follow lidR's ``pitfree(thresholds = c(0, 2, 5, 10, 15),
  max_edge = c(0, 1))``; the first returns are first thinned to the highest per half cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.lidar.grid import CellGrid
from pipeline.lidar.points import PointSet
from pipeline.lidar.tin import rasterise_tin, triangulate


@dataclass(frozen=True)
class P2R:
    """Highest return per cell."""


@dataclass(frozen=True)
class PitFree:
    """Pit-free CHM (Khosravipour et al. 2014)."""

    thresholds_m: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0)
    #: max triangle edge of the lowest layer (0 = no limit) and of the others, metres
    max_edge_m: tuple[float, float] = (0.0, 1.0)


def p2r(points: PointSet, grid: CellGrid) -> np.ndarray:
    """Highest height per cell (float32, NaN where the cell has no return)."""
    out = np.full(grid.rows * grid.cols, -np.inf, np.float32)
    for sl, flat, inside in grid.flat_index_blocks(points.x_m, points.y_m):
        np.maximum.at(out, flat[inside], points.z_m[sl][inside])
    out[np.isneginf(out)] = np.nan
    return out.reshape(grid.shape)


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


def pitfree(points: PointSet, grid: CellGrid, *, algorithm: PitFree) -> np.ndarray:
    """Pit-free CHM (float32) on ``grid`` from normalised returns."""
    first = points.select(points.return_number == 1)
    top = _highest_per_cell(first, grid.res_m / 2)
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


def chm(points: PointSet, grid: CellGrid, *, algorithm: P2R | PitFree) -> np.ndarray:
    """Canopy height model on ``grid`` (heights in metres, float32)."""
    if isinstance(algorithm, PitFree):
        return pitfree(points, grid, algorithm=algorithm)
    return p2r(points, grid)
