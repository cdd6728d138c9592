"""The per-pixel rule of the maps: the LiDAR model inside the LiDAR cover at its epoch, the
satellite model everywhere else, each with its calibrated uncertainty and a source code.

Where a cell lacks a predictor of the satellite model, the common-band model (fitted on
the predictors both Sentinel-2 and Landsat give, see :attr:`BiomassMapper.common`) maps
it: a season whose only clear views of a cell are Landsat's leaves the Sentinel-2-only
bands (red edge, B08, NDRE) empty there. It is never used where the satellite model can
predict, so the two do not need to agree; each carries its own spatial-CV calibration.

Maps apply the models to plot-sized moving-window means of the predictors, so per-pixel
SDs and intervals refer to that support (:class:`~models.biomass.uncertainty.CellSupport`
widens them to one cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeGuard

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.selection import FittedModel
from models.biomass.uncertainty import CellSupport, Prediction
from models.biomass.validation import accuracy
from models.survey.crossfit import NO_FOLD

#: codes of the ``model_source`` quality band
SOURCE_NONE = 0
SOURCE_LIDAR = 1
SOURCE_SATELLITE_UPSCALED = 2
SOURCE_SATELLITE_PLOTS = 3
SOURCE_SATELLITE_COMBINED = 4
#: land not yet forest at the epoch (afforestation): the baseline stock, zero
SOURCE_BASELINE = 5
#: satellite model on the bands both sensors give, where the satellite model lacks one
SOURCE_SATELLITE_COMMON = 6

#: name of each ``model_source`` code, for records and reports
SOURCE_NAMES: dict[int, str] = {
    SOURCE_NONE: "no value",
    SOURCE_LIDAR: "LiDAR model",
    SOURCE_SATELLITE_UPSCALED: "satellite model upscaled from LiDAR",
    SOURCE_SATELLITE_PLOTS: "satellite model from plots",
    SOURCE_SATELLITE_COMBINED: "satellite model from plots and LiDAR",
    SOURCE_BASELINE: "baseline stock of land not yet forest",
    SOURCE_SATELLITE_COMMON: "common-band satellite model (Sentinel-2-only bands missing)",
}

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
        Epoch of the LiDAR flight whose plots fitted the LiDAR model.
    lidar_repeat_epochs
        Epochs of repeat flights over the same area (their plots fitted the model too):
        the LiDAR model maps a row of any of these epochs whose ``lidar_fraction`` (the
        caller's cover: the pipeline gives the share flown at every epoch of the run)
        reaches ``lidar_min_fraction``.
    lidar_min_fraction
        Minimum LiDAR coverage fraction of a cell for the LiDAR model to be used there.
    cell_support
        Change of support from the plot-sized window to one cell (:class:`CellSupport`)
        for the per-cell uncertainty of the maps; ``None`` when it could not be estimated.
    epoch_offsets
        Additive per-epoch bias correction of the satellite model (Mg/ha, see
        :func:`epoch_corrections`), applied before its calibration; epochs not listed are
        not corrected.
    common
        The fallback satellite model on the predictors both sensors give (the bands HLS
        harmonises, the indices computed from them, terrain, parcel classes), trained like
        ``satellite``; used only where a predictor of ``satellite`` is missing. ``None``
        when ``satellite`` uses no single-sensor predictor.
    common_epoch_offsets
        ``epoch_offsets`` of ``common`` (from its own held-out residuals).
    """

    satellite: FittedModel
    satellite_source: SatelliteSource
    lidar: FittedModel | None = None
    lidar_epoch: str | None = None
    lidar_min_fraction: float = 0.95
    lidar_repeat_epochs: tuple[str, ...] = ()
    epoch_offsets: dict[str, float] = field(default_factory=dict)
    cell_support: CellSupport | None = None
    common: FittedModel | None = None
    common_epoch_offsets: dict[str, float] = field(default_factory=dict)

    @property
    def lidar_epochs(self) -> tuple[str, ...]:
        """Every epoch with a LiDAR flight the LiDAR model maps."""
        first = () if self.lidar_epoch is None else (self.lidar_epoch,)
        return (*first, *self.lidar_repeat_epochs)

    def without_fold_models(self) -> BiomassMapper:
        """The same rule with the models' fold models dropped (:class:`FittedModel`): what
        the maps need, a fraction of the size."""

        def strip(fitted: FittedModel | None) -> FittedModel | None:
            return None if fitted is None else fitted.without_fold_models()

        return replace(
            self,
            satellite=self.satellite.without_fold_models(),
            lidar=strip(self.lidar),
            common=strip(self.common),
        )

    def models_by_source(self) -> dict[int, tuple[FittedModel | None, dict[str, float], bool]]:
        """Per ``model_source`` code of a model: the model, its epoch offsets and whether
        the map clips its prediction at 0 (as :meth:`predict` applies them)."""
        return {
            SATELLITE_SOURCE_CODES[self.satellite_source]: (
                self.satellite, self.epoch_offsets, True
            ),
            SOURCE_SATELLITE_COMMON: (self.common, self.common_epoch_offsets, True),
            SOURCE_LIDAR: (self.lidar, {}, False),
        }  # fmt: skip

    def sources(self, table: pd.DataFrame, *, epoch: str) -> NDArray[np.uint8]:
        """The ``model_source`` code each row of ``table`` gets: the first model of LiDAR
        (at its epochs, where ``lidar_fraction`` reaches ``lidar_min_fraction``),
        satellite, common-band satellite whose predictors the row has, else
        :data:`SOURCE_NONE`. Decided by the predictors alone, so that the share of each
        source is known without predicting."""
        source = np.full(len(table), SOURCE_NONE, dtype=np.uint8)
        if self.common is not None:
            source[_has(table, self.common.features)] = SOURCE_SATELLITE_COMMON
        source[_has(table, self.satellite.features)] = SATELLITE_SOURCE_CODES[self.satellite_source]
        if self.lidar is not None and epoch in self.lidar_epochs and "lidar_fraction" in table:
            frac = np.nan_to_num(table["lidar_fraction"].to_numpy(dtype=np.float64))
            source[(frac >= self.lidar_min_fraction) & _has(table, self.lidar.features)] = (
                SOURCE_LIDAR
            )
        return source

    def predict(self, table: pd.DataFrame, *, epoch: str) -> tuple[Prediction, NDArray[np.uint8]]:
        """AGB with uncertainty (Mg/ha) and the ``model_source`` code per row of ``table``.

        ``table`` holds the satellite features, and where LiDAR exists the LiDAR features
        and ``lidar_fraction``. Each row is predicted by the model :meth:`sources` picks;
        rows without the predictors of any model are NaN with code :data:`SOURCE_NONE`.
        """
        source = self.sources(table, epoch=epoch)
        out = [np.full(len(table), np.nan) for _ in range(4)]
        satellites = (
            (SATELLITE_SOURCE_CODES[self.satellite_source], self.satellite, self.epoch_offsets),
            (SOURCE_SATELLITE_COMMON, self.common, self.common_epoch_offsets),
        )
        for code, fitted, offsets in satellites:
            rows = source == code
            if fitted is None or not rows.any():
                continue
            # the epoch's bias correction first, then the calibration (which the model
            # stage fits on the corrected held-out predictions)
            mean = fitted.model.predict(table.loc[rows]) + offsets.get(epoch, 0.0)
            _fill(out, rows, fitted.calibration.apply(np.clip(mean, 0.0, None)))
        rows = source == SOURCE_LIDAR
        if self.lidar is not None and rows.any():
            _fill(out, rows, self.lidar.predict(table.loc[rows]))
        source[~np.isfinite(out[0])] = SOURCE_NONE
        return Prediction(*out), source


def _has(table: pd.DataFrame, features: Sequence[str]) -> NDArray[np.bool_]:
    """Rows of ``table`` with every one of ``features`` (a missing column: none)."""
    if not set(features) <= set(table.columns):
        return np.zeros(len(table), dtype=bool)
    return np.asarray(table[list(features)].notna().all(axis=1).to_numpy(), dtype=bool)


def _fill(out: list[NDArray[np.float64]], rows: NDArray[np.bool_], pred: Prediction) -> None:
    """Write ``pred`` (of the ``rows`` only) into the mean, sd, lower, upper arrays ``out``."""
    for arr, part in zip(out, (pred.mean, pred.sd, pred.lower, pred.upper), strict=True):
        arr[rows] = part


def accuracy_at_plots(
    mapper: BiomassMapper, table: pd.DataFrame, epochs: Sequence[str]
) -> dict[str, Any]:
    """End-to-end check of the final per-pixel rule at the plots (``table``: features,
    ``epoch`` and ``agb_mg_ha`` per plot-epoch): accuracy and interval coverage.

    LiDAR-epoch plots inside the LiDAR cover are in-sample for the LiDAR model, and every
    plot trained the satellite model: these figures are reported, never used to select.
    """
    y = table["agb_mg_ha"].to_numpy(dtype=np.float64)
    final = [mapper.predict(table.loc[table["epoch"] == e], epoch=e) for e in epochs]
    pred = np.concatenate([f[0].mean for f in final])
    lower = np.concatenate([f[0].lower for f in final])
    upper = np.concatenate([f[0].upper for f in final])
    obs = np.concatenate([y[(table["epoch"] == e).to_numpy()] for e in epochs])
    return {
        **accuracy(obs, pred),
        "interval_coverage": float(np.mean((obs >= lower) & (obs <= upper))),
        "note": "partly in-sample (plots trained the models); the CV figures are the honest ones",
    }


def cross_fitted_at_plots(
    mapper: BiomassMapper,
    table: pd.DataFrame,
    epochs: Sequence[str],
    training: Sequence[tuple[FittedModel | None, pd.DataFrame]],
) -> pd.DataFrame:
    """The final per-pixel rule's prediction at each plot-epoch of ``table``, in-sample and
    cross-fitted, for model-assisted estimation from the plots that trained the maps.

    A model-assisted (difference, GREG) estimator is design-unbiased with a valid variance
    only when the auxiliary values at the sample plots do not depend on the sample
    (Särndal, Swensson & Wretman 1992, §6.3). At the plots that trained a map they do: the
    fit follows the plots, and the residuals understate the variance several-fold.
    Cross-fitting (the sample splitting of Chernozhukov et al. 2018, Econometrics J.
    21:C1–C68; on model-assisted estimation with machine-learned predictions, Breidt &
    Opsomer 2017, Statist. Sci. 32:190–205) replaces each training plot's auxiliary value
    by the prediction of the model fitted without the plot's fold: here the out-of-fold
    prediction of model selection's random split of whole plots (:class:`FittedModel`'s
    ``held_out``, in the order of the model's training rows), with the same epoch offset
    and clipping the map applies.

    ``training`` pairs each fitted model with its training rows (columns ``plot_id`` and
    ``epoch``); a plot-epoch a model did not train on keeps its prediction, which is then
    out of sample already. Returns ``plot_id``, ``epoch``, ``model_source``,
    ``fitted_mg_ha`` (the map's rule, in sample), ``held_out_mg_ha`` (cross-fitted) and
    ``fold`` (the fold of the model that maps the plot in which it was held out;
    :data:`NO_FOLD` where the value is out of sample already) per row of ``table``.

    The epoch offsets are means of all plots' held-out residuals, so they keep a share 1/n
    of each plot's own residual: a second-order term left in, as in the map.
    """
    held: dict[int, dict[tuple[str, str], tuple[float, int]]] = {}
    for fitted, rows in training:
        if not _plot_trained(fitted):
            continue  # plots scored it but never trained it
        if fitted.held_out is None or fitted.folds is None:
            continue  # no cross-fitting partition: its plots keep the map's value
        oofs, folds = fitted.held_out.tolist(), fitted.folds.tolist()
        trained = zip(rows["plot_id"].astype(str), rows["epoch"].astype(str), strict=True)
        held[id(fitted)] = dict(zip(trained, zip(oofs, folds, strict=True), strict=True))
    models = mapper.models_by_source()
    parts = []
    for epoch in epochs:
        rows = table.loc[table["epoch"].astype(str) == epoch]
        pred, source = mapper.predict(rows, epoch=epoch)
        out = pred.mean.copy()
        fold = np.full(len(rows), NO_FOLD, dtype=np.int64)
        keys = list(zip(rows["plot_id"].astype(str), [epoch] * len(rows), strict=True))
        for i, (code, key) in enumerate(zip(source, keys, strict=True)):
            fitted, offsets, clipped = models.get(int(code), (None, {}, False))
            oof = held.get(id(fitted), {}).get(key) if fitted is not None else None
            if oof is not None:
                shifted = oof[0] + offsets.get(epoch, 0.0)
                out[i] = max(shifted, 0.0) if clipped else shifted
                fold[i] = oof[1]
        parts.append(
            pd.DataFrame(
                {
                    "plot_id": rows["plot_id"].astype(str).to_numpy(),
                    "epoch": epoch,
                    "model_source": source,
                    "fitted_mg_ha": pred.mean,
                    "held_out_mg_ha": out,
                    "fold": fold,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _plot_trained(fitted: FittedModel | None) -> TypeGuard[FittedModel]:
    """Whether the field plots trained ``fitted`` (not: absent, or trained on auxiliary
    samples alone, the plots only scoring it)."""
    return fitted is not None and fitted.card.get("auxiliary_share") != 1.0


def fold_map_values(
    mapper: BiomassMapper, table: pd.DataFrame, *, epoch: str
) -> tuple[NDArray[np.float64], NDArray[np.uint8], NDArray[np.float64]]:
    """The map rule and its fold maps at the rows of ``table`` (AGB, Mg/ha): the map's
    value, its ``model_source`` code, and per fold ``k`` the value of the fold map
    ``map_{-k}`` (array ``(rows, K)``, ``K`` the most folds of any model).

    ``map_{-k}`` is the map rule with every model the plots trained replaced by its fold-k
    model (:attr:`FittedModel.fold_models`), with the same source per row, epoch offsets
    and clipping as the map (:meth:`BiomassMapper.predict`); a model the plots did not
    train, or one with fewer than ``k + 1`` folds, keeps its full fit. The fold maps'
    population means are what the cross-fitted difference estimator needs
    (:mod:`models.survey.crossfit`): the fold of a plot is the fold in which the model that
    maps it held it out (``fold`` of :func:`cross_fitted_at_plots`), so group ``k`` of the
    plots is every plot held out in fold ``k`` of its own model, and ``map_{-k}`` is fitted
    without each of them by the model that maps it.
    """
    pred, source = mapper.predict(table, epoch=epoch)
    models = mapper.models_by_source()
    n_folds = max(
        (len(m.fold_models) for m, _, _ in models.values() if _plot_trained(m)), default=0
    )
    folds = np.repeat(pred.mean[:, None], n_folds, axis=1)
    for code, (fitted, offsets, clipped) in models.items():
        rows = source == code
        if not _plot_trained(fitted) or not rows.any():
            continue
        for k, model in fitted.fold_models.items():
            value = model.predict(table.loc[rows]) + offsets.get(epoch, 0.0)
            folds[rows, k] = np.clip(value, 0.0, None) if clipped else value
    return pred.mean, source, folds
