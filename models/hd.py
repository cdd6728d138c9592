"""Height-diameter (H-D) models for trees measured without height.

The forms and fitting choices of the R package BIOMASS ``modelHD()`` (Rejou-Mechain et
al. 2017), so that a model fitted here gives the same coefficients and RSE:

``log1`` (``loglog``)  ln H = a + b ln D                       (ordinary least squares)
``log2``               ln H = a + b ln D + c (ln D)^2           (ordinary least squares)
``michaelis``          H = A D / (B + D)                       (non-linear least squares)
``weibull``            H = a (1 - exp(-(D / b)^c))              (non-linear least squares)

Log models are back-transformed with the Baskerville (1972) correction exp(RSElog^2 / 2).
The residual standard error on the height scale, RSE = sqrt(sum(res^2) / (n - p)), is the
selection criterion when several forms are compared (``method="best"``): the lowest RSE
wins, as in BIOMASS's model comparison table. For Monte Carlo propagation,
:meth:`HDModel.predict` with ``rng`` adds N(0, RSElog) on the log scale (log models) or
N(0, RSE) on the height scale (the others) and floors heights at 0.1 m, as BIOMASS
``predictHeight(err = TRUE)``.

Non-linear fits use :func:`scipy.optimize.curve_fit` (Levenberg-Marquardt, as
``minpack.lm::nlsLM`` in BIOMASS); linear fits use :func:`numpy.linalg.lstsq`.

The ``plots`` stage (``forest-carbon plots TREES.csv --out DIR``) fits one model per plot
when the plot has enough measured heights, else per species group, else over all trees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import OptimizeWarning, curve_fit

from models.errors import HDFitError, ImplausibleHDError

HDMethod = Literal["log1", "log2", "michaelis", "weibull"]
HDChoice = Literal["best", "loglog", "log1", "log2", "michaelis", "weibull"]
FloatArray = npt.NDArray[np.float64]

#: BIOMASS modelHD refuses fewer measured heights than this
MIN_HEIGHTS = 15
#: floor of predicted heights (BIOMASS predictHeight sets H <= 0 to 0.1 m)
MIN_PREDICTED_HEIGHT_M = 0.1
#: how many parameters each form has (for the RSE degrees of freedom)
N_PARAMS: dict[str, int] = {"log1": 2, "log2": 3, "michaelis": 2, "weibull": 3}


@dataclass(frozen=True)
class HDModel:
    """A fitted height-diameter model.

    Attributes
    ----------
    method
        ``log1``, ``log2``, ``michaelis`` or ``weibull``.
    coefficients
        Fitted parameters in the order of the formula in the module docstring.
    rse_m
        Residual standard error on the height scale (m).
    rse_log
        Residual standard error of the log model (log models only).
    n
        Number of (D, H) pairs used.
    """

    method: HDMethod
    coefficients: tuple[float, ...]
    rse_m: float
    rse_log: float | None
    n: int

    def predict(self, dbh_cm: npt.ArrayLike, rng: np.random.Generator | None = None) -> FloatArray:
        """Height (m) at the given diameters; with ``rng``, one random draw per value.

        Without ``rng`` log models get the Baskerville correction. With ``rng`` the
        model error is added as BIOMASS ``predictHeight(err = TRUE)`` does.
        """
        d = np.asarray(dbh_cm, dtype=np.float64)
        if self.method in ("log1", "log2"):
            ln_d = np.log(d)
            lin = self.coefficients[0] + self.coefficients[1] * ln_d
            if self.method == "log2":
                lin = lin + self.coefficients[2] * ln_d**2
            rse_log = float(self.rse_log or 0.0)
            if rng is None:
                h = np.exp(lin + 0.5 * rse_log**2)
            else:
                h = np.exp(lin + rng.normal(0.0, rse_log, size=d.shape))
        else:
            h = _nonlinear(self.method, d, *self.coefficients)
            if rng is not None:
                h = h + rng.normal(0.0, self.rse_m, size=d.shape)
        return np.where(h <= 0, MIN_PREDICTED_HEIGHT_M, h)

    def implausibility(self, dbh_cm: npt.ArrayLike, max_height_m: float) -> str | None:
        """Why the model cannot be used over the diameters ``dbh_cm``, or None if it can.

        A fit is refused when a parameter leaves the domain in which its form is a
        height-diameter curve (every parameter of ``michaelis`` and ``weibull`` positive:
        a negative half-saturation B puts a pole inside the diameter range; a positive
        slope b of ``log1``) or when its heights over the diameter range (from the smallest
        to the largest diameter, on a log grid) are not finite, not positive or above
        ``max_height_m``. Heights are checked before the 0.1 m floor of :meth:`predict`.
        """
        p = self.coefficients
        if self.method in ("michaelis", "weibull") and min(p) <= 0:
            return f"{self.describe()}: a parameter is not positive"
        if self.method == "log1" and p[1] <= 0:
            return f"{self.describe()}: height does not grow with diameter (b <= 0)"
        d = np.asarray(dbh_cm, dtype=np.float64)
        d = d[np.isfinite(d) & (d > 0)]
        if d.size == 0:
            return None
        grid = np.geomspace(d.min(), d.max(), 50)
        if self.method in ("log1", "log2"):
            h = self.predict(grid)  # exp(): positive by construction
        else:
            h = _nonlinear(self.method, grid, *p)
        worst = int(np.nanargmax(np.where(np.isfinite(h), np.abs(h), np.inf)))
        if not np.all(np.isfinite(h)) or np.any(h <= 0) or np.any(h > max_height_m):
            return (
                f"{self.describe()}: predicts {h[worst]:.3g} m at {grid[worst]:.3g} cm DBH "
                f"(diameters {d.min():.3g}-{d.max():.3g} cm; plausible heights (0, "
                f"{max_height_m:g}] m)"
            )
        return None

    def describe(self) -> str:
        """One-line description for QA tables (``weibull(a=..., b=..., c=...) RSE=...``)."""
        names = {"log1": "ab", "log2": "abc", "michaelis": "AB", "weibull": "abc"}[self.method]
        coefs = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, self.coefficients, strict=True))
        return f"{self.method}({coefs}) RSE={self.rse_m:.3g} m n={self.n}"


def _nonlinear(method: str, d: FloatArray, *p: float) -> FloatArray:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if method == "michaelis":
            return np.asarray(p[0] * d / (p[1] + d), dtype=np.float64)
        return np.asarray(p[0] * (1.0 - np.exp(-((d / p[1]) ** p[2]))), dtype=np.float64)


def _clean(dbh_cm: npt.ArrayLike, height_m: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    d = np.asarray(dbh_cm, dtype=np.float64)
    h = np.asarray(height_m, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(h) & (d > 0) & (h > 0)
    return d[ok], h[ok]


def fit_hd(dbh_cm: npt.ArrayLike, height_m: npt.ArrayLike, method: HDMethod) -> HDModel:
    """Fit one H-D form to trees with both diameter and height.

    Raises
    ------
    HDFitError
        Fewer than :data:`MIN_HEIGHTS` usable pairs, or the non-linear fit fails.
    """
    d, h = _clean(dbh_cm, height_m)
    n = d.size
    if n < MIN_HEIGHTS:
        raise HDFitError(f"only {n} trees with diameter and height (at least {MIN_HEIGHTS} needed)")
    p = N_PARAMS[method]
    if method in ("log1", "log2"):
        ln_d = np.log(d)
        cols = [np.ones(n), ln_d] + ([ln_d**2] if method == "log2" else [])
        x = np.column_stack(cols)
        beta, *_ = np.linalg.lstsq(x, np.log(h), rcond=None)
        resid_log = np.log(h) - x @ beta
        rse_log = float(np.sqrt(np.sum(resid_log**2) / (n - p)))
        pred = np.exp(x @ beta + 0.5 * rse_log**2)
        coefs = tuple(float(b) for b in beta)
    else:
        rse_log = None
        if method == "michaelis":
            # starting values as R's SSmicmen self-start would roughly give: asymptote from
            # the tallest trees, half-saturation at the median diameter
            p0 = [float(np.max(h)) * 1.2, float(np.median(d))]
        else:
            p0 = [float(np.max(h)) * 1.2, float(np.median(d)) * 1.5, 1.0]
        try:
            with warnings.catch_warnings():
                # the parameter covariance is not used; its estimation warning is noise
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _ = curve_fit(
                    lambda dd, *pp: _nonlinear(method, dd, *pp),
                    d,
                    h,
                    p0=p0,
                    method="lm",
                    maxfev=20000,
                )
        except (RuntimeError, ValueError) as err:
            raise HDFitError(f"{method} H-D model did not converge: {err}") from None
        coefs = tuple(float(v) for v in popt)
        pred = _nonlinear(method, d, *coefs)
        if not np.all(np.isfinite(pred)):
            raise HDFitError(f"{method} H-D model gives non-finite heights")
    rse = float(np.sqrt(np.sum((h - pred) ** 2) / (n - p)))
    return HDModel(method=method, coefficients=coefs, rse_m=rse, rse_log=rse_log, n=n)


def compare_hd(dbh_cm: npt.ArrayLike, height_m: npt.ArrayLike) -> dict[str, HDModel]:
    """Fit every form that converges (BIOMASS ``modelHD(method = NULL)`` table)."""
    out: dict[str, HDModel] = {}
    for method in ("log1", "log2", "michaelis", "weibull"):
        try:
            out[method] = fit_hd(dbh_cm, height_m, method)
        except HDFitError:
            continue
    return out


def select_hd(
    dbh_cm: npt.ArrayLike,
    height_m: npt.ArrayLike,
    choice: HDChoice = "best",
    *,
    max_height_m: float = np.inf,
) -> HDModel:
    """The H-D model asked for, or the lowest-RSE one with ``choice="best"``.

    ``loglog`` is an alias of ``log1`` (the power model). Only fits that are plausible
    over the diameters ``dbh_cm`` (all of them, with or without height) are returned
    (:meth:`HDModel.implausibility` with ``max_height_m``); with ``choice="best"`` the
    lowest-RSE plausible form.

    Raises
    ------
    HDFitError
        Too few heights, no form converged, or no converged form is plausible (the
        message gives the reasons).
    """
    if choice != "best":
        method: HDMethod = "log1" if choice == "loglog" else choice
        models: dict[str, HDModel] = {method: fit_hd(dbh_cm, height_m, method)}
    else:
        d, _ = _clean(dbh_cm, height_m)
        if d.size < MIN_HEIGHTS:
            raise HDFitError(
                f"only {d.size} trees with diameter and height (at least {MIN_HEIGHTS} needed)"
            )
        models = dict(compare_hd(dbh_cm, height_m))
        if not models:
            raise HDFitError("no H-D model form converged")
    reasons = {m: models[m].implausibility(dbh_cm, max_height_m) for m in models}
    plausible = [models[m] for m, why in reasons.items() if why is None]
    if not plausible:
        raise ImplausibleHDError("implausible H-D fit: " + "; ".join(map(str, reasons.values())))
    return min(plausible, key=lambda m: m.rse_m)
