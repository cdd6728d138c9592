"""The sub-compartment (小班) inventory record: the mean-tree estimate, the simulator's
record and its error model, and the record as a predictor layer."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from shapely.geometry import box
from test_allometry import STEMANALYSIS_TREE8

from models.stand_inventory import mean_tree_stand
from pipeline.cli import main
from pipeline.errors import InputDataError
from pipeline.samples import bundle_class_layers
from pipeline.simulate.parcels import SURVEY_COLUMNS, survey_record
from pipeline.simulate.science import coefficients
from pipeline.simulate.truth import StandTally
from pipeline.subcompartment import INVENTORY_BAND, inventory_estimate, inventory_layer


def test_mean_tree_of_a_stand_of_equal_trees_is_the_standards_worked_example() -> None:
    """1500 stems/ha of StemAnalysis's tree 8 at age 20 (D 10.347 cm, H 12.6 m): AGB 25.501
    kg and BGB 4.488 kg per tree by LY/T 2264-2014 (tests/test_allometry.py), carbon
    fractions 0.5003 above and 0.488 below ground (LY/T 2264-2014, models/data)."""
    _, d, h, agb_kg, bgb_kg = STEMANALYSIS_TREE8[-1]
    agb, carbon = mean_tree_stand(["杉木"], [d], [h], [1500.0])
    assert agb[0] == pytest.approx(1.5 * agb_kg, rel=1e-3)
    assert carbon[0] == pytest.approx(1.5 * (agb_kg * 0.5003 + bgb_kg * 0.488), rel=1e-3)


def _parcels(n: int, kind: str) -> pd.DataFrame:
    return pd.DataFrame({"type_0": [kind] * n, "age_0": np.full(n, 20.0)})


def test_simulated_record_has_the_stated_survey_errors() -> None:
    """The record's DBH, height and stems scatter around the stand's own values with the
    relative SDs of simulation.yaml (xiaoban), mean-preserving; its age with the age SD."""
    n = 20_000
    stems = np.full(n, 1000.0)  # 1000 trees on 1 ha each
    dg, lorey = 15.0, 12.0
    tally = StandTally(stems, stems * dg**2, stems * dg**2 * lorey, np.zeros(n))
    rec = survey_record(
        _parcels(n, "chinese_fir"), tally, np.ones(n), [2019.4], np.random.default_rng(1)
    )
    assert list(rec.columns) == list(SURVEY_COLUMNS)
    p = coefficients()["xiaoban"]
    for col, true, sd in (
        ("mean_dbh_cm", dg, p["dbh_error_sd_rel"]),
        ("mean_height_m", lorey, p["height_error_sd_rel"]),
        ("stems_per_ha", 1000.0, p["stems_error_sd_rel"]),
    ):
        ratio = rec[col].to_numpy() / true
        assert np.mean(ratio) == pytest.approx(1.0, abs=4 * sd / np.sqrt(n) + 0.002)
        assert np.std(np.log(ratio)) == pytest.approx(sd, rel=0.05)
    assert np.std(rec["age_yr"] - 20.0) == pytest.approx(p["age_error_sd_yr"], rel=0.05)
    assert set(rec["dominant_species"]) == {"杉木"} and set(rec["survey_year"]) == {2019.0}
    assert rec["culm_age_yr"].isna().all()


def test_simulated_record_of_bamboo_and_of_non_forest() -> None:
    n = 3
    tally = StandTally(
        np.array([3000.0, 3000.0, 0.0]),
        np.full(3, 3000.0 * 9.0**2),
        np.full(3, 3000.0 * 81 * 14),
        np.array([9000.0, 9000.0, 0.0]),
    )
    parcels = pd.DataFrame(
        {"type_0": ["moso_bamboo", "moso_bamboo", "farmland"], "age_0": [30.0, 30, 0]}
    )
    rec = survey_record(parcels, tally, np.ones(n), [2019.4], np.random.default_rng(2))
    assert list(rec["dominant_species"][:2]) == ["毛竹", "毛竹"]
    assert (rec["culm_age_yr"][:2] == 3.0).all() and rec["age_yr"][:2].isna().all()
    assert rec.iloc[2].isna().all()  # not forest at the survey: an empty record


def _layer() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "parcel_id": ["A", "B", "C"],
            "dominant_species": ["杉木", None, "马尾松"],
            "mean_dbh_cm": [10.347, np.nan, 20.0],
            "mean_height_m": [12.6, np.nan, 15.0],
            "stems_per_ha": [1500.0, np.nan, 800.0],
        },
        geometry=[box(0, 0, 50, 100), box(50, 0, 100, 100), box(100, 0, 150, 100)],
        crs="EPSG:32650",
    )


def _grid() -> xr.DataArray:
    x = np.arange(5.0, 200.0, 10.0)
    y = np.arange(95.0, 0.0, -10.0)
    da = xr.DataArray(np.zeros((1, y.size, x.size)), dims=("band", "y", "x"),
                      coords={"band": ["elevation"], "y": y, "x": x})  # fmt: skip
    return da.rio.write_crs("EPSG:32650")


def test_inventory_layer_burns_each_parcels_density() -> None:
    parcels = _layer()
    est = inventory_estimate(parcels)
    assert est.loc[1, "inventory_agb_mg_ha"] == 0.0  # empty record: no stand at the survey
    band = inventory_layer(parcels, _grid())
    assert list(band["band"].values) == [INVENTORY_BAND]
    values = np.asarray(band.values[0])
    np.testing.assert_allclose(values[:, :5], est.loc[0, "inventory_agb_mg_ha"], rtol=1e-6)
    np.testing.assert_array_equal(values[:, 5:10], 0.0)
    np.testing.assert_allclose(values[:, 10:15], est.loc[2, "inventory_agb_mg_ha"], rtol=1e-6)
    np.testing.assert_array_equal(values[:, 15:], 0.0)  # outside every parcel


def test_models_fitted_with_the_record_refuse_a_layer_without_it() -> None:
    bundle = {"parcel_classes": {"column": None, "classes": [], "inventory": True}}
    with pytest.raises(InputDataError, match=r"sub-compartment record.*mean_dbh_cm"):
        bundle_class_layers(bundle, _layer().drop(columns=["mean_dbh_cm"]), _grid())
    got = bundle_class_layers(bundle, _layer(), _grid())
    assert got is not None and list(got["band"].values) == [INVENTORY_BAND]


def test_check_reads_the_record_under_a_bureaus_own_field_names(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A layer whose record keeps its Chinese field names, mapped by sources.parcel_fields,
    is reported with its record (the check reads it as the stages do)."""
    names = {
        "dominant_species": "优势树种",
        "mean_dbh_cm": "平均胸径",
        "mean_height_m": "平均树高",
        "stems_per_ha": "每公顷株数",
        "survey_year": "调查年度",
    }
    layer = gpd.read_file(tiny_data / "parcels/parcels.gpkg")
    stands = int(layer["dominant_species"].notna().sum())
    own = tmp_path / "xiaoban.gpkg"
    layer.rename(columns=names).to_file(own)
    config = yaml.safe_load(tiny_config.read_text())
    config["sources"].update(parcels=str(own), parcel_fields=names)
    cfg = tmp_path / "own.yaml"
    cfg.write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["check", "--config", str(cfg), "--stages", "parcels"]) == 0
    out = capsys.readouterr().out
    assert f"sub-compartment record: {stands} stands, survey years [2019]" in out
