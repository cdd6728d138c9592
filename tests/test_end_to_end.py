"""The whole pipeline on the tiny simulated region (CONVENTIONS: one tiny end-to-end run).

Runs ``forest-carbon run`` through the CLI, checks every stage's outputs against the
region's known truth where a tight check is possible on a 600 m region, then checks that
a second run skips everything and that ``reproduce`` finds every output identical, and
that a run from a moved copy of the data, killed (SIGKILL) at several points and resumed,
ends with the same outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
    PLOT_FEATURES_RELPATH,
    REPORT_RELPATH,
    SAMPLE_PLAN_RELPATH,
    SINK_RELPATH,
    SYSTEMATIC_RELPATH,
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
    # no temporary left, such as the LiDAR stage's scratch folder of staged chunks
    assert not list(run.rglob(".*.tmp-*"))
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
    # every total carries the conversion factors' shared error, a few percent of it (the
    # carbon fraction's 0.0128 / 0.47 = 2.7 % at least), in the manifest too
    assert np.allclose(recorded["systematic_sd"], totals["systematic_sd"], rtol=1e-12)
    relative = totals["systematic_sd"] / totals["total"].abs()
    assert relative.between(0.02, 0.06).all(), relative.tolist()
    assert (totals["combined_half_width"] > totals["half_width"]).all()
    systematic = json.loads((run / SYSTEMATIC_RELPATH).read_text())
    assert 0.02 < systematic["map_relative_sd"] < 0.06
    # the inventory's stocks are its cross-fitted difference estimates by default
    # (stages.estimate.cross_fit), corrected by the fold maps the model stage made; its
    # change stays plot-only (stages.estimate.change_estimator)
    assert not pd.read_csv(run / FOLD_MAPS_RELPATH).empty
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())["fold_maps"]
    assert "skipped" not in card
    inventory = totals[(totals["sample"] == "inventory") & totals["chosen"]]
    stocks = inventory[inventory["quantity"].str.startswith("stock_")]
    assert len(stocks) == 2 and (stocks["estimator"] == "difference").all()
    assert stocks["note"].str.contains("fold maps' correction").all()
    change = inventory[inventory["quantity"].str.startswith("change_")]
    assert change["estimator"].tolist() == ["stratified"]


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


def test_monitoring_plots_calibrate_the_sds_on_the_tiny_region(tiny_run, tiny_data):
    """The project's monitoring plots train no model; their plot-epochs are pooled in the
    satellite models' calibration, as the model card says, except those whose square
    straddles its stratum's frame (buffer method: they tallied part of their square)."""
    _, run = tiny_run
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())
    plots = gpd.read_file(tiny_data / "plots/plots.gpkg")
    frames = gpd.read_file(tiny_data / "plots/design.gpkg").query("sample == 'project'")
    frame_of = frames.set_index("stratum").geometry
    monitoring = plots[plots["sample"] == "project"]
    outside = [
        sq.difference(frame_of[st]).area
        for sq, st in zip(monitoring.geometry, monitoring["stratum"], strict=True)
    ]
    whole = set(monitoring.loc[np.asarray(outside) < 1e-3, "plot_id"])
    straddling = len(monitoring) - len(whole)
    biomass = pd.read_csv(run / PLOT_BIOMASS_RELPATH)
    n_project = int(biomass["plot_id"].isin(whole).sum())
    assert n_project > 0 and card["independent_plots"]["n_plot_epochs"] == n_project
    assert card["independent_plots"]["n_straddling_plots_left_out"] == straddling
    pooled = [card["satellite_model"]["uncertainty"]]
    pooled += [card["common_band_model"].get("uncertainty", {})]
    n_independent = sum(u.get("n_independent", 0) for u in pooled)
    # every monitoring plot-epoch mapped by a satellite model, none by another
    assert 0 < n_independent <= n_project
    assert card["satellite_model"]["uncertainty"]["n_held_out"] == len(
        card["satellite_model"]["cv_predictions"]
    )
    features = pd.read_csv(run / PLOT_FEATURES_RELPATH)
    assert not features["plot_id"].isin(monitoring["plot_id"]).any()


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


def test_sub_compartment_record_gives_its_own_estimate(tiny_run, tiny_data):
    """The simulated parcel layer carries the sub-compartment record: the parcel table
    gives the record's own estimate, which for the forest parcels lies near the first
    epoch's truth (the record's errors are 8-15 % per attribute on 4 stands, so a loose
    bound); by default the maps do not use it (stages.model.parcel_inventory)."""
    _, run = tiny_run
    card = json.loads((run / "model/model_card.json").read_text())
    assert card["parcel_classes"]["inventory"] is False
    assert "parcels:inventory_agb_mg_ha" not in card["satellite_model"]["features"]
    table = pd.read_csv(run / PARCEL_SINK_CSV_RELPATH, encoding="utf-8-sig")
    truth = pd.read_csv(tiny_data / "truth/parcels.csv")
    both = table.merge(truth, on="parcel_id")
    forest = both[both["dominant_species"].notna()]
    assert len(forest) >= 3
    ratio = forest["inventory_carbon_mg_c"].sum() / forest["carbon_2019_mg"].sum()
    assert 0.7 < ratio < 1.3
    assert (both.loc[both["dominant_species"].isna(), "inventory_carbon_mg_c"] == 0).all()


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


#: where a run is killed, in order: each ``(what, seen)`` kills the run as soon as
#: ``seen(run folder)`` is true. The resumed runs go on from the interrupted stage. A
#: raster being written, the gap between two stages and a small file being written; each
#: point costs one more start of the run (imports, input checks, a cluster).
KILL_POINTS: tuple[tuple[str, Callable[[Path], bool]], ...] = (
    ("while a composite is written", lambda run: any(run.glob("composites/.*.tmp-*"))),
    (
        "between two stages (composite recorded)",
        lambda run: (run / ".state/composite.json").is_file(),
    ),
    (
        "while the models file is written",
        lambda run: "model/" in _read(run / ".state/temporaries"),
    ),
)
#: the stages the killed run makes (predict and later are the reference run's business)
KILLED_STAGES = ("acquire", "composite", "lidar", "plots", "model")
#: outputs that name the files they were made from: the frozen STAC items (absolute asset
#: hrefs) and the LiDAR tile table (each tile's path)
NAME_THE_DATA_FOLDER = ("items/", "lidar/tiles.csv")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_moved_data_folder_killed_at_several_points_resumes_to_identical_outputs(
    tiny_run, tiny_data, tmp_path
):
    """Real processes of ``python -m pipeline run``, killed with SIGKILL at each of
    :data:`KILL_POINTS` and started again, on a copy of the data moved to another folder
    (its STAC catalog's hrefs are relative): the outputs of the killed stages have the
    checksums of the uninterrupted reference run on the original folder; the frozen STAC
    items differ only by the data folder their hrefs name."""
    cfg, reference = tiny_run
    copied = tmp_path / "disk1/tiny"
    shutil.copytree(tiny_data, copied)
    moved = tmp_path / "disk2/copied-to-laptop"
    moved.parent.mkdir()
    shutil.move(copied, moved)
    run = tmp_path / "run"
    config = tmp_path / "moved.yaml"
    config.write_text(
        cfg.read_text().replace(str(tiny_data), str(moved)).replace(str(reference), str(run))
    )
    argv = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--quiet",
            "--stages", ",".join(KILLED_STAGES)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for what, seen in KILL_POINTS:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not seen(run):
                assert proc.poll() is None, (what, proc.communicate()[1].decode()[-3000:])
                assert time.monotonic() < deadline, f"never reached: {what}"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]
    want = json.loads((reference / "manifest.json").read_text())
    got = json.loads((run / "manifest.json").read_text())
    statuses = {s: r["status"] for s, r in got["stages"].items()}
    assert set(statuses) == set(KILLED_STAGES)
    # the last start resumed: what the killed ones finished is skipped
    assert statuses["composite"] == "skipped (unchanged)", statuses
    assert set(statuses.values()) <= {"ran", "skipped (unchanged)"}, statuses
    expected = {rel: rec for rel, rec in want["outputs"].items() if rec["stage"] in KILLED_STAGES}
    assert set(got["outputs"]) == set(expected)
    for rel, rec in expected.items():
        if rel.startswith(NAME_THE_DATA_FOLDER):
            moved_text = (reference / rel).read_text().replace(str(tiny_data), str(moved))
            assert (run / rel).read_text() == moved_text, rel
        else:
            assert got["outputs"][rel]["file_sha256"] == rec["file_sha256"], rel
            assert got["outputs"][rel]["checksum"] == rec["checksum"], rel
    moved_items = json.dumps(want["stac_items"]).replace(str(tiny_data), str(moved))
    assert got["stac_items"] == json.loads(moved_items)
