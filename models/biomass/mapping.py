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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.selection import FittedModel
from models.biomass.uncertainty import CellSupport, Prediction
from models.biomass.validation import accuracy

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
    epoch_offsets: dict[str, float] = field(default_factory=dict)
    cell_support: CellSupport | None = None
    common: FittedModel | None = None
    common_epoch_offsets: dict[str, float] = field(default_factory=dict)

    def sources(self, table: pd.DataFrame, *, epoch: str) -> NDArray[np.uint8]:
        """The ``model_source`` code each row of ``table`` gets: the first model of LiDAR
        (in its cover at its epoch), satellite, common-band satellite whose predictors the
        row has, else :data:`SOURCE_NONE`. Decided by the predictors alone, so that the
        share of each source is known without predicting."""
        source = np.full(len(table), SOURCE_NONE, dtype=np.uint8)
        if self.common is not None:
            source[_has(table, self.common.features)] = SOURCE_SATELLITE_COMMON
        source[_has(table, self.satellite.features)] = SATELLITE_SOURCE_CODES[self.satellite_source]
        if self.lidar is not None and epoch == self.lidar_epoch and "lidar_fraction" in table:
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
