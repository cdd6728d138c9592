"""Steps of the ``model`` stage: each prepares a science call from the run's rasters and
parameters, makes it, and turns its errors into the pipeline's.

:mod:`pipeline.stages.model` wires them together; the predictor tables come from
:mod:`pipeline.samples`, the science from :mod:`models.biomass`, :mod:`models.landuse`.
A step whose science finds too little data to work with records why in the model card
(``{"skipped": reason}``) where the run can go on without it (land-use change, per-cell
support), and fails with :class:`~pipeline.errors.ScienceDomainError` where it cannot.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from models.biomass import (
    SOURCE_BASELINE,
    SOURCE_SATELLITE_COMMON,
    BiomassMapper,
    CellSupport,
    FittedModel,
    ModelSettings,
    SatelliteSource,
    fit_plots,
    fit_satellite_model,
    fold_map_values,
    granularity_cell_support,
    upscaled_sample,
)
from models.datafiles import data_yaml
from models.errors import ModelDomainError
from models.landuse import fit_land_use, judge_parcels
from models.plot_biomass import GRANULARITY_COLUMN
from models.survey.crossfit import systematic_cells
from pipeline.composite import single_sensor_bands
from pipeline.config import ModelParams
from pipeline.contracts import (
    FOLD_MAP_PREFIX,
    PLOT_BIOMASS_RELPATH,
    fold_map_column,
)
from pipeline.errors import ConfigError, InputDataError, PipelineWarning, ScienceDomainError
from pipeline.features import focal_mean, grid_extent
from pipeline.samples import (
    FOREST_BAND,
    block_table,
    joint_cover,
    land_use_cells,
    lidar_cover,
    sampled_cells,
    upscaling_cells,
)
from pipeline.units import M2_PER_HA


def settings_from(params: ModelParams) -> ModelSettings:
    """The science-side settings object from the config section (same field names)."""
    return ModelSettings(**{f.name: getattr(params, f.name) for f in fields(ModelSettings)})


def lidar_model(
    table: pd.DataFrame,
    epochs: tuple[str, ...],
    features: list[str],
    p: ModelParams,
    seed: int,
    card: dict[str, Any],
) -> tuple[FittedModel | None, pd.DataFrame]:
    """The plot->LiDAR model, fitted on the plot-epochs of the LiDAR ``epochs`` inside that
    epoch's flight (``lidar_flight_fraction``) when there are ``model.min_lidar_plots``
    of them, and those plot-epochs (recorded in ``card``, by epoch)."""
    plots = table.loc[
        (
            table["epoch"].isin(epochs)
            & (table["lidar_flight_fraction"].fillna(0) >= p.lidar_min_fraction)
            & table[features].notna().all(axis=1)
            & np.isfinite(table["agb_mg_ha"])
        ).to_numpy()
    ]
    card["lidar_plots"] = len(plots)
    card["lidar_plots_by_epoch"] = {e: int((plots["epoch"] == e).sum()) for e in epochs}
    if len(plots) < p.min_lidar_plots:
        card["lidar_model"] = {
            "skipped": f"{len(plots)} plots inside the LiDAR cover, "
            f"model.min_lidar_plots is {p.min_lidar_plots}"
        }
        return None, plots
    try:
        fitted = fit_plots(plots, features, settings=settings_from(p), seed=seed)
    except ModelDomainError as err:
        raise ScienceDomainError(f"LiDAR model: {err}") from None
    card["lidar_model"] = fitted.card
    return fitted, plots


def warn_flown_once(
    first: np.ndarray,
    lidars: Mapping[str, xr.DataArray],
    epochs: Sequence[str],
    min_fraction: float,
) -> dict[str, Any]:
    """Count the cells the first flight covers (``first``, its :func:`lidar_cover`) and
    those every epoch's flight covers (the maps' LiDAR cells,
    :func:`pipeline.samples.joint_cover`), and warn when the first flight covers cells the
    maps then give to the satellite model."""
    joint = joint_cover(lidars, epochs)
    every = lidar_cover(next(iter(joint.values())), min_fraction=min_fraction) if joint else None
    n_first, n_every = int(first.sum()), 0 if every is None else int(every.sum())
    if n_every < n_first:
        flown = ", ".join(lidars)
        warnings.warn(
            PipelineWarning(
                f"model: {n_first - n_every:,} of the {n_first:,} cells of the first LiDAR "
                f"flight were not flown at every epoch of the run (flights: {flown}; epochs: "
                f"{', '.join(epochs)}); the satellite model maps them at every epoch, so that "
                "no cell's change mixes two models (docs/lidar.md); the LiDAR model maps "
                f"{n_every:,} cells",
                code="lidar_cells_flown_once",
                values={
                    "once": f"{n_first - n_every:,}",
                    "first": f"{n_first:,}",
                    "flown": flown,
                    "epochs": ", ".join(epochs),
                    "every": f"{n_every:,}",
                },
            ),
            stacklevel=2,
        )
    return {"first_flight": n_first, "every_epoch": n_every}


def upscaling_sample(
    lidar: xr.DataArray,
    cover: np.ndarray,
    sat_stack: xr.DataArray,
    lidar_model: FittedModel,
    lidar_feats: Sequence[str],
    sat_features: Sequence[str],
    p: ModelParams,
    seed: int,
    support_px: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The LiDAR-model map's thinned sample with satellite features, and its record."""
    cells, spacing_m = upscaling_cells(
        lidar, cover, sat_stack, lidar_feats, spacing_m=p.upscale_spacing_m,
        max_samples=p.upscale_max_samples, seed=seed, support_px=support_px,
    )  # fmt: skip
    try:
        sample = upscaled_sample(cells, lidar_model, [*lidar_feats, *sat_features])
    except ModelDomainError as err:
        raise ScienceDomainError(str(err)) from None
    info = {
        "source": "lidar_upscaled",
        "n": len(sample),
        "spacing_m": spacing_m,
        "lidar_cells": int(cover.sum()),
    }
    return sample, info


def satellite_model(
    plots: pd.DataFrame,
    sample: pd.DataFrame | None,
    sample_info: dict[str, Any],
    features: Sequence[str],
    p: ModelParams,
    seed: int,
    *,
    training: SatelliteSource | None = None,
) -> tuple[SatelliteSource, FittedModel]:
    """The satellite model of the configured (or the best) training source; ``training``
    overrides ``model.satellite_training``."""
    if p.satellite_training not in ("auto", "plots") and sample is None:
        raise ConfigError(
            f"model.satellite_training {p.satellite_training!r} needs a LiDAR model, and this "
            "run has none (no LiDAR tiles, or fewer LiDAR plots than model.min_lidar_plots)"
        )
    try:
        return fit_satellite_model(
            plots, sample, features, settings=settings_from(p), seed=seed,
            training=training or p.satellite_training, share=p.upscale_share,
            sample_info=sample_info,
        )  # fmt: skip
    except ModelDomainError as err:
        raise ScienceDomainError(str(err)) from None


def common_band_model(
    table: pd.DataFrame,
    sample: pd.DataFrame | None,
    sample_info: dict[str, Any],
    features: Sequence[str],
    source: SatelliteSource,
    p: ModelParams,
    seed: int,
) -> tuple[FittedModel | None, pd.DataFrame, dict[str, Any]]:
    """The fallback satellite model on the predictors both sensors give, its plots and
    its model-card record.

    ``features`` minus the Sentinel-2-only bands and indices
    (:func:`pipeline.composite.single_sensor_bands`), trained on the same ``source`` as
    the satellite model, on every plot-epoch that has these predictors (also those seen
    only by Landsat, which the satellite model cannot use), and selected, validated and
    calibrated the same way (spatially blocked CV). ``None`` when no feature is
    single-sensor.
    """
    single = set(single_sensor_bands())
    common = [f for f in features if f not in single]
    if len(common) == len(features):
        return None, table.iloc[:0], {"skipped": "the satellite model uses no Sentinel-2-only band"}
    ok = table[common].notna().all(axis=1) & np.isfinite(table["agb_mg_ha"])
    plots = table.loc[ok.to_numpy()].reset_index(drop=True)
    _, fitted = satellite_model(plots, sample, sample_info, common, p, seed, training=source)
    record = {
        "model_source": SOURCE_SATELLITE_COMMON,
        "used": "where a cell lacks a Sentinel-2-only predictor of the satellite model",
        "left_out": sorted(single & set(features)),
    }
    fitted.card.update(record)
    return fitted, plots, fitted.card


def land_use(
    parcels: gpd.GeoDataFrame,
    spectral_stacks: Mapping[str, xr.DataArray],
    p: ModelParams,
    *,
    epochs: Sequence[str],
    forest_land_classes: Sequence[str],
    seed: int,
    support_px: int,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Forest-land parcels that were not forest at each epoch other than the parcel
    layer's (``{epoch: [parcel_id, ...]}``), with the model-card record.

    The classifier's features are the spectral predictors (``spectral_stacks``: composite
    and terrain, not the parcel classes, which come from the labels' layer) at plot support.
    """
    ref = p.parcels_epoch or epochs[-1]
    if ref not in spectral_stacks:
        raise ConfigError(f"model.parcels_epoch {ref!r} is not one of the epochs {list(epochs)}")
    if "parcel_id" not in parcels.columns or "land_class" not in parcels.columns:
        raise InputDataError(
            "parcels: columns 'parcel_id' and 'land_class' are needed to judge land-use "
            "change; add them or set model.land_use_change: false"
        )
    stacks = {e: focal_mean(st, size_px=support_px) for e, st in spectral_stacks.items()}
    forest, other, cells_at = land_use_cells(
        parcels, stacks, ref=ref, forest_land_classes=forest_land_classes,
        spacing_m=p.land_use_spacing_m, max_samples=p.upscale_max_samples, seed=seed,
    )  # fmt: skip
    try:
        clf = fit_land_use(
            forest, other, features=[str(b) for b in stacks[ref]["band"].to_numpy()],
            block_m=p.cv_block_m, n_folds=p.cv_folds, n_estimators=p.rf_n_estimators,
            min_samples_leaf=p.rf_min_samples_leaf, seed=seed,
        )  # fmt: skip
    except ModelDomainError as err:
        return {}, {"skipped": str(err)}
    ids = parcels["parcel_id"].astype(str).to_numpy()
    judged = {e: judge_parcels(clf, cells_at(e), ids) for e in epochs if e != ref}
    rule = data_yaml("model_rules.yaml")["land_use"]["rule"]
    record = {**clf.card, "parcels_epoch": ref, "rule": rule, **judged}
    return {e: j["non_forest_parcels"] for e, j in judged.items()}, record


def cell_support(
    plot_biomass: pd.DataFrame, p: ModelParams, *, support_px: int, cell_m: float
) -> tuple[CellSupport | None, dict[str, Any]]:
    """Change of support from the maps' window to one cell from the plots' stem
    granularity (:func:`models.biomass.granularity_cell_support`; every plot-epoch of the
    plot table, monitoring plots included: it describes the stands, not the map), with
    its model-card record."""
    if GRANULARITY_COLUMN not in plot_biomass.columns:
        return None, {
            "skipped": f"{PLOT_BIOMASS_RELPATH} has no {GRANULARITY_COLUMN!r} column (a plot "
            "table from before it existed): per-cell SDs are those of the window"
        }
    try:
        cs = granularity_cell_support(
            plot_biomass["agb_mg_ha"].to_numpy(dtype=np.float64),
            plot_biomass[GRANULARITY_COLUMN].to_numpy(dtype=np.float64),
            cell_m2=cell_m**2, window_m2=(support_px * cell_m) ** 2,
            interval=p.interval, n_bins=p.cell_support_bins,
        )  # fmt: skip
    except ModelDomainError as err:
        return None, {"skipped": str(err)}
    return cs, cs.describe()


def fold_map_sample(
    mapper: BiomassMapper, stacks: Mapping[str, xr.DataArray], *, target_cells: int, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The map and its fold maps (:func:`models.biomass.fold_map_values`, AGB in Mg/ha) at
    the forest-land cells of a systematic sample of the grid
    (:func:`models.survey.crossfit.systematic_cells`, about ``target_cells`` cells of the
    grid, the same cells at every epoch), and its model-card record.

    ``stacks`` are the epochs' predictor stacks as the ``predict`` stage builds them
    (:func:`pipeline.samples.predictor_stacks`), so a cell's values are the map's. Columns:
    ``epoch``, ``x_m``, ``y_m`` (the cell's centre), ``model_source``, ``agb_mg_ha`` and
    ``agb_fold_<k>_mg_ha`` per fold ``k``. Land not yet forest at an epoch holds the
    baseline stock 0 in every map (``model_source`` 5); a cell without a value is empty in
    every map.
    """
    grid = next(iter(stacks.values()))
    ny, nx = grid.sizes["y"], grid.sizes["x"]
    rows, cols, probability = systematic_cells(
        target_cells=target_cells, candidates=ny * nx, seed=seed
    )
    rr, cc = np.meshgrid(np.arange(ny)[rows], np.arange(nx)[cols], indexing="ij")
    parts = []
    for epoch, stack in stacks.items():
        cells = sampled_cells(stack, rr.reshape(-1), cc.reshape(-1))
        names = [str(b) for b in stack["band"].to_numpy()]
        table, baseline = block_table(cells[names].to_numpy().T[:, :, None], names=names)
        forest = (
            np.ones(len(table), dtype=bool)
            if FOREST_BAND not in names
            else (cells[FOREST_BAND] != 0).to_numpy()
        )
        full, source, folds = fold_map_values(mapper, table.loc[forest], epoch=epoch)
        source[baseline[forest]] = SOURCE_BASELINE
        full[baseline[forest]] = 0.0
        folds[baseline[forest]] = 0.0
        part = pd.DataFrame(
            {
                "epoch": epoch,
                "x_m": cells["x_m"].to_numpy()[forest],
                "y_m": cells["y_m"].to_numpy()[forest],
                "model_source": source,
                "agb_mg_ha": full,
            }
        )
        for k in range(folds.shape[1]):
            part[fold_map_column(k)] = folds[:, k]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    _, _, _, _, res_x, res_y = grid_extent(grid)
    record = {
        "method": "systematic sample of the grid's cells with a seeded random start; the "
        "forest-land cells are written (models.survey.crossfit)",
        "grid_cells": int(rr.size),
        "forest_cells": {e: int((table["epoch"] == e).sum()) for e in stacks},
        "spacing_cells": int(rows.step),
        "inclusion_probability": probability,
        "cell_ha": abs(res_x * res_y) / M2_PER_HA,
        "n_folds": int(sum(c.startswith(FOLD_MAP_PREFIX) for c in table.columns)),
    }
    return table, record
