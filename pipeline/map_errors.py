"""The map-error correlogram of the parcels' SDs, fitted inside the LiDAR cover.

A parcel's SD needs the correlation of the map's errors between the parcel's pixels
(:mod:`models.spatial_error`). The run has dense evidence of it in one place: inside the
first LiDAR flight at its epoch both the LiDAR model and the satellite model, which maps
everywhere else, can be applied. Their difference, standardised by the SD of a
difference of two independent estimates,

    z = (AGB_satellite - AGB_LiDAR) / sqrt(sd_satellite^2 + sd_LiDAR^2)

(the models' SDs at the plot-sized window, the maps' ``agb_sd_support``), is a dense
field of map residuals. Their
empirical correlogram over pairs of cells *in the same parcel* (a parcel's variance
involves no other pairs, and a stand's pixels share errors beyond what their distance
says) is fitted with the nugget + exponential + shared form of
:class:`models.spatial_error.Correlogram`; the fit over all pairs is recorded next to it.
Carbon is AGB times a constant, so its errors have the same correlation.

What this assumes, and how it can err:

- the satellite map's errors outside the cover have the correlation structure they have
  inside it (stationarity; the cover is a few km^2 of the region's forests, and the
  parcel-shared part rests on the dozen or so parcels inside it);
- ``z`` mixes the errors of both models: where the LiDAR model's errors are less (more)
  spatially correlated than the satellite model's, the correlogram understates
  (overstates) the satellite map's. The LiDAR map is the densest reference the run has;
  the plots are too sparse to resolve correlation at parcel scale;
- the sink's errors, a difference of two epochs' errors, have the same spatial shape,
  with the epochs' error correlation the sink already uses (a separable model).

With no LiDAR model, or fewer residual cells than ``map_errors.min_cells`` of
``models/data/model_rules.yaml``, nothing is fitted and the parcels keep the fully
correlated bound; the record says why.

The parcel-shared part, the one that matters most for a parcel's SD, rests on the dozen or
two parcels inside the cover. Where the run has a carbon project's monitoring sample
(plots that trained no model, re-measured at both epochs, a few per parcel over about a
hundred parcels), :func:`plot_errors` and :func:`plot_shared_parts` measure it from the
final maps' errors at those plots grouped by parcel, for the stocks and, separately, for
the change; the nugget and range stay the cover's (two plots of one parcel lie further
apart than the range). The plots sample the project area only; their shared parts are
applied to every parcel, which assumes the other parcels' errors are alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from rasterio.transform import rowcol

from models.biomass import SOURCE_BASELINE, SOURCE_NONE
from models.datafiles import data_yaml
from models.errors import ModelDomainError
from models.spatial_error import (
    Correlogram,
    correlogram_record,
    empirical_correlogram,
    fit_correlogram,
)
from models.variance_components import one_way_components
from pipeline.contracts import (
    LIDAR_METRICS_RELPATH,
    MODELS_RELPATH,
    TERRAIN_RELPATH,
    load_models,
    map_relpath,
    open_raster,
)
from pipeline.errors import InputDataError
from pipeline.features import grid_extent, parcel_index, terrain_features, with_band_names
from pipeline.samples import bundle_class_layers, epoch_stack, lazy_lidar_cover
from pipeline.sink import as_band, named_band
from pipeline.zonal import block_shape, coverage_windows, covered_fraction_sum, cut, weighted_sum

#: band of the predict stage's quality raster with the model that mapped a cell
MODEL_SOURCE_BAND = "model_source"


def lidar_residuals(
    models: Path | bytes,
    *,
    composites: Mapping[str, xr.DataArray],
    terrain: xr.DataArray,
    lidar_metrics: xr.DataArray | Path,
    quality: Mapping[str, xr.DataArray],
    parcels: gpd.GeoDataFrame,
) -> tuple[np.ndarray, np.ndarray, float, str] | str:
    """Standardised satellite-minus-LiDAR residuals on the bounding box of the mapped cells
    the first LiDAR flight covers (NaN elsewhere), the parcel of each of its cells (1 + row
    of ``parcels``, 0 in none; by cell centre), the cell size (m) and the LiDAR epoch; or
    why there are none.

    Both models are applied here to the flight's epoch, as the predict stage applies them
    (the satellite model to the stack without LiDAR, the LiDAR model to the stack with the
    flight's metrics): the maps themselves take the LiDAR model only where every epoch was
    flown (:func:`pipeline.samples.joint_cover`), and the satellite model's errors are to
    be measured over the whole flight. ``quality`` holds each epoch's quality raster; the
    LiDAR epoch's marks the cells a model maps (forest land with a clear observation, not
    the baseline stock of land not yet forest).
    """
    bundle = load_models(models)
    mapper = bundle["mapper"]
    epoch = mapper.lidar_epoch
    if mapper.lidar is None or epoch is None:
        return f"{MODELS_RELPATH} has no LiDAR model"
    if epoch not in composites or epoch not in quality:
        raise InputDataError(f"no composite or quality map of the LiDAR epoch {epoch}")
    src_name = map_relpath("quality", epoch)
    source = as_band(named_band(quality[epoch], MODEL_SOURCE_BAND, source=src_name), name=src_name)
    metrics = with_band_names(open_raster(lidar_metrics), source=LIDAR_METRICS_RELPATH)
    # the cells inside the flight that a model maps (not those without a value, nor the
    # baseline stock of land not yet forest, which no model predicts), lazily: only their
    # count and the rows and columns they occupy are computed on the whole grid, block by
    # block
    cells = lazy_lidar_cover(metrics, min_fraction=mapper.lidar_min_fraction) & ~dask.array.isin(
        dask.array.asarray(source.data), [SOURCE_NONE, SOURCE_BASELINE]
    )
    n_cells, in_rows, in_cols = dask.compute(cells.sum(), cells.any(axis=1), cells.any(axis=0))
    least = int(data_yaml("model_rules.yaml")["map_errors"]["min_cells"])
    if n_cells < least:
        return f"{int(n_cells)} mapped cells in the LiDAR flight of {epoch}, fewer than {least}"
    rows, cols = np.flatnonzero(in_rows), np.flatnonzero(in_cols)
    box = {"y": slice(rows[0], rows[-1] + 1), "x": slice(cols[0], cols[-1] + 1)}
    # predictors on the box plus the moving window's reach (the window means inside the
    # box are then the predict stage's), not on the whole grid
    pad = int(bundle["support_px"])
    r0, c0 = max(rows[0] - pad, 0), max(cols[0] - pad, 0)
    padded = {"y": slice(r0, rows[-1] + 1 + pad), "x": slice(c0, cols[-1] + 1 + pad)}
    inner = {
        "y": slice(rows[0] - r0, rows[-1] + 1 - r0),
        "x": slice(cols[0] - c0, cols[-1] + 1 - c0),
    }
    terr = terrain_features(open_raster(terrain).isel(padded), source=TERRAIN_RELPATH)
    classes = bundle_class_layers(bundle, parcels, terr)
    stack = epoch_stack(
        open_raster(composites[epoch]).isel(padded), terr, metrics.isel(padded), epoch=epoch,
        support_px=bundle["support_px"], classes=classes,
    ).isel(inner)  # fmt: skip
    names = [str(b) for b in stack["band"].to_numpy()]
    values = np.asarray(stack.values, dtype=np.float64)
    nb, ny, nx = values.shape
    table = pd.DataFrame(values.reshape(nb, -1).T, columns=names)
    # without the cover band the rule picks the satellite models, as outside the cover
    satellite, _ = mapper.predict(table.drop(columns="lidar_fraction"), epoch=epoch)
    lidar = mapper.lidar.predict(table)
    sat, sat_s = satellite.mean.reshape(ny, nx), satellite.sd.reshape(ny, nx)
    lid, lid_s = lidar.mean.reshape(ny, nx), lidar.sd.reshape(ny, nx)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (sat - lid) / np.hypot(sat_s, lid_s)
    z = np.where(cells[box["y"], box["x"]].compute(), z, np.nan)
    z[~np.isfinite(z)] = np.nan
    labels = parcel_index(parcels, cut(source, **box))
    _, _, _, _, cell_m, _ = grid_extent(source)
    return z, labels, float(cell_m), str(epoch)


def fit_map_errors(
    residuals: np.ndarray, parcel_labels: np.ndarray, *, cell_m: float
) -> tuple[Correlogram, dict[str, Any]]:
    """The correlogram of errors within a parcel fitted to standardised residuals on a
    grid (pairs of cells with the same positive ``parcel_labels`` only), and its record:
    parameters, empirical points, the distance classes, and the fit over all pairs next
    to it for comparison."""
    share = float(data_yaml("model_rules.yaml")["map_errors"]["max_lag_share"])
    max_lag_m = share * min(residuals.shape) * cell_m
    records: dict[str, Any] = {}
    models: dict[str, Correlogram] = {}
    for key, groups in (("within_parcel", parcel_labels), ("all_pairs", None)):
        empirical = empirical_correlogram(
            residuals, cell_m=cell_m, max_lag_m=max_lag_m, bin_m=cell_m, groups=groups
        )
        try:
            models[key] = fit_correlogram(empirical)
        except (ModelDomainError, RuntimeError) as err:
            raise InputDataError(f"the map-error correlogram cannot be fitted: {err}") from None
        records[key] = correlogram_record(models[key], empirical)
    within = parcel_labels > 0
    record = {
        **records.pop("within_parcel"),
        "pairs": "within a parcel (the parcels' SDs use these)",
        "all_pairs": records["all_pairs"],
        "n_cells": int(np.isfinite(residuals[within]).sum()),
        "n_parcels": int(np.unique(parcel_labels[within & np.isfinite(residuals)]).size),
        "mean_residual": float(np.nanmean(residuals[within])),
        "max_lag_m": max_lag_m,
        "bin_m": cell_m,
    }
    return models["within_parcel"], record


def plot_errors(
    plots: gpd.GeoDataFrame,
    observed: pd.DataFrame,
    *,
    value: str,
    maps: Mapping[str, tuple[xr.DataArray, xr.DataArray]],
    parcels: gpd.GeoDataFrame,
    first: str,
    last: str,
    rho: float,
) -> pd.DataFrame:
    """Standardised errors of the maps at plots that trained no model.

    ``plots``: the plot squares (``plot_id``); ``observed``: ``plot_id``, ``epoch`` and the
    plot's ``value``; ``maps``: per epoch the map and its support SD (single-band, the
    same grid). The map's value at a plot is its mean over the square by exact cell
    coverage (:mod:`pipeline.zonal`, as the estimate stage takes it), the SD likewise;
    plots whose square has an unmapped cell are left out. Rows: one per plot and epoch
    ``first`` and ``last``, ``z = (plot - map) / SD``, and one per plot with epoch
    ``"change"``, ``z`` of the change with SD ``sqrt(s1^2 + s2^2 - 2 rho s1 s2)``
    (``rho``: the epochs' error correlation the sink uses). Columns ``plot_id``,
    ``parcel`` (1 + row of ``parcels`` of the plot's centre cell, 0 in none), ``x_m``,
    ``y_m``, ``epoch``, ``map`` (the map, or its change, at the plot), ``z``.

    The maps are read, and the parcels rasterised, on the windows of groups of plots only
    (:func:`pipeline.zonal.coverage_windows`).
    """
    ref = maps[last][0]
    transform = ref.rio.transform(recalc=True)
    shape = (ref.sizes["y"], ref.sizes["x"])
    centres = plots.geometry.centroid
    rows, cols = rowcol(transform, centres.x.to_numpy(), centres.y.to_numpy())
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    parcel = np.zeros(len(plots), dtype=np.int32)
    # per epoch the map and its SD at each plot, read on the windows of groups of plots
    at_plots = {(e, k): np.full(len(plots), np.nan) for e in (first, last) for k in (0, 1)}
    for win in coverage_windows(
        plots, transform=transform, shape=shape, crs=str(ref.rio.crs), block=block_shape(ref)
    ):
        window_maps = [
            np.asarray(v, dtype=np.float64)
            for v in dask.compute(*(win.grid(maps[e][k]).data for e, k in at_plots))
        ]
        # a plot's square covers its centre's cell, so the window holds that cell
        labels = parcel_index(parcels, win.grid(ref)) if inside[win.members].any() else None
        for i, cov in zip(win.members, win.covs, strict=True):
            if labels is not None and inside[i]:
                parcel[i] = labels[rows[i] - win.y.start, cols[i] - win.x.start]
            whole = covered_fraction_sum(cov)
            for key, values in zip(at_plots, window_maps, strict=True):
                if whole > 0 and covered_fraction_sum(cov, np.isfinite(values)) == whole:
                    at_plots[key][i] = weighted_sum(cov, values) / whole

    ids = plots["plot_id"].astype(str).to_numpy()
    obs = observed.assign(
        plot_id=observed["plot_id"].astype(str), epoch=observed["epoch"].astype(str)
    )
    resid, sd, mapped = {}, {}, {}
    for e in (first, last):
        y = obs[obs["epoch"] == e].drop_duplicates("plot_id").set_index("plot_id")[value]
        mapped[e], sd[e] = at_plots[(e, 0)], at_plots[(e, 1)]
        resid[e] = y.reindex(ids).to_numpy(dtype=np.float64) - mapped[e]
    change_sd = np.sqrt(sd[first] ** 2 + sd[last] ** 2 - 2.0 * rho * sd[first] * sd[last])
    with np.errstate(invalid="ignore", divide="ignore"):  # no SD: dropped below
        z = {
            first: (mapped[first], resid[first] / sd[first]),
            last: (mapped[last], resid[last] / sd[last]),
            "change": (mapped[last] - mapped[first], (resid[last] - resid[first]) / change_sd),
        }
    base = {
        "plot_id": ids,
        "parcel": parcel,
        "x_m": centres.x.to_numpy(),
        "y_m": centres.y.to_numpy(),
    }
    out = pd.concat(
        [pd.DataFrame({**base, "epoch": k, "map": m, "z": v}) for k, (m, v) in z.items()]
    )
    return out[np.isfinite(out["z"])].reset_index(drop=True)


def plot_shared_parts(
    errors: pd.DataFrame, lidar: Correlogram, *, stocks: Sequence[str]
) -> tuple[Correlogram, Correlogram, dict[str, Any]] | str:
    """The parcel-shared part of the stocks' and of the change's errors from the plots'
    standardised errors grouped by parcel (:func:`plot_errors`), as correlograms with the
    LiDAR fit's nugget and range; or why there are none.

    The plots sample the errors of the final map against the ground in the parcels they lie
    in, wherever the map comes from; the LiDAR cover holds a dozen or two parcels and its
    residuals mix the LiDAR model's errors in. Two plots of one parcel lie further apart
    than the errors' range, so they cannot resolve the nugget and range (taken from the
    LiDAR fit), but the uncentred covariance ``C`` of the standardised errors of two plots
    of one parcel (:func:`models.variance_components.one_way_components`, groups: parcel and
    epoch for the stocks, parcel for the change) is the model's ``E[z_i z_j]`` averaged
    over their pairs: ``C = shared + (1 - nugget - shared) E`` with ``E`` the mean of
    ``exp(-d / range)`` over the pairs of plots of one parcel, so ``shared = (C - (1 -
    nugget) E) / (1 - E)``, within ``[0, 1 - nugget]`` (the record says when the bound
    cut it). Why the covariance and not the correlation ``C / E[z^2]``: a parcel's variance
    is ``sum_ij w_i s_i w_j s_j E[z_i z_j]`` with ``s`` the maps' SDs
    (:mod:`models.spatial_error`, eq. 1), and for a large parcel the shared term dominates,
    ``C (sum_i w_i s_i)^2``; the correlation equals ``C`` only where the SDs standardise
    the plots' errors to variance 1. The change's SD comes from the epochs' SDs and their
    error correlation, not from a calibration at these plots, and its ``E[z^2]`` there
    departs from 1 (0.72 on the demo region): the correlation would carry that
    misstatement of scale into every large parcel's SD. The change's errors get their own
    shared part: the plots are re-measured, so it is measured rather than assumed to be
    the stocks'.
    With fewer parcels holding two plots than ``map_errors.min_plot_parcels``
    (``models/data/model_rules.yaml``), nothing is estimated.
    """
    least = int(data_yaml("model_rules.yaml")["map_errors"]["min_plot_parcels"])
    in_parcel = errors[errors["parcel"] > 0]
    per_parcel = in_parcel[in_parcel["epoch"] == "change"].groupby("parcel").size()
    n_parcels = int((per_parcel >= 2).sum())
    if n_parcels < least:
        return f"{n_parcels} parcels hold two or more monitoring plots, fewer than {least}"
    pairs = []
    for _, p in in_parcel[in_parcel["epoch"] == "change"].groupby("parcel"):
        xy = p[["x_m", "y_m"]].to_numpy()
        i, j = np.triu_indices(len(p), 1)
        pairs.append(np.hypot(*(xy[i] - xy[j]).T))
    e_mean = float(np.mean(np.exp(-np.concatenate(pairs) / lidar.range_m)))
    fitted: dict[str, Correlogram] = {}
    record: dict[str, Any] = {
        "method": "uncentred intra-parcel covariance C of the plots' standardised errors "
        "(one-way random effects, ANOVA), shared = (C - (1 - nugget) E) / (1 - E), E the mean "
        "exp(-d / range) over pairs of plots of one parcel; nugget and range of the LiDAR fit",
        "n_parcels_with_pairs": n_parcels,
        "mean_exp_pairs": e_mean,
        "lidar_shared": lidar.shared,
    }
    for key, rows in (
        ("stocks", in_parcel[in_parcel["epoch"].isin(list(stocks))]),
        ("change", in_parcel[in_parcel["epoch"] == "change"]),
    ):
        groups = rows["parcel"].astype(str) + "/" + rows["epoch"].astype(str)
        comp = one_way_components(rows["z"].to_numpy(), groups.to_numpy())
        solved = (comp.uncentred_between - (1.0 - lidar.nugget) * e_mean) / (1.0 - e_mean)
        shared = float(np.clip(solved, 0.0, 1.0 - lidar.nugget))
        fitted[key] = Correlogram(nugget=lidar.nugget, shared=shared, range_m=lidar.range_m)
        record[key] = {
            **comp.record(),
            "shared": shared,
            "shared_unbounded": float(solved),
            "mean_z2": float(np.mean(rows["z"] ** 2)),
        }
    return fitted["stocks"], fitted["change"], record
