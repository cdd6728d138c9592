"""Stage ``styles``: QGIS layer styles (``.qml``) for the carbon, uncertainty and sink maps
and the parcel layer, written beside each layer.

QGIS loads a ``.qml`` of a raster's name as its default style, so opening
``rasters/carbon_2024.tif`` shows it styled; the sink's uncertainty band has its own file
(``rasters/sink.sink_sd_tco2e_ha_yr.qml``, *Layer Properties > Style > Load Style*). Paths:
:func:`pipeline.contracts.style_relpath`; the XML: :mod:`pipeline.qml`.

=========================  ==========================  ===========  ====================
layer                      band or attribute           ramp         class limits
=========================  ==========================  ===========  ====================
rasters/carbon_<epoch>     carbon                      YlGn         2nd-98th percentile
rasters/carbon_sd_<epoch>  carbon_sd                   magma        2nd-98th percentile
rasters/sink               sink_tco2e_ha_yr            RdYlGn, 0    2nd-98th percentile
rasters/sink (2nd style)   sink_sd_tco2e_ha_yr         magma        2nd-98th percentile
parcels/parcel_sink.gpkg   sink_tco2e_ha_yr            RdYlGn, 0    quantiles (5 classes)
=========================  ==========================  ===========  ====================

The ramps are the report's (the same map looks the same in both); "0" marks a diverging
ramp centred on no change. Percentiles are of the valid pixels, on every k-th row and
column when a raster is larger than :data:`SAMPLE_PX` a side (so a limit always lies
within the raster's range).

Run: ``forest-carbon run --region nanping --stages styles``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import xarray as xr

from pipeline.config import Config
from pipeline.contracts import (
    PARCEL_SINK_GPKG_RELPATH,
    SINK_RELPATH,
    RunLayout,
    map_relpath,
    style_relpath,
)
from pipeline.errors import InputDataError
from pipeline.qml import Ramp, graduated_style, raster_style
from pipeline.sink import as_band, named_band
from pipeline.stage import Stage

#: side, in pixels, above which the percentiles are taken on a regular subsample
SAMPLE_PX = 1024

#: (band, ramp) of each per-epoch map
EPOCH_MAP_STYLES: dict[str, tuple[str, Ramp]] = {
    "carbon": ("carbon", Ramp("YlGn")),
    "carbon_sd": ("carbon_sd", Ramp("magma")),
}
#: the sink's bands, the first its default style
SINK_STYLES: tuple[tuple[str, Ramp], ...] = (
    ("sink_tco2e_ha_yr", Ramp("RdYlGn", diverging=True)),
    ("sink_sd_tco2e_ha_yr", Ramp("magma")),
)
#: attribute of the parcel layer and its ramp
PARCEL_STYLE: tuple[str, Ramp] = ("sink_tco2e_ha_yr", Ramp("RdYlGn", diverging=True))
PARCEL_UNITS = "t CO2e/ha/yr"


@dataclass(frozen=True)
class StylesJob:
    """The epochs whose maps are styled, and the class limits' percentiles."""

    epochs: tuple[str, ...]
    percentiles: tuple[float, float] = (2.0, 98.0)
    n_stops: int = 7
    n_parcel_classes: int = 5


def styles_job(config: Config) -> StylesJob:
    return StylesJob(epochs=tuple(e.name for e in config.epochs))


def styles_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Each epoch's maps (``carbon.<epoch>``, ``carbon_sd.<epoch>``), the sink, the parcels."""
    inputs = {
        f"{name}.{e.name}": layout.path(map_relpath(name, e.name))
        for name in EPOCH_MAP_STYLES
        for e in config.epochs
    }
    inputs["sink"] = layout.path(SINK_RELPATH)
    inputs["parcel_sink"] = layout.path(PARCEL_SINK_GPKG_RELPATH)
    return inputs


def _band_names(raster: xr.DataArray) -> list[str]:
    return [str(b) for b in raster["band"].to_numpy()] if "band" in raster.coords else []


def band_limits(band: xr.DataArray, *, percentiles: tuple[float, float], source: str):
    """The percentiles of a band's valid values (on a regular subsample past SAMPLE_PX)."""
    step = max(1, math.ceil(max(band.sizes["y"], band.sizes["x"]) / SAMPLE_PX))
    values = np.asarray(band.isel(y=slice(None, None, step), x=slice(None, None, step)).values)
    finite = values[np.isfinite(values)]
    if not finite.size:
        raise InputDataError(f"{source}: no valid pixels to take style limits from")
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


def _raster_style(job: StylesJob, raster: xr.DataArray, band: str, ramp: Ramp, source: str) -> str:
    names = _band_names(raster)
    values = as_band(named_band(raster, band, source=source), name=source)
    units = raster.attrs.get("units", "")
    unit = units if isinstance(units, str) else units[names.index(band)]
    return raster_style(
        band_index=names.index(band) + 1,
        band=band,
        limits=band_limits(values, percentiles=job.percentiles, source=source),
        ramp=ramp,
        units=unit,
        n_stops=job.n_stops,
        percentiles=job.percentiles,
    )


def styles_stage(
    job: StylesJob,
    *,
    carbon: Mapping[str, xr.DataArray],
    carbon_sd: Mapping[str, xr.DataArray],
    sink: xr.DataArray,
    parcel_sink: gpd.GeoDataFrame,
) -> dict[str, str]:
    """The styles of the module's table, keyed by their paths (``.qml`` beside each layer)."""
    maps: dict[str, Mapping[str, Any]] = {"carbon": carbon, "carbon_sd": carbon_sd}
    out: dict[str, str] = {}
    for name, (band, ramp) in EPOCH_MAP_STYLES.items():
        for epoch in job.epochs:
            layer = map_relpath(name, epoch)
            out[style_relpath(layer)] = _raster_style(job, maps[name][epoch], band, ramp, layer)
    for i, (band, ramp) in enumerate(SINK_STYLES):
        path = style_relpath(SINK_RELPATH, None if i == 0 else band)
        out[path] = _raster_style(job, sink, band, ramp, SINK_RELPATH)
    field, ramp = PARCEL_STYLE
    if field not in parcel_sink.columns:
        raise InputDataError(f"{PARCEL_SINK_GPKG_RELPATH}: no attribute {field!r} to style")
    values = parcel_sink[field].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        raise InputDataError(f"{PARCEL_SINK_GPKG_RELPATH}: {field!r} has no valid values")
    breaks = np.unique(np.quantile(values, np.linspace(0, 1, job.n_parcel_classes + 1)))
    if breaks.size < 2:
        breaks = np.repeat(breaks, 2)
    out[style_relpath(PARCEL_SINK_GPKG_RELPATH)] = graduated_style(
        field=field, breaks=breaks.tolist(), ramp=ramp, units=PARCEL_UNITS
    )
    return out


STAGE = Stage(name="styles", func=styles_stage, params=styles_job, inputs=styles_inputs)
