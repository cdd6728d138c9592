"""LiDAR-assisted upscaling: a sample of the LiDAR-model map trains the satellite model.

Two-phase, "hybrid" inference (Saarela et al. 2016, doi:10.1186/s13021-016-0054-5): where
LiDAR covers only part of the area of interest, the plot->LiDAR model maps AGB over the
LiDAR block, and a spatially thinned sample of that map (:func:`thinned_sample`,
:func:`upscaled_sample`) can train the satellite-only model that predicts everywhere. A
sample of a model's map is not an observation, and a LiDAR block is rarely
representative of a whole region (an optical signal that saturates at high biomass maps
to the block's own mean there), so the satellite model is always *validated at the
field plots*: the LiDAR sample is an :class:`~models.biomass.validation.Auxiliary`
training set, used to fit and never to score. Scored this way, the training sources
``plots``, ``lidar_upscaled`` and ``plots+lidar_upscaled`` are compared like candidates
(:func:`fit_satellite_model`), and the conformal calibration on the held-out plots
carries both models' errors (the LiDAR model's error is inside the sample's targets) into
the satellite model's uncertainty, measured against field data rather than chained from
assumptions. One leak remains: the LiDAR model itself was fitted on the LiDAR-epoch
plots inside the cover, held-out ones included, which makes the ``lidar_upscaled``
scores slightly optimistic. Thresholds: ``models/data/model_rules.yaml`` (``upscaling``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.biomass.candidates import ModelSettings
from models.biomass.mapping import SatelliteSource
from models.biomass.selection import FittedModel, fit_plots
from models.biomass.validation import Auxiliary
from models.datafiles import data_yaml
from models.errors import ModelDomainError


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


def upscaled_sample(
    cells: pd.DataFrame, lidar_model: FittedModel, features: Sequence[str]
) -> pd.DataFrame:
    """The LiDAR model's AGB (``agb_mg_ha``) at sampled cells, on the cells that have it
    and every one of ``features`` (both models' predictors).

    Raises
    ------
    ModelDomainError
        Fewer usable cells than ``upscaling.min_sample_cells`` (``model_rules.yaml``).
    """
    table = cells.assign(agb_mg_ha=lidar_model.model.predict(cells))
    ok = table[[*features, "agb_mg_ha"]].notna().all(axis=1)
    table = table.loc[ok].reset_index(drop=True)
    if len(table) < data_yaml("model_rules.yaml")["upscaling"]["min_sample_cells"]:
        raise ModelDomainError(
            f"LiDAR upscaling: only {len(table)} usable sample cells in the LiDAR cover; lower "
            "model.upscale_spacing_m or model.lidar_min_fraction"
        )
    return table


def fit_satellite_model(
    plots: pd.DataFrame,
    sample: pd.DataFrame | None,
    features: Sequence[str],
    *,
    settings: ModelSettings,
    seed: int,
    training: Literal["auto"] | SatelliteSource,
    share: float,
    sample_info: Mapping[str, Any],
) -> tuple[SatelliteSource, FittedModel]:
    """The satellite model of the best (``training="auto"``) or the given training source.

    Every source is scored at the same held-out field plots (:class:`Auxiliary`), so
    their spatial-CV RMSEs compare like for like. ``sample`` is the LiDAR-map sample
    (:func:`upscaled_sample`, described by ``sample_info``), needed by every source but
    ``plots``; it carries ``share`` of the training weight next to the plots. The chosen
    model's card records its training and the sources compared.

    Raises
    ------
    ModelDomainError
        A source's model cannot be fitted (the message names the source).
    """
    available: list[SatelliteSource] = ["plots"]
    if sample is not None:
        available += ["lidar_upscaled", "plots+lidar_upscaled"]
    wanted = available if training == "auto" else [training]
    fitted: dict[SatelliteSource, FittedModel] = {}
    for src in wanted:
        aux = None
        if src != "plots" and sample is not None:
            aux = Auxiliary(
                table=sample,
                agb_mg_ha=sample["agb_mg_ha"].to_numpy(dtype=np.float64),
                x_m=sample["x_m"].to_numpy(dtype=np.float64),
                y_m=sample["y_m"].to_numpy(dtype=np.float64),
                share=1.0 if src == "lidar_upscaled" else share,
            )
        try:
            fitted[src] = fit_plots(plots, features, settings=settings, seed=seed, auxiliary=aux)
        except ModelDomainError as err:
            raise ModelDomainError(f"satellite ({src}) model: {err}") from None

    def rmse(src: SatelliteSource) -> float:
        c = fitted[src].card
        return float(c["candidates"][c["chosen"]]["spatial_cv"]["rmse_mg_ha"])

    best, rule = simplest_within_one_se(fitted, rmse)
    compared: dict[str, Any] = {
        src: {
            "chosen_candidate": f.card["chosen"],
            "spatial_cv_rmse_mg_ha": rmse(src),
            "spatial_cv_bias_mg_ha": f.card["candidates"][f.card["chosen"]]["spatial_cv"][
                "bias_mg_ha"
            ],
        }
        for src, f in fitted.items()
    }
    fitted[best].card["training"] = {
        "source": best,
        "n_plots": len(plots) if best != "lidar_upscaled" else 0,
        **({"lidar_sample": sample_info} if best != "plots" else {}),
        "scored_at": f"{len(plots)} field plot-epochs (spatially blocked CV)",
        "sources_compared": compared,
        **({"one_standard_error_rule": rule} if rule else {}),
    }
    return best, fitted[best]


def simplest_within_one_se(
    fitted: Mapping[SatelliteSource, FittedModel], rmse: Callable[[SatelliteSource], float]
) -> tuple[SatelliteSource, dict[str, Any]]:
    """The training source to keep: the field plots alone, unless the source of the lowest
    spatial-CV RMSE beats them by more than one standard error.

    The "one-standard-error rule" (Hastie, Tibshirani & Friedman 2009, *The Elements of
    Statistical Learning*, 2nd ed., §7.10): among models whose CV error is within one SE
    of the best, take the simplest. Here the simplest is the model trained on the field
    plots alone (no LiDAR-map sample, so no second model's error in its targets). Both
    are scored at the same held-out plots, so the SE is that of the paired difference of
    their squared errors, ``sd(d) / sqrt(n)`` with ``d_i = e_plots,i^2 - e_best,i^2``. A
    source that wins by less than that is noise of the CV: choosing it anyway would let
    a small change of the inputs flip the maps. Returns the source and what the rule saw
    (empty when there was nothing to compare).
    """
    best = min(fitted, key=rmse)
    if best == "plots" or "plots" not in fitted:
        return best, {}
    err = {
        src: np.array([r["predicted"] - r["observed"] for r in fitted[src].card["cv_predictions"]])
        for src in ("plots", best)
    }
    d = err["plots"] ** 2 - err[best] ** 2
    se = float(d.std(ddof=1) / np.sqrt(d.size))
    kept: SatelliteSource = best if float(d.mean()) > se else "plots"
    return kept, {
        "lowest_cv_rmse": best,
        "mse_gain_mg2_ha2": float(d.mean()),
        "se_of_gain_mg2_ha2": se,
        "kept": kept,
    }
