"""Area-based metrics (ABA) of normalised heights on the model grid.

Per model cell, from the returns inside it (Næsset 2002, doi:10.1016/S0034-4257(01)00290-5;
White et al. 2013, "A best practices guide for generating forest inventory attributes from
airborne laser scanning data using an area-based approach", Canadian Forest Service):

- height statistics ``h_mean, h_sd, h_max, h_p10 ... h_p99``: over the FIRST returns whose
  height is at least ``min_height_m`` (default 0: all first returns, i.e. lidR's
  ``stdmetrics_z`` applied to first returns); ``h_sd`` with the n-1 denominator and the
  percentiles by linear interpolation (R's and numpy's default, type 7), as lidR;
- ``cover_2m``: share of first returns above ``cover_threshold_m`` (2 m), lidR's
  ``pzabove2`` on first returns, the usual canopy-cover proxy;
- ``density_pts_m2``: all returns (noise removed) per m² of the cell's LiDAR-covered area;
- ``lidar_fraction``: share of the cell inside the footprint of processed tiles.

Cells without first returns are NaN in every band but ``lidar_fraction``.
"""

from __future__ import annotations

import numpy as np
from odc.geo.geobox import GeoBox

from pipeline.grid import flat_index_blocks
from pipeline.lidar.points import PointSet

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
BAND_NAMES: tuple[str, ...] = (
    "h_mean",
    "h_sd",
    "h_max",
    *(f"h_p{p}" for p in PERCENTILES),
    "cover_2m",
    "density_pts_m2",
    "lidar_fraction",
)
BAND_UNITS: dict[str, str] = {
    **{b: "m" for b in BAND_NAMES if b.startswith("h_")},
    "cover_2m": "1",
    "density_pts_m2": "m-2",
    "lidar_fraction": "1",
}
#: bands computed from points; ``lidar_fraction`` and the density's denominator come from
#: the tile footprints (see :func:`footprint_fraction`)
N_POINT_BANDS = len(BAND_NAMES) - 2


def point_metrics(
    points: PointSet, grid: GeoBox, *, min_height_m: float, cover_threshold_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell height metrics and return counts.

    Returns
    -------
    metrics
        ``(N_POINT_BANDS, rows, cols)`` float32: h_mean ... h_p99, cover_2m (NaN where a
        cell has no first return).
    n_returns
        ``(rows, cols)`` int64 count of all returns per cell.
    """
    ncell = grid.height * grid.width
    n_returns = np.zeros(ncell, np.int64)
    n_first = np.zeros(ncell, np.int64)
    n_cover = np.zeros(ncell, np.int64)
    # cells and heights of the first returns used for the height statistics, gathered in
    # blocks so the temporaries stay small whatever the chunk's point count
    is_first = points.return_number == 1
    cap = int(np.count_nonzero(is_first))
    cell = np.empty(cap, np.int32)
    h = np.empty(cap, np.float32)
    k = 0
    for sl, flat, inside in flat_index_blocks(grid, points.x_m, points.y_m):
        n_returns += np.bincount(flat[inside], minlength=ncell)
        first = inside & is_first[sl]
        fc = flat[first]
        fh = points.z_m[sl][first]
        n_first += np.bincount(fc, minlength=ncell)
        n_cover += np.bincount(fc[fh > cover_threshold_m], minlength=ncell)
        use = fh >= min_height_m
        m = int(np.count_nonzero(use))
        cell[k : k + m] = fc[use]
        h[k : k + m] = fh[use]
        k += m
    cell = cell[:k]
    h = h[:k]
    n = np.bincount(cell, minlength=ncell)
    h64 = h.astype(np.float64)
    s1 = np.bincount(cell, weights=h64, minlength=ncell)
    s2 = np.bincount(cell, weights=h64 * h64, minlength=ncell)
    del h64
    out = np.full((N_POINT_BANDS, ncell), np.nan, np.float64)
    has = n > 0
    mean = np.divide(s1, n, out=np.zeros(ncell), where=has)
    out[0, has] = mean[has]
    two = n > 1
    # sum of squared deviations, guarded against tiny negative rounding
    ss = np.maximum(s2 - n * mean * mean, 0.0)
    out[1, two] = np.sqrt(ss[two] / (n[two] - 1))
    if h.shape[0]:
        # sort by cell then height in one pass: heights are < 2**12 m, so the key is exact
        # enough (about 1e-6 m) and much faster than a two-key lexsort
        key = cell.astype(np.float64)
        key *= 4096.0
        key += h
        key.sort()
        cells = np.nonzero(has)[0]
        counts = n[cells]
        key -= np.repeat(cells.astype(np.float64) * 4096.0, counts)
        hs = key
        starts = np.cumsum(counts) - counts
        out[2, cells] = hs[starts + counts - 1]
        for i, p in enumerate(PERCENTILES):
            pos = (counts - 1) * (p / 100.0)
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, counts - 1)
            frac = pos - lo
            out[3 + i, cells] = hs[starts + lo] + frac * (hs[starts + hi] - hs[starts + lo])
    out[N_POINT_BANDS - 1, n_first > 0] = n_cover[n_first > 0] / n_first[n_first > 0]
    shape = (N_POINT_BANDS, grid.height, grid.width)
    return out.reshape(shape).astype(np.float32), n_returns.reshape(grid.shape)


def footprint_fraction(
    boxes: list[tuple[float, float, float, float]],
    grid: GeoBox,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Share of each cell covered by the union of non-overlapping tile bounds, over the
    whole grid or over ``window`` (rows ``r0:r1``, columns ``c0:c1``) of it: the same
    values as the whole grid's there, bit for bit."""
    r0, r1, c0, c1 = (0, grid.height, 0, grid.width) if window is None else window
    frac = np.zeros((r1 - r0, c1 - c0), np.float64)
    a = grid.affine
    xe = a.c + np.arange(c0, c1 + 1) * a.a
    ye = a.f - np.arange(r0, r1 + 1) * a.a
    for b in boxes:
        ox = np.clip(np.minimum(xe[1:], b[2]) - np.maximum(xe[:-1], b[0]), 0, None)
        oy = np.clip(np.minimum(ye[:-1], b[3]) - np.maximum(ye[1:], b[1]), 0, None)
        cols = np.nonzero(ox)[0]
        rows = np.nonzero(oy)[0]
        if cols.size and rows.size:  # touch only the tile's window of the grid
            j0, j1, i0, i1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
            frac[i0:i1, j0:j1] += np.outer(oy[i0:i1], ox[j0:j1])
    return np.clip(frac / a.a**2, 0.0, 1.0)
