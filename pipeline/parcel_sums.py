"""Per-parcel sums of the carbon and sink maps with their SDs, by fractional coverage.

One place for the computation the ``parcels`` stage writes per parcel and the report's
roll-ups run on groups of parcels (a township, a compartment): the columns, the three SD
aggregations (``independent``, ``correlated``, ``spatial`` with the correlogram of the map
errors) and the intervals are described in :mod:`pipeline.stages.parcels`. The rasters
are read one window of parcels at a time (:func:`pipeline.zonal.coverage_windows`), never
whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import dask
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
    Window,
    block_shape,
    coverage_windows,
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


def _layers(
    job: SinkJob,
    inputs: Mapping[str, xr.DataArray],
    lidar_metrics: xr.DataArray | None,
) -> dict[str, xr.DataArray]:
    """The per-cell layers the parcel sums are taken of, from the six epoch rasters
    (``inputs``, named as :func:`pipeline.sink.stock_change_sink`'s arguments; lazy where
    they are): the
    sink and its SD, each epoch's carbon and support SD where valid, the end epoch's
    quality, the forest land each epoch should have mapped and the LiDAR coverage."""
    sink_ds = stock_change_sink(
        **inputs,
        years=job.years,
        epoch_error_correlation=job.correlation,
        min_quality=job.min_quality,
    )
    arrays: dict[str, xr.DataArray] = {
        "sink": sink_ds["sink_mg_c_ha_yr"],
        "sink_sd": sink_ds["sink_sd_mg_c_ha_yr"],
    }
    for role in ("start", "end"):
        c, s = inputs[f"carbon_{role}"], inputs[f"carbon_sd_{role}"]
        q = inputs[f"quality_{role}"]
        cb, sb = as_band(c, name="carbon"), support_sd_band(s, name="carbon SD")
        qb = quality_band(q, name="quality")
        ok = cb.notnull() & sb.notnull() & (qb >= job.min_quality)
        arrays[f"c_{role}"] = cb.where(ok)
        arrays[f"s_{role}"] = sb.where(ok)
    arrays["q_end"] = quality_band(inputs["quality_end"], name="quality (end epoch)")
    # the forest-land cells each epoch should have mapped (n_valid >= 0; a single-band
    # quality raster does not say, and the mapped cells are then taken as all of them)
    for role in ("start", "end"):
        observed = observed_band(inputs[f"quality_{role}"])
        if observed is not None:
            arrays[f"want_{role}"] = observed >= 0
    if lidar_metrics is not None:
        lf = named_band(lidar_metrics, LIDAR_FRACTION_BAND, source=LIDAR_METRICS_RELPATH)
        arrays["lidar"] = as_band(lf, name="lidar_fraction")
    return arrays


def _window_layers(
    job: SinkJob,
    win: Window,
    inputs: Mapping[str, xr.DataArray],
    lidar_metrics: xr.DataArray | None,
) -> dict[str, np.ndarray]:
    """:func:`_layers` on a window as float64 arrays (one compute), with the epochs' SDs
    where the sink is valid (``sink_s_<role>``: the sink's spatial variance, module
    docstring)."""
    lazy = _layers(
        job,
        {k: win.grid(v) for k, v in inputs.items()},
        None if lidar_metrics is None else win.grid(lidar_metrics),
    )
    # float64 inside the graph: no float32 copy of a layer outlives its chunk
    values = dask.compute(*(v.astype(np.float64).data for v in lazy.values()))
    out = {k: np.asarray(v) for k, v in zip(lazy, values, strict=True)}
    sink_valid = np.isfinite(out["sink"])
    for role in ("start", "end"):
        out[f"sink_s_{role}"] = np.where(sink_valid, out[f"s_{role}"], np.nan)
    return out


def _sds(ws: np.ndarray, variance: float | None, *, px_ha: float) -> dict[str, float]:
    """Correlated, independent and (with a kernel) spatial SD of a sum, value x ha."""
    out = {
        "correlated": float(ws.sum()) * px_ha,
        "independent": float(np.sqrt(np.sum(ws**2))) * px_ha,
    }
    if variance is not None:
        out["spatial"] = float(np.sqrt(max(variance, 0.0))) * px_ha
    return out


def _mapped(cov: Coverage, done: np.ndarray, want: np.ndarray | None) -> tuple[float, float]:
    """The share of the parcel's forest land with a value, and what its sums are
    multiplied by: 1, or NaN where it has forest land and none of it has a value (a sum
    of nothing is not a stock of 0)."""
    if want is None:
        return 1.0, 1.0
    whole = covered_fraction_sum(cov, want)
    if whole <= 0:
        return float("nan"), 1.0
    share = covered_fraction_sum(cov, done) / whole
    return share, 1.0 if share > 0 else float("nan")


def _window_rows(
    job: SinkJob,
    win: Window,
    computed: Mapping[str, np.ndarray],
    *,
    areas_m2: np.ndarray,
    px_ha: float,
    cell_m: float,
    aggregation: str,
    correlogram: Correlogram | None,
    sink_correlogram: Correlogram | None,
) -> pd.DataFrame:
    """The table's rows of the window's parcels (indexed by ``win.members``), from its
    layers (:func:`_window_layers`); ``aggregation`` is the SD reported (``spatial`` needs
    a ``correlogram``)."""
    nx = win.shape[1]
    z = float(norm.ppf(0.5 + job.interval / 2))
    co2 = co2_per_c()
    e1, e2 = job.epoch_start, job.epoch_end
    # the kernels of the largest box of the window's parcels (cropped to each box)
    box_shape = _box_shape(win.covs, nx=nx)
    kernel = correlogram.kernel(box_shape, cell_m=cell_m) if correlogram is not None else None
    sink_kernel = (
        sink_correlogram.kernel(box_shape, cell_m=cell_m)
        if sink_correlogram is not None
        else kernel
    )
    sink_valid = np.isfinite(computed["sink"])
    summed = {role: np.isfinite(computed[f"c_{role}"]) for role in ("start", "end")}
    wanted = {
        role: (computed[f"want_{role}"] > 0) | summed[role] if f"want_{role}" in computed else None
        for role in ("start", "end")
    }
    sink_wanted = wanted["end"] | sink_valid if wanted["end"] is not None else sink_valid
    rows = []
    for i, cov in zip(win.members, win.covs, strict=True):
        row: dict[str, float] = {}
        row["area_grid_ha"] = covered_fraction_sum(cov) * px_ha
        row["grid_fraction"] = grid_fraction(
            cov, polygon_area_m2=areas_m2[i], cell_area_m2=px_ha * M2_PER_HA
        )
        row["forest_area_ha"] = covered_fraction_sum(cov, sink_valid) * px_ha
        for role, epoch in (("start", e1), ("end", e2)):
            share, known = _mapped(cov, summed[role], wanted[role])
            row[f"mapped_share_{epoch}"] = share
            total = weighted_sum(cov, computed[f"c_{role}"]) * px_ha * known
            ws = _box(cov, computed[f"s_{role}"], nx=nx)
            variance = weighted_covariance(ws, ws, kernel) if kernel is not None else None
            by = {k: v * known for k, v in _sds(ws, variance, px_ha=px_ha).items()}
            sd = by[aggregation]
            row[f"carbon_{epoch}_mg_c"] = total
            row[f"carbon_sd_{epoch}_mg_c"] = sd
            row[f"carbon_sd_correlated_{epoch}_mg_c"] = by["correlated"]
            row[f"carbon_sd_independent_{epoch}_mg_c"] = by["independent"]
            row[f"carbon_{epoch}_lo_mg_c"] = total - z * sd
            row[f"carbon_{epoch}_hi_mg_c"] = total + z * sd
        share, known = _mapped(cov, sink_valid, sink_wanted)
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
                - 2 * job.correlation * weighted_covariance(a, b, sink_kernel)
            ) / job.years**2
        by = {k: v * known for k, v in _sds(ws, variance, px_ha=px_ha).items()}
        sd = by[aggregation]
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
            lidar = weighted_sum(cov, computed["lidar"])
            row["lidar_share"] = lidar / covered if covered else 0.0
        else:
            row["lidar_share"] = 0.0
        rows.append(row)
    return pd.DataFrame(rows, index=win.members)


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

    The rasters are read one window at a time (:func:`pipeline.zonal.coverage_windows`,
    blocks of the rasters' Dask chunks): the parcels whose bounding box starts in a block
    are summed on the window their cells span, so memory follows a block and the largest
    parcel, not the grid; each window is one compute.
    """
    if "parcel_id" not in parcels.columns:
        raise InputDataError("parcels: the parcel layer has no 'parcel_id' column")
    if parcels["parcel_id"].duplicated().any():
        dup = parcels.loc[parcels["parcel_id"].duplicated(), "parcel_id"].tolist()[:5]
        raise InputDataError(f"parcels: duplicate parcel_id values {dup}")
    inputs = {
        "carbon_start": carbon_start,
        "carbon_end": carbon_end,
        "carbon_sd_start": carbon_sd_start,
        "carbon_sd_end": carbon_sd_end,
        "quality_start": quality_start,
        "quality_end": quality_end,
    }
    # the layers of the whole grid, lazily: wrong grids and missing bands fail before any read
    ny, nx = _layers(job, inputs, lidar_metrics)["sink"].shape
    transform = carbon_end.rio.transform(recalc=True)
    crs = carbon_end.rio.crs
    if crs is None:
        raise InputDataError("the carbon rasters have no CRS; they must be on the model grid")
    px_ha = abs(transform.a * transform.e) / M2_PER_HA
    areas_m2 = parcels.geometry.to_crs(crs.to_string()).area.to_numpy()
    spatial = job.parcel_error_aggregation == "spatial" and correlogram is not None
    chosen = "independent" if job.parcel_error_aggregation == "independent" else "correlated"
    # a table per window (a row of Python floats takes ten times its table's memory)
    tables = []
    for win in coverage_windows(
        parcels,
        transform=transform,
        shape=(ny, nx),
        crs=crs.to_string(),
        block=block_shape(carbon_end),
    ):
        tables.append(
            _window_rows(
                job,
                win,
                _window_layers(job, win, inputs, lidar_metrics),
                areas_m2=areas_m2,
                px_ha=px_ha,
                cell_m=abs(transform.a),
                aggregation="spatial" if spatial else chosen,
                correlogram=correlogram if spatial else None,
                sink_correlogram=sink_correlogram if spatial else None,
            )
        )
    if tables:
        stats = pd.concat(tables).sort_index().set_axis(parcels.index)
        on_grid = stats["grid_fraction"].to_numpy()
        refuse_off_grid(on_grid, parcels, where="parcels", id_column="parcel_id")
        warn_partly_off_grid(on_grid, parcels, where="parcels", id_column="parcel_id")
    else:  # no parcels
        stats = pd.DataFrame(index=parcels.index)
    keep = [c for c in parcels.columns if c != parcels.geometry.name]
    out = pd.concat([parcels[keep], stats], axis=1)
    out.attrs = {
        "interval": job.interval,
        "error_aggregation": "spatial" if spatial else chosen,
        "error_correlogram": correlogram.record() if spatial and correlogram else None,
        "sink_error_correlogram": (
            sink_correlogram.record() if spatial and sink_correlogram else None
        ),
        "epochs": [job.epoch_start, job.epoch_end],
    }
    return gpd.GeoDataFrame(out, geometry=parcels.geometry, crs=parcels.crs)
