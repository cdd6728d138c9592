"""Statistical biomass models: area-based LiDAR, satellite, spatial validation, uncertainty.

Field plots give above-ground biomass (AGB, Mg/ha) at a few dozen places; remote sensing
gives predictors everywhere. The package fits the link between them, one concern per
module:

- :mod:`~models.biomass.candidates`: the candidate models (power-law ABA, random forest,
  gradient boosting, log-linear ridge) behind one interface;
- :mod:`~models.biomass.validation`: spatially blocked cross-validation and accuracy;
- :mod:`~models.biomass.uncertainty`: normalised split-conformal intervals and the
  change of support from the maps' plot-sized window to one cell;
- :mod:`~models.biomass.selection`: candidates compared by blocked CV, the best fitted
  on all data and calibrated;
- :mod:`~models.biomass.mapping`: the per-pixel rule (LiDAR model in the LiDAR cover,
  satellite model elsewhere, its common-band twin where a Sentinel-2-only band is missing);
- :mod:`~models.biomass.epochs`: each epoch's map bias and the epochs' error correlation;
- :mod:`~models.biomass.upscaling`: LiDAR-assisted (hybrid) training of the satellite
  model.

Everything is seeded with ``numpy.random.default_rng(seed)`` / ``random_state=seed``:
the same inputs give the same predictions bit for bit. The package imports nothing from
``pipeline/``; the ``model`` stage (``forest-carbon fit``) drives it.

The names below are the public API; import them from here. Its classes carry this
package as their module, so that fitted models pickled by the ``model`` stage
(``model/models.pkl``) name them by this stable path rather than by the file that
happens to define them.
"""

from __future__ import annotations

from models.biomass.candidates import (
    BiomassModel,
    CandidateName,
    LogLinearRidge,
    ModelSettings,
    PowerLawABA,
    SklearnModel,
    candidate_applicable,
    make_model,
)
from models.biomass.epochs import (
    EpochCorrection,
    correct_epochs,
    epoch_corrections,
    epoch_error_correlation,
)
from models.biomass.mapping import (
    SATELLITE_SOURCE_CODES,
    SOURCE_BASELINE,
    SOURCE_LIDAR,
    SOURCE_NAMES,
    SOURCE_NONE,
    SOURCE_SATELLITE_COMBINED,
    SOURCE_SATELLITE_COMMON,
    SOURCE_SATELLITE_PLOTS,
    SOURCE_SATELLITE_UPSCALED,
    BiomassMapper,
    SatelliteSource,
    accuracy_at_plots,
    cross_fitted_at_plots,
    fold_map_values,
)
from models.biomass.selection import FittedModel, fit_plots, select_and_fit
from models.biomass.uncertainty import (
    CellSupport,
    ConformalCalibration,
    Prediction,
    calibrate_conformal,
    calibration_record,
    granularity_cell_support,
)
from models.biomass.upscaling import fit_satellite_model, thinned_sample, upscaled_sample
from models.biomass.validation import (
    Auxiliary,
    accuracy,
    block_keys,
    blocked_folds,
    fold_models,
    plot_random_folds,
    predict_out_of_fold,
    random_folds,
    spatial_block_ids,
    training_set,
)

__all__ = [
    "SATELLITE_SOURCE_CODES",
    "SOURCE_BASELINE",
    "SOURCE_LIDAR",
    "SOURCE_NAMES",
    "SOURCE_NONE",
    "SOURCE_SATELLITE_COMBINED",
    "SOURCE_SATELLITE_COMMON",
    "SOURCE_SATELLITE_PLOTS",
    "SOURCE_SATELLITE_UPSCALED",
    "Auxiliary",
    "BiomassMapper",
    "BiomassModel",
    "CandidateName",
    "CellSupport",
    "ConformalCalibration",
    "EpochCorrection",
    "FittedModel",
    "LogLinearRidge",
    "ModelSettings",
    "PowerLawABA",
    "Prediction",
    "SatelliteSource",
    "SklearnModel",
    "accuracy",
    "accuracy_at_plots",
    "block_keys",
    "blocked_folds",
    "calibrate_conformal",
    "calibration_record",
    "candidate_applicable",
    "correct_epochs",
    "cross_fitted_at_plots",
    "epoch_corrections",
    "epoch_error_correlation",
    "fit_plots",
    "fit_satellite_model",
    "fold_map_values",
    "fold_models",
    "granularity_cell_support",
    "make_model",
    "plot_random_folds",
    "predict_out_of_fold",
    "random_folds",
    "select_and_fit",
    "spatial_block_ids",
    "thinned_sample",
    "training_set",
    "upscaled_sample",
]

for _cls in (
    Auxiliary,
    BiomassMapper,
    CellSupport,
    ConformalCalibration,
    EpochCorrection,
    FittedModel,
    LogLinearRidge,
    ModelSettings,
    PowerLawABA,
    Prediction,
    SklearnModel,
):
    _cls.__module__ = __name__
del _cls
