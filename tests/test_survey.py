"""Tests of the survey estimators (models.survey) against published values and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import SurveyError
from models.survey.assisted import difference_estimate, greg_estimate, post_stratified_estimate
from models.survey.crossfit import fold_map_correction, fold_shares, systematic_cells
from models.survey.design import (
    StratifiedDesign,
    relative_efficiency,
    relative_half_width,
    t_quantile,
)
from models.survey.hybrid import hybrid_estimate
from models.survey.sample_size import ar_tool03_sample_size
from models.survey.stratified import stratified_change_estimate, stratified_estimate
from models.survey.totals import SampleTotal, independent_sum

# California Academic Performance Index 2000 of the stratified sample `apistrat` shipped with
# the R package survey (Lumley; data from the California Department of Education), column
# api00 by school type; copied from Survey.jl assets/apistrat.csv, identical to the R data.
APISTRAT_API00 = {
    "E": "840 516 531 501 720 805 778 731 592 669 497 638 534 705 761 771 751 474 832 559 765 "
    "744 865 782 745 892 619 616 703 509 806 759 740 642 565 726 863 765 893 398 539 776 580 "
    "503 724 476 529 870 746 836 756 423 588 606 632 651 553 676 861 588 597 884 819 542 509 "
    "493 893 709 596 609 671 720 669 650 836 542 578 814 777 719 617 856 723 609 676 668 421 "
    "667 631 845 631 696 714 788 667 568 847 679 477 521",
    "M": "496 505 409 609 867 685 647 745 694 676 870 500 679 552 559 650 565 443 774 668 581 "
    "878 753 528 678 535 667 534 648 551 485 765 743 403 695 551 467 669 773 780 693 635 660 "
    "733 657 606 522 601 819 627",
    "H": "467 522 455 509 681 666 582 641 510 527 681 724 525 712 680 784 743 593 518 770 721 "
    "713 816 641 667 610 618 717 610 868 678 418 712 784 472 764 646 585 556 600 599 706 409 "
    "635 477 710 453 546 646 624",
}
#: population number of schools per type (the `fpc` column of apistrat)
APISTRAT_N = {"E": 4421.0, "M": 1018.0, "H": 755.0}


def apistrat() -> tuple[StratifiedDesign, np.ndarray]:
    labels = [s for s, text in APISTRAT_API00.items() for _ in text.split()]
    y = np.array([float(v) for text in APISTRAT_API00.values() for v in text.split()])
    # schools as "hectares": total = sum N_h ybar_h, as svytotal computes it
    return StratifiedDesign.from_labels(labels, APISTRAT_N, units=APISTRAT_N), y


def test_stratified_reproduces_r_survey_apistrat() -> None:
    """svydesign(id=~1, strata=~stype, fpc=~fpc, data=apistrat): svymean/svytotal(~api00).

    R survey 4.5 values from Survey.jl test/r_reference/est_basic.csv (row strat_fpc); the
    survey package's ?api example prints the same mean 662.29, SE 9.4089.
    """
    design, y = apistrat()
    est = stratified_estimate(design, y, confidence=0.95)
    assert est.mean_per_ha == pytest.approx(662.287363577655, rel=1e-12)
    assert est.se / design.area_ha == pytest.approx(9.408940879434, rel=1e-10)
    assert est.total == pytest.approx(4102207.93, rel=1e-9)
    assert est.se == pytest.approx(58278.9798072143, rel=1e-10)
    assert est.df == 200 - 3
    assert est.half_width == pytest.approx(t_quantile(0.95, 197) * est.se)


def test_ar_tool14_worked_uncertainty_example() -> None:
    """AR-TOOL14 v04.2 p. 4-5: mean 45.328 t d.m./ha, n = 34, s = 12.776 -> t(0.10, 33) =
    1.692, half-width 3.707, U = 8.18 %."""
    rng = np.random.default_rng(14)
    z = rng.normal(size=34)
    y = 45.328 + 12.776 * (z - z.mean()) / z.std(ddof=1)
    design = StratifiedDesign.from_labels(["all"] * 34, {"all": 100.0})
    est = stratified_estimate(design, y)
    assert t_quantile(0.90, est.df) == pytest.approx(1.692, abs=5e-4)
    # the tool multiplies rounded intermediates (2.191 x 1.692); exact is 3.7081
    assert est.half_width / design.area_ha == pytest.approx(3.707, abs=2e-3)
    assert round(100 * relative_half_width(est), 2) == 8.18


def two_strata_sample(seed: int = 0) -> tuple[StratifiedDesign, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = ["young"] * 12 + ["old"] * 8
    m = np.concatenate([rng.uniform(40, 90, 12), rng.uniform(120, 200, 8)])
    y = 5.0 + 0.9 * m + rng.normal(0, 8, m.size)
    return StratifiedDesign.from_labels(labels, {"young": 600.0, "old": 250.0}), y, m


def test_stratified_mean_and_variance_by_hand() -> None:
    design, y, _ = two_strata_sample()
    est = stratified_estimate(design, y)
    w = np.array([600, 250]) / 850
    parts = [y[:12], y[12:]]
    mean = sum(wh * p.mean() for wh, p in zip(w, parts, strict=True))
    var = sum(wh**2 * p.var(ddof=1) / p.size for wh, p in zip(w, parts, strict=True))
    assert est.mean_per_ha == pytest.approx(mean)
    assert est.se == pytest.approx(850 * math.sqrt(var))
    assert est.total == pytest.approx(850 * mean)
    assert est.lower == pytest.approx(est.total - t_quantile(0.9, 18) * est.se)


def test_satterthwaite_df_between_smallest_and_pooled() -> None:
    design, y, _ = two_strata_sample()
    est = stratified_estimate(design, y, df="satterthwaite")
    assert 7 <= est.df <= 18
    single = StratifiedDesign.from_labels(["a"] * 9, {"a": 1.0})
    assert stratified_estimate(single, y[:9], df="satterthwaite").df == pytest.approx(8)


def test_change_from_remeasured_plots_is_estimate_of_differences() -> None:
    """AR-TOOL14 v04.2 section 6.2: eqs. (4)-(8) are eqs. (13)-(17) on d = b_t2 - b_t1."""
    design, y1, _ = two_strata_sample(1)
    y2 = y1 + np.linspace(2, 9, y1.size)
    change = stratified_change_estimate(design, y1, y2)
    direct = stratified_estimate(design, y2 - y1, quantity="change")
    assert change == direct
    assert change.quantity == "change"
    # a constant gain on every plot is known exactly
    exact = stratified_change_estimate(design, y1, y1 + 3.0)
    assert exact.mean_per_ha == pytest.approx(3.0)
    assert exact.se == pytest.approx(0.0, abs=1e-9)


def test_subset_keeps_stratum_areas() -> None:
    design, y1, _ = two_strata_sample(2)
    keep = np.ones(design.n_plots, dtype=bool)
    keep[[0, 13]] = False
    sub = design.subset(keep)
    assert sub.n_plots == 18 and sub.area_ha == design.area_ha
    assert stratified_estimate(sub, y1[keep]).n == 18


def test_difference_with_zero_map_equals_plot_only() -> None:
    design, y, _ = two_strata_sample(3)
    plot_only = stratified_estimate(design, y)
    diff = difference_estimate(design, y, np.zeros_like(y), [0.0, 0.0])
    assert diff.mean_per_ha == pytest.approx(plot_only.mean_per_ha)
    assert diff.se == pytest.approx(plot_only.se)
    assert diff.df == plot_only.df
    assert relative_efficiency(plot_only, diff) == pytest.approx(1.0)


def test_perfect_auxiliary_gives_zero_variance() -> None:
    design, _, m = two_strata_sample(4)
    map_mean = np.array([70.0, 150.0])
    diff = difference_estimate(design, m, m, map_mean)
    assert diff.mean_per_ha == pytest.approx(design.weights @ map_mean)
    assert diff.se == pytest.approx(0.0, abs=1e-9)
    y = 12.0 + 0.8 * m  # exact linear relation: GREG residuals vanish
    greg = greg_estimate(design, y, m, map_mean)
    assert greg.mean_per_ha == pytest.approx(design.weights @ (12.0 + 0.8 * map_mean))
    assert greg.se == pytest.approx(0.0, abs=1e-6)
    ratio = greg_estimate(design, 0.8 * m, m, map_mean, model="ratio")
    assert ratio.se == pytest.approx(0.0, abs=1e-6)


def test_greg_linear_is_the_regression_estimator() -> None:
    """Within a stratum GREG with y ~ a + b m is ybar + b (M - mbar), b the OLS slope
    (Cochran 1977 eq. 7.1), and its g-weights calibrate the sample to the map mean."""
    design, y, m = two_strata_sample(5)
    map_mean = np.array([66.0, 158.0])
    est = greg_estimate(design, y, m, map_mean)
    expected = 0.0
    for h, rows in enumerate([slice(0, 12), slice(12, 20)]):
        b = np.polyfit(m[rows], y[rows], 1)[0]
        expected += design.weights[h] * (y[rows].mean() + b * (map_mean[h] - m[rows].mean()))
    assert est.mean_per_ha == pytest.approx(expected)
    assert est.df == 20 - 4
    plot_only = stratified_estimate(design, y)
    assert relative_efficiency(plot_only, est) > 5  # the map explains most of the variance


def test_ratio_model_is_the_separate_ratio_estimator() -> None:
    design, y, m = two_strata_sample(6)
    map_mean = np.array([66.0, 158.0])
    est = greg_estimate(design, y, m, map_mean, model="ratio")
    parts = [slice(0, 12), slice(12, 20)]
    expected = sum(
        design.weights[h] * y[r].sum() / m[r].sum() * map_mean[h] for h, r in enumerate(parts)
    )
    assert est.mean_per_ha == pytest.approx(expected)


def test_post_stratification_with_post_strata_equal_to_strata() -> None:
    """Post-stratifying a single-stratum sample by the true strata with their known shares
    gives the stratified mean; its g-weighted variance is the stratified one times
    n (n_g - 1) / (n_g (n - 1)) per post-stratum (Särndal et al. 1992 §7.6)."""
    design, y, _ = two_strata_sample(7)
    stratified = stratified_estimate(design, y)
    single = StratifiedDesign.from_labels(["all"] * 20, {"all": design.area_ha})
    post = post_stratified_estimate(single, y, design.plot_stratum, design.weights)
    assert post.mean_per_ha == pytest.approx(stratified.mean_per_ha)
    n_g = design.plots_per_stratum
    parts = [y[:12], y[12:]]
    var = sum(
        w**2 * p.var(ddof=1) / k * 20 * (k - 1) / (k * 19)
        for w, p, k in zip(design.weights, parts, n_g, strict=True)
    )
    assert post.se == pytest.approx(design.area_ha * math.sqrt(var))


def test_assisted_change_uses_map_difference() -> None:
    design, y1, m1 = two_strata_sample(8)
    m2 = m1 + 4.0
    y2 = y1 + 4.0 + np.random.default_rng(8).normal(0, 0.5, y1.size)
    est = difference_estimate(design, y2 - y1, m2 - m1, [4.0, 4.0], quantity="change")
    assert est.quantity == "change"
    assert est.mean_per_ha == pytest.approx(4.0, abs=0.5)
    with pytest.raises(ValueError, match="positive map values"):
        greg_estimate(design, y2 - y1, m2 - m1 - 4.0, [0.0, 0.0], model="ratio")


def test_repeated_sampling_unbiased_with_nominal_coverage() -> None:
    """Stratified SRSWOR from a synthetic population, 400 seeded draws: stratified and
    difference estimators are unbiased within Monte Carlo error and their 90 % intervals
    cover the true total about 90 % of the time."""
    rng = np.random.default_rng(2024)
    sizes = np.array([900, 500, 300])
    m_pop = [rng.gamma(4.0, 15.0 * (h + 1), n) for h, n in enumerate(sizes)]
    y_pop = [np.maximum(0.0, 10 + 0.85 * m + rng.normal(0, 12, m.size)) for m in m_pop]
    true_total = sum(y.sum() for y in y_pop)  # unit = 1 ha, so the area is the unit count
    n_h = np.array([15, 10, 8])
    names = ["a", "b", "c"]
    labels = [s for s, k in zip(names, n_h, strict=True) for _ in range(k)]
    design = StratifiedDesign.from_labels(
        labels,
        dict(zip(names, sizes * 1.0, strict=True)),
        units=dict(zip(names, sizes, strict=True)),
    )
    map_mean = np.array([m.mean() for m in m_pop])
    results: dict[str, list[tuple[float, bool]]] = {"stratified": [], "difference": []}
    for _ in range(400):
        picks = [rng.choice(n, k, replace=False) for n, k in zip(sizes, n_h, strict=True)]
        y = np.concatenate([yp[i] for yp, i in zip(y_pop, picks, strict=True)])
        m = np.concatenate([mp[i] for mp, i in zip(m_pop, picks, strict=True)])
        for est in (stratified_estimate(design, y), difference_estimate(design, y, m, map_mean)):
            results[est.estimator].append((est.total, est.lower <= true_total <= est.upper))
    for name, runs in results.items():
        totals = np.array([t for t, _ in runs])
        mc_se = totals.std(ddof=1) / math.sqrt(totals.size)
        assert abs(totals.mean() - true_total) < 3.5 * mc_se, name
        coverage = np.mean([covered for _, covered in runs])
        assert 0.85 <= coverage <= 0.95, (name, coverage)


def test_hybrid_variance_components() -> None:
    rng = np.random.default_rng(16)
    h_plot = rng.uniform(5, 30, 40)
    x_plots = np.column_stack([np.ones(40), h_plot])
    y_plots = 3.0 + 6.0 * h_plot + rng.normal(0, 10, 40)
    x_lidar = np.column_stack([np.ones(25), rng.uniform(5, 30, 25)])
    est = hybrid_estimate(x_plots, y_plots, x_lidar, area_ha=2000.0)
    beta, *_ = np.linalg.lstsq(x_plots, y_plots, rcond=None)
    resid = y_plots - x_plots @ beta
    cov = resid @ resid / 38 * np.linalg.inv(x_plots.T @ x_plots)
    pred = x_lidar @ beta
    g = x_lidar.mean(axis=0)
    var = pred.var(ddof=1) / 25 + g @ cov @ g
    assert est.mean_per_ha == pytest.approx(pred.mean())
    assert est.se == pytest.approx(2000.0 * math.sqrt(var))
    assert min(24, 38) <= est.df <= 24 + 38
    # a LiDAR census (f = 1) leaves only the model-parameter variance
    census = hybrid_estimate(x_plots, y_plots, x_lidar, area_ha=2000.0, lidar_population_units=25)
    assert census.se == pytest.approx(2000.0 * math.sqrt(g @ cov @ g))
    assert census.df == pytest.approx(38)


# Winrock Sample Plot Calculator (Walker, Pearson & Brown 2014) worked example as pinned by
# the recreation github.com/mahardhitama/sample-plot-calculator (tests/calculator.test.js):
# 3 strata of 3400/900/700 ha, means 126.8/85/102.2 t/ha, CV 20.7/18.42/8.02 %, 0.25 ha plots.
WINROCK_AREA = [3400.0, 900.0, 700.0]
WINROCK_MEAN = np.array([126.8, 85.0, 102.2])
WINROCK_SD = WINROCK_MEAN * np.array([20.7, 18.42, 8.02]) / 100


@pytest.mark.parametrize(
    ("confidence", "df", "t_table", "n_required"),
    [(0.95, 12, 2.179, 16.84), (0.90, 8, 1.86, 12.27)],
)
def test_ar_tool03_reproduces_winrock_example(
    confidence: float, df: int, t_table: float, n_required: float
) -> None:
    plan = ar_tool03_sample_size(
        WINROCK_AREA, WINROCK_SD, WINROCK_MEAN, confidence=confidence, plot_area_ha=0.25
    )
    assert plan.df == df
    assert plan.t_value == pytest.approx(t_table, abs=1e-3)
    assert plan.n_required == pytest.approx(n_required, abs=0.05)
    share = np.array(WINROCK_AREA) * WINROCK_SD
    np.testing.assert_allclose(plan.allocation, plan.n_required * share / share.sum())
    assert plan.n_plots >= math.ceil(plan.n_required)


@pytest.mark.parametrize("plot_area_ha", [None, 0.05, 2.0])
def test_ar_tool03_n_reaches_target_and_one_fewer_does_not(plot_area_ha: float | None) -> None:
    """Brute force: with the plan's t, the optimum allocation of ceil(n) plots meets the
    allowable error and of ceil(n) - 1 plots does not."""
    area = np.array([500.0, 300.0, 200.0])
    sd = np.array([60.0, 25.0, 40.0])
    mean = np.array([150.0, 90.0, 120.0])
    plan = ar_tool03_sample_size(area, sd, mean, plot_area_ha=plot_area_ha)
    w = area / area.sum()
    big_n = math.inf if plot_area_ha is None else area.sum() / plot_area_ha

    def half_width(n: int) -> float:
        n_i = n * w * sd / (w * sd).sum()
        var = (w**2 * sd**2 / n_i).sum() - (w * sd**2).sum() / big_n
        return plan.t_value * math.sqrt(var)

    n = math.ceil(plan.n_required)
    assert half_width(n) <= plan.allowable_error < half_width(n - 1)
    assert plan.allowable_error == pytest.approx(0.1 * w @ mean)


def test_ar_tool03_cost_allocation() -> None:
    """Cochran (1977) §5.5: n_i proportional to w_i s_i / sqrt(c_i)."""
    area, sd, mean = [400.0, 600.0], [40.0, 40.0], [100.0, 100.0]
    plan = ar_tool03_sample_size(area, sd, mean, cost=[1.0, 4.0])
    assert plan.allocation[0] / plan.allocation[1] == pytest.approx((0.4 / 1) / (0.6 / 2))
    equal = ar_tool03_sample_size(area, sd, mean)
    assert equal.allocation[0] / equal.allocation[1] == pytest.approx(0.4 / 0.6)
    assert equal.df == math.inf  # n >= 30: no second iteration
    assert (ar_tool03_sample_size([1.0, 1.0], [0.0, 0.0], [5.0, 5.0]).plots == 2).all()


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="stratum 'b' has 1 plot"):
        StratifiedDesign.from_labels(["a", "a", "b"], {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"plots in strata \['c'\]"):
        StratifiedDesign.from_labels(["a", "a", "c"], {"a": 1.0})
    design, y, _ = two_strata_sample(9)
    with pytest.raises(ValueError, match=r"post-stratum 1 .* no plots"):
        post_stratified_estimate(design, y, np.zeros(20, dtype=int), [[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(ValueError, match="one value per plot"):
        stratified_estimate(design, y[:5])
    with pytest.raises(ValueError, match="map_mean must have one finite value per stratum"):
        difference_estimate(design, y, y, [1.0])
    with pytest.raises(ValueError, match="confidence must be in"):
        stratified_estimate(design, y, confidence=90)


def _fold_population() -> dict:
    """Two strata of a 40 x 60 grid of 0.01 ha cells (west: columns < 20, east: the rest),
    a full map and three fold maps, each fold map the full map plus a constant per stratum
    and fold and a zero-mean pattern that a grid of spacing 2 samples exactly."""
    rng = np.random.default_rng(11)
    rows, cols = 40, 60
    full = rng.uniform(20, 200, (rows, cols))
    offset = np.array([[3.0, -1.0, 5.0], [-2.0, 4.0, 0.5]])  # (stratum, fold)
    stratum = np.where(np.arange(cols) < 20, 0, 1)[None, :].repeat(rows, axis=0)
    checker = np.where((np.add.outer(np.arange(rows), np.arange(cols)) % 2) == 0, 1.0, -1.0)
    folds = np.stack([full + offset[stratum, k] for k in range(3)], axis=-1)
    folds[..., 1] += 7.0 * checker  # averages to 0 over each stratum and each 2 x 2 block
    design = StratifiedDesign.from_labels(
        ["w"] * 5 + ["e"] * 8, {"w": rows * 20 * 0.01, "e": rows * 40 * 0.01}
    )
    # plots of the west: folds 0, 0, 1, 2, none; of the east: 0, 1, 1, 1, 2, 2, 2, 2
    plot_fold = np.array([0, 0, 1, 2, -1, 0, 1, 1, 1, 2, 2, 2, 2])
    return {"full": full, "folds": folds, "stratum": stratum, "offset": offset,
            "design": design, "plot_fold": plot_fold}  # fmt: skip


def test_fold_map_correction_is_the_share_weighted_fold_offset() -> None:
    """Eq. (2) in closed form: the fold maps differ from the map by a constant per stratum
    and fold (the checker pattern averages out), so c_h = sum_k (n_hk / n_h) offset_hk, as
    a census (probability 1) gives it; a systematic grid of spacing 2 (probability 1/4)
    sees one sign of the pattern, and its four random starts average to the same."""
    p = _fold_population()
    design = p["design"]
    shares = np.array([[2 / 5, 1 / 5, 1 / 5], [1 / 8, 3 / 8, 4 / 8]])
    np.testing.assert_allclose(fold_shares(design, p["plot_fold"], 3), shares)
    expected = (shares * p["offset"]).sum(axis=1)
    shift = (p["folds"] - p["full"][..., None]).reshape(-1, 3)
    census = fold_map_correction(
        design, p["plot_fold"], cell_stratum=p["stratum"].reshape(-1), cell_shift=shift,
        cell_ha=0.01, inclusion_probability=1.0,
    )  # fmt: skip
    np.testing.assert_allclose(census.mean_per_ha, expected, rtol=1e-12)
    np.testing.assert_array_equal(census.se_per_ha, 0.0)  # a census has no sampling error
    # a systematic grid of spacing 2: each start samples one sign of the checker pattern,
    # so one start is off by +-7 x the fold-1 share; the four starts average to the truth
    starts = []
    for r0 in (0, 1):
        for c0 in (0, 1):
            cells = np.zeros(p["full"].shape, dtype=bool)
            cells[r0::2, c0::2] = True
            sub = fold_map_correction(
                design, p["plot_fold"], cell_stratum=p["stratum"][cells],
                cell_shift=(p["folds"] - p["full"][..., None])[cells], cell_ha=0.01,
                inclusion_probability=0.25,
            )  # fmt: skip
            sign = 1.0 if (r0 + c0) % 2 == 0 else -1.0
            np.testing.assert_allclose(
                sub.mean_per_ha, expected + sign * 7.0 * shares[:, 1], rtol=1e-12
            )
            # eq. (4) by hand: (1 - pi) sum (a D / pi)^2 / A^2 per stratum
            d = ((p["folds"] - p["full"][..., None])[cells] * shares[p["stratum"][cells]]).sum(1)
            h = p["stratum"][cells]
            var = [
                0.75 * np.sum((0.01 * d[h == s] / 0.25) ** 2) / design.stratum_area_ha[s] ** 2
                for s in (0, 1)
            ]
            np.testing.assert_allclose(sub.se_per_ha, np.sqrt(var), rtol=1e-12)
            starts.append(sub.mean_per_ha)
    np.testing.assert_allclose(np.mean(starts, axis=0), expected, rtol=1e-12)


def test_fold_maps_equal_to_the_map_need_no_correction() -> None:
    p = _fold_population()
    out = fold_map_correction(
        p["design"], p["plot_fold"], cell_stratum=p["stratum"].reshape(-1),
        cell_shift=np.zeros((p["full"].size, 3)), cell_ha=0.01, inclusion_probability=0.1,
    )  # fmt: skip
    assert (out.mean_per_ha == 0.0).all() and (out.se_per_ha == 0.0).all()


def test_fold_map_correction_refuses_folds_beyond_the_fold_maps() -> None:
    p = _fold_population()
    with pytest.raises(SurveyError, match="plot_fold must be in"):
        fold_map_correction(
            p["design"], p["plot_fold"] + 1, cell_stratum=p["stratum"].reshape(-1),
            cell_shift=np.zeros((p["full"].size, 3)), cell_ha=0.01, inclusion_probability=1.0,
        )  # fmt: skip


def test_systematic_cells_take_about_the_target_with_a_seeded_start() -> None:
    rows, cols, pi = systematic_cells(target_cells=1000, candidates=100 * 100, seed=3)
    assert rows.step == cols.step == 3 and pi == pytest.approx(1 / 9)
    assert 0 <= rows.start < 3 and 0 <= cols.start < 3
    grid = np.zeros((100, 100))
    grid[rows, cols] = 1
    assert grid.sum() == pytest.approx(100 * 100 * pi, rel=0.1)
    assert systematic_cells(target_cells=1000, candidates=100 * 100, seed=3) == (rows, cols, pi)
    assert systematic_cells(target_cells=10**6, candidates=100, seed=3)[2] == 1.0


def test_independent_samples_of_disjoint_parts_add_as_strata() -> None:
    """Two independent single-stratum samples of disjoint parts, summed, are the stratified
    estimate of the union with the parts as strata (Cochran 1977 §5.2), with Satterthwaite's
    degrees of freedom (§5.4)."""
    design, y, _ = two_strata_sample()
    whole = stratified_estimate(design, y, df="satterthwaite")
    parts = []
    for label, area, values in (("a", 600.0, y[:12]), ("b", 250.0, y[12:])):
        one = StratifiedDesign.from_labels([label] * values.size, {label: area})
        est = stratified_estimate(one, values)
        parts.append([SampleTotal("stock_2019", "Mg C", est, math.nan, 1000.0 * area)])
    (summed,) = independent_sum(parts, area_ha=850.0)
    assert summed.estimate.total == pytest.approx(whole.total, rel=1e-12)
    assert summed.estimate.se == pytest.approx(whole.se, rel=1e-12)
    assert summed.estimate.df == pytest.approx(whole.df, rel=1e-12)
    assert summed.estimate.half_width == pytest.approx(whole.half_width, rel=1e-12)
    assert summed.estimate.mean_per_ha == pytest.approx(whole.mean_per_ha, rel=1e-12)
    assert summed.estimate.n == y.size
    assert summed.map_total == pytest.approx(850_000.0)
    assert summed.relative_efficiency == pytest.approx(1.0)  # plot-only against itself
    # a (quantity, estimator) missing from one part is missing from the sum
    other = SampleTotal("stock_2024", "Mg C", whole, 1.0, 0.0)
    assert independent_sum([[*parts[0], other], parts[1]], area_ha=850.0) == [summed]
    with pytest.raises(SurveyError, match="positive area"):
        independent_sum(parts, area_ha=0.0)
