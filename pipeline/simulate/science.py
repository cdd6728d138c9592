"""The simulator's coefficients, loaded from ``pipeline/simulate/data/simulation.yaml``.

Every number that shapes the simulated world (growth curves, crown shapes, reflectance
end-members, cloud statistics, LiDAR noise rates, measurement errors) lives in that file
with its unit and its status: ``cited`` (with the source) or ``assumption`` (chosen to give
plausible magnitudes; the simulated world is synthetic). This module only reads it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

NON_FOREST = "non_forest"
FOREST_TYPES = ("chinese_fir", "masson_pine", "broadleaf", "moso_bamboo")


@cache
def coefficients() -> dict[str, Any]:
    """The parsed ``simulation.yaml`` (cached; treat as read-only)."""
    text = resources.files("pipeline.simulate").joinpath("data/simulation.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def type_codes() -> dict[str, int]:
    """uint8 code of every land-cover / forest type in ``truth/forest_type.tif``."""
    c = coefficients()
    codes = {name: int(p["code"]) for name, p in c["forest_types"].items()}
    codes.update({k: int(v) for k, v in c["nonforest_codes"].items()})
    return codes
