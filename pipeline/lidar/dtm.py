"""Digital terrain model by TIN interpolation of ground returns.

As lidR's ``rasterize_terrain(las, res, tin())`` (Roussel et al. 2020,
doi:10.1016/j.rse.2020.112061): Delaunay triangulation of the ground returns, linear
interpolation at cell centres, and cells outside the triangulation's hull filled by
inverse-distance weighting of the nearest ground returns (lidR's default extrapolation
``knnidw(k = 3, p = 1, rmax = 50)``). Before triangulating, the ground returns are
thinned to the lowest one per cell of ``thin_m`` (default: twice the DTM resolution), which
keeps the terrain surface at the DTM's scale and bounds the triangulation's cost.
"""

from __future__ import annotations

import numpy as np
from odc.geo.geobox import GeoBox
from scipy.spatial import cKDTree

from pipeline.lidar.tin import rasterise_tin, triangulate


def lowest_per_cell(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, *, cell_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the lowest point of each ``cell_m`` cell (cells anchored at the frame origin).

    Ties in z (elevations are centimetre-quantised) are broken by position, so the kept
    point does not depend on the order the points were read in. The result is in cell
    order (row-major from the south-west), spatially coherent.
    """
    if x.shape[0] == 0:
        return x, y, z
    ix = np.floor(x / cell_m).astype(np.int64)
    iy = np.floor(y / cell_m).astype(np.int64)
    ix -= ix.min()
    iy -= iy.min()
    key = iy * (int(ix.max()) + 1) + ix
    zmin = np.full(int(key.max()) + 1, np.inf, np.float32)
    np.minimum.at(zmin, key, z)
    cand = np.nonzero(z == zmin[key])[0]
    order = np.lexsort((y[cand], x[cand], key[cand]))
    c = cand[order]
    kc = key[c]
    first = np.ones(c.shape[0], bool)
    first[1:] = kc[1:] != kc[:-1]
    keep = c[first]
    return x[keep], y[keep], z[keep]


def idw_fill(
    grid_z: np.ndarray,
    grid: GeoBox,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    k: int = 3,
    power: float = 1.0,
    rmax_m: float = 50.0,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """Fill NaN cells (where ``needed``) by IDW of the ``k`` nearest points within ``rmax_m``."""
    missing = np.isnan(grid_z)
    if needed is not None:
        missing &= needed
    if not missing.any() or x.shape[0] == 0:
        return grid_z
    rows, cols = np.nonzero(missing)
    a = grid.affine
    xc = a.c + (cols + 0.5) * a.a
    yc = a.f - (rows + 0.5) * a.a
    kk = min(k, x.shape[0])
    tree = cKDTree(np.column_stack([x, y]).astype(np.float64))
    dist, idx = tree.query(np.column_stack([xc, yc]), k=kk, distance_upper_bound=rmax_m)
    dist = dist.reshape(len(xc), kk)
    idx = idx.reshape(len(xc), kk)
    valid = np.isfinite(dist)
    zz = np.where(valid, z.astype(np.float64)[np.minimum(idx, x.shape[0] - 1)], 0.0)
    w = np.where(valid, 1.0 / np.maximum(dist, 1e-6) ** power, 0.0)
    wsum = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = (w * zz).sum(axis=1) / wsum
    grid_z[rows, cols] = np.where(wsum > 0, val, np.nan).astype(np.float32)
    return grid_z


def dtm_tin(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    grid: GeoBox,
    *,
    thin_m: float,
    idw_rmax_m: float = 50.0,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """DTM (float32, metres) on ``grid`` from ground returns ``x, y, z``.

    Parameters
    ----------
    x, y, z
        Ground returns (metres, same frame as ``grid``).
    thin_m
        Side of the cells in which only the lowest ground return is kept (0: no thinning).
    idw_rmax_m
        Search radius of the IDW extrapolation outside the triangulation.
    needed
        Boolean grid of the cells that must get a value (the others outside the
        triangulation stay NaN; saves extrapolating into empty buffer rings).
    """
    if thin_m > 0:
        x, y, z = lowest_per_cell(x, y, z, cell_m=thin_m)
    out = np.full(grid.shape, np.nan, np.float32)
    tri = triangulate(x, y)
    if tri is not None:
        rasterise_tin(x, y, z, tri, grid, out=out)
    return idw_fill(out, grid, x, y, z, rmax_m=idw_rmax_m, needed=needed)
