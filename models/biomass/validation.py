"""Spatially blocked cross-validation of the biomass models, and their accuracy figures.

Plots are spatially autocorrelated, so a random K-fold split puts near neighbours of
every test plot into its training set and underestimates the error of wall-to-wall
prediction (Roberts et al. 2017, doi:10.1111/ecog.02881; Ploton et al. 2020,
doi:10.1038/s41467-020-18321-y). Candidates are therefore compared and selected by
*spatially blocked* cross-validation: plots are grouped into square blocks of side
``cv_block_m`` and whole blocks are held out. The random-split figures are computed too
and recorded next to them, to show the difference.

Training samples that are not observations (:class:`Auxiliary`, e.g. a thinned sample of
a LiDAR-model map, see :mod:`models.biomass.upscaling`) are used to fit and never to
score; their spatial blocks share the plots' folds, so a held-out plot has neither its
own block's plots nor its block's auxiliary samples in the training data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.candidates import BiomassModel
from models.errors import ModelDomainError

FloatArray = NDArray[np.float64]


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


def plot_random_folds(
    x_m: FloatArray, y_m: FloatArray, *, n_folds: int, seed: int
) -> NDArray[np.int64]:
    """Fold index per point for a random K-fold split of whole plots: the points at one
    location (a plot measured at several epochs) share a fold, so a plot's other epochs
    never train the model that predicts it."""
    _, plot = np.unique(np.column_stack([x_m, y_m]), axis=0, return_inverse=True)
    plot = plot.reshape(-1)
    n_plots = int(plot.max()) + 1 if plot.size else 0
    return random_folds(n_plots, n_folds=n_folds, seed=seed)[plot]


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


def fold_models(
    factory: Callable[[], BiomassModel],
    x: pd.DataFrame,
    agb_mg_ha: FloatArray,
    folds: NDArray[np.int64],
    auxiliary: Auxiliary | None = None,
    aux_folds: NDArray[np.int64] | None = None,
) -> dict[int, BiomassModel]:
    """Per fold, the model fitted without that fold's plots and auxiliary samples (see
    :class:`Auxiliary`): the fold models of the cross-validation."""
    models = {}
    for f in np.unique(folds):
        aux_rows = None if aux_folds is None else aux_folds != f
        tx, ty, tw = training_set(x, agb_mg_ha, folds != f, auxiliary, aux_rows)
        models[int(f)] = factory().fit(tx, ty, tw)
    return models


def predict_out_of_fold(
    models: dict[int, BiomassModel], x: pd.DataFrame, folds: NDArray[np.int64]
) -> FloatArray:
    """Out-of-fold predictions: each row of ``x`` predicted by the model of its fold, fitted
    without it (:func:`fold_models`)."""
    pred = np.full(len(x), np.nan)
    for f, model in models.items():
        test = folds == f
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
