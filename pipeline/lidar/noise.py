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

from collections.abc import Callable

import numpy as np
import pandas as pd
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
    mean_knn = _mean_knn_distance(points, k)
    if n > sample:
        ref = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    else:
        ref = np.arange(n)
    ref_d = mean_knn(ref)
    threshold = ref_d.mean() + multiplier * ref_d.std()
    if column_m <= 0:
        return np.asarray(mean_knn(np.arange(n)) > threshold)
    # a column may hold several outliers (e.g. two birds): after its extremes are found to
    # be outliers, the next extremes of that column are tested, until none is
    while test.shape[0]:
        new = test[mean_knn(test) > threshold]
        if new.shape[0] == 0:
            break
        out[new] = True
        again = np.nonzero(~out & np.isin(key, np.unique(key[new])))[0]
        test = column_extremes(points.z_m, key, size, again)
    return out


def duplicate_groups(points: PointSet) -> tuple[np.ndarray, np.ndarray] | None:
    """For clouds with points at identical XYZ: each point's group (``codes``, numbered in
    order of first appearance) and the index of each group's first point; None when every
    point is unique.

    One pass of hashing (pandas' hash table on a 64-bit mix of the coordinates' bits), no
    sort; groups are then checked coordinate by coordinate, and a hash collision (two
    different points with one hash) falls back to an exact sort.
    """
    x, y, z = (np.ascontiguousarray(v, np.float32) for v in (points.x_m, points.y_m, points.z_m))
    bits = [v.view(np.uint32).astype(np.uint64) for v in (x, y, z)]
    # odd 64-bit constants (splitmix64's) spread the three 32-bit patterns over the word
    mixed = (
        bits[0] * np.uint64(0x9E3779B97F4A7C15)
        ^ bits[1] * np.uint64(0xBF58476D1CE4E5B9)
        ^ bits[2] * np.uint64(0x94D049BB133111EB)
    )
    codes, uniques = pd.factorize(mixed)
    if len(uniques) == len(mixed):
        return None
    first = pd.Series(codes).drop_duplicates().index.to_numpy()
    exact = all(np.array_equal(v, v[first][codes]) for v in (x, y, z))
    if not exact:
        _, first, codes = np.unique(
            np.column_stack([x, y, z]), axis=0, return_index=True, return_inverse=True
        )
        codes = codes.reshape(-1)
    return codes.astype(np.intp), np.asarray(first, np.intp)


def _mean_knn_distance(points: PointSet, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function giving, for point indices, the mean distance to their ``k`` nearest
    neighbours (as PDAL: the ``k + 1`` nearest including the point, less the first).

    Exact duplicates (several returns at one XYZ: a sensor fault, or tiles merged twice)
    are collapsed into one tree point with a count before the k-d tree is built: a k-d
    tree cannot split identical points, so each query would scan all of them (574,000
    returns at one XYZ never finished). The distances are those of the full cloud: a
    point's neighbours are its group's other members at 0, then the nearest other groups,
    each as many times as it has members.
    """
    xyz = np.column_stack([points.x_m, points.y_m, points.z_m]).astype(np.float64)
    groups = duplicate_groups(points)
    if groups is None:
        # an unbalanced tree without compacted nodes builds three times faster and
        # queries as fast
        tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)

        def plain(idx: np.ndarray) -> np.ndarray:
            dist, _ = tree.query(xyz[idx], k=k + 1)
            return np.asarray(dist[:, 1:].mean(axis=1))

        return plain
    codes, first = groups
    # members per group; the extra 0 is the count of the "missing neighbour" index that
    # cKDTree returns when fewer than k + 1 groups exist
    counts = np.append(np.bincount(codes, minlength=first.shape[0]), 0)
    unique_xyz = xyz[first]
    tree = cKDTree(unique_xyz, balanced_tree=False, compact_nodes=False)

    def collapsed(idx: np.ndarray) -> np.ndarray:
        dist, nb = tree.query(unique_xyz[codes[idx]], k=k + 1)
        reach = np.cumsum(counts[nb], axis=1)  # points covered by the nearest 1, 2, .. groups
        # the j-th nearest point (j = 0 .. k) belongs to the first group whose reach > j
        d = np.column_stack(
            [
                np.take_along_axis(dist, np.minimum((reach <= j).sum(axis=1), k)[:, None], 1)
                for j in range(1, k + 1)
            ]
        )
        return np.asarray(d.mean(axis=1))

    return collapsed
