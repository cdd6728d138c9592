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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from pipeline.config import Config, SinkParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.sink import (
    forest_carbon_index,
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
    epoch_error_correlation: float | Literal["estimated"]
    min_quality: int
    parcel_error_aggregation: Literal["correlated", "independent"]
    interval: float

    @classmethod
    def from_params(
        cls,
        params: SinkParams,
        *,
        epochs: tuple[str, str],
        reference_dates: tuple[dt.date, dt.date],
    ) -> SinkJob:
        """The job comparing ``epochs`` (start, end) dated ``reference_dates``."""
        return cls(
            epoch_start=epochs[0],
            epoch_end=epochs[1],
            reference_start=reference_dates[0],
            reference_end=reference_dates[1],
            epoch_error_correlation=params.epoch_error_correlation,
            min_quality=params.min_quality,
            parcel_error_aggregation=params.parcel_error_aggregation,
            interval=params.interval,
        )

    @property
    def correlation(self) -> float:
        """``epoch_error_correlation`` as a number (see :func:`resolve_correlation`)."""
        if self.epoch_error_correlation == "estimated":
            raise InputDataError(
                "the epochs' error correlation is 'estimated' and was not resolved from the "
                "model card"
            )
        return float(self.epoch_error_correlation)

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
    return SinkJob.from_params(
        params, epochs=(first.name, last.name), reference_dates=(first.reference, last.reference)
    )


def resolve_correlation(job: SinkJob, model_card: Mapping[str, Any] | None) -> SinkJob:
    """The job with a number for ``epoch_error_correlation``.

    ``"estimated"`` takes the model card's estimate for the compared epochs (written by the
    ``model`` stage from plots measured at both epochs); without one (too few re-measured
    plots) it falls back to 0, the conservative value.
    """
    if job.epoch_error_correlation != "estimated":
        return job
    if model_card is None:
        raise InputDataError(
            "stages.sink.epoch_error_correlation is 'estimated' but there is no model card "
            "(model/model_card.json); run the model stage or give a number"
        )
    key = f"{job.epoch_start}/{job.epoch_end}"
    rho = model_card.get("epoch_error_correlation", {}).get(key, {}).get("rho")
    return replace(job, epoch_error_correlation=0.0 if rho is None else float(rho))


def correlation_input(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The model card, when the sink's epoch correlation is to be taken from it."""
    if config.stages.sink.epoch_error_correlation == "estimated":
        return {"model_card": layout.path("model/model_card.json")}
    return {}


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
