"""Tests of the ``plots`` stage wrapper and the ``forest-carbon plots`` command."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from pipeline.commands import plots as plots_command
from pipeline.config import PlotsParams
from pipeline.contracts import PLOT_BIOMASS_RELPATH, PLOTS_QA_RELPATH, TREES_RELPATH
from pipeline.errors import ConfigError, InputDataError
from pipeline.stages.plots import plots


def _trees(n_plots: int = 2, n_trees: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plots):
        for i in range(n_trees):
            d = float(rng.uniform(8, 30))
            rows.append(
                {
                    "plot_id": f"P{p}",
                    "epoch": "2019",
                    "tree_id": i,
                    "species": "Castanopsis carlesii",
                    "dbh_cm": d,
                    "height_m": 1.3 + 0.6 * d,
                    "age_yr": np.nan,
                }
            )
    return pd.DataFrame(rows)


def _locations(n_plots: int = 2) -> gpd.GeoDataFrame:
    side = float(np.sqrt(667.0))  # a 0.0667 ha square
    return gpd.GeoDataFrame(
        {"plot_id": [f"P{p}" for p in range(n_plots)], "plot_area_ha": [0.0667] * n_plots},
        geometry=[
            box(500000 + 100 * p, 3000000, 500000 + 100 * p + side, 3000000 + side)
            for p in range(n_plots)
        ],
        crs="EPSG:32650",
    )


def test_stage_returns_the_three_tables() -> None:
    out = plots(PlotsParams(mc_draws=20, seed=1), trees=_trees(), plot_locations=_locations())
    assert set(out) == {TREES_RELPATH, PLOT_BIOMASS_RELPATH, PLOTS_QA_RELPATH}
    tb = out[TREES_RELPATH]
    assert {"equation", "agb_kg", "bgb_kg", "carbon_kg"} <= set(tb.columns)
    pb = out[PLOT_BIOMASS_RELPATH]
    assert len(pb) == 2
    d, h = tb["dbh_cm"].to_numpy(), tb["height_m"].to_numpy()
    rho = 0.451  # models/data/wood_density.csv, Castanopsis carlesii (GWDD China mean)
    expected = 0.0673 * (rho * d**2 * h) ** 0.976  # Chave eq. 4 (no verified species equation)
    np.testing.assert_allclose(tb["agb_kg"], expected, rtol=1e-9)


def test_area_from_polygons_when_no_area_column() -> None:
    loc = _locations().drop(columns="plot_area_ha")
    a = plots(PlotsParams(mc_draws=20), trees=_trees(), plot_locations=loc)[PLOT_BIOMASS_RELPATH]
    b = plots(PlotsParams(mc_draws=20), trees=_trees(), plot_locations=_locations())[
        PLOT_BIOMASS_RELPATH
    ]
    np.testing.assert_allclose(a["agb_mg_ha"], b["agb_mg_ha"], rtol=1e-6)


def test_plot_without_usable_tree_is_input_error_naming_plot() -> None:
    trees = _trees()
    trees.loc[trees["plot_id"] == "P1", "dbh_cm"] = -1.0
    with pytest.raises(InputDataError, match="P1"):
        plots(PlotsParams(mc_draws=20), trees=trees, plot_locations=_locations())


def test_command_writes_a_plot_without_measurable_stems_as_zero_with_its_qa(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # issue 17 defect 3: a young stand recorded with species and no DBH aborted the stage
    import argparse

    trees = _trees()
    young = trees["plot_id"] == "P1"
    trees.loc[young, "dbh_cm"] = np.nan
    trees.loc[young, "height_m"] = 1.0
    trees.to_csv(tmp_path / "trees.csv", index=False)
    _locations().to_file(tmp_path / "plots.gpkg", driver="GPKG")
    parser = argparse.ArgumentParser()
    plots_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["plots", str(tmp_path / "trees.csv"), "--plots", str(tmp_path / "plots.gpkg"),
         "--draws", "20", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    with pytest.warns(UserWarning, match="P1 \\(epoch 2019\\): no measurable stem"):
        assert args.func(args) == 0
    pb = pd.read_csv(tmp_path / "out" / "plot_biomass.csv").set_index("plot_id")
    assert pb.loc["P1", "agb_mg_ha"] == 0.0 and pb.loc["P1", "carbon_sd_mg_ha"] == 0.0
    assert pb.loc["P0", "agb_mg_ha"] > 0
    qa = pd.read_csv(tmp_path / "out" / "qa.csv")
    plot_row = qa[(qa["plot_id"] == "P1") & (qa["field"] == "plot")]
    assert list(plot_row["action"]) == ["zero_biomass"]


def test_unknown_equation_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"stages\.plots"):
        plots(
            PlotsParams(equation="nope", mc_draws=20), trees=_trees(), plot_locations=_locations()
        )


def test_eq7_without_e_is_config_error() -> None:
    with pytest.raises(ConfigError, match="chave_e"):
        plots(
            PlotsParams(equation="chave2014_eq7", mc_draws=20),
            trees=_trees(),
            plot_locations=_locations(),
        )


def test_command_writes_outputs_and_lists_equations(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    trees_csv = tmp_path / "trees.csv"
    _trees().to_csv(trees_csv, index=False)
    gpkg = tmp_path / "plots.gpkg"
    _locations().to_file(gpkg, driver="GPKG")
    parser = argparse.ArgumentParser()
    plots_command.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "plots",
            str(trees_csv),
            "--plots",
            str(gpkg),
            "--draws",
            "20",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert args.func(args) == 0
    for name in ("trees.csv", "plot_biomass.csv", "qa.csv"):
        assert (tmp_path / "out" / name).is_file()
    args = parser.parse_args(["plots", "--list-equations"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "chave2014_eq4" in text and "doi:10.1111/gcb.12629" in text


def test_numeric_plot_ids_match_text_ids_of_the_plot_layer() -> None:
    trees = _trees()
    trees["plot_id"] = trees["plot_id"].str[1:].astype(int)  # 0, 1 as numbers
    loc = _locations()
    loc["plot_id"] = ["0", "1"]
    out = plots(PlotsParams(mc_draws=20), trees=trees, plot_locations=loc)
    assert len(out[PLOT_BIOMASS_RELPATH]) == 2


def test_stage_registration_uses_run_seed_and_configured_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.contracts import RunLayout
    from pipeline.stages.plots import STAGE

    config = load_config(Path("configs/regions/tiny.yaml"))
    params = STAGE.params(config)
    assert params.seed == config.seed  # stages.plots.seed unset -> the run seed
    inputs = STAGE.inputs(config, RunLayout(tmp_path))
    assert inputs == {
        "trees": config.sources.trees,
        "plot_locations": config.sources.plot_locations,
    }
    no_trees = config.model_copy(
        update={"sources": config.sources.model_copy(update={"trees": None})}
    )
    with pytest.raises(ConfigError, match=r"sources\.trees"):
        STAGE.inputs(no_trees, RunLayout(tmp_path))


def test_single_census_list_without_epoch_column_is_one_epoch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Defect 4 of issue 17: ``forest-carbon plots trees.csv`` without an epoch column."""
    import argparse

    trees_csv = tmp_path / "trees.csv"
    _trees().drop(columns="epoch").to_csv(trees_csv, index=False)
    parser = argparse.ArgumentParser()
    plots_command.register(parser.add_subparsers())
    argv = ["plots", str(trees_csv), "--plots", str(tmp_path / "p.gpkg"), "--draws", "20"]
    args = parser.parse_args([*argv, "--epoch", "2019", "--out", str(tmp_path / "out")])
    _locations().to_file(tmp_path / "p.gpkg", driver="GPKG")
    with pytest.warns(UserWarning, match=r"no 'epoch' column.*epoch '2019'"):
        assert args.func(args) == 0
    got = pd.read_csv(tmp_path / "out" / "plot_biomass.csv", dtype={"epoch": str})
    # the same trees with an explicit epoch column give the same plot table
    ref = plots(PlotsParams(mc_draws=20), trees=_trees(), plot_locations=_locations())
    expected = ref[PLOT_BIOMASS_RELPATH]
    assert list(got["epoch"]) == ["2019", "2019"]
    np.testing.assert_allclose(got["agb_mg_ha"], expected["agb_mg_ha"], rtol=1e-12)
    with pytest.warns(UserWarning, match="epoch 'single'"):
        out = plots(
            PlotsParams(mc_draws=20),
            trees=_trees().drop(columns="epoch"),
            plot_locations=_locations(),
        )
    assert set(out[PLOT_BIOMASS_RELPATH]["epoch"]) == {"single"}


def test_run_names_the_epoch_of_a_list_without_one_from_a_single_epoch_config() -> None:
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.stages.plots import STAGE

    config = load_config(Path("configs/regions/tiny.yaml"))
    one = config.model_copy(update={"epochs": config.epochs[:1]})
    assert STAGE.params(one).tree_epoch == config.epochs[0].name
    if len(config.epochs) > 1:
        assert STAGE.params(config).tree_epoch is None
