"""Model selection: candidates compared by spatially blocked CV, the best fitted on all data.

The chosen candidate is the one with the lowest blocked-CV RMSE (:mod:`models.biomass.validation`);
it is then fitted on every sample and calibrated on its own held-out predictions
(:mod:`models.biomass.uncertainty`). Everything is seeded with
``numpy.random.default_rng(seed)`` / ``random_state=seed``: the same inputs give the
same predictions bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.candidates import (
    BiomassModel,
    CandidateName,
    ModelSettings,
    candidate_applicable,
    make_model,
)
from models.biomass.uncertainty import ConformalCalibration, Prediction, calibration_record
from models.biomass.validation import (
    Auxiliary,
    accuracy,
    blocked_folds,
    fold_models,
    plot_random_folds,
    predict_out_of_fold,
    spatial_block_ids,
    training_set,
)
from models.errors import ModelDomainError

FloatArray = NDArray[np.float64]


@dataclass
class FittedModel:
    """A selected model fitted on all data, with its calibration and validation record.

    The cross-fitting partition, for model-assisted estimation from the samples that
    trained the model (:func:`models.biomass.cross_fitted_at_plots`,
    :func:`models.biomass.fold_map_values`): ``folds`` is the fold of each training sample
    in a random split of whole plots (``None`` when unknown), ``fold_models`` the chosen
    candidate fitted without each fold, and ``held_out`` each sample's prediction by the
    model of its fold. The split is random, not spatially blocked: sample splitting is
    design-valid when each fold is a random subsample of the probability sample
    (Chernozhukov et al. 2018, Econometrics J. 21:C1-C68, def. 3.1), which whole spatial
    blocks are not. The spatially blocked CV stays the measure of the map's accuracy
    (``card``). :meth:`without_fold_models` drops the fold models where only the map is
    needed.
    """

    model: BiomassModel
    calibration: ConformalCalibration
    card: dict[str, Any]
    folds: NDArray[np.int64] | None = None
    fold_models: dict[int, BiomassModel] = field(default_factory=dict)
    held_out: FloatArray | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features

    def without_fold_models(self) -> FittedModel:
        """The same fitted model without its fold models (smaller, for the maps)."""
        return replace(self, fold_models={})

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
    folds_r = plot_random_folds(x_m, y_m, n_folds=settings.cv_folds, seed=seed)
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
            models = fold_models(factory, x, y, folds_b, auxiliary, aux_b)
            pred_b = predict_out_of_fold(models, x, folds_b)
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
    # the random split of whole plots, for the chosen candidate: what an unblocked CV would
    # have claimed, and the cross-fitting partition
    random_models = fold_models(
        lambda: make_model(chosen, features, settings=settings, seed=seed),
        x,
        y,
        folds_r,
        auxiliary,
        aux_r,
    )
    held_out = predict_out_of_fold(random_models, x, folds_r)
    results[chosen]["random_cv"] = accuracy(y, held_out)
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
    return FittedModel(
        model, cal, card, folds=folds_r, fold_models=random_models, held_out=held_out
    )


def fit_plots(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    settings: ModelSettings,
    seed: int,
    auxiliary: Auxiliary | None = None,
) -> FittedModel:
    """:func:`select_and_fit` on a table of samples with ``agb_mg_ha`` and their
    coordinates ``x_m``, ``y_m`` (metres) next to the ``features``."""
    return select_and_fit(
        table,
        table["agb_mg_ha"].to_numpy(dtype=np.float64),
        x_m=table["x_m"].to_numpy(dtype=np.float64),
        y_m=table["y_m"].to_numpy(dtype=np.float64),
        features=features,
        settings=settings,
        seed=seed,
        auxiliary=auxiliary,
    )
