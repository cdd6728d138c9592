"""Stage ``sink``: per-pixel annual stock-change sink and the forest carbon index.

The science is in :mod:`pipeline.sink` (stock difference between two epochs' carbon maps,
error propagation with the epochs' error correlation, masking of non-forest and poor
quality pixels). This module binds it to the run folder.

Signatures
----------
``sink_job(config) -> SinkJob``
    Resolves ``stages.sink`` and the two epochs (default: first and last) with their
    reference dates. Raises ``ConfigError`` for an unknown or mis-ordered epoch.
``sink_inputs(config, layout) -> {name: Path}``
    ``carbon_start``/``carbon_end`` = ``rasters/carbon_<epoch>.tif``,
    ``carbon_sd_start``/``carbon_sd_end`` = ``rasters/carbon_sd_<epoch>.tif``,
    ``quality_start``/``quality_end`` = ``rasters/quality_<epoch>.tif``.
``sink(job, *, carbon_start, carbon_end, carbon_sd_start, carbon_sd_end, quality_start,
quality_end) -> {relpath: Dataset}``
    ``rasters/sink.tif`` (bands sink_mg_c_ha_yr, sink_sd_mg_c_ha_yr, sink_tco2e_ha_yr,
    sink_sd_tco2e_ha_yr) and ``rasters/forest_carbon_index.tif`` (carbon_mg_c_ha,
    carbon_sd_mg_c_ha, sink_mg_c_ha_yr, sink_sd_mg_c_ha_yr, quality_flag); lazy.

Run: ``forest-carbon run --region nanping --stages sink`` or ``forest-carbon sink ...``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import geopandas as gpd
import xarray as xr

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.sink import (
    forest_carbon_index,
    forest_land_mask,
    stock_change_sink,
    years_between,
)
from pipeline.stage import RunLayout, Stage

SINK_RELPATH = "rasters/sink.tif"
INDEX_RELPATH = "rasters/forest_carbon_index.tif"


@dataclass(frozen=True)
class SinkJob:
    """Everything the ``sink`` and ``parcels`` stages need, resolved from the config."""

    epoch_start: str
    epoch_end: str
    reference_start: dt.date
    reference_end: dt.date
    epoch_error_correlation: float = 0.0
    min_quality: int = 0
    forest_land_classes: tuple[str, ...] = ("forest",)
    parcel_error_aggregation: Literal["correlated", "independent"] = "correlated"
    interval: float = 0.9

    @property
    def years(self) -> float:
        """Time between the two epochs' reference dates, years."""
        return years_between(self.reference_start, self.reference_end)


def sink_job(config: Config) -> SinkJob:
    """Resolve the sink parameters and the compared epochs from a run config."""
    params = config.stages.sink
    by_name = {e.name: e for e in config.epochs}
    if params.epochs is None:
        if len(config.epochs) < 2:
            raise ConfigError(
                "stages.sink: a sink needs two epochs; the config lists only "
                f"{[e.name for e in config.epochs]} (add a second epoch under 'epochs')"
            )
        first, last = config.epochs[0], config.epochs[-1]
    else:
        missing = [n for n in params.epochs if n not in by_name]
        if missing:
            raise ConfigError(
                f"stages.sink.epochs: unknown epoch(s) {missing}; defined: {sorted(by_name)}"
            )
        first, last = by_name[params.epochs[0]], by_name[params.epochs[1]]
    if last.reference <= first.reference:
        raise ConfigError(
            f"stages.sink.epochs: epoch '{last.name}' ({last.reference}) must come after "
            f"'{first.name}' ({first.reference})"
        )
    return SinkJob(
        epoch_start=first.name,
        epoch_end=last.name,
        reference_start=first.reference,
        reference_end=last.reference,
        epoch_error_correlation=params.epoch_error_correlation,
        min_quality=params.min_quality,
        forest_land_classes=params.forest_land_classes,
        parcel_error_aggregation=params.parcel_error_aggregation,
        interval=params.interval,
    )


def epoch_raster_inputs(job: SinkJob, layout: RunLayout) -> dict[str, Path]:
    """The per-epoch carbon, SD and quality maps of the two compared epochs."""
    out = {}
    for role, epoch in (("start", job.epoch_start), ("end", job.epoch_end)):
        out[f"carbon_{role}"] = layout.path(f"rasters/carbon_{epoch}.tif")
        out[f"carbon_sd_{role}"] = layout.path(f"rasters/carbon_sd_{epoch}.tif")
        out[f"quality_{role}"] = layout.path(f"rasters/quality_{epoch}.tif")
    return out


def sink_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``sink`` stage."""
    inputs = epoch_raster_inputs(sink_job(config), layout)
    if config.sources.parcels is not None:
        inputs["parcels"] = config.sources.parcels
    return inputs


def sink(
    job: SinkJob,
    *,
    carbon_start: xr.DataArray,
    carbon_end: xr.DataArray,
    carbon_sd_start: xr.DataArray,
    carbon_sd_end: xr.DataArray,
    quality_start: xr.DataArray,
    quality_end: xr.DataArray,
    parcels: gpd.GeoDataFrame | None = None,
) -> dict[str, xr.Dataset]:
    """The ``sink`` stage: annual sink raster and the forest carbon index (lazy).

    With ``parcels``, pixels whose centre lies outside the parcels of a forest land class
    (``SinkJob.forest_land_classes``) are masked: they are not forest in the bureau's map.
    """
    ds = stock_change_sink(
        carbon_start,
        carbon_end,
        carbon_sd_start,
        carbon_sd_end,
        quality_start,
        quality_end,
        years=job.years,
        epoch_error_correlation=job.epoch_error_correlation,
        min_quality=job.min_quality,
    )
    if parcels is not None:
        forest = forest_land_mask(parcels, carbon_end, land_classes=job.forest_land_classes)
        with xr.set_options(keep_attrs=True):
            ds = ds.where(forest)
    ds.attrs.update({"epoch_start": job.epoch_start, "epoch_end": job.epoch_end})
    index = forest_carbon_index(
        carbon_end, carbon_sd_end, quality_end, ds, min_quality=job.min_quality
    )
    return {SINK_RELPATH: ds, INDEX_RELPATH: index}


STAGE = Stage(name="sink", func=sink, params=sink_job, inputs=sink_inputs)
