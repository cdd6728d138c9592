"""Per-pixel uncertainty of the biomass maps: conformal calibration and change of support.

Normalised split-conformal prediction (Lei et al. 2018, doi:10.1080/01621459.2017.1307116;
Papadopoulos et al. 2011 for the normalised score) calibrated on the out-of-fold
residuals of the *spatial* cross-validation and, where the run has them, on the final
map's residuals at plots that trained no model (a carbon project's monitoring sample:
:func:`calibration_record`). Those sample the project area only, and outnumber the
training plots several-fold, so the pooled calibration describes mostly the project
area's errors; without them it describes the training plots' region. Why this and not a
bootstrap ensemble: bootstrap and quantile-forest spreads measure the variance of the fit
around the training plots, not the error of prediction far from them, and under-cover
under spatial autocorrelation (Ploton et al. 2020, doi:10.1038/s41467-020-18321-y);
conformal intervals calibrated on held-out spatial blocks carry the error the map really
makes away from plots, with a finite-sample coverage guarantee for exchangeable blocks.
Biomass errors grow with biomass, so scores are normalised by a local difficulty
``sigma(pred) = s0 + s1 * pred`` fitted to the absolute out-of-fold residuals. The
per-pixel SD is ``k * sigma`` with ``k`` the root mean square of the normalised scores;
the interval is ``pred + [q_lo, q_hi] * sigma`` with the conformal quantiles of the
signed normalised scores (asymmetric if the residuals are), clipped at zero.

``k``, ``q_lo`` and ``q_hi`` are taken per bin of the prediction (Mondrian conformal
prediction: Vovk, Gammerman & Shafer 2005, *Algorithmic Learning in a Random World*,
Springer, §4.5; for regression with normalised scores, Boström & Johansson 2020, PMLR
128:114-133). A conformal interval covers at its nominal rate on average over the
population its scores come from; a one-line difficulty model does not make the
normalised scores alike at every AGB (measured on a simulated region: the held-out scores
of predictions below 50 Mg/ha have a mean square 2 to 6 times that of the higher bins,
``docs/parcel_uncertainty.md``), so one set of
quantiles under-covers low-AGB cells and over-covers the rest, and a map whose share of
low-AGB cells differs from the plots' inherits the mix. Per bin of the prediction, which
every cell has, the coverage holds within each bin, whatever the map's mix of bins.
Bins are quantiles of the held-out predictions, as many as keep in each at least the
fewest scores for which each conformal tail quantile is not the bin's most extreme
score (:func:`min_scores_per_bin`; 39 for a 90 % interval): that follows from the
interval, not from the data.

Support: plot predictors are area-weighted means over a plot square, so the models
describe AGB at plot support; maps apply them to plot-sized moving-window means of the
predictors, and per-pixel SDs and intervals refer to that support. :class:`CellSupport`
widens them to a single cell (the change-of-support problem, Gotway & Young 2002,
doi:10.1198/016214502760047140); :func:`granularity_cell_support` estimates it from the
field plots' stem granularity. Thresholds: ``models/data/model_rules.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from models.datafiles import data_yaml
from models.errors import ModelDomainError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    """Per-sample prediction with uncertainty (all Mg/ha)."""

    mean: FloatArray
    sd: FloatArray
    lower: FloatArray
    upper: FloatArray


@dataclass(frozen=True)
class ConformalCalibration:
    """Normalised split-conformal calibration from out-of-fold residuals, per bin of the
    prediction (Mondrian).

    ``sigma(pred) = max(s0 + s1 * pred, sigma_floor)``; in the bin ``b`` of ``pred`` (bin
    ``b`` holds ``edges[b - 1] <= pred < edges[b]``), SD ``= k_sd[b] * sigma`` and
    interval ``pred + [q_lo[b], q_hi[b]] * sigma``. No ``edges``: one bin.
    """

    s0: float
    s1: float
    sigma_floor: float
    k_sd: tuple[float, ...]
    q_lo: tuple[float, ...]
    q_hi: tuple[float, ...]
    interval: float
    n: int
    edges: tuple[float, ...] = ()
    n_per_bin: tuple[int, ...] = ()

    def sigma(self, pred_mg_ha: FloatArray) -> FloatArray:
        return np.maximum(self.s0 + self.s1 * np.clip(pred_mg_ha, 0.0, None), self.sigma_floor)

    def apply(self, pred_mg_ha: FloatArray) -> Prediction:
        s = self.sigma(pred_mg_ha)
        b = np.digitize(np.nan_to_num(pred_mg_ha), np.asarray(self.edges))
        k_sd, q_lo, q_hi = (np.asarray(v)[b] for v in (self.k_sd, self.q_lo, self.q_hi))
        lower = np.clip(pred_mg_ha + q_lo * s, 0.0, None)
        return Prediction(pred_mg_ha, k_sd * s, lower, pred_mg_ha + q_hi * s)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "normalised split-conformal on spatial-CV out-of-fold residuals, "
            "per bin of the prediction (Mondrian)",
            "difficulty": "sigma = max(s0 + s1 * pred, sigma_floor)",
            "s0_mg_ha": self.s0,
            "s1": self.s1,
            "sigma_floor_mg_ha": self.sigma_floor,
            "bin_edges_mg_ha": list(self.edges),
            "n_per_bin": list(self.n_per_bin),
            "k_sd": list(self.k_sd),
            "q_lo": list(self.q_lo),
            "q_hi": list(self.q_hi),
            "interval": self.interval,
            "n_calibration": self.n,
        }


def calibration_record(
    obs_mg_ha: FloatArray,
    oof_pred_mg_ha: FloatArray,
    *,
    interval: float,
    independent: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[ConformalCalibration, dict[str, Any]]:
    """:func:`calibrate_conformal` and its model-card record, with the coverage its
    intervals reach on the held-out predictions it was fitted on.

    ``independent``: observed values and the *final* model's predictions at plots that
    trained no model (a carbon project's monitoring sample). They are out-of-sample
    errors of the map itself, the calibration set of textbook split-conformal
    prediction (Lei et al. 2018, §2.2), so the calibration pools them with the spatial-CV
    residuals, per bin as before; the record gives each set's size and the coverage the
    pooled intervals reach on each.
    """
    obs, pred = obs_mg_ha, oof_pred_mg_ha
    if independent is not None:
        obs = np.concatenate([obs_mg_ha, independent[0]])
        pred = np.concatenate([oof_pred_mg_ha, independent[1]])
    cal = calibrate_conformal(obs, pred, interval=interval)

    def coverage(o: FloatArray, p: FloatArray) -> float:
        ok = np.isfinite(o) & np.isfinite(p)
        cover = cal.apply(p[ok])
        inside = (o[ok] >= cover.lower) & (o[ok] <= cover.upper)
        return float(np.mean(inside)) if ok.any() else math.nan

    record = {**cal.describe(), "oof_coverage": coverage(obs_mg_ha, oof_pred_mg_ha)}
    if independent is not None:
        record["method"] += "; pooled with the final map's residuals at independent plots"
        record["n_held_out"] = int(np.isfinite(obs_mg_ha - oof_pred_mg_ha).sum())
        record["n_independent"] = int(np.isfinite(independent[0] - independent[1]).sum())
        record["independent_coverage"] = coverage(*independent)
    return cal, record


def _conformal_quantile(scores: FloatArray, level: float) -> float:
    """Finite-sample conformal quantile: the ceil((n+1) level)-th smallest score."""
    s = np.sort(scores)
    n = s.size
    k = math.ceil((n + 1) * level)
    return float(s[min(max(k, 1), n) - 1])


def min_scores_per_bin(interval: float) -> int:
    """Fewest scores for which each tail's conformal quantile of a two-sided ``interval``
    (the ``ceil((n + 1) (1 + interval) / 2)``-th smallest, :func:`_conformal_quantile`) is
    not the most extreme score: ``ceil((n + 1) level) <= n - 1``. With fewer, a bin's
    interval is set by its single most extreme residual."""
    level = (1.0 + interval) / 2.0
    n = 2
    while math.ceil((n + 1) * level) > n - 1:
        n += 1
    return n


def prediction_bins(pred_mg_ha: FloatArray, *, interval: float) -> FloatArray:
    """Interior edges of the Mondrian bins of the held-out predictions: quantiles, as many
    bins as keep at least :func:`min_scores_per_bin` predictions in each (empty: one bin)."""
    least = min_scores_per_bin(interval)
    for n_bins in range(pred_mg_ha.size // least, 1, -1):
        edges = np.unique(np.quantile(pred_mg_ha, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
        counts = np.bincount(np.digitize(pred_mg_ha, edges), minlength=edges.size + 1)
        if counts.min() >= least:
            return edges
    return np.empty(0)


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
    least = data_yaml("model_rules.yaml")["calibration"]["min_held_out"]
    if o.size < least:
        raise ModelDomainError(
            f"uncertainty calibration needs at least {least} held-out predictions, got {o.size}"
        )
    r = o - p
    abs_r = np.abs(r)
    design = np.column_stack([np.ones_like(p), p])
    (s0, s1), *_ = np.linalg.lstsq(design, abs_r, rcond=None)
    floor = min_sigma_fraction * float(abs_r.mean()) if abs_r.mean() > 0 else 1e-9
    one = (1.0,)
    unit = ConformalCalibration(float(s0), float(s1), floor, one, one, one, interval, int(o.size))
    z = r / unit.sigma(p)
    edges = prediction_bins(p, interval=interval)
    b = np.digitize(p, edges)
    level = 1.0 - (1.0 - interval) / 2.0
    groups = [z[b == i] for i in range(edges.size + 1)]
    return ConformalCalibration(
        s0=float(s0),
        s1=float(s1),
        sigma_floor=floor,
        k_sd=tuple(float(np.sqrt(np.mean(g**2))) for g in groups),
        q_lo=tuple(-_conformal_quantile(-g, level) for g in groups),
        q_hi=tuple(_conformal_quantile(g, level) for g in groups),
        interval=interval,
        n=int(o.size),
        edges=tuple(float(e) for e in edges),
        n_per_bin=tuple(int(g.size) for g in groups),
    )


@dataclass(frozen=True)
class CellSupport:
    """Change of support from the maps' plot-sized window to one grid cell.

    The maps estimate, at each cell, the AGB of the plot-sized window centred on it: the
    support the models were fitted and calibrated at (:func:`pipeline.features.focal_mean`).
    A single cell's AGB departs from its window's by the stand's variation inside the
    window (which stems stand in it), which a window-support model cannot predict, so a
    cell's SD and interval must add it (the change-of-support problem of geostatistics,
    Gotway & Young 2002, doi:10.1198/016214502760047140). The departure is described by
    the relative deviation ``r = (cell - window) / window``, per bin of window AGB
    (:func:`granularity_cell_support`), and is taken independent of the window
    estimate's error: variances add, and each side's interval half-width adds in
    quadrature with ``z * rms * AGB``, ``z`` the normal quantile of the two-sided
    ``interval`` (a normal approximation of ``r`` and of the convolution).

    Attributes
    ----------
    edges
        Interior bin edges of the window AGB (Mg/ha); bin ``k`` holds ``rms[k]``.
    rms
        Root mean square of ``r`` in each bin.
    n_cells
        How many observations (plot-epochs) described it.
    """

    edges: tuple[float, ...]
    rms: tuple[float, ...]
    interval: float
    n_cells: int
    reference: str

    def widen(self, pred: Prediction) -> Prediction:
        """The prediction of one cell from that of its window (same mean)."""
        m = pred.mean
        rms = np.asarray(self.rms)[np.digitize(np.nan_to_num(m), np.asarray(self.edges))]
        half = float(norm.ppf(0.5 + self.interval / 2.0)) * rms * m
        lower = np.clip(m - np.hypot(m - pred.lower, half), 0.0, None)
        upper = m + np.hypot(pred.upper - m, half)
        return Prediction(m, np.hypot(pred.sd, rms * m), lower, upper)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "relative deviation of a cell's AGB from its plot-sized window's, per "
            "bin of window AGB; added to the window estimate's error as independent",
            "reference": self.reference,
            "window_agb_bin_edges_mg_ha": list(self.edges),
            "rms_relative": list(self.rms),
            "interval": self.interval,
            "n_cells": self.n_cells,
        }


def granularity_cell_support(
    agb_mg_ha: FloatArray,
    granularity_m2: FloatArray,
    *,
    cell_m2: float,
    window_m2: float,
    interval: float,
    n_bins: int,
) -> CellSupport:
    """:class:`CellSupport` from the stem granularity of the field plots.

    A cell's AGB departs from its window's by where the stems happen to stand. With stems
    placed at random, a cell of area ``a`` in a window of area ``W`` departs by a relative
    variance ``g (1 / a - 1 / W)``, ``g`` the plot's stem granularity
    (:func:`models.plot_biomass.stem_granularity_m2`, Campbell's theorem). Per bin of plot
    AGB (quantiles, as many bins up to ``n_bins`` as keep
    ``cell_support.min_plots_per_bin`` plots in each, ``model_rules.yaml``) the RMS is the
    square root of the bin's mean relative variance (the interval follows from it,
    :class:`CellSupport`).

    Why the plots and not the LiDAR canopy: canopy height and cover spread each crown over
    the cells around its stem, so a model of AGB on single-cell canopy metrics does not
    follow the stems (against three simulated regions' truth, per bin of window AGB, its
    relative RMS was 0.11-0.95 where the cells' was 0.34-0.65: too small in most bins, too
    large in the demo's lowest; ``docs/parcel_uncertainty.md``), and the plots are in every
    run, LiDAR or not. Stems on a planting grid vary less than at random (the SDs are then
    conservative), clumped stems more.

    Raises
    ------
    ModelDomainError
        Fewer plots with biomass than one bin needs, or a window not larger than a cell.
    """
    agb = np.asarray(agb_mg_ha, dtype=np.float64).ravel()
    g = np.asarray(granularity_m2, dtype=np.float64).ravel()
    ok = np.isfinite(agb) & np.isfinite(g) & (agb > 0)
    least = int(data_yaml("model_rules.yaml")["cell_support"]["min_plots_per_bin"])
    if not window_m2 > cell_m2:
        raise ModelDomainError(
            f"cell support: the maps' window ({window_m2:g} m2) must be larger than a cell "
            f"({cell_m2:g} m2)"
        )
    n = int(ok.sum())
    if n < least:
        raise ModelDomainError(
            f"cell support needs at least {least} plots with biomass and a stem granularity, "
            f"got {n}"
        )
    agb, rel_var = agb[ok], g[ok] * (1.0 / cell_m2 - 1.0 / window_m2)
    bins = max(1, min(n_bins, n // least))
    edges = np.unique(np.quantile(agb, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    k = np.digitize(agb, edges)
    return CellSupport(
        edges=tuple(float(e) for e in edges),
        rms=tuple(float(np.sqrt(np.mean(rel_var[k == i]))) for i in range(edges.size + 1)),
        interval=interval,
        n_cells=n,
        reference=f"stem granularity of {n} plot-epochs, stems at random (Campbell's "
        f"theorem), cells of {cell_m2:g} m2 in windows of {window_m2:g} m2",
    )
