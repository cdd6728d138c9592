"""Tests of the HTML report: content, determinism, and rendering in headless Chromium.

Chromium comes from ``scripts/install-report-deps.sh`` (Debian package ``chromium``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
import string
import subprocess
import warnings
from dataclasses import replace
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import markupsafe
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import shapely
import xarray as xr
from fontTools.ttLib import TTCollection, TTFont
from helpers import CHROMIUM_FLAGS, assert_workbook_matches_csvs
from matplotlib import font_manager
from shapely.geometry import LineString, box
from shapely.ops import split

from models.credits import load_methodology
from models.spatial_error import Correlogram
from pipeline import io
from pipeline.config import ReportParams, SinkParams, load_config
from pipeline.contracts import (
    REPORT_RELPATH,
    TABLES_XLSX_RELPATH,
    TOTAL_ID,
    CreditsJob,
    SinkJob,
    quicklook_relpath,
    rollup_relpath,
)
from pipeline.errors import ConfigError, PipelineWarning
from pipeline.report import figures
from pipeline.report.build import ReportJob
from pipeline.report.figures import FigureText, installed_font
from pipeline.report.words import LANGUAGES, default_language, strings
from pipeline.sink import stock_change_sink
from pipeline.stages.credits import credits_table
from pipeline.stages.parcels import parcel_sink_table
from pipeline.stages.report import report_job, report_stage

REPO = Path(__file__).resolve().parent.parent
RES_M, X0, Y0, CRS = 10.0, 500_000.0, 3_000_000.0, "EPSG:32650"
SHAPE = (30, 40)
SINK_JOB = SinkJob.from_params(
    SinkParams(epoch_error_correlation=0.0),
    epochs=("2019", "2024"),
    reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
)
#: a map-error correlogram as the parcels stage fits one (parcels/error_correlogram.json)
CORRELOGRAM = Correlogram(nugget=0.3, shared=0.2, range_m=60.0)


def raster(values: np.ndarray, band: list) -> xr.DataArray:
    data = values if values.ndim == 3 else values[None]
    ny, nx = data.shape[1:]
    da = xr.DataArray(
        data.astype(np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": band,
            "y": Y0 - RES_M * (np.arange(ny) + 0.5),
            "x": X0 + RES_M * (np.arange(nx) + 0.5),
        },
    )
    return da.rio.write_crs(CRS)


@pytest.fixture(scope="module")
def report_inputs() -> dict:
    """A small seeded region: two epochs of maps, parcels, project, model outputs, items."""
    rng = np.random.default_rng(20190701)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    c1 = 40 + 30 * np.sin(xx / 6.0) ** 2 + rng.normal(0, 3, SHAPE)
    c2 = c1 + 2.0 + 1.5 * np.cos(yy / 5.0) + rng.normal(0, 1, SHAPE)
    c1[:4, :6] = np.nan  # non-forest corner
    epochs = {
        "carbon_start": raster(c1, [1]),
        "carbon_end": raster(c2, [1]),
        "carbon_sd_start": raster(0.03 * np.nan_to_num(c1, nan=40.0), [1]),
        "carbon_sd_end": raster(0.03 * c2, [1]),
        "quality_start": raster(np.ones(SHAPE), [1]),
        "quality_end": raster((rng.uniform(size=SHAPE) > 0.03).astype(float), [1]),
    }
    sink = stock_change_sink(
        *epochs.values(), years=SINK_JOB.years, epoch_error_correlation=0.0, min_quality=1
    )
    sink.coords["spatial_ref"] = epochs["carbon_end"].coords["spatial_ref"]
    extent = box(X0, Y0 - SHAPE[0] * RES_M, X0 + SHAPE[1] * RES_M, Y0)
    halves = split(extent, LineString([(X0 + 170, Y0 + 1), (X0 + 230, Y0 - 400)])).geoms
    pieces = []
    for h in halves:
        pieces.extend(split(h, LineString([(X0 - 1, Y0 - 120), (X0 + 500, Y0 - 190)])).geoms)
    parcels = gpd.GeoDataFrame(
        {
            "parcel_id": [f"NP-{i:03d}" for i in range(len(pieces))],
            "township": ["峡阳镇", "峡阳镇", "南山镇", "南山镇"][: len(pieces)],
            "village": ["峡阳镇1村", "峡阳镇2村", "南山镇1村", None][: len(pieces)],
            "forest_type": ["chinese_fir", "masson_pine", "broadleaf", "moso_bamboo"][
                : len(pieces)
            ],
        },
        geometry=list(pieces),
        crs=CRS,
    )
    parcel_sink = parcel_sink_table(SINK_JOB, parcels=parcels, correlogram=CORRELOGRAM, **epochs)
    project = parcels.iloc[:2][["parcel_id", "geometry"]].copy()
    project["baseline_tco2e_ha_yr"] = [0.5, 1.0]
    ccer = load_methodology(REPO / "configs/methodology/ccer.yaml")
    credits_job = CreditsJob(ccer, "configs/methodology/ccer.yaml", SINK_JOB)
    credits = credits_table(credits_job, sink=sink, project=project)
    # darker, greener where the carbon density is high
    refl = np.stack([0.09 - c2 / 1500 + 0.005 * rng.uniform(size=SHAPE) for _ in range(3)])
    refl[1] += 0.02
    plots = pd.DataFrame(
        {
            "plot_id": [f"P{i:02d}" for i in range(12)],
            "x_m": X0 + rng.uniform(0, 400, 12),
            "y_m": Y0 - rng.uniform(0, 300, 12),
            "agb_mg_ha": rng.uniform(50, 200, 12),
        }
    )
    plots["agb_cv_pred_mg_ha"] = plots["agb_mg_ha"] + rng.normal(0, 15, 12)
    items = {
        "type": "FeatureCollection",
        "features": [
            {"id": f"S2A_50RNN_2024{m:02d}01_0_L2A", "collection": "sentinel-2-l2a"}
            for m in range(3, 11)
        ]
        + [{"id": "LC09_119041_20240601_02_T1", "collection": "landsat-c2-l2"}],
    }
    job = ReportJob(
        title="Forest carbon stock and sink: test region",
        region="tiny",
        simulated=True,
        config_sha256="ab" * 32,
        credits=credits_job,
        rgb_bands=ReportParams().rgb_bands,
        rgb_stretch_percentiles=ReportParams().rgb_stretch_percentiles,
        language="en",
        rollups=("township", "village", "forest_type"),
        parcel_page_rows=ReportParams().parcel_page_rows,
    )
    return {
        "job": job,
        **epochs,
        "error_correlogram": {**CORRELOGRAM.record(), "form": "as the parcels stage writes it"},
        "sink": sink,
        "parcel_sink": parcel_sink,
        "credits": credits,
        "composite": raster(refl, ["blue", "green", "red"]),
        "chm": raster(np.clip(c2 / 4, 0, None), [1]),
        "agb": raster(c2 / 0.47 / 1.2, [1]),
        "carbon": epochs["carbon_end"],
        # the shape of pipeline.stages.model's card (CV results nested per model)
        "model_card": {
            "satellite_source": "plots",
            "satellite_model": {
                "chosen": "random_forest",
                "candidates": {
                    "random_forest": {"spatial_cv": {"rmse_mg_ha": 15.2, "r2": 0.71}},
                    "powerlaw": {"spatial_cv": {"rmse_mg_ha": 18.9, "r2": 0.55}},
                },
            },
        },
        "plot_features": plots,
        # the shape of the estimate stage's estimates/totals.csv: one chosen estimate each
        "estimates": pd.DataFrame(
            {"sample": ["inventory", "inventory", "project"],
             "quantity": ["stock_2024", "stock_2024", "change_2019_2024"],
             "unit": ["Mg C", "Mg C", "t CO2e"], "estimator": ["stratified", "difference",
             "stratified"], "chosen": [False, True, True], "total": [5210.3, 5187.65, 1234.56],
             "se": [400.0, 150.0, 98.7], "df": [5.0, 5.0, 19.0], "confidence": [0.9] * 3,
             "half_width": [806.0, 302.25, 170.66], "lower": [4404.3, 4885.4, 1063.9],
             "upper": [6016.3, 5489.9, 1405.22], "relative_half_width": [0.15, 0.06, 0.14],
             "mean_per_ha": [43.4, 43.2, 39.6], "area_ha": [120.0, 120.0, 31.2],
             "n_plots": [12, 12, 20], "relative_efficiency": [1.0, 7.1, 1.0],
             "map_total": [5228.29] * 2 + [1200.0]}
        ),
        "items_end": items,
        "lidar_tiles": pd.DataFrame({"tile": ["500_3000.laz", "501_3000.laz"]}),
        "plot_biomass": pd.DataFrame({"plot_id": ["P00", "P01", "P00"],
                                      "epoch": ["2019", "2019", "2024"]}),
        # the shape of pipeline.stages.predict's rasters/coverage.json
        "map_coverage": {"epochs": {"2019": {"cells": 1000, "cells_are": "forest land",
            "by_model_source": {
                "0": {"name": "no value", "cells": 61, "share": 0.061},
                "3": {"name": "satellite model from plots", "cells": 675, "share": 0.675},
                "6": {"name": "common-band satellite model", "cells": 264, "share": 0.264},
                "1": {"name": "LiDAR model", "cells": 0, "share": 0.0}}}}},
    }  # fmt: skip


def run_report(inputs: dict) -> dict:
    args = {k: v for k, v in inputs.items() if k != "job"}
    return report_stage(inputs["job"], **args)


def _card(html: str, key: str) -> str:
    """The text of headline card ``key`` (label, value and detail)."""
    match = re.search(rf'<div class="card" id="h-{key}">(.*?)</div></div>', html, re.S)
    assert match, key
    return re.sub(r"<[^>]+>", " ", match.group(1))


def test_the_cards_show_the_combined_interval_and_the_maps_systematic_sd(report_inputs):
    """With the estimate stage's systematic SDs: each survey card gives the combined
    interval beside the sampling one, the map sums their share of the conversion factors'
    shared error (relative SD x the sum), and the note says what it is; without, nothing."""
    plain = run_report(report_inputs)[REPORT_RELPATH]
    assert "shared" not in _card(plain, "survey-project-change_2019_2024")
    assert "systematic" not in _card(plain, "map-stock")
    estimates = report_inputs["estimates"].assign(
        systematic_sd=[30.0, 28.0, 5.5], combined_sd=[401.1, 152.6, 98.85],
        combined_half_width=[808.2, 307.4, 170.9], combined_lower=[4402.1, 4880.25, 1063.66],
        combined_upper=[6018.5, 5495.05, 1405.46],
    )  # fmt: skip
    record = {"draws": 200, "map_relative_sd": 0.025}
    html = run_report({**report_inputs, "estimates": estimates, "systematic": record})[
        REPORT_RELPATH
    ]
    card = _card(html, "survey-project-change_2019_2024")
    assert "± 170.7 t CO2e" in card  # the sampling interval stays the card's value
    assert "systematic SD 5.5" in card and "± 170.9, 1,063.7 to 1,405.5" in card
    stock = float(_card(html, "map-stock").split("Mg C")[0].split()[-1].replace(",", ""))
    assert f"2.5 % ({0.025 * stock:,.1f})" in _card(html, "map-stock")
    assert "2.5 %" in _card(html, "map-sink")
    assert "200 draws" in html


def test_report_content_and_quicklooks(report_inputs):
    out = run_report(report_inputs)
    html = out[REPORT_RELPATH]
    assert isinstance(html, str)
    assert 'id="simulated-banner"' in html
    assert "ab" * 32 in html
    rollups = {rollup_relpath(a) for a in report_inputs["job"].rollups}
    assert rollups <= out.keys()
    names = {k for k in out if k not in {REPORT_RELPATH, TABLES_XLSX_RELPATH, *rollups}}
    assert names == {
        quicklook_relpath(n)
        for n in ("rgb", "chm", "agb", "carbon", "sink", "sink_sd", "parcels",
                  "observed_vs_predicted", "residuals")
    }  # fmt: skip
    for key, png in out.items():
        if key.endswith(".png"):
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert b"matplotlib" not in png  # no Software stamp
    assert html.count('src="data:image/png;base64,') == len(names)
    n_parcels = len(report_inputs["parcel_sink"])
    table = html.split('id="parcel-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == n_parcels + 1
    # the credited total and its steps are shown with the numbers of credits.csv
    total = report_inputs["credits"].set_index("parcel_id").loc[TOTAL_ID]
    assert f"{total['credits_tco2e']:,.1f} t CO2e" in html
    # one per credit step, the reversal included, and the land rules' (ccer: eligibility)
    assert html.count('<li id="step-') == 11
    step = html.split('<li id="step-eligibility">')[1].split("</li>")[0]
    assert "<b>2 / 2</b>" in step and "(6.22 ha credited)" in step
    assert "Not checkable on the data" in step and "no parcel layer" in step
    assert "AR-TOOL14" in html  # the rule's source is stated
    assert "satellite_model.candidates.random_forest.spatial_cv.rmse_mg_ha" in html
    assert "satellite_model: random_forest" in html  # inventory names the chosen model
    assert "9 scenes" in html and "2 tiles" in html
    # the cells left to the fallback model or without a value are shown, with their share
    row = html.split("map cells by model, epoch 2019")[1].split("</tr>")[0]
    assert "1,000 forest land cells" in row and "no value 61 (6.1 %)" in row
    assert "common-band satellite model 264 (26.4 %)" in row and "LiDAR" not in row


def test_report_lists_the_pipelines_warnings_and_counts_library_noise(report_inputs):
    recorded = [
        {"stage": "predict", "warnings": ["predict: epoch 2019: 182 cells have no value"],
         "library_warnings": ["UserWarning (distributed/client.py:3370): Sending large graph"]},
        {"stage": "credits", "warnings": ["credits: the sample misses its target precision"],
         "library_warnings": []},
    ]  # fmt: skip
    html = run_report({**report_inputs, "warnings": recorded})[REPORT_RELPATH]
    assert isinstance(html, str)
    # near the top: before the headline numbers
    assert html.index('id="warnings"') < html.index('id="headline"')
    table = html.split('id="warning-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3
    assert "182 cells have no value" in table and "misses its target precision" in table
    assert "Sending large graph" not in html
    assert "Warnings from software libraries" in html
    # how many a library raised depends on its caches in the process: not in the report
    noisier = [{**recorded[0], "library_warnings": ["a"] * 3}, recorded[1]]
    assert run_report({**report_inputs, "warnings": noisier})[REPORT_RELPATH] == html
    quiet = run_report(report_inputs)[REPORT_RELPATH]
    assert isinstance(quiet, str)
    assert "The stages raised no warnings." in quiet and "warning-table" not in quiet


def test_report_is_byte_identical_on_rerun(report_inputs, tmp_path):
    first, second = run_report(report_inputs), run_report(report_inputs)
    assert first.keys() == second.keys()
    for key in first.keys() - {TABLES_XLSX_RELPATH}:
        if isinstance(first[key], pd.DataFrame):
            pd.testing.assert_frame_equal(first[key], second[key], check_exact=True)
        else:
            assert first[key] == second[key], key
    # the workbook's container is time-stamped: its cells are what must not change
    sums = []
    for n, out in enumerate((first, second)):
        path = tmp_path / f"{n}.xlsx"
        path.write_bytes(out[TABLES_XLSX_RELPATH])
        sums.append(io.content_checksum(path))
    assert sums[0] == sums[1]
    assert not re.search(r"20\d\d-\d\d-\d\dT\d\d:\d\d", first[REPORT_RELPATH])


def test_tables_workbook_holds_the_csvs_numbers(report_inputs, tmp_path):
    """Write the tables as the runner does, read them back, build the workbook and
    compare every sheet with its CSV (Chinese text and empty cells included)."""
    parcel_sink = report_inputs["parcel_sink"].copy()
    parcel_sink["name"] = [f"万安镇 {i} 小班" for i in range(len(parcel_sink))]
    tables = {
        "parcels": parcel_sink,
        "credits": report_inputs["credits"],
        # one row per kind of column of the estimate stage's tables (text, flags, floats,
        # integers, empty cells)
        "estimates": pd.DataFrame(
            {"sample": ["project"], "quantity": ["change_2019_2024"], "unit": ["Mg C"],
             "estimator": ["stratified"], "chosen": [True], "total": [1234.5678901234567],
             "se": [98.7], "df": [5.0], "confidence": [0.9], "half_width": [198.9],
             "lower": [1035.6678901234567], "upper": [1433.4678901234567],
             "relative_half_width": [0.161], "mean_per_ha": [39.6], "area_ha": [31.2],
             "n_plots": [6], "relative_efficiency": [1.0], "map_total": [1200.0],
             "meets_target": [False], "note": [None]}
        ),
        "sample_plan": pd.DataFrame(
            {"sample": ["project"], "quantity": ["stock_2024"], "stratum": ["杉木"],
             "area_ha": [31.2], "n_plots": [6], "sd_per_ha": [12.5], "mean_per_ha": [39.6],
             "target_relative_half_width": [0.1], "confidence": [0.9], "n_required": [9],
             "plots_required": [3]}
        ),
    }  # fmt: skip
    read_back = {}
    for name, table in tables.items():
        if name == "parcels":  # the runner writes the GeoPackage and a CSV without geometry
            io.write_output(table, tmp_path / "parcels.gpkg")
            io.write_output(pd.DataFrame(table.drop(columns="geometry")), tmp_path / "parcels.csv")
            read_back["parcel_sink"] = io.read_input(tmp_path / "parcels.gpkg", chunk_px=256)
        else:
            io.write_output(table, tmp_path / f"{name}.csv")
            read_back[name] = io.read_input(tmp_path / f"{name}.csv", chunk_px=256)
    out = run_report({**report_inputs, **read_back})
    xlsx = tmp_path / "tables.xlsx"
    io.write_output(out[TABLES_XLSX_RELPATH], xlsx)
    csvs = {n: tmp_path / f"{n}.csv" for n in tables}
    for attr in report_inputs["job"].rollups:  # the roll-ups, written as the runner does
        csvs[f"rollup_{attr}"] = tmp_path / f"rollup_{attr}.csv"
        io.write_output(out[rollup_relpath(attr)], csvs[f"rollup_{attr}"])
    assert_workbook_matches_csvs(xlsx, csvs)


def test_report_renders_in_headless_chromium(report_inputs, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/install-report-deps.sh"
    html = run_report(report_inputs)[REPORT_RELPATH]
    (tmp_path / "report.html").write_text(html)
    # A copy instrumented with a probe that records, after load, how each image decoded.
    probe = (
        "<script>window.addEventListener('load', () => { const r = [];"
        " for (const i of document.images) { r.push(i.complete + ':' + i.naturalWidth + 'x'"
        " + i.naturalHeight + ':' + i.getBoundingClientRect().width); }"
        " const d = document.createElement('pre'); d.id = 'img-probe';"
        " d.textContent = r.join('\\n'); document.body.appendChild(d); });</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", probe + "</body>"))
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    probe_text = dom.split('<pre id="img-probe">')[1].split("</pre>")[0].strip()
    lines = probe_text.splitlines()
    assert len(lines) == 9
    for line in lines:
        complete, size, shown = line.split(":")
        w, h = (int(v) for v in size.split("x"))
        assert complete == "true" and w > 100 and h > 100 and float(shown) > 100, line
    n_rows = len(re.findall(r"<tr>", dom.split('id="parcel-table"')[1].split("</table>")[0]))
    assert n_rows == len(report_inputs["parcel_sink"]) + 1
    assert 'id="credit-steps"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1280,2400", f"--screenshot={shot}",
         (tmp_path / "report.html").as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )  # fmt: skip
    img = mpimg.imread(shot)
    assert img.shape[0] == 2400 and img.shape[1] == 1280
    # the red simulated-data banner is drawn at the top (#b3261e = 179, 38, 30)
    top = (img[5:40, 100:1100, :3] * 255).round()
    assert (np.abs(top - [179, 38, 30]).sum(axis=-1) < 12).mean() > 0.5
    # and the page below is not blank
    assert img[400:2400, :, :3].std() > 0.05


# -- the report's languages ----------------------------------------------------------


def test_every_text_is_in_every_language_with_the_same_placeholders():
    data = strings()
    formatter = string.Formatter()
    for section in ("text", "columns", "estimators", "forest_types"):
        for key, entry in data[section].items():
            assert set(LANGUAGES) <= set(entry), (section, key)
            fields = {
                lang: {f for _, f, _, _ in formatter.parse(str(entry[lang])) if f}
                for lang in LANGUAGES
            }
            assert fields["zh"] == fields["en"], (section, key, fields)
    assert all("latin" in entry for entry in data["forest_types"].values())
    assert default_language("CN") == "zh" and default_language(None) == "en"


def test_the_report_language_follows_the_country_unless_set():
    config = load_config(REPO / "configs/regions/tiny.yaml")
    assert config.country == "CN"
    zh = report_job(config)
    assert zh.language == "zh" and zh.title == "森林碳储量与碳汇：tiny"
    assert report_job(config.model_copy(update={"country": None})).language == "en"
    english = config.stages.model_copy(update={"report": ReportParams(language="en")})
    assert report_job(config.model_copy(update={"stages": english})).language == "en"


def headline_values(html: str) -> dict[str, str]:
    """The value of every headline card, by the card's id."""
    cards = re.findall(r'<div class="card" id="(h-[^"]+)">.*?<div class="v">([^<]*)</div>', html)
    return dict(cards)


def test_the_chinese_report_states_the_same_numbers(report_inputs):
    html = {}
    for lang in ("en", "zh"):
        job = replace(report_inputs["job"], language=lang)
        out = run_report({**report_inputs, "job": job})[REPORT_RELPATH]
        assert isinstance(out, str)
        html[lang] = out
    zh, en = html["zh"], html["en"]
    assert '<html lang="zh-CN">' in zh and "主要结果" in zh and "Headline numbers" not in zh
    # the same headline numbers (units may be translated), the same credit steps' values
    cards_en, cards_zh = headline_values(en), headline_values(zh)
    assert cards_en.keys() == cards_zh.keys() and len(cards_en) == 6
    for key, value in cards_en.items():
        numbers = re.findall(r"-?[\d,]+\.\d+", value)
        assert numbers and numbers == re.findall(r"-?[\d,]+\.\d+", cards_zh[key]), key
    steps = [re.findall(r'<li id="step-[^"]+">.*?<b>([^<]*)</b>', h) for h in (en, zh)]
    assert steps[0] == steps[1] and len(steps[0]) == 11
    # species by Chinese and Latin names; the roll-ups by township with Chinese headers
    assert "杉木 (Cunninghamia lanceolata)" in zh and "Chinese fir (Cunninghamia lanceolata)" in en
    assert "按乡镇" in zh and '<th class="l">乡镇</th>' in zh and "全部小班" in zh


# -- roll-ups --------------------------------------------------------------------------


def test_rollups_add_up_and_take_the_covariance_between_parcels(report_inputs):
    inputs = report_inputs
    out = run_report(inputs)
    parcels = inputs["parcel_sink"]
    e2 = SINK_JOB.epoch_end
    sums = ["area_grid_ha", "area_grid_mu", "forest_area_ha", f"carbon_{e2}_mg_c", "sink_tco2e_yr"]
    for attr in inputs["job"].rollups:
        table = out[rollup_relpath(attr)]
        assert isinstance(table, pd.DataFrame)
        groups, total = table.iloc[:-1], table.iloc[-1]
        assert total[attr] == TOTAL_ID and total["n_parcels"] == len(parcels)
        assert groups["n_parcels"].sum() == len(parcels)
        for col in sums:  # groups partition the parcels: their totals add up to the AOI's
            assert groups[col].sum() == pytest.approx(total[col], rel=1e-9), (attr, col)
            in_ha = parcels[col.replace("_mu", "_ha")].sum()
            assert total[col] == pytest.approx(in_ha * (15 if "_mu" in col else 1), rel=1e-9)
    # a group of one parcel has the parcel's figures (the same error model)
    village = out[rollup_relpath("village")].set_index("village")
    one = parcels.set_index("village").loc["峡阳镇1村"]
    for col in (f"carbon_{e2}_mg_c", f"carbon_sd_{e2}_mg_c", "sink_sd_tco2e_yr"):
        assert village.loc["峡阳镇1村", col] == pytest.approx(one[col], rel=1e-9)
    assert village.loc["", "n_parcels"] == 1  # the parcel without a village is a group too
    # a township of two parcels: the double sum over every pair of its pixels, computed
    # here from the geometry (cell shares by shapely) and the correlogram, pair by pair
    town = out[rollup_relpath("township")].set_index("township")
    members = parcels[parcels["township"] == "峡阳镇"]
    assert len(members) == 2
    union = shapely.union_all(members.geometry.to_numpy())
    ny, nx = SHAPE
    xs = X0 + RES_M * np.arange(nx)
    ys = Y0 - RES_M * np.arange(ny)
    cells = shapely.box(*np.meshgrid(xs, ys - RES_M), *np.meshgrid(xs + RES_M, ys))
    share = (shapely.area(shapely.intersection(cells, union)) / RES_M**2).reshape(-1)
    c = inputs["carbon_end"].values[0].reshape(-1)
    sd = inputs["carbon_sd_end"].values[0].reshape(-1)
    quality = inputs["quality_end"].values[0].reshape(-1)
    good = np.isfinite(c) & np.isfinite(sd) & (quality >= SINK_JOB.min_quality)
    keep = good & (share > 0)
    ws = share[keep] * sd[keep] * RES_M**2 / 10_000  # Mg C
    cx, cy = np.meshgrid(xs + RES_M / 2, ys - RES_M / 2)
    px, py = cx.reshape(-1)[keep], cy.reshape(-1)[keep]
    rho = CORRELOGRAM(np.hypot(px[:, None] - px[None, :], py[:, None] - py[None, :]))
    want = float(np.sqrt(ws @ rho @ ws))
    got = town.loc["峡阳镇", f"carbon_sd_{e2}_mg_c"]
    assert got == pytest.approx(want, rel=1e-6)
    parcel_sds = members[f"carbon_sd_{e2}_mg_c"].to_numpy()
    # covariances between the parcels count: above the root sum of squares of the parcels'
    # SDs, below their sum (the fully correlated bound)
    assert np.sqrt(np.sum(parcel_sds**2)) * 1.01 < got < parcel_sds.sum() * 0.99


def test_a_rollup_by_an_attribute_the_parcels_lack_names_the_setting(report_inputs):
    job = replace(report_inputs["job"], rollups=("owner",))
    with pytest.raises(ConfigError, match=r"stages\.report\.rollups: \['owner'\].*township"):
        run_report({**report_inputs, "job": job})


def test_the_parcel_table_is_paged_with_every_parcel_in_its_data(report_inputs):
    job = replace(report_inputs["job"], parcel_page_rows=2)
    html = run_report({**report_inputs, "job": job})[REPORT_RELPATH]
    assert isinstance(html, str)
    table = html.split('id="parcel-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3
    data = html.split('<script type="application/json" id="parcel-data">')[1].split("</script>")[0]
    rows = json.loads(data)
    assert [r[0] for r in rows] == list(report_inputs["parcel_sink"]["parcel_id"])


def font_cmap(family: str) -> set[int]:
    """Code points of the font fontconfig picks for ``family`` (the face of that family
    in a collection)."""
    path = subprocess.run(
        ["fc-match", "-f", "%{file}", family], capture_output=True, text=True, check=True
    ).stdout
    fonts = TTCollection(path).fonts if path.endswith(".ttc") else [TTFont(path)]
    face = next((f for f in fonts if f["name"].getDebugName(1) == family), fonts[0])
    return set(face.getBestCmap())


def test_the_chinese_report_renders_every_glyph_and_the_csvs_numbers(report_inputs, tmp_path):
    """Headless Chromium renders the Chinese report; every character of the page as
    rendered is in a font of the page's font stack (no missing glyphs), and the headline
    numbers of the rendered page are those of credits.csv and totals.csv, read back."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/install-report-deps.sh"
    csvs = {name: tmp_path / f"{name}.csv" for name in ("credits", "estimates")}
    for name, path in csvs.items():
        io.write_output(report_inputs[name], path)
    read = {name: io.read_input(path, chunk_px=256) for name, path in csvs.items()}
    job = replace(report_inputs["job"], language="zh", parcel_page_rows=2)
    html = run_report({**report_inputs, **read, "job": job})[REPORT_RELPATH]
    assert isinstance(html, str)
    probe = (
        "<script>window.addEventListener('load', () => { const r = {text:"
        " document.body.innerText, cards: {}, rows: document.getElementById('parcel-table')"
        ".rows.length}; for (const c of document.querySelectorAll('.card')) {"
        " r.cards[c.id] = c.querySelector('.v').innerText; }"
        " const d = document.createElement('pre'); d.id = 'probe';"
        " d.textContent = JSON.stringify(r); document.body.appendChild(d); });</script>"
    )
    page = tmp_path / "report_zh.html"
    page.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    probed = json.loads(unescape(dom.split('<pre id="probe">')[1].split("</pre>")[0]))
    text = probed["text"]
    assert "主要结果" in text and "分组汇总" in text and "杉木" in text
    covered = font_cmap("DejaVu Sans") | font_cmap("Noto Sans CJK SC")
    missing = sorted({ch for ch in text if not ch.isspace() and ord(ch) not in covered})
    assert not missing, f"no glyph for {missing}"
    assert probed["rows"] == 3  # the paging script ran: a page of 2 parcels and the header
    # the headline numbers as rendered equal the CSVs' (read with the csv module)
    with csvs["credits"].open(encoding="utf-8-sig", newline="") as f:
        total = next(r for r in csv.DictReader(f) if r["parcel_id"] == TOTAL_ID)
    with csvs["estimates"].open(encoding="utf-8-sig", newline="") as f:
        chosen = [r for r in csv.DictReader(f) if r["chosen"] == "True"]

    def number(text: str) -> float:
        return float(text.replace(",", ""))

    cards = probed["cards"]
    assert number(cards["h-credits"].split()[0]) == round(float(total["credits_tco2e"]), 1)
    assert number(cards["h-net"].split()[0]) == round(float(total["net_tco2e"]), 1)
    assert len(chosen) == 2
    for r in chosen:
        value, pm, half, *unit = cards[f"h-survey-{r['sample']}-{r['quantity']}"].split()
        assert pm == "±" and " ".join(unit) == r["unit"]
        assert number(value) == round(float(r["total"]), 1)
        assert number(half) == round(float(r["half_width"]), 1)


#: the figures' words as they were drawn before the report had languages (the reference
#: for "the English figures are unchanged")
ENGLISH_TEXT = FigureText(
    easting="easting (m)",
    northing="northing (m)",
    observed="observed ({units})",
    predicted="predicted ({units})",
    no_valid_pixels="no valid pixels",
)


def quicklooks(out: dict) -> dict[str, bytes]:
    return {k: v for k, v in out.items() if k.endswith(".png")}


def test_the_chinese_figures_are_drawn_with_a_cjk_font_and_the_english_ones_unchanged(
    report_inputs,
):
    """The Chinese report's PNGs are drawn with the CJK font fontconfig has for Noto Sans
    CJK SC (the font of the page's test), with no "missing glyph" warning; the English
    report's are those drawn with the English words of before."""
    en = run_report(report_inputs)
    job = replace(report_inputs["job"], language="zh")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zh = run_report({**report_inputs, "job": job})
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "missing from font" in m or "no CJK font" in m], said
    family = installed_font(strings()["fonts"]["cjk"])
    assert family == "Noto Sans CJK SC"
    fc_file = subprocess.run(
        ["fc-match", "-f", "%{file}", family], capture_output=True, text=True, check=True
    ).stdout
    assert font_manager.findfont(font_manager.FontProperties(family=family)) == fc_file
    assert quicklooks(zh).keys() == quicklooks(en).keys()
    for key, png in quicklooks(zh).items():
        assert png != en[key], key  # its words are Chinese
    # the English quicklooks: as drawn with the English literals of before
    parcels = report_inputs["parcel_sink"]
    before = figures.parcels_png(parcels, column="sink_tco2e_ha_yr",
                                 title="Parcels by sink per forest hectare",
                                 units="t CO2e/ha/yr", text=ENGLISH_TEXT)  # fmt: skip
    assert en[quicklook_relpath("parcels")] == before
    # the check above can fail: Chinese drawn in matplotlib's default font lacks glyphs
    with pytest.warns(UserWarning, match="missing from font"):
        figures.parcels_png(parcels, column="sink_tco2e_ha_yr", title="各小班碳汇",
                            units="t CO2e/ha/yr", text=ENGLISH_TEXT)  # fmt: skip


def test_without_a_cjk_font_the_chinese_figures_are_english_with_a_warning(
    report_inputs, monkeypatch
):
    monkeypatch.setitem(strings()["fonts"], "cjk", ["No Such Font CJK"])
    en = run_report(report_inputs)
    job = replace(report_inputs["job"], language="zh")
    with pytest.warns(PipelineWarning, match=r"no CJK font found .*No Such Font CJK.*English"):
        zh = run_report({**report_inputs, "job": job})
    assert quicklooks(zh) == quicklooks(en)
    html = zh[REPORT_RELPATH]
    assert isinstance(html, str) and "主要结果" in html  # the page itself stays Chinese


def test_a_coded_warning_is_said_in_the_reports_language(report_inputs):
    """A warning with a code is shown in Chinese in the Chinese report, with its values;
    the English report, and a warning without a code, show the message itself."""
    message = "plots.gpkg (sources.plot_locations): 2 of 30 plots lie outside the AOI's extent"
    values = {"path": "plots.gpkg", "off": 2, "n": 30, "names": "P1, P2"}
    recorded = [
        {"stage": "plots", "warnings": [message, "plots: no code here"], "library_warnings": [],
         "warning_codes": {message: {"code": "plots_outside_aoi", "values": values}}},
    ]  # fmt: skip
    zh_job = replace(report_inputs["job"], language="zh")
    pages = {
        lang: run_report({**report_inputs, "job": job, "warnings": recorded})[REPORT_RELPATH]
        for lang, job in (("en", report_inputs["job"]), ("zh", zh_job))
    }
    tables = {
        k: str(v).split('id="warning-table"')[1].split("</table>")[0] for k, v in pages.items()
    }
    shown = str(markupsafe.escape(message))
    assert shown in tables["en"] and "no code here" in tables["en"]
    assert shown not in tables["zh"] and "no code here" in tables["zh"]
    assert (
        "plots.gpkg（sources.plot_locations）：30 个样地中有 2 个位于 AOI 范围之外（P1, P2）"
        in (tables["zh"])
    )


def test_credit_section_names_refused_parcels_and_compared_methodologies():
    from pipeline.report.build import compared_table, eligibility_step
    from pipeline.report.words import Words

    # as read back from credits.csv: parcel A credited, B refused, then DECLARED and TOTAL
    credits = pd.DataFrame(
        {"parcel_id": ["A", "B", "DECLARED", "TOTAL"], "area_ha": [0.5, 0.1, 0.6, 0.5],
         "eligible": [True, False, np.nan, np.nan],
         "ineligible_reason": [np.nan, "forest at 2019 (land-use classifier)", np.nan, np.nan],
         "project_tco2e": [25.0, 5.0, 40.0, 25.0], "baseline_tco2e": [5.0, 0.0, 5.0, 5.0],
         "net_tco2e": [20.0, 5.0, 35.0, 20.0], "uncertainty_pct": [20.6, 9.0, 12.0, 20.6],
         "uncertainty_deduction_tco2e": [7.7, 0.0, 1.0, 7.7], "buffer_tco2e": [0.0] * 4,
         "credits_tco2e": [12.3, 5.0, 34.0, 12.3]}
    )  # fmt: skip
    step = eligibility_step(credits, Words("en"))
    assert step is not None and step["value"] == "1 / 2"
    assert "(0.50 ha credited)" in step["formula"]
    assert "Refused, not credited: B (forest at 2019 (land-use classifier))" in step["formula"]
    assert "row DECLARED, not credited" in step["formula"]
    fm = load_methodology(REPO / "configs/methodology/forest_management.yaml")
    job = SimpleNamespace(
        words=Words("en"), credits=SimpleNamespace(compare=((fm, "forest_management.yaml"),))
    )
    headers, rows = compared_table({"ar-cm-003": credits}, job)  # type: ignore[arg-type]
    assert headers[:3] == ["methodology", "file", "parcels credited"]
    assert rows == [["ar-cm-003", "forest_management.yaml", "1 / 2", "0.50", "25.0", "5.0",
                     "20.0", "20.60", "7.7", "0.0", "12.3"]]  # fmt: skip
