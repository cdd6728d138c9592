"""The ``estimate`` stage against the same estimators computed by hand with numpy.

A 40 x 40 grid of 10 m cells carries a carbon map per epoch; two strata split it into a
west and an east half (the sampling frames); plot squares are aligned with the grid so
that the map's mean over a plot or a frame is a plain numpy mean of cells.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.stats import norm, qmc
from scipy.stats import t as student_t
from shapely.geometry import box

from models.allometry import co2_per_c
from pipeline.contracts import ESTIMATES_RELPATH, SAMPLE_PLAN_RELPATH, SYSTEMATIC_RELPATH
from pipeline.errors import InputDataError
from pipeline.stages.estimate import EstimateJob, estimate

X0, Y1, RES, N = 500_000.0, 3_000_000.0, 10.0, 40
EPOCHS = ("2019", "2024")


def _raster(values: np.ndarray) -> xr.DataArray:
    y = Y1 - RES * (np.arange(N) + 0.5)
    x = X0 + RES * (np.arange(N) + 0.5)
    da = xr.DataArray(values[None].astype(np.float32), dims=("band", "y", "x"),
                      coords={"band": ["carbon"], "y": y, "x": x})  # fmt: skip
    return da.rio.write_crs("EPSG:32650")


def _cells(r0: int, c0: int, size: int = 2) -> tuple[slice, slice]:
    return slice(r0, r0 + size), slice(c0, c0 + size)


def _square(r0: int, c0: int, size: int = 2) -> box:
    return box(X0 + c0 * RES, Y1 - (r0 + size) * RES, X0 + (c0 + size) * RES, Y1 - r0 * RES)


@pytest.fixture()
def scene() -> dict:
    rng = np.random.default_rng(3)
    maps = {
        "2019": rng.uniform(20, 80, (N, N)),
        "2024": None,
    }
    maps["2024"] = maps["2019"] + rng.uniform(0, 10, (N, N))
    maps["2019"][5:8, 5:8] = np.nan  # unmapped cells count as 0 at plots and frames alike
    maps = {e: m.astype(np.float32).astype(np.float64) for e, m in maps.items()}  # as stored
    frames = gpd.GeoDataFrame(
        {"sample": ["project", "project"], "stratum": ["west", "east"],
         "area_ha": [20 * 40 * 0.01, 20 * 40 * 0.01]},
        geometry=[box(X0, Y1 - 400, X0 + 200, Y1), box(X0 + 200, Y1 - 400, X0 + 400, Y1)],
        crs="EPSG:32650",
    )  # fmt: skip
    corners = [(1, 1), (10, 4), (20, 12), (30, 6), (4, 5), (2, 22), (14, 30), (25, 25), (33, 35)]
    plots = gpd.GeoDataFrame(
        {"plot_id": [f"J{i}" for i in range(len(corners))], "sample": "project",
         "stratum": ["west" if c < 20 else "east" for _, c in corners]},
        geometry=[_square(r, c) for r, c in corners], crs="EPSG:32650",
    )  # fmt: skip
    # field values: the map plus a plot-level error, so the map is a good auxiliary
    biomass = []
    truth = {}
    for e in EPOCHS:
        m = np.nan_to_num(maps[e])
        truth[e] = np.array([m[_cells(r, c)].mean() for r, c in corners])
        y = truth[e] + rng.normal(0, 5, len(corners))
        biomass += [{"plot_id": p, "epoch": e, "carbon_mg_ha": v}
                    for p, v in zip(plots["plot_id"], y, strict=True)]  # fmt: skip
    return {
        "maps": maps,
        "frames": frames,
        "plots": plots,
        "biomass": pd.DataFrame(biomass),
        "corners": corners,
    }


#: GREG chosen everywhere the map may assist
JOB = EstimateJob(
    epochs=EPOCHS,
    confidence=0.9,
    target=0.1,
    estimator="greg",
    change_estimator="greg",
    project_change_estimator="greg",
    # off here; the cross-fitting tests turn it on (replace(JOB, cross_fit=True))
    cross_fit=False,
)


def _outputs(scene: dict, job: EstimateJob = JOB, **inputs: Any) -> dict[str, pd.DataFrame]:
    return estimate(
        job,
        plot_biomass=scene["biomass"],
        plot_locations=scene["plots"],
        design=scene["frames"],
        carbon={e: _raster(scene["maps"][e]) for e in EPOCHS},
        **inputs,
    )


def _run(scene: dict) -> pd.DataFrame:
    return _outputs(scene)[ESTIMATES_RELPATH].set_index(["quantity", "estimator"])


def _by_hand(scene: dict, epoch: str) -> dict[str, np.ndarray]:
    b = scene["biomass"]
    y = b[b["epoch"] == epoch].set_index("plot_id").loc[scene["plots"]["plot_id"], "carbon_mg_ha"]
    m_map = np.nan_to_num(scene["maps"][epoch])
    m = np.array([m_map[_cells(r, c)].mean() for r, c in scene["corners"]])
    west = (scene["plots"]["stratum"] == "west").to_numpy()
    return {"y": y.to_numpy(), "m": m, "west": west,
            "M": np.array([m_map[:, :20].mean(), m_map[:, 20:].mean()])}  # fmt: skip


def test_stratified_stock_equals_numpy(scene: dict) -> None:
    table = _run(scene)
    h = _by_hand(scene, "2019")
    area = 8.0  # ha per stratum
    means = [h["y"][h["west"]].mean(), h["y"][~h["west"]].mean()]
    var = [h["y"][h["west"]].var(ddof=1) / h["west"].sum(),
           h["y"][~h["west"]].var(ddof=1) / (~h["west"]).sum()]  # fmt: skip
    total = area * sum(means)
    se = area * np.sqrt(sum(var))
    row = table.loc[("stock_2019", "stratified")]
    assert row["total"] == pytest.approx(total, rel=1e-12)
    assert row["se"] == pytest.approx(se, rel=1e-12)
    assert row["df"] == len(h["y"]) - 2  # AR-TOOL14: n - M
    t90 = student_t.ppf(0.95, len(h["y"]) - 2)
    assert row["half_width"] == pytest.approx(t90 * se, rel=1e-12)


def test_difference_estimator_uses_the_map_the_same_way_at_plots_and_frames(scene: dict) -> None:
    table = _run(scene)
    h = _by_hand(scene, "2019")
    e = h["y"] - h["m"]
    total = 8.0 * ((h["M"][0] + e[h["west"]].mean()) + (h["M"][1] + e[~h["west"]].mean()))
    row = table.loc[("stock_2019", "difference")]
    assert row["total"] == pytest.approx(total, rel=1e-9)
    assert row["map_total"] == pytest.approx(8.0 * h["M"].sum(), rel=1e-9)
    # the map explains most of the plot variance: the difference estimator is more efficient
    assert row["relative_efficiency"] > 2.0


def test_change_is_in_co2e_from_plots_measured_at_both_epochs(scene: dict) -> None:
    table = _run(scene)
    a, b = _by_hand(scene, "2019"), _by_hand(scene, "2024")
    d = (b["y"] - a["y"]) * co2_per_c()
    total = 8.0 * (d[a["west"]].mean() + d[~a["west"]].mean())
    row = table.loc[("change_2019_2024", "stratified")]
    assert row["total"] == pytest.approx(total, rel=1e-9)
    assert row["unit"] == "t CO2e"
    chosen = table[table["chosen"]]
    assert sorted(chosen.index.get_level_values("quantity")) == [
        "change_2019_2024", "stock_2019", "stock_2024",
    ]  # fmt: skip
    assert set(chosen.index.get_level_values("estimator")) == {"greg"}


def _scene_trees(scene: dict) -> pd.DataFrame:
    """One Schima superba tree per plot and epoch carrying the plot's carbon density, its
    BGB from a root equation (so only the carbon fraction is drawn: the broadleaf row)."""
    cf = 0.47  # carbon_fraction.csv, broadleaf group row
    area = 0.04
    b = scene["biomass"]
    biomass_kg = b["carbon_mg_ha"] / cf * 1000 * area
    return pd.DataFrame({"plot_id": b["plot_id"], "epoch": b["epoch"], "species": "Schima superba",
                         "usable": True, "plot_area_ha": area, "agb_kg": 0.8 * biomass_kg,
                         "bgb_kg": 0.2 * biomass_kg, "root_shoot_ratio": np.nan})  # fmt: skip


def test_the_systematic_sd_of_a_common_carbon_fraction_error_is_r_times_each_total(
    scene: dict,
) -> None:
    """Closed form: every plot shifted by r z_k of its carbon (r = sd / value of the
    carbon_fraction.csv row, 0.0128 / 0.47) and the maps scaled alike give every estimate
    r |T| sd(z), the change r |T2 - T1| (its total); z are the Latin hypercube normal
    deviates of the run's seed. The sampling columns (the credits' inputs) do not move."""
    job = replace(JOB, systematic_draws=50, seed=11)
    with pytest.warns(UserWarning, match="no tree table"):
        without = _outputs(scene, job)
    out = _outputs(scene, job, trees=_scene_trees(scene))
    table = out[ESTIMATES_RELPATH]
    z = norm.ppf(qmc.LatinHypercube(d=2, seed=11).random(50)[:, 0])
    r = 0.0128 / 0.47
    np.testing.assert_allclose(
        table["systematic_sd"], r * table["total"].abs() * np.std(z, ddof=1), rtol=1e-9
    )
    h1, h2 = _by_hand(scene, "2019"), _by_hand(scene, "2024")
    d = (h2["y"] - h1["y"]) * co2_per_c()
    change = 8.0 * (d[h1["west"]].mean() + d[~h1["west"]].mean())
    row = table.set_index(["quantity", "estimator"]).loc[("change_2019_2024", "stratified")]
    assert row["systematic_sd"] == pytest.approx(r * abs(change) * np.std(z, ddof=1), rel=1e-9)
    assert out[SYSTEMATIC_RELPATH]["map_relative_sd"] == pytest.approx(r * np.std(z, ddof=1))
    sampling = ["total", "se", "df", "half_width", "lower", "upper", "chosen"]
    pd.testing.assert_frame_equal(table[sampling], without[ESTIMATES_RELPATH][sampling])
    assert without[ESTIMATES_RELPATH]["systematic_sd"].isna().all()
    combined = np.hypot(table["se"], table["systematic_sd"])
    np.testing.assert_allclose(table["combined_sd"], combined, rtol=1e-12)
    t = student_t.ppf(0.95, table["df"])
    np.testing.assert_allclose(table["combined_half_width"], t * combined, rtol=1e-12)
    np.testing.assert_allclose(table["combined_lower"], table["total"] - t * combined, rtol=1e-12)


def test_the_systematic_sd_is_reproducible_from_the_seed(scene: dict) -> None:
    trees = _scene_trees(scene)
    trees.loc[trees["plot_id"] == "J1", "root_shoot_ratio"] = 0.2  # a ratio tree too
    runs = [
        _outputs(scene, replace(JOB, systematic_draws=30, seed=s), trees=trees)[ESTIMATES_RELPATH]
        for s in (4, 4, 5)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not np.allclose(runs[0]["systematic_sd"], runs[2]["systematic_sd"])


def test_a_tree_table_without_a_column_is_refused_naming_the_file(scene: dict) -> None:
    trees = _scene_trees(scene).drop(columns="plot_area_ha")
    with pytest.raises(InputDataError, match=r"plots/trees.csv.*plot_area_ha"):
        _outputs(scene, trees=trees)


def test_a_plot_in_an_undeclared_stratum_is_refused(scene: dict) -> None:
    scene["plots"].loc[0, "stratum"] = "north"
    with pytest.raises(InputDataError, match="strata \\['north'\\]"):
        _run(scene)


def test_no_design_gives_an_empty_table() -> None:
    with pytest.warns(UserWarning, match="no plot design"):
        table = estimate(JOB)[ESTIMATES_RELPATH]
    assert table.empty and "total" in table.columns


def test_a_sample_that_trained_the_map_gets_the_plot_only_estimate(scene: dict) -> None:
    scene["plots"]["sample"] = "inventory"
    scene["frames"]["sample"] = "inventory"
    table = _run(scene)
    chosen = table[table["chosen"]]
    assert set(chosen.index.get_level_values("estimator")) == {"stratified"}
    assisted = table[table.index.get_level_values("estimator") != "stratified"]
    assert (assisted["note"].str.startswith("not used: the map was trained")).all()


def _cross_fit_inputs(scene: dict, fold_offsets: tuple[float, ...]) -> dict:
    """The model stage's records for a scene whose plots trained the map: in-sample and
    held-out predictions with a fold per plot-epoch, and fold maps at every other cell
    (probability 1/4) equal to the map plus ``fold_offsets[k]`` (Mg/ha AGB) in the west
    frame and twice that in the east."""
    scene["plots"]["sample"] = "inventory"
    scene["frames"]["sample"] = "inventory"
    rng = np.random.default_rng(7)
    ids = scene["plots"]["plot_id"].tolist()
    features = pd.DataFrame(
        {"plot_id": ids * 2, "epoch": [e for e in EPOCHS for _ in ids],
         "fitted_mg_ha": rng.uniform(50, 150, 2 * len(ids)),
         "fold": rng.integers(-1, len(fold_offsets), 2 * len(ids))}
    )  # fmt: skip
    features["held_out_mg_ha"] = features["fitted_mg_ha"] + rng.normal(0, 20, len(features))
    r, c = np.meshgrid(np.arange(0, N, 2), np.arange(1, N, 2), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    cells = []
    for e in EPOCHS:
        agb = rng.uniform(50, 150, r.size)
        part = pd.DataFrame(
            {"epoch": e, "x_m": X0 + RES * (c + 0.5), "y_m": Y1 - RES * (r + 0.5),
             "model_source": 3, "agb_mg_ha": agb}
        )  # fmt: skip
        for k, offset in enumerate(fold_offsets):
            part[f"agb_fold_{k}_mg_ha"] = agb + offset * np.where(c < 20, 1.0, 2.0)
        cells.append(part)
    card = {
        "conversion": {"root_to_shoot": 0.25, "carbon_fraction": 0.47},
        "fold_maps": {"cell_ha": 0.01, "inclusion_probability": 0.25},
    }
    return {"plot_features": features, "fold_maps": pd.concat(cells), "model_card": card}


def _cross_fitted(scene: dict, job: EstimateJob, inputs: dict) -> pd.DataFrame:
    return _outputs(scene, job, **inputs)[ESTIMATES_RELPATH].set_index(["quantity", "estimator"])


#: the maps' AGB-to-carbon factor of :func:`_cross_fit_inputs`' conversion
FACTOR_C = 1.25 * 0.47


def _cross_fitted_by_hand(scene: dict, features: pd.DataFrame, correction: np.ndarray) -> tuple:
    """The 2019 difference estimate with held-out values at the plots and the stratum
    means corrected by ``correction`` (Mg C/ha per stratum, west and east), and its SE."""
    h = _by_hand(scene, "2019")
    ids = scene["plots"]["plot_id"].tolist()
    f = features[features["epoch"] == "2019"].set_index("plot_id").loc[ids]
    crossed = h["m"] + (f["held_out_mg_ha"] - f["fitted_mg_ha"]).to_numpy() * FACTOR_C
    e = h["y"] - crossed
    means = h["M"] + correction
    total = 8.0 * ((means[0] + e[h["west"]].mean()) + (means[1] + e[~h["west"]].mean()))
    var = (
        e[h["west"]].var(ddof=1) / h["west"].sum() + e[~h["west"]].var(ddof=1) / (~h["west"]).sum()
    )
    return total, 8.0 * np.sqrt(var)


def test_a_sample_that_trained_the_map_is_cross_fitted_by_the_held_out_shift(scene: dict) -> None:
    """With the model stage's in-sample and held-out predictions at the training plots, the
    difference estimator uses map + (held-out - fitted) x the carbon factor at each plot;
    fold maps equal to the map leave the stratum means exactly as they are."""
    inputs = _cross_fit_inputs(scene, fold_offsets=(0.0, 0.0, 0.0))
    table = _cross_fitted(scene, replace(JOB, cross_fit=True), inputs)
    total, se = _cross_fitted_by_hand(scene, inputs["plot_features"], np.zeros(2))
    row = table.loc[("stock_2019", "difference")]
    assert row["total"] == pytest.approx(total, rel=1e-12)
    assert row["se"] == pytest.approx(se, rel=1e-9)
    assert row["note"].startswith("cross-fitted: ")
    assert "fold maps' correction +0 Mg C (+0.0%)" in row["note"]
    # the config's rule (GREG here) is chosen again, as for a sample that did not train the map
    chosen = table[table["chosen"]]
    assert set(chosen.index.get_level_values("estimator")) == {"greg"}
    # with stages.estimate.cross_fit false the same rows are written, not chosen
    off = _cross_fitted(scene, JOB, inputs)
    assert off.loc[("stock_2019", "difference"), "total"] == pytest.approx(total, rel=1e-12)
    assert set(off[off["chosen"]].index.get_level_values("estimator")) == {"stratified"}
    assert off.loc[("stock_2019", "difference"), "note"].startswith("cross-fitted, not chosen")


def test_the_fold_maps_correct_the_stratum_means_by_their_plots_folds(scene: dict) -> None:
    """Eq. (2) of models.survey.crossfit against numpy: per stratum, the share of its plots
    in each fold times that fold map's mean shift over the stratum, here a constant per
    frame (offset k in the west, 2 x offset k in the east), in carbon."""
    offsets = (4.0, -2.0, 10.0)
    inputs = _cross_fit_inputs(scene, fold_offsets=offsets)
    table = _cross_fitted(scene, replace(JOB, cross_fit=True, estimator="difference"), inputs)
    f = inputs["plot_features"]
    f = f[f["epoch"] == "2019"].set_index("plot_id").loc[scene["plots"]["plot_id"], "fold"]
    west = (scene["plots"]["stratum"] == "west").to_numpy()
    # the sampled cells are every other column and row: 20 x 20 cells at 1/4 stand for
    # the 1,600 cells, 800 per frame of 8 ha; a plot of no fold (-1) has no shift
    shift = np.array([offsets[k] if k >= 0 else 0.0 for k in f])
    correction = np.array([shift[west].mean(), 2.0 * shift[~west].mean()]) * FACTOR_C
    total, se = _cross_fitted_by_hand(scene, inputs["plot_features"], correction)
    row = table.loc[("stock_2019", "difference")]
    assert abs(correction).max() > 0.5
    assert row["total"] == pytest.approx(total, rel=1e-12)
    assert row["se"] == pytest.approx(se, rel=1e-9)  # the correction's own SE is not added
    assert f"fold maps' correction {8.0 * correction.sum():+,.0f} Mg C" in row["note"]
    assert table.loc[("stock_2019", "difference"), "chosen"]
    # map_total stays the map's own sum: the same as with fold maps equal to the map
    plain = _cross_fitted(
        scene, replace(JOB, cross_fit=True, estimator="difference"),
        _cross_fit_inputs(scene, fold_offsets=(0.0, 0.0, 0.0)),
    )  # fmt: skip
    for key in table.index:
        assert table.loc[key, "map_total"] == pytest.approx(plain.loc[key, "map_total"]), key


def test_without_fold_maps_the_cross_fitted_estimate_is_not_chosen(scene: dict) -> None:
    """A model stage that wrote no fold maps (an older run folder): the cross-fitted rows
    are written without the correction, and the plot-only estimate is chosen."""
    inputs = _cross_fit_inputs(scene, fold_offsets=(5.0, 5.0))
    inputs["plot_features"] = inputs["plot_features"].drop(columns="fold")
    del inputs["fold_maps"]
    table = _cross_fitted(scene, replace(JOB, cross_fit=True), inputs)
    total, _ = _cross_fitted_by_hand(scene, inputs["plot_features"], np.zeros(2))
    row = table.loc[("stock_2019", "difference")]
    assert row["total"] == pytest.approx(total, rel=1e-12)
    assert row["note"].startswith("cross-fitted without the fold maps' population correction")
    assert set(table[table["chosen"]].index.get_level_values("estimator")) == {"stratified"}


def test_sample_plan_is_ar_tool03_eq2_on_the_sample_sds(scene: dict) -> None:
    plan = _outputs(scene)[SAMPLE_PLAN_RELPATH]
    stock = plan[plan["quantity"] == "stock_2024"].set_index("stratum")
    h = _by_hand(scene, "2024")
    s = np.array([h["y"][h["west"]].std(ddof=1), h["y"][~h["west"]].std(ddof=1)])
    m = np.array([h["y"][h["west"]].mean(), h["y"][~h["west"]].mean()])
    w = np.array([0.5, 0.5])  # equal stratum areas; order west, east
    allowable = 0.1 * float(w @ m)
    # no plot area given: infinite population, AR-TOOL03 Eq. 2, t at infinite df; below 30
    # plots once more with t at floor(n - 1) df (paras. 11-13)
    n = (student_t.ppf(0.95, np.inf) / allowable) ** 2 * float(w @ s) ** 2
    assert n < 30
    n = (student_t.ppf(0.95, np.floor(n - 1)) / allowable) ** 2 * float(w @ s) ** 2
    assert stock.loc["west", "n_required"] == pytest.approx(n, rel=1e-9)
    assert stock.loc["west", "sd_per_ha"] == pytest.approx(s[0], rel=1e-9)
    assert stock["n_plots"].sum() == len(h["y"])


def test_buffer_method_plots_see_only_their_frame_and_expand_by_the_centre_area(
    scene: dict,
) -> None:
    """Plots straddling the west/east edge (buffer method, ``centre_area_ha``): with plot
    values equal to the map inside their frame, the difference estimate is the map's total
    over the frames exactly, and the plot-only estimate is the centre area times the mean."""
    centre_ha = {"west": 9.5, "east": 10.25}
    scene["frames"]["centre_area_ha"] = scene["frames"]["stratum"].map(centre_ha)
    # four plots straddle the edge at column 20: two west, two east
    straddling = [(8, 19, "west"), (26, 19, "west"), (12, 19, "east"), (35, 19, "east")]
    corners = scene["corners"] + [(r, c) for r, c, _ in straddling]
    strata = ["west" if c < 20 else "east" for _, c in scene["corners"]]
    strata += [s for _, _, s in straddling]
    scene["plots"] = gpd.GeoDataFrame(
        {"plot_id": [f"J{i}" for i in range(len(corners))], "sample": "project",
         "stratum": strata},
        geometry=[_square(r, c) for r, c in corners], crs="EPSG:32650",
    )  # fmt: skip
    west_cols = np.arange(N) < 20
    rows, y_west = [], []
    for e in EPOCHS:
        m = np.nan_to_num(scene["maps"][e])
        for pid, (r, c), s in zip(scene["plots"]["plot_id"], corners, strata, strict=True):
            inside = west_cols if s == "west" else ~west_cols
            v = (m * inside[None, :])[_cells(r, c)].mean()  # outside its frame as 0
            rows.append({"plot_id": pid, "epoch": e, "carbon_mg_ha": v})
            if e == "2019" and s == "west":
                y_west.append(v)
    scene["biomass"] = pd.DataFrame(rows)
    table = _run(scene)
    m19 = np.nan_to_num(scene["maps"]["2019"])
    map_total = (m19[:, :20].sum() + m19[:, 20:].sum()) * 0.01  # Mg C over 0.01 ha cells
    diff = table.loc[("stock_2019", "difference")]
    assert diff["map_total"] == pytest.approx(map_total, rel=1e-9)
    assert diff["total"] == pytest.approx(map_total, rel=1e-9)
    assert diff["se"] == pytest.approx(0.0, abs=1e-6 * map_total)
    # the straddling plots saw about half their square: they are below the cell means
    assert min(y_west[-2:]) < 0.75 * np.mean(y_west[:-2])
    b = scene["biomass"]
    y = b[b["epoch"] == "2019"].set_index("plot_id").loc[scene["plots"]["plot_id"], "carbon_mg_ha"]
    west = np.array(strata) == "west"
    total = 9.5 * y[west].mean() + 10.25 * y[~west].mean()
    strat = table.loc[("stock_2019", "stratified")]
    assert strat["total"] == pytest.approx(total, rel=1e-9)
    # per-hectare figures are per frame hectare; the area is the frames'
    assert strat["area_ha"] == pytest.approx(16.0) and strat["mean_per_ha"] == pytest.approx(
        total / 16.0
    )


def test_a_centre_area_below_the_frame_area_is_refused(scene: dict) -> None:
    scene["frames"]["centre_area_ha"] = [7.0, np.nan]
    with pytest.raises(InputDataError, match="centre_area_ha is below area_ha"):
        _run(scene)


def _without_design_area(scene: dict) -> None:
    scene["frames"] = scene["frames"].drop(columns="area_ha")


def _without_plot_stratum(scene: dict) -> None:
    scene["plots"] = scene["plots"].drop(columns="stratum")


def _one_plot_east(scene: dict) -> None:
    east = scene["plots"].index[scene["plots"]["stratum"] == "east"]
    scene["plots"].loc[east[1:], "stratum"] = "west"


def _negative_area(scene: dict) -> None:
    scene["frames"].loc[0, "area_ha"] = -8.0


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_without_design_area, r"plot design: column\(s\) \['area_ha'\] missing"),
        (_without_plot_stratum, r"plot locations: column\(s\) \['stratum'\] missing"),
        (_one_plot_east, r"sample 'project': stratum 'east' has 1 plot"),
        (_negative_area, r"sample 'project': stratum 'west' has area -8.0 ha"),
    ],
)
def test_bad_design_inputs_are_refused_naming_the_file_and_field(
    scene: dict, spoil, message
) -> None:
    spoil(scene)
    with pytest.raises(InputDataError, match=message):
        _run(scene)


def test_a_methodology_that_credits_some_strata_gets_their_domain_estimate(scene: dict) -> None:
    # a methodology crediting the "west" forest type: the project sample's west stratum is
    # a simple random sample of it, so the domain's stratified change is 8 ha x the mean
    # of the west plots' differences, and its SE that stratum's alone (n_h - 1 df)
    job = replace(JOB, domains=(("m-west", ("west",)), ("m-both", ("west", "east", "x")),
                                ("m-none", ("north",))))  # fmt: skip
    out = _outputs(scene, job)[ESTIMATES_RELPATH]
    # a domain of every stratum, or of none, adds nothing: the sample's rows serve
    assert set(out["sample"]) == {"project", "project:m-west"}
    a, b = _by_hand(scene, "2019"), _by_hand(scene, "2024")
    d = ((b["y"] - a["y"]) * co2_per_c())[a["west"]]
    rows = out[out["sample"] == "project:m-west"].set_index(["quantity", "estimator"])
    row = rows.loc[("change_2019_2024", "stratified")]
    assert row["total"] == pytest.approx(8.0 * d.mean(), rel=1e-9)
    assert row["se"] == pytest.approx(8.0 * d.std(ddof=1) / np.sqrt(d.size), rel=1e-9)
    assert row["df"] == d.size - 1
    assert row["area_ha"] == pytest.approx(8.0)
    assert row["n_plots"] == d.size
    assert "strata that m-west credits: west" in row["note"]
    # the project rule is chosen for the domain's change, as for the sample's
    assert rows.loc[("change_2019_2024", "greg"), "chosen"]


def test_the_inventory_outside_the_project_plus_the_project_sample_estimate_the_union(
    scene: dict,
) -> None:
    # the region's inventory over the whole grid (one stratum, 16 ha, 7 plots) and the
    # project's sample over the west half (8 ha): "inventory+project" is the inventory's
    # estimate of the east half (its 2 west plots count as 0) plus the project's of the
    # west, variances added (two independent samples of disjoint parts)
    rng = np.random.default_rng(11)
    corners = [(3, 25), (12, 33), (21, 22), (36, 28), (28, 37), (8, 3), (30, 14)]
    m = np.nan_to_num(scene["maps"]["2019"])
    inventory = gpd.GeoDataFrame(
        {"plot_id": [f"I{i}" for i in range(len(corners))], "sample": "inventory",
         "stratum": "all"},
        geometry=[_square(r, c) for r, c in corners], crs="EPSG:32650",
    )  # fmt: skip
    y_inv = np.array([m[_cells(r, c)].mean() for r, c in corners]) + rng.normal(0, 5, 7)
    project = scene["plots"][scene["plots"]["stratum"] == "west"].assign(stratum="w")
    west = scene["frames"].iloc[[0]].assign(stratum="w")
    whole = gpd.GeoDataFrame(
        {"sample": ["inventory"], "stratum": ["all"], "area_ha": [16.0]},
        geometry=[box(X0, Y1 - 400, X0 + 400, Y1)], crs="EPSG:32650",
    )  # fmt: skip
    biomass = pd.concat(
        [scene["biomass"], *(pd.DataFrame({"plot_id": inventory["plot_id"], "epoch": e,
                                           "carbon_mg_ha": y_inv + k})
                             for k, e in enumerate(EPOCHS))],
    )  # fmt: skip
    out = estimate(
        JOB,
        plot_biomass=biomass,
        plot_locations=pd.concat([project, inventory], ignore_index=True),
        design=pd.concat([west, whole], ignore_index=True),
        carbon={e: _raster(scene["maps"][e]) for e in EPOCHS},
    )[ESTIMATES_RELPATH]
    rows = out[out["sample"] == "inventory+project"].set_index(["quantity", "estimator"])
    in_east = np.arange(7) < 5  # the first five inventory plots lie in the east half
    z = np.where(in_east, y_inv, 0.0)
    h = _by_hand(scene, "2019")
    y_west = h["y"][h["west"]]
    row = rows.loc[("stock_2019", "stratified")]
    assert row["total"] == pytest.approx(16.0 * z.mean() + 8.0 * y_west.mean(), rel=1e-9)
    v = np.array([256.0 * z.var(ddof=1) / 7, 64.0 * y_west.var(ddof=1) / y_west.size])
    assert row["se"] == pytest.approx(np.sqrt(v.sum()), rel=1e-9)
    df = v.sum() ** 2 / (v[0] ** 2 / 6 + v[1] ** 2 / (y_west.size - 1))  # Satterthwaite
    assert row["df"] == pytest.approx(df, rel=1e-9)
    assert row["area_ha"] == pytest.approx(16.0) and row["n_plots"] == 7 + y_west.size
    assert "5 of its 7 plots" in row["note"]
    # the difference estimator: the map's total over each part plus the plots' residuals
    m_inv = np.where(in_east, [m[_cells(r, c)].mean() for r, c in corners], 0.0)
    diff = 8.0 * m[:, 20:].mean() + 16.0 * (z - m_inv).mean()
    diff += 8.0 * (h["M"][0] + (y_west - h["m"][h["west"]]).mean())
    assert rows.loc[("stock_2019", "difference"), "total"] == pytest.approx(diff, rel=1e-9)
    # the inventory trained the map (no cross-fitting here): its plot-only sum is chosen
    assert rows.loc[("stock_2019", "stratified"), "chosen"]
    assert not rows.loc[("stock_2019", "difference"), "chosen"]


def test_a_plot_over_the_grid_edge_sees_the_map_over_its_whole_square(scene: dict) -> None:
    """A buffer-method plot half beyond the grid's west edge: its density is its tally over
    the whole square, so the map's value there must be too (cells beyond the grid, outside
    every frame, as 0); then plot values equal to the map make the difference estimate the
    map's total exactly, with no residual."""
    scene["frames"]["centre_area_ha"] = [8.4, 8.4]
    corners = scene["corners"] + [(10, -1), (30, -1)]
    strata = ["west" if c < 20 else "east" for _, c in corners]
    scene["plots"] = gpd.GeoDataFrame(
        {"plot_id": [f"J{i}" for i in range(len(corners))], "sample": "project",
         "stratum": strata},
        geometry=[_square(r, c) for r, c in corners], crs="EPSG:32650",
    )  # fmt: skip
    rows = []
    for e in EPOCHS:
        m = np.pad(np.nan_to_num(scene["maps"][e]), ((0, 0), (1, 0)))  # a column beyond
        west = np.arange(N + 1) < 21
        for pid, (r, c), s in zip(scene["plots"]["plot_id"], corners, strata, strict=True):
            inside = west if s == "west" else ~west
            v = (m * inside[None, :])[_cells(r, c + 1)].mean()  # over the whole square
            rows.append({"plot_id": pid, "epoch": e, "carbon_mg_ha": v})
    scene["biomass"] = pd.DataFrame(rows)
    diff = _run(scene).loc[("stock_2019", "difference")]
    assert diff["total"] == pytest.approx(diff["map_total"], rel=1e-9)
    assert diff["se"] == pytest.approx(0.0, abs=1e-6 * diff["map_total"])


def test_an_estimator_that_cannot_run_outside_the_project_is_refused_naming_the_sum(
    scene: dict,
) -> None:
    # the project's frame is the inventory's whole east stratum, so every east inventory
    # plot counts as 0 in the inventory's part outside the project: GREG has no varying
    # map values to fit there, though it runs on the inventory and the project alone
    inputs = _cross_fit_inputs(scene, (0.0, 0.0))
    corners = [(3, 25), (20, 30), (35, 36)]
    project = gpd.GeoDataFrame(
        {"plot_id": ["Q0", "Q1", "Q2"], "sample": "project", "stratum": "east"},
        geometry=[_square(r, c) for r, c in corners], crs="EPSG:32650",
    )  # fmt: skip
    rows = [{"plot_id": p, "epoch": e, "carbon_mg_ha": 40.0 + 10 * i + k}
            for k, e in enumerate(EPOCHS) for i, p in enumerate(project["plot_id"])]  # fmt: skip
    with pytest.raises(InputDataError, match=r"sample 'inventory\+project'.*'greg'"):
        estimate(
            replace(JOB, cross_fit=True),
            plot_biomass=pd.concat([scene["biomass"], pd.DataFrame(rows)]),
            plot_locations=pd.concat([scene["plots"], project], ignore_index=True),
            design=pd.concat(
                [scene["frames"], scene["frames"].iloc[[1]].assign(sample="project")],
                ignore_index=True,
            ),
            carbon={e: _raster(scene["maps"][e]) for e in EPOCHS},
            **inputs,
        )
