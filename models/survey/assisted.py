"""Model-assisted estimators: the wall-to-wall map as auxiliary variable of the plot sample.

The map value ``m`` is known for every population unit, so its mean ``M_h`` over each
stratum is known exactly; the plots give the field value ``y`` and the map value ``m_k``
at the plot. The estimators stay design-unbiased (approximately so for GREG) whatever the
map's errors; a good map only shrinks the variance.

Difference estimator (Särndal et al. 1992 §6.3; Gregoire et al. 2011; McRoberts et al.
2013), per stratum, with residuals ``e_k = y_k - m_k``::

    mean_h = M_h + mean_s(e)_h,    var = sum_h W_h^2 (1 - f_h) s_e,h^2 / n_h

GREG (Särndal et al. 1992 §6.4-6.6, Result 6.6.1), fitted separately within each stratum
on a model ``y ~ x'B`` with variance factors ``c_k``: ``B`` by weighted least squares
(weights ``1/c_k``), ``mean_h = X_h'B + mean_s(e)_h`` with ``e = y - x'B``, and the
g-weighted residual variance estimator::

    g_k = 1 + (X_h - xbar_s,h)' (sum_s x x'/c / n_h)^-1 x_k / c_k
    var = sum_h W_h^2 (1 - f_h) S^2(g e)_h / n_h

Models: ``"linear"`` ``y ~ a + b m`` (the separate regression estimator of stratified
sampling, Cochran 1977 §7.10), ``"ratio"`` ``y ~ b m`` with ``c = m`` (the separate ratio
estimator, Cochran 1977 §6.10). Post-
stratification (Särndal et al. 1992 §7.6) is GREG on post-stratum indicators with known
population shares: ``mean_h = sum_g P_hg ybar_hg``.

Stock change is the same estimator with ``y = d`` (plot difference between epochs) and
``m`` the map difference. The t quantile uses ``n - (number of fitted parameters)``
degrees of freedom (``n - H`` for the difference estimator, nothing being fitted).

References
----------
Särndal, C.-E., Swensson, B., Wretman, J. (1992) Model Assisted Survey Sampling.
    Springer. https://doi.org/10.1007/978-1-4612-4378-6
Gregoire, T.G. et al. (2011) Can. J. For. Res. 41:83-95. https://doi.org/10.1139/X10-195
McRoberts, R.E., Næsset, E., Gobakken, T. (2013) Remote Sens. Environ. 128:268-275.
    https://doi.org/10.1016/j.rse.2012.10.007
Cochran, W.G. (1977) Sampling Techniques, 3rd ed., ch. 6-7. Wiley.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.errors import SurveyError
from models.survey.design import (
    Estimate,
    Quantity,
    StratifiedDesign,
    stratum_moments,
)
from models.survey.stratified import DegreesOfFreedom, estimate_from_strata


def difference_estimate(
    design: StratifiedDesign,
    y: ArrayLike,
    m: ArrayLike,
    map_mean: ArrayLike,
    *,
    quantity: Quantity = "stock",
    confidence: float = 0.90,
    df: DegreesOfFreedom = "n_minus_strata",
) -> Estimate:
    """Difference estimator ``M_h + mean(y - m)`` per stratum, combined over strata.

    Parameters
    ----------
    design
        The stratified plot sample.
    y
        Field value of each plot (density, e.g. Mg/ha).
    m
        Map value at each plot, same unit.
    map_mean
        Mean map value over each stratum's whole area (one per stratum).
    quantity, confidence, df
        As in :func:`models.survey.stratified.stratified_estimate`.
    """
    residual = design.plot_values(y, "y") - design.plot_values(m, "m")
    map_means = _per_stratum(design, map_mean, "map_mean")
    residual_means, residual_variances = stratum_moments(design, residual)
    return estimate_from_strata(
        design,
        map_means + residual_means,
        residual_variances,
        "difference",
        quantity,
        confidence,
        df,
    )


def greg_estimate(
    design: StratifiedDesign,
    y: ArrayLike,
    m: ArrayLike,
    map_mean: ArrayLike,
    *,
    model: Literal["linear", "ratio"] = "linear",
    quantity: Quantity = "stock",
    confidence: float = 0.90,
) -> Estimate:
    """GREG estimator with the map as auxiliary variable, model fitted within each stratum.

    ``model="linear"`` fits ``y ~ a + b m`` (needs 3 plots per stratum for a residual
    variance); ``model="ratio"`` fits ``y ~ b m`` with variance proportional to ``m`` and
    needs positive map values. Arguments as in :func:`difference_estimate`.
    """
    values = design.plot_values(y, "y")
    map_values = design.plot_values(m, "m")
    map_means = _per_stratum(design, map_mean, "map_mean")
    if model == "linear":
        x = np.column_stack([np.ones_like(map_values), map_values])
        x_pop = np.column_stack([np.ones_like(map_means), map_means])
        c = np.ones_like(map_values)
    elif model == "ratio":
        if (map_values <= 0).any() or (map_means <= 0).any():
            raise SurveyError(
                "the ratio model needs positive map values (m and map_mean); "
                "use model='linear' for signed quantities such as stock change"
            )
        x, x_pop, c = map_values[:, None], map_means[:, None], map_values
    else:
        raise SurveyError(f"model must be 'linear' or 'ratio', got {model!r}")
    used = np.ones(x_pop.shape, dtype=bool)
    return _greg(design, values, x, x_pop, used, c, f"greg_{model}", quantity, confidence)


def post_stratified_estimate(
    design: StratifiedDesign,
    y: ArrayLike,
    post_stratum: ArrayLike,
    post_stratum_share: ArrayLike,
    *,
    quantity: Quantity = "stock",
    confidence: float = 0.90,
) -> Estimate:
    """Post-stratified estimator (GREG on post-stratum indicators), within each stratum.

    Parameters
    ----------
    design
        The stratified plot sample (a single stratum for a simple random sample).
    y
        Field value of each plot.
    post_stratum
        Index ``g`` of each plot's post-stratum (e.g. mapped forest type), ``0..G-1``.
    post_stratum_share
        ``P_hg``, the known share of post-stratum ``g`` in the area of stratum ``h``,
        shape ``(H, G)`` (or ``(G,)`` for a single stratum); rows sum to 1.
    quantity, confidence
        As in :func:`models.survey.stratified.stratified_estimate`.
    """
    values = design.plot_values(y, "y")
    groups = np.asarray(post_stratum, dtype=np.intp)
    if groups.shape != values.shape:
        raise SurveyError(f"post_stratum must have one value per plot ({design.n_plots})")
    share = np.atleast_2d(np.asarray(post_stratum_share, dtype=np.float64))
    if share.shape[0] != design.n_strata or (share < 0).any():
        raise SurveyError(
            f"post_stratum_share must be non-negative with one row per stratum "
            f"({design.n_strata}), got shape {share.shape}"
        )
    if not np.allclose(share.sum(axis=1), 1.0, atol=1e-9):
        raise SurveyError(f"post_stratum_share rows must sum to 1, got {share.sum(axis=1)}")
    if groups.min() < 0 or groups.max() >= share.shape[1]:
        raise SurveyError(f"post_stratum holds indices outside 0..{share.shape[1] - 1}")
    x = (groups[:, None] == np.arange(share.shape[1])).astype(np.float64)
    for h, name in enumerate(design.stratum_names):
        in_h = design.plot_stratum == h
        counts = x[in_h].sum(axis=0)
        for g in range(share.shape[1]):
            if share[h, g] > 0 and counts[g] == 0:
                raise SurveyError(
                    f"post-stratum {g} has share {share[h, g]:.3g} of stratum {name!r} but no "
                    "plots there; collapse it with a neighbouring post-stratum"
                )
            if share[h, g] == 0 and counts[g] > 0:
                raise SurveyError(
                    f"stratum {name!r} has {int(counts[g])} plots in post-stratum {g}, "
                    "whose share there is 0"
                )
    return _greg(
        design,
        values,
        x,
        share,
        share > 0,
        np.ones_like(values),
        "post_stratified",
        quantity,
        confidence,
    )


def _greg(
    design: StratifiedDesign,
    y: NDArray[np.float64],
    x: NDArray[np.float64],
    x_pop_mean: NDArray[np.float64],
    used: NDArray[np.bool_],
    c: NDArray[np.float64],
    estimator: str,
    quantity: Quantity,
    confidence: float,
) -> Estimate:
    """GREG within strata: ``used[h]`` selects the columns of ``x`` modelled in stratum ``h``."""
    means = np.empty(design.n_strata)
    ge = np.empty_like(y)
    for h, name in enumerate(design.stratum_names):
        rows = design.plot_stratum == h
        xh = x[np.ix_(rows, used[h])]
        n_h, p = xh.shape
        if n_h <= p or np.linalg.matrix_rank(xh) < p:
            raise SurveyError(
                f"stratum {name!r}: {n_h} plots cannot fit the {estimator} model's {p} "
                "parameters with a residual variance (too few plots, or constant map values)"
            )
        means[h], ge[rows] = _greg_stratum(xh, y[rows], x_pop_mean[h, used[h]], c[rows])
    _, ge_variances = stratum_moments(design, ge)
    fitted_parameters = int(used.sum())
    df = float(design.n_plots - fitted_parameters)
    return estimate_from_strata(design, means, ge_variances, estimator, quantity, confidence, df)


def _greg_stratum(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    x_pop_mean: NDArray[np.float64],
    c: NDArray[np.float64],
) -> tuple[float, NDArray[np.float64]]:
    """GREG mean of one stratum (equal inclusion probabilities) and its ``g_k e_k``."""
    x_over_c = x / c[:, None]
    t_hat = x_over_c.T @ x / len(y)
    beta = np.linalg.solve(t_hat, x_over_c.T @ y / len(y))
    residual = y - x @ beta
    g = 1.0 + (x_pop_mean - x.mean(axis=0)) @ np.linalg.solve(t_hat, x_over_c.T)
    return float(x_pop_mean @ beta + residual.mean()), g * residual


def _per_stratum(design: StratifiedDesign, values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (design.n_strata,) or not np.isfinite(array).all():
        raise SurveyError(
            f"{name} must have one finite value per stratum ({design.n_strata}), got {array}"
        )
    return array
