"""The per-pixel rule of the maps: the LiDAR model inside the LiDAR cover at its epoch, the
satellite model everywhere else, each with its calibrated uncertainty and a source code.

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
