"""Variance components of grouped errors: how much of an error is shared by a group.

Errors of a map at plots of the same parcel share the parcel's stand (species, age,
density) and so part of their error; a parcel total's SD needs that shared part, the
between-group variance component of the one-way random-effects model

    z_ij = mu + a_i + e_ij,   a_i ~ (0, sigma_b^2),   e_ij ~ (0, sigma_w^2)

(group ``i``, member ``j``; Searle, Casella & McCulloch 1992, *Variance Components*,
Wiley, ch. 3). :func:`one_way_components` gives the ANOVA (method-of-moments) estimators
for unbalanced groups (ibid. §3.5, eqs. 3.5.3 and 3.5.10): with ``N`` members in ``a``
groups of sizes ``n_i``,

    MSW = sum_ij (z_ij - zbar_i)^2 / (N - a)                -> sigma_w^2 = MSW
    MSB = sum_i n_i (zbar_i - zbar)^2 / (a - 1)
    n0  = (N - sum_i n_i^2 / N) / (a - 1)                   -> sigma_b^2 = (MSB - MSW) / n0

unbiased whatever the distribution of ``a`` and ``e``. Why by hand: the estimators are
three lines, and the maintained alternative (``statsmodels`` MixedLM, REML) is not a
dependency of the project; REML and ANOVA agree for balanced data (ibid. §6.7).

Two correlations follow. ``between_share = sigma_b^2 / (sigma_b^2 + sigma_w^2)`` is the
intra-class correlation of the centred errors. A parcel's SD also carries the errors' mean
``mu`` (a bias of the map over the groups' population, which does not average out over a
parcel either): the *uncentred* correlation of two members of one group,
``(mu^2 + sigma_b^2) / (mu^2 + sigma_b^2 + sigma_w^2)``, and their uncentred covariance
``mu^2 + sigma_b^2``. For standardised errors whose variance is 1, as a correlogram of
:mod:`models.spatial_error` assumes, the two are equal; where the SDs misstate the errors'
size, the covariance is what a sum's variance needs (``pipeline.map_errors``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from models.errors import ModelDomainError


@dataclass(frozen=True)
class OneWayComponents:
    """ANOVA estimates of the one-way random-effects model (see the module docstring).

    ``between`` is the unbiased estimate and may be negative (sampling noise around a
    small component); the shares use it truncated at zero.
    """

    mean: float
    between: float
    within: float
    n: int
    groups: int
    n0: float

    @property
    def between_share(self) -> float:
        """Intra-class correlation of the centred errors, ``sigma_b^2 / total``."""
        b = max(self.between, 0.0)
        return b / (b + self.within) if b + self.within > 0 else float("nan")

    @property
    def uncentred_between(self) -> float:
        """Covariance of two members of one group about zero, ``mu^2 + sigma_b^2`` (in the
        values' own units, not a share of their variance)."""
        return max(self.between, 0.0) + self.mean**2

    @property
    def uncentred_share(self) -> float:
        """Correlation of two members of one group about zero, ``(mu^2 + sigma_b^2) /
        (mu^2 + sigma_b^2 + sigma_w^2)``."""
        b = self.uncentred_between
        return b / (b + self.within) if b + self.within > 0 else float("nan")

    def record(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "between_share": self.between_share,
            "uncentred_between": self.uncentred_between,
            "uncentred_share": self.uncentred_share,
            "method": "one-way random effects, ANOVA estimators for unbalanced groups "
            "(Searle, Casella & McCulloch 1992, §3.5)",
        }


def one_way_components(values: ArrayLike, groups: ArrayLike) -> OneWayComponents:
    """ANOVA estimators of the between- and within-group variances of ``values`` (NaN
    dropped) grouped by ``groups``.

    Raises
    ------
    ModelDomainError
        Fewer than two groups, or no group with two members (nothing to split).
    """
    t = pd.DataFrame({"z": np.asarray(values, dtype=np.float64), "g": np.asarray(groups)})
    t = t[np.isfinite(t["z"])]
    sizes = t.groupby("g")["z"].size()
    n, a = len(t), len(sizes)
    if a < 2 or n <= a:
        raise ModelDomainError(
            f"variance components need at least two groups and a group with two members; "
            f"got {n} values in {a} groups"
        )
    z = t["z"].to_numpy()
    group_mean = t.groupby("g")["z"].transform("mean").to_numpy()
    grand = float(z.mean())
    msw = float(np.sum((z - group_mean) ** 2)) / (n - a)
    means = t.groupby("g")["z"].mean()
    msb = float(np.sum(sizes * (means - grand) ** 2)) / (a - 1)
    n0 = (n - float(np.sum(sizes**2)) / n) / (a - 1)
    return OneWayComponents(mean=grand, between=(msb - msw) / n0, within=msw, n=n, groups=a, n0=n0)
