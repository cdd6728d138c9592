"""Noise removal: ASPRS noise classes and a statistical outlier filter.

Classified deliveries mark noise as class 7 (low noise) and 18 (high noise); those points
are dropped. Unclassified clouds get the statistical outlier removal of PDAL's
``filters.outlier`` (method ``statistical``; Rusu et al. 2008,
doi:10.1016/j.robot.2008.08.005): a point is an outlier when the mean distance to its
``k`` nearest neighbours exceeds the global mean of that distance by ``multiplier``
standard deviations (PDAL defaults: k = 8, multiplier = 2).

Two shortcuts keep this from dominating a chunk's time (a k-NN search for each of 5
million returns takes about a minute): the global mean and standard deviation are
estimated from a seeded random sample of ``sample`` returns (a sampling error of a few
per mille on the threshold), and only the highest and the lowest return of each
``column_m`` x ``column_m`` column are tested. An isolated return far above or below
the cloud (birds, atmosphere, multipath: what the filter is for) is always its column's
extreme; a return between others of its column is not isolated in height. With
``column_m = 0`` every return is tested, as PDAL does.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from pipeline.lidar.points import HIGH_NOISE, LOW_NOISE, PointSet


def noise_class_mask(points: PointSet) -> np.ndarray:
    """True for points of ASPRS class 7 or 18."""
    c = points.classification
    return (c == LOW_NOISE) | (c == HIGH_NOISE)


def _column_keys(points: PointSet, column_m: float) -> tuple[np.ndarray, int]:
    # int32: a chunk has far fewer than 2**31 columns, and this runs on every return
    ix = np.floor(points.x_m / np.float32(column_m)).astype(np.int32)
    iy = np.floor(points.y_m / np.float32(column_m)).astype(np.int32)
    ix -= ix.min()
    iy -= iy.min()
    iy *= int(ix.max()) + 1
    iy += ix
    return iy, int(iy.max()) + 1


def column_extremes(z: np.ndarray, key: np.ndarray, size: int, idx: np.ndarray) -> np.ndarray:
    """Of the returns ``idx``, those highest or lowest in their column ``key``."""
    zs, ks = z[idx], key[idx]
    zmax = np.full(size, -np.inf, z.dtype)
    zmin = np.full(size, np.inf, z.dtype)
    np.maximum.at(zmax, ks, zs)
    np.minimum.at(zmin, ks, zs)
    return idx[(zs == zmax[ks]) | (zs == zmin[ks])]


def statistical_outlier_mask(
    points: PointSet,
    *,
    k: int,
    multiplier: float,
    column_m: float = 2.0,
    sample: int = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """True for statistical outliers (mean k-NN distance > mean + multiplier * sd).

    Parameters
    ----------
    k, multiplier
        PDAL's ``mean_k`` and ``multiplier``.
    column_m
        Only the highest and lowest return of each column of this side are tested
        (0: every return).
    sample
        Returns drawn (seeded) to estimate the global mean and sd of the k-NN distance.
    """
    n = len(points)
    out = np.zeros(n, bool)
    if n <= k:
        return out
    if column_m > 0:  # before the tree is built: keeps the peak memory down
        key, size = _column_keys(points, column_m)
        test = column_extremes(points.z_m, key, size, np.arange(n))
    xyz = np.column_stack([points.x_m, points.y_m, points.z_m]).astype(np.float64)
    # an unbalanced tree without compacted nodes builds three times faster and queries as fast
    tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)
    if n > sample:
        ref = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    else:
        ref = np.arange(n)
    dist, _ = tree.query(xyz[ref], k=k + 1)
    ref_d = dist[:, 1:].mean(axis=1)
    threshold = ref_d.mean() + multiplier * ref_d.std()
    if column_m <= 0:
        dist, _ = tree.query(xyz, k=k + 1)
        return np.asarray(dist[:, 1:].mean(axis=1) > threshold)
    # a column may hold several outliers (e.g. two birds): after its extremes are found to
    # be outliers, the next extremes of that column are tested, until none is
    while test.shape[0]:
        dist, _ = tree.query(xyz[test], k=k + 1)
        new = test[dist[:, 1:].mean(axis=1) > threshold]
        if new.shape[0] == 0:
            break
        out[new] = True
        again = np.nonzero(~out & np.isin(key, np.unique(key[new])))[0]
        test = column_extremes(points.z_m, key, size, again)
    return out
