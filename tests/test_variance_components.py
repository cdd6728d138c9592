"""The one-way variance components of grouped errors (models.variance_components)."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelDomainError
from models.variance_components import one_way_components


def test_balanced_groups_match_the_anova_table_by_hand() -> None:
    # 3 groups of 2: means 1, 3, 8, grand mean 4; SSW = 0.5 + 2 + 0 = 2.5 on 3 df,
    # SSB = 2 (9 + 1 + 16) = 52 on 2 df; n0 = 2 (balanced); sigma_b^2 = (26 - 2.5/3) / 2
    z = np.array([0.5, 1.5, 2.0, 4.0, 8.0, 8.0])
    g = np.array(["a", "a", "b", "b", "c", "c"])
    c = one_way_components(z, g)
    assert c.mean == pytest.approx(4.0)
    assert c.within == pytest.approx(2.5 / 3)
    assert c.n0 == pytest.approx(2.0)
    assert c.between == pytest.approx((26.0 - 2.5 / 3) / 2)
    assert c.between_share == pytest.approx(c.between / (c.between + c.within))
    assert c.uncentred_share == pytest.approx((16 + c.between) / (16 + c.between + c.within))
    assert (c.n, c.groups) == (6, 3)


def test_unbalanced_estimates_are_unbiased_for_known_components() -> None:
    # 100 parcels of 2 to 15 plots, sigma_b^2 = 0.4, sigma_w^2 = 1.2, mean 0.3: the
    # ANOVA estimators are unbiased (Searle et al. 1992, §3.5), so their average over
    # 300 simulated samples is within a few standard errors of the truth
    rng = np.random.default_rng(3)
    sizes = rng.integers(2, 16, 100)
    groups = np.repeat(np.arange(100), sizes)
    est = []
    for _ in range(300):
        z = (
            0.3
            + rng.normal(0, np.sqrt(0.4), 100)[groups]
            + rng.normal(0, np.sqrt(1.2), groups.size)
        )
        c = one_way_components(z, groups)
        est.append((c.between, c.within, c.mean))
    between, within, mean = np.mean(est, axis=0)
    sd_between, sd_within, _ = np.std(est, axis=0) / np.sqrt(len(est))
    assert abs(between - 0.4) < 4 * sd_between
    assert abs(within - 1.2) < 4 * sd_within
    assert mean == pytest.approx(0.3, abs=0.02)


def test_nan_values_are_dropped_and_too_few_groups_refused() -> None:
    z = np.array([1.0, np.nan, 2.0, 3.0, 5.0])
    c = one_way_components(z, ["a", "a", "a", "b", "b"])
    assert c.n == 4 and c.within == pytest.approx((0.5 + 2.0) / 2)
    with pytest.raises(ModelDomainError, match="two groups"):
        one_way_components([1.0, 2.0], ["a", "a"])
    with pytest.raises(ModelDomainError, match="two members"):
        one_way_components([1.0, 2.0], ["a", "b"])
