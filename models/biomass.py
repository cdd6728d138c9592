"""Statistical biomass models: area-based LiDAR, satellite, spatial validation, uncertainty.

The science
-----------
Field plots give above-ground biomass (AGB, Mg/ha) at a few dozen places; remote sensing
gives predictors everywhere. This module fits the link between them behind one small
interface (:class:`BiomassModel`: ``fit`` / ``predict`` / ``describe``) with four
candidates:

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

Validation: plots are spatially autocorrelated, so a random K-fold split puts near
neighbours of every test plot into its training set and underestimates the error of
wall-to-wall prediction (Roberts et al. 2017, doi:10.1111/ecog.02881; Ploton et al. 2020,
doi:10.1038/s41467-020-18321-y). Candidates are therefore compared and selected by
*spatially blocked* cross-validation: plots are grouped into square blocks of side
``cv_block_m`` and whole blocks are held out. The random-split figures are computed too
and recorded next to them, to show the difference.

Uncertainty: normalised split-conformal prediction (Lei et al. 2018,
doi:10.1080/01621459.2017.1307116; Papadopoulos et al. 2011 for the normalised score)
calibrated on the out-of-fold residuals of the *spatial* cross-validation. Why this and
not a bootstrap ensemble: bootstrap and quantile-forest spreads measure the variance of
the fit around the training plots, not the error of prediction far from them, and are
known to under-cover under spatial autocorrelation (Ploton et al. 2020); conformal
intervals calibrated on held-out spatial blocks carry the error the map really makes
away from plots, with a finite-sample coverage guarantee for exchangeable blocks. Biomass
errors grow with biomass, so scores are normalised by a local difficulty
``sigma(pred) = s0 + s1 * pred`` fitted to the absolute out-of-fold residuals. The
per-pixel SD is ``k * sigma`` with ``k`` the root mean square of the normalised scores;
the interval is ``pred + [q_lo, q_hi] * sigma`` with the conformal quantiles of the
signed normalised scores (asymmetric if the residuals are), clipped at zero.

LiDAR-assisted upscaling (two-phase, "hybrid" inference; Saarela et al. 2016,
doi:10.1186/s13021-016-0054-5): where LiDAR covers only part of the area of interest,
the plot->LiDAR model maps AGB over the LiDAR block, and a spatially thinned sample of that
map can train the satellite-only model that predicts everywhere. A sample of a model's map
is not an observation, and a LiDAR block is rarely representative of a whole region (an
optical signal that saturates at high biomass maps to the block's own mean there), so the
satellite model is always *validated at the field plots*: the LiDAR sample is an
:class:`Auxiliary` training set, used to fit and never to score. Its spatial blocks share
the plots' folds, so a held-out plot has neither its own block's plots nor its block's
LiDAR cells in the training data. Scored this way, the training sources ``plots``,
``lidar_upscaled`` and ``plots+lidar_upscaled`` are compared like candidates (the model
stage picks the best unless configured), and the conformal calibration on the held-out
plots carries both models' errors (the LiDAR model's error is inside the sample's
targets) into the satellite model's uncertainty, measured against field data rather than
chained from assumptions. One leak remains: the LiDAR model itself was fitted on the
LiDAR-epoch plots inside the cover, held-out ones included, which makes the
``lidar_upscaled`` scores slightly optimistic.

Support: plot predictors are area-weighted means over a plot square, so the models
describe AGB at plot support; maps apply them to plot-sized moving-window means of the
predictors (``pipeline.features.focal_mean``), and per-pixel SDs and intervals refer to
that support.

Everything is seeded with ``numpy.random.default_rng(seed)`` / ``random_state=seed``:
the same inputs give the same predictions bit for bit. This module imports nothing from
``pipeline/``; the ``model`` stage (``forest-carbon fit``) drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

FloatArray = NDArray[np.float64]
CandidateName = Literal["powerlaw", "random_forest", "gradient_boosting", "log_linear"]


class ModelDomainError(ValueError):
    """Training data do not allow a model or a validation scheme (too few plots, blocks...)."""


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


# --------------------------------------------------------------------------- validation


def block_keys(x_m: FloatArray, y_m: FloatArray, *, block_m: float) -> NDArray[np.int64]:
    """(column, row) of the square block (side ``block_m`` metres) of each point, ``(n, 2)``."""
    bx = np.floor(np.asarray(x_m) / block_m).astype(np.int64)
    by = np.floor(np.asarray(y_m) / block_m).astype(np.int64)
    return np.column_stack([bx, by])


def spatial_block_ids(x_m: FloatArray, y_m: FloatArray, *, block_m: float) -> NDArray[np.int64]:
    """Id of the square block (side ``block_m`` metres) each point falls in."""
    _, ids = np.unique(block_keys(x_m, y_m, block_m=block_m), axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def blocked_folds(
    x_m: FloatArray, y_m: FloatArray, *, block_m: float, n_folds: int, seed: int
) -> NDArray[np.int64]:
    """Fold index per point; whole spatial blocks go to one fold, folds balanced by count.

    Blocks are visited in a seeded random order and each is given to the fold with the
    fewest points so far. With fewer blocks than ``n_folds``, each block is its own fold.
    """
    blocks = spatial_block_ids(x_m, y_m, block_m=block_m)
    n_blocks = int(blocks.max()) + 1 if blocks.size else 0
    if n_blocks < 2:
        raise ModelDomainError(
            f"all {blocks.size} points fall in one {block_m:g} m block: spatial cross-validation "
            "needs at least 2 blocks; lower model.cv_block_m"
        )
    rng = np.random.default_rng(seed)
    counts = np.bincount(blocks, minlength=n_blocks)
    k = min(n_folds, n_blocks)
    fold_of_block = np.empty(n_blocks, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for b in rng.permutation(n_blocks):
        f = int(np.argmin(load))
        fold_of_block[b] = f
        load[f] += counts[b]
    return fold_of_block[blocks]


def random_folds(n: int, *, n_folds: int, seed: int) -> NDArray[np.int64]:
    """Fold index per point for a naive random K-fold split."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(n) % min(n_folds, n)).astype(np.int64)


@dataclass(frozen=True)
class Auxiliary:
    """Training samples that are not observations (e.g. a thinned sample of a LiDAR-model
    map): used to fit, never to score or calibrate.

    ``share`` is the share of the total training weight they carry next to the plots
    (1: they alone train the model, the plots only score it).
    """

    table: pd.DataFrame
    agb_mg_ha: FloatArray
    x_m: FloatArray
    y_m: FloatArray
    share: float

    def folds(
        self, x_m: FloatArray, y_m: FloatArray, folds: NDArray[np.int64], *, block_m: float
    ) -> NDArray[np.int64]:
        """Fold of each sample: the fold of the plots in its spatial block, or -1 (never
        held out) in blocks without plots. ``x_m, y_m, folds`` are the plots'."""
        plots = map(tuple, block_keys(x_m, y_m, block_m=block_m).tolist())
        fold_of_block = dict(zip(plots, folds.tolist(), strict=True))
        mine = block_keys(self.x_m, self.y_m, block_m=block_m).tolist()
        return np.array([fold_of_block.get(tuple(k), -1) for k in mine], dtype=np.int64)


def training_set(
    x: pd.DataFrame,
    agb_mg_ha: FloatArray,
    plots: NDArray[np.bool_],
    auxiliary: Auxiliary | None,
    aux_rows: NDArray[np.bool_] | None,
) -> tuple[pd.DataFrame, FloatArray, FloatArray | None]:
    """Rows of the plots (mask ``plots``) and of the auxiliary samples (``aux_rows``) with
    weights giving the auxiliary samples their ``share`` of the total weight."""
    if auxiliary is None or aux_rows is None or not aux_rows.any():
        return x.loc[plots], agb_mg_ha[plots], None
    n_p, n_a = int(plots.sum()), int(aux_rows.sum())
    share = auxiliary.share if n_p else 1.0
    if share >= 1.0:
        return auxiliary.table.loc[aux_rows], auxiliary.agb_mg_ha[aux_rows], None
    table = pd.concat([x.loc[plots], auxiliary.table.loc[aux_rows]], ignore_index=True)
    y = np.concatenate([agb_mg_ha[plots], auxiliary.agb_mg_ha[aux_rows]])
    # plots weigh 1 each; the auxiliary samples together weigh share / (1 - share) of that
    w_aux = n_p * share / ((1.0 - share) * n_a)
    return table, y, np.concatenate([np.ones(n_p), np.full(n_a, w_aux)])


def out_of_fold(
    factory: Callable[[], BiomassModel],
    x: pd.DataFrame,
    agb_mg_ha: FloatArray,
    folds: NDArray[np.int64],
    auxiliary: Auxiliary | None = None,
    aux_folds: NDArray[np.int64] | None = None,
) -> FloatArray:
    """Out-of-fold predictions at the plots: each fold predicted by a model fitted on the
    other folds' plots and auxiliary samples (see :class:`Auxiliary`)."""
    pred = np.full(len(x), np.nan)
    for f in np.unique(folds):
        test = folds == f
        aux_rows = None if aux_folds is None else aux_folds != f
        tx, ty, tw = training_set(x, agb_mg_ha, ~test, auxiliary, aux_rows)
        model = factory().fit(tx, ty, tw)
        pred[test] = model.predict(x.loc[test])
    return pred


def accuracy(obs_mg_ha: FloatArray, pred_mg_ha: FloatArray) -> dict[str, float]:
    """RMSE (Mg/ha), relative RMSE (of the observed mean), bias (pred - obs) and R2."""
    ok = np.isfinite(obs_mg_ha) & np.isfinite(pred_mg_ha)
    o, p = obs_mg_ha[ok], pred_mg_ha[ok]
    if o.size == 0:
        return {
            "rmse_mg_ha": math.nan,
            "rel_rmse": math.nan,
            "bias_mg_ha": math.nan,
            "r2": math.nan,
            "n": 0,
        }
    err = p - o
    rmse = float(np.sqrt(np.mean(err**2)))
    ss_tot = float(np.sum((o - o.mean()) ** 2))
    return {
        "rmse_mg_ha": rmse,
        "rel_rmse": rmse / float(o.mean()) if o.mean() != 0 else math.nan,
        "bias_mg_ha": float(err.mean()),
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan,
        "n": int(o.size),
    }


# -------------------------------------------------------------------------- uncertainty


@dataclass(frozen=True)
class Prediction:
    """Per-sample prediction with uncertainty (all Mg/ha)."""

    mean: FloatArray
    sd: FloatArray
    lower: FloatArray
    upper: FloatArray


@dataclass(frozen=True)
class ConformalCalibration:
    """Normalised split-conformal calibration from out-of-fold residuals.

    ``sigma(pred) = max(s0 + s1 * pred, sigma_floor)``; SD ``= k_sd * sigma``; interval
    ``pred + [q_lo, q_hi] * sigma``.
    """

    s0: float
    s1: float
    sigma_floor: float
    k_sd: float
    q_lo: float
    q_hi: float
    interval: float
    n: int

    def sigma(self, pred_mg_ha: FloatArray) -> FloatArray:
        return np.maximum(self.s0 + self.s1 * np.clip(pred_mg_ha, 0.0, None), self.sigma_floor)

    def apply(self, pred_mg_ha: FloatArray) -> Prediction:
        s = self.sigma(pred_mg_ha)
        lower = np.clip(pred_mg_ha + self.q_lo * s, 0.0, None)
        return Prediction(pred_mg_ha, self.k_sd * s, lower, pred_mg_ha + self.q_hi * s)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "normalised split-conformal on spatial-CV out-of-fold residuals",
            "difficulty": "sigma = max(s0 + s1 * pred, sigma_floor)",
            "s0_mg_ha": self.s0,
            "s1": self.s1,
            "sigma_floor_mg_ha": self.sigma_floor,
            "k_sd": self.k_sd,
            "q_lo": self.q_lo,
            "q_hi": self.q_hi,
            "interval": self.interval,
            "n_calibration": self.n,
        }


def calibration_record(
    obs_mg_ha: FloatArray, oof_pred_mg_ha: FloatArray, *, interval: float
) -> tuple[ConformalCalibration, dict[str, Any]]:
    """:func:`calibrate_conformal` and its model-card record, with the coverage its
    intervals reach on the held-out predictions it was fitted on."""
    cal = calibrate_conformal(obs_mg_ha, oof_pred_mg_ha, interval=interval)
    cover = cal.apply(oof_pred_mg_ha)
    inside = (obs_mg_ha >= cover.lower) & (obs_mg_ha <= cover.upper)
    return cal, {**cal.describe(), "oof_coverage": float(np.mean(inside))}


def _conformal_quantile(scores: FloatArray, level: float) -> float:
    """Finite-sample conformal quantile: the ceil((n+1) level)-th smallest score."""
    s = np.sort(scores)
    n = s.size
    k = math.ceil((n + 1) * level)
    return float(s[min(max(k, 1), n) - 1])


def calibrate_conformal(
    obs_mg_ha: FloatArray,
    oof_pred_mg_ha: FloatArray,
    *,
    interval: float,
    min_sigma_fraction: float = 0.1,
) -> ConformalCalibration:
    """Fit the difficulty model and conformal quantiles from out-of-fold predictions.

    Parameters
    ----------
    obs_mg_ha, oof_pred_mg_ha
        Observed values and their out-of-fold (held-out) predictions.
    interval
        Nominal coverage of the two-sided interval (e.g. 0.9).
    min_sigma_fraction
        Floor of the difficulty as a fraction of the mean absolute residual, so that a
        fitted negative intercept cannot produce zero-width intervals.
    """
    ok = np.isfinite(obs_mg_ha) & np.isfinite(oof_pred_mg_ha)
    o, p = obs_mg_ha[ok], np.clip(oof_pred_mg_ha[ok], 0.0, None)
    if o.size < 10:
        raise ModelDomainError(
            f"uncertainty calibration needs at least 10 held-out predictions, got {o.size}"
        )
    r = o - p
    abs_r = np.abs(r)
    design = np.column_stack([np.ones_like(p), p])
    (s0, s1), *_ = np.linalg.lstsq(design, abs_r, rcond=None)
    floor = min_sigma_fraction * float(abs_r.mean()) if abs_r.mean() > 0 else 1e-9
    cal = ConformalCalibration(float(s0), float(s1), floor, 1.0, 0.0, 0.0, interval, int(o.size))
    z = r / cal.sigma(p)
    alpha = 1.0 - interval
    return ConformalCalibration(
        s0=float(s0),
        s1=float(s1),
        sigma_floor=floor,
        k_sd=float(np.sqrt(np.mean(z**2))),
        q_lo=-_conformal_quantile(-z, 1.0 - alpha / 2.0),
        q_hi=_conformal_quantile(z, 1.0 - alpha / 2.0),
        interval=interval,
        n=int(o.size),
    )


@dataclass(frozen=True)
class CellSupport:
    """Change of support from the maps' plot-sized window to one grid cell.

    The maps estimate, at each cell, the AGB of the plot-sized window centred on it: the
    support the models were fitted and calibrated at (:func:`pipeline.features.focal_mean`).
    A single cell's AGB departs from its window's by the stand's variation inside the
    window (single crowns and gaps), which a window-support model cannot predict, so a
    cell's SD and interval must add it (the change-of-support problem of geostatistics,
    Gotway & Young 2002, doi:10.1198/016214502760047140). The departure is described by
    the relative deviation ``r = (cell - window) / window`` of a cell-support AGB field,
    per bin of window AGB (:func:`cell_support`), and is taken independent of the window
    estimate's error: variances add, and each side's interval half-width adds in
    quadrature with ``|q| * AGB`` (normal approximation of the convolution).

    Attributes
    ----------
    edges
        Interior bin edges of the window AGB (Mg/ha); bin ``k`` holds ``rms[k]`` etc.
    rms, q_lo, q_hi
        Root mean square and the ``(1 - interval) / 2`` and ``(1 + interval) / 2``
        quantiles of ``r`` in each bin.
    """

    edges: tuple[float, ...]
    rms: tuple[float, ...]
    q_lo: tuple[float, ...]
    q_hi: tuple[float, ...]
    interval: float
    n_cells: int
    reference: str

    def widen(self, pred: Prediction) -> Prediction:
        """The prediction of one cell from that of its window (same mean)."""
        m = pred.mean
        k = np.digitize(np.nan_to_num(m), np.asarray(self.edges))
        rms, q_lo, q_hi = (np.asarray(v)[k] for v in (self.rms, self.q_lo, self.q_hi))
        lower = np.clip(m - np.hypot(m - pred.lower, q_lo * m), 0.0, None)
        upper = m + np.hypot(pred.upper - m, q_hi * m)
        return Prediction(m, np.hypot(pred.sd, rms * m), lower, upper)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "relative deviation of a cell-support AGB field from its plot-sized "
            "window mean, per bin of window AGB; added to the window estimate's error "
            "as independent",
            "reference_field": self.reference,
            "window_agb_bin_edges_mg_ha": list(self.edges),
            "rms_relative": list(self.rms),
            "q_lo_relative": list(self.q_lo),
            "q_hi_relative": list(self.q_hi),
            "interval": self.interval,
            "n_cells": self.n_cells,
        }


def cell_support(
    cell_mg_ha: FloatArray,
    window_mg_ha: FloatArray,
    *,
    interval: float,
    n_bins: int,
    reference: str,
    min_cells_per_bin: int = 30,
) -> CellSupport:
    """Fit :class:`CellSupport` from a cell-support AGB field and its window means.

    ``cell_mg_ha`` and ``window_mg_ha`` are the field at each cell and its moving-window
    mean over the maps' support (cells whose window is not wholly inside the field
    should be NaN); ``reference`` names the field for the model card. Bins are
    quantiles of the window AGB, so each holds as many cells.
    """
    c = np.asarray(cell_mg_ha, dtype=np.float64).ravel()
    w = np.asarray(window_mg_ha, dtype=np.float64).ravel()
    ok = np.isfinite(c) & np.isfinite(w) & (w > 0)
    n = int(ok.sum())
    if n < n_bins * min_cells_per_bin:
        raise ModelDomainError(
            f"cell-support deviations need at least {n_bins * min_cells_per_bin} cells with "
            f"a whole window of positive AGB ({n_bins} bins), got {n}"
        )
    w, r = w[ok], (c[ok] - w[ok]) / w[ok]
    edges = np.unique(np.quantile(w, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    k = np.digitize(w, edges)
    alpha = 1.0 - interval
    groups = [r[k == i] for i in range(edges.size + 1)]
    return CellSupport(
        edges=tuple(float(e) for e in edges),
        rms=tuple(float(np.sqrt(np.mean(g**2))) for g in groups),
        q_lo=tuple(float(np.quantile(g, alpha / 2.0)) for g in groups),
        q_hi=tuple(float(np.quantile(g, 1.0 - alpha / 2.0)) for g in groups),
        interval=interval,
        n_cells=n,
        reference=reference,
    )


# ------------------------------------------------------------------------ fit and select


@dataclass
class FittedModel:
    """A selected model fitted on all data, with its calibration and validation record."""

    model: BiomassModel
    calibration: ConformalCalibration
    card: dict[str, Any]

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features

    def predict(self, x: pd.DataFrame) -> Prediction:
        mean = self.model.predict(x)
        return self.calibration.apply(mean)


def select_and_fit(
    x: pd.DataFrame,
    agb_mg_ha: FloatArray,
    *,
    x_m: FloatArray,
    y_m: FloatArray,
    features: Sequence[str],
    settings: ModelSettings,
    seed: int,
    auxiliary: Auxiliary | None = None,
) -> FittedModel:
    """Compare candidates by spatially blocked CV, fit the best on all data, calibrate.

    Parameters
    ----------
    x
        Feature table, one row per training sample.
    agb_mg_ha
        Target AGB (Mg/ha) per row.
    x_m, y_m
        Sample coordinates in a projected CRS (metres), for the spatial blocks.
    features
        Predictor columns.
    settings
        Candidates, CV and hyper-parameters.
    seed
        Seed of the fold assignment and the estimators.
    auxiliary
        Extra training samples that are never scored (see :class:`Auxiliary`); the rows
        of ``x`` are then the scoring plots, and train only if ``auxiliary.share < 1``.

    Returns
    -------
    FittedModel
        ``card`` holds, per candidate, blocked-CV accuracy (and for the chosen one the
        random-split accuracy too), the chosen model, its hyper-parameters and its
        calibration.
    """
    y = np.asarray(agb_mg_ha, dtype=np.float64)
    folds_b = blocked_folds(
        x_m, y_m, block_m=settings.cv_block_m, n_folds=settings.cv_folds, seed=seed
    )
    folds_r = random_folds(len(y), n_folds=settings.cv_folds, seed=seed)
    aux_b = aux_r = None
    if auxiliary is not None:
        aux_b = auxiliary.folds(x_m, y_m, folds_b, block_m=settings.cv_block_m)
        aux_r = np.full(len(auxiliary.agb_mg_ha), -1, dtype=np.int64)  # random split: all
    results: dict[str, Any] = {}
    oof: dict[CandidateName, FloatArray] = {}
    for name in settings.candidates:
        if not candidate_applicable(name, features, settings):
            results[name] = {"skipped": "needs LiDAR height and cover features"}
            continue

        def factory(name: CandidateName = name) -> BiomassModel:
            return make_model(name, features, settings=settings, seed=seed)

        try:
            pred_b = out_of_fold(factory, x, y, folds_b, auxiliary, aux_b)
        except ModelDomainError as err:
            results[name] = {"skipped": str(err)}
            continue
        oof[name] = pred_b
        results[name] = {"spatial_cv": accuracy(y, pred_b)}
    if not oof:
        raise ModelDomainError(
            f"no model candidate could be fitted ({results}); check the training data"
        )
    chosen: CandidateName = min(oof, key=lambda n: results[n]["spatial_cv"]["rmse_mg_ha"])
    # the random split, for the chosen candidate: what an unblocked CV would have claimed
    results[chosen]["random_cv"] = accuracy(
        y,
        out_of_fold(
            lambda: make_model(chosen, features, settings=settings, seed=seed),
            x,
            y,
            folds_r,
            auxiliary,
            aux_r,
        ),
    )
    every = np.ones(len(y), dtype=bool)
    all_aux = None if auxiliary is None else np.ones(len(auxiliary.agb_mg_ha), dtype=bool)
    model = make_model(chosen, features, settings=settings, seed=seed).fit(
        *training_set(x, y, every, auxiliary, all_aux)
    )
    cal, uncertainty = calibration_record(y, oof[chosen], interval=settings.interval)
    card = {
        "features": list(model.features),
        "n_samples": len(y),
        "n_auxiliary": 0 if auxiliary is None else len(auxiliary.agb_mg_ha),
        "auxiliary_share": None if auxiliary is None else auxiliary.share,
        "cv": {
            "block_m": settings.cv_block_m,
            "n_folds_spatial": int(folds_b.max()) + 1,
            "n_blocks": int(spatial_block_ids(x_m, y_m, block_m=settings.cv_block_m).max()) + 1,
            "n_folds_random": int(folds_r.max()) + 1,
        },
        "candidates": results,
        "chosen": chosen,
        "model": model.describe(),
        "uncertainty": uncertainty,
        # held-out (spatial CV) predictions of the chosen model, for diagnostics plots
        "cv_predictions": [
            {"observed": float(o), "predicted": float(q), "x": float(a), "y": float(b)}
            for o, q, a, b in zip(y, oof[chosen], x_m, y_m, strict=True)
        ],
    }
    return FittedModel(model, cal, card)


@dataclass(frozen=True)
class EpochCorrection:
    """Additive bias correction of one epoch's map (Mg/ha) with its standard error."""

    offset_mg_ha: float
    se_mg_ha: float
    n: int


def epoch_corrections(
    obs_mg_ha: FloatArray, oof_pred_mg_ha: FloatArray, epochs: Sequence[str]
) -> dict[str, EpochCorrection]:
    """Per-epoch mean of the held-out residuals at the plots: the map's bias at that epoch.

    One model maps every epoch, but each epoch's composite differs (dates, phenology,
    sensors), so the model's bias differs by epoch, and the sink, a difference of two
    maps, inherits the difference of the biases in full. The plots measured at each epoch
    estimate it: the mean residual ``obs - pred`` of the epoch's plots is the correction
    term of the model-assisted (generalised regression, GREG) estimator of the mean
    (Särndal, Swensson & Wretman 1992, *Model Assisted Survey Sampling*, Springer,
    ch. 6), with standard error ``sd / sqrt(n)``. Held-out (spatial CV) predictions are
    used so that a flexible model's in-sample fit does not hide its bias.
    """
    ep = np.asarray(epochs, dtype=object)
    out: dict[str, EpochCorrection] = {}
    for e in dict.fromkeys(ep.tolist()):
        m = (ep == e) & np.isfinite(obs_mg_ha) & np.isfinite(oof_pred_mg_ha)
        r = obs_mg_ha[m] - oof_pred_mg_ha[m]
        if r.size >= 2:
            out[str(e)] = EpochCorrection(
                float(r.mean()), float(r.std(ddof=1) / math.sqrt(r.size)), int(r.size)
            )
    return out


def epoch_error_correlation(
    obs_mg_ha: FloatArray,
    oof_pred_mg_ha: FloatArray,
    *,
    epochs: Sequence[str],
    plot_ids: Sequence[str],
    first: str,
    second: str,
) -> tuple[float, int]:
    """Correlation of the two epochs' map errors, from plots measured at both epochs.

    The errors of one model at one place are alike at two epochs (same stand structure,
    same terrain, similar spectra), which makes the error of a difference of the maps
    smaller than that of either map. The sink SD is ``Var(e2 - e1) = s1^2 + s2^2 - 2 rho
    s1 s2`` with ``s`` the maps' SDs, so ``rho`` is a correlation coefficient: the
    uncentred correlation ``sum(r1 r2) / sqrt(sum(r1^2) sum(r2^2))`` of the held-out
    residuals ``r`` over the plots re-measured at both epochs (uncentred because the
    errors of a bias-corrected map have mean zero).

    Why the raw residuals: each plot weighs by the size of its errors, as its pixels
    weigh in the SDs summed over a parcel; the correlation of the normalised residuals
    ``r / s`` lets plots with a small SD (young or felled stands) dominate through their
    amplified residuals. Why not ``sum(r1 r2) / sum(s1 s2)``: that ratio also carries how
    the calibrated SDs ``s`` scale against the residuals of these particular plots (their
    ``sum(r^2) / sum(s^2)`` need not be 1, since ``s`` is calibrated on every plot-epoch
    with a normalised score), so it confounds the SDs' scale with the correlation.
    Returns ``(rho, n_plots)``; ``rho`` is NaN with fewer than 10 re-measured plots.
    """
    t = pd.DataFrame(
        {"plot": list(plot_ids), "epoch": list(epochs), "r": obs_mg_ha - oof_pred_mg_ha}
    ).dropna()
    wide = t.pivot_table(index="plot", columns="epoch", values="r", aggfunc="mean")
    if first not in wide.columns or second not in wide.columns:
        return math.nan, 0
    both = wide[[first, second]].dropna()
    if len(both) < 10:
        return math.nan, len(both)
    r1, r2 = both[first].to_numpy(), both[second].to_numpy()
    norm = math.sqrt(float(np.sum(r1 * r1) * np.sum(r2 * r2)))
    if norm == 0.0:
        return math.nan, len(both)
    return float(np.sum(r1 * r2) / norm), len(both)


def thinned_sample(
    valid: NDArray[np.bool_],
    *,
    step_px: int,
    max_samples: int,
    seed: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Rows and columns of a systematic sample of ``valid`` cells (one per ``step_px``).

    A systematic grid with a seeded random origin thins the LiDAR map so that training
    samples for the satellite model are not all neighbours; beyond ``max_samples`` a
    seeded random subset is kept.
    """
    rng = np.random.default_rng(seed)
    oy, ox = (int(v) for v in rng.integers(0, step_px, size=2))
    rows, cols = np.meshgrid(
        np.arange(oy, valid.shape[0], step_px),
        np.arange(ox, valid.shape[1], step_px),
        indexing="ij",
    )
    r, c = rows.ravel(), cols.ravel()
    keep = valid[r, c]
    r, c = r[keep], c[keep]
    if r.size > max_samples:
        pick = np.sort(rng.choice(r.size, size=max_samples, replace=False))
        r, c = r[pick], c[pick]
    return r.astype(np.int64), c.astype(np.int64)


# ------------------------------------------------------------------------- mapping

#: codes of the ``model_source`` quality band
SOURCE_NONE = 0
SOURCE_LIDAR = 1
SOURCE_SATELLITE_UPSCALED = 2
SOURCE_SATELLITE_PLOTS = 3
SOURCE_SATELLITE_COMBINED = 4

#: the satellite model's training sources (see :class:`Auxiliary`), and their source codes
SatelliteSource = Literal["plots", "lidar_upscaled", "plots+lidar_upscaled"]
SATELLITE_SOURCE_CODES: dict[str, int] = {
    "lidar_upscaled": SOURCE_SATELLITE_UPSCALED,
    "plots": SOURCE_SATELLITE_PLOTS,
    "plots+lidar_upscaled": SOURCE_SATELLITE_COMBINED,
}


@dataclass
class BiomassMapper:
    """The fitted models of a run and the rule that picks one per pixel.

    Attributes
    ----------
    satellite
        Satellite(+terrain)-only model, predicts everywhere; its uncertainty is
        calibrated on held-out field plots whatever it was trained on.
    satellite_source
        What trained it: ``"plots"``, ``"lidar_upscaled"`` (a thinned sample of the
        LiDAR-model map) or ``"plots+lidar_upscaled"``.
    lidar
        Plot->LiDAR model, or ``None`` when there is no usable LiDAR.
    lidar_epoch
        Epoch the LiDAR was acquired in (the LiDAR model applies to it only).
    lidar_min_fraction
        Minimum LiDAR coverage fraction of a cell for the LiDAR model to be used there.
    cell_support
        Change of support from the plot-sized window to one cell (:class:`CellSupport`)
        for the per-cell uncertainty of the maps; ``None`` when it could not be estimated.
    epoch_offsets
        Additive per-epoch bias correction of the satellite model (Mg/ha, see
        :func:`epoch_corrections`), applied before its calibration; epochs not listed are
        not corrected.
    """

    satellite: FittedModel
    satellite_source: SatelliteSource
    lidar: FittedModel | None = None
    lidar_epoch: str | None = None
    lidar_min_fraction: float = 0.95
    epoch_offsets: dict[str, float] = field(default_factory=dict)
    cell_support: CellSupport | None = None

    def predict(self, table: pd.DataFrame, *, epoch: str) -> tuple[Prediction, NDArray[np.uint8]]:
        """AGB with uncertainty (Mg/ha) and the ``model_source`` code per row of ``table``.

        ``table`` holds the satellite features, and where LiDAR exists the LiDAR features
        and ``lidar_fraction``. Rows with missing predictors of the chosen model are NaN.
        """
        # the epoch's bias correction first, then the calibration (which the model stage
        # fits on the corrected held-out predictions)
        shift = self.epoch_offsets.get(epoch, 0.0)
        mean = np.clip(self.satellite.model.predict(table) + shift, 0.0, None)
        sat = self.satellite.calibration.apply(mean)
        n = len(table)
        code = SATELLITE_SOURCE_CODES[self.satellite_source]
        source = np.where(np.isfinite(sat.mean), code, SOURCE_NONE).astype(np.uint8)
        mean, sd, lower, upper = (a.copy() for a in (sat.mean, sat.sd, sat.lower, sat.upper))
        if (
            self.lidar is not None
            and epoch == self.lidar_epoch
            and "lidar_fraction" in table.columns
            and set(self.lidar.features) <= set(table.columns)
        ):
            frac = table["lidar_fraction"].to_numpy(dtype=np.float64)
            use = np.nan_to_num(frac) >= self.lidar_min_fraction
            if use.any():
                lid = self.lidar.predict(table.loc[use])
                ok = np.isfinite(lid.mean)
                idx = np.flatnonzero(use)[ok]
                mean[idx], sd[idx] = lid.mean[ok], lid.sd[ok]
                lower[idx], upper[idx] = lid.lower[ok], lid.upper[ok]
                source[idx] = SOURCE_LIDAR
        if n == 0:
            source = np.zeros(0, dtype=np.uint8)
        return Prediction(mean, sd, lower, upper), source
