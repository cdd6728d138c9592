"""Was a parcel forest at an earlier epoch? Land use from satellite features.

The parcel layer (the bureau's sub-compartment map) tells forest land from farmland,
settlements and water at its own date, usually the last epoch. Land that became forest
since (afforestation of farmland) was not forest at the earlier epochs, and a biomass
model that knows forest plots only would map its crops as forest biomass there: a
large false loss of carbon. A classifier of forest against other land, trained on cells
of the layer's forest and non-forest parcels at the layer's date (the labels are the
layer's land classes), judges every forest-land parcel at the other epochs by the share
of its cells it calls forest: land use is a parcel attribute, so scattered misclassified
cells do not change it. Clear-felled forest land is still forest land: it is labelled
forest at the layer's date, and the classifier learns it apart from farmland.

A random forest classifier (scikit-learn) on the satellite predictors at plot support;
its spatially blocked cross-validated accuracy goes into the model card. Thresholds and
the parcel rule: ``models/data/model_rules.yaml`` (``land_use``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier

from models.biomass import blocked_folds
from models.datafiles import data_yaml
from models.errors import ModelDomainError


@dataclass
class LandUseClassifier:
    """Probability that a cell is forest land, from named satellite features."""

    features: tuple[str, ...]
    model: RandomForestClassifier
    card: dict[str, Any]

    def forest_probability(self, x: pd.DataFrame) -> NDArray[np.float64]:
        """P(forest) per row of ``x``; NaN where a feature is missing."""
        m = x.loc[:, list(self.features)].to_numpy(dtype=np.float64)
        ok = np.isfinite(m).all(axis=1)
        out = np.full(len(x), np.nan)
        if ok.any():
            out[ok] = self.model.predict_proba(m[ok])[:, list(self.model.classes_).index(1)]
        return out


def fit_land_use(
    forest: pd.DataFrame,
    other: pd.DataFrame,
    *,
    features: Sequence[str],
    block_m: float,
    n_folds: int,
    n_estimators: int,
    min_samples_leaf: int,
    seed: int,
) -> LandUseClassifier:
    """Fit the forest / other-land classifier on cell samples of both kinds of land.

    ``forest`` and ``other`` hold the ``features`` and the cells' ``x_m``, ``y_m`` (for
    the spatially blocked CV); rows with missing features are dropped.
    """
    table = pd.concat([forest.assign(_label=1), other.assign(_label=0)], ignore_index=True)
    table = table.loc[table[list(features)].notna().all(axis=1)].reset_index(drop=True)
    counts = table["_label"].value_counts()
    least = data_yaml("model_rules.yaml")["land_use"]["min_cells_per_class"]
    if counts.get(1, 0) < least or counts.get(0, 0) < least:
        raise ModelDomainError(
            f"land-use classifier needs at least {least} cells of forest and of other land, got "
            f"{counts.get(1, 0)} and {counts.get(0, 0)}"
        )
    x = table[list(features)].to_numpy(dtype=np.float64)
    y = table["_label"].to_numpy()

    def model() -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=n_estimators,
            min_samples_leaf=min_samples_leaf,
            n_jobs=1,
            random_state=seed,
        )

    folds = blocked_folds(
        table["x_m"].to_numpy(dtype=np.float64),
        table["y_m"].to_numpy(dtype=np.float64),
        block_m=block_m,
        n_folds=n_folds,
        seed=seed,
    )
    held_out = np.zeros(len(y), dtype=np.int64)
    for f in np.unique(folds):
        test = folds == f
        held_out[test] = model().fit(x[~test], y[~test]).predict(x[test])
    card = {
        "method": "random forest classifier, forest-land vs other parcels' cells at the "
        "parcel layer's date",
        "features": list(features),
        "n_forest_cells": int((y == 1).sum()),
        "n_other_cells": int((y == 0).sum()),
        "spatial_cv": {
            "accuracy": float(np.mean(held_out == y)),
            "forest_called_other": float(np.mean(held_out[y == 1] == 0)),
            "other_called_forest": float(np.mean(held_out[y == 0] == 1)),
            "block_m": block_m,
        },
    }
    return LandUseClassifier(tuple(features), model().fit(x, y), card)


def judge_parcels(
    clf: LandUseClassifier, cells: pd.DataFrame, parcel_ids: Sequence[str]
) -> dict[str, Any]:
    """The forest-land parcels that were not forest at an epoch, by the majority of cells.

    ``cells`` holds the classifier's features at a sample of the parcels' cells at that
    epoch and each cell's ``parcel`` (row of ``parcel_ids``). A cell is forest when its
    probability reaches ``land_use.forest_probability``, a parcel when its share of
    forest cells reaches ``land_use.forest_share`` (``model_rules.yaml``): land use is a
    parcel attribute. Cells with a missing feature do not count.

    Returns
    -------
    dict
        ``non_forest_parcels`` (sorted ids) and ``parcels_judged`` (parcels with a cell).
    """
    rules = data_yaml("model_rules.yaml")["land_use"]
    prob = clf.forest_probability(cells)
    ok = np.isfinite(prob)
    share = (
        pd.DataFrame({"parcel": cells["parcel"], "forest": prob >= rules["forest_probability"]})
        .loc[ok]
        .groupby("parcel")["forest"]
        .mean()
    )
    not_forest = share.index[share < rules["forest_share"]].to_numpy()
    ids = np.asarray(parcel_ids, dtype=object)[not_forest]
    return {"non_forest_parcels": sorted(ids.tolist()), "parcels_judged": int(share.size)}
