"""The map-error correlogram of the parcels' SDs, fitted inside the LiDAR cover.

A parcel's SD needs the correlation of the map's errors between the parcel's pixels
(:mod:`models.spatial_error`). The run has dense evidence of it in one place: inside the
LiDAR cover at the LiDAR epoch the map is the LiDAR model's, and the satellite model,
which maps everywhere else, can be applied there too. Their difference, standardised by
the SD of a difference of two independent estimates,

    z = (AGB_satellite - AGB_LiDAR) / sqrt(sd_satellite^2 + sd_LiDAR^2)

(the support SDs, band ``agb_sd_support``), is a dense field of map residuals. Their
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
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from models.biomass import SOURCE_LIDAR
from models.datafiles import data_yaml
from models.errors import ModelDomainError
from models.spatial_error import (
    Correlogram,
    correlogram_record,
    empirical_correlogram,
    fit_correlogram,
)
from pipeline.contracts import (
    MODELS_RELPATH,
    TERRAIN_RELPATH,
    load_models,
    map_relpath,
    open_raster,
)
from pipeline.errors import InputDataError
from pipeline.features import grid_extent, parcel_index, terrain_features
from pipeline.samples import bundle_class_layers, epoch_stack
from pipeline.sink import as_band, named_band

#: band of the predict stage's quality raster with the model that mapped a cell
MODEL_SOURCE_BAND = "model_source"
#: band of the predict stage's AGB SD raster with the window estimate's own error
AGB_SUPPORT_SD_BAND = "agb_sd_support"


def lidar_residuals(
    models: Path | bytes,
    *,
    composites: Mapping[str, xr.DataArray],
    terrain: xr.DataArray,
    agb: Mapping[str, xr.DataArray],
    agb_sd: Mapping[str, xr.DataArray],
    quality: Mapping[str, xr.DataArray],
    parcels: gpd.GeoDataFrame,
) -> tuple[np.ndarray, np.ndarray, float, str] | str:
    """Standardised satellite-minus-LiDAR residuals on the LiDAR-mapped cells' bounding
    box (NaN elsewhere), the parcel of each of its cells (1 + row of ``parcels``, 0 in
    none; by cell centre), the cell size (m) and the LiDAR epoch; or why there are none.

    ``composites``, ``agb``, ``agb_sd`` and ``quality`` hold each epoch's composite and
    predict-stage maps; only the LiDAR epoch's are read.
    """
    bundle = load_models(models)
    mapper = bundle["mapper"]
    epoch = mapper.lidar_epoch
    if mapper.lidar is None or epoch is None:
        return f"{MODELS_RELPATH} has no LiDAR model"
    given = {"composite": composites, "agb": agb, "agb_sd": agb_sd, "quality": quality}
    missing = [name for name, maps in given.items() if epoch not in maps]
    if missing:
        raise InputDataError(f"no {missing} map of the LiDAR epoch {epoch} for the error model")
    src_name = map_relpath("quality", epoch)
    source = as_band(named_band(quality[epoch], MODEL_SOURCE_BAND, source=src_name), name=src_name)
    lidar_cells = np.asarray(source.values) == SOURCE_LIDAR
    least = int(data_yaml("model_rules.yaml")["map_errors"]["min_cells"])
    if lidar_cells.sum() < least:
        return f"{int(lidar_cells.sum())} LiDAR-mapped cells at {epoch}, fewer than {least}"
    rows, cols = np.flatnonzero(lidar_cells.any(axis=1)), np.flatnonzero(lidar_cells.any(axis=0))
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
    # the predict stage's stack without LiDAR: the satellite model's prediction, as it
    # maps every cell outside the cover
    stack = epoch_stack(
        open_raster(composites[epoch]).isel(padded), terr, None, epoch=epoch,
        support_px=bundle["support_px"], classes=classes,
    ).isel(inner)  # fmt: skip
    names = [str(b) for b in stack["band"].to_numpy()]
    values = np.asarray(stack.values, dtype=np.float64)
    nb, ny, nx = values.shape
    table = pd.DataFrame(values.reshape(nb, -1).T, columns=names)
    satellite, _ = mapper.predict(table, epoch=epoch)
    sd_name = map_relpath("agb_sd", epoch)
    lid = np.asarray(as_band(agb[epoch], name=map_relpath("agb", epoch)).isel(box).values)
    lid_sd = as_band(named_band(agb_sd[epoch], AGB_SUPPORT_SD_BAND, source=sd_name), name=sd_name)
    lid_s = np.asarray(lid_sd.isel(box).values, dtype=np.float64)
    sat, sat_s = satellite.mean.reshape(ny, nx), satellite.sd.reshape(ny, nx)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (sat - lid) / np.hypot(sat_s, lid_s)
    z = np.where(lidar_cells[box["y"], box["x"]], z, np.nan)
    z[~np.isfinite(z)] = np.nan
    labels = parcel_index(parcels, source)[box["y"], box["x"]]
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
