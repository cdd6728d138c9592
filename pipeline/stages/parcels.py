"""Stage ``parcels``: carbon stock and sink per parcel by fractional-coverage zonal sums.

Every pixel contributes to a parcel in proportion to the share of its area inside the
parcel (exactextract, :mod:`pipeline.zonal`), never by its centre, so parcels that
partition an area add up to the area's total.

Per parcel (units in the column names):

- ``area_grid_ha``: area covered by the map grid, ``grid_fraction`` its share of
  the parcel (below 1: partly off the grid, warned; 0 is refused); ``forest_area_ha``:
  area where the sink is valid (forest with good quality at both epochs), the area the
  sink is summed over;
- ``carbon_<epoch>_mg_c`` per compared epoch, over pixels with a valid estimate at that
  epoch, with its SD (``carbon_sd_<epoch>_mg_c``, by the chosen aggregation), both
  bounds (``carbon_sd_correlated_<epoch>_mg_c``, ``carbon_sd_independent_<epoch>_mg_c``)
  and interval bounds;
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
on the parcel's bounding box (:func:`models.spatial_error.weighted_covariance`). Where
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
    ``model/models.pkl`` and every epoch's ``agb_maps``, ``agb_sd_maps`` and
    ``quality_maps`` of the predict stage.
``parcels_stage(job: SinkJob, *, parcels, carbon_start, carbon_end, carbon_sd_start,
carbon_sd_end, quality_start, quality_end, lidar_metrics=None, model_card=None,
models=None, composites=None, terrain=None, agb_maps=None, agb_sd_maps=None,
quality_maps=None) -> {relpath: table}``
    ``parcels/parcel_sink.gpkg`` (GeoDataFrame), ``parcels/parcel_sink.csv`` and
    ``parcels/error_correlogram.json`` (dict).

Run: ``forest-carbon run --region nanping --stages parcels``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.stats import norm

from models.allometry import co2_per_c
from models.spatial_error import Correlogram, weighted_covariance
from pipeline.config import Config
from pipeline.contracts import (
    ERROR_CORRELOGRAM_RELPATH,
    LIDAR_METRICS_RELPATH,
    MODELS_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    RunLayout,
    SinkJob,
    correlation_input,
    epoch_raster_inputs,
    map_relpath,
    predictor_inputs,
    resolve_correlation,
    sink_job,
)
from pipeline.errors import ConfigError, InputDataError
from pipeline.inputs import refuse_off_grid, warn_partly_off_grid
from pipeline.map_errors import fit_map_errors, lidar_residuals
from pipeline.sink import (
    as_band,
    named_band,
    quality_band,
    stock_change_sink,
    support_sd_band,
)
from pipeline.stage import Stage
from pipeline.units import M2_PER_HA, with_mu_areas
from pipeline.zonal import (
    Coverage,
    coverage_cells,
    covered_fraction_sum,
    grid_fraction,
    weighted_sum,
)

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
            # the map-error model: the satellite model inside the LiDAR cover
            out.update(predictor_inputs(config, layout))
            out["models"] = layout.path(MODELS_RELPATH)
            for e in config.epochs:
                out[f"agb_maps.{e.name}"] = layout.path(map_relpath("agb", e.name))
                out[f"agb_sd_maps.{e.name}"] = layout.path(map_relpath("agb_sd", e.name))
                out[f"quality_maps.{e.name}"] = layout.path(map_relpath("quality", e.name))
    return out


def _box(cov: Coverage, values: np.ndarray, *, nx: int) -> np.ndarray:
    """``values x fraction`` of the covered cells on their bounding box (NaN and
    uncovered cells 0)."""
    if cov.cell.size == 0:
        return np.zeros((1, 1))
    rows, cols = np.divmod(cov.cell, nx)
    r0, c0 = rows.min(), cols.min()
    out = np.zeros((int(rows.max() - r0) + 1, int(cols.max() - c0) + 1))
    v = values.reshape(-1)[cov.cell]
    out[rows - r0, cols - c0] = np.where(np.isfinite(v), v * cov.fraction, 0.0)
    return out


def _box_shape(covs: list[Coverage], *, nx: int) -> tuple[int, int]:
    """The largest bounding box (rows, columns) of the parcels' covered cells."""
    extents = [np.ptp(np.divmod(c.cell, nx), axis=1) + 1 for c in covs if c.cell.size]
    if not extents:
        return 1, 1
    ny_max, nx_max = np.max(extents, axis=0)
    return int(ny_max), int(nx_max)


def parcel_sink_table(
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
    correlogram: Correlogram | None = None,
) -> gpd.GeoDataFrame:
    """Per-parcel carbon stocks, sink and their uncertainty (see the module docstring).

    ``correlogram`` is the map errors' correlation model; without one a ``spatial``
    aggregation falls back to the fully correlated bound.
    """
    if "parcel_id" not in parcels.columns:
        raise InputDataError("parcels: the parcel layer has no 'parcel_id' column")
    if parcels["parcel_id"].duplicated().any():
        dup = parcels.loc[parcels["parcel_id"].duplicated(), "parcel_id"].tolist()[:5]
        raise InputDataError(f"parcels: duplicate parcel_id values {dup}")
    sink_ds = stock_change_sink(
        carbon_start,
        carbon_end,
        carbon_sd_start,
        carbon_sd_end,
        quality_start,
        quality_end,
        years=job.years,
        epoch_error_correlation=job.correlation,
        min_quality=job.min_quality,
    )
    # zonal sums need pixel values: this is the stage's one compute
    arrays: dict[str, Any] = {
        "sink": sink_ds["sink_mg_c_ha_yr"],
        "sink_sd": sink_ds["sink_sd_mg_c_ha_yr"],
    }
    stock_inputs = {
        "start": (carbon_start, carbon_sd_start, quality_start),
        "end": (carbon_end, carbon_sd_end, quality_end),
    }
    for role, (c, s, q) in stock_inputs.items():
        cb, sb = as_band(c, name="carbon"), support_sd_band(s, name="carbon SD")
        qb = quality_band(q, name="quality")
        ok = cb.notnull() & sb.notnull() & (qb >= job.min_quality)
        arrays[f"c_{role}"] = cb.where(ok)
        arrays[f"s_{role}"] = sb.where(ok)
    arrays["q_end"] = quality_band(quality_end, name="quality (end epoch)")
    if lidar_metrics is not None:
        lf = named_band(lidar_metrics, LIDAR_FRACTION_BAND, source=LIDAR_METRICS_RELPATH)
        arrays["lidar"] = as_band(lf, name="lidar_fraction")
    computed = {k: np.asarray(v.values, dtype=np.float64) for k, v in arrays.items()}

    ref = carbon_end
    transform = ref.rio.transform(recalc=True)
    crs = ref.rio.crs
    if crs is None:
        raise InputDataError("the carbon rasters have no CRS; they must be on the model grid")
    px_ha = abs(transform.a * transform.e) / M2_PER_HA
    shape = computed["sink"].shape
    nx = shape[1]
    covs = coverage_cells(parcels, transform=transform, shape=shape, crs=crs.to_string())
    areas_m2 = parcels.geometry.to_crs(crs.to_string()).area.to_numpy()
    on_grid = np.array(
        [
            grid_fraction(c, polygon_area_m2=a, cell_area_m2=px_ha * M2_PER_HA)
            for c, a in zip(covs, areas_m2, strict=True)
        ]
    )
    refuse_off_grid(on_grid, parcels, where="parcels", id_column="parcel_id")
    warn_partly_off_grid(on_grid, parcels, where="parcels", id_column="parcel_id")
    z = float(norm.ppf(0.5 + job.interval / 2))
    co2 = co2_per_c()
    sink_valid = np.isfinite(computed["sink"])
    # the epochs' SDs where the sink is valid: its spatial variance (module docstring)
    for role in ("start", "end"):
        computed[f"sink_s_{role}"] = np.where(sink_valid, computed[f"s_{role}"], np.nan)
    rho_epochs = job.correlation
    e1, e2 = job.epoch_start, job.epoch_end
    spatial = job.parcel_error_aggregation == "spatial" and correlogram is not None
    chosen = "independent" if job.parcel_error_aggregation == "independent" else "correlated"
    kernel = (
        correlogram.kernel(_box_shape(covs, nx=nx), cell_m=abs(transform.a))
        if spatial and correlogram is not None
        else None
    )

    def sds(ws: np.ndarray, variance: float | None) -> dict[str, float]:
        """Correlated, independent and (with a kernel) spatial SD of a sum, value x ha."""
        out = {
            "correlated": float(ws.sum()) * px_ha,
            "independent": float(np.sqrt(np.sum(ws**2))) * px_ha,
        }
        if variance is not None:
            out["spatial"] = float(np.sqrt(max(variance, 0.0))) * px_ha
        return out

    rows = []
    for i, cov in enumerate(covs):
        row: dict[str, float] = {}
        row["area_grid_ha"] = covered_fraction_sum(cov) * px_ha
        row["grid_fraction"] = float(on_grid[i])
        row["forest_area_ha"] = covered_fraction_sum(cov, sink_valid) * px_ha
        for role, epoch in (("start", e1), ("end", e2)):
            total = weighted_sum(cov, computed[f"c_{role}"]) * px_ha
            ws = _box(cov, computed[f"s_{role}"], nx=nx)
            by = sds(ws, weighted_covariance(ws, ws, kernel) if kernel is not None else None)
            sd = by["spatial" if spatial else chosen]
            row[f"carbon_{epoch}_mg_c"] = total
            row[f"carbon_sd_{epoch}_mg_c"] = sd
            row[f"carbon_sd_correlated_{epoch}_mg_c"] = by["correlated"]
            row[f"carbon_sd_independent_{epoch}_mg_c"] = by["independent"]
            row[f"carbon_{epoch}_lo_mg_c"] = total - z * sd
            row[f"carbon_{epoch}_hi_mg_c"] = total + z * sd
        sink_c = weighted_sum(cov, computed["sink"]) * px_ha
        ws = _box(cov, computed["sink_sd"], nx=nx)
        variance = None
        if kernel is not None:
            a = _box(cov, computed["sink_s_start"], nx=nx)
            b = _box(cov, computed["sink_s_end"], nx=nx)
            variance = (
                weighted_covariance(a, a, kernel)
                + weighted_covariance(b, b, kernel)
                - 2 * rho_epochs * weighted_covariance(a, b, kernel)
            ) / job.years**2
        by = sds(ws, variance)
        sd = by["spatial" if spatial else chosen]
        row["sink_mg_c_yr"] = sink_c
        row["sink_sd_mg_c_yr"] = sd
        row["sink_tco2e_yr"] = sink_c * co2
        row["sink_sd_tco2e_yr"] = sd * co2
        row["sink_sd_correlated_tco2e_yr"] = by["correlated"] * co2
        row["sink_sd_independent_tco2e_yr"] = by["independent"] * co2
        row["sink_lo_tco2e_yr"] = (sink_c - z * sd) * co2
        row["sink_hi_tco2e_yr"] = (sink_c + z * sd) * co2
        forest = row["forest_area_ha"]
        row["sink_tco2e_ha_yr"] = row["sink_tco2e_yr"] / forest if forest > 0 else np.nan
        covered = covered_fraction_sum(cov)
        q_cov = covered_fraction_sum(cov, np.isfinite(computed["q_end"]))
        row[f"mean_quality_{e2}"] = (
            weighted_sum(cov, computed["q_end"]) / q_cov if q_cov > 0 else np.nan
        )
        if "lidar" in computed:
            row["lidar_share"] = weighted_sum(cov, computed["lidar"]) / covered if covered else 0.0
        else:
            row["lidar_share"] = 0.0
        rows.append(row)
    stats = pd.DataFrame(rows, index=parcels.index)
    keep = [c for c in parcels.columns if c != parcels.geometry.name]
    out = pd.concat([parcels[keep], stats], axis=1)
    out.attrs = {
        "interval": job.interval,
        "error_aggregation": "spatial" if spatial else chosen,
        "error_correlogram": correlogram.record() if spatial and correlogram else None,
        "epochs": [e1, e2],
    }
    return gpd.GeoDataFrame(out, geometry=parcels.geometry, crs=parcels.crs)


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
    agb_maps: Mapping[str, xr.DataArray] | None = None,
    agb_sd_maps: Mapping[str, xr.DataArray] | None = None,
    quality_maps: Mapping[str, xr.DataArray] | None = None,
) -> dict[str, Any]:
    """The ``parcels`` stage: the per-parcel sink table as GeoPackage and CSV, and the
    map-error correlogram its SDs use (``spatial`` aggregation)."""
    correlogram, record = parcel_error_model(
        job,
        models=models,
        composites=composites,
        terrain=terrain,
        agb_maps=agb_maps,
        agb_sd_maps=agb_sd_maps,
        quality_maps=quality_maps,
        parcels=parcels,
    )
    table = parcel_sink_table(
        resolve_correlation(job, model_card),
        parcels=parcels,
        carbon_start=carbon_start,
        carbon_end=carbon_end,
        carbon_sd_start=carbon_sd_start,
        carbon_sd_end=carbon_sd_end,
        quality_start=quality_start,
        quality_end=quality_end,
        lidar_metrics=lidar_metrics,
        correlogram=correlogram,
    )
    table = with_mu_areas(table)
    csv = pd.DataFrame(table.drop(columns=table.geometry.name))
    return {
        PARCEL_SINK_GPKG_RELPATH: table,
        PARCEL_SINK_CSV_RELPATH: csv,
        ERROR_CORRELOGRAM_RELPATH: record,
    }


def parcel_error_model(
    job: SinkJob,
    *,
    models: Path | bytes | None,
    composites: Mapping[str, xr.DataArray] | None,
    terrain: xr.DataArray | None,
    agb_maps: Mapping[str, xr.DataArray] | None,
    agb_sd_maps: Mapping[str, xr.DataArray] | None,
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
        or agb_maps is None
        or agb_sd_maps is None
        or quality_maps is None
    ):
        return None, {
            "skipped": "no LiDAR model and maps to fit it to: the fully correlated bound is used"
        }
    found = lidar_residuals(
        models,
        composites=composites,
        terrain=terrain,
        agb=agb_maps,
        agb_sd=agb_sd_maps,
        quality=quality_maps,
        parcels=parcels,
    )
    if isinstance(found, str):
        return None, {"skipped": f"{found}: the fully correlated bound is used"}
    residuals, labels, cell_m, epoch = found
    correlogram, record = fit_map_errors(residuals, labels, cell_m=cell_m)
    record["residuals"] = (
        f"satellite model minus LiDAR map inside the LiDAR cover at {epoch}, over the SD "
        "of their difference (pipeline.map_errors)"
    )
    return correlogram, record


STAGE = Stage(name="parcels", func=parcels_stage, params=sink_job, inputs=parcels_inputs)
