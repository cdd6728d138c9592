"""Stage ``model``: features at plots, model selection by spatial CV, LiDAR upscaling.

What it does, in order (science in :mod:`models.biomass`):

1. Extracts predictors at every plot square, area-weighted (:mod:`pipeline.features`):
   per epoch the composite bands and indices plus terrain (elevation, slope, northness,
   eastness) and, with a parcel layer, the share of the plot in each class of its
   ``model.parcel_class_column`` (forest type); from ``lidar/metrics.tif`` the LiDAR
   metrics and ``lidar_fraction``.
2. Where enough plots of the LiDAR epoch lie inside the LiDAR cover
   (``lidar_fraction >= lidar_min_fraction``), fits the plot->LiDAR model: candidates
   (``model.candidates``: power-law ABA, random forest, gradient boosting; log-linear
   ridge on request) compared by spatially blocked CV.
3. LiDAR-assisted upscaling: maps AGB with that model over the LiDAR cells and takes a
   systematic sample thinned to one cell per ``upscale_spacing_m`` (predictors at plot
   support: moving-window means, as in ``predict``). The satellite-only model is trained
   on the field plots of all epochs, on that sample, or on both (``satellite_training``;
   ``auto`` keeps the one with the lowest spatially blocked CV error), and every choice is
   scored and calibrated at the same held-out field plots (:class:`models.biomass.Auxiliary`),
   so its uncertainty carries the LiDAR model's error when the sample trained it.
4. Derives the plot table's own conversion factors as ratio estimators (sum of BGB over
   sum of AGB; carbon over AGB+BGB; CO2e over carbon): they come from the species
   tables of the plots stage (:mod:`models.allometry` data), so no factor sits here.

Signature (the runner passes ``.tif`` inputs as lazy DataArrays, dims ``band, y, x``)::

    model(job: ModelJob, *, plot_biomass: DataFrame, plot_locations: GeoDataFrame,
          composites: Mapping[epoch, DataArray] | Sequence[DataArray] (job.epochs order),
          terrain: DataArray, lidar_metrics: DataArray | None = None,
          parcels: GeoDataFrame | None = None)
    -> {"model/model_card.json": dict, "model/plot_features.csv": DataFrame,
        "model/models.pkl": bytes}

``models.pkl`` is a pickle of ``{"mapper": BiomassMapper, "conversion": {...},
"support_px": int, "parcel_classes": {"column", "classes"} | None}`` read by
the ``predict`` stage. Command: ``forest-carbon fit`` (see :mod:`pipeline.commands.fit`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import binary_erosion

from models.biomass import (
    Auxiliary,
    BiomassMapper,
    CellSupport,
    FittedModel,
    ModelDomainError,
    ModelSettings,
    PowerLawABA,
    SatelliteSource,
    accuracy,
    calibration_record,
    cell_support,
    epoch_corrections,
    epoch_error_correlation,
    select_and_fit,
    thinned_sample,
)
from models.landuse import fit_land_use
from pipeline import io
from pipeline.config import Config, ModelParams
from pipeline.errors import ConfigError, InputDataError, ScienceDomainError
from pipeline.features import (
    class_layers,
    concat_aligned,
    focal_mean,
    gather_cells,
    grid_extent,
    parcel_classes,
    parcel_index,
    plot_features,
    predictor_stack,
    support_window_px,
    terrain_features,
    with_band_names,
)
from pipeline.stage import RunLayout, Stage

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


def settings_from(params: ModelParams) -> ModelSettings:
    """The science-side settings object from the config section."""
    return ModelSettings(
        candidates=tuple(params.candidates),
        cv_block_m=params.cv_block_m,
        cv_folds=params.cv_folds,
        interval=params.interval,
        powerlaw_height=params.powerlaw_height,
        powerlaw_cover=params.powerlaw_cover,
        rf_n_estimators=params.rf_n_estimators,
        rf_min_samples_leaf=params.rf_min_samples_leaf,
        gb_max_iter=params.gb_max_iter,
        gb_learning_rate=params.gb_learning_rate,
        gb_min_samples_leaf=params.gb_min_samples_leaf,
        ridge_alpha=params.ridge_alpha,
    )


def open_raster(obj: xr.DataArray | Path | str) -> xr.DataArray:
    """A lazy DataArray from a DataArray or a GeoTIFF path (band names from descriptions)."""
    if isinstance(obj, xr.DataArray):
        return obj
    return io.open_raster(Path(obj))


def composites_by_epoch(
    composites: Mapping[str, Any] | Sequence[Any], epochs: Sequence[str]
) -> dict[str, xr.DataArray]:
    """Composites keyed by epoch name (a mapping, or a sequence in ``epochs`` order)."""
    if isinstance(composites, Mapping):
        missing = [e for e in epochs if e not in composites]
        if missing:
            raise InputDataError(f"composites missing for epoch(s) {missing}")
        return {e: open_raster(composites[e]) for e in epochs}
    items = list(composites)
    if len(items) != len(epochs):
        raise InputDataError(f"got {len(items)} composites for {len(epochs)} epochs {list(epochs)}")
    return {e: open_raster(c) for e, c in zip(epochs, items, strict=True)}


def lidar_for_epoch(
    lidar_metrics: xr.DataArray, *, epochs: Sequence[str], lidar_epoch: str | None
) -> tuple[str, xr.DataArray]:
    """The LiDAR epoch and its metrics with plain band names.

    Metrics of a second LiDAR epoch carry ``_<epoch>`` suffixes; the configured
    ``lidar_epoch`` (or the first suffixed epoch) is used. Unsuffixed metrics belong to
    ``lidar_epoch``, by default the first epoch.
    """
    da = with_band_names(lidar_metrics, source="lidar/metrics.tif")
    names = [str(b) for b in da["band"].to_numpy()]
    suffixed = [e for e in epochs if any(n.endswith(f"_{e}") for n in names)]
    if not suffixed:
        epoch = lidar_epoch or epochs[0]
        if epoch not in epochs:
            raise InputDataError(
                f"model.lidar_epoch {epoch!r} is not one of the epochs {list(epochs)}"
            )
        return epoch, da
    epoch = lidar_epoch or suffixed[0]
    keep = [n for n in names if n.endswith(f"_{epoch}")]
    if not keep:
        raise InputDataError(f"lidar/metrics.tif has no bands with suffix _{epoch} (has {names})")
    sub = da.sel(band=keep)
    return epoch, sub.assign_coords(band=[n.removesuffix(f"_{epoch}") for n in keep])


def lidar_predictors(lidar: xr.DataArray, params: ModelParams) -> list[str]:
    names = [str(b) for b in lidar["band"].to_numpy()]
    if params.lidar_features:
        missing = [f for f in params.lidar_features if f not in names]
        if missing:
            raise InputDataError(
                f"model.lidar_features {missing} not in lidar/metrics.tif ({names})"
            )
        return list(params.lidar_features)
    return [n for n in names if n.startswith("h_") or n.startswith("cover")]


def conversion_factors(plot_biomass: pd.DataFrame) -> dict[str, Any]:
    """Ratio estimators of the plot table: root-to-shoot, carbon fraction, CO2e per C."""
    needed = ("agb_mg_ha", "bgb_mg_ha", "carbon_mg_ha", "co2e_t_ha")
    missing = [c for c in needed if c not in plot_biomass.columns]
    if missing:
        raise InputDataError(
            f"plots/plot_biomass.csv: column(s) {missing} missing; the carbon conversion factors "
            "are taken from the plot table (written by the plots stage)"
        )
    t = plot_biomass.loc[:, list(needed)].dropna()
    agb, bgb, c, co2 = (t[n].sum() for n in needed)
    if agb <= 0 or c <= 0:
        raise ScienceDomainError("plots/plot_biomass.csv: total AGB or carbon is not positive")
    return {
        "root_to_shoot": float(bgb / agb),
        "carbon_fraction": float(c / (agb + bgb)),
        "co2e_per_c": float(co2 / c),
        "method": "ratio estimators over all plot-epochs of plots/plot_biomass.csv",
        "n_plot_epochs": len(t),
    }


def model(
    job: ModelJob,
    *,
    plot_biomass: pd.DataFrame,
    plot_locations: gpd.GeoDataFrame,
    composites: Mapping[str, Any] | Sequence[Any],
    terrain: xr.DataArray | Path,
    lidar_metrics: xr.DataArray | Path | None = None,
    parcels: gpd.GeoDataFrame | None = None,
) -> dict[str, Any]:
    """Fit the biomass models of a run (see the module docstring)."""
    p = job.params
    settings = settings_from(p)
    missing = [c for c in REQUIRED_PLOT_COLUMNS if c not in plot_biomass.columns]
    if missing:
        raise InputDataError(f"plots/plot_biomass.csv: column(s) {missing} missing")
    biomass = plot_biomass.assign(epoch=plot_biomass["epoch"].astype(str))
    comps = composites_by_epoch(composites, job.epochs)
    terr = terrain_features(open_raster(terrain))

    # spectral (composite + terrain) predictors, and with the parcel classes added
    spectral = {
        e: predictor_stack(
            comps[e], terr, sources=(f"composites/{e}.tif", "composites/terrain.tif")
        )
        for e in job.epochs
    }
    sat_stacks = spectral
    classes: dict[str, Any] | None = None
    if p.parcel_class_column is not None and parcels is not None:
        column = p.parcel_class_column
        classes = {"column": column, "classes": parcel_classes(parcels, column=column)}
        class_bands = class_layers(parcels, terr, **classes)
        sat_stacks = {
            e: concat_aligned(
                [st, class_bands], sources=(f"composites/{e}.tif", f"parcels ({column})")
            )
            for e, st in spectral.items()
        }
    sat_features = [str(b) for b in sat_stacks[job.epochs[0]]["band"].to_numpy()]
    tables = []
    for e in job.epochs:
        t = plot_features(sat_stacks[e], plot_locations).rename(
            columns={"valid_fraction": "sat_valid_fraction"}
        )
        tables.append(t.assign(epoch=e))
    feats = pd.concat(tables, ignore_index=True)

    lidar_epoch: str | None = None
    lidar_feats: list[str] = []
    lidar: xr.DataArray | None = None
    if lidar_metrics is not None:
        lidar_epoch, lidar = lidar_for_epoch(
            open_raster(lidar_metrics), epochs=job.epochs, lidar_epoch=p.lidar_epoch
        )
        lidar = lidar.astype(np.float32)
        lidar_feats = lidar_predictors(lidar, p)
        if "lidar_fraction" not in lidar["band"].to_numpy():
            raise InputDataError("lidar/metrics.tif: band 'lidar_fraction' missing")
        lt = plot_features(lidar.sel(band=[*lidar_feats, "lidar_fraction"]), plot_locations)
        lt = lt.drop(columns=["x_m", "y_m", "valid_fraction"]).assign(epoch=lidar_epoch)
        feats = feats.merge(lt, on=["plot_id", "epoch"], how="left")

    keep_cols = [
        c for c in ("plot_id", "epoch", "agb_mg_ha", "agb_sd_mg_ha") if c in biomass.columns
    ]
    table = biomass.loc[:, keep_cols].merge(feats, on=["plot_id", "epoch"], how="inner")
    if table.empty:
        raise InputDataError(
            "no plot of plots/plot_biomass.csv matches plots.gpkg and the epochs "
            f"{list(job.epochs)} (check plot_id and epoch values)"
        )
    y_all = table["agb_mg_ha"].to_numpy(dtype=np.float64)

    card: dict[str, Any] = {
        "n_plot_epochs": len(table),
        "epochs": list(job.epochs),
        "seed": job.seed,
        "parcel_classes": classes
        or {"skipped": "no parcel layer, or model.parcel_class_column is null"},
    }
    lidar_model: FittedModel | None = None
    if lidar is not None and lidar_epoch is not None:
        in_lidar = (
            (table["epoch"] == lidar_epoch)
            & (table["lidar_fraction"].fillna(0) >= p.lidar_min_fraction)
            & table[lidar_feats].notna().all(axis=1)
            & np.isfinite(y_all)
        ).to_numpy()
        card["lidar_plots"] = int(in_lidar.sum())
        if in_lidar.sum() >= p.min_lidar_plots:
            sub = table.loc[in_lidar]
            lidar_model = _fit(
                sub, sub["agb_mg_ha"].to_numpy(), lidar_feats, settings, job.seed, "LiDAR"
            )
            card["lidar_model"] = lidar_model.card
        else:
            card["lidar_model"] = {
                "skipped": f"{int(in_lidar.sum())} plots inside the LiDAR cover, "
                f"model.min_lidar_plots is {p.min_lidar_plots}"
            }

    support_px = _support_px(plot_locations, sat_stacks[job.epochs[0]])
    card["support_window_px"] = support_px
    ok = table[sat_features].notna().all(axis=1).to_numpy() & np.isfinite(y_all)
    sat_plots = table.loc[ok].reset_index(drop=True)
    sample: pd.DataFrame | None = None
    sample_info: dict[str, Any] = {}
    cover: np.ndarray | None = None
    if lidar_model is not None and lidar is not None and lidar_epoch is not None:
        cover = _lidar_cover(lidar, p)
        sample, sample_info = _upscaling_sample(
            lidar,
            cover,
            sat_stacks[lidar_epoch],
            lidar_model,
            lidar_feats,
            sat_features,
            p,
            job.seed,
            support_px,
        )
    source, satellite, sources_card = _satellite_model(
        sat_plots, sample, sat_features, settings, p, job.seed
    )
    satellite.card["training"] = {
        "source": source,
        "n_plots": len(sat_plots) if source != "lidar_upscaled" else 0,
        **({"lidar_sample": sample_info} if source != "plots" else {}),
        "scored_at": f"{len(sat_plots)} field plot-epochs (spatially blocked CV)",
        "sources_compared": sources_card,
    }
    mapper = BiomassMapper(satellite, source, lidar_model, lidar_epoch, p.lidar_min_fraction)
    _epoch_errors(mapper, sat_plots, job.epochs, p, card)
    if lidar is not None and cover is not None:
        lidar_plots = table.loc[in_lidar]
        mapper.cell_support, card["cell_support"] = _cell_support(
            lidar, cover, lidar_plots, p, support_px
        )
    else:
        card["cell_support"] = {
            "skipped": "no LiDAR model: per-cell SDs and intervals are those of the "
            "plot-sized window (the maps' support)"
        }
    card["satellite_model"] = satellite.card
    card["satellite_source"] = source
    card["lidar_epoch"] = lidar_epoch

    # end-to-end check of the final per-pixel rule at the plots (LiDAR-epoch plots inside
    # the LiDAR cover are in-sample for the LiDAR model: reported, not used to select)
    final = [mapper.predict(table.loc[table["epoch"] == e], epoch=e) for e in job.epochs]
    pred = np.concatenate([f[0].mean for f in final])
    lower = np.concatenate([f[0].lower for f in final])
    upper = np.concatenate([f[0].upper for f in final])
    obs = np.concatenate([y_all[(table["epoch"] == e).to_numpy()] for e in job.epochs])
    card["final_at_plots"] = {
        **accuracy(obs, pred),
        "interval_coverage": float(np.mean((obs >= lower) & (obs <= upper))),
        "note": "partly in-sample (plots trained the models); the CV figures are the honest ones",
    }
    conversion = conversion_factors(plot_biomass)
    card["conversion"] = conversion
    non_forest: dict[str, list[str]] = {}
    if p.land_use_change and parcels is not None:
        non_forest, card["land_use"] = _land_use(parcels, spectral, job, support_px)
    else:
        card["land_use"] = {"skipped": "no parcel layer, or model.land_use_change is off"}
    bundle = {
        "mapper": mapper,
        "conversion": conversion,
        "support_px": support_px,
        "parcel_classes": classes,
        "non_forest_parcels": non_forest,
    }
    blob = pickle.dumps(bundle, protocol=5)
    return {
        "model/model_card.json": card,
        "model/plot_features.csv": table,
        "model/models.pkl": blob,
    }


def _fit(
    table: pd.DataFrame,
    agb_mg_ha: np.ndarray,
    features: Sequence[str],
    settings: ModelSettings,
    seed: int,
    what: str,
    auxiliary: Auxiliary | None = None,
) -> FittedModel:
    try:
        return select_and_fit(
            table,
            np.asarray(agb_mg_ha, dtype=np.float64),
            x_m=table["x_m"].to_numpy(dtype=np.float64),
            y_m=table["y_m"].to_numpy(dtype=np.float64),
            features=features,
            settings=settings,
            seed=seed,
            auxiliary=auxiliary,
        )
    except ModelDomainError as err:
        raise ScienceDomainError(f"{what} model: {err}") from None


def _satellite_model(
    plots: pd.DataFrame,
    sample: pd.DataFrame | None,
    features: Sequence[str],
    settings: ModelSettings,
    p: ModelParams,
    seed: int,
) -> tuple[SatelliteSource, FittedModel, dict[str, Any]]:
    """The satellite model of the best (or the configured) training source.

    Every source is scored at the same held-out field plots (:class:`Auxiliary`), so
    their spatial-CV RMSEs compare like for like.
    """
    available: list[SatelliteSource] = ["plots"]
    if sample is not None:
        available += ["lidar_upscaled", "plots+lidar_upscaled"]
    wanted = available if p.satellite_training == "auto" else [p.satellite_training]
    if not set(wanted) <= set(available):
        raise ConfigError(
            f"model.satellite_training {p.satellite_training!r} needs a LiDAR model, and this "
            "run has none (no LiDAR tiles, or fewer LiDAR plots than model.min_lidar_plots)"
        )
    y = plots["agb_mg_ha"].to_numpy(dtype=np.float64)
    fitted: dict[SatelliteSource, FittedModel] = {}
    for src in wanted:
        aux = None
        if src != "plots" and sample is not None:
            aux = Auxiliary(
                table=sample,
                agb_mg_ha=sample["agb_mg_ha"].to_numpy(dtype=np.float64),
                x_m=sample["x_m"].to_numpy(dtype=np.float64),
                y_m=sample["y_m"].to_numpy(dtype=np.float64),
                share=1.0 if src == "lidar_upscaled" else p.upscale_share,
            )
        fitted[src] = _fit(plots, y, features, settings, seed, f"satellite ({src})", aux)

    def rmse(src: SatelliteSource) -> float:
        c = fitted[src].card
        return float(c["candidates"][c["chosen"]]["spatial_cv"]["rmse_mg_ha"])

    best = min(fitted, key=rmse)
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
    return best, fitted[best], compared


def _epoch_errors(
    mapper: BiomassMapper,
    plots: pd.DataFrame,
    epochs: Sequence[str],
    p: ModelParams,
    card: dict[str, Any],
) -> None:
    """Per-epoch bias correction of the satellite map and the epochs' error correlations.

    Both from the satellite model's held-out (spatial CV) predictions at the plots, which
    ``select_and_fit`` records in the order of ``plots``' rows.
    """
    held_out = pd.DataFrame(mapper.satellite.card["cv_predictions"])
    obs = held_out["observed"].to_numpy(dtype=np.float64)
    pred = held_out["predicted"].to_numpy(dtype=np.float64)
    plot_epochs = plots["epoch"].astype(str).tolist()
    corrections = epoch_corrections(obs, pred, plot_epochs)
    if p.epoch_bias_correction:
        mapper.epoch_offsets = {e: c.offset_mg_ha for e, c in corrections.items()}
        # intervals around the corrected map: calibrate on the corrected predictions
        shift = np.array([mapper.epoch_offsets.get(e, 0.0) for e in plot_epochs])
        pred = np.clip(pred + shift, 0.0, None)
        cal, record = calibration_record(obs, pred, interval=p.interval)
        mapper.satellite.calibration = cal
        mapper.satellite.card["uncertainty"] = {**record, "after": "the epoch bias correction"}
    mapper.satellite.card["epoch_bias_correction"] = {
        "applied": p.epoch_bias_correction,
        "method": "mean held-out residual of the epoch's plots (model-assisted, GREG)",
        **{e: asdict(c) for e, c in corrections.items()},
    }
    pairs: dict[str, Any] = {}
    for i, first in enumerate(epochs):
        for second in epochs[i + 1 :]:
            rho, n = epoch_error_correlation(
                obs,
                pred,
                epochs=plot_epochs,
                plot_ids=plots["plot_id"].astype(str).tolist(),
                first=first,
                second=second,
            )
            # None (JSON null) when too few plots were measured at both epochs
            pairs[f"{first}/{second}"] = {"rho": rho if np.isfinite(rho) else None, "n_plots": n}
    card["epoch_error_correlation"] = {
        **pairs,
        "method": "uncentred correlation sum(r1 r2) / sqrt(sum(r1^2) sum(r2^2)) of the "
        "satellite model's held-out residuals r at plots measured at both epochs",
    }


def _support_px(plots: gpd.GeoDataFrame, grid: xr.DataArray) -> int:
    """Window (cells) of the plots' support: median plot side over the grid resolution."""
    _, _, _, _, res_x, _ = grid_extent(grid)
    crs = grid.rio.crs if hasattr(grid, "rio") else None
    areas = (plots.to_crs(crs) if crs is not None and plots.crs is not None else plots).area
    return support_window_px(float(np.sqrt(np.median(areas))), res_x)


def _lidar_cover(lidar: xr.DataArray, p: ModelParams) -> np.ndarray:
    """Cells inside the LiDAR cover (``lidar_fraction >= model.lidar_min_fraction``)."""
    (frac,) = dask.compute(lidar.sel(band="lidar_fraction").data)
    return np.nan_to_num(np.asarray(frac, dtype=np.float64)) >= p.lidar_min_fraction


def _sampled_cells(stack: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
    """Values of ``stack`` at cells ``(rows, cols)``, a column per band, with the cells'
    ``x_m`` and ``y_m``."""
    (vals,) = dask.compute(gather_cells(stack, rows, cols).transpose("point", "band").data)
    names = [str(b) for b in stack["band"].to_numpy()]
    table = pd.DataFrame(np.asarray(vals, dtype=np.float64), columns=names)
    table["x_m"] = stack["x"].to_numpy()[cols]
    table["y_m"] = stack["y"].to_numpy()[rows]
    return table


def _upscaling_sample(
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
    """Thinned sample of the LiDAR-model map with satellite features at the same cells.

    Predictors are taken at plot support (moving-window means), as in ``predict``.
    """
    _, _, _, _, res_x, _ = grid_extent(lidar)
    step = max(1, round(p.upscale_spacing_m / res_x))
    rows, cols = thinned_sample(cover, step_px=step, max_samples=p.upscale_max_samples, seed=seed)
    both = concat_aligned(
        [lidar.sel(band=list(lidar_feats)), sat_stack],
        sources=("lidar/metrics.tif", "satellite predictors"),
    )
    table = _sampled_cells(focal_mean(both, size_px=support_px), rows, cols)
    table["agb_mg_ha"] = lidar_model.model.predict(table)
    ok = table[[*lidar_feats, *sat_features, "agb_mg_ha"]].notna().all(axis=1)
    table = table.loc[ok].reset_index(drop=True)
    if len(table) < 30:
        raise ScienceDomainError(
            f"LiDAR upscaling: only {len(table)} usable sample cells in the LiDAR cover; lower "
            "model.upscale_spacing_m or model.lidar_min_fraction"
        )
    info = {
        "source": "lidar_upscaled",
        "n": len(table),
        "spacing_m": step * res_x,
        "lidar_cells": int(cover.sum()),
    }
    return table, info


def _land_use(
    parcels: gpd.GeoDataFrame,
    spectral_stacks: Mapping[str, xr.DataArray],
    job: ModelJob,
    support_px: int,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Forest-land parcels that were not forest at each epoch other than the parcel
    layer's (``{epoch: [parcel_id, ...]}``), with the model-card record.

    See :mod:`models.landuse`. The classifier's features are the spectral predictors
    (``spectral_stacks``: composite and terrain, not the parcel classes, which come from
    the labels' layer) at plot support.
    """
    p = job.params
    ref = p.parcels_epoch or job.epochs[-1]
    if ref not in spectral_stacks:
        raise ConfigError(
            f"model.parcels_epoch {ref!r} is not one of the epochs {list(job.epochs)}"
        )
    if "parcel_id" not in parcels.columns or "land_class" not in parcels.columns:
        raise InputDataError(
            "parcels: columns 'parcel_id' and 'land_class' are needed to judge land-use "
            "change; add them or set model.land_use_change: false"
        )
    stacks = {e: focal_mean(st, size_px=support_px) for e, st in spectral_stacks.items()}
    features = [str(b) for b in stacks[ref]["band"].to_numpy()]
    is_forest = parcels["land_class"].isin(job.forest_land_classes).to_numpy()
    grid = stacks[ref]
    index = parcel_index(parcels, grid)
    row_of = np.arange(len(parcels))
    forest_cells = np.isin(index, 1 + row_of[is_forest])
    other_cells = np.isin(index, 1 + row_of[~is_forest])
    _, _, _, _, res_x, _ = grid_extent(grid)
    step = max(1, round(p.land_use_spacing_m / res_x))

    def cells(mask: np.ndarray, stack: xr.DataArray, seed: int, cap: int) -> pd.DataFrame:
        rows, cols = thinned_sample(mask, step_px=step, max_samples=cap, seed=seed)
        table = _sampled_cells(stack, rows, cols)
        table["parcel"] = index[rows, cols] - 1
        return table

    try:
        clf = fit_land_use(
            cells(forest_cells, grid, job.seed, p.upscale_max_samples),
            cells(other_cells, grid, job.seed + 1, p.upscale_max_samples),
            features=features,
            block_m=p.cv_block_m,
            n_folds=p.cv_folds,
            n_estimators=p.rf_n_estimators,
            min_samples_leaf=p.rf_min_samples_leaf,
            seed=job.seed,
        )
    except ModelDomainError as err:
        return {}, {"skipped": str(err)}
    non_forest: dict[str, list[str]] = {}
    judged: dict[str, Any] = {}
    for e in job.epochs:
        if e == ref:
            continue
        # every forest-land parcel, on the full systematic grid
        sample = cells(forest_cells, stacks[e], job.seed + 2, int(forest_cells.sum()))
        prob = clf.forest_probability(sample)
        ok = np.isfinite(prob)
        share = (
            pd.DataFrame({"parcel": sample["parcel"], "forest": prob >= 0.5})
            .loc[ok]
            .groupby("parcel")["forest"]
            .mean()
        )
        # land use is a parcel attribute: the majority of its cells decides
        ids = parcels["parcel_id"].astype(str).to_numpy()[share.index[share < 0.5].to_numpy()]
        non_forest[e] = sorted(ids.tolist())
        judged[e] = {"non_forest_parcels": non_forest[e], "parcels_judged": int(share.size)}
    rule = "forest at an epoch when the classifier calls at least half its sampled cells forest"
    record = {**clf.card, "parcels_epoch": ref, "rule": rule, **judged}
    return non_forest, record


def _cell_support(
    lidar: xr.DataArray, in_cover: np.ndarray, plots: pd.DataFrame, p: ModelParams, support_px: int
) -> tuple[CellSupport | None, dict[str, Any]]:
    """Change of support from the maps' window to one cell, with its model-card record.

    The reference field is the power-law ABA model (fitted on the LiDAR plots) applied to
    single-cell LiDAR metrics inside the LiDAR cover, whatever model the LiDAR cells are
    mapped with: a smooth monotone function of height and cover extrapolates to single
    cells, whose heights and covers range wider than the plots'; tree ensembles cap
    their predictions at the training range and would understate the cell-to-cell
    variation. Only cells whose whole window lies inside the cover count.
    """
    height, cover = p.powerlaw_height, p.powerlaw_cover
    names = [str(b) for b in lidar["band"].to_numpy()]
    if height not in names or cover not in names:
        return None, {"skipped": f"lidar/metrics.tif lacks {height!r} or {cover!r}"}
    try:
        law = PowerLawABA(height=height, cover=cover).fit(
            plots, plots["agb_mg_ha"].to_numpy(dtype=np.float64)
        )
    except ModelDomainError as err:
        return None, {"skipped": str(err)}
    if not in_cover.any():
        return None, {"skipped": "no cell inside the LiDAR cover"}
    # the cover's bounding box only: the rest of the grid has no LiDAR
    rows, cols = np.flatnonzero(in_cover.any(axis=1)), np.flatnonzero(in_cover.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = lidar.isel(y=box[0], x=box[1])
    (metrics,) = dask.compute(sub.sel(band=[height, cover]).data)
    table = pd.DataFrame(
        np.asarray(metrics, dtype=np.float64).reshape(2, -1).T, columns=[height, cover]
    )
    cell = law.predict(table).reshape(metrics.shape[1:])
    whole = binary_erosion(in_cover[box], structure=np.ones((support_px, support_px)))
    cell = np.where(in_cover[box], cell, np.nan)
    window = focal_mean(sub.isel(band=[0]).copy(data=cell[None]), size_px=support_px)
    window_values = np.where(whole, np.asarray(window.values)[0], np.nan)
    try:
        cs = cell_support(
            cell,
            window_values,
            interval=p.interval,
            n_bins=p.cell_support_bins,
            reference=f"power-law ABA ({law.describe()['form']}) on single-cell LiDAR metrics",
        )
    except ModelDomainError as err:
        return None, {"skipped": str(err)}
    return cs, cs.describe()


def model_job(config: Config) -> ModelJob:
    """The stage's frozen parameters from a run config."""
    return ModelJob(
        params=config.stages.model,
        epochs=tuple(e.name for e in config.epochs),
        seed=config.seed,
        crs=config.crs,
        forest_land_classes=config.stages.predict.forest_land_classes,
    )


def model_inputs(config: Config, layout: RunLayout) -> dict[str, Path | tuple[Path, ...]]:
    """Files the stage reads: plot table and squares, composites, terrain, LiDAR metrics."""
    if config.sources.plot_locations is None:
        raise ConfigError(
            "sources.plot_locations: the model stage needs the plot squares (plots.gpkg)"
        )
    inputs: dict[str, Path | tuple[Path, ...]] = {
        "plot_biomass": layout.path("plots/plot_biomass.csv"),
        "plot_locations": config.sources.plot_locations,
        **{f"composites.{e.name}": layout.path(f"composites/{e.name}.tif") for e in config.epochs},
        "terrain": layout.path("composites/terrain.tif"),
    }
    if config.sources.lidar_tiles is not None:
        inputs["lidar_metrics"] = layout.path("lidar/metrics.tif")
    p = config.stages.model
    if config.sources.parcels is not None and (p.parcel_class_column or p.land_use_change):
        inputs["parcels"] = config.sources.parcels
    return inputs


STAGE = Stage(name="model", func=model, params=model_job, inputs=model_inputs)
