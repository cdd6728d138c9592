"""Ground classification of clouds delivered without ground points (class 2).

Cloth simulation filter (CSF; Zhang et al. 2016, Remote Sensing 8(6):501,
doi:10.3390/rs8060501) through the authors' package ``cloth-simulation-filter``: the cloud
is turned upside down and a simulated cloth draped over it; returns within
``class_threshold_m`` of the cloth are ground. For steep forested slopes the authors
recommend slope post-processing (``bSloopSmooth``) and a soft cloth (rigidness 1,
"steep slope" scene), with a cloth resolution near the ground-point spacing; those are the
defaults of :class:`CSF` (set from :class:`pipeline.config.LidarParams`).
"""

from __future__ import annotations

from dataclasses import dataclass

import CSF as csf_lib
import numpy as np

from pipeline.lidar.points import GROUND, PointSet

UNCLASSIFIED = 1


@dataclass(frozen=True)
class CSF:
    """Cloth simulation filter parameters (Zhang et al. 2016)."""

    cloth_resolution_m: float = 0.5
    rigidness: int = 1
    class_threshold_m: float = 0.5
    time_step: float = 0.65
    iterations: int = 500
    slope_smooth: bool = True


def classify_ground(points: PointSet, *, algorithm: CSF) -> PointSet:
    """Classes: 2 for the ground returns CSF finds, 1 for every other return."""
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
