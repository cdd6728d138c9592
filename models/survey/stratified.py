"""Design-based stratified estimator of carbon stock and stock change (CDM AR-TOOL14).

Stock (one epoch), AR-TOOL14 v04.2 section 8.1.1, eqs. (13)-(17)::

    b   = sum_h w_h b_h                         (14)   w_h = A_h / A
    b_h = sum_p b_p,h / n_h                     (16)
    s_h^2 = sample variance of b_p,h            (17)
    u   = t_VAL sqrt(sum_h w_h^2 s_h^2 / n_h) / b   (15)
    B   = A b                                   (13)

with ``t_VAL`` the two-sided Student-t value at 90 % confidence and ``n - M`` degrees of
freedom (``n`` plots, ``M`` strata). The same estimator is Cochran (1977) eqs. 5.1 and
5.6, Särndal et al. (1992) §3.7; with known stratum sizes ``N_h`` the finite population
correction ``1 - n_h/N_h`` enters the variance (AR-TOOL14 omits it: an area frame is an
infinite population).

Stock change by re-measuring the same plots (AR-TOOL14 v04.2 section 6.2, "direct
estimation of change by re-measurement of sample plots", eqs. (4)-(8)): the same formulas
applied to the plot differences ``d = b_t2 - b_t1``. Pairing removes the between-plot
variation common to both epochs, which is why it beats the difference of two independent
stock estimates (section 6.1, eq. (2)).

AR-TOOL14 equation numbers and the ``n - M`` rule are as transcribed from the tool's
text (version 04.2, EB 85); its Appendix 2 discount of the relative uncertainty U is
applied in :mod:`models.credits`.

References
----------
UNFCCC CDM (2015) A/R methodological tool 14 "Estimation of carbon stocks and change in
    carbon stocks of trees and shrubs in A/R CDM project activities", version 04.2.
Cochran, W.G. (1977) Sampling Techniques, 3rd ed., ch. 5. Wiley.
Särndal, C.-E., Swensson, B., Wretman, J. (1992) Model Assisted Survey Sampling, §3.7.
    https://doi.org/10.1007/978-1-4612-4378-6
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
    combine_strata,
    estimate_from_mean,
    satterthwaite_df,
    stratum_moments,
)

#: ``"n_minus_strata"``: AR-TOOL14's ``n - M``; ``"satterthwaite"``: effective df (Cochran §5.4)
DegreesOfFreedom = Literal["n_minus_strata", "satterthwaite"]


def stratified_estimate(
    design: StratifiedDesign,
    y: ArrayLike,
    *,
    quantity: Quantity = "stock",
    confidence: float = 0.90,
    df: DegreesOfFreedom = "n_minus_strata",
) -> Estimate:
    """Stratified estimate of the mean density and total (AR-TOOL14 eqs. 13-17).

    Parameters
    ----------
    design
        The stratified plot sample.
    y
        One value per plot, a density (e.g. Mg/ha or t CO2e/ha).
    quantity
        Label of the result: ``"stock"`` or ``"change"`` (when ``y`` are differences).
    confidence
        Two-sided confidence level of the interval (AR-TOOL14: 0.90).
    df
        Degrees of freedom of the t quantile: ``"n_minus_strata"`` (AR-TOOL14) or
        ``"satterthwaite"``.
    """
    values = design.plot_values(y, "y")
    means, variances = stratum_moments(design, values)
    return estimate_from_strata(design, means, variances, "stratified", quantity, confidence, df)


def stratified_change_estimate(
    design: StratifiedDesign,
    y_t1: ArrayLike,
    y_t2: ArrayLike,
    *,
    confidence: float = 0.90,
    df: DegreesOfFreedom = "n_minus_strata",
) -> Estimate:
    """Stock change ``t1 -> t2`` from plots measured at both epochs (AR-TOOL14 eqs. 4-8).

    ``design`` must hold only the re-measured plots (see
    :meth:`~models.survey.design.StratifiedDesign.subset`); the estimate is of
    ``mean(y_t2 - y_t1)`` per hectare and its total over the area.
    """
    d = design.plot_values(y_t2, "y_t2") - design.plot_values(y_t1, "y_t1")
    return stratified_estimate(design, d, quantity="change", confidence=confidence, df=df)


def estimate_from_strata(
    design: StratifiedDesign,
    stratum_means: NDArray[np.float64],
    stratum_variances: NDArray[np.float64],
    estimator: str,
    quantity: Quantity,
    confidence: float,
    df: DegreesOfFreedom | float,
) -> Estimate:
    """Combine per-stratum means and per-plot variances into an :class:`Estimate`.

    Shared by all stratum-wise estimators, which differ only in what is averaged within
    strata; ``df`` is a rule name or, for fitted models, the degrees of freedom itself.
    """
    mean, var_mean, contributions = combine_strata(design, stratum_means, stratum_variances)
    if isinstance(df, float):
        dof = df
    elif df == "n_minus_strata":
        dof = float(design.n_plots - design.n_strata)
    elif df == "satterthwaite":
        dof = satterthwaite_df(contributions, design.plots_per_stratum.astype(np.float64) - 1.0)
    else:
        raise SurveyError(f"df must be 'n_minus_strata' or 'satterthwaite', got {df!r}")
    return estimate_from_mean(
        estimator,
        quantity,
        mean_per_ha=mean,
        var_mean=var_mean,
        area_ha=design.area_ha,
        df=dof,
        n=design.n_plots,
        confidence=confidence,
    )
