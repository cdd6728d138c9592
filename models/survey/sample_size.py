"""Number of sample plots for a target precision and its allocation to strata (CDM AR-TOOL03).

AR-TOOL03 version 02.1.0 (EB 58 Annex 15), section II, for strata with area weights
``w_i = A_i / A``, standard deviations ``s_i`` of the plot densities, allowable error
``E`` (half-width of the confidence interval; the methodology's ±10 % of the mean at 90 %
confidence by default) and ``N = A / A_plot`` possible plots::

    n = N t^2 (sum w_i s_i)^2 / (N E^2 + t^2 sum w_i s_i^2)      (Eq. 1)
    n = (t / E)^2 (sum w_i s_i)^2                                (Eq. 2, small sampling fraction)
    n_i = n w_i s_i / sum w_i s_i                                (Eq. 4, optimum allocation)

``t`` is first the two-sided Student-t value at infinite degrees of freedom; if that ``n``
is below 30 the equation is applied once more with ``n - 1`` degrees of freedom (paras.
11-13), rounded down to a whole number as a t-table is read. With a cost per plot ``c_i``
the optimum (minimum cost for the precision) allocation and size are Cochran's (1977
§5.5, §5.9; as in AR-TOOL03 version 01)::

    n   = (sum w_i s_i sqrt(c_i)) (sum w_i s_i / sqrt(c_i)) / (E^2 / t^2 + sum w_i s_i^2 / N)
    n_i = n (w_i s_i / sqrt(c_i)) / sum(w_i s_i / sqrt(c_i))

which is Eq. 1 / Eq. 4 for equal costs. Eq. 1 is used whenever ``N`` is given (it is
exact; Eq. 2 is its limit for ``N -> inf``). Plots per stratum are rounded up, and at
least 2 per stratum are kept so that the stratified variance can be estimated; both only
add precision.

The AR-TOOL03 equation and paragraph numbers are as transcribed from the tool's text
(UNFCCC download blocked here); not checked against the PDF.

References
----------
UNFCCC CDM (2010) A/R methodological tool "Calculation of the number of sample plots for
    measurements within A/R CDM project activities", version 02.1.0.
Cochran, W.G. (1977) Sampling Techniques, 3rd ed., §5.5, §5.9. Wiley.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.errors import SurveyError
from models.survey.design import t_quantile

#: AR-TOOL03 v02.1.0 paras. 12-13: below this first-iteration n, iterate once on t with n - 1 df
ITERATE_BELOW_N = 30
#: plots per stratum needed for a sample variance
MIN_PLOTS_PER_STRATUM = 2


@dataclass(frozen=True)
class SamplePlan:
    """Number of plots for a target precision and its allocation to strata."""

    #: unrounded ``n`` from the sample-size equation
    n_required: float
    #: unrounded optimum allocation ``n_i``
    allocation: NDArray[np.float64]
    #: plots to measure in each stratum (``n_i`` rounded up, at least 2)
    plots: NDArray[np.intp]
    #: t value of the final iteration and its degrees of freedom (``inf`` = normal)
    t_value: float
    df: float
    #: allowable error ``E`` (absolute, unit of the densities)
    allowable_error: float

    @property
    def n_plots(self) -> int:
        return int(self.plots.sum())


def ar_tool03_sample_size(
    stratum_area_ha: ArrayLike,
    stratum_sd: ArrayLike,
    stratum_mean: ArrayLike,
    *,
    relative_error: float = 0.10,
    confidence: float = 0.90,
    plot_area_ha: float | None = None,
    cost: ArrayLike | None = None,
) -> SamplePlan:
    """Plots needed for ``±relative_error`` of the mean at ``confidence``, and their allocation.

    Parameters
    ----------
    stratum_area_ha
        Area of each stratum (ha).
    stratum_sd
        Standard deviation of plot densities in each stratum (from the map, a prior
        sample or expert judgement; unit of the densities).
    stratum_mean
        Expected mean density of each stratum; ``E = relative_error x sum w_i mean_i``.
    relative_error
        Allowable half-width of the interval as a fraction of the mean (AR-TOOL03: 0.10).
    confidence
        Two-sided confidence level (0.90 in AR-TOOL14/CCER).
    plot_area_ha
        Plot size (ha) giving ``N = A / A_plot`` possible plots; ``None`` = infinite.
    cost
        Cost of a plot in each stratum (any unit) for the cost-optimum allocation;
        ``None`` = equal costs (Neyman allocation).
    """
    area = _positive(stratum_area_ha, "stratum_area_ha")
    sd = np.asarray(stratum_sd, dtype=np.float64)
    mean = np.asarray(stratum_mean, dtype=np.float64)
    if sd.shape != area.shape or mean.shape != area.shape or (sd < 0).any():
        raise SurveyError("stratum_sd and stratum_mean need one value per stratum, sd >= 0")
    unit_cost = np.ones_like(area) if cost is None else _positive(cost, "cost")
    if unit_cost.shape != area.shape:
        raise SurveyError("cost needs one value per stratum")
    if not relative_error > 0:
        raise SurveyError(f"relative_error must be positive, got {relative_error}")
    w = area / area.sum()
    allowable_error = relative_error * abs(float(w @ mean))
    if allowable_error == 0.0:
        raise SurveyError("the weighted mean of stratum_mean is 0; no relative precision exists")
    population = math.inf if plot_area_ha is None else float(area.sum() / plot_area_ha)

    def required(t: float) -> float:
        spread = float((w * sd * np.sqrt(unit_cost)).sum() * (w * sd / np.sqrt(unit_cost)).sum())
        return spread / ((allowable_error / t) ** 2 + float(w @ sd**2) / population)

    df = math.inf
    t = t_quantile(confidence, df)
    n = required(t)
    if n < ITERATE_BELOW_N:
        df = float(max(math.floor(n - 1.0), 1))
        t = t_quantile(confidence, df)
        n = required(t)
    share = w * sd / np.sqrt(unit_cost)
    allocation = n * share / share.sum() if share.sum() > 0 else np.zeros_like(share)
    # the tolerance keeps float noise (13.000000001) from adding a plot
    plots = np.maximum(np.ceil(allocation - 1e-9), MIN_PLOTS_PER_STRATUM).astype(np.intp)
    return SamplePlan(
        n_required=n,
        allocation=allocation,
        plots=plots,
        t_value=t,
        df=df,
        allowable_error=allowable_error,
    )


def _positive(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1 or not (np.isfinite(array) & (array > 0)).all():
        raise SurveyError(f"{name} must be positive and finite, one value per stratum: {array}")
    return array


def prior_from_map(
    predicted: ArrayLike, sd: ArrayLike, weight: ArrayLike | None = None
) -> tuple[float, float]:
    """Mean and SD of a stratum's plot densities expected from a map, before any plot.

    A map predicts the density ``m`` of every cell at plot support with an error SD ``s``;
    a plot's value is ``y = m + e``. By the law of total variance the SD of ``y`` over the
    stratum is ``sqrt(Var(m) + E[s^2])``: the spread of the predictions plus the mean error
    variance (the map alone is smoother than the plots, so ``Var(m)`` alone under-sizes the
    sample). The SDs must be calibrated at plot support (the pipeline's are: split-conformal
    on held-out plots). For a change, pass the predicted change and the SD of the change
    (``sqrt(s1^2 + s2^2)`` for uncorrelated epoch errors, an upper bound for positively
    correlated ones). ``weight`` (e.g. the cells' covered fractions) weights each cell;
    NaN cells are left out.
    """
    m = np.asarray(predicted, dtype=np.float64).ravel()
    s = np.asarray(sd, dtype=np.float64).ravel()
    w = np.ones_like(m) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    if not (m.shape == s.shape == w.shape):
        raise SurveyError("predicted, sd and weight need one value per cell")
    ok = np.isfinite(m) & np.isfinite(s) & (w > 0)
    if not ok.any():
        raise SurveyError("the stratum has no mapped cell")
    m, s, w = m[ok], s[ok], w[ok]
    mean = float(np.average(m, weights=w))
    variance = float(np.average((m - mean) ** 2, weights=w) + np.average(s**2, weights=w))
    return mean, math.sqrt(variance)
