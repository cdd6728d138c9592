"""Stage ``report``: one self-contained ``report/report.html`` plus PNG quicklooks, and the
run's tables in one workbook, ``report/tables.xlsx`` (:mod:`pipeline.report.tables`).

Assembly, and the report's parameters (:class:`~pipeline.report.build.ReportJob`), are
in :mod:`pipeline.report.build` (maps, model diagnostics, per-parcel table,
credit calculation step by step with parameter sources, data inventory, config hash, a
banner when the inputs are simulated). Output is deterministic: rerunning on the same
inputs writes the same bytes (the workbook: the same cells; its container is time-stamped).

Signatures
----------
``report_job(config) -> ReportJob``
    title, region, ``simulated`` flag, config sha256, the resolved sink and credits jobs.
``report_inputs(config, layout) -> {name: Path}``
    required: ``sink`` = ``rasters/sink.tif``, ``parcel_sink`` =
    ``parcels/parcel_sink.gpkg``, ``credits`` = ``credits/credits.csv``, ``estimates`` =
    ``estimates/totals.csv``, ``sample_plan`` = ``estimates/sample_plan.csv``; used when present:
    ``composite`` = ``composites/<end epoch>.tif``, ``chm`` = ``lidar/chm.tif``, ``agb`` /
    ``carbon`` = ``rasters/agb_<end>.tif`` / ``rasters/carbon_<end>.tif``, ``model_card`` =
    ``model/model_card.json``, ``plot_features`` = ``model/plot_features.csv``,
    ``items_start`` / ``items_end`` = ``items/<epoch>.json``, ``lidar_tiles`` =
    ``lidar/tiles.csv``, ``plot_biomass`` = ``plots/plot_biomass.csv``, ``map_coverage`` =
    ``rasters/coverage.json`` (forest-land cells per mapping model, and without a value),
    ``warnings`` = ``.state/warnings.json`` (the warnings the runner recorded for the stages
    before the report; the file changes only when they do, so it does not rerun the report).
``report_stage(job, *, sink, parcel_sink, credits, **optional) -> {relpath: str | bytes}``
    ``report/report.html`` and ``report/quicklooks/<name>.png`` (rgb, chm, agb, carbon,
    sink, sink_sd, parcels, observed_vs_predicted, residuals; those whose inputs exist),
    and ``report/tables.xlsx`` (sheets parcels, credits, estimates, sample_plan; those
    given).

Run: ``forest-carbon run --region nanping --stages report`` or ``forest-carbon report``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.contracts import (
    CREDITS_RELPATH,
    ESTIMATES_RELPATH,
    LIDAR_CHM_RELPATH,
    LIDAR_TILES_RELPATH,
    MAP_COVERAGE_RELPATH,
    MODEL_CARD_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    PLOT_BIOMASS_RELPATH,
    PLOT_FEATURES_RELPATH,
    PLOTS_QA_RELPATH,
    REPORT_RELPATH,
    SAMPLE_PLAN_RELPATH,
    SINK_RELPATH,
    TABLES_XLSX_RELPATH,
    RunLayout,
    composite_relpath,
    credits_job,
    items_relpath,
    map_relpath,
    quicklook_relpath,
    resolve_correlation,
)
from pipeline.report.build import ReportJob, build_report
from pipeline.report.tables import SHEETS, tables_workbook
from pipeline.stage import Stage


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
        "parcel_sink": layout.path(PARCEL_SINK_GPKG_RELPATH),
        "credits": layout.path(CREDITS_RELPATH),
        "estimates": layout.path(ESTIMATES_RELPATH),
        "sample_plan": layout.path(SAMPLE_PLAN_RELPATH),
    }
    optional = {
        "composite": layout.path(composite_relpath(sj.epoch_end)),
        "chm": layout.path(LIDAR_CHM_RELPATH),
        "agb": layout.path(map_relpath("agb", sj.epoch_end)),
        "carbon": layout.path(map_relpath("carbon", sj.epoch_end)),
        "model_card": layout.path(MODEL_CARD_RELPATH),
        "plot_features": layout.path(PLOT_FEATURES_RELPATH),
        "items_start": layout.path(items_relpath(sj.epoch_start)),
        "items_end": layout.path(items_relpath(sj.epoch_end)),
        "lidar_tiles": layout.path(LIDAR_TILES_RELPATH),
        "plot_biomass": layout.path(PLOT_BIOMASS_RELPATH),
        "plots_qa": layout.path(PLOTS_QA_RELPATH),
        "map_coverage": layout.path(MAP_COVERAGE_RELPATH),
        "warnings": layout.warnings,
    }
    return {**required, **{k: p for k, p in optional.items() if p.exists()}}


def report_stage(
    job: ReportJob,
    *,
    model_card: dict[str, Any] | None = None,
    items_start: dict[str, Any] | None = None,
    items_end: dict[str, Any] | None = None,
    sample_plan: pd.DataFrame | None = None,
    **inputs: Any,
) -> dict[str, str | bytes]:
    """The ``report`` stage: the inputs of :func:`report_inputs`, by name, into
    :func:`pipeline.report.build.build_report` (which documents them)."""
    sink_job = resolve_correlation(job.sink, model_card)
    job = replace(job, credits=replace(job.credits, sink=sink_job))
    items = {}
    if items_start is not None:
        items[job.sink.epoch_start] = items_start
    if items_end is not None:
        items[job.sink.epoch_end] = items_end
    html, quicklooks = build_report(job, model_card=model_card, items=items, **inputs)
    out: dict[str, str | bytes] = {REPORT_RELPATH: html}
    for name, png in quicklooks.items():
        out[quicklook_relpath(name)] = png
    tables = {**inputs, "sample_plan": sample_plan}
    out[TABLES_XLSX_RELPATH] = tables_workbook(
        {sheet: tables[name] for name, sheet in SHEETS.items() if tables.get(name) is not None}
    )
    return out


STAGE = Stage(name="report", func=report_stage, params=report_job, inputs=report_inputs)
