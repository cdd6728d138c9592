"""Land-use classifier (models.landuse): forest vs other land from satellite features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.errors import ModelDomainError
from models.landuse import fit_land_use


def cells(rng: np.random.Generator, n: int, ndvi: float, x0: float) -> pd.DataFrame:
    """``n`` cells of a kind of land: NDVI around ``ndvi``, scattered over 4 km in x."""
    return pd.DataFrame(
        {
            "ndvi": rng.normal(ndvi, 0.06, n),
            "swir16": rng.normal(0.3 - 0.2 * ndvi, 0.02, n),
            "x_m": x0 + rng.uniform(0, 4000, n),
            "y_m": rng.uniform(0, 4000, n),
        }
    )


def test_land_use_classifier_separates_forest_from_other_land_and_reports_spatial_cv() -> None:
    rng = np.random.default_rng(4)
    forest, other = cells(rng, 600, 0.8, 0.0), cells(rng, 600, 0.45, 0.0)
    # the classes overlap by about 0.35 / 0.06 / 2 = 2.9 SD: ~0.2 % misclassified
    clf = fit_land_use(
        forest, other, features=["ndvi", "swir16"], block_m=1000.0, n_folds=5,
        n_estimators=100, min_samples_leaf=3, seed=1,
    )  # fmt: skip
    cv = clf.card["spatial_cv"]
    assert cv["accuracy"] > 0.98 and cv["forest_called_other"] < 0.02
    assert clf.card["n_forest_cells"] == 600 and clf.card["n_other_cells"] == 600
    fresh = pd.concat([cells(rng, 200, 0.8, 0.0), cells(rng, 200, 0.45, 0.0)], ignore_index=True)
    fresh.loc[0, "ndvi"] = np.nan
    p = clf.forest_probability(fresh)
    assert np.isnan(p[0])
    assert np.mean(p[1:200] >= 0.5) > 0.98 and np.mean(p[200:] < 0.5) > 0.98
    with pytest.raises(ModelDomainError, match="at least 30 cells"):
        fit_land_use(
            forest, other.iloc[:10], features=["ndvi"], block_m=1000.0, n_folds=5,
            n_estimators=10, min_samples_leaf=3, seed=1,
        )  # fmt: skip
