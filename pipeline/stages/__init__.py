"""The pipeline's stages, in the order they run (DESIGN §1).

Each stage module holds a pure stage function and exports ``STAGE``: the function bound
to its frozen parameters (picked from the config) and to the files it reads. This
registry only fixes the order.
"""

from __future__ import annotations

from pipeline.stage import Stage
from pipeline.stages import (
    acquire,
    composite,
    credits,
    estimate,
    lidar,
    model,
    parcels,
    plots,
    predict,
    report,
    sink,
    styles,
)

STAGES: tuple[Stage, ...] = tuple(
    m.STAGE
    for m in (
        acquire,
        composite,
        lidar,
        plots,
        model,
        predict,
        sink,
        parcels,
        styles,
        estimate,
        credits,
        report,
    )
)
