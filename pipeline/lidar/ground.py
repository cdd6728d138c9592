"""Ground classification of clouds delivered without ground points (class 2).

Two algorithms, chosen by ``ground_algorithm`` in :class:`pipeline.config.LidarParams`:

- :class:`SMRF` (default): the simple morphological filter of Pingel, Clarke and McBride
  2013, "An improved simple morphological filter for the terrain classification of
  airborne LIDAR data", ISPRS J. Photogramm. Remote Sens. 77:21-30,
  doi:10.1016/j.isprsjprs.2012.12.002, as PDAL's ``filters.smrf``. It works on a raster
  of the lowest return per cell (the minimum surface), so its cost is a few passes over
  the points plus raster operations, and it has no cloth that must bend over a slope:
  the morphological opening leaves a planar slope unchanged, so the slope parameter
  only has to exceed the steepest terrain (and the opening removes canopy of any height).
  Steps: (1) minimum surface, empty cells filled from the nearest cell; (2) low outliers:
  cells much lower than their neighbours, found as Pingel et al. 2013 do by opening the
  inverted minimum surface (here with a single 3 x 3 window); (3) progressive opening
  with windows of radius 1 .. ``window_m``; a cell whose surface drops by more than
  ``slope * radius * cell`` in a step is an object; (4) provisional DEM from the lowest
  returns of the remaining cells; (5) a return is ground when within ``threshold_m +
  scalar * local slope`` of the provisional DEM. Differences from PDAL, and why: the
  windows are squares (Zhang et al. 2003, doi:10.1109/TGRS.2003.810682, use squares too)
  because a square opening is separable into 1-D running min/max filters (scipy), linear
  in the cells whatever the window; and the provisional DEM is a TIN of the kept lowest
  returns at their true positions (:mod:`pipeline.lidar.tin`) instead of the cell minima
  placed at cell centres, which on a 35 degree slope would sit up to 0.35 m below the
  terrain.
  Our own code because no maintained PyPI package implements SMRF or the progressive
  morphological filter without a native toolchain: PDAL's Python bindings need the PDAL
  C++ library, which the pipeline does not ship.
- :class:`CSF`: the cloth simulation filter (Zhang et al. 2016, Remote Sensing 8(6):501,
  doi:10.3390/rs8060501) through the authors' package ``cloth-simulation-filter``: the
  cloud is turned upside down and a simulated cloth draped over it; returns within
  ``class_threshold_m`` of the cloth are ground. Kept as an option; on the demo region
  it was slow (minutes per 1 km chunk at a 0.5 m cloth) and fragile on steep forested
  slopes, and the package prints to standard output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import CSF as csf_lib
import numpy as np
from scipy import ndimage

from pipeline.grid import flat_index_blocks, north_up_geobox
from pipeline.lidar.normalise import bilinear
from pipeline.lidar.points import GROUND, PointSet
from pipeline.lidar.tin import rasterise_tin, triangulate

UNCLASSIFIED = 1


@dataclass(frozen=True)
class CSF:
    """Cloth simulation filter parameters (Zhang et al. 2016).

    Defaults: ``csf_*`` of :class:`pipeline.config.LidarParams`.
    """

    cloth_resolution_m: float
    rigidness: int
    class_threshold_m: float
    time_step: float
    iterations: int
    slope_smooth: bool


@dataclass(frozen=True)
class SMRF:
    """Simple morphological filter parameters (Pingel et al. 2013; PDAL ``filters.smrf``).

    Defaults: ``smrf_*`` of :class:`pipeline.config.LidarParams`.

    Attributes
    ----------
    cell_m
        Side of the minimum-surface cells (PDAL ``cell``, default 1 m).
    slope
        Slope threshold, rise over run (PDAL ``slope``); must exceed the steepest terrain.
    window_m
        Largest opening radius (PDAL ``window``, 18 m); wider than the widest crown.
    threshold_m
        Elevation threshold of the final classification (PDAL ``threshold``, 0.5 m).
    scalar
        Extra threshold per unit of local terrain slope (PDAL ``scalar``, 1.25).
    low_outlier_m
        A cell lower than the opening of the inverted surface by more than this is a low
        outlier (not a ground candidate).
    """

    cell_m: float
    slope: float
    window_m: float
    threshold_m: float
    scalar: float
    low_outlier_m: float


def classify_ground(points: PointSet, *, algorithm: CSF | SMRF) -> PointSet:
    """Classes: 2 for the ground returns the algorithm finds, 1 for every other return."""
    if isinstance(algorithm, SMRF):
        return points.with_classification(
            np.where(smrf_ground(points, algorithm=algorithm), GROUND, UNCLASSIFIED)
        )
    return _csf(points, algorithm)


def _csf(points: PointSet, algorithm: CSF) -> PointSet:
    cls = np.full(len(points), UNCLASSIFIED, np.uint8)
    if len(points) < 3:
        return points.with_classification(cls)
    f = csf_lib.CSF()
    f.params.bSloopSmooth = algorithm.slope_smooth
    f.params.cloth_resolution = algorithm.cloth_resolution_m
    f.params.rigidness = algorithm.rigidness
    f.params.class_threshold = algorithm.class_threshold_m
    f.params.time_step = algorithm.time_step
    f.params.interations = algorithm.iterations  # sic: the package's spelling
    xyz = np.column_stack([points.x_m, points.y_m, points.z_m]).astype(np.float64)
    f.setPointCloud(xyz)
    ground = csf_lib.VecInt()
    other = csf_lib.VecInt()
    f.do_filtering(ground, other, False)
    cls[np.asarray(ground, dtype=np.int64)] = GROUND
    return points.with_classification(cls)


def _fill_nearest(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``z`` with the cells outside ``valid`` set to the nearest valid cell's value."""
    if valid.all() or not valid.any():
        return z
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return z[tuple(idx)]


def _opening(z: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    # separable square windows: scipy's 1-D running min/max cost no more for wider windows
    return ndimage.maximum_filter(ndimage.minimum_filter(z, size=size, mode="nearest"), size)


def smrf_ground(points: PointSet, *, algorithm: SMRF) -> np.ndarray:
    """Boolean mask of the ground returns of ``points`` (SMRF, Pingel et al. 2013)."""
    n = len(points)
    if n < 3:
        return np.zeros(n, bool)
    a = algorithm
    c = a.cell_m
    x, y, z = points.x_m, points.y_m, points.z_m
    x0 = math.floor(float(x.min()) / c) * c
    ytop = (math.floor(float(y.max()) / c) + 1) * c
    cols = math.floor((float(x.max()) - x0) / c) + 1
    rows = math.ceil((ytop - float(y.min())) / c)
    grid = north_up_geobox((rows, cols), x0_m=x0, ytop_m=ytop, res_m=c)
    # (1) minimum surface and the index of each cell's lowest return
    flat = np.empty(n, np.int32)
    for sl, f, _ in flat_index_blocks(grid, x, y):
        flat[sl] = f
    zmin = np.full(rows * cols, np.inf, z.dtype)  # same dtype: the == below is exact
    np.minimum.at(zmin, flat, z)
    lowest = np.full(rows * cols, -1, np.int64)
    cand = np.nonzero(z == zmin[flat])[0]
    lowest[flat[cand]] = cand  # one of the tied lowest returns per cell
    occupied = (lowest >= 0).reshape(rows, cols)
    surf = _fill_nearest(zmin.reshape(rows, cols), occupied)
    # (2) low outliers: pits the opening of the inverted surface removes
    neg = -surf
    low = occupied & ((neg - _opening(neg, 1)) > a.low_outlier_m)
    candidate = occupied & ~low
    surf = _fill_nearest(surf, candidate)
    # (3) progressive opening: cells that drop more than slope * radius * cell are objects
    objects = np.zeros((rows, cols), bool)
    last = surf
    for radius in range(1, max(math.ceil(a.window_m / c), 1) + 1):
        opened = _opening(last, radius)
        objects |= (last - opened) > a.slope * radius * c
        last = opened
    ground_cells = candidate & ~objects
    # (4) provisional DEM: TIN of the ground cells' lowest returns at their positions
    keep = lowest.reshape(rows, cols)[ground_cells]
    if keep.shape[0] < 3:
        return np.zeros(n, bool)
    gx, gy, gz = x[keep], y[keep], z[keep]
    dem = np.full(grid.shape, np.nan, np.float32)
    tri = triangulate(gx, gy)
    if tri is not None:
        rasterise_tin(gx, gy, gz, tri, grid, out=dem)
    dem = _fill_nearest(dem, np.isfinite(dem))
    if not np.isfinite(dem).all():  # degenerate triangulation: cell minima instead
        dem = np.where(ground_cells, surf, np.nan).astype(np.float32)
        dem = _fill_nearest(dem, ground_cells)
    # (5) returns within threshold + scalar * slope of the provisional DEM are ground
    gr, gc = np.gradient(dem.astype(np.float64), c)
    tolerance = (a.threshold_m + a.scalar * np.hypot(gr, gc)).astype(np.float32).reshape(-1)
    out = np.empty(n, bool)
    for sl, f, _ in flat_index_blocks(grid, x, y):
        dz = z[sl] - bilinear(dem, grid, x[sl], y[sl])
        out[sl] = np.abs(dz) <= tolerance[f]
    return out
