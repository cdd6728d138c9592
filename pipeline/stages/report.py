"""Stage ``report``: one self-contained ``report/report.html`` plus PNG quicklooks.

Assembly is in :mod:`pipeline.report.build` (maps, model diagnostics, per-parcel table,
credit calculation step by step with parameter sources, data inventory, config hash, a
banner when the inputs are simulated). Output is deterministic: rerunning on the same
inputs writes the same bytes.

Signatures
----------
``report_job(config) -> ReportJob``
    title, region, ``simulated`` flag, config sha256, the resolved sink and credits jobs.
``report_inputs(config, layout) -> {name: Path}``
    required: ``sink`` = ``rasters/sink.tif``, ``parcel_sink`` =
    ``parcels/parcel_sink.gpkg``, ``credits`` = ``credits/credits.csv``; used when present:
    ``composite`` = ``composites/<end epoch>.tif``, ``chm`` = ``lidar/chm.tif``, ``agb`` /
    ``carbon`` = ``rasters/agb_<end>.tif`` / ``rasters/carbon_<end>.tif``, ``model_card`` =
    ``model/model_card.json``, ``plot_features`` = ``model/plot_features.csv``,
    ``items_start`` / ``items_end`` = ``items/<epoch>.json``, ``lidar_tiles`` =
    ``lidar/tiles.csv``, ``plot_biomass`` = ``plots/plot_biomass.csv``.
``report_stage(job, *, sink, parcel_sink, credits, **optional) -> {relpath: str | bytes}``
    ``report/report.html`` and ``report/quicklooks/<name>.png`` (rgb, chm, agb, carbon,
    sink, sink_sd, parcels, observed_vs_predicted, residuals; those whose inputs exist).

Run: ``forest-carbon run --region nanping --stages report`` or ``forest-carbon report``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import xarray as xr
from scipy.stats import norm

from pipeline.config import Config
from pipeline.report.build import build_report
from pipeline.stage import RunLayout, Stage
from pipeline.stages.credits import CREDITS_RELPATH, CreditsJob, credits_job
from pipeline.stages.parcels import GPKG_RELPATH
from pipeline.stages.sink import SINK_RELPATH, SinkJob, resolve_correlation

REPORT_RELPATH = "report/report.html"
QUICKLOOK_DIR = "report/quicklooks"


@dataclass(frozen=True)
class ReportJob:
    """What the report states about the run, resolved from the config."""

    title: str
    region: str
    simulated: bool
    config_sha256: str
    credits: CreditsJob
    rgb_bands: tuple[str, str, str]
    rgb_stretch_percentiles: tuple[float, float]

    @property
    def sink(self) -> SinkJob:
        return self.credits.sink

    @property
    def z_value(self) -> float:
        """Normal quantile of the central interval of the sink tables."""
        return float(norm.ppf(0.5 + self.sink.interval / 2))

    @property
    def interval_pct(self) -> str:
        return f"{100 * self.sink.interval:g}"


def report_job(config: Config) -> ReportJob:
    """Resolve the report's parameters from a run config."""
    params = config.stages.report
    title = params.title or f"Forest carbon stock and sink: {config.region}"
    return ReportJob(
        title=title,
        region=config.region,
        simulated=config.simulated,
        config_sha256=config.sha256,
        credits=credits_job(config),
        rgb_bands=params.rgb_bands,
        rgb_stretch_percentiles=params.rgb_stretch_percentiles,
    )


def report_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``report`` stage (optional ones only when they exist)."""
    sj = credits_job(config).sink
    required = {
        "sink": layout.path(SINK_RELPATH),
        "parcel_sink": layout.path(GPKG_RELPATH),
        "credits": layout.path(CREDITS_RELPATH),
    }
    optional = {
        "composite": layout.path(f"composites/{sj.epoch_end}.tif"),
        "chm": layout.path("lidar/chm.tif"),
        "agb": layout.path(f"rasters/agb_{sj.epoch_end}.tif"),
        "carbon": layout.path(f"rasters/carbon_{sj.epoch_end}.tif"),
        "model_card": layout.path("model/model_card.json"),
        "plot_features": layout.path("model/plot_features.csv"),
        "items_start": layout.path(f"items/{sj.epoch_start}.json"),
        "items_end": layout.path(f"items/{sj.epoch_end}.json"),
        "lidar_tiles": layout.path("lidar/tiles.csv"),
        "plot_biomass": layout.path("plots/plot_biomass.csv"),
    }
    return {**required, **{k: p for k, p in optional.items() if p.exists()}}


def report_stage(
    job: ReportJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    parcel_sink: gpd.GeoDataFrame,
    credits: pd.DataFrame,
    composite: xr.DataArray | None = None,
    chm: xr.DataArray | None = None,
    agb: xr.DataArray | None = None,
    carbon: xr.DataArray | None = None,
    model_card: dict[str, Any] | None = None,
    plot_features: pd.DataFrame | None = None,
    items_start: dict[str, Any] | None = None,
    items_end: dict[str, Any] | None = None,
    lidar_tiles: pd.DataFrame | None = None,
    plot_biomass: pd.DataFrame | None = None,
) -> dict[str, str | bytes]:
    """The ``report`` stage."""
    sink_job = resolve_correlation(job.sink, model_card)
    job = replace(job, credits=replace(job.credits, sink=sink_job))
    items = {}
    if items_start is not None:
        items[job.sink.epoch_start] = items_start
    if items_end is not None:
        items[job.sink.epoch_end] = items_end
    html, quicklooks = build_report(
        job,
        sink=sink,
        parcel_sink=parcel_sink,
        credits=credits,
        composite=composite,
        chm=chm,
        agb=agb,
        carbon=carbon,
        model_card=model_card,
        plot_features=plot_features,
        items=items,
        lidar_tiles=lidar_tiles,
        plot_biomass=plot_biomass,
    )
    out: dict[str, str | bytes] = {REPORT_RELPATH: html}
    for name, png in quicklooks.items():
        out[f"{QUICKLOOK_DIR}/{name}.png"] = png
    return out


STAGE = Stage(name="report", func=report_stage, params=report_job, inputs=report_inputs)
