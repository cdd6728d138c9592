"""The whole pipeline on the tiny simulated region (CONVENTIONS: one tiny end-to-end run).

Runs ``forest-carbon run`` through the CLI, checks every stage's outputs against the
region's known truth where a tight check is possible on a 600 m region, then checks that
a second run skips everything and that ``reproduce`` finds every output identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from helpers import assert_workbook_matches_csvs
from markupsafe import escape
from run_folder_checks import check_catalog, check_raster_style, check_vector_style

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.contracts import (
    CREDITS_RELPATH,
    ESTIMATES_RELPATH,
    FOLD_MAPS_RELPATH,
    MODEL_CARD_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    PLOT_BIOMASS_RELPATH,
    REPORT_RELPATH,
    SAMPLE_PLAN_RELPATH,
    SINK_RELPATH,
    TABLES_XLSX_RELPATH,
    TOTAL_ID,
    composite_relpath,
    items_relpath,
    map_relpath,
    rollup_relpath,
    style_relpath,
)
from pipeline.stages import STAGES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from pipeline.config import region_config_path

    tmp = tmp_path_factory.mktemp("e2e")
    text = region_config_path("tiny").read_text()
    text = text.replace("data/tiny", str(tiny_data)).replace("outputs/tiny", str(tmp / "run"))
    cfg = tmp / "tiny.yaml"
    cfg.write_text(text)
    assert main(["run", "--config", str(cfg), "--quiet"]) == 0
    return cfg, tmp / "run"


def test_run_folder_is_a_valid_stac_catalog_with_qgis_styles(tiny_run):
    _, run = tiny_run
    check_catalog(run)
    for epoch in ("2019", "2024"):
        for name in ("carbon", "carbon_sd"):
            layer = map_relpath(name, epoch)
            check_raster_style(run / style_relpath(layer), run / layer)
    check_raster_style(run / style_relpath(SINK_RELPATH), run / SINK_RELPATH)
    check_raster_style(run / style_relpath(SINK_RELPATH, "sink_sd_tco2e_ha_yr"), run / SINK_RELPATH)
    check_vector_style(
        run / style_relpath(PARCEL_SINK_GPKG_RELPATH), run / PARCEL_SINK_GPKG_RELPATH
    )


def test_every_stage_ran_and_wrote_its_outputs(tiny_run):
    _, run = tiny_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {s.name for s in STAGES}
    assert all(rec["status"] == "ran" for rec in manifest["stages"].values())
    for rel in manifest["outputs"]:
        assert (run / rel).is_file(), rel
    for rel in (
        composite_relpath("2019"),
        map_relpath("carbon", "2024"),
        SINK_RELPATH,
        PARCEL_SINK_GPKG_RELPATH,
        CREDITS_RELPATH,
        REPORT_RELPATH,
    ):
        assert rel in manifest["outputs"], rel
    assert manifest["simulated"] is True
    assert manifest["stac_items"][items_relpath("2019")], "STAC item ids are listed"
    # the survey totals are in the manifest as in estimates/totals.csv, every estimator
    totals = pd.read_csv(run / ESTIMATES_RELPATH)
    recorded = pd.DataFrame(manifest["results"]["estimate"])
    assert len(recorded) == len(totals) > 0
    assert np.allclose(recorded["total"], totals["total"], rtol=1e-12, atol=0)
    assert set(recorded["estimator"]) == {"stratified", "difference", "greg"}
    # the model stage's fold maps at a sample of forest-land cells, and the inventory's
    # cross-fitted estimates corrected by them
    assert FOLD_MAPS_RELPATH in manifest["outputs"]
    cells = pd.read_csv(run / FOLD_MAPS_RELPATH)
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())["fold_maps"]
    assert sorted(cells["epoch"].astype(str).unique()) == ["2019", "2024"]
    assert len(cells) == sum(card["forest_cells"].values()) > 100
    assert card["n_folds"] >= 2 and 0 < card["inclusion_probability"] <= 1
    inventory = totals[(totals["sample"] == "inventory") & (totals["estimator"] == "difference")]
    stocks = inventory[inventory["quantity"].str.startswith("stock_")]
    assert len(stocks) == 2 and stocks["note"].str.contains("fold maps' correction").all()


def test_composite_matches_clear_sky_truth(tiny_run, tiny_data):
    _, run = tiny_run
    for epoch in ("2019", "2024"):
        with (
            rasterio.open(run / composite_relpath(epoch)) as comp,
            rasterio.open(tiny_data / f"truth/reflectance_{epoch}.tif") as truth,
        ):
            assert comp.descriptions[:10] == truth.descriptions
            for b in range(1, 11):
                err = np.abs(comp.read(b) - truth.read(b))
                assert np.nanmedian(err) < 0.01, (epoch, truth.descriptions[b - 1])


def test_plot_biomass_close_to_truth(tiny_run, tiny_data):
    _, run = tiny_run
    est = pd.read_csv(run / PLOT_BIOMASS_RELPATH)
    truth = pd.read_csv(tiny_data / "truth/plots.csv")
    m = est.merge(truth, on=["plot_id", "epoch"], suffixes=("", "_true"))
    assert len(m) == len(truth)
    bias = m["agb_mg_ha"].sum() / m["agb_mg_ha_true"].sum() - 1
    assert abs(bias) < 0.05


def test_parcel_totals_add_up_to_the_map(tiny_run, tiny_data):
    """The parcels' sink adds up to the sink map summed over the area the parcels cover.

    The reference weights every cell of ``rasters/sink.tif`` by the share of its area
    inside the union of the parcels, computed here with shapely (not by the stage's
    zonal code); the parcels do not overlap, so their totals add up to that sum.
    """
    _, run = tiny_run
    table = pd.read_csv(run / PARCEL_SINK_CSV_RELPATH)
    assert len(table) > 1
    assert table["parcel_id"].is_unique
    union = gpd.read_file(tiny_data / "parcels/parcels.gpkg").union_all()
    with rasterio.open(run / SINK_RELPATH) as src:
        assert src.descriptions[0] == "sink_mg_c_ha_yr"
        sink = src.read(1).astype(np.float64)
        t = src.transform
    rows, cols = np.indices(sink.shape)
    west, north = t.c + cols * t.a, t.f + rows * t.e
    cells = shapely.box(west, north + t.e, west + t.a, north)
    cell_m2 = t.a * -t.e
    share = shapely.area(shapely.intersection(cells, union)) / cell_m2
    cell_ha = cell_m2 / 10_000.0
    forest = np.isfinite(sink)
    assert forest.sum() > sink.size / 2  # most of the map has a sink to add up
    want_sink = float(np.sum(np.where(forest, sink, 0.0) * share)) * cell_ha
    assert table["sink_mg_c_yr"].sum() == pytest.approx(want_sink, rel=1e-6)
    assert table["forest_area_ha"].sum() == pytest.approx(
        float(share[forest].sum()) * cell_ha, rel=1e-9
    )
    assert table["area_grid_ha"].sum() == pytest.approx(float(share.sum()) * cell_ha, rel=1e-9)


def test_the_stages_warnings_are_in_the_manifest_and_the_report(tiny_run):
    _, run = tiny_run
    manifest = json.loads((run / "manifest.json").read_text())
    said = [
        (s, m) for s, rec in manifest["stages"].items() if s != "report" for m in rec["warnings"]
    ]
    assert said, "the tiny region leaves cells without a value: predict says so"
    # a warning of the checks before the run (no stage raises it) is recorded with the
    # first stage that reads the file: the plot J016 just off the grid, with ``plots``,
    # and with its code, so the (Chinese) report says it in Chinese
    off_grid = "1 of 26 plots lie outside the AOI's extent (feature 21 (plot_id 'J016'))"
    (message,) = [m for s, m in said if off_grid in m and s == "plots"]
    coded = manifest["stages"]["plots"]["warning_codes"][message]
    assert coded["code"] == "plots_outside_aoi"
    assert (coded["values"]["off"], coded["values"]["n"]) == (1, 26)
    section = (run / REPORT_RELPATH).read_text().split('id="warnings"')[1].split('id="headline"')[0]
    assert "26 个样地中有 1 个位于 AOI 范围之外（feature 21 (plot_id &#39;J016&#39;)）" in section
    assert off_grid not in section
    for stage, message in said:
        if message not in manifest["stages"][stage].get("warning_codes", {}):
            assert str(escape(message)) in section


def test_second_run_skips_and_reproduce_is_identical(tiny_run, capsys):
    cfg, run = tiny_run
    assert main(["run", "--config", str(cfg), "--quiet"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(r["status"].startswith("skipped") for r in manifest["stages"].values())
    out = run.parent / "again"
    code = main(["reproduce", str(run / "manifest.json"), "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "different" not in printed and "missing" not in printed
    verdicts = [line.split()[0] for line in printed.splitlines()[:-1]]
    assert verdicts == ["identical"] * len(manifest["outputs"])


def test_bureau_tables_open_in_excel(tiny_run):
    """The CSVs start with a byte-order mark (Excel reads them as UTF-8), plain UTF-8
    readers get clean column names, areas come in ha and 亩, the workbook holds the
    CSVs' numbers, and the roll-ups' groups add up to all parcels'."""
    cfg, run = tiny_run
    csvs = {
        "parcels": run / PARCEL_SINK_CSV_RELPATH,
        "credits": run / CREDITS_RELPATH,
        "estimates": run / ESTIMATES_RELPATH,
        "sample_plan": run / SAMPLE_PLAN_RELPATH,
    }
    rollups = load_config(cfg).stages.report.rollups
    assert rollups, "the tiny region totals by its parcels' attributes"
    csvs.update({f"rollup_{attr}": run / rollup_relpath(attr) for attr in rollups})
    for path in csvs.values():
        assert path.read_bytes()[:3] == b"\xef\xbb\xbf", path
        assert pd.read_csv(path, encoding="utf-8").columns[0] in {"parcel_id", "sample", *rollups}
    for attr in rollups:
        table = pd.read_csv(run / rollup_relpath(attr), encoding="utf-8-sig", dtype={attr: str})
        groups, total = table.iloc[:-1], table.iloc[-1]
        assert total[attr] == TOTAL_ID
        for col in ("area_grid_ha", "forest_area_ha", "carbon_2024_mg_c", "sink_tco2e_yr"):
            assert groups[col].sum() == pytest.approx(total[col], rel=1e-9), (attr, col)
    for rel in (PARCEL_SINK_CSV_RELPATH, CREDITS_RELPATH):
        table = pd.read_csv(run / rel, encoding="utf-8-sig")
        for ha in [c for c in table.columns if c.endswith("_ha") and "area" in c]:
            mu = table[ha.removesuffix("_ha") + "_mu"]
            np.testing.assert_allclose(mu, table[ha] * 10_000 / (6000 / 9), rtol=1e-12)
    assert_workbook_matches_csvs(run / TABLES_XLSX_RELPATH, csvs)


def test_compared_methodologies_are_credited_side_by_side(tiny_run, tiny_data):
    """``stages.credits.compare`` rerunning credits and report of the run: forest and
    bamboo management tables beside credits.csv, in the manifest and the report, their
    TOTAL recomputed by hand from the stage's inputs (the project sample's chosen
    estimate, the project parcels' stated baselines and areas, the epochs' reference
    dates). The run's own config is rerun afterwards, so the fixture's run is as before."""
    cfg, run_dir = tiny_run
    text = cfg.read_text() + (
        "  credits:\n    compare: [configs/methodology/forest_management.yaml, "
        "configs/methodology/bamboo_management.yaml]\n"
    )
    cfg2 = cfg.parent / "tiny_compare.yaml"
    cfg2.write_text(text)
    try:
        # the estimate stage reruns too: its domains follow the methodologies' forest types
        stages = "estimate,credits,report"
        assert main(["run", "--config", str(cfg2), "--stages", stages, "--quiet"]) == 0
        _check_compared(run_dir, tiny_data)
    finally:
        assert main(["run", "--config", str(cfg), "--stages", stages, "--quiet"]) == 0


def _check_compared(run_dir: Path, tiny_data: Path) -> None:
    from datetime import date

    from scipy.stats import t as student_t

    manifest = json.loads((run_dir / "manifest.json").read_text())
    fm, bamboo = (
        run_dir / "credits/credits_ar-cm-003.csv",
        run_dir / "credits/credits_ar-cm-005.csv",
    )
    assert {"credits/credits_ar-cm-003.csv", "credits/credits_ar-cm-005.csv"} <= set(
        manifest["outputs"]
    )
    # by hand: P, SE, df of the chosen project change; B = sum(rate x area) x years
    est = pd.read_csv(run_dir / ESTIMATES_RELPATH)
    chosen = est[(est["sample"] == "project") & (est["quantity"] == "change_2019_2024")
                 & est["chosen"]].iloc[0]  # fmt: skip
    project = gpd.read_file(tiny_data / "parcels/project.gpkg").to_crs("EPSG:32650")
    years = (date(2024, 7, 1) - date(2019, 7, 1)).days / 365.25
    baseline = float((project["baseline_tco2e_ha_yr"] * project.area / 1e4).sum()) * years
    net = float(chosen["total"]) - baseline  # leakage 0
    half = float(student_t.ppf(0.95, chosen["df"])) * float(chosen["se"])
    u = half / net if net > 0 else float("inf")
    bands = [(0.10, 0.0), (0.15, 0.25), (0.20, 0.5), (0.30, 0.75), (float("inf"), 1.0)]
    share = next(s for upper, s in bands if u <= upper)
    expected = max(net - min(share * half, net), 0.0) if net > 0 else 0.0  # buffer 0
    total = pd.read_csv(fm).set_index("parcel_id").loc[TOTAL_ID]
    assert total["net_tco2e"] == pytest.approx(net, rel=1e-6)
    assert total["half_width_tco2e"] == pytest.approx(half, rel=1e-6)
    assert total["credits_tco2e"] == pytest.approx(expected, abs=1e-6)
    # bamboo management credits the bamboo parcels only: the tiny project has none
    forest_type = gpd.read_file(tiny_data / "parcels/parcels.gpkg").set_index("parcel_id")
    rows = pd.read_csv(bamboo, dtype={"parcel_id": str}).set_index("parcel_id")
    parcels = rows.drop(index=[TOTAL_ID, "DECLARED"], errors="ignore")
    is_bamboo = forest_type.loc[parcels.index, "forest_type"].eq("moso_bamboo")
    assert list(parcels["eligible"].astype(bool)) == list(is_bamboo)
    credited = project.set_index("parcel_id").loc[parcels.index[is_bamboo.to_numpy()]]
    assert rows.loc[TOTAL_ID, "area_ha"] == pytest.approx(float(credited.area.sum()) / 1e4)
    if not is_bamboo.all():
        assert rows.loc["DECLARED", "project_tco2e"] == pytest.approx(float(chosen["total"]))
        assert rows.loc[TOTAL_ID, "estimator"] == "map_sum_correlated_bound"
    html = (run_dir / REPORT_RELPATH).read_text()
    section = html.split('id="compared-credits"')[1].split("</table>")[0]
    assert "ar-cm-003" in section and "ar-cm-005" in section
    assert f"{total['credits_tco2e']:,.1f}" in section
