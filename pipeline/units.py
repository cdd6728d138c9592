"""Unit definitions shared across the pipeline, and the one helper that adds 亩 areas.

Only definitions of units live here; science constants with a source (the CO2/C ratio,
carbon fractions, ...) live in ``models/data/`` with their citations.
"""

from __future__ import annotations

from typing import TypeVar

import pandas as pd

#: square metres in a hectare
M2_PER_HA = 10_000.0

#: 亩 (市亩, mu) in a hectare. The 市制 units of the 1929 Weights and Measures Act
#: (度量衡法), kept by the State Council's 1959 order on a unified system of measurement
#: (国务院《关于统一计量制度的命令》) and still used for land in China beside the legal
#: SI units (《中华人民共和国法定计量单位》, 1984, lists it as a unit to be phased out):
#: 1 市尺 = 1/3 m and 1 亩 = 6000 square 市尺 = 6000/9 m² = 666.67 m², so
#: 1 ha = 10 000 / (6000/9) = 15 亩 exactly.
MU_PER_HA = 15.0

Table = TypeVar("Table", bound=pd.DataFrame)


def with_mu_areas(table: Table) -> Table:
    """``table`` with a ``<name>_mu`` column (亩) right after every area column in ha.

    Area columns are those named ``*area*_ha`` (``area_ha``, ``area_grid_ha``,
    ``forest_area_ha``); rates per hectare (``*_ha_yr``, ``*_per_ha``) are not areas and
    keep hectares. Works on GeoDataFrames too (returns a copy of the same type).
    """
    out = table.copy()
    for name in [str(c) for c in table.columns]:
        if name.endswith("_ha") and "area" in name:
            mu = name.removesuffix("_ha") + "_mu"
            if mu not in out.columns:
                out.insert(out.columns.get_loc(name) + 1, mu, out[name] * MU_PER_HA)
    return out
