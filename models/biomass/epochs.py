"""One model, several epochs: each epoch's map bias and the correlation of the epochs' errors.

Both come from the satellite model's held-out (spatial CV) predictions at the plots
measured at each epoch (:func:`epoch_corrections`, :func:`epoch_error_correlation`);
:func:`correct_epochs` applies them to a :class:`~models.biomass.mapping.BiomassMapper`.
Thresholds: ``models/data/model_rules.yaml`` (``epochs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.mapping import (
    SATELLITE_SOURCE_CODES,
    SOURCE_SATELLITE_COMMON,
    BiomassMapper,
)
from models.biomass.selection import FittedModel
from models.biomass.uncertainty import calibration_record
from models.datafiles import data_yaml

FloatArray = NDArray[np.float64]


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
    least = data_yaml("model_rules.yaml")["epochs"]["min_residuals_correction"]
    out: dict[str, EpochCorrection] = {}
    for e in dict.fromkeys(ep.tolist()):
        m = (ep == e) & np.isfinite(obs_mg_ha) & np.isfinite(oof_pred_mg_ha)
        r = obs_mg_ha[m] - oof_pred_mg_ha[m]
        if r.size >= least:
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
    Returns ``(rho, n_plots)``; ``rho`` is NaN with fewer re-measured plots than
    ``epochs.min_remeasured_plots`` (``models/data/model_rules.yaml``).
    """
    t = pd.DataFrame(
        {"plot": list(plot_ids), "epoch": list(epochs), "r": obs_mg_ha - oof_pred_mg_ha}
    ).dropna()
    wide = t.pivot_table(index="plot", columns="epoch", values="r", aggfunc="mean")
    if first not in wide.columns or second not in wide.columns:
        return math.nan, 0
    both = wide[[first, second]].dropna()
    if len(both) < data_yaml("model_rules.yaml")["epochs"]["min_remeasured_plots"]:
        return math.nan, len(both)
    r1, r2 = both[first].to_numpy(), both[second].to_numpy()
    norm = math.sqrt(float(np.sum(r1 * r1) * np.sum(r2 * r2)))
    if norm == 0.0:
        return math.nan, len(both)
    return float(np.sum(r1 * r2) / norm), len(both)


def correct_epochs(
    mapper: BiomassMapper,
    plots: pd.DataFrame,
    epochs: Sequence[str],
    *,
    interval: float,
    bias_correction: bool,
    common_plots: pd.DataFrame | None = None,
    independent: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Per-epoch bias correction of the satellite maps and the epochs' error correlations.

    Both from a satellite model's held-out (spatial CV) predictions at the plots, which
    ``select_and_fit`` records in the order of ``plots``' rows (columns ``epoch`` and
    ``plot_id``). With ``bias_correction`` the mapper's ``epoch_offsets`` are set and its
    satellite model recalibrated on the corrected predictions; the satellite model's card
    records the corrections either way. The common-band model (``mapper.common``, trained
    on ``common_plots``) gets the same from its own residuals, into
    ``common_epoch_offsets`` and its own card.

    ``independent``: plot-epochs that trained no model (a carbon project's monitoring
    sample; predictors, ``epoch``, ``plot_id``, ``agb_mg_ha``). Each model's residuals
    there, of the final (bias-corrected) model at the rows it maps
    (:meth:`BiomassMapper.sources`), are pooled with its held-out residuals in its
    calibration (:func:`calibration_record`) and in the epochs' error correlation; the
    offsets stay those of the held-out residuals, so the maps' values do not depend on
    the independent plots. The monitoring plots sample the project area only: the pooled
    calibration weighs the project area's errors by its plots' number. Without them
    (``None`` or no row), the held-out residuals alone, as the card says.

    Returns
    -------
    dict
        The model card's ``epoch_error_correlation`` record of the satellite model: ``rho``
        and ``n_plots`` per pair of epochs (``rho`` None when too few plots were measured
        at both).
    """
    mapped = _mapped_by(mapper, independent, epochs)
    mapper.epoch_offsets, pairs = _correct_model(
        mapper.satellite, plots, epochs, interval=interval, bias_correction=bias_correction,
        independent=mapped.get(SATELLITE_SOURCE_CODES[mapper.satellite_source]),
    )  # fmt: skip
    if mapper.common is not None and common_plots is not None:
        mapper.common_epoch_offsets, common_pairs = _correct_model(
            mapper.common, common_plots, epochs, interval=interval,
            bias_correction=bias_correction, independent=mapped.get(SOURCE_SATELLITE_COMMON),
        )  # fmt: skip
        mapper.common.card["epoch_error_correlation"] = common_pairs
    return pairs


def _mapped_by(
    mapper: BiomassMapper, independent: pd.DataFrame | None, epochs: Sequence[str]
) -> dict[int, pd.DataFrame]:
    """The rows of ``independent`` by the ``model_source`` code of the model that maps
    them (each epoch's rule of :meth:`BiomassMapper.sources`)."""
    if independent is None or independent.empty:
        return {}
    parts = []
    for e in epochs:
        rows = independent[independent["epoch"].astype(str) == e]
        parts.append(rows.assign(_source=mapper.sources(rows, epoch=e)))
    table = pd.concat(parts, ignore_index=True)
    return {int(k): g.drop(columns="_source") for k, g in table.groupby("_source")}


def _correct_model(
    fitted: FittedModel,
    plots: pd.DataFrame,
    epochs: Sequence[str],
    *,
    interval: float,
    bias_correction: bool,
    independent: pd.DataFrame | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`correct_epochs` for one model: its epoch offsets (empty without
    ``bias_correction``; the model is recalibrated and its card updated in place) and its
    ``epoch_error_correlation`` record. ``independent``: the rows of independent plots
    this model maps."""
    held_out = pd.DataFrame(fitted.card["cv_predictions"])
    obs = held_out["observed"].to_numpy(dtype=np.float64)
    pred = held_out["predicted"].to_numpy(dtype=np.float64)
    plot_epochs = plots["epoch"].astype(str).tolist()
    plot_ids = plots["plot_id"].astype(str).tolist()
    corrections = epoch_corrections(obs, pred, plot_epochs)
    offsets: dict[str, float] = {}
    if bias_correction:
        offsets = {e: c.offset_mg_ha for e, c in corrections.items()}
        # intervals around the corrected map: calibrate on the corrected predictions
        shift = np.array([offsets.get(e, 0.0) for e in plot_epochs])
        pred = np.clip(pred + shift, 0.0, None)
    pooled: tuple[FloatArray, FloatArray] | None = None
    ind_epochs: list[str] = []
    ind_ids: list[str] = []
    if independent is not None and not independent.empty:
        ind_epochs = independent["epoch"].astype(str).tolist()
        ind_ids = independent["plot_id"].astype(str).tolist()
        ind_shift = np.array([offsets.get(e, 0.0) for e in ind_epochs])
        ind_pred = np.clip(fitted.model.predict(independent) + ind_shift, 0.0, None)
        pooled = (independent["agb_mg_ha"].to_numpy(dtype=np.float64), ind_pred)
    if bias_correction or pooled is not None:
        cal, record = calibration_record(obs, pred, interval=interval, independent=pooled)
        fitted.calibration = cal
        after = "the epoch bias correction" if bias_correction else "model selection"
        fitted.card["uncertainty"] = {**record, "after": after}
    if pooled is not None:
        # the epochs' error correlation from every out-of-sample residual as well
        obs, pred = np.concatenate([obs, pooled[0]]), np.concatenate([pred, pooled[1]])
        plot_epochs = plot_epochs + ind_epochs
        plot_ids = plot_ids + ind_ids
    fitted.card["epoch_bias_correction"] = {
        "applied": bias_correction,
        "method": "mean held-out residual of the epoch's plots (model-assisted, GREG)",
        **{e: asdict(c) for e, c in corrections.items()},
    }
    pairs: dict[str, Any] = {}
    for i, first in enumerate(epochs):
        for second in epochs[i + 1 :]:
            rho, n = epoch_error_correlation(
                obs,
                pred,
                epochs=plot_epochs,
                plot_ids=plot_ids,
                first=first,
                second=second,
            )
            # None (JSON null) when too few plots were measured at both epochs
            pairs[f"{first}/{second}"] = {"rho": rho if np.isfinite(rho) else None, "n_plots": n}
    return offsets, {
        **pairs,
        "method": "uncentred correlation sum(r1 r2) / sqrt(sum(r1^2) sum(r2^2)) of the "
        "satellite model's held-out residuals r at plots measured at both epochs"
        + ("" if pooled is None else ", and of its residuals at the independent plots"),
    }
