"""Noise removal: ASPRS noise classes and a statistical outlier filter.

Classified deliveries mark noise as class 7 (low noise) and 18 (high noise); those points
are dropped. Unclassified clouds get the statistical outlier removal of PDAL's
``filters.outlier`` (method ``statistical``; Rusu et al. 2008,
doi:10.1016/j.robot.2008.08.005): a point is an outlier when the mean distance to its
``k`` nearest neighbours exceeds the global mean of that distance by ``multiplier``
standard deviations (PDAL defaults: k = 8, multiplier = 2).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from pipeline.lidar.points import HIGH_NOISE, LOW_NOISE, PointSet


def noise_class_mask(points: PointSet) -> np.ndarray:
    """True for points of ASPRS class 7 or 18."""
    c = points.classification
    return (c == LOW_NOISE) | (c == HIGH_NOISE)


def statistical_outlier_mask(points: PointSet, *, k: int, multiplier: float) -> np.ndarray:
    """True for statistical outliers (mean k-NN distance > mean + multiplier * sd)."""
    n = len(points)
    if n <= k:
        return np.zeros(n, bool)
    xyz = np.column_stack([points.x_m, points.y_m, points.z_m]).astype(np.float64)
    tree = cKDTree(xyz)
    dist, _ = tree.query(xyz, k=k + 1)
    mean_d = dist[:, 1:].mean(axis=1)
    threshold = mean_d.mean() + multiplier * mean_d.std()
    return mean_d > threshold
