"""The whole pipeline on the tiny simulated region (CONVENTIONS: one tiny end-to-end run).

Runs ``forest-carbon run`` through the CLI, checks every stage's outputs against the
region's known truth where a tight check is possible on a 600 m region, then checks that
a second run skips everything and that ``reproduce`` finds every output identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from pipeline.cli import main
from pipeline.contracts import (
    CREDITS_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    PLOT_BIOMASS_RELPATH,
    REPORT_RELPATH,
    SINK_RELPATH,
    composite_relpath,
    items_relpath,
    map_relpath,
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


def test_parcel_totals_add_up_to_the_map(tiny_run):
    _, run = tiny_run
    parcels = pd.read_csv(run / PARCEL_SINK_CSV_RELPATH)
    assert len(parcels) > 0
    assert parcels["parcel_id"].is_unique


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
