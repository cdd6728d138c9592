"""Biomass models: closed-form checks, spatial CV against known truth, calibration."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic_landscape import make_landscape, pixel_table, sample_plots

from models.biomass import (
    SOURCE_LIDAR,
    SOURCE_SATELLITE_UPSCALED,
    BiomassMapper,
    ModelDomainError,
    ModelSettings,
    PowerLawABA,
    Prediction,
    _conformal_quantile,
    accuracy,
    blocked_folds,
    calibrate_conformal,
    chain_uncertainty,
    make_model,
    select_and_fit,
    spatial_block_ids,
    thinned_sample,
)

SAT_FEATURES = ["ndvi", "nbr", "elevation", "slope_deg"]
FAST = ModelSettings(
    candidates=("random_forest", "gradient_boosting"),
    cv_block_m=750.0,
    rf_n_estimators=100,
    gb_max_iter=100,
)


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


def test_chain_adds_errors_in_quadrature() -> None:
    cal = calibrate_conformal(np.array([10.0, -10.0] * 10) + 100, np.full(20, 100.0), interval=0.9)
    second = Prediction(np.array([100.0]), np.array([3.0]), np.array([96.0]), np.array([104.0]))
    one = cal.apply(np.array([100.0]))
    out = chain_uncertainty(second, cal)
    assert out.sd[0] == pytest.approx(math.hypot(3.0, one.sd[0]))
    assert 100 - out.lower[0] == pytest.approx(math.hypot(4.0, 100 - one.lower[0]))
    assert out.upper[0] - 100 == pytest.approx(math.hypot(4.0, one.upper[0] - 100))


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
    assert naive < 0.9 * true_rmse
    assert naive < blocked
    # the other candidate tells the same story
    for name, res in fitted.card["candidates"].items():
        assert res["random_cv"]["rmse_mg_ha"] < res["spatial_cv"]["rmse_mg_ha"], name


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
    settings = ModelSettings(cv_block_m=500.0, rf_n_estimators=50, gb_max_iter=50)
    xy = {"x_m": table["x_m"].to_numpy(), "y_m": table["y_m"].to_numpy()}
    lidar = select_and_fit(
        table, obs, **xy, features=["h_mean", "h_p95", "cover_2m"], settings=settings, seed=5
    )
    assert set(lidar.card["candidates"]) == {"powerlaw", "random_forest", "gradient_boosting"}
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
    # satellite pixels carry the LiDAR model's error as well: wider than the model alone
    alone = sat_fitted.predict(px.iloc[2:5])
    assert (pred.sd[2:5] > alone.sd).all()
    assert sat is not None
