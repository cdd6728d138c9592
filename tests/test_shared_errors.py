"""The conversion factors' shared error (models.shared_errors, models.survey.totals.systematic_sd)
against closed forms and a tree-by-tree numpy reference."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from models.errors import PlotDataError, SurveyError
from models.shared_errors import (
    SharedDraws,
    _KahanSums,
    map_factor_shifts,
    shared_factor_shifts,
)
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


def _triangular_ppf(u: float, low: float, mode: float, high: float) -> float:
    """The inverse CDF of the triangular distribution, written out."""
    a, c, b = low, mode, high
    if u < (c - a) / (b - a):
        return float(a + np.sqrt(u * (b - a) * (c - a)))
    return float(b - np.sqrt((1 - u) * (b - a) * (b - c)))


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
            bgb = t.agb_kg * _triangular_ppf(u, a, c, b)
            carbon_kg = (t.agb_kg + bgb) * (cf + z * sd) - (t.agb_kg + t.bgb_kg) * cf
            expected.append(carbon_kg / 1000 / t.plot_area_ha)
        np.testing.assert_allclose(shifts.loc[(t.plot_id, t.epoch)], expected, rtol=1e-9)


def _mixed_trees() -> pd.DataFrame:
    """Three plots at two epochs, their trees interleaved in the table: Chinese fir (its own
    carbon fractions, BGB by the IPCC ratio), Schima superba (BGB by a root equation) and
    Moso bamboo (its own ratio row); plots below and above the 125 Mg/ha AGB class limit,
    and a tree that is not usable."""
    rng = np.random.default_rng(11)
    rows = []
    for plot, epoch, n, mean_agb_kg in [
        ("P1", "2019", 7, 300.0),
        ("P1", "2024", 5, 400.0),
        ("P2", "2019", 6, 2000.0),
        ("P2", "2024", 4, 100.0),
        ("P3", "2019", 9, 1500.0),
        ("P3", "2024", 3, 4000.0),
    ]:
        for i in range(n):
            species = ("Cunninghamia lanceolata", "Schima superba", "Phyllostachys edulis")[i % 3]
            agb = mean_agb_kg * rng.uniform(0.5, 1.5)
            ratio = np.nan if species == "Schima superba" else 0.25
            rows.append({"plot_id": plot, "epoch": epoch, "species": species,
                         "usable": not (plot == "P2" and i == 1), "plot_area_ha": AREA_HA,
                         "agb_kg": agb, "bgb_kg": agb * (0.3 if np.isnan(ratio) else ratio),
                         "root_shoot_ratio": ratio})  # fmt: skip
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def _tree_by_tree_shifts(trees: pd.DataFrame, draws: SharedDraws) -> pd.DataFrame:
    """The shifts summed tree by tree in a plain loop, with the rows of models/data read
    here: carbon' - carbon of each tree under each draw, per plot-epoch (exact sums)."""
    usable = trees[trees["usable"]]
    plot_agb = (
        (usable["agb_kg"] / 1000 / usable["plot_area_ha"])
        .groupby([usable["plot_id"], usable["epoch"]])
        .sum()
    )
    fir = {c: _data_row("carbon_fraction.csv", taxon="Cunninghamia lanceolata", component=c)
           for c in ("aboveground", "belowground")}  # fmt: skip
    bamboo = _data_row("carbon_fraction.csv", taxon="bamboo")
    cf_rows = {
        "Cunninghamia lanceolata": (fir["aboveground"], fir["belowground"]),
        "Schima superba": (BROADLEAF, BROADLEAF),
        "Phyllostachys edulis": (bamboo, bamboo),
    }
    bamboo_rs = _data_row("root_shoot.csv", taxon="Phyllostachys edulis")
    region_rs = {lo: _data_row("root_shoot.csv", level="region", agb_min_mg_ha=lo)
                 for lo in ("0", "125")}  # fmt: skip
    sums: dict[tuple[str, str], list[list[float]]] = {}
    for t in usable.itertuples():
        row_a, row_b = cf_rows[t.species]
        cf_a, sd_a = float(row_a["carbon_fraction"]), float(row_a["sd"])
        cf_b, sd_b = float(row_b["carbon_fraction"]), float(row_b["sd"])
        if t.species == "Phyllostachys edulis":
            rs = bamboo_rs
        else:
            rs = region_rs["0" if plot_agb[(t.plot_id, t.epoch)] < 125 else "125"]
        terms = sums.setdefault((t.plot_id, t.epoch), [[] for _ in range(draws.n_draws)])
        for k, (z, u) in enumerate(zip(draws.carbon_fraction_z, draws.root_shoot_u, strict=True)):
            bgb = t.bgb_kg
            if np.isfinite(t.root_shoot_ratio):
                bgb = t.agb_kg * _triangular_ppf(u, float(rs["low"]), float(rs["root_shoot_ratio"]),
                                                 float(rs["high"]))  # fmt: skip
            carbon_kg = t.agb_kg * (cf_a + z * sd_a) + bgb * (cf_b + z * sd_b)
            terms[k].append((carbon_kg - t.agb_kg * cf_a - t.bgb_kg * cf_b) / 1000 / AREA_HA)
    return pd.DataFrame({key: [math.fsum(v) for v in per_draw]
                         for key, per_draw in sorted(sums.items())}).T  # fmt: skip


@pytest.mark.parametrize("trees_per_block", [1, 3, 5, 40])
def test_block_sums_equal_a_tree_by_tree_reference_and_one_block_to_the_bit(
    trees_per_block: int,
) -> None:
    """Blocks of 1, 3 and 5 trees split plot-epochs of 3-9 trees; 40 takes them all."""
    trees = _mixed_trees()
    plot_agb = trees.groupby(["plot_id", "epoch"])["agb_kg"].sum() / 1000 / AREA_HA
    assert (plot_agb < 125).sum() == 3 and (plot_agb > 125).sum() == 3  # both IPCC classes
    draws = SharedDraws.draw(12, seed=4)
    shifts = shared_factor_shifts(trees, draws, chunk_values=trees_per_block * 12)
    reference = _tree_by_tree_shifts(trees, draws)
    assert shifts.index.tolist() == reference.index.tolist()
    assert len(reference) == 6
    np.testing.assert_allclose(shifts.to_numpy(), reference.to_numpy(), rtol=1e-12, atol=1e-12)
    one_block = shared_factor_shifts(trees, draws, chunk_values=10**6)
    assert np.array_equal(shifts.to_numpy(), one_block.to_numpy())


@pytest.mark.parametrize("rows_per_block", [1, 2, 7, 100])
def test_the_running_sums_are_compensated_in_row_order_and_leave_nan_out(
    rows_per_block: int,
) -> None:
    """1 + ten times 1e-16: a plain sum stays at 1, the compensated sum is the exact one
    (math.fsum); the same sums pandas' group sum makes of unsorted groups, which the shifts
    were summed with before they were taken in blocks."""
    values = np.array([[1.0], [5.0], *[[1e-16]] * 10, [np.nan], [2.0], [1e-16]])
    group = np.array([0, 1, *[0] * 10, 0, 1, 1])
    sums = _KahanSums(group, n_groups=2, n_draws=1)
    for start in range(0, len(group), rows_per_block):
        rows = slice(start, min(start + rows_per_block, len(group)))
        sums.add(rows, values[rows])
    assert sum([1.0] + [1e-16] * 10) == 1.0
    assert sums.sums[:, 0].tolist() == [math.fsum([1.0] + [1e-16] * 10), math.fsum([7.0, 1e-16])]
    pandas = pd.DataFrame(values).groupby(group).sum().to_numpy()
    assert np.array_equal(sums.sums, pandas)


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
