"""Per-parcel sums of the carbon and sink maps with their SDs, by fractional coverage.

One place for the computation the ``parcels`` stage writes per parcel and the report's
roll-ups run on groups of parcels (a township, a compartment): the columns, the three SD
aggregations (``independent``, ``correlated``, ``spatial`` with the correlogram of the map
errors) and the intervals are described in :mod:`pipeline.stages.parcels`.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.stats import norm

from models.allometry import co2_per_c
from models.spatial_error import Correlogram, weighted_covariance
from pipeline.contracts import (
    LIDAR_METRICS_RELPATH,
    SinkJob,
)
from pipeline.errors import InputDataError
from pipeline.inputs import refuse_off_grid, warn_partly_off_grid
from pipeline.sink import (
    as_band,
    named_band,
    observed_band,
    quality_band,
    stock_change_sink,
    support_sd_band,
)
from pipeline.units import M2_PER_HA
from pipeline.zonal import (
    Coverage,
    coverage_cells,
    covered_fraction_sum,
    grid_fraction,
    weighted_sum,
)

LIDAR_FRACTION_BAND = "lidar_fraction"


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
    sink_correlogram: Correlogram | None = None,
) -> gpd.GeoDataFrame:
    """Per-parcel carbon stocks, sink and their uncertainty (see the module docstring).

    ``correlogram`` is the map errors' correlation model; without one a ``spatial``
    aggregation falls back to the fully correlated bound. ``sink_correlogram``, when
    given, replaces it in the sink's variance (the change errors' own correlation,
    :func:`pipeline.map_errors.plot_shared_parts`).
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
    # the forest-land cells each epoch should have mapped (n_valid >= 0; a single-band
    # quality raster does not say, and the mapped cells are then taken as all of them)
    for role, q in (("start", quality_start), ("end", quality_end)):
        observed = observed_band(q)
        if observed is not None:
            arrays[f"want_{role}"] = observed >= 0
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
    sink_kernel = (
        sink_correlogram.kernel(_box_shape(covs, nx=nx), cell_m=abs(transform.a))
        if spatial and sink_correlogram is not None
        else kernel
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

    summed = {role: np.isfinite(computed[f"c_{role}"]) for role in ("start", "end")}
    wanted = {
        role: (computed[f"want_{role}"] > 0) | summed[role] if f"want_{role}" in computed else None
        for role in ("start", "end")
    }
    sink_wanted = wanted["end"] | sink_valid if wanted["end"] is not None else sink_valid

    def mapped(cov: Coverage, done: np.ndarray, want: np.ndarray | None) -> tuple[float, float]:
        """The share of the parcel's forest land with a value, and what its sums are
        multiplied by: 1, or NaN where it has forest land and none of it has a value (a
        sum of nothing is not a stock of 0)."""
        if want is None:
            return 1.0, 1.0
        whole = covered_fraction_sum(cov, want)
        if whole <= 0:
            return float("nan"), 1.0
        share = covered_fraction_sum(cov, done) / whole
        return share, 1.0 if share > 0 else float("nan")

    rows = []
    for i, cov in enumerate(covs):
        row: dict[str, float] = {}
        row["area_grid_ha"] = covered_fraction_sum(cov) * px_ha
        row["grid_fraction"] = float(on_grid[i])
        row["forest_area_ha"] = covered_fraction_sum(cov, sink_valid) * px_ha
        for role, epoch in (("start", e1), ("end", e2)):
            share, known = mapped(cov, summed[role], wanted[role])
            row[f"mapped_share_{epoch}"] = share
            total = weighted_sum(cov, computed[f"c_{role}"]) * px_ha * known
            ws = _box(cov, computed[f"s_{role}"], nx=nx)
            by = sds(ws, weighted_covariance(ws, ws, kernel) if kernel is not None else None)
            by = {k: v * known for k, v in by.items()}
            sd = by["spatial" if spatial else chosen]
            row[f"carbon_{epoch}_mg_c"] = total
            row[f"carbon_sd_{epoch}_mg_c"] = sd
            row[f"carbon_sd_correlated_{epoch}_mg_c"] = by["correlated"]
            row[f"carbon_sd_independent_{epoch}_mg_c"] = by["independent"]
            row[f"carbon_{epoch}_lo_mg_c"] = total - z * sd
            row[f"carbon_{epoch}_hi_mg_c"] = total + z * sd
        share, known = mapped(cov, sink_valid, sink_wanted)
        row["sink_mapped_share"] = share
        sink_c = weighted_sum(cov, computed["sink"]) * px_ha * known
        ws = _box(cov, computed["sink_sd"], nx=nx)
        variance = None
        if sink_kernel is not None:
            a = _box(cov, computed["sink_s_start"], nx=nx)
            b = _box(cov, computed["sink_s_end"], nx=nx)
            variance = (
                weighted_covariance(a, a, sink_kernel)
                + weighted_covariance(b, b, sink_kernel)
                - 2 * rho_epochs * weighted_covariance(a, b, sink_kernel)
            ) / job.years**2
        by = {k: v * known for k, v in sds(ws, variance).items()}
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
        "sink_error_correlogram": (
            sink_correlogram.record() if spatial and sink_correlogram else None
        ),
        "epochs": [e1, e2],
    }
    return gpd.GeoDataFrame(out, geometry=parcels.geometry, crs=parcels.crs)
