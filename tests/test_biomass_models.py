"""Biomass models: closed-form checks, spatial CV against known truth, calibration."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from synthetic_landscape import make_landscape, pixel_table, sample_plots

from models.biomass import (
    SOURCE_LIDAR,
    SOURCE_SATELLITE_PLOTS,
    SOURCE_SATELLITE_UPSCALED,
    Auxiliary,
    BiomassMapper,
    CellSupport,
    ConformalCalibration,
    LogLinearRidge,
    ModelSettings,
    PowerLawABA,
    Prediction,
    accuracy,
    blocked_folds,
    calibrate_conformal,
    calibration_record,
    cross_fitted_at_plots,
    epoch_corrections,
    epoch_error_correlation,
    fold_map_values,
    granularity_cell_support,
    make_model,
    plot_random_folds,
    select_and_fit,
    spatial_block_ids,
    thinned_sample,
    training_set,
)
from models.biomass.uncertainty import _conformal_quantile, min_scores_per_bin
from models.errors import ModelDomainError
from models.plot_biomass import stem_granularity_m2

SAT_FEATURES = ["ndvi", "nbr", "elevation", "slope_deg"]
FAST = ModelSettings(
    candidates=("random_forest", "gradient_boosting"),
    cv_block_m=750.0,
    rf_n_estimators=100,
    gb_max_iter=100,
)
#: one small candidate, where the test is about what is done with a fit, not which wins
ONE = replace(FAST, candidates=("gradient_boosting",), gb_max_iter=50)


def test_powerlaw_recovers_coefficients_without_noise() -> None:
    rng = np.random.default_rng(0)
    h = rng.uniform(3, 35, 50)
    c = rng.uniform(0.2, 1.0, 50)
    x = pd.DataFrame({"h_mean": h, "cover_2m": c})
    model = PowerLawABA().fit(x, 2.5 * h**1.3 * c**0.8)
    d = model.describe()
    assert (d["a"], d["b"], d["c"]) == pytest.approx((2.5, 1.3, 0.8), rel=1e-9)
    assert d["bias_correction"] == pytest.approx(1.0, abs=1e-12)


def test_powerlaw_baskerville_correction_removes_back_transformation_bias() -> None:
    # log-normal errors with sigma 0.3: the naive back-transform is low by exp(0.045)
    rng = np.random.default_rng(1)
    n = 20000
    h = rng.uniform(3, 35, n)
    c = rng.uniform(0.2, 1.0, n)
    y = 2.5 * h**1.3 * c**0.8 * np.exp(rng.normal(0.0, 0.3, n))
    x = pd.DataFrame({"h_mean": h, "cover_2m": c})
    model = PowerLawABA().fit(x, y)
    assert model.describe()["bias_correction"] == pytest.approx(math.exp(0.3**2 / 2), rel=2e-3)
    pred = model.predict(x)
    assert pred.mean() == pytest.approx(y.mean(), rel=0.01)
    naive = pred / model.describe()["bias_correction"]
    assert naive.mean() < 0.97 * y.mean()


def test_powerlaw_gives_zero_at_zero_height_and_nan_for_missing() -> None:
    rng = np.random.default_rng(2)
    x = pd.DataFrame({"h_mean": rng.uniform(3, 30, 20), "cover_2m": rng.uniform(0.3, 1, 20)})
    model = PowerLawABA().fit(x, 3 * x["h_mean"].to_numpy() ** 1.2)
    out = model.predict(pd.DataFrame({"h_mean": [0.0, np.nan], "cover_2m": [0.5, 0.5]}))
    assert out[0] == 0.0 and np.isnan(out[1])


def test_log_linear_recovers_coefficients_and_duan_smearing_unbiases_the_mean() -> None:
    # log(1 + AGB) = 3 + 0.5 x1 - 0.2 x2 + e, with a skewed e (centred exponential / 2):
    # Duan's smearing factor is E[exp(e)] = exp(-0.5) / (1 - 0.5) = 1.2131, where the
    # normal-theory factor exp(var / 2) would give exp(0.125) = 1.133
    rng = np.random.default_rng(3)
    n = 40000
    x = pd.DataFrame({"x1": rng.normal(2.0, 1.5, n), "x2": rng.uniform(0.0, 4.0, n)})
    e = 0.5 * (rng.exponential(1.0, n) - 1.0)
    y = np.exp(3.0 + 0.5 * x["x1"] - 0.2 * x["x2"] + e) - 1.0
    model = LogLinearRidge(("x1", "x2"), alpha=1e-6).fit(x, y.to_numpy())
    d = model.describe()
    # coefficients are per standard deviation of the predictor
    assert d["coefficients"]["x1"] / x["x1"].std(ddof=0) == pytest.approx(0.5, abs=0.01)
    assert d["coefficients"]["x2"] / x["x2"].std(ddof=0) == pytest.approx(-0.2, abs=0.01)
    assert d["smearing_factor"] == pytest.approx(math.exp(-0.5) / 0.5, rel=0.01)
    assert model.predict(x).mean() == pytest.approx(y.mean(), rel=0.01)


def test_log_linear_clips_predictors_to_the_training_range_and_skips_missing() -> None:
    rng = np.random.default_rng(4)
    x = pd.DataFrame({"ndvi": rng.uniform(0.5, 0.9, 60)})
    y = np.exp(1.0 + 4.0 * x["ndvi"].to_numpy()) - 1.0
    model = LogLinearRidge(("ndvi",), alpha=1e-6).fit(x, y)
    far, top, gap = model.predict(pd.DataFrame({"ndvi": [5.0, x["ndvi"].max(), np.nan]}))
    assert far == pytest.approx(top, rel=1e-12) and np.isnan(gap)
    assert top == pytest.approx(y.max(), rel=1e-6)
    with pytest.raises(ModelDomainError, match="at least 3"):
        LogLinearRidge(("ndvi",)).fit(x.iloc[:2], y[:2])


def test_plot_random_folds_keep_a_plots_epochs_together_and_are_seeded() -> None:
    # 23 plots, measured at two epochs (rows 23..45 repeat rows 0..22's places)
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 5000, 23), rng.uniform(0, 5000, 23)
    folds = plot_random_folds(np.tile(x, 2), np.tile(y, 2), n_folds=5, seed=7)
    np.testing.assert_array_equal(folds[:23], folds[23:])
    # whole plots dealt round the folds: sizes 5, 5, 5, 4, 4 plots
    assert sorted(np.bincount(folds[:23]).tolist()) == [4, 4, 5, 5, 5]
    again = plot_random_folds(np.tile(x, 2), np.tile(y, 2), n_folds=5, seed=7)
    np.testing.assert_array_equal(folds, again)
    other = plot_random_folds(np.tile(x, 2), np.tile(y, 2), n_folds=5, seed=8)
    assert (folds != other).any()


def test_blocked_folds_keep_blocks_whole_and_are_seeded() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 5000, 300), rng.uniform(0, 5000, 300)
    folds = blocked_folds(x, y, block_m=1000, n_folds=5, seed=11)
    blocks = spatial_block_ids(x, y, block_m=1000)
    for b in np.unique(blocks):
        assert len(np.unique(folds[blocks == b])) == 1
    assert set(folds) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(folds, blocked_folds(x, y, block_m=1000, n_folds=5, seed=11))
    with pytest.raises(ModelDomainError, match=r"lower model\.cv_block_m"):
        blocked_folds(x, y, block_m=1e6, n_folds=5, seed=11)


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 20.0)  # n = 19: ceil(20 * 0.9) = 18th smallest
    assert _conformal_quantile(scores, 0.9) == 18.0
    assert _conformal_quantile(scores, 0.99) == 19.0


def test_calibration_of_heteroscedastic_errors_covers_new_data() -> None:
    rng = np.random.default_rng(4)
    pred = rng.uniform(20, 300, 4000)
    obs = pred + rng.normal(0, 5 + 0.15 * pred)
    cal = calibrate_conformal(obs[:2000], pred[:2000], interval=0.9)
    assert cal.s1 > 0  # learned that errors grow with biomass
    new = cal.apply(pred[2000:])
    inside = (obs[2000:] >= new.lower) & (obs[2000:] <= new.upper)
    assert 0.88 <= inside.mean() <= 0.92
    # SD tracks the true error SD 5 + 0.15 pred
    true_sd = 5 + 0.15 * pred[2000:]
    assert np.median(new.sd / true_sd) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("interval", [0.5, 0.8, 0.9, 0.95])
def test_fewest_scores_per_bin_keep_a_score_beyond_each_tail_quantile(interval: float) -> None:
    # with l = (1 + interval) / 2, ceil((n + 1) l) <= n - 1 from n = (1 + l) / (1 - l) on:
    # 7, 19, 39, 79 for these intervals (in fractions, so that no rounding decides)
    level = (1 + Fraction(interval).limit_denominator(100)) / 2
    n = math.ceil((1 + level) / (1 - level))
    assert min_scores_per_bin(interval) == n
    # with n scores a tail's conformal quantile is not the largest; with n - 1 it is
    assert _conformal_quantile(np.arange(1.0, n + 1), float(level)) < n
    assert _conformal_quantile(np.arange(1.0, n), float(level)) == n - 1


def test_mondrian_calibration_covers_each_bin_whatever_the_populations_mix() -> None:
    # errors a straight line through the absolute residuals misfits: SD 20 Mg/ha below
    # 60 Mg/ha (young and sparse stands), 0.1 pred above; 15 % of the plots are low
    rng = np.random.default_rng(11)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        low = rng.uniform(size=n) < 0.15
        pred = np.where(low, rng.uniform(5, 60, n), rng.uniform(60, 350, n))
        # AGB is never negative (the intervals are clipped at zero)
        return pred, np.clip(pred + rng.normal(0, np.where(low, 20.0, 0.1 * pred)), 0, None)

    new_pred, new_obs = draw(40_000)  # the map's cells
    # conformal coverage holds on average over calibration samples: 200 of 400 plots
    covered: dict[str, list[float]] = {"lowest bin": [], "other bins": [], "one bin": []}
    for _ in range(200):
        pred, obs = draw(400)
        cal = calibrate_conformal(obs, pred, interval=0.9)
        assert len(cal.k_sd) == len(cal.edges) + 1 == 400 // 39
        assert min(cal.n_per_bin) >= 39 and sum(cal.n_per_bin) == 400
        out = cal.apply(new_pred)
        inside = (new_obs >= out.lower) & (new_obs <= out.upper)
        lowest = new_pred < cal.edges[0]
        covered["lowest bin"].append(inside[lowest].mean())
        covered["other bins"].append(inside[~lowest].mean())
        # one set of quantiles for all scores (the former calibration)
        z = (obs - pred) / cal.sigma(pred)
        one = replace(
            cal,
            edges=(),
            k_sd=(1.0,),
            q_lo=(-_conformal_quantile(-z, 0.95),),
            q_hi=(_conformal_quantile(z, 0.95),),
        ).apply(new_pred)
        covered["one bin"].append(((new_obs >= one.lower) & (new_obs <= one.upper))[lowest].mean())
    mean = {k: float(np.mean(v)) for k, v in covered.items()}
    # per bin at least nominal, at most nominal + 2 / (n_bin + 1) (Lei et al. 2018, Thm 2.2)
    assert 0.89 <= mean["lowest bin"] <= 0.95
    assert 0.89 <= mean["other bins"] <= 0.95
    # a map with more low cells than the plots is under-covered by one set of quantiles
    assert mean["one bin"] < 0.8
    # the SD is the root mean square error within each bin (true SD 20 Mg/ha below 60)
    low = new_pred < min(60.0, cal.edges[0])
    assert np.sqrt(np.mean(out.sd[low] ** 2)) == pytest.approx(20.0, rel=0.3)


def test_calibration_pools_independent_residuals_like_a_numpy_reference() -> None:
    # 80 held-out residuals of a model and 300 of the final map at independent plots,
    # whose errors are twice as large: the pooled calibration is the textbook one on
    # the 380 scores, written here with numpy alone
    rng = np.random.default_rng(5)
    p_cv, p_ind = rng.uniform(20, 300, 80), rng.uniform(20, 300, 300)
    o_cv = p_cv + rng.normal(0, 0.1 * p_cv)
    o_ind = p_ind + rng.normal(0, 0.2 * p_ind)
    cal, record = calibration_record(o_cv, p_cv, interval=0.9, independent=(o_ind, p_ind))
    o, p = np.concatenate([o_cv, o_ind]), np.concatenate([p_cv, p_ind])
    r = o - p
    s1, s0 = np.polyfit(p, np.abs(r), 1)
    sigma = np.maximum(s0 + s1 * p, 0.1 * np.abs(r).mean())
    z = r / sigma
    # bins: the most quantile bins of the predictions that keep 39 scores in each
    n_bins = max(
        k
        for k in range(1, 380 // 39 + 1)
        if np.all(
            np.bincount(np.digitize(p, np.quantile(p, np.linspace(0, 1, k + 1)[1:-1])), minlength=k)
            >= 39
        )
    )
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])
    assert np.allclose(cal.edges, edges)
    b = np.digitize(p, edges)
    for i in range(n_bins):
        zb = np.sort(z[b == i])
        rank = int(np.ceil((zb.size + 1) * 0.95)) - 1
        assert cal.k_sd[i] == pytest.approx(np.sqrt(np.mean(zb**2)))
        assert cal.q_hi[i] == pytest.approx(zb[rank])
        assert cal.q_lo[i] == pytest.approx(-np.sort(-zb)[rank])
    assert record["n_held_out"] == 80 and record["n_independent"] == 300
    assert record["n_calibration"] == 380
    out = cal.apply(p_ind)
    inside = (o_ind >= out.lower) & (o_ind <= out.upper)
    assert record["independent_coverage"] == pytest.approx(inside.mean())
    # without the independent set: the held-out residuals alone, as before
    alone, rec = calibration_record(o_cv, p_cv, interval=0.9)
    assert alone == calibrate_conformal(o_cv, p_cv, interval=0.9)
    assert "n_independent" not in rec and alone.n == 80


def test_auxiliary_samples_share_the_folds_of_their_blocks_and_their_weight() -> None:
    plots_x, plots_y = np.array([50.0, 150.0, 250.0]), np.array([50.0, 50.0, 50.0])
    folds = np.array([0, 1, 2])
    aux = Auxiliary(
        table=pd.DataFrame({"f": [1.0, 2.0, 3.0, 4.0]}),
        agb_mg_ha=np.array([10.0, 20.0, 30.0, 40.0]),
        x_m=np.array([60.0, 160.0, 99.0, 950.0]),
        y_m=np.array([40.0, 90.0, 10.0, 50.0]),
        share=0.5,
    )
    # blocks of 100 m: the first and third sample share the first plot's block, the last
    # lies in a block without plots (always trained)
    assert aux.folds(plots_x, plots_y, folds, block_m=100.0).tolist() == [0, 1, 0, -1]
    x = pd.DataFrame({"f": [7.0, 8.0, 9.0]})
    tx, ty, tw = training_set(
        x, np.array([1.0, 2.0, 3.0]), np.array([True, True, False]), aux, np.ones(4, bool)
    )
    assert ty.tolist() == [1.0, 2.0, 10.0, 20.0, 30.0, 40.0]
    assert tw is not None and tw[:2].tolist() == [1.0, 1.0]
    assert tw[2:].sum() == pytest.approx(2.0)  # share 0.5: as heavy as the two plots
    alone = Auxiliary(aux.table, aux.agb_mg_ha, aux.x_m, aux.y_m, share=1.0)
    tx, ty, tw = training_set(x, np.ones(3), np.ones(3, bool), alone, np.ones(4, bool))
    assert ty.tolist() == [10.0, 20.0, 30.0, 40.0] and tw is None and len(tx) == 4


def test_a_biased_auxiliary_sample_is_caught_by_the_plots() -> None:
    """A LiDAR-map sample 40 % too high trains a model the held-out plots score as biased."""
    land = make_landscape(3, n=100, cell_m=25.0)
    table, obs, _ = sample_plots(land, 103, n_clusters=40, per_cluster=2, spread_px=2)
    pixels = pixel_table(land)
    rows = np.random.default_rng(3).choice(len(pixels), 600, replace=False)
    sample = pixels.iloc[rows].reset_index(drop=True)
    n = land.agb_mg_ha.shape[1]
    sample["x_m"], sample["y_m"] = land.x_m[rows % n], land.y_m[rows // n]
    target = 1.4 * land.agb_mg_ha.ravel()[rows]
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    scores = {}
    for share in (1.0, 0.5):
        aux = Auxiliary(
            sample, target, sample["x_m"].to_numpy(), sample["y_m"].to_numpy(), share=share
        )
        fitted = select_and_fit(
            table, obs, **xy, features=SAT_FEATURES, settings=FAST, seed=3, auxiliary=aux
        )
        # only the plots are scored
        assert len(fitted.card["cv_predictions"]) == len(obs)
        assert fitted.card["n_auxiliary"] == 600
        scores[share] = fitted.card["candidates"][fitted.card["chosen"]]["spatial_cv"]
    plots_only = select_and_fit(table, obs, **xy, features=SAT_FEATURES, settings=FAST, seed=3)
    scores[0.0] = plots_only.card["candidates"][plots_only.card["chosen"]]["spatial_cv"]
    mean = float(obs.mean())
    print({k: (round(v["bias_mg_ha"], 1), round(v["rmse_mg_ha"], 1)) for k, v in scores.items()})
    assert scores[1.0]["bias_mg_ha"] > 0.25 * mean  # the sample's bias shows at the plots
    assert abs(scores[0.0]["bias_mg_ha"]) < 0.1 * mean
    assert scores[0.0]["rmse_mg_ha"] < scores[0.5]["rmse_mg_ha"] < scores[1.0]["rmse_mg_ha"]


def test_thinned_sample_is_systematic_and_inside_valid_cells() -> None:
    valid = np.zeros((100, 100), dtype=bool)
    valid[20:80, 10:60] = True
    rows, cols = thinned_sample(valid, step_px=5, max_samples=10_000, seed=5)
    assert valid[rows, cols].all()
    assert len(rows) == 12 * 10
    assert len(set(np.diff(np.unique(rows)))) == 1  # regular spacing
    rows2, _ = thinned_sample(valid, step_px=5, max_samples=50, seed=5)
    assert len(rows2) == 50


# ---------------------------------------------------------------- the acceptance checks


@pytest.fixture(scope="module")
def landscape_fit() -> dict[str, object]:
    """One seeded autocorrelated landscape, clustered plots, a satellite-feature model."""
    land = make_landscape(2, n=120, cell_m=25.0)
    table, observed, _ = sample_plots(land, 102, n_clusters=60, per_cluster=4, spread_px=2)
    fitted = select_and_fit(
        table,
        observed,
        x_m=table["x_m"].to_numpy(),
        y_m=table["y_m"].to_numpy(),
        features=SAT_FEATURES,
        settings=FAST,
        seed=2,
    )
    pixels = pixel_table(land)
    return {"land": land, "table": table, "obs": observed, "fitted": fitted, "pixels": pixels}


def test_blocked_cv_tracks_true_map_error_random_split_is_optimistic(landscape_fit: dict) -> None:
    fitted = landscape_fit["fitted"]
    land = landscape_fit["land"]
    truth = land.agb_mg_ha.ravel()
    chosen = fitted.card["chosen"]
    true_rmse = accuracy(truth, fitted.model.predict(landscape_fit["pixels"]))["rmse_mg_ha"]
    cv = fitted.card["candidates"][chosen]
    blocked, naive = cv["spatial_cv"]["rmse_mg_ha"], cv["random_cv"]["rmse_mg_ha"]
    print(f"chosen={chosen} true={true_rmse:.1f} blocked={blocked:.1f} random={naive:.1f}")
    assert true_rmse / 1.5 <= blocked <= true_rmse * 1.5
    # the random split deals whole plots (17 of the 240 samples share a place with another:
    # they go together); plots a few cells apart still train each other's model
    assert naive < true_rmse
    assert naive < blocked


def test_pixel_intervals_cover_truth_at_nominal_rate(landscape_fit: dict) -> None:
    fitted = landscape_fit["fitted"]
    truth = landscape_fit["land"].agb_mg_ha.ravel()
    pred = fitted.predict(landscape_fit["pixels"])
    coverage = float(np.mean((truth >= pred.lower) & (truth <= pred.upper)))
    z = (truth - pred.mean) / pred.sd
    print(f"coverage={coverage:.3f} sd_ratio={np.sqrt(np.mean(z**2)):.2f}")
    assert 0.85 <= coverage <= 0.95
    assert 0.8 <= float(np.sqrt(np.mean(z**2))) <= 1.25  # SD is calibrated too
    assert (pred.lower >= 0).all()


def test_same_seed_same_predictions(landscape_fit: dict) -> None:
    table, obs = landscape_fit["table"], landscape_fit["obs"]
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    again = select_and_fit(table, obs, **xy, features=SAT_FEATURES, settings=FAST, seed=2)
    first = landscape_fit["fitted"].predict(landscape_fit["pixels"])
    second = again.predict(landscape_fit["pixels"])
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.upper, second.upper)
    assert again.card == landscape_fit["fitted"].card


def test_lidar_powerlaw_model_chosen_on_aba_landscape_and_mapper_rule() -> None:
    land = make_landscape(5, n=80, cell_m=25.0)
    table, obs, _ = sample_plots(land, 105, n_clusters=30, per_cluster=2, spread_px=2)
    settings = ModelSettings(
        candidates=("powerlaw", "random_forest", "gradient_boosting", "log_linear"),
        cv_block_m=500.0,
        rf_n_estimators=50,
        gb_max_iter=50,
    )
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    lidar = select_and_fit(
        table, obs, **xy, features=["h_mean", "h_p95", "cover_2m"], settings=settings, seed=5
    )
    assert set(lidar.card["candidates"]) == {
        "powerlaw",
        "random_forest",
        "gradient_boosting",
        "log_linear",
    }
    # the truth is a power law: the ABA model should fit it best and find b near 1.3
    assert lidar.card["chosen"] == "powerlaw"
    assert lidar.card["model"]["b"] == pytest.approx(1.3, abs=0.25)
    sat = make_model("random_forest", SAT_FEATURES, settings=settings, seed=5).fit(table, obs)
    sat_fitted = select_and_fit(table, obs, **xy, features=SAT_FEATURES, settings=FAST, seed=5)
    mapper = BiomassMapper(sat_fitted, "lidar_upscaled", lidar, "2019", 0.95)
    px = pixel_table(land).iloc[:6].copy()
    px["lidar_fraction"] = [1.0, 1.0, 0.5, 0.0, np.nan, 1.0]
    pred, source = mapper.predict(px, epoch="2019")
    assert source.tolist() == [SOURCE_LIDAR, SOURCE_LIDAR] + [SOURCE_SATELLITE_UPSCALED] * 3 + [
        SOURCE_LIDAR
    ]
    np.testing.assert_allclose(pred.mean[:2], lidar.model.predict(px.iloc[:2]))
    # another epoch: the LiDAR describes 2019 only
    _, source_later = mapper.predict(px, epoch="2024")
    assert (source_later == SOURCE_SATELLITE_UPSCALED).all()
    # satellite pixels carry the satellite model's own calibrated uncertainty
    alone = sat_fitted.predict(px.iloc[2:5])
    np.testing.assert_array_equal(pred.sd[2:5], alone.sd)
    assert sat is not None


def test_epoch_corrections_are_the_mean_held_out_residual_per_epoch() -> None:
    obs = np.array([10.0, 20.0, 30.0, 100.0, 110.0, 120.0, 130.0])
    pred = np.array([12.0, 18.0, 36.0, 90.0, 100.0, 110.0, 120.0])
    epochs = ["2019"] * 3 + ["2024"] * 4
    out = epoch_corrections(obs, pred, epochs)
    assert out["2019"].offset_mg_ha == pytest.approx((-2 + 2 - 6) / 3)
    assert out["2019"].se_mg_ha == pytest.approx(np.std([-2, 2, -6], ddof=1) / math.sqrt(3))
    assert out["2024"].offset_mg_ha == pytest.approx(10.0) and out["2024"].se_mg_ha == 0.0
    assert out["2024"].n == 4


def test_epoch_error_correlation_recovers_a_known_correlation_whatever_the_sd_scale() -> None:
    rng = np.random.default_rng(8)
    n, rho = 4000, 0.7
    pred = rng.uniform(50, 300, n)
    sigma = ConformalCalibration(5.0, 0.1, 1.0, (1.0,), (-1.645,), (1.645,), 0.9, n).sigma(pred)
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    ids = [f"P{i}" for i in range(n)] * 2
    # the errors are 0.6 times the size the calibration would give them: a correlation
    # of the errors must not see that scale (sum(r1 r2) / sum(s1 s2) would give 0.42)
    for scale in (1.0, 0.6):
        obs = np.concatenate([pred + scale * z1 * sigma, pred + scale * z2 * sigma])
        est, m = epoch_error_correlation(
            obs,
            np.concatenate([pred, pred]),
            epochs=["a"] * n + ["b"] * n,
            plot_ids=ids,
            first="a",
            second="b",
        )
        assert m == n and est == pytest.approx(rho, abs=0.03)
    few, m = epoch_error_correlation(
        obs[:5], pred[:5], epochs=["a"] * 5, plot_ids=ids[:5], first="a", second="b"
    )
    assert math.isnan(few) and m == 0


def test_mapper_shifts_the_satellite_map_of_a_corrected_epoch_only() -> None:
    land = make_landscape(5, n=40, cell_m=25.0)
    table, obs, _ = sample_plots(land, 105, n_clusters=20, per_cluster=2, spread_px=2)
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    sat = select_and_fit(table, obs, **xy, features=SAT_FEATURES, settings=FAST, seed=5)
    px = pixel_table(land).iloc[:50]
    plain = BiomassMapper(sat, "plots").predict(px, epoch="2024")[0]
    shifted = BiomassMapper(sat, "plots", epoch_offsets={"2024": 7.5})
    later, _ = shifted.predict(px, epoch="2024")
    np.testing.assert_allclose(later.mean, np.clip(plain.mean + 7.5, 0, None))
    # the calibration applies to the corrected map
    again = sat.calibration.apply(later.mean)
    np.testing.assert_array_equal(later.sd, again.sd)
    np.testing.assert_array_equal(later.upper, again.upper)
    np.testing.assert_array_equal(shifted.predict(px, epoch="2019")[0].mean, plain.mean)


def test_cross_fitted_values_are_the_models_own_held_out_predictions_with_the_offset() -> None:
    """At the plots a model trained on, the cross-fitted value is its out-of-fold prediction
    in the random split of whole plots (``select_and_fit`` recomputed here by the fold rule)
    plus the epoch offset, clipped as the map; at plots it never saw, the map's own
    prediction."""
    land = make_landscape(5, n=40, cell_m=25.0)
    table, obs, _ = sample_plots(land, 105, n_clusters=20, per_cluster=2, spread_px=2)
    table = table.assign(plot_id=[f"P{i}" for i in range(len(table))], epoch="2024")
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    train = np.arange(len(table)) < 28
    sat = select_and_fit(
        table[train], obs[train], x_m=xy["x_m"][train], y_m=xy["y_m"][train],
        features=SAT_FEATURES, settings=ONE, seed=5,
    )  # fmt: skip
    mapper = BiomassMapper(sat, "plots", epoch_offsets={"2024": -4.0})
    out = cross_fitted_at_plots(mapper, table, ["2024"], [(sat, table[train])])
    # an independent reference: refit the chosen candidate fold by fold
    folds = plot_random_folds(xy["x_m"][train], xy["y_m"][train], n_folds=5, seed=5)
    oof = np.empty(int(train.sum()))
    refits = {}
    for f in np.unique(folds):
        refits[f] = make_model(sat.card["chosen"], SAT_FEATURES, settings=ONE, seed=5).fit(
            table[train][folds != f], obs[train][folds != f]
        )
        oof[folds == f] = refits[f].predict(table[train][folds == f])
    np.testing.assert_allclose(out["held_out_mg_ha"][train], np.clip(oof - 4.0, 0, None))
    in_map = mapper.predict(table, epoch="2024")[0].mean
    np.testing.assert_allclose(out["fitted_mg_ha"], in_map)
    np.testing.assert_array_equal(out["held_out_mg_ha"][~train], in_map[~train])
    # each training plot's fold is the one that held it out; the others have none
    np.testing.assert_array_equal(out["fold"][train], folds)
    assert (out["fold"][~train] == -1).all()
    # the fold maps are the refitted fold models with the map's offset and clipping, the
    # map itself being unchanged by them (the fold models are dropped for the maps)
    full, source, by_fold = fold_map_values(mapper, table, epoch="2024")
    np.testing.assert_array_equal(full, in_map)
    assert (source == SOURCE_SATELLITE_PLOTS).all() and by_fold.shape == (len(table), len(refits))
    for f, refit in refits.items():
        np.testing.assert_allclose(by_fold[:, f], np.clip(refit.predict(table) - 4.0, 0, None))
    lean = mapper.without_fold_models()
    assert lean.satellite.fold_models == {} and len(mapper.satellite.fold_models) == len(refits)
    np.testing.assert_array_equal(lean.predict(table, epoch="2024")[0].mean, in_map)
    # in sample the fit follows the plots: its residuals are smaller than the held-out ones
    r_in = obs[train] - out["fitted_mg_ha"][train]
    r_out = obs[train] - out["held_out_mg_ha"][train]
    assert np.sqrt(np.mean(r_in**2)) < 0.8 * np.sqrt(np.mean(r_out**2))


def _random_stems(rng: np.random.Generator, side_m: float, n: int) -> tuple[np.ndarray, ...]:
    """``n`` squares of ``side_m`` with stems at random (Poisson, 0.15 per m^2) and
    lognormal AGB (kg): the stems' x, y, AGB and square index."""
    count = rng.poisson(0.15 * side_m**2, n)
    which = np.repeat(np.arange(n), count)
    xy = rng.uniform(0.0, side_m, (which.size, 2))
    return xy[:, 0], xy[:, 1], rng.lognormal(4.0, 0.9, which.size), which


def test_granularity_cell_support_predicts_the_cells_of_random_stems() -> None:
    # field plots of 667 m2 give each plot's stem granularity; windows of 30 x 30 m of the
    # same kind of stand, cut into 10 m cells, show how far a cell departs from its window:
    # the RMS the plots predict matches the RMS the cells show (simulated, independent)
    rng = np.random.default_rng(5)
    side = math.sqrt(667.0)
    _, _, m, which = _random_stems(rng, side, 400)
    area_ha = 667.0 / 10_000.0
    g = np.array([stem_granularity_m2(m[which == i], area_ha) for i in range(400)])
    agb = np.bincount(which, weights=m, minlength=400) / 1000.0 / area_ha
    cs = granularity_cell_support(agb, g, cell_m2=100.0, window_m2=900.0, interval=0.9, n_bins=1)
    x, y, mw, ww = _random_stems(rng, 30.0, 4000)
    cell = (np.floor(x / 10.0) * 3 + np.floor(y / 10.0)).astype(int)
    cells = np.zeros((4000, 9))
    np.add.at(cells, (ww, cell), mw)
    window = cells.mean(axis=1, keepdims=True)
    r = (cells / window - 1.0).ravel()
    assert cs.rms[0] == pytest.approx(float(np.sqrt(np.mean(r**2))), rel=0.05)
    # closed form for one plot: A sum(m^2) / (sum m)^2
    assert stem_granularity_m2([1.0, 3.0], 0.1) == pytest.approx(1000.0 * 10.0 / 16.0)
    assert math.isnan(stem_granularity_m2([0.0], 0.1))
    with pytest.raises(ModelDomainError, match="at least 20 plots"):
        granularity_cell_support(agb[:5], g[:5], cell_m2=100.0, window_m2=900.0,
                                 interval=0.9, n_bins=1)  # fmt: skip


def test_widened_intervals_cover_single_cells_at_the_nominal_rate() -> None:
    # a calibrated window estimate (normal error, SD 15 %) of windows whose cells depart
    # by a level-dependent relative deviation: its own interval under-covers the cells,
    # the widened one covers them at about the nominal 90 %
    rng = np.random.default_rng(11)
    n = 100_000
    window = rng.uniform(30.0, 350.0, n)
    spread = np.where(window < 150.0, 0.25, 0.5)
    z = 1.6449
    cs = CellSupport(edges=(150.0,), rms=(0.25, 0.5), interval=0.9, n_cells=n, reference="test")
    sd = 0.15 * window
    est = window + sd * rng.standard_normal(n)
    pred = Prediction(est, sd, est - z * sd, est + z * sd)
    fresh = window * (1.0 + spread * rng.standard_normal(n)).clip(0.0)

    def coverage(p: Prediction) -> float:
        return float(np.mean((p.lower <= fresh) & (fresh <= p.upper)))

    wide = cs.widen(pred)
    assert coverage(pred) < 0.7
    assert 0.86 <= coverage(wide) <= 0.94
    np.testing.assert_array_equal(wide.mean, pred.mean)
    assert (wide.sd >= pred.sd).all() and (wide.lower >= 0).all()


def test_training_source_is_the_plots_unless_another_wins_by_one_standard_error() -> None:
    from types import SimpleNamespace

    from models.biomass.upscaling import simplest_within_one_se

    rng = np.random.default_rng(3)
    observed = rng.uniform(50, 250, 60)
    e_plots = rng.normal(0, 40, 60)

    def card(errors: np.ndarray) -> SimpleNamespace:
        rows = [{"observed": o, "predicted": o + e} for o, e in zip(observed, errors, strict=True)]
        return SimpleNamespace(card={"cv_predictions": rows})

    def rmse_of(fitted: dict) -> object:
        def rmse(src: str) -> float:
            rows = fitted[src].card["cv_predictions"]
            return float(np.sqrt(np.mean([(r["predicted"] - r["observed"]) ** 2 for r in rows])))

        return rmse

    # a hair better (the same errors at other plots, 0.1 % smaller): the lowest CV RMSE,
    # but its gain is CV noise, and the plots are kept
    other = 0.999 * rng.permutation(e_plots)
    near = {"plots": card(e_plots), "plots+lidar_upscaled": card(other)}
    kept, rule = simplest_within_one_se(near, rmse_of(near))  # type: ignore[arg-type]
    d = e_plots**2 - other**2
    assert rule["lowest_cv_rmse"] == "plots+lidar_upscaled" and kept == rule["kept"] == "plots"
    assert rule["se_of_gain_mg2_ha2"] == pytest.approx(d.std(ddof=1) / np.sqrt(60))
    assert rule["mse_gain_mg2_ha2"] == pytest.approx(d.mean()) and 0 < d.mean()
    # clearly better (half the error at every plot): the better source is kept
    far = {"plots": card(e_plots), "lidar_upscaled": card(e_plots * 0.5)}
    kept, rule = simplest_within_one_se(far, rmse_of(far))  # type: ignore[arg-type]
    assert kept == "lidar_upscaled" and rule["kept"] == "lidar_upscaled"
    assert rule["mse_gain_mg2_ha2"] == pytest.approx(np.mean(0.75 * e_plots**2))
    # the plots best already: nothing to decide
    assert simplest_within_one_se(far, lambda s: {"plots": 1.0, "lidar_upscaled": 2.0}[s]) == (
        "plots",
        {},
    )
