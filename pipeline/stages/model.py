"""Stage ``model``: features at plots, model selection by spatial CV, LiDAR upscaling.

What it does, in order (predictor tables in :mod:`pipeline.samples`; the science in
:mod:`models.biomass`, :mod:`models.landuse` and :mod:`models.plot_biomass`):

1. Extracts predictors at every plot square, area-weighted. The plots of a carbon
   project's monitoring sample (``sample == "project"`` in the plot layer) train no model:
   the maps are its auxiliary data, and a model-assisted estimate is design-unbiased only
   when the auxiliary values do not depend on the sample (Särndal et al. 1992 §6.3; see
   :mod:`pipeline.stages.estimate`); their residuals serve step 4. Per epoch the composite
   bands and indices plus terrain and, with a parcel layer, the share of the plot in
   each class of its ``model.parcel_class_column`` (forest type); from
   ``lidar/metrics.tif`` (and each repeat flight's) the LiDAR metrics, the share of the
   plot its flight covers (``lidar_flight_fraction``) and the share every epoch's flight
   covers (``lidar_fraction``, where the maps take the LiDAR model).
2. Where enough plots of the LiDAR epoch lie inside the LiDAR cover
   (``lidar_flight_fraction >= lidar_min_fraction``), fits the plot->LiDAR model: candidates
   (``model.candidates``) compared by spatially blocked CV. A repeat flight of another
   epoch (``sources.lidar_repeat``, ``lidar/metrics_<epoch>.tif``) adds its epoch's plots
   inside its cover to the same model (one relation of AGB to canopy structure, as the
   indirect approach to change assumes), and the model maps that epoch there too.
3. LiDAR-assisted upscaling: a sample of the LiDAR-model map thinned to one cell per
   ``upscale_spacing_m`` can train the satellite-only model, which is trained on the
   field plots, that sample, or both (``satellite_training``; ``auto``: the plots alone
   unless a source with the sample lowers the spatial-CV error by more than one standard
   error, :func:`models.biomass.upscaling.simplest_within_one_se`), and always scored and
   calibrated at held-out field plots. A
   second, fallback satellite model on the predictors both Sentinel-2 and Landsat give
   (``common_band_model`` of the card, ``model_source`` 6) maps the cells whose season was
   clear only in Landsat scenes, where the Sentinel-2-only bands are empty.
4. Corrects each epoch's satellite map bias and estimates the epochs' error correlation;
   the satellite models' SD calibration and that correlation pool the held-out residuals
   with the final maps' residuals at the monitoring plots, independent errors of the maps
   themselves (:func:`models.biomass.correct_epochs`; the maps' values, and so the
   estimate stage's auxiliary data, do not depend on them; without a monitoring sample,
   the held-out residuals alone, as the card's ``independent_plots`` says). A monitoring
   plot whose square straddles its stratum's frame in ``sources.plot_design`` tallied
   only the trees inside the frame (the buffer method) and is left out of both
   (:func:`pipeline.samples.monitoring_plots`): its value is not its square's. Describes
   the change of support to one cell and, with a parcel layer, judges which
   forest-land parcels were not yet forest at the other epochs.
5. Writes the maps' rule at every training plot-epoch into ``plot_features.csv``: its
   in-sample prediction (``fitted_mg_ha``), its cross-fitted one (``held_out_mg_ha``,
   the out-of-fold prediction of the model that maps the plot in its random split of
   whole plots, with the map's epoch offset), the ``model_source`` and the plot's
   ``fold`` (in which that model held it out); the estimate stage uses the difference to
   make the maps usable as auxiliary data at the plots that trained them.
6. Writes the map and its fold maps (each model the plots trained replaced by its
   fold model of that split, :func:`models.biomass.fold_map_values`) at the forest-land
   cells of a systematic sample of the grid (``model.fold_map_cells``), every epoch's
   predictors built as the ``predict`` stage builds them, into ``fold_maps.csv``
   (:func:`pipeline.model_steps.fold_map_sample`): the estimate stage's population
   correction of the cross-fitted estimate (:mod:`models.survey.crossfit`).
7. Derives the plot table's own conversion factors as ratio estimators (no factor sits
   here: they come from the species tables of the plots stage).

Signature (the runner passes ``.tif`` inputs as lazy DataArrays, dims ``band, y, x``)::

    model(job: ModelJob, *, plot_biomass: DataFrame, plot_locations: GeoDataFrame,
          composites: Mapping[epoch, DataArray] | Sequence[DataArray] (job.epochs order),
          terrain: DataArray, lidar_metrics: DataArray | None = None,
          lidar_repeat: Mapping[epoch, DataArray] | None = None,
          parcels: GeoDataFrame | None = None, design: GeoDataFrame | None = None)
    -> {"model/model_card.json": dict, "model/plot_features.csv": DataFrame,
        "model/fold_maps.csv": DataFrame, "model/models.pkl": bytes}

``models.pkl`` is a pickle of ``{"mapper": BiomassMapper, "conversion": {...},
"support_px": int, "parcel_classes": {"column", "classes"} | None,
"non_forest_parcels": {epoch: [parcel_id, ...]}}`` read by the ``predict`` stage, which
unpickles it only when its sha256 is the one the run's manifest recorded
(:func:`pipeline.contracts.load_models`).
Command: ``forest-carbon fit`` (see :mod:`pipeline.commands.fit`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from models.biomass import (
    BiomassMapper,
    FittedModel,
    accuracy_at_plots,
    correct_epochs,
    cross_fitted_at_plots,
)
from models.errors import ModelDomainError, PlotDataError
from models.plot_biomass import conversion_factors
from pipeline import model_steps as steps
from pipeline.config import Config, ModelParams
from pipeline.contracts import (
    FOLD_MAP_BASE_COLUMNS,
    FOLD_MAPS_RELPATH,
    MODEL_CARD_RELPATH,
    MODELS_RELPATH,
    PLOT_BIOMASS_RELPATH,
    PLOT_FEATURES_RELPATH,
    TERRAIN_RELPATH,
    RunLayout,
    composites_by_epoch,
    lidar_by_epoch,
    open_raster,
    predictor_inputs,
)
from pipeline.errors import ConfigError, InputDataError, ScienceDomainError
from pipeline.features import grid_extent, terrain_features
from pipeline.samples import (
    lidar_cover,
    lidar_predictors,
    monitoring_plots,
    plot_support_px,
    plot_table,
    predictor_stacks,
    satellite_stacks,
)
from pipeline.stage import Stage

REQUIRED_PLOT_COLUMNS = ("plot_id", "epoch", "agb_mg_ha")


@dataclass(frozen=True)
class ModelJob:
    """What the ``model`` stage needs from the config."""

    params: ModelParams
    epochs: tuple[str, ...]
    seed: int
    crs: str
    #: land classes of the parcel layer that are forest land (``PredictParams``)
    forest_land_classes: tuple[str, ...]
    #: write the fold maps (``stages.estimate.cross_fit``: the estimate stage chooses the
    #: cross-fitted inventory estimate, which needs them)
    fold_maps: bool = False


def model(
    job: ModelJob,
    *,
    plot_biomass: pd.DataFrame,
    plot_locations: gpd.GeoDataFrame,
    composites: Mapping[str, Any] | Sequence[Any],
    terrain: xr.DataArray | Path,
    lidar_metrics: xr.DataArray | Path | None = None,
    lidar_repeat: Mapping[str, xr.DataArray | Path] | None = None,
    parcels: gpd.GeoDataFrame | None = None,
    design: gpd.GeoDataFrame | None = None,
) -> dict[str, Any]:
    """Fit the biomass models of a run (see the module docstring)."""
    p = job.params
    missing = [c for c in REQUIRED_PLOT_COLUMNS if c not in plot_biomass.columns]
    if missing:
        raise InputDataError(f"{PLOT_BIOMASS_RELPATH}: column(s) {missing} missing")
    biomass = plot_biomass.assign(epoch=plot_biomass["epoch"].astype(str))
    monitoring, compared = monitoring_plots(plot_locations, design)
    project_ids = set(plot_locations.loc[monitoring, "plot_id"])
    straddling = set(plot_locations.loc[monitoring & ~compared, "plot_id"])
    comps = composites_by_epoch(composites, job.epochs)
    terr = terrain_features(open_raster(terrain), source=TERRAIN_RELPATH)
    spectral, sat_stacks, classes = satellite_stacks(
        comps, terr, parcels, class_column=p.parcel_class_column, inventory=p.parcel_inventory
    )
    lidar_epoch: str | None = None
    lidars: dict[str, xr.DataArray] = {}
    lidar_feats: list[str] = []
    if lidar_metrics is not None:
        lidar_epoch = p.lidar_epoch or job.epochs[0]
        lidars = {
            e: m.astype(np.float32)
            for e, m in lidar_by_epoch(
                lidar_metrics, lidar_repeat, epochs=job.epochs, lidar_epoch=lidar_epoch
            ).items()
        }
        lidar_feats = lidar_predictors(lidars[lidar_epoch], p.lidar_features)
    table = plot_table(
        biomass, sat_stacks, plot_locations, lidar=lidars, lidar_features=lidar_feats
    )
    # the monitoring plots train nothing; their residuals calibrate the SDs (step 4)
    is_project = table["plot_id"].isin(project_ids).to_numpy()
    independent, table = table.loc[is_project], table.loc[~is_project].reset_index(drop=True)
    independent = independent[~independent["plot_id"].isin(straddling)]
    card: dict[str, Any] = {
        "n_plot_epochs": len(table),
        "epochs": list(job.epochs),
        "seed": job.seed,
        "parcel_classes": classes
        or {
            "skipped": "no parcel layer, or neither model.parcel_class_column nor a "
            "sub-compartment record (model.parcel_inventory) to use"
        },
    }
    lidar_model: FittedModel | None = None
    lidar_plots = table.iloc[:0]
    if lidars:
        lidar_model, lidar_plots = steps.lidar_model(
            table, tuple(lidars), lidar_feats, p, job.seed, card
        )
    training_squares = plot_locations[~plot_locations["plot_id"].isin(project_ids)]
    support_px = plot_support_px(training_squares, sat_stacks[job.epochs[0]])
    card["support_window_px"] = support_px
    sat_features = [str(b) for b in sat_stacks[job.epochs[0]]["band"].to_numpy()]
    ok = table[sat_features].notna().all(axis=1) & np.isfinite(table["agb_mg_ha"])
    sat_plots = table.loc[ok.to_numpy()].reset_index(drop=True)
    cover: np.ndarray | None = None
    sample: pd.DataFrame | None = None
    sample_info: dict[str, Any] = {}
    if lidar_model is not None and lidar_epoch is not None:
        lidar = lidars[lidar_epoch]
        cover = lidar_cover(lidar, min_fraction=p.lidar_min_fraction)
        card["lidar_cells"] = steps.warn_flown_once(cover, lidars, job.epochs, p.lidar_min_fraction)
        sample, sample_info = steps.upscaling_sample(
            lidar, cover, sat_stacks[lidar_epoch], lidar_model, lidar_feats, sat_features,
            p, job.seed, support_px,
        )  # fmt: skip
    source, satellite = steps.satellite_model(
        sat_plots, sample, sample_info, sat_features, p, job.seed
    )
    common, common_plots, card["common_band_model"] = steps.common_band_model(
        table, sample, sample_info, sat_features, source, p, job.seed
    )
    mapper = BiomassMapper(
        satellite, source, lidar_model, lidar_epoch, p.lidar_min_fraction,
        lidar_repeat_epochs=tuple(e for e in lidars if e != lidar_epoch), common=common,
    )  # fmt: skip
    card["epoch_error_correlation"] = correct_epochs(
        mapper, sat_plots, job.epochs, interval=p.interval,
        bias_correction=p.epoch_bias_correction, common_plots=common_plots,
        independent=independent[np.isfinite(independent["agb_mg_ha"])],
    )  # fmt: skip
    card["independent_plots"] = {
        "n_plot_epochs": len(independent),
        "n_straddling_plots_left_out": len(straddling),
        "use": "pooled with the held-out residuals in the satellite models' calibration and "
        "epoch error correlation"
        if len(independent)
        else "none (no project monitoring sample): calibrated on the held-out residuals alone",
    }
    _, _, _, _, cell_m, _ = grid_extent(sat_stacks[job.epochs[0]])
    mapper.cell_support, card["cell_support"] = steps.cell_support(
        biomass, p, support_px=support_px, cell_m=float(cell_m)
    )
    card["satellite_model"] = satellite.card
    card["satellite_source"] = source
    card["lidar_epoch"] = lidar_epoch
    card["lidar_repeat_epochs"] = list(mapper.lidar_repeat_epochs)
    card["final_at_plots"] = accuracy_at_plots(mapper, table, job.epochs)
    # the maps' values at the training plots, in sample and cross-fitted (estimate stage)
    training = [(satellite, sat_plots), (common, common_plots), (lidar_model, lidar_plots)]
    table = table.merge(
        cross_fitted_at_plots(mapper, table, job.epochs, training),
        on=["plot_id", "epoch"],
        how="left",
        validate="one_to_one",
    )
    try:
        card["conversion"] = conversion = conversion_factors(
            plot_biomass, source=PLOT_BIOMASS_RELPATH
        )
    except PlotDataError as err:
        raise InputDataError(f"{PLOT_BIOMASS_RELPATH}: {err}") from None
    except ModelDomainError as err:
        raise ScienceDomainError(f"{PLOT_BIOMASS_RELPATH}: {err}") from None
    non_forest: dict[str, list[str]] = {}
    if p.land_use_change and parcels is not None:
        non_forest, card["land_use"] = steps.land_use(
            parcels, spectral, p, epochs=job.epochs, forest_land_classes=job.forest_land_classes,
            seed=job.seed, support_px=support_px,
        )  # fmt: skip
    else:
        card["land_use"] = {"skipped": "no parcel layer, or model.land_use_change is off"}
    bundle = {
        "mapper": mapper.without_fold_models(),
        "conversion": conversion,
        "support_px": support_px,
        "parcel_classes": classes,
        "non_forest_parcels": non_forest,
    }
    # the map and its fold maps at a sample of the cells the predict stage maps, for the
    # estimate stage's cross-fitted inventory estimate; only when it is to be chosen
    # (building the predictors over the grid costs minutes)
    fold_maps = pd.DataFrame(columns=list(FOLD_MAP_BASE_COLUMNS))
    if job.fold_maps:
        stacks = predictor_stacks(
            bundle, composites=composites, terrain=terrain, lidar_metrics=lidar_metrics,
            lidar_repeat=lidar_repeat, parcels=parcels, epochs=job.epochs,
            forest_land_classes=job.forest_land_classes,
        )  # fmt: skip
        fold_maps, card["fold_maps"] = steps.fold_map_sample(
            mapper, stacks, target_cells=p.fold_map_cells, seed=job.seed
        )
    else:
        card["fold_maps"] = {"skipped": "stages.estimate.cross_fit is false"}
    return {
        MODEL_CARD_RELPATH: card,
        PLOT_FEATURES_RELPATH: table,
        FOLD_MAPS_RELPATH: fold_maps,
        MODELS_RELPATH: pickle.dumps(bundle, protocol=5),
    }


def model_job(config: Config) -> ModelJob:
    """The stage's frozen parameters from a run config."""
    return ModelJob(
        params=config.stages.model,
        epochs=tuple(e.name for e in config.epochs),
        seed=config.seed,
        crs=config.crs,
        forest_land_classes=config.stages.predict.forest_land_classes,
        fold_maps=config.stages.estimate.cross_fit,
    )


def model_inputs(config: Config, layout: RunLayout) -> dict[str, Path | tuple[Path, ...]]:
    """Files the stage reads: plot table and squares, composites, terrain, LiDAR metrics."""
    if config.sources.plot_locations is None:
        raise ConfigError(
            "sources.plot_locations: the model stage needs the plot squares (plots.gpkg)"
        )
    inputs: dict[str, Path | tuple[Path, ...]] = {
        "plot_biomass": layout.path(PLOT_BIOMASS_RELPATH),
        "plot_locations": config.sources.plot_locations,
        **predictor_inputs(config, layout),
    }
    if config.sources.parcels is not None:  # classes, land use, the fold maps' forest land
        inputs["parcels"] = config.sources.parcels
    if config.sources.plot_design is not None:  # which monitoring plots straddle a frame
        inputs["design"] = config.sources.plot_design
    return inputs


STAGE = Stage(name="model", func=model, params=model_job, inputs=model_inputs)
