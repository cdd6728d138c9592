"""Hybrid inference: LiDAR covers a probability sample of the area, a model links it to plots.

When airborne LiDAR is flown over a sample of units (strips, blocks, cells) rather than
wall to wall, the total rests on two sources of uncertainty (Ståhl et al. 2016; McRoberts
et al. 2016): the *design* variance of the LiDAR sample, and the *model* variance of the
parameters fitted on the field plots. For a linear model ``y = x'beta + eps`` fitted by
ordinary least squares on the plots and applied to the ``n_L`` LiDAR sample units::

    mean      = mean_k (x_k' beta_hat) = xbar_L' beta_hat
    var(mean) = (1 - f) s^2(x'beta_hat) / n_L  +  xbar_L' Cov(beta_hat) xbar_L
    Cov(beta_hat) = sigma_hat^2 (X'X)^-1,  sigma_hat^2 = RSS / (n_plots - p)

The second term is the delta-method ``g' Cov(beta_hat) g`` with ``g = d mean / d beta =
xbar_L`` (Ståhl et al. 2016, hybrid estimator of the population mean and its variance;
the negligible product of the two variances is omitted, as there). The LiDAR units are
taken as a simple random sample (a systematic strip sample analysed as random, the usual
practice). The t quantile uses Welch-Satterthwaite degrees of freedom combining
``n_L - 1`` (design term) and ``n_plots - p`` (model term). A log-linear model would need
its own gradient and a back-transformation; only the linear model is implemented.
Saarela et al. (2016) extend the model term to a chain of two models (field -> LiDAR ->
satellite, "hierarchical model-based inference"), not covered here.

References
----------
Ståhl, G. et al. (2016) Use of models in large-area forest surveys: comparing model-
    assisted, model-based and hybrid estimation. For. Ecosyst. 3:5.
    https://doi.org/10.1186/s40663-016-0064-9
Saarela, S. et al. (2016) Hierarchical model-based inference for forest inventory
    utilizing three sources of information. Ann. For. Sci. 73:895-910.
    https://doi.org/10.1007/s13595-016-0590-1
McRoberts, R.E. et al. (2016) Hybrid estimators for mean aboveground carbon per unit
    area. For. Ecol. Manage. 378:44-56.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.errors import SurveyError
from models.survey.design import Estimate, Quantity, estimate_from_mean, satterthwaite_df


def hybrid_estimate(
    x_plots: ArrayLike,
    y_plots: ArrayLike,
    x_lidar: ArrayLike,
    *,
    area_ha: float,
    lidar_population_units: float | None = None,
    quantity: Quantity = "stock",
    confidence: float = 0.90,
) -> Estimate:
    """Hybrid estimate of mean density and total from a LiDAR sample and a plot-fitted model.

    Parameters
    ----------
    x_plots
        Design matrix of the field plots, ``(n_plots, p)`` (include a column of ones for
        an intercept); LiDAR metrics at the plots.
    y_plots
        Field value of each plot (density, e.g. Mg/ha).
    x_lidar
        Design matrix of the LiDAR sample units, ``(n_L, p)``, same columns as ``x_plots``.
    area_ha
        Area of the population the LiDAR units were sampled from (ha).
    lidar_population_units
        Number of units the LiDAR sample was drawn from (finite population correction),
        or ``None`` for an infinite population.
    quantity, confidence
        As in :func:`models.survey.stratified.stratified_estimate`.
    """
    xp = _matrix(x_plots, "x_plots")
    xl = _matrix(x_lidar, "x_lidar")
    y = np.asarray(y_plots, dtype=np.float64)
    n_plots, p = xp.shape
    if y.shape != (n_plots,) or not np.isfinite(y).all():
        raise SurveyError(f"y_plots must have one finite value per row of x_plots ({n_plots})")
    if xl.shape[1] != p:
        raise SurveyError(f"x_lidar has {xl.shape[1]} columns, x_plots has {p}")
    n_lidar = xl.shape[0]
    if n_plots <= p or np.linalg.matrix_rank(xp) < p:
        raise SurveyError(
            f"{n_plots} plots cannot fit {p} model parameters with a residual variance"
        )
    if n_lidar < 2:
        raise SurveyError("the LiDAR sample needs at least 2 units for its sampling variance")
    if lidar_population_units is not None and lidar_population_units < n_lidar:
        raise SurveyError("lidar_population_units is smaller than the LiDAR sample")

    beta, beta_cov = _ols(xp, y)
    predictions = xl @ beta
    fpc = 0.0 if lidar_population_units is None else n_lidar / lidar_population_units
    design_var = (1.0 - fpc) * predictions.var(ddof=1) / n_lidar
    gradient = xl.mean(axis=0)
    model_var = float(gradient @ beta_cov @ gradient)
    components = np.array([design_var, model_var])
    df = satterthwaite_df(components, np.array([n_lidar - 1.0, n_plots - p]))
    return estimate_from_mean(
        "hybrid",
        quantity,
        mean_per_ha=float(predictions.mean()),
        var_mean=design_var + model_var,
        area_ha=area_ha,
        df=df,
        n=n_plots,
        confidence=confidence,
    )


def _ols(
    x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares coefficients and their covariance ``sigma_hat^2 (X'X)^-1``."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float64)
    residual = y - x @ beta
    sigma2 = float(residual @ residual) / (x.shape[0] - x.shape[1])
    return beta, sigma2 * np.linalg.inv(x.T @ x)


def _matrix(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise SurveyError(f"{name} must be a finite 2-D design matrix, got shape {array.shape}")
    return array
