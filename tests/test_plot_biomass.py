"""Tests of plot biomass and its Monte Carlo uncertainty (models.plot_biomass, models.hd).

The coverage test simulates plots with known truth under the error model the Monte Carlo
claims to represent (seeded): true diameters observed with the Chave et al. (2004) error
(95% sd = 0.0062 D + 0.0904 cm, 5% sd = 4.64 cm), true wood densities scattered around the
table value (sd 0.0708 g cm-3, the species-level value of models/data/uncertainty.yaml, BIOMASS
sd_10), and tree
AGB scattered around Chave eq. 4 with its published RSE (0.357, log scale). The 90%
interval [agb_p05, agb_p95] must cover the true plot AGB in 85-95% of plots and the plot
estimates must be unbiased within 3%.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from models import allometry
from models.errors import HDFitError, ModelsWarning, PlotDataError
from models.hd import HDModel, fit_hd, select_hd
from models.plot_biomass import (
    PLOT_COLUMNS,
    PlotBiomassOptions,
    assign_height_models,
    plot_biomass,
)
from pipeline.config import PlotsParams
from pipeline.stages.plots import options_from_params

AREA_HA = 0.0667


def _options(**changes: Any) -> PlotBiomassOptions:
    """The pipeline's default options (``PlotsParams``) with ``changes``."""
    return dataclasses.replace(options_from_params(PlotsParams()), **changes)


SPECIES = ["Cunninghamia lanceolata", "Pinus massoniana", "Schima superba"]


def _simulate(n_plots: int, n_trees: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for p in range(n_plots):
        total = 0.0
        for i in range(n_trees):
            sp = SPECIES[rng.integers(len(SPECIES))]
            d_true = rng.uniform(8, 35)
            h = 1.3 + 22 * (1 - math.exp(-d_true / 18)) * math.exp(rng.normal(0, 0.08))
            rho_table = float(allometry.wood_density([sp])[0][0])
            rho_true = rho_table + 0.0708 * rng.normal()
            eps = rng.normal(0, 0.357)
            total += 0.0673 * (rho_true * d_true**2 * h) ** 0.976 * math.exp(eps - 0.357**2 / 2)
            sd = 4.64 if rng.uniform() < 0.05 else 0.0062 * d_true + 0.0904
            d_obs = max(0.5, d_true + rng.normal(0, sd))
            rows.append(
                {
                    "plot_id": f"P{p:03d}",
                    "epoch": "2019",
                    "tree_id": i,
                    "species": sp,
                    "dbh_cm": d_obs,
                    "height_m": h,
                    "age_yr": np.nan,
                }
            )
        truth[f"P{p:03d}"] = total / 1000 / AREA_HA
    return pd.DataFrame(rows), pd.Series(truth)


def test_mc_interval_coverage_and_bias_on_known_truth() -> None:
    trees, truth = _simulate(n_plots=160, n_trees=25, seed=42)
    areas = {p: AREA_HA for p in truth.index}
    opts = _options(equation="chave2014_eq4", n_draws=200, seed=7)
    _, plots, _ = plot_biomass(trees, areas, options=opts)
    plots = plots.set_index("plot_id")
    t = truth.loc[plots.index]
    covered = (plots["agb_p05_mg_ha"] <= t) & (t <= plots["agb_p95_mg_ha"])
    coverage = float(covered.mean())
    bias = float(plots["agb_mg_ha"].sum() / t.sum() - 1)
    assert 0.85 <= coverage <= 0.95, coverage
    assert abs(bias) < 0.03, bias


def test_plot_totals_equal_tree_sums_and_columns() -> None:
    trees, _ = _simulate(n_plots=2, n_trees=20, seed=1)
    tree_out, plots, qa = plot_biomass(
        trees,
        {"P000": AREA_HA, "P001": AREA_HA},
        options=_options(equation="chave2014_eq4", n_draws=50, seed=1),
    )
    assert list(plots.columns[: len(PLOT_COLUMNS)]) == list(PLOT_COLUMNS)
    for pid, grp in tree_out.groupby("plot_id"):
        row = plots.set_index("plot_id").loc[pid]
        assert row["agb_mg_ha"] == pytest.approx(grp["agb_kg"].sum() / 1000 / AREA_HA)
        assert row["carbon_mg_ha"] == pytest.approx(grp["carbon_kg"].sum() / 1000 / AREA_HA)
        assert row["co2e_t_ha"] == pytest.approx(row["carbon_mg_ha"] * 44 / 12)
        ba = np.sum(np.pi * (grp["dbh_cm"] / 200) ** 2) / AREA_HA
        assert row["basal_area_m2_ha"] == pytest.approx(ba)
        assert row["n_stems"] == len(grp)
        # stem granularity A sum(m^2) / (sum m)^2, in m2
        m = grp["agb_kg"].to_numpy()
        assert row["agb_granularity_m2"] == pytest.approx(
            AREA_HA * 1e4 * (m**2).sum() / m.sum() ** 2
        )
        # IPCC 2006 Table 4.4 subtropical humid forest: 0.20 below 125 t/ha, 0.24 above
        expected_r = 0.20 if row["agb_mg_ha"] < 125 else 0.24
        assert row["bgb_mg_ha"] == pytest.approx(expected_r * row["agb_mg_ha"])
    assert qa.empty


def test_mc_is_seeded_and_deterministic() -> None:
    trees, _ = _simulate(n_plots=2, n_trees=15, seed=3)
    areas = {"P000": AREA_HA, "P001": AREA_HA}
    a = plot_biomass(trees, areas, options=_options(n_draws=50, seed=11))[1]
    b = plot_biomass(trees, areas, options=_options(n_draws=50, seed=11))[1]
    c = plot_biomass(trees, areas, options=_options(n_draws=50, seed=12))[1]
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["agb_sd_mg_ha"], c["agb_sd_mg_ha"])


def test_bad_rows_are_reported_and_handled() -> None:
    trees, _ = _simulate(n_plots=1, n_trees=20, seed=5)
    trees.loc[0, "dbh_cm"] = -4.0
    trees.loc[1, "dbh_cm"] = 900.0
    trees.loc[2, "height_m"] = 300.0
    # not Quercus glauca: that is Cyclobalanopsis glauca, in the table (species_names.csv)
    trees.loc[3, "species"] = "Quercus robur"
    trees.loc[4, "tree_id"] = trees.loc[5, "tree_id"]
    tree_out, plots, qa = plot_biomass(trees, {"P000": AREA_HA}, options=_options(n_draws=20))
    by_field = qa.set_index("field")
    assert set(qa.loc[qa["field"] == "dbh_cm", "action"]) == {"exclude"}
    assert len(qa[qa["field"] == "dbh_cm"]) == 2
    assert by_field.loc["height_m", "action"] == "drop_height"
    assert "not in models/data/species.csv" in by_field.loc["species", "reason"]
    assert by_field.loc["tree_id", "action"] == "exclude"
    assert plots.loc[0, "n_stems"] == 17
    assert tree_out.loc[2, "height_source"] != "measured"


def test_plot_without_usable_tree_fails_naming_it() -> None:
    trees, _ = _simulate(n_plots=2, n_trees=5, seed=2)
    trees.loc[trees["plot_id"] == "P001", "dbh_cm"] = -1.0
    with pytest.raises(PlotDataError, match="P001"):
        plot_biomass(trees, {"P000": AREA_HA, "P001": AREA_HA}, options=_options(n_draws=20))


def test_plot_measured_with_no_trees_has_zero_biomass_and_leaves_the_others_alone() -> None:
    trees, _ = _simulate(n_plots=2, n_trees=15, seed=4)
    areas = {"P000": AREA_HA, "P001": AREA_HA, "P002": AREA_HA}
    opts = _options(n_draws=50, seed=3)
    _, before, _ = plot_biomass(trees, areas, options=opts)
    empty = pd.DataFrame([{"plot_id": "P002", "epoch": "2019", "tree_id": None,
                           "species": None, "dbh_cm": None}])  # fmt: skip
    _, plots, qa = plot_biomass(pd.concat([empty, trees]), areas, options=opts)
    row = plots.set_index("plot_id").loc["P002"]
    assert row["agb_mg_ha"] == 0.0 and row["agb_sd_mg_ha"] == 0.0 and row["n_stems"] == 0
    assert row["carbon_mg_ha"] == 0.0 and row["plot_area_ha"] == AREA_HA
    # the plots with trees keep their values and random draws
    pd.testing.assert_frame_equal(plots[plots["plot_id"] != "P002"], before)
    assert qa.set_index("plot_id").loc["P002", "action"] == "zero_biomass"


@pytest.mark.parametrize("dbh", [0.0, np.nan])
def test_plot_with_no_measurable_stem_has_zero_biomass_and_leaves_the_others_alone(
    dbh: float,
) -> None:
    # issue 17 defect 3: a young stand (stems below breast height: DBH 0 or blank) is a
    # legitimate plot of zero biomass, not a reason to abort the stage
    trees, _ = _simulate(n_plots=2, n_trees=15, seed=4)
    areas = {"P000": AREA_HA, "P001": AREA_HA, "P002": AREA_HA}
    opts = _options(n_draws=50, seed=3)
    _, before, _ = plot_biomass(trees, areas, options=opts)
    young = pd.DataFrame(
        {"plot_id": "P002", "epoch": "2019", "tree_id": range(4), "species": "Pinus massoniana"}
    ).assign(dbh_cm=dbh, height_m=0.8)
    with pytest.warns(UserWarning, match="P002 \\(epoch 2019\\): no measurable stem"):
        tree_out, plots, qa = plot_biomass(pd.concat([young, trees]), areas, options=opts)
    row = plots.set_index("plot_id").loc["P002"]
    zero = [c for c in PLOT_COLUMNS if c not in ("plot_id", "epoch")] + ["agb_mc_mean_mg_ha"]
    assert (row[zero] == 0.0).all() and row["n_stems"] == 0 and row["n_rows_excluded"] == 4
    assert row["plot_area_ha"] == AREA_HA
    pd.testing.assert_frame_equal(
        plots[plots["plot_id"] != "P002"].reset_index(drop=True), before, check_dtype=False
    )
    plot_qa = qa[(qa["plot_id"] == "P002") & (qa["field"] == "plot")]
    assert list(plot_qa["action"]) == ["zero_biomass"]
    assert tree_out.loc[tree_out["plot_id"] == "P002", "agb_kg"].isna().all()


def test_non_numeric_cells_are_qa_rows_and_a_column_of_text_is_refused() -> None:
    # issue 18 item 8: a height of "abc" became missing with no QA row
    trees, _ = _simulate(n_plots=1, n_trees=20, seed=5)
    trees = trees.astype({"height_m": object, "dbh_cm": object})
    trees.loc[0, "height_m"] = "abc"
    trees.loc[1, "dbh_cm"] = "12,5"
    with pytest.warns(UserWarning, match=r"not numbers \(dbh_cm: 1, height_m: 1\)"):
        tree_out, plots, qa = plot_biomass(trees, {"P000": AREA_HA}, options=_options(n_draws=20))
    rows = qa.set_index("field")
    assert rows.loc["height_m", ["value", "reason", "action"]].tolist() == [
        "abc", "not a number", "drop_height"
    ]  # fmt: skip
    assert rows.loc["dbh_cm", ["value", "reason", "action"]].tolist() == [
        "12,5", "not a number", "exclude"
    ]  # fmt: skip
    assert tree_out.loc[0, "height_source"] != "measured" and not tree_out.loc[1, "usable"]
    assert plots.loc[0, "n_stems"] == 19
    trees["height_m"] = [
        f"{h:.1f} m" for h in _simulate(n_plots=1, n_trees=20, seed=5)[0]["height_m"]
    ]
    with pytest.raises(PlotDataError, match="column 'height_m' holds no number"):
        plot_biomass(trees, {"P000": AREA_HA}, options=_options(n_draws=20))


def test_empty_plot_row_beside_trees_is_refused() -> None:
    trees, _ = _simulate(n_plots=1, n_trees=5, seed=4)
    empty = pd.DataFrame([{"plot_id": "P000", "epoch": "2019", "species": None, "dbh_cm": None}])
    with pytest.raises(PlotDataError, match="P000 \\(epoch 2019\\)"):
        plot_biomass(pd.concat([trees, empty]), {"P000": AREA_HA}, options=_options(n_draws=20))


def test_missing_area_fails_naming_plot() -> None:
    trees, _ = _simulate(n_plots=2, n_trees=5, seed=2)
    with pytest.raises(PlotDataError, match="P001"):
        plot_biomass(trees, {"P000": AREA_HA}, options=_options(n_draws=20))


# ------------------------------------------------------------------ H-D models
def test_loglog_fit_recovers_known_power_law() -> None:
    # closed form: exact data from ln H = 0.9 + 0.55 ln D give a = 0.9, b = 0.55, RSE 0
    d = np.linspace(5, 60, 30)
    h = np.exp(0.9 + 0.55 * np.log(d))
    m = fit_hd(d, h, "log1")
    assert m.coefficients == pytest.approx((0.9, 0.55), abs=1e-10)
    assert m.rse_m == pytest.approx(0.0, abs=1e-9)


def test_michaelis_and_weibull_fits_recover_parameters() -> None:
    rng = np.random.default_rng(0)
    d = rng.uniform(5, 60, 200)
    h_mm = 40 * d / (18 + d) + rng.normal(0, 0.3, d.size)
    m = fit_hd(d, h_mm, "michaelis")
    assert m.coefficients == pytest.approx((40, 18), rel=0.05)
    h_w = 35 * (1 - np.exp(-((d / 25) ** 1.2))) + rng.normal(0, 0.3, d.size)
    w = fit_hd(d, h_w, "weibull")
    assert w.coefficients == pytest.approx((35, 25, 1.2), rel=0.08)
    best = select_hd(d, h_w, "best")
    assert best.method == "weibull"
    assert best.rse_m == pytest.approx(0.3, rel=0.2)


def test_hd_needs_fifteen_heights() -> None:
    with pytest.raises(HDFitError, match="15"):
        fit_hd(np.arange(10, 20.0), np.arange(10, 20.0), "log1")


#: a plot of fir and Schima with half its heights missing (two height-model scopes, conifer
#: and broadleaf); prints its MC SD and 95th percentile
_TWO_SCOPES = """
import dataclasses
import numpy as np, pandas as pd
from models.plot_biomass import plot_biomass
from pipeline.config import PlotsParams
from pipeline.stages.plots import options_from_params
rng = np.random.default_rng(4)
d = rng.uniform(8, 35, 80)
trees = pd.DataFrame({
    "plot_id": "P0", "epoch": "2019", "tree_id": range(80),
    "species": ["Cunninghamia lanceolata", "Schima superba"] * 40, "dbh_cm": d,
    "height_m": np.where(np.arange(80) % 4 < 2, 1.3 + 22 * (1 - np.exp(-d / 18)), np.nan),
    "age_yr": np.nan,
})
options = dataclasses.replace(options_from_params(PlotsParams()), n_draws=200, seed=5)
plots = plot_biomass(trees, {"P0": 0.0667}, options=options)[1]
print(plots[["agb_sd_mg_ha", "agb_p95_mg_ha"]].to_numpy().tobytes().hex())
"""


def _two_scopes_mc(hash_seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    argv = [sys.executable, "-c", _TWO_SCOPES]
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def test_mc_does_not_depend_on_the_processes_string_hashes() -> None:
    # the height models drew in the order of a set of scope keys, which Python's string
    # hashing reorders per process: 3 of these 8 hash seeds gave another MC SD (11.5735
    # against 11.5730 Mg/ha), and reruns of the demo differed in 6-20 plots
    outs = {_two_scopes_mc(seed) for seed in range(4, 12)}
    assert len(outs) == 1 and next(iter(outs)).strip()


def test_predicted_heights_are_used_and_reported() -> None:
    trees, _ = _simulate(n_plots=1, n_trees=40, seed=9)
    trees["species"] = "Cunninghamia lanceolata"  # one species group: one plot-level model
    trees.loc[trees.index[::2], "height_m"] = np.nan
    tree_out, plots, _ = plot_biomass(
        trees, {"P000": AREA_HA}, options=_options(n_draws=50, hd_model="loglog")
    )
    pred = tree_out[tree_out["height_source"] == "hd_model"]
    assert len(pred) == 20
    assert pred["hd_model"].str.startswith("log1").all()
    assert plots.loc[0, "n_heights_predicted"] == 20
    assert (pred["equation"] == "lyt2264_2014_chinese_fir").all()


def test_default_equations_use_species_root_equations() -> None:
    trees, _ = _simulate(n_plots=1, n_trees=20, seed=4)
    tree_out, plots, _ = plot_biomass(
        trees, {"P000": AREA_HA}, options=_options(n_draws=50, seed=2)
    )
    assert set(tree_out["equation"]) == {
        "lyt2264_2014_chinese_fir",
        "zhou2018_zhejiang_masson_pine_agb_dh",
        "zhou2018_zhejiang_schima_superba_agb_dh",
    }
    fir = tree_out[tree_out["species"] == "Cunninghamia lanceolata"]
    d, h = fir["dbh_cm"].to_numpy(), fir["height_m"].to_numpy()
    # LY/T 2264-2014 root model (StemAnalysis allomPardata.csv "belowground" rows)
    root = np.where(d < 5, 0.034655 * d**2.06398 * h**-0.11744, 0.016385 * d**2.52941 * h**-0.11744)
    np.testing.assert_allclose(fir["bgb_kg"], root, rtol=1e-9)
    assert plots.loc[0, "bgb_mg_ha"] == pytest.approx(tree_out["bgb_kg"].sum() / 1000 / AREA_HA)
    assert plots.loc[0, "bgb_sd_mg_ha"] > 0


def test_forced_height_equation_without_heights_excludes_and_reports() -> None:
    trees, _ = _simulate(n_plots=1, n_trees=10, seed=8)
    trees.loc[trees.index[:4], "height_m"] = np.nan  # 6 heights left: no H-D model possible
    with pytest.warns(ModelsWarning, match="4 trees whose equation chave2014_eq4 needs a height"):
        _, plots, qa = plot_biomass(
            trees, {"P000": AREA_HA}, options=_options(equation="chave2014_eq4", n_draws=20)
        )
    assert (qa["reason"].str.contains("height required by chave2014_eq4")).sum() == 4
    assert plots.loc[0, "n_stems"] == 6
    assert np.isfinite(plots.loc[0, "agb_mg_ha"])


def test_an_epoch_without_heights_does_not_change_the_equation() -> None:
    """Issue #16: the same Chinese firs measured twice, with heights in 2019 only (too few
    for an H-D model), get one equation in both epochs, so the plot shows no growth; with
    the D-H standard in 2019 and the D-only equation in 2024 it would show a false sink."""
    trees, _ = _simulate(n_plots=1, n_trees=10, seed=5)
    trees["species"] = "Cunninghamia lanceolata"
    later = trees.assign(epoch="2024", height_m=np.nan)
    both = pd.concat([trees, later], ignore_index=True)
    tree_out, plots, qa = plot_biomass(both, {"P000": AREA_HA}, options=_options(n_draws=20))
    assert set(tree_out["equation"]) == {"zhou2018_jiangxi_chinese_fir_agb_d"}
    assert set(tree_out["bgb_equation"]) == {"zhou2018_jiangxi_chinese_fir_bgb_d"}
    by_epoch = plots.set_index("epoch")
    for col in ("agb_mg_ha", "bgb_mg_ha", "carbon_mg_ha"):
        assert by_epoch.loc["2024", col] == pytest.approx(by_epoch.loc["2019", col], rel=1e-12)
    # the rule is stated in the QA table
    row = qa[(qa["field"] == "equation") & (qa["value"] == "Cunninghamia lanceolata")]
    assert len(row) == 1 and "10 of 20 usable trees" in row["reason"].iloc[0]
    # the equations differ enough that mixing them would have shown a sink
    d, h = trees["dbh_cm"].to_numpy(), trees["height_m"].to_numpy()
    sp = ["Cunninghamia lanceolata"] * len(d)
    dh = allometry.tree_agb_kg(sp, d, h).sum()
    d_only = allometry.tree_agb_kg(sp, d, None).sum()
    assert abs(d_only / dh - 1) > 0.05


def _european_inventory(seed: int = 3) -> pd.DataFrame:
    """A tree list shaped like a central-European inventory: beech and spruce (outside the
    species table) beside Chinese fir, every tree with a measured height."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(3):
        for i in range(20):
            sp = ["Fagus sylvatica", "Picea abies", "Cunninghamia lanceolata"][i % 3]
            d = float(rng.uniform(10, 50))
            h = 1.3 + 30 * (1 - math.exp(-d / 25))
            rows.append({"plot_id": f"E{p}", "epoch": "2020", "tree_id": i, "species": sp,
                         "dbh_cm": d, "height_m": h, "plot_area_ha": 0.1})  # fmt: skip
    return pd.DataFrame(rows)


def test_trees_outside_the_species_table_are_reported_loudly() -> None:
    """Defect 1 of issue 17: a warning, a QA row and a report line say which share of trees
    and AGB fell outside the species table and what they got."""
    from models.plot_biomass import SPECIES_TABLE_FIELD
    from pipeline.report.build import species_table_rows
    from pipeline.report.words import Words

    trees = _european_inventory()
    with pytest.warns(UserWarning, match=r"42 of 60 trees \(70%\).*not in models/data/spec"):
        t, _, qa = plot_biomass(trees, options=_options(n_draws=20))
    row = qa[qa["field"] == SPECIES_TABLE_FIELD]
    assert len(row) == 1
    # independent reference: the two foreign species by Chave eq. 4 with the GWDD genus means
    # (Fagus: mean of its species means in BIOMASS wdData.csv rows 6938-6946; Picea: read
    # from the generated table, checked by the level)
    fagus = np.mean([0.55104, 0.644028, 0.56, np.mean([0.682773, 0.52, 0.61]), 0.58, 0.58548])
    beech = t["species"] == "Fagus sylvatica"
    d, h = t.loc[beech, "dbh_cm"], t.loc[beech, "height_used_m"]
    np.testing.assert_allclose(
        t.loc[beech, "agb_kg"], 0.0673 * (fagus * d**2 * h) ** 0.976, rtol=1e-4
    )
    foreign = t["species"] != "Cunninghamia lanceolata"
    assert set(t.loc[foreign, "wood_density_level"]) == {"genus"}
    share = t.loc[foreign, "agb_kg"].sum() / t["agb_kg"].sum()
    assert float(row["value"].iloc[0]) == pytest.approx(share, abs=1e-4)
    reason = str(row["reason"].iloc[0])
    assert "chave2014_eq4 (42)" in reason and "genus means" in reason
    assert species_table_rows(qa, Words("en")) == [
        ("field trees outside the species table", reason)
    ]
    assert species_table_rows(qa, Words("zh")) == [("树种表以外的样木", reason)]


def test_no_species_table_summary_when_every_species_is_known() -> None:
    trees, _ = _simulate(2, 15, seed=5)
    _, _, qa = plot_biomass(trees, pd.Series({p: AREA_HA for p in trees["plot_id"]}),
                            options=_options(n_draws=20))  # fmt: skip
    assert "species_table" not in set(qa["field"])


def _stand(plot: str, n: int, seed: int, species: str = "Schima superba") -> list[dict[str, Any]]:
    """``n`` trees of a 10-40 cm stand with heights on a Weibull curve (5% noise)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(10, 40, n)
    h = 28 * (1 - np.exp(-((d / 15) ** 1.2))) * np.exp(rng.normal(0, 0.05, n))
    return [{"plot_id": plot, "epoch": "2020", "tree_id": f"{plot}-{i}", "species": species,
             "dbh_cm": d[i], "height_m": h[i], "plot_area_ha": 0.1} for i in range(n)]  # fmt: skip


def test_hd_fit_with_a_pole_in_the_diameter_range_is_refused() -> None:
    """Defect 10 of issue 17: a Michaelis-Menten fit with a negative B (a pole at D = -B)
    was accepted and predicted well over 100 m for a 1.2 cm stem."""
    d = np.linspace(2.0, 40.0, 20)
    h = 25.0 * d / (d - 1.0)  # A = 25, B = -1: heights 50 -> 26 m, falling with diameter
    fit = fit_hd(d, h, "michaelis")
    assert fit.coefficients[1] < 0  # the fit itself converges to the pole
    assert fit.predict([1.2])[0] > 100
    why = fit.implausibility(np.append(d, 1.2), max_height_m=120.0)
    assert why is not None and "not positive" in why
    steep = HDModel("log1", (3.0, 1.0), rse_m=1.0, rse_log=0.1, n=20)  # 20 m per cm
    assert "predicts" in str(steep.implausibility([5.0, 40.0], max_height_m=120.0))
    good = fit_hd(*_weibull_heights(), "weibull")
    assert good.implausibility(_weibull_heights()[0], max_height_m=120.0) is None
    with pytest.raises(HDFitError, match="implausible"):
        select_hd(np.append(d, 1.2), np.append(h, np.nan), "michaelis", max_height_m=120.0)

    # in the plots stage the plot's fit is refused with a warning, then the next scopes'
    # (the epoch's and the group's trees, pulled to the pole by plot A), and the small stem
    # gets its species' equation without height instead of a 150 m height
    rows = [{"plot_id": "A", "epoch": "2020", "tree_id": f"A-{i}", "species": "Schima superba",
             "dbh_cm": di, "height_m": hi, "plot_area_ha": 0.1}
            for i, (di, hi) in enumerate(zip(d, h, strict=True))]  # fmt: skip
    rows.append({**rows[0], "tree_id": "A-small", "dbh_cm": 1.2, "height_m": np.nan})
    trees = pd.DataFrame(rows + _stand("B", 60, seed=1))
    with pytest.warns(UserWarning, match=r"H-D model of plot/A/2020/broadleaf refused"):
        t, _, qa = plot_biomass(trees, options=_options(n_draws=20, hd_model="michaelis"))
    small = t[t["tree_id"] == "A-small"].iloc[0]
    assert small["height_source"] == "none" and np.isnan(small["height_used_m"])
    assert small["equation"] == "zhou2018_zhejiang_schima_superba_agb_d"
    fallbacks = qa[qa["action"] == "fallback"]
    assert list(fallbacks["value"]) == [
        "plot/A/2020/broadleaf",
        "epoch/2020/broadleaf",
        "group/broadleaf",
    ]


def _weibull_heights() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rows = pd.DataFrame(_stand("W", 40, seed=2))
    return rows["dbh_cm"].to_numpy(), rows["height_m"].to_numpy()


def test_measured_height_far_off_its_stand_is_dropped() -> None:
    """Defect 10 of issue 17: a measured 120 m height in a 20 m stand was kept."""
    trees = pd.DataFrame(_stand("P", 40, seed=3))
    trees.loc[5, "height_m"] = 120.0
    t, _, qa = plot_biomass(trees, options=_options(n_draws=20))
    row = t.loc[5]
    assert row["height_source"] == "hd_model" and row["height_used_m"] < 40
    flagged = qa[(qa["field"] == "height_m") & (qa["action"] == "drop_height")]
    assert list(flagged["tree_id"]) == [row["tree_id"]]
    assert (t["height_source"] == "measured").sum() == 39  # no other height discarded


def _reference_height_models(t: pd.DataFrame, need: pd.Series) -> dict[Any, tuple[Any, ...] | None]:
    """Each needing tree's H-D scope, tree by tree: the first of its (plot, epoch, group),
    (epoch, group) and (group) scopes whose usable trees give a plausible fit."""
    group = t["species"].map(lambda s: allometry.resolve_taxon(str(s)).group)
    usable = t["usable"]
    out: dict[Any, tuple[Any, ...] | None] = {}
    for i in t.index[need]:
        p, e, g = t.at[i, "plot_id"], t.at[i, "epoch"], group[i]
        out[i] = None
        for key, sel in (
            (("plot", p, e, g), (t["plot_id"] == p) & (t["epoch"] == e) & (group == g)),
            (("epoch", e, g), (t["epoch"] == e) & (group == g)),
            (("group", g), group == g),
        ):
            sub = t[sel & usable]
            try:
                select_hd(sub["dbh_cm"], sub["height_m"], "best", max_height_m=120.0)
            except HDFitError:
                continue
            out[i] = key
            break
    return out


def test_height_models_match_a_tree_by_tree_reference() -> None:
    # issue 18 item 12: the assignment is grouped now (it compared every tree with every
    # other); the scopes and models must be those of the tree-by-tree rule
    rows = _stand("A", 30, seed=4) + _stand("B", 10, seed=5) + _stand("C", 12, seed=6)
    rows += _stand("D", 40, seed=7, species="Pinus massoniana")
    rows += [{**r, "epoch": "2025"} for r in _stand("A", 8, seed=8)]
    trees = pd.DataFrame(rows)
    rng = np.random.default_rng(9)
    trees.loc[rng.uniform(size=len(trees)) < 0.4, "height_m"] = np.nan
    trees.loc[3, "usable"] = False
    trees["usable"] = trees["usable"].fillna(True).astype(bool)
    need = trees["usable"] & trees["height_m"].isna()
    hm = assign_height_models(trees, "best")
    expected = _reference_height_models(trees, need)
    assert {i: hm.keys[i] for i in expected} == expected
    assert hm.keys[~need].isna().all()
    scopes = {k[0] for k in expected.values() if k is not None}
    assert scopes == {"plot", "epoch", "group"}  # every scope of the chain is exercised
    for i, key in expected.items():
        if key is not None:
            group = trees["species"].map(lambda s: allometry.resolve_taxon(str(s)).group)
            sel = pd.Series(True, index=trees.index)
            cols = {"plot": ["plot_id", "epoch"], "epoch": ["epoch"], "group": []}[key[0]]
            for c, v in zip(cols, key[1:], strict=False):
                sel &= trees[c] == v
            sub = trees[sel & (group == key[-1]) & trees["usable"]]
            ref = select_hd(sub["dbh_cm"], sub["height_m"], "best", max_height_m=120.0)
            assert hm.models[key] == ref, i


def test_no_height_model_for_trees_whose_equation_needs_no_height() -> None:
    # issue 17 defect 5: heights were predicted for every tree, used or not
    trees = pd.DataFrame(_stand("A", 40, seed=10))
    trees.loc[::2, "height_m"] = np.nan
    t, plots, _ = plot_biomass(trees, options=_options(n_draws=20, equation="zeng2018_onevar"))
    missing = t["height_m"].isna()
    assert (t.loc[missing, "height_source"] == "none").all()
    assert t.loc[missing, "hd_model"].isna().all() and plots.loc[0, "n_heights_predicted"] == 0
    # the trees' biomass does not depend on a height: the equation applied to DBH alone
    ref = allometry.tree_agb_kg(
        t["species"].to_numpy(dtype=object), t["dbh_cm"].to_numpy(), np.full(40, np.nan),
        np.full(40, np.nan), wood_density_g_cm3=t["wood_density_used_g_cm3"].to_numpy(),
        equation="zeng2018_onevar",
    )  # fmt: skip
    np.testing.assert_allclose(t["agb_kg"], ref, rtol=1e-12)
    # with the species' own D-H equation the missing heights are predicted
    t, _, _ = plot_biomass(trees, options=_options(n_draws=20))
    assert (t.loc[missing, "height_source"] == "hd_model").all()
