"""Height normalisation: elevation minus the terrain under each return.

The terrain at a return is the bilinear interpolation of the TIN DTM between cell centres
(lidR's ``normalize_height(las, dtm_raster)`` uses the raster the same way; interpolating
the TIN itself at every return, as ``normalize_height(las, tin())``, differs by less than
the DTM's own error at 1 m cells and would cost a triangle search per return). Heights
below zero are clamped to zero; the QA counts those within ``tolerance_m`` (terrain and
ground-return noise) apart from those further below (low outliers the noise filters
missed, or DTM errors), whose share is the figure to watch.

A cloud that is already height-normalised (ground returns at 0 m) is detected by its
ground returns: median |z| under 0.2 m and 95th percentile under 1 m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox

from pipeline.lidar.points import PointSet

#: detection thresholds of an already normalised cloud (metres); a real terrain surface
#: within 20 cm of sea level over a whole chunk is the only case they could misjudge, and
#: ``normalised_input: "no"`` in the config overrides the detection
NORMALISED_MEDIAN_M = 0.2
NORMALISED_P95_M = 1.0
#: returns interpolated per block (bounds the temporaries to a few tens of MB)
BLOCK = 1_000_000


def looks_normalised(ground_z_m: np.ndarray) -> bool:
    """Whether ground returns sit at height 0 (the cloud is already normalised)."""
    if ground_z_m.shape[0] == 0:
        return False
    a = np.abs(ground_z_m)
    return bool(np.median(a) < NORMALISED_MEDIAN_M and np.percentile(a, 95) < NORMALISED_P95_M)


def bilinear(grid_z: np.ndarray, grid: GeoBox, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation between cell centres (edges extend the border cells).

    Computed in float32 with flat gathers: this runs once per return, so it is written
    for speed (about 10 ns per return).
    """
    rows, cols = grid.shape
    a = grid.affine
    inv = np.float32(1.0 / a.a)
    fx = (x - np.float32(a.c)) * inv - np.float32(0.5)
    fy = (np.float32(a.f) - y) * inv - np.float32(0.5)
    # truncation equals floor for fx >= 0; values in (-1, 0) clamp to column 0 anyway
    c0 = fx.astype(np.int32)
    r0 = fy.astype(np.int32)
    np.clip(c0, 0, max(cols - 2, 0), out=c0)
    np.clip(r0, 0, max(rows - 2, 0), out=r0)
    tx = fx - c0
    ty = fy - r0
    np.clip(tx, 0.0, 1.0, out=tx)
    np.clip(ty, 0.0, 1.0, out=ty)
    flat = grid_z.reshape(-1)
    i00 = r0.astype(np.int64) * cols + c0
    dx = 1 if cols > 1 else 0
    dy = cols if rows > 1 else 0
    z00 = flat[i00]
    z01 = flat[i00 + dx]
    z10 = flat[i00 + dy]
    z11 = flat[i00 + dy + dx]
    top = z00 + (z01 - z00) * tx
    bottom = z10 + (z11 - z10) * tx
    return top + (bottom - top) * ty


@dataclass(frozen=True)
class NormaliseStats:
    """Counts of the normalisation."""

    n_clamped: int
    n_below_tolerance: int
    n_no_terrain_dropped: int


def normalise(
    points: PointSet, dtm_m: np.ndarray, grid: GeoBox, *, tolerance_m: float
) -> tuple[PointSet, NormaliseStats]:
    """Heights above the DTM; negatives clamped (within tolerance) or dropped."""
    n = len(points)
    h = np.empty(n, np.float32)
    # in blocks: the interpolation's temporaries stay small whatever the chunk size
    for s in range(0, n, BLOCK):
        sl = slice(s, min(s + BLOCK, n))
        np.subtract(
            points.z_m[sl], bilinear(dtm_m, grid, points.x_m[sl], points.y_m[sl]), out=h[sl]
        )
    return clamp_heights(points.with_z(h), tolerance_m=tolerance_m)


def clamp_heights(points: PointSet, *, tolerance_m: float) -> tuple[PointSet, NormaliseStats]:
    """Clamp negative heights to 0 (counting those below ``-tolerance_m`` apart); drop NaN.

    Works in place on the heights (the caller passes a fresh height array); the other
    columns are shared, and copied only when returns without terrain must be dropped.
    """
    h = points.z_m
    n_neg = int(np.count_nonzero(h < 0))
    n_below = int(np.count_nonzero(h < -tolerance_m))
    np.maximum(h, 0.0, out=h)  # NaN stays NaN
    no_terrain = np.isnan(h)
    n_nan = int(np.count_nonzero(no_terrain))
    out = points.select(~no_terrain) if n_nan else points
    return out, NormaliseStats(n_neg - n_below, n_below, n_nan)
