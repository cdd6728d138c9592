"""Stage ``parcels``: carbon stock and sink per parcel by fractional-coverage zonal sums.

Every pixel contributes to a parcel in proportion to the share of its area inside the
parcel (exactextract, :mod:`pipeline.zonal`), never by its centre, so parcels that
partition an area add up to the area's total.

Per parcel (units in the column names):

- ``area_grid_ha``: area covered by the map grid; ``forest_area_ha``: area where the sink
  is valid (forest with good quality at both epochs), the area the sink is summed over;
- ``carbon_<epoch>_mg_c`` per compared epoch, over pixels with a valid estimate at that
  epoch, with SD and interval bounds;
- ``sink_mg_c_yr``, ``sink_tco2e_yr``, their SDs and interval bounds, and the sink per
  forest hectare;
- ``mean_quality_<epoch>`` (coverage-weighted mean quality flag of the end epoch: the
  share of the parcel flagged good, band ``good`` of ``rasters/quality_<epoch>.tif``) and
  ``lidar_share`` (coverage-weighted mean LiDAR coverage fraction, band ``lidar_fraction``
  of ``lidar/metrics.tif``; 0 without LiDAR).

Aggregating pixel errors. A parcel total is a sum of pixel estimates whose errors come
from one model: plot-level residual structure, predictor biases and the model's own
parameter error are shared by neighbouring pixels, so the errors are strongly spatially
correlated and a root-sum-of-squares (independent) SD shrinks as 1/sqrt(n pixels) where
the true error does not (McRoberts & Westfall 2016, doi:10.1007/s13595-015-0473-x, show
that ignoring the model's error covariance badly understates large-area uncertainty).
Without a fitted spatial correlation model, the fully correlated sum of pixel SDs is the
defensible upper bound and is the default (``SinkParams.parcel_error_aggregation``);
the independent lower bound is always reported next to it (``*_sd_independent_*``).
With full correlation the SDs also add up over parcels to the area's SD.

Intervals are ``mean -/+ z SD`` with z the normal quantile of the central
``SinkParams.interval`` (default 90 %: columns ``*_lo`` and ``*_hi`` are the 5th and 95th
percentiles).

Signatures
----------
``parcels_inputs(config, layout) -> {name: Path}``
    the six epoch rasters of :func:`pipeline.contracts.epoch_raster_inputs`,
    ``parcels`` = ``config.sources.parcels`` and, when LiDAR tiles are configured,
    ``lidar_metrics`` = ``lidar/metrics.tif``.
``parcels_stage(job: SinkJob, *, parcels, carbon_start, carbon_end, carbon_sd_start,
carbon_sd_end, quality_start, quality_end, lidar_metrics=None) -> {relpath: table}``
    ``parcels/parcel_sink.gpkg`` (GeoDataFrame) and ``parcels/parcel_sink.csv``.

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
from pipeline.config import Config
from pipeline.contracts import (
    LIDAR_METRICS_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    RunLayout,
    SinkJob,
    correlation_input,
    epoch_raster_inputs,
    resolve_correlation,
    sink_job,
)
from pipeline.errors import ConfigError, InputDataError
from pipeline.sink import (
    as_band,
    named_band,
    quality_band,
    stock_change_sink,
    support_sd_band,
)
from pipeline.stage import Stage
from pipeline.units import M2_PER_HA, with_mu_areas
from pipeline.zonal import Coverage, coverage_cells, covered_fraction_sum, weighted_sum

LIDAR_FRACTION_BAND = "lidar_fraction"


def parcels_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``parcels`` stage."""
    if config.sources.parcels is None:
        raise ConfigError(
            "sources.parcels: the parcels stage needs a parcel GeoPackage "
            "(e.g. data/<region>/parcels/parcels.gpkg)"
        )
    out = {**epoch_raster_inputs(sink_job(config), layout), **correlation_input(config, layout)}
    out["parcels"] = config.sources.parcels
    if config.sources.lidar_tiles is not None:
        out["lidar_metrics"] = layout.path(LIDAR_METRICS_RELPATH)
    return out


def _sd_sum(cov: Coverage, sd: np.ndarray, px_ha: float) -> tuple[float, float]:
    """(fully correlated, independent) SD of a coverage-weighted sum, in value x ha."""
    correlated = weighted_sum(cov, sd) * px_ha
    independent = float(np.sqrt(weighted_sum(cov, sd, power=2))) * px_ha
    return correlated, independent


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
) -> gpd.GeoDataFrame:
    """Per-parcel carbon stocks, sink and their uncertainty (see the module docstring)."""
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
    covs = coverage_cells(parcels, transform=transform, shape=shape, crs=crs.to_string())
    z = float(norm.ppf(0.5 + job.interval / 2))
    co2 = co2_per_c()
    sink_valid = np.isfinite(computed["sink"])
    e1, e2 = job.epoch_start, job.epoch_end

    rows = []
    for cov in covs:
        row: dict[str, float] = {}
        row["area_grid_ha"] = covered_fraction_sum(cov) * px_ha
        row["forest_area_ha"] = covered_fraction_sum(cov, sink_valid) * px_ha
        for role, epoch in (("start", e1), ("end", e2)):
            total = weighted_sum(cov, computed[f"c_{role}"]) * px_ha
            sd_c, sd_i = _sd_sum(cov, computed[f"s_{role}"], px_ha)
            sd = sd_c if job.parcel_error_aggregation == "correlated" else sd_i
            row[f"carbon_{epoch}_mg_c"] = total
            row[f"carbon_sd_{epoch}_mg_c"] = sd
            row[f"carbon_sd_independent_{epoch}_mg_c"] = sd_i
            row[f"carbon_{epoch}_lo_mg_c"] = total - z * sd
            row[f"carbon_{epoch}_hi_mg_c"] = total + z * sd
        sink_c = weighted_sum(cov, computed["sink"]) * px_ha
        sd_c, sd_i = _sd_sum(cov, computed["sink_sd"], px_ha)
        sd = sd_c if job.parcel_error_aggregation == "correlated" else sd_i
        row["sink_mg_c_yr"] = sink_c
        row["sink_sd_mg_c_yr"] = sd
        row["sink_tco2e_yr"] = sink_c * co2
        row["sink_sd_tco2e_yr"] = sd * co2
        row["sink_sd_correlated_tco2e_yr"] = sd_c * co2
        row["sink_sd_independent_tco2e_yr"] = sd_i * co2
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
        "error_aggregation": job.parcel_error_aggregation,
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
) -> dict[str, Any]:
    """The ``parcels`` stage: the per-parcel sink table as GeoPackage and CSV."""
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
    )
    table = with_mu_areas(table)
    csv = pd.DataFrame(table.drop(columns=table.geometry.name))
    return {PARCEL_SINK_GPKG_RELPATH: table, PARCEL_SINK_CSV_RELPATH: csv}


STAGE = Stage(name="parcels", func=parcels_stage, params=sink_job, inputs=parcels_inputs)
