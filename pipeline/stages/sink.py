"""Stage ``sink``: per-pixel annual stock-change sink and the forest carbon index.

The science is in :mod:`pipeline.sink` (stock difference between two epochs' carbon maps,
error propagation with the epochs' error correlation, masking of non-forest and poor
quality pixels). This module binds it to the run folder.

Signatures
----------
``sink_job(config) -> SinkJob`` (:mod:`pipeline.contracts`, shared with ``parcels``)
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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from pipeline.config import Config
from pipeline.contracts import (
    INDEX_RELPATH,
    SINK_RELPATH,
    RunLayout,
    SinkJob,
    correlation_input,
    epoch_raster_inputs,
    resolve_correlation,
    sink_job,
)
from pipeline.sink import forest_carbon_index, stock_change_sink
from pipeline.stage import Stage


def sink_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``sink`` stage."""
    return {**epoch_raster_inputs(sink_job(config), layout), **correlation_input(config, layout)}


def sink(
    job: SinkJob,
    *,
    carbon_start: xr.DataArray,
    carbon_end: xr.DataArray,
    carbon_sd_start: xr.DataArray,
    carbon_sd_end: xr.DataArray,
    quality_start: xr.DataArray,
    quality_end: xr.DataArray,
    model_card: Mapping[str, Any] | None = None,
) -> dict[str, xr.Dataset]:
    """The ``sink`` stage: annual sink raster and the forest carbon index (lazy).

    The carbon maps have values on forest land only (``PredictParams.forest_land_classes``),
    so the sink is masked outside forest land too.
    """
    job = resolve_correlation(job, model_card)
    ds = stock_change_sink(
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
    ds.attrs.update({"epoch_start": job.epoch_start, "epoch_end": job.epoch_end})
    index = forest_carbon_index(
        carbon_end, carbon_sd_end, quality_end, ds, min_quality=job.min_quality
    )
    return {SINK_RELPATH: ds, INDEX_RELPATH: index}


STAGE = Stage(name="sink", func=sink, params=sink_job, inputs=sink_inputs)
