"""The repeated-sampling harness of ``benchmarks/estimator_sampling.py`` on a synthetic population.

Two rectangular strata of a 1 km x 1 km raster with independent cell values around known
stratum means, and a map = truth + noise: here the stratified estimator is unbiased and
its 90 % interval covers about 90 % of the time, so the harness must report that.
"""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from shapely.geometry import MultiPolygon, box

from benchmarks.estimator_sampling import (
    ESTIMATE_COLUMNS,
    Population,
    domain,
    draw_centres,
    exact_square_means,
    population,
    rule_rows,
    run_draws,
    score,
    square_means,
    verdict,
)

CRS = "EPSG:32650"
X0, Y0, RES, SIZE = 600_000.0, 2_940_000.0, 10.0, 100
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y0)


def synthetic_population(seed: int = 7) -> Population:
    rng = np.random.default_rng(seed)
    west = np.arange(SIZE) < SIZE // 2
    level = np.where(west, 80.0, 140.0)[None, :] * np.ones((SIZE, 1))
    truth = {
        "t0": level + rng.normal(0.0, 20.0, (SIZE, SIZE)),
        "t1": 1.1 * level + rng.normal(0.0, 20.0, (SIZE, SIZE)),
    }
    maps = {e: v + rng.normal(0.0, 10.0, v.shape) for e, v in truth.items()}
    half = SIZE * RES / 2
    frames = gpd.GeoDataFrame(
        {"stratum": ["west", "east"], "area_ha": [half * 2 * half / 1e4] * 2},
        geometry=[
            MultiPolygon([box(X0, Y0 - 2 * half, X0 + half, Y0)]),
            MultiPolygon([box(X0 + half, Y0 - 2 * half, X0 + 2 * half, Y0)]),
        ],
        crs=CRS,
    )
    return population(
        frames,
        {"west": 6, "east": 6},
        truth=truth,
        maps=maps,
        transform=TRANSFORM,
        crs=CRS,
        plot_area_ha=0.0667,
    )


def test_stratified_estimator_unbiased_with_nominal_coverage() -> None:
    pop = synthetic_population()
    draws = run_draws(
        pop,
        draws=200,
        rng=np.random.default_rng(3),
        plot_rel_sd=0.05,
        confidence=0.90,
        change_factor=1.0,
    )
    scores = score(draws.estimates, pop.true_totals(1.0)).set_index(["quantity", "rule"])
    for quantity in ("stock_t0", "stock_t1", "change_t0_t1"):
        s = scores.loc[(quantity, "stratified")]
        assert abs(s["bias_pct"]) <= 3 * s["bias_mcse_pct"], (quantity, s.to_dict())
        assert 82.0 <= s["coverage_pct"] <= 97.0, (quantity, s.to_dict())
    # the map is good: the model-assisted estimators need fewer plots
    assert scores.loc[("stock_t0", "difference"), "re_empirical"] > 1.5


def test_square_means_equal_exactextract() -> None:
    pop = synthetic_population()
    centres = draw_centres(
        np.random.default_rng(1),
        pop.strata[0],
        100,
        transform=pop.transform,
        half_side_m=pop.half_side_m,
    )
    values = pop.truth["t0"]
    fast = square_means(values, centres, transform=pop.transform, half_side_m=pop.half_side_m)
    exact = exact_square_means(
        values, centres, crs=CRS, transform=pop.transform, half_side_m=pop.half_side_m
    )
    # exactextract keeps coverage fractions in single precision
    np.testing.assert_allclose(fast, exact, rtol=1e-7)


def test_centres_keep_the_whole_square_inside_the_frame() -> None:
    pop = synthetic_population()
    s = pop.strata[1]
    centres = draw_centres(
        np.random.default_rng(2),
        s,
        2000,
        transform=pop.transform,
        half_side_m=pop.half_side_m,
    )
    x0, y0, x1, y1 = s.frame.bounds
    h = pop.half_side_m
    assert centres[:, 0].min() >= x0 + h and centres[:, 0].max() <= x1 - h
    assert centres[:, 1].min() >= y0 + h and centres[:, 1].max() <= y1 - h
    # uniform over the feasible rectangle: its mean is the rectangle's centre
    assert centres[:, 0].mean() == pytest.approx(
        (x0 + x1) / 2, abs=4 * (x1 - x0) / math.sqrt(12 * 2000)
    )


def test_verdict_reads_a_figure_at_its_monte_carlo_precision() -> None:
    """A bias of -3.2 % with a Monte Carlo SE of 2.9 % (seed 20261201's AOI change over 2,000
    draws) cannot tell "within 2 %" from "not": its 95 % interval runs from -8.9 to +2.5 %."""
    assert verdict(-3.16, 2.85, -2.0, 2.0) == "undecided at this many draws"
    assert verdict(0.13, 0.22, -2.0, 2.0) == "ok"  # -0.30 .. +0.56: inside
    assert verdict(-3.0, 0.4, -2.0, 2.0) == "FAILS"  # -3.78 .. -2.22: wholly outside
    assert verdict(89.3, 0.7, 86.0, 94.0) == "ok"
    assert verdict(4.9, 0.5, 0.0, 5.0) == "undecided at this many draws"  # 3.92 .. 5.88
    assert verdict(4.0, 0.4, 0.0, 5.0) == "ok"  # 3.22 .. 4.78


def test_the_domain_outside_another_frame_is_estimated_without_bias() -> None:
    # the part of both strata outside a "project" box over the north-west quarter and a
    # strip of the east: each draw's plots in the box count as 0 (about 3 and 0.6 of the 6
    # per stratum), and the difference and stratified estimates of the domain's stocks and
    # change are unbiased with about nominal coverage
    pop = synthetic_population()
    half = SIZE * RES / 2
    outside = box(X0, Y0 - half, X0 + 1.2 * half, Y0)
    frames = gpd.GeoDataFrame(
        {"stratum": [s.name for s in pop.strata]}, geometry=[s.frame for s in pop.strata], crs=CRS
    )
    part = domain(pop, frames, outside, crs=CRS)
    # the parts' true totals: 25 ha of the west's level (80) and 45 ha of the east's (140)
    assert part.truth_total["west"]["t0"] == pytest.approx(25.0 * 80.0, rel=0.01)
    assert part.truth_total["east"]["t0"] == pytest.approx(45.0 * 140.0, rel=0.01)
    draws = run_draws(
        pop, draws=300, rng=np.random.default_rng(5), plot_rel_sd=0.05, confidence=0.90,
        change_factor=1.0, part=part,
    )  # fmt: skip
    assert draws.domain_totals is not None and len(draws.domain_totals) == 300
    rows = [r for d, t in enumerate(draws.domain_totals) for r in rule_rows(d, t)]
    estimates = pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))
    scores = score(estimates, part.true_totals(1.0)).set_index(["quantity", "rule"])
    for quantity in ("stock_t0", "stock_t1", "change_t0_t1"):
        for rule in ("stratified", "difference"):
            s = scores.loc[(quantity, rule)]
            assert abs(s["bias_pct"]) <= 3 * s["bias_mcse_pct"], (quantity, rule, s.to_dict())
            assert 82.0 <= s["coverage_pct"] <= 97.0, (quantity, rule, s.to_dict())
    # against the whole population's totals the domain estimates are far off: they are of
    # the domain, not of the strata
    whole = pop.true_totals(1.0)["stock_t0"]
    assert scores.loc[("stock_t0", "difference"), "truth"] < 0.8 * whole


def test_a_stratum_wholly_inside_the_other_frame_has_no_part() -> None:
    pop = synthetic_population()
    half = SIZE * RES / 2
    frames = gpd.GeoDataFrame(
        {"stratum": [s.name for s in pop.strata]}, geometry=[s.frame for s in pop.strata], crs=CRS
    )
    part = domain(pop, frames, box(X0 - 10, Y0 - 2 * half - 10, X0 + half, Y0 + 10), crs=CRS)
    assert part.truth_total["west"] == {"t0": 0.0, "t1": 0.0}
    assert part.map_total["west"] == {"t0": 0.0, "t1": 0.0}
    assert part.truth_total["east"]["t0"] == pytest.approx(50.0 * 140.0, rel=0.01)
