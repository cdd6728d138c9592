"""Stage ``parcels``: carbon stock and sink per parcel by fractional-coverage zonal sums.

Every pixel contributes to a parcel in proportion to the share of its area inside the
parcel (exactextract, :mod:`pipeline.zonal`), never by its centre, so parcels that
partition an area add up to the area's total.

Per parcel (units in the column names):

- ``area_grid_ha``: area covered by the map grid, ``grid_fraction`` its share of
  the parcel (below 1: partly off the grid, warned; 0 is refused); ``forest_area_ha``:
  area where the sink is valid (forest with good quality at both epochs), the area the
  sink is summed over;
- ``mapped_share_<epoch>`` and ``sink_mapped_share``: the share of the parcel's forest
  land (cells whose ``n_valid`` band of the quality raster is not negative) that has a
  valid estimate; forest land no clear scene saw, or below ``min_quality``, has none.
  The totals are sums over the mapped cells, so below 1 they cover that share of the
  parcel only (they add up over any partition of the parcels, which a per-parcel
  imputation of the rest would not); with no mapped cell they are NaN, never 0. The
  stage warns how many parcels are partly or not mapped. Without an ``n_valid`` band the
  share is 1;
- ``carbon_<epoch>_mg_c`` per compared epoch, with its SD (``carbon_sd_<epoch>_mg_c``,
  by the chosen aggregation), both bounds (``carbon_sd_correlated_<epoch>_mg_c``,
  ``carbon_sd_independent_<epoch>_mg_c``) and interval bounds;
- ``sink_mg_c_yr``, ``sink_tco2e_yr``, their SDs (``sink_sd_*``, chosen aggregation;
  ``sink_sd_correlated_tco2e_yr``, ``sink_sd_independent_tco2e_yr``) and interval
  bounds, and the sink per forest hectare;
- ``mean_quality_<epoch>`` (coverage-weighted mean quality flag of the end epoch: the
  share of the parcel flagged good, band ``good`` of ``rasters/quality_<epoch>.tif``) and
  ``lidar_share`` (coverage-weighted mean LiDAR coverage fraction, band ``lidar_fraction``
  of ``lidar/metrics.tif``; 0 without LiDAR).

Aggregating pixel errors (``SinkParams.parcel_error_aggregation``). A parcel total is a
sum of pixel estimates whose errors come from one model: plot-level residual structure,
predictor biases and the model's own parameter error are shared by neighbouring pixels,
so a root-sum-of-squares (``independent``) SD shrinks as 1/sqrt(n pixels) where the true
error does not (McRoberts & Westfall 2016, doi:10.1007/s13595-015-0473-x), and the fully
correlated sum of pixel SDs (``correlated``) is an upper bound, far too wide for
parcels spanning several error ranges. ``spatial`` (the default) takes the correlation
from a model of the map errors: a correlogram ``rho(d)`` of two pixels of the same
parcel (nugget + exponential + a part shared by the whole parcel,
:class:`models.spatial_error.Correlogram`) fitted to the satellite map's residuals
against the LiDAR map inside the LiDAR cover (:mod:`pipeline.map_errors`),
written with its parameters and empirical points to ``parcels/error_correlogram.json``
(and to the table's ``attrs["error_correlogram"]``). A parcel's variance is then

    Var(carbon) = sum_i sum_j w_i s_i w_j s_j rho(d_ij)
    Var(sink)   = sum_i sum_j rho(d_ij) (a_i a_j + b_i b_j - 2 r a_i b_j) / years^2

with ``w`` the pixel area inside the parcel (ha), ``s`` the support SD, ``a``, ``b``
the start and end epochs' ``w s`` where the sink is valid and ``r`` the epochs' error
correlation of the sink (:mod:`pipeline.sink`): the sink's errors are assumed to share
the stocks' spatial shape (a separable model). Each double sum is one FFT convolution
on the parcel's bounding box (:func:`models.spatial_error.weighted_covariance`). With a
project monitoring sample in ``sources.plot_locations`` (``sample == "project"``) the
``shared`` parts come from the maps' errors at those plots instead (those whose square
lies wholly inside its stratum's frame), one for the stocks and one for the sink, which
then replaces ``rho(d)`` in the sink's sum
(:func:`pipeline.map_errors.plot_shared_parts`; the JSON file's ``monitoring_plots``,
``shared_lidar`` and ``sink``); without one, or with too few parcels holding two plots,
the LiDAR cover's fit serves both, as the file says. Where
no correlogram can be fitted (no LiDAR model, too small a cover) ``spatial`` falls back
to the correlated bound and the JSON file says why. Across parcels the errors stay
correlated (neighbours, the shared part): sum parcel SDs, or use the survey estimates
of :mod:`pipeline.stages.estimate`, for areas made of many parcels.

Intervals are ``mean -/+ z SD`` with z the normal quantile of the central
``SinkParams.interval`` (default 90 %: columns ``*_lo`` and ``*_hi`` are the 5th and 95th
percentiles).

Signatures
----------
``parcels_inputs(config, layout) -> {name: Path}``
    the six epoch rasters of :func:`pipeline.contracts.epoch_raster_inputs`,
    ``parcels`` = ``config.sources.parcels`` and, when LiDAR tiles are configured,
    ``lidar_metrics`` = ``lidar/metrics.tif``; for the ``spatial`` aggregation also the
    predictor rasters (``composites.<epoch>``, ``terrain``), ``models`` =
    ``model/models.pkl`` and every epoch's ``quality_maps`` of the predict stage, and with
    ``sources.plot_locations`` that layer (``plot_locations``) and ``plot_biomass`` =
    ``plots/plot_biomass.csv``.
``parcels_stage(job: SinkJob, *, parcels, carbon_start, carbon_end, carbon_sd_start,
carbon_sd_end, quality_start, quality_end, lidar_metrics=None, model_card=None,
models=None, composites=None, terrain=None, quality_maps=None, plot_locations=None,
plot_biomass=None) -> {relpath: table}``
    ``parcels/parcel_sink.gpkg`` (GeoDataFrame), ``parcels/parcel_sink.csv`` and
    ``parcels/error_correlogram.json`` (dict).

Run: ``forest-carbon run --region nanping --stages parcels``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from models.spatial_error import Correlogram
from pipeline.config import Config
from pipeline.contracts import (
    ERROR_CORRELOGRAM_RELPATH,
    LIDAR_METRICS_RELPATH,
    MODELS_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    PLOT_BIOMASS_RELPATH,
    RunLayout,
    SinkJob,
    correlation_input,
    epoch_raster_inputs,
    map_relpath,
    predictor_inputs,
    resolve_correlation,
    sink_job,
)
from pipeline.errors import ConfigError, PipelineWarning
from pipeline.map_errors import (
    fit_map_errors,
    lidar_residuals,
    plot_errors,
    plot_shared_parts,
)
from pipeline.parcel_sums import parcel_sink_table
from pipeline.samples import monitoring_plots
from pipeline.sink import as_band, support_sd_band
from pipeline.stage import Stage
from pipeline.subcompartment import has_record, inventory_estimate
from pipeline.units import with_mu_areas

LIDAR_FRACTION_BAND = "lidar_fraction"


def parcels_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``parcels`` stage."""
    if config.sources.parcels is None:
        raise ConfigError(
            "sources.parcels: the parcels stage needs a parcel GeoPackage "
            "(e.g. data/<region>/parcels/parcels.gpkg)"
        )
    job = sink_job(config)
    out = {**epoch_raster_inputs(job, layout), **correlation_input(config, layout)}
    out["parcels"] = config.sources.parcels
    if config.sources.lidar_tiles is not None:
        out["lidar_metrics"] = layout.path(LIDAR_METRICS_RELPATH)
        if job.parcel_error_aggregation == "spatial":
            # the map-error model: both models inside the first LiDAR flight (repeat
            # flights do not enter it)
            out.update(predictor_inputs(config, layout, repeat_flights=False))
            out["models"] = layout.path(MODELS_RELPATH)
            for e in config.epochs:
                out[f"quality_maps.{e.name}"] = layout.path(map_relpath("quality", e.name))
            if config.sources.plot_locations is not None:
                # the parcel-shared part from the project's monitoring plots
                out["plot_locations"] = config.sources.plot_locations
                out["plot_biomass"] = layout.path(PLOT_BIOMASS_RELPATH)
                if config.sources.plot_design is not None:
                    out["design"] = config.sources.plot_design
    return out


def parcels_stage(
    job: SinkJob,
    *,
    parcels: gpd.GeoDataFrame,
    carbon_start: xr.DataArray,
    carbon_end: xr.DataArray,
    carbon_sd_start: xr.DataArray,
    carbon_sd_end: xr.DataArray,
    quality_start: xr.DataArray,
    quality_end: xr.DataArray,
    lidar_metrics: xr.DataArray | None = None,
    model_card: Mapping[str, Any] | None = None,
    models: Path | bytes | None = None,
    composites: Mapping[str, xr.DataArray] | None = None,
    terrain: xr.DataArray | None = None,
    quality_maps: Mapping[str, xr.DataArray] | None = None,
    plot_locations: gpd.GeoDataFrame | None = None,
    plot_biomass: pd.DataFrame | None = None,
    design: gpd.GeoDataFrame | None = None,
) -> dict[str, Any]:
    """The ``parcels`` stage: the per-parcel sink table as GeoPackage and CSV, and the
    map-error correlogram its SDs use (``spatial`` aggregation)."""
    job = resolve_correlation(job, model_card)
    correlogram, record = parcel_error_model(
        job,
        models=models,
        composites=composites,
        terrain=terrain,
        lidar_metrics=lidar_metrics,
        quality_maps=quality_maps,
        parcels=parcels,
    )
    sink_correlogram = None
    if correlogram is not None and plot_locations is not None and plot_biomass is not None:
        carbon = {
            job.epoch_start: (carbon_start, carbon_sd_start),
            job.epoch_end: (carbon_end, carbon_sd_end),
        }
        correlogram, sink_correlogram, record["monitoring_plots"] = plot_error_model(
            job, correlogram, plot_locations, plot_biomass, carbon=carbon, parcels=parcels,
            design=design,
        )  # fmt: skip
        if sink_correlogram is not None:
            record["shared_lidar"] = record["shared"]
            record["shared"] = correlogram.shared
            record["sink"] = sink_correlogram.record()
    table = parcel_sink_table(
        job,
        parcels=parcels,
        carbon_start=carbon_start,
        carbon_end=carbon_end,
        carbon_sd_start=carbon_sd_start,
        carbon_sd_end=carbon_sd_end,
        quality_start=quality_start,
        quality_end=quality_end,
        lidar_metrics=lidar_metrics,
        correlogram=correlogram,
        sink_correlogram=sink_correlogram,
    )
    warn_unmapped(table, (job.epoch_start, job.epoch_end))
    table = with_mu_areas(with_inventory_estimate(table))
    csv = pd.DataFrame(table.drop(columns=table.geometry.name))
    return {
        PARCEL_SINK_GPKG_RELPATH: table,
        PARCEL_SINK_CSV_RELPATH: csv,
        ERROR_CORRELOGRAM_RELPATH: record,
    }


def warn_unmapped(table: pd.DataFrame, epochs: tuple[str, str]) -> None:
    """Say how many parcels' forest land was partly or not at all mapped at each epoch
    (their totals cover the mapped share, or are NaN; the module docstring)."""
    for col in (*(f"mapped_share_{e}" for e in epochs), "sink_mapped_share"):
        share = table[col]
        part, none = int(((share > 0) & (share < 1 - 1e-9)).sum()), int((share == 0).sum())
        if part or none:
            worst = table.loc[share < 1 - 1e-9].sort_values(col).head(5)
            listed = ", ".join(
                f"{pid} {v:.0%}" for pid, v in zip(worst["parcel_id"], worst[col], strict=True)
            )
            warnings.warn(
                PipelineWarning(
                    f"parcels: {col}: {part} parcel(s) partly mapped (their totals cover the "
                    f"mapped share only) and {none} with no mapped cell (totals NaN); lowest: "
                    f"{listed}. Forest land without a value had no clear scene, a predictor "
                    f"missing (as at the grid's edge) or a quality below "
                    f"stages.sink.min_quality (rasters/coverage.json, rasters/quality_<epoch>.tif)",
                    code="parcels_partly_mapped",
                    values={"column": col, "part": part, "none": none, "listing": listed},
                ),
                stacklevel=2,
            )


def with_inventory_estimate(table: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Add the sub-compartment record's own estimate of each parcel's carbon beside the
    maps' (:func:`pipeline.subcompartment.inventory_estimate`, at the record's
    ``survey_year``): ``inventory_agb_mg_ha``, ``inventory_carbon_mg_ha`` and
    ``inventory_carbon_mg_c`` (density x ``area_ha``). A layer without the record is
    returned unchanged."""
    if not has_record(table):
        return table
    out = table.join(inventory_estimate(table))
    out["inventory_carbon_mg_c"] = out["inventory_carbon_mg_ha"] * out["area_ha"]
    return out


def parcel_error_model(
    job: SinkJob,
    *,
    models: Path | bytes | None,
    composites: Mapping[str, xr.DataArray] | None,
    terrain: xr.DataArray | None,
    lidar_metrics: xr.DataArray | None,
    quality_maps: Mapping[str, xr.DataArray] | None,
    parcels: gpd.GeoDataFrame,
) -> tuple[Correlogram | None, dict[str, Any]]:
    """The map-error correlogram of a ``spatial`` aggregation (:mod:`pipeline.map_errors`)
    and its record; ``None`` and the reason when there is none to fit."""
    if job.parcel_error_aggregation != "spatial":
        return None, {"skipped": f"parcel_error_aggregation is {job.parcel_error_aggregation}"}
    if (
        models is None
        or composites is None
        or terrain is None
        or lidar_metrics is None
        or quality_maps is None
    ):
        return None, {
            "skipped": "no LiDAR model and maps to fit it to: the fully correlated bound is used"
        }
    found = lidar_residuals(
        models,
        composites=composites,
        terrain=terrain,
        lidar_metrics=lidar_metrics,
        quality=quality_maps,
        parcels=parcels,
    )
    if isinstance(found, str):
        return None, {"skipped": f"{found}: the fully correlated bound is used"}
    residuals, labels, cell_m, epoch = found
    correlogram, record = fit_map_errors(residuals, labels, cell_m=cell_m)
    record["residuals"] = (
        f"satellite model minus LiDAR model inside the first LiDAR flight at {epoch}, over "
        "the SD of their difference (pipeline.map_errors)"
    )
    return correlogram, record


def plot_error_model(
    job: SinkJob,
    lidar: Correlogram,
    plot_locations: gpd.GeoDataFrame,
    plot_biomass: pd.DataFrame,
    *,
    carbon: Mapping[str, tuple[xr.DataArray, xr.DataArray]],
    parcels: gpd.GeoDataFrame,
    design: gpd.GeoDataFrame | None = None,
) -> tuple[Correlogram, Correlogram | None, dict[str, Any]]:
    """The stocks' and the sink's correlograms with the parcel-shared parts measured at the
    project's monitoring plots (:func:`pipeline.map_errors.plot_shared_parts`), and the
    record; without a monitoring sample (or too few parcels with two plots) the LiDAR fit
    for both, and the record says why. Plots whose square straddles their stratum's frame
    in ``design`` are left out (:func:`pipeline.samples.monitoring_plots`)."""
    if "sample" not in plot_locations.columns:
        return lidar, None, {"skipped": "the plot layer has no 'sample' column"}
    monitoring, compared = monitoring_plots(plot_locations, design)
    project = plot_locations[compared]
    if project.empty:
        return (
            lidar,
            None,
            {"skipped": "no project monitoring sample: the shared part is the LiDAR cover's"},
        )
    maps = {
        e: (as_band(c, name=map_relpath("carbon", e)), support_sd_band(s, name="carbon SD"))
        for e, (c, s) in carbon.items()
    }
    errors = plot_errors(
        project, plot_biomass, value="carbon_mg_ha", maps=maps, parcels=parcels,
        first=job.epoch_start, last=job.epoch_end, rho=job.correlation,
    )  # fmt: skip
    found = plot_shared_parts(errors, lidar, stocks=(job.epoch_start, job.epoch_end))
    if isinstance(found, str):
        return lidar, None, {"skipped": f"{found}: the shared part is the LiDAR cover's"}
    stocks, change, record = found
    record["n_plots"] = int(errors["plot_id"].nunique())
    record["n_straddling_plots_left_out"] = int((monitoring & ~compared).sum())
    record["population"] = (
        "the project area's parcels (the monitoring plots sample it only); applied to every parcel"
    )
    return stocks, change, record


STAGE = Stage(name="parcels", func=parcels_stage, params=sink_job, inputs=parcels_inputs)
