"""The candidate biomass models, behind one small interface.

Field plots give above-ground biomass (AGB, Mg/ha) at a few dozen places; remote sensing
gives predictors everywhere. Every candidate links them behind :class:`BiomassModel`
(``fit`` / ``predict`` / ``describe``):

``powerlaw``
    The classic area-based approach (ABA) model on LiDAR metrics,
    ``AGB = a * H^b * cover^c`` (Næsset 2002, doi:10.1016/S0034-4257(01)00290-5;
    Asner & Mascaro 2014, doi:10.1016/j.rse.2013.09.023), fitted by least squares in log
    space and back-transformed with the log-normal bias correction ``exp(s^2 / 2)``
    (Baskerville 1972, doi:10.1139/x72-009; Sprugel 1983, doi:10.2307/1937343), where
    ``s^2`` is the residual mean square of the log-space fit.
``random_forest``
    scikit-learn's :class:`~sklearn.ensemble.RandomForestRegressor` (Breiman 2001,
    doi:10.1023/A:1010933404324), seeded.
``gradient_boosting``
    scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingRegressor` (handles
    missing predictors natively), seeded.
``log_linear``
    Multiple linear regression of ``log(1 + AGB)`` on the standardised predictors, the
    classic form of optical biomass models (Lu et al. 2016, Int. J. Digital Earth
    9:63-105, doi:10.1080/17538947.2014.990526), with a ridge penalty
    (scikit-learn's :class:`~sklearn.linear_model.Ridge`; Hoerl & Kennard 1970,
    doi:10.1080/00401706.1970.10488634) because band reflectances and their indices are
    strongly collinear, and Duan's (1983) smearing back-transformation
    (doi:10.1080/01621459.1983.10478017), which needs no normality of the log residuals.
    Why next to the tree ensembles: a tree cannot predict beyond the largest training
    AGB, and optical signals saturate, so the densest stands (often denser than any plot)
    are under-read by trees; a log-linear model extrapolates along its fitted trend.
    Predictors are clipped to their training range first, so a pixel unlike any plot
    cannot send the exponential far out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from models.errors import ModelDomainError

FloatArray = NDArray[np.float64]
CandidateName = Literal["powerlaw", "random_forest", "gradient_boosting", "log_linear"]


class BiomassModel(Protocol):
    """What every biomass model offers."""

    name: str

    @property
    def features(self) -> tuple[str, ...]: ...

    def fit(
        self, x: pd.DataFrame, agb_mg_ha: FloatArray, weight: FloatArray | None = None
    ) -> Any: ...

    def predict(self, x: pd.DataFrame) -> FloatArray: ...

    def describe(self) -> dict[str, Any]: ...


def _matrix(x: pd.DataFrame, features: Sequence[str]) -> FloatArray:
    missing = [f for f in features if f not in x.columns]
    if missing:
        raise ModelDomainError(f"predictor column(s) {missing} missing from the feature table")
    return x.loc[:, list(features)].to_numpy(dtype=np.float64)


def _fit_arrays(
    x: pd.DataFrame, features: Sequence[str], agb_mg_ha: FloatArray, weight: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Predictor matrix, target and weights (1 each without ``weight``) of a fit."""
    y = np.asarray(agb_mg_ha, dtype=np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    return _matrix(x, features), y, w


@dataclass
class PowerLawABA:
    """``AGB = a * H^b * cover^c``, fitted in log space with the Baskerville correction.

    Parameters
    ----------
    height
        Name of the LiDAR height metric column (m), e.g. ``h_mean``.
    cover
        Name of the canopy cover column (fraction 0-1), e.g. ``cover_2m``.
    """

    height: str = "h_mean"
    cover: str = "cover_2m"
    name: str = "powerlaw"
    coef_: FloatArray | None = None
    residual_ms_log_: float = 0.0
    n_fit_: int = 0

    @property
    def features(self) -> tuple[str, ...]:
        return (self.height, self.cover)

    def fit(
        self, x: pd.DataFrame, agb_mg_ha: FloatArray, weight: FloatArray | None = None
    ) -> PowerLawABA:
        m, y, w = _fit_arrays(x, self.features, agb_mg_ha, weight)
        # the log form is defined only for positive biomass, height and cover
        ok = np.isfinite(m).all(axis=1) & (m > 0).all(axis=1) & np.isfinite(y) & (y > 0)
        n = int(ok.sum())
        if n < 4:
            raise ModelDomainError(
                f"power-law model needs at least 4 plots with positive AGB, {self.height} and "
                f"{self.cover}; got {n}"
            )
        design = np.column_stack([np.ones(n), np.log(m[ok])])
        root_w = np.sqrt(w[ok] / w[ok].mean())
        coef, *_ = np.linalg.lstsq(design * root_w[:, None], np.log(y[ok]) * root_w, rcond=None)
        resid = (np.log(y[ok]) - design @ coef) * root_w
        self.coef_ = coef
        self.residual_ms_log_ = float(resid @ resid / max(n - design.shape[1], 1))
        self.n_fit_ = n
        return self

    def predict(self, x: pd.DataFrame) -> FloatArray:
        if self.coef_ is None:
            raise ModelDomainError("power-law model used before fit()")
        m = _matrix(x, self.features)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pred = self.coef_[0] + np.log(np.clip(m, 0.0, None)) @ self.coef_[1:]
            # Baskerville (1972) back-transformation of a log-space mean
            out = np.exp(log_pred + self.residual_ms_log_ / 2.0)
        return np.where(np.isfinite(m).all(axis=1), out, np.nan)

    def describe(self) -> dict[str, Any]:
        coef = [math.nan] * 3 if self.coef_ is None else [float(c) for c in self.coef_]
        return {
            "form": f"AGB = a * {self.height}^b * {self.cover}^c",
            "a": math.exp(coef[0]),
            "b": coef[1],
            "c": coef[2],
            "log_residual_ms": self.residual_ms_log_,
            "bias_correction": math.exp(self.residual_ms_log_ / 2.0),
            "bias_correction_ref": "Baskerville 1972 doi:10.1139/x72-009",
            "n_fit": self.n_fit_,
        }


@dataclass
class SklearnModel:
    """A scikit-learn regressor on named feature columns (missing rows predict NaN)."""

    name: str
    features: tuple[str, ...]
    estimator: Any
    hyper_parameters: dict[str, Any] = field(default_factory=dict)

    def fit(
        self, x: pd.DataFrame, agb_mg_ha: FloatArray, weight: FloatArray | None = None
    ) -> SklearnModel:
        m = _matrix(x, self.features)
        y = np.asarray(agb_mg_ha, dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(m).any(axis=1)
        if ok.sum() < 4:
            raise ModelDomainError(f"{self.name} needs at least 4 training rows, got {ok.sum()}")
        w = None if weight is None else np.asarray(weight, dtype=np.float64)[ok]
        # one OpenMP thread: the training sets are plots (hundreds of rows), where the
        # gradient boosting's threads cost far more than they save; on a busy 2-core
        # machine 28 times the CPU (benchmarks/bench_model_fit.py)
        with threadpool_limits(limits=1, user_api="openmp"):
            self.estimator.fit(m[ok], y[ok], sample_weight=w)
        return self

    def predict(self, x: pd.DataFrame) -> FloatArray:
        m = _matrix(x, self.features)
        out = np.full(len(m), np.nan)
        ok = np.isfinite(m).all(axis=1)
        if ok.any():
            out[ok] = self.estimator.predict(m[ok])
        return out

    def describe(self) -> dict[str, Any]:
        return {"estimator": type(self.estimator).__name__, **self.hyper_parameters}


@dataclass
class LogLinearRidge:
    """``log(1 + AGB) = b0 + b . z`` with ``z`` the standardised predictors, ridge
    penalty ``alpha``, back-transformed with Duan's (1983) smearing factor.

    Rows with a missing predictor are left out of the fit and predict NaN. At prediction
    the predictors are clipped to the range they had in the fit.
    """

    features: tuple[str, ...]
    alpha: float = 1.0
    name: str = "log_linear"
    scaler_: StandardScaler | None = None
    ridge_: Ridge | None = None
    lower_: FloatArray | None = None
    upper_: FloatArray | None = None
    smearing_: float = math.nan
    n_fit_: int = 0

    def fit(
        self, x: pd.DataFrame, agb_mg_ha: FloatArray, weight: FloatArray | None = None
    ) -> LogLinearRidge:
        m, y, w = _fit_arrays(x, self.features, agb_mg_ha, weight)
        ok = np.isfinite(m).all(axis=1) & np.isfinite(y) & (y >= 0)
        n = int(ok.sum())
        if n <= 2:
            raise ModelDomainError(
                f"log-linear model needs at least 3 training rows with every predictor and a "
                f"non-negative AGB; got {n}"
            )
        m, t, w = m[ok], np.log1p(y[ok]), w[ok]
        self.scaler_ = StandardScaler().fit(m, sample_weight=w)
        z = self.scaler_.transform(m)
        self.ridge_ = Ridge(alpha=self.alpha).fit(z, t, sample_weight=w)
        resid = t - self.ridge_.predict(z)
        self.smearing_ = float(np.average(np.exp(resid), weights=w))
        self.lower_, self.upper_ = m.min(axis=0), m.max(axis=0)
        self.n_fit_ = n
        return self

    def predict(self, x: pd.DataFrame) -> FloatArray:
        if self.ridge_ is None or self.scaler_ is None:
            raise ModelDomainError("log-linear model used before fit()")
        m = _matrix(x, self.features)
        out = np.full(len(m), np.nan)
        ok = np.isfinite(m).all(axis=1)
        if ok.any():
            z = self.scaler_.transform(np.clip(m[ok], self.lower_, self.upper_))
            # Duan's smearing of the mean of 1 + AGB, then back to AGB (never below zero)
            out[ok] = np.maximum(np.exp(self.ridge_.predict(z)) * self.smearing_ - 1.0, 0.0)
        return out

    def describe(self) -> dict[str, Any]:
        coef = [] if self.ridge_ is None else [float(c) for c in self.ridge_.coef_]
        return {
            "form": "log(1 + AGB) = b0 + sum_j b_j * (x_j - mean_j) / sd_j, ridge penalty",
            "alpha": self.alpha,
            "intercept": None if self.ridge_ is None else float(self.ridge_.intercept_),
            "coefficients": dict(zip(self.features, coef, strict=False)),
            "smearing_factor": self.smearing_,
            "smearing_ref": "Duan 1983 doi:10.1080/01621459.1983.10478017",
            "predictors_clipped_to_training_range": True,
            "n_fit": self.n_fit_,
        }


@dataclass(frozen=True)
class ModelSettings:
    """Hyper-parameters and validation settings (mirrors ``ModelParams`` of the config)."""

    candidates: tuple[CandidateName, ...] = ("powerlaw", "random_forest", "gradient_boosting")
    cv_block_m: float = 1000.0
    cv_folds: int = 5
    interval: float = 0.9
    powerlaw_height: str = "h_mean"
    powerlaw_cover: str = "cover_2m"
    rf_n_estimators: int = 300
    rf_min_samples_leaf: int = 3
    gb_max_iter: int = 200
    gb_learning_rate: float = 0.05
    gb_min_samples_leaf: int = 5
    ridge_alpha: float = 1.0


def make_model(
    name: CandidateName, features: Sequence[str], *, settings: ModelSettings, seed: int
) -> BiomassModel:
    """A fresh, unfitted candidate model."""
    if name == "powerlaw":
        return PowerLawABA(height=settings.powerlaw_height, cover=settings.powerlaw_cover)
    if name == "random_forest":
        hp = {
            "n_estimators": settings.rf_n_estimators,
            "min_samples_leaf": settings.rf_min_samples_leaf,
            "max_features": 1.0 / 3.0,
        }
        est = RandomForestRegressor(**hp, random_state=seed, n_jobs=1)
        return SklearnModel(name, tuple(features), est, {**hp, "random_state": seed})
    if name == "gradient_boosting":
        hp = {
            "max_iter": settings.gb_max_iter,
            "learning_rate": settings.gb_learning_rate,
            "min_samples_leaf": settings.gb_min_samples_leaf,
            "max_depth": 3,
            "early_stopping": False,
        }
        est = HistGradientBoostingRegressor(**hp, random_state=seed)
        return SklearnModel(name, tuple(features), est, {**hp, "random_state": seed})
    if name == "log_linear":
        return LogLinearRidge(tuple(features), alpha=settings.ridge_alpha)
    raise ModelDomainError(f"unknown model candidate {name!r}")


def candidate_applicable(
    name: CandidateName, features: Sequence[str], settings: ModelSettings
) -> bool:
    """Whether a candidate can use this feature set (power law needs height and cover)."""
    if name == "powerlaw":
        return settings.powerlaw_height in features and settings.powerlaw_cover in features
    return len(features) > 0
