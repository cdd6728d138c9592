"""Stage ``report``: one self-contained ``report/report.html`` plus PNG quicklooks, totals
by parcel attribute (``report/rollup_<attribute>.csv``, :mod:`pipeline.report.rollups`)
and the run's tables in one workbook, ``report/tables.xlsx`` (:mod:`pipeline.report.tables`).
The report is in English or Chinese (``stages.report.language``, by default from the
region's ``country``: :mod:`pipeline.report.words`).

Assembly, and the report's parameters (:class:`~pipeline.report.build.ReportJob`), are
in :mod:`pipeline.report.build` (maps, model diagnostics, per-parcel table,
credit calculation step by step with parameter sources, data inventory, config hash, a
banner when the inputs are simulated). Output is deterministic: rerunning on the same
inputs writes the same bytes (the workbook: the same cells; its container is time-stamped).

Signatures
----------
``report_job(config) -> ReportJob``
    title, region, ``simulated`` flag, config sha256, the resolved sink and credits jobs,
    language, roll-up attributes.
``report_inputs(config, layout) -> {name: Path}``
    required: ``sink`` = ``rasters/sink.tif``, ``parcel_sink`` =
    ``parcels/parcel_sink.gpkg``, ``credits`` = ``credits/credits.csv``, ``estimates`` =
    ``estimates/totals.csv``, ``sample_plan`` = ``estimates/sample_plan.csv``, the six
    epoch rasters of the parcels stage (``carbon_start`` ... ``quality_end``, for the
    roll-ups' totals and SDs), ``compared.<id>`` = ``credits/credits_<id>.csv`` per
    methodology of ``stages.credits.compare``; used when present: ``error_correlogram`` =
    ``parcels/error_correlogram.json``, ``systematic`` = ``estimates/systematic.json`` (the
    conversion factors' shared error), ``lidar_metrics`` = ``lidar/metrics.tif``,
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
    ``report/rollup_<attribute>.csv`` per roll-up attribute, and ``report/tables.xlsx``
    (sheets parcels, credits, estimates, sample_plan, those given, ``credits_<id>`` per
    compared methodology, and ``rollup_<attribute>``).

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
    ERROR_CORRELOGRAM_RELPATH,
    ESTIMATES_RELPATH,
    LIDAR_CHM_RELPATH,
    LIDAR_METRICS_RELPATH,
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
    SYSTEMATIC_RELPATH,
    TABLES_XLSX_RELPATH,
    RunLayout,
    compared_credits_relpath,
    composite_relpath,
    credits_job,
    epoch_raster_inputs,
    items_relpath,
    map_relpath,
    quicklook_relpath,
    resolve_correlation,
    rollup_relpath,
)
from pipeline.report.build import ReportJob, build_report
from pipeline.report.rollups import correlogram_from_record, rollup_tables
from pipeline.report.tables import SHEETS, tables_workbook
from pipeline.report.words import Words, default_language
from pipeline.stage import Stage


def report_job(config: Config) -> ReportJob:
    """Resolve the report's parameters from a run config."""
    params = config.stages.report
    language = params.language or default_language(config.country)
    title = params.title or Words(language)("default_title", region=config.region)
    return ReportJob(
        title=title,
        region=config.region,
        simulated=config.simulated,
        config_sha256=config.sha256,
        credits=credits_job(config),
        rgb_bands=params.rgb_bands,
        rgb_stretch_percentiles=params.rgb_stretch_percentiles,
        language=language,
        rollups=params.rollups,
        parcel_page_rows=params.parcel_page_rows,
    )


def report_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``report`` stage (optional ones only when they exist)."""
    cj = credits_job(config)
    sj = cj.sink
    required = {
        "sink": layout.path(SINK_RELPATH),
        "parcel_sink": layout.path(PARCEL_SINK_GPKG_RELPATH),
        "credits": layout.path(CREDITS_RELPATH),
        "estimates": layout.path(ESTIMATES_RELPATH),
        "sample_plan": layout.path(SAMPLE_PLAN_RELPATH),
        **epoch_raster_inputs(sj, layout),
        **{f"compared.{m.id}": layout.path(compared_credits_relpath(m.id)) for m, _ in cj.compare},
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
        "error_correlogram": layout.path(ERROR_CORRELOGRAM_RELPATH),
        "systematic": layout.path(SYSTEMATIC_RELPATH),
        "lidar_metrics": layout.path(LIDAR_METRICS_RELPATH),
        "warnings": layout.warnings,
    }
    return {**required, **{k: p for k, p in optional.items() if p.exists()}}


#: the parcels stage's rasters the roll-ups are summed from
ROLLUP_RASTERS = (
    "carbon_start",
    "carbon_end",
    "carbon_sd_start",
    "carbon_sd_end",
    "quality_start",
    "quality_end",
    "lidar_metrics",
)


def report_stage(
    job: ReportJob,
    *,
    model_card: dict[str, Any] | None = None,
    items_start: dict[str, Any] | None = None,
    items_end: dict[str, Any] | None = None,
    sample_plan: pd.DataFrame | None = None,
    error_correlogram: dict[str, Any] | None = None,
    **inputs: Any,
) -> dict[str, Any]:
    """The ``report`` stage: the inputs of :func:`report_inputs`, by name, into
    :func:`pipeline.report.rollups.rollup_tables` and
    :func:`pipeline.report.build.build_report` (which document them)."""
    sink_job = resolve_correlation(job.sink, model_card)
    job = replace(job, credits=replace(job.credits, sink=sink_job))
    items = {}
    if items_start is not None:
        items[job.sink.epoch_start] = items_start
    if items_end is not None:
        items[job.sink.epoch_end] = items_end
    rasters = {k: inputs.pop(k) for k in ROLLUP_RASTERS if k in inputs}
    aoi, rollups = rollup_tables(
        sink_job,
        job.rollups,
        parcel_sink=inputs["parcel_sink"],
        rasters=rasters,
        correlogram=correlogram_from_record(error_correlogram),
        sink_correlogram=correlogram_from_record((error_correlogram or {}).get("sink")),
    )
    files = {attr: rollup_relpath(attr) for attr in rollups}
    html, quicklooks = build_report(
        job,
        model_card=model_card,
        items=items,
        aoi=aoi,
        rollups=rollups,
        rollup_files=list(files.values()),
        **inputs,
    )
    out: dict[str, Any] = {REPORT_RELPATH: html}
    for name, png in quicklooks.items():
        out[quicklook_relpath(name)] = png
    for attr, table in rollups.items():
        out[files[attr]] = table
    tables = {**inputs, "sample_plan": sample_plan}
    sheets = {sheet: tables[name] for name, sheet in SHEETS.items() if tables.get(name) is not None}
    sheets.update({f"credits_{mid}"[:31]: t for mid, t in (inputs.get("compared") or {}).items()})
    sheets.update({f"rollup_{attr}"[:31]: table for attr, table in rollups.items()})
    out[TABLES_XLSX_RELPATH] = tables_workbook(sheets)
    return out


STAGE = Stage(name="report", func=report_stage, params=report_job, inputs=report_inputs)
