"""The conversion factors' shared error (models.shared_errors, models.survey.totals.systematic_sd)
against closed forms and a tree-by-tree numpy reference."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from models.errors import PlotDataError, SurveyError
from models.shared_errors import SharedDraws, map_factor_shifts, shared_factor_shifts
from models.survey.design import StratifiedDesign, combine_systematic, t_quantile
from models.survey.totals import sample_totals, systematic_sd

AREA_HA = 0.0667


def _data_row(name: str, **match: str) -> pd.Series:
    """A row of a models/data CSV, read here without the package's lookup."""
    path = resources.files("models").joinpath("data", name)
    table = pd.read_csv(str(path), encoding="utf-8-sig")
    for column, value in match.items():
        table = table[table[column].astype(str) == value]
    return table.iloc[0]


#: Schima superba has no species or genus carbon fraction: the broadleaf group row
BROADLEAF = _data_row("carbon_fraction.csv", level="group", taxon="broadleaf")
R_CF = float(BROADLEAF["sd"]) / float(BROADLEAF["carbon_fraction"])


def _trees(carbon_mg_ha: dict[tuple[str, str], float], ratio: float | None = None) -> pd.DataFrame:
    """One Schima superba tree per plot-epoch with the given plot carbon density: BGB from
    a root equation (no ratio), or AGB x ``ratio``."""
    rows = []
    cf = float(BROADLEAF["carbon_fraction"])
    share = 1.0 / (1.0 + (0.25 if ratio is None else ratio))
    for (plot, epoch), c in carbon_mg_ha.items():
        biomass_kg = c / cf * 1000.0 * AREA_HA
        rows.append({"plot_id": plot, "epoch": epoch, "species": "Schima superba",
                     "usable": True, "plot_area_ha": AREA_HA, "agb_kg": biomass_kg * share,
                     "bgb_kg": biomass_kg * (1 - share),
                     "root_shoot_ratio": np.nan if ratio is None else ratio})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_shared_carbon_fraction_error_shifts_every_plot_by_the_same_relative_amount() -> None:
    carbon = {("A", "2019"): 100.0, ("A", "2024"): 130.0, ("B", "2019"): 40.0}
    draws = SharedDraws.draw(50, seed=1)
    shifts = shared_factor_shifts(_trees(carbon), draws)
    for key, c in carbon.items():
        np.testing.assert_allclose(shifts.loc[key], R_CF * c * draws.carbon_fraction_z, rtol=1e-12)
    plots = pd.DataFrame([{"plot_id": p, "epoch": e, "carbon_mg_ha": c}
                          for (p, e), c in carbon.items()])  # fmt: skip
    np.testing.assert_allclose(
        map_factor_shifts(plots, shifts), R_CF * draws.carbon_fraction_z, rtol=1e-12
    )


def test_root_to_shoot_draws_equal_a_tree_by_tree_reference() -> None:
    """Ratio trees in both IPCC classes: each tree's BGB takes the triangular draw of its
    plot's class and every fraction its row's normal draw (reference: a loop over trees
    and draws with the IPCC range of root_shoot.csv)."""
    carbon = {("A", "2019"): 30.0, ("B", "2019"): 90.0}  # AGB < and > 125 Mg/ha
    trees = _trees(carbon, ratio=0.2)
    low_class = _data_row("root_shoot.csv", level="region", agb_min_mg_ha="0")
    high_class = _data_row("root_shoot.csv", level="region", agb_min_mg_ha="125")
    draws = SharedDraws.draw(40, seed=5)
    shifts = shared_factor_shifts(trees, draws)
    cf, sd = float(BROADLEAF["carbon_fraction"]), float(BROADLEAF["sd"])
    for t in trees.itertuples():
        plot_agb = t.agb_kg / 1000 / t.plot_area_ha
        row = low_class if plot_agb < 125 else high_class
        a, c, b = float(row["low"]), float(row["root_shoot_ratio"]), float(row["high"])
        expected = []
        for z, u in zip(draws.carbon_fraction_z, draws.root_shoot_u, strict=True):
            # inverse CDF of the triangular distribution, written out
            f = (c - a) / (b - a)
            r = (
                a + np.sqrt(u * (b - a) * (c - a))
                if u < f
                else b - np.sqrt((1 - u) * (b - a) * (b - c))
            )
            bgb = t.agb_kg * r
            carbon_kg = (t.agb_kg + bgb) * (cf + z * sd) - (t.agb_kg + t.bgb_kg) * cf
            expected.append(carbon_kg / 1000 / t.plot_area_ha)
        np.testing.assert_allclose(shifts.loc[(t.plot_id, t.epoch)], expected, rtol=1e-9)


def test_latin_hypercube_draws_are_reproducible_and_match_their_distributions() -> None:
    a, b = SharedDraws.draw(200, seed=7), SharedDraws.draw(200, seed=7)
    assert np.array_equal(a.carbon_fraction_z, b.carbon_fraction_z)
    assert np.array_equal(a.root_shoot_u, b.root_shoot_u)
    assert not np.array_equal(a.carbon_fraction_z, SharedDraws.draw(200, seed=8).carbon_fraction_z)
    # one draw in each of 200 equal-probability strata: SD of z within 1 % of 1
    assert np.std(a.carbon_fraction_z, ddof=1) == pytest.approx(1.0, abs=0.01)
    assert np.sort(np.floor(a.root_shoot_u * 200)).tolist() == list(range(200))
    with pytest.raises(PlotDataError, match="at least 2"):
        SharedDraws.draw(1, seed=0)


def test_a_tree_table_without_a_column_is_refused_by_name() -> None:
    trees = _trees({("A", "2019"): 10.0}).drop(columns="agb_kg")
    with pytest.raises(PlotDataError, match=r"agb_kg.*plots/trees.csv"):
        shared_factor_shifts(trees, SharedDraws.draw(5, seed=0))


@pytest.fixture()
def sample() -> dict:
    design = StratifiedDesign.from_labels(["a"] * 4 + ["b"] * 3, {"a": 30.0, "b": 70.0})
    y1 = np.array([80.0, 95.0, 60.0, 110.0, 40.0, 55.0, 35.0])
    y2 = y1 + np.array([10.0, 4.0, 12.0, 9.0, 3.0, 7.0, 5.0])
    m1 = y1 + np.array([5.0, -3.0, 2.0, -6.0, 1.0, 4.0, -2.0])
    return {"design": design, "y": {"1": y1, "2": y2}, "m": {"1": m1, "2": m1 + 6.0},
            "M": {"1": np.array([85.0, 45.0]), "2": np.array([93.0, 50.0])}}  # fmt: skip


def test_a_common_relative_error_r_gives_r_times_the_total_and_the_change(sample: dict) -> None:
    """Closed form: plot values and maps times (1 + r z_k) in both epochs give every
    estimator's total times (1 + r z_k): SD r |T| sd(z) for a stock and r |T2 - T1| sd(z)
    for the change (in t CO2e), not 0 and not r sqrt(T1^2 + T2^2)."""
    r, z = 0.03, np.array([-1.5, -0.4, 0.2, 0.9, 1.1])
    draws = [{e: v * (1 + r * zk) for e, v in sample["y"].items()} for zk in z]
    common = {"map_at_plots": sample["m"], "map_stratum_mean": sample["M"], "epochs": ("1", "2")}
    sd = systematic_sd(sample["design"], plot_value_draws=draws, map_scales=1 + r * z,
                       change_factor=44 / 12, **common)  # fmt: skip
    totals = sample_totals(sample["design"], plot_values=sample["y"], stock_unit="Mg C",
                           change_factor=44 / 12, change_unit="t CO2e", confidence=0.9,
                           **common)  # fmt: skip
    assert {(t.quantity, t.estimate.estimator) for t in totals} == set(sd)
    for t in totals:
        expected = r * abs(t.estimate.total) * np.std(z, ddof=1)
        assert sd[(t.quantity, t.estimate.estimator)] == pytest.approx(expected, rel=1e-9)
    plot_only = {t.quantity: t.estimate for t in totals if t.estimate.estimator == "stratified"}
    dt = (plot_only["stock_2"].total - plot_only["stock_1"].total) * 44 / 12
    change = plot_only["change_1_2"]
    assert change.total == pytest.approx(dt, rel=1e-9)  # all plots at both epochs
    assert sd[("change_1_2", "stratified")] == pytest.approx(r * abs(dt) * np.std(z, ddof=1))


def test_systematic_sd_needs_two_draws_and_a_scale_each(sample: dict) -> None:
    common = {"map_at_plots": sample["m"], "map_stratum_mean": sample["M"], "epochs": ("1", "2"),
              "change_factor": 1.0}  # fmt: skip
    with pytest.raises(SurveyError, match="at least 2 draws"):
        systematic_sd(sample["design"], plot_value_draws=[sample["y"]], map_scales=np.ones(1),
                      **common)  # fmt: skip
    with pytest.raises(SurveyError, match="one map scale per draw"):
        systematic_sd(sample["design"], plot_value_draws=[sample["y"]] * 3, map_scales=np.ones(2),
                      **common)  # fmt: skip


def test_the_combined_interval_adds_in_quadrature_with_the_sampling_t_quantile(
    sample: dict,
) -> None:
    totals = sample_totals(sample["design"], plot_values=sample["y"], map_at_plots=sample["m"],
                           map_stratum_mean=sample["M"], epochs=("1", "2"), stock_unit="Mg C",
                           change_factor=1.0, change_unit="Mg C", confidence=0.9)  # fmt: skip
    est = totals[0].estimate
    c = combine_systematic(est, 3.0 * est.se / 4.0)
    assert c.sd == pytest.approx(1.25 * est.se)  # a 3-4-5 triangle
    assert c.half_width == pytest.approx(t_quantile(0.9, est.df) * 1.25 * est.se)
    assert c.half_width > est.half_width
    assert (c.lower, c.upper) == pytest.approx((est.total - c.half_width, est.total + c.half_width))
    assert combine_systematic(est, 0.0).half_width == pytest.approx(est.half_width)
    with pytest.raises(SurveyError, match="non-negative"):
        combine_systematic(est, float("nan"))
