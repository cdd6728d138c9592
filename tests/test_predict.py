"""The model and predict stages end to end on seeded synthetic rasters with known truth.

LiDAR covers the western half of the grid in the first epoch; plots are scattered over
the whole grid. Checks: the stage outputs and model card, LiDAR-assisted upscaling and
the model-source band, the carbon conversion, Dask == in-memory, and determinism.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickle
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from scipy.ndimage import uniform_filter
from shapely.geometry import box
from synthetic_landscape import make_landscape

from models.biomass import (
    SOURCE_LIDAR,
    SOURCE_NONE,
    SOURCE_SATELLITE_COMMON,
    SOURCE_SATELLITE_PLOTS,
    SOURCE_SATELLITE_UPSCALED,
    calibrate_conformal,
)
from models.spatial_error import Correlogram
from pipeline.config import ModelParams, PredictParams, SinkParams
from pipeline.contracts import (
    ERROR_CORRELOGRAM_RELPATH,
    FOLD_MAPS_RELPATH,
    MAP_COVERAGE_RELPATH,
    MODEL_CARD_RELPATH,
    MODELS_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    PLOT_FEATURES_RELPATH,
    TERRAIN_RELPATH,
    SinkJob,
    load_models,
    map_relpath,
)
from pipeline.errors import InputDataError, PipelineWarning
from pipeline.features import terrain_features
from pipeline.map_errors import lidar_residuals
from pipeline.parcel_sums import parcel_sink_table
from pipeline.samples import epoch_stack, plot_table, satellite_stacks
from pipeline.stages.model import ModelJob, model
from pipeline.stages.parcels import parcels_stage
from pipeline.stages.predict import (
    FLOAT_LAYERS,
    INT_LAYERS,
    INT_NODATA,
    PredictJob,
    predict,
    predict_block,
)

CRS = "EPSG:32650"
RES = 10.0
X0, Y0 = 600_000.0, 2_960_000.0
EPOCHS = ("2019", "2024")
N = 80


def raster(layers: dict[str, np.ndarray], chunks: int = 32) -> xr.DataArray:
    names = list(layers)
    x = X0 + (np.arange(N) + 0.5) * RES
    y = Y0 - (np.arange(N) + 0.5) * RES
    data = np.stack([layers[n] for n in names]).astype(np.float32)
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": names, "y": y, "x": x})
    return da.rio.write_crs(CRS).chunk({"band": 1, "y": chunks, "x": chunks})


@pytest.fixture(scope="module")
def scene() -> dict[str, object]:
    land = make_landscape(11, n=N, cell_m=RES)
    f = land.features
    rng = np.random.default_rng(11)
    comps = {}
    for i, e in enumerate(EPOCHS):
        comps[e] = raster(
            {
                "red": 0.08 - 0.05 * f["ndvi"] + rng.normal(0, 0.003, (N, N)),
                "ndvi": f["ndvi"] + 0.01 * i,
                "nbr": f["nbr"],
                "n_valid": np.full((N, N), 12.0 + i),
            }
        )
    aspect = np.mod(np.degrees(np.arctan2(*np.gradient(f["elevation"]))), 360.0)
    terrain = raster(
        {"elevation": f["elevation"], "slope_deg": f["slope_deg"], "aspect_deg": aspect}
    )
    frac = np.zeros((N, N))
    frac[:, : N // 2] = 1.0
    lidar_layers = {k: np.where(frac > 0, f[k], np.nan) for k in ("h_mean", "h_p95", "cover_2m")}
    lidar_layers["density_pts_m2"] = np.where(frac > 0, 12.0, np.nan)
    lidar_layers["lidar_fraction"] = frac
    lidar = raster(lidar_layers)
    # plots: 0.0667 ha squares centred on random cells; plot AGB = mean truth over the
    # square's 3 x 3 cells (25.8 m on a 10 m grid) + 5 % measurement noise
    plot_truth = uniform_filter(land.agb_mg_ha, size=3, mode="nearest")
    centres = rng.integers(2, N - 2, size=(90, 2))
    polys, rows = [], []
    for k, (r, c) in enumerate(centres):
        cx, cy = X0 + (c + 0.5) * RES, Y0 - (r + 0.5) * RES
        polys.append(box(cx - 12.91, cy - 12.91, cx + 12.91, cy + 12.91))
        for e in EPOCHS:
            agb = plot_truth[r, c] * (1 + 0.05 * rng.standard_normal())
            rs = rng.uniform(0.2, 0.3)  # test data: plot-level root-to-shoot varies by plot
            bgb = agb * rs
            carbon = (agb + bgb) * rng.uniform(0.45, 0.5)
            rows.append((f"P{k:03d}", e, agb, 0.1 * agb, bgb, carbon, carbon * 3.6667))
    plot_biomass = pd.DataFrame(
        rows,
        columns=[
            "plot_id",
            "epoch",
            "agb_mg_ha",
            "agb_sd_mg_ha",
            "bgb_mg_ha",
            "carbon_mg_ha",
            "co2e_t_ha",
        ],
    )
    plots = gpd.GeoDataFrame(
        {"plot_id": [f"P{k:03d}" for k in range(len(centres))]}, geometry=polys, crs=CRS
    )
    params = ModelParams(
        cv_block_m=200.0,
        rf_n_estimators=60,
        gb_max_iter=60,
        upscale_spacing_m=30.0,
        min_lidar_plots=20,
        satellite_training="lidar_upscaled",
        fold_map_cells=N * N // 9,  # every third cell in each direction
    )
    job = ModelJob(
        params=params,
        epochs=EPOCHS,
        seed=7,
        crs=CRS,
        forest_land_classes=PredictParams().forest_land_classes,
        fold_maps=True,  # as with stages.estimate.cross_fit: true
    )
    inputs = {
        "plot_biomass": plot_biomass,
        "plot_locations": plots,
        "composites": comps,
        "terrain": terrain,
        "lidar_metrics": lidar,
        # the same half flown again at the last epoch (the scene does not change)
        "lidar_repeat": {"2024": lidar},
    }
    out = model(job, **inputs)
    return {"land": land, "job": job, "inputs": inputs, "out": out}


def test_model_stage_outputs_and_card(scene: dict) -> None:
    out = scene["out"]
    assert set(out) == {
        MODEL_CARD_RELPATH, PLOT_FEATURES_RELPATH, FOLD_MAPS_RELPATH, MODELS_RELPATH,
    }  # fmt: skip
    card = out[MODEL_CARD_RELPATH]
    assert card["satellite_source"] == "lidar_upscaled" and card["lidar_epoch"] == "2019"
    lid = card["lidar_model"]
    assert set(lid["candidates"]) == {"powerlaw", "random_forest", "gradient_boosting"}
    for res in lid["candidates"].values():
        assert {"rmse_mg_ha", "rel_rmse", "bias_mg_ha", "r2"} <= set(res["spatial_cv"])
    assert {"rmse_mg_ha", "rel_rmse", "bias_mg_ha", "r2"} <= set(
        lid["candidates"][lid["chosen"]]["random_cv"]
    )
    assert card["satellite_model"]["candidates"]["powerlaw"] == {
        "skipped": "needs LiDAR height and cover features"
    }
    training = card["satellite_model"]["training"]
    assert training["source"] == "lidar_upscaled" and training["n_plots"] == 0
    assert training["lidar_sample"]["n"] > 100
    assert card["satellite_model"]["n_auxiliary"] == training["lidar_sample"]["n"]
    # held-out pairs for the report are field plots for both models: the LiDAR-map
    # sample trains the satellite model but is never scored
    pairs = lid["cv_predictions"]
    assert len(pairs) == card["lidar_plots"]
    assert {"observed", "predicted", "x", "y"} <= set(pairs[0])
    assert len(card["satellite_model"]["cv_predictions"]) == 2 * 90
    table = out[PLOT_FEATURES_RELPATH]
    assert {"ndvi", "northness", "h_mean", "lidar_fraction", "agb_mg_ha"} <= set(table.columns)
    # LiDAR metrics at both flights' epochs, only inside the cover; the plots of both
    # train the LiDAR model
    share = table["lidar_flight_fraction"]
    assert table.loc[share == 0, "h_mean"].isna().all()
    assert table.loc[share >= 0.95, "h_mean"].notna().all()
    by_epoch = card["lidar_plots_by_epoch"]
    assert by_epoch["2019"] == by_epoch["2024"] == card["lidar_plots"] / 2 > 20
    pb = scene["inputs"]["plot_biomass"]
    conv = card["conversion"]
    assert conv["root_to_shoot"] == pytest.approx(pb["bgb_mg_ha"].sum() / pb["agb_mg_ha"].sum())
    assert conv["carbon_fraction"] == pytest.approx(
        pb["carbon_mg_ha"].sum() / (pb["agb_mg_ha"] + pb["bgb_mg_ha"]).sum()
    )


@pytest.fixture(scope="module")
def maps(scene: dict) -> dict[str, xr.DataArray]:
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    inp = scene["inputs"]
    return predict(pjob, models=scene["out"][MODELS_RELPATH], **inp_maps(inp))


def test_predict_outputs_are_lazy_with_crs_and_model_source(maps: dict) -> None:
    names = {"agb", "agb_sd", "agb_interval", "carbon", "carbon_sd", "co2e", "quality"}
    assert set(maps) == {map_relpath(n, e) for n in names for e in EPOCHS} | {MAP_COVERAGE_RELPATH}
    # no parcel layer: every cell counts; half LiDAR (flown at both epochs), half satellite
    cov = maps[MAP_COVERAGE_RELPATH]["epochs"]
    assert cov["2019"]["cells"] == N * N and cov["2019"]["cells_are"] == "all cells"
    by19, by24 = cov["2019"]["by_model_source"], cov["2024"]["by_model_source"]
    assert by19[str(SOURCE_LIDAR)]["cells"] == by19[str(SOURCE_SATELLITE_UPSCALED)]["cells"]
    assert by24[str(SOURCE_LIDAR)]["cells"] == by24[str(SOURCE_SATELLITE_UPSCALED)]["cells"]
    assert by24[str(SOURCE_NONE)]["cells"] == by24[str(SOURCE_SATELLITE_COMMON)]["cells"] == 0
    agb = maps[map_relpath("agb", "2019")]
    assert agb.chunks is not None and agb.rio.crs.to_string() == CRS
    assert agb.attrs["units"] == "Mg/ha"
    q19 = maps[map_relpath("quality", "2019")].compute()
    assert list(q19["band"].to_numpy()) == ["model_source", "n_valid", "good"]
    src = q19.sel(band="model_source").to_numpy()
    assert (src[:, : N // 2] == SOURCE_LIDAR).all()
    assert (src[:, N // 2 :] == SOURCE_SATELLITE_UPSCALED).all()
    assert (q19.sel(band="n_valid").to_numpy() == 12).all()
    q24 = maps[map_relpath("quality", "2024")].sel(band="model_source").compute().to_numpy()
    np.testing.assert_array_equal(q24, src)
    good = q19.sel(band="good").to_numpy()
    sd = maps[map_relpath("agb_sd", "2019")].compute()
    assert list(sd["band"].to_numpy()) == ["agb_sd", "agb_sd_support"]
    rel = sd.sel(band="agb_sd_support").to_numpy() / maps[map_relpath("agb", "2019")].to_numpy()[0]
    # the flag judges the window estimate, not the cell's within-window variation
    np.testing.assert_array_equal(good == 1, rel < 0.2)


def test_fold_maps_are_the_predict_stages_map_and_its_fold_models_at_a_systematic_sample(
    scene: dict, maps: dict
) -> None:
    """``model/fold_maps.csv``: at every third cell of the grid (no parcel layer: all land),
    the map's AGB as the predict stage maps it, and per fold the map with the fold models
    (LiDAR model in its cover at 2019, the satellite model trained on the LiDAR sample alone
    elsewhere, which the plots never trained: there the fold maps are the map)."""
    out = scene["out"]
    cells, record = out[FOLD_MAPS_RELPATH], out[MODEL_CARD_RELPATH]["fold_maps"]
    assert record["spacing_cells"] == 3 and record["inclusion_probability"] == pytest.approx(1 / 9)
    assert record["cell_ha"] == pytest.approx(RES * RES / 1e4)
    folds = [c for c in cells.columns if c.startswith("agb_fold_")]
    assert len(folds) == record["n_folds"] >= 2
    for e in EPOCHS:
        part = cells[cells["epoch"] == e]
        assert len(part) == record["forest_cells"][e] == record["grid_cells"]
        assert (N // 3) ** 2 <= len(part) <= (N // 3 + 1) ** 2
        agb = maps[map_relpath("agb", e)]
        at = agb.sel(
            x=xr.DataArray(part["x_m"].to_numpy(), dims="cell"),
            y=xr.DataArray(part["y_m"].to_numpy(), dims="cell"),
        ).compute()
        np.testing.assert_allclose(part["agb_mg_ha"], at.to_numpy()[0], rtol=1e-5)
        q = maps[map_relpath("quality", e)].sel(band="model_source")
        source = q.sel(
            x=xr.DataArray(part["x_m"].to_numpy(), dims="cell"),
            y=xr.DataArray(part["y_m"].to_numpy(), dims="cell"),
        ).compute()
        np.testing.assert_array_equal(part["model_source"], source.to_numpy())
        satellite = (part["model_source"] == SOURCE_SATELLITE_UPSCALED).to_numpy()
        shift = part[folds].to_numpy() - part[["agb_mg_ha"]].to_numpy()
        assert (shift[satellite] == 0.0).all()
        if e == "2019":  # the LiDAR model's fold models differ from it in its cover
            assert (~satellite).any() and (np.abs(shift[~satellite]) > 0).mean() > 0.9


def test_carbon_and_co2e_follow_the_conversion_factors(scene: dict, maps: dict) -> None:
    conv = scene["out"][MODEL_CARD_RELPATH]["conversion"]
    agb = maps[map_relpath("agb", "2024")].compute().to_numpy()
    carbon = maps[map_relpath("carbon", "2024")].compute().to_numpy()
    sd = maps[map_relpath("agb_sd", "2024")].compute().to_numpy()
    c_sd = maps[map_relpath("carbon_sd", "2024")].compute().to_numpy()
    co2e = maps["rasters/co2e_2024.tif"].compute().to_numpy()
    f = (1 + conv["root_to_shoot"]) * conv["carbon_fraction"]
    np.testing.assert_allclose(carbon, agb * f, rtol=1e-5)
    np.testing.assert_allclose(c_sd, sd * f, rtol=1e-5)
    np.testing.assert_allclose(co2e, carbon * conv["co2e_per_c"], rtol=1e-5)
    assert conv["co2e_per_c"] == pytest.approx(3.6667, rel=1e-6)  # what the test table used


def test_dask_prediction_equals_in_memory_prediction(scene: dict, maps: dict) -> None:
    inp = scene["inputs"]
    bundle = pickle.loads(scene["out"][MODELS_RELPATH])
    stack = epoch_stack(
        inp["composites"]["2019"],
        terrain_features(inp["terrain"], source=TERRAIN_RELPATH),
        inp["lidar_metrics"],
        epoch="2019",
        support_px=bundle["support_px"],
    )
    window = dict(y=slice(20, 45), x=slice(25, 60))  # straddles LiDAR edge and chunk borders
    numpy_stack = stack.isel(**window).compute().to_numpy()
    ref = predict_block(
        numpy_stack,
        names=[str(b) for b in stack["band"].to_numpy()],
        mapper=bundle["mapper"],
        epoch="2019",
        conversion=bundle["conversion"],
        good_relative_error=0.2,
    )
    layers = (*FLOAT_LAYERS, *INT_LAYERS)
    dask_agb = maps[map_relpath("agb", "2019")].isel(**window).compute().to_numpy()[0]
    np.testing.assert_array_equal(dask_agb, ref[layers.index("agb")])
    dask_hi = maps[map_relpath("agb_interval", "2019")].isel(**window).compute().to_numpy()[1]
    np.testing.assert_array_equal(dask_hi, ref[layers.index("agb_upper")])


def test_same_seed_same_model_bytes_and_maps(scene: dict, maps: dict) -> None:
    again = model(scene["job"], **scene["inputs"])
    assert again[MODEL_CARD_RELPATH] == scene["out"][MODEL_CARD_RELPATH]
    m1 = pickle.loads(scene["out"][MODELS_RELPATH])["mapper"]
    m2 = pickle.loads(again[MODELS_RELPATH])["mapper"]
    table = scene["out"][PLOT_FEATURES_RELPATH]
    p1, _ = m1.predict(table, epoch="2019")
    p2, _ = m2.predict(table, epoch="2019")
    np.testing.assert_array_equal(p1.mean, p2.mean)
    np.testing.assert_array_equal(p1.sd, p2.sd)


def test_upscaled_map_error_and_interval_coverage_against_truth(scene: dict, maps: dict) -> None:
    # the maps estimate AGB at plot support (the 3 x 3 cells a plot square covers), which
    # is what the plots measured and the intervals were calibrated on
    truth = uniform_filter(scene["land"].agb_mg_ha, size=3, mode="nearest")
    agb = maps[map_relpath("agb", "2019")].compute().to_numpy()[0]
    sd = maps[map_relpath("agb_sd", "2019")].sel(band="agb_sd_support").compute().to_numpy()
    interval = maps[map_relpath("agb_interval", "2019")].compute()
    lo, hi = (interval.sel(band=f"agb_{b}_support").to_numpy() for b in ("lower", "upper"))
    inside = (truth >= lo) & (truth <= hi)
    # a single cell's interval adds the within-window variation and covers the cell
    cell = scene["land"].agb_mg_ha
    lo_c, hi_c = (interval.sel(band=f"agb_{b}").to_numpy() for b in ("lower", "upper"))
    inside_cell = (cell >= lo_c) & (cell <= hi_c)
    assert 0.85 <= inside_cell.mean() <= 0.95
    assert (lo_c <= lo).all() and (hi_c >= hi).all()
    west, east = np.s_[:, : N // 2], np.s_[:, N // 2 :]
    rmse = {
        k: float(np.sqrt(np.mean((agb - truth)[s] ** 2)))
        for k, s in (("lidar", west), ("sat", east))
    }
    mean_sd = {k: float(np.sqrt(np.mean(sd[s] ** 2))) for k, s in (("lidar", west), ("sat", east))}
    print(
        f"coverage all={inside.mean():.3f} LiDAR={inside[west].mean():.3f}",
        f"upscaled={inside[east].mean():.3f}",
    )
    print(f"rmse={rmse} rms_sd={mean_sd}")
    assert 0.85 <= inside.mean() <= 0.95
    # the LiDAR model is the better one, and the maps' SD says so
    assert rmse["lidar"] < rmse["sat"]
    assert mean_sd["lidar"] < mean_sd["sat"]
    # the SDs are of the right size in both parts (within a factor 1.5 of the true RMSE)
    for k in rmse:
        assert rmse[k] / 1.5 <= mean_sd[k] <= rmse[k] * 1.5, k


def test_fit_and_predict_commands_write_cogs(scene: dict, tmp_path: Path) -> None:
    import argparse

    import rasterio

    from pipeline import io
    from pipeline.commands import fit as fit_cmd
    from pipeline.commands import predict as predict_cmd

    inp = scene["inputs"]
    files = {
        "c19": (tmp_path / "in/2019.tif", inp["composites"]["2019"]),
        "c24": (tmp_path / "in/2024.tif", inp["composites"]["2024"]),
        "terrain": (tmp_path / "in/terrain.tif", inp["terrain"]),
        "lidar": (tmp_path / "in/metrics.tif", inp["lidar_metrics"]),
        "pb": (tmp_path / "in/plot_biomass.csv", inp["plot_biomass"]),
        "plots": (tmp_path / "in/plots.gpkg", inp["plot_locations"]),
    }
    for path, obj in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_output(obj, path)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    fit_cmd.register(sub)
    predict_cmd.register(sub)
    comps = ["--composite", f"2019={files['c19'][0]}", "--composite", f"2024={files['c24'][0]}"]
    common = [
        *comps,
        "--terrain",
        str(files["terrain"][0]),
        "--lidar-metrics",
        str(files["lidar"][0]),
    ]
    args = parser.parse_args(
        [
            *("fit", "--plot-biomass", str(files["pb"][0]), "--plots", str(files["plots"][0])),
            *common,
            *("--cv-block-m", "200", "--seed", "7", "--out", str(tmp_path / "run")),
        ]
    )
    assert args.func(args) == 0
    card = json.loads((tmp_path / "run" / MODEL_CARD_RELPATH).read_text())
    # the command compares every training source at the plots and keeps the best
    compared = card["satellite_model"]["training"]["sources_compared"]
    assert set(compared) == {"plots", "lidar_upscaled", "plots+lidar_upscaled"}
    best = min(compared, key=lambda s: compared[s]["spatial_cv_rmse_mg_ha"])
    assert card["satellite_source"] == best
    models = tmp_path / "run" / MODELS_RELPATH
    args = parser.parse_args(
        ["predict", "--models", str(models), *common, "--out", str(tmp_path / "run")]
    )
    assert args.func(args) == 0
    with rasterio.open(tmp_path / "run" / map_relpath("carbon", "2024")) as src:
        assert src.descriptions == ("carbon",) and src.crs.to_string() == CRS
        assert src.shape == (N, N) and np.isfinite(src.read(1)).all()
    with rasterio.open(tmp_path / "run" / map_relpath("quality", "2019")) as src:
        assert src.descriptions == ("model_source", "n_valid", "good")
    bad = parser.parse_args(
        ["predict", "--models", str(tmp_path / "nope.pkl"), *common, "--out", "x"]
    )
    with pytest.raises(InputDataError, match=r"nope\.pkl: models file not found"):
        bad.func(bad)


@pytest.mark.parametrize("chunk_px", [9, 23, 80])
def test_maps_do_not_depend_on_chunking(scene: dict, maps: dict, chunk_px: int) -> None:
    inp = scene["inputs"]
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)

    def rechunk(da: xr.DataArray) -> xr.DataArray:
        return da.chunk({"band": 1, "y": chunk_px, "x": chunk_px})

    out = predict(
        pjob,
        models=scene["out"][MODELS_RELPATH],
        composites={e: rechunk(c) for e, c in inp["composites"].items()},
        terrain=rechunk(inp["terrain"]),
        lidar_metrics=rechunk(inp["lidar_metrics"]),
        lidar_repeat={e: rechunk(m) for e, m in inp["lidar_repeat"].items()},
    )
    assert out[map_relpath("agb", "2019")].chunks[1][0] == chunk_px
    for key in (
        map_relpath("agb", "2019"),
        map_relpath("agb_sd", "2019"),
        map_relpath("quality", "2019"),
    ):
        np.testing.assert_array_equal(out[key].to_numpy(), maps[key].to_numpy())


def test_without_lidar_the_satellite_model_learns_from_plots(scene: dict) -> None:
    inp = {k: v for k, v in scene["inputs"].items() if k not in ("lidar_metrics", "lidar_repeat")}
    job = scene["job"]
    params = job.params.model_copy(update={"satellite_training": "auto"})
    out = model(dataclasses.replace(job, params=params), **inp)
    card = out[MODEL_CARD_RELPATH]
    assert card["satellite_source"] == "plots" and "lidar_model" not in card
    training = card["satellite_model"]["training"]
    assert training["source"] == "plots" and training["n_plots"] == 180
    assert set(training["sources_compared"]) == {"plots"}
    assert len(card["satellite_model"]["cv_predictions"]) == 180
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    maps = predict(
        pjob, models=out[MODELS_RELPATH], composites=inp["composites"], terrain=inp["terrain"]
    )
    src = maps[map_relpath("quality", "2019")].sel(band="model_source").to_numpy()
    assert (src == SOURCE_SATELLITE_PLOTS).all()


def test_monitoring_plots_calibrate_the_sds_and_leave_the_maps_alone(scene: dict) -> None:
    # 30 of the 90 plots are a project's monitoring sample: the model stage trains on the
    # other 60 exactly as if the 30 were absent, and pools the final map's residuals at
    # them with the held-out residuals in the SD calibration and the epochs' correlation
    inp = {k: v for k, v in scene["inputs"].items() if k not in ("lidar_metrics", "lidar_repeat")}
    job = scene["job"]
    job = dataclasses.replace(
        job, params=job.params.model_copy(update={"satellite_training": "plots"})
    )
    plots = inp["plot_locations"]
    project = plots["plot_id"].isin(plots["plot_id"].iloc[::3])
    sampled = plots.assign(
        sample=np.where(project, "project", "inventory"),
        stratum=np.where(project, "all", "region"),
    )
    # the project's frame: the whole scene but the left half of the first monitoring
    # plot's square, which therefore straddles the frame's edge (buffer method) and is
    # left out of the calibration: its value would not be its square's
    first = plots.geometry[project].iloc[0]
    cut = box(first.bounds[0] - 1.0, first.bounds[1] - 1.0, first.centroid.x, first.bounds[3] + 1.0)
    scene_box = box(*gpd.GeoSeries(plots.geometry).total_bounds).buffer(100.0)
    design = gpd.GeoDataFrame(
        {"sample": ["project"], "stratum": ["all"], "area_ha": [1.0]},
        geometry=[scene_box.difference(cut)],
        crs=plots.crs,
    )
    straddling = plots.loc[project, "plot_id"].iloc[0]
    card_of = {}
    mapper_of = {}
    for name, locations in (("with", sampled), ("without", plots[~project])):
        biomass = inp["plot_biomass"]
        extra = {"design": design} if name == "with" else {}
        if name == "without":
            biomass = biomass[biomass["plot_id"].isin(locations["plot_id"])]
        out = model(job, **{**inp, "plot_locations": locations, "plot_biomass": biomass, **extra})
        card_of[name] = out[MODEL_CARD_RELPATH]
        mapper_of[name] = pickle.loads(out[MODELS_RELPATH])["mapper"]
        if name == "without":
            features = out[PLOT_FEATURES_RELPATH]
    with_, without = card_of["with"], card_of["without"]
    assert with_["independent_plots"]["n_plot_epochs"] == 58  # 30 plots x 2 epochs, less one
    assert with_["independent_plots"]["n_straddling_plots_left_out"] == 1
    assert without["independent_plots"]["use"].startswith("none")
    assert (
        with_["satellite_model"]["cv_predictions"] == without["satellite_model"]["cv_predictions"]
    )
    unc = with_["satellite_model"]["uncertainty"]
    assert unc["n_held_out"] == 120 and unc["n_independent"] == 58
    assert "n_independent" not in without["satellite_model"]["uncertainty"]
    # the maps' values are the same; only their SDs took the monitoring plots' residuals
    m_with, m_without = mapper_of["with"], mapper_of["without"]
    for e in EPOCHS:
        rows = features[features["epoch"] == e]
        a, _ = m_with.predict(rows, epoch=e)
        b, _ = m_without.predict(rows, epoch=e)
        np.testing.assert_array_equal(a.mean, b.mean)
    # the pooled calibration is the held-out residuals' (in the training rows' order) plus
    # the monitoring plots', each predicted by the final satellite model with its offset
    held = pd.DataFrame(without["satellite_model"]["cv_predictions"])
    off = m_without.epoch_offsets
    shift = np.array([off.get(e, 0.0) for e in features["epoch"].astype(str)])
    _, stacks, _ = satellite_stacks(
        inp["composites"], terrain_features(inp["terrain"], source=TERRAIN_RELPATH), None,
        class_column=None,
    )  # fmt: skip
    whole = project & (plots["plot_id"] != straddling)
    bio = inp["plot_biomass"][inp["plot_biomass"]["plot_id"].isin(plots.loc[whole, "plot_id"])]
    mon = plot_table(bio.assign(epoch=bio["epoch"].astype(str)), stacks, plots[whole])
    mon_shift = np.array([off.get(e, 0.0) for e in mon["epoch"]])
    expected = calibrate_conformal(
        np.concatenate([held["observed"].to_numpy(), mon["agb_mg_ha"].to_numpy()]),
        np.concatenate(
            [
                np.clip(held["predicted"].to_numpy() + shift, 0, None),
                np.clip(m_without.satellite.model.predict(mon) + mon_shift, 0, None),
            ]
        ),
        interval=job.params.interval,
    )
    got = m_with.satellite.calibration
    for name in ("s0", "s1", "sigma_floor", "k_sd", "q_lo", "q_hi", "edges"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9)
    assert got.n_per_bin == expected.n_per_bin and got.n == 178
    assert m_with.satellite.calibration != m_without.satellite.calibration


def test_maps_cover_forest_land_parcels_only(scene: dict, maps: dict) -> None:
    inp = scene["inputs"]
    minx, miny, maxx, maxy = inp["terrain"].rio.bounds()
    mid = minx + 30 * RES  # a cell edge: 30 columns of forest land, the rest farmland
    parcels = gpd.GeoDataFrame(
        {"land_class": ["forest", "farmland"]},
        geometry=[box(minx, miny, mid, maxy), box(mid, miny, maxx, maxy)],
        crs=CRS,
    )
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    out = predict(pjob, models=scene["out"][MODELS_RELPATH], **inp_maps(inp), parcels=parcels)
    for key in (map_relpath("agb", "2019"), map_relpath("carbon_sd", "2024")):
        masked, full = out[key].to_numpy()[0], maps[key].to_numpy()[0]
        assert np.isnan(masked[:, 30:]).all()  # farmland: no value
        np.testing.assert_array_equal(masked[:, :30], full[:, :30])  # forest keeps its values
    q = out[map_relpath("quality", "2019")].sel(band="model_source").to_numpy()
    assert (q[:, 30:] == SOURCE_NONE).all() and (q[:, :30] > 0).all()
    n_valid = out[map_relpath("quality", "2019")].sel(band="n_valid").to_numpy()
    assert (n_valid[:, 30:] == INT_NODATA).all()
    with pytest.raises(InputDataError, match="no column 'land_class'"):
        predict(
            pjob,
            models=scene["out"][MODELS_RELPATH],
            **inp_maps(inp),
            parcels=parcels.rename(columns={"land_class": "lc"}),
        )


def test_parcels_judged_not_yet_forest_hold_the_baseline_stock_at_that_epoch(
    scene: dict,
) -> None:
    # the model stage judged parcel B farmland at 2019 (afforested since): its 2019 cells
    # hold the baseline stock, zero with zero SD (model_source 5), so its growth counts in
    # the sink; its 2024 values and parcel A's are the models' own
    inp = scene["inputs"]
    minx, miny, maxx, maxy = inp["terrain"].rio.bounds()
    mid = minx + 30 * RES
    parcels = gpd.GeoDataFrame(
        {"parcel_id": ["A", "B"], "land_class": ["forest", "forest"]},
        geometry=[box(minx, miny, mid, maxy), box(mid, miny, maxx, maxy)],
        crs=CRS,
    )
    bundle = {
        **load_models(scene["out"][MODELS_RELPATH]),
        "non_forest_parcels": {"2019": ["B"]},
    }
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    out = predict(pjob, models=bundle, **inp_maps(inp), parcels=parcels)
    a19, a24 = (out[map_relpath("agb", e)].to_numpy()[0] for e in EPOCHS)
    assert (a19[:, 30:] == 0).all() and (a19[:, :30] > 0).all()
    assert (out[map_relpath("carbon_sd", "2019")].to_numpy()[:, :, 30:] == 0).all()
    source = out[map_relpath("quality", "2019")].sel(band="model_source").to_numpy()
    assert (source[:, 30:] == 5).all() and (source[:, :30] != 5).all()
    assert np.isfinite(a24).all() and (a24 > 0).all()


def inp_maps(inp: dict) -> dict:
    """The predictor inputs of ``predict`` from the scene's inputs."""
    keys = ("composites", "terrain", "lidar_metrics", "lidar_repeat")
    return {k: inp[k] for k in keys if k in inp}


def strips(inp: dict, n: int) -> gpd.GeoDataFrame:
    """``n`` vertical forest parcels covering the scene."""
    minx, miny, maxx, maxy = inp["terrain"].rio.bounds()
    xs = np.linspace(minx, maxx, n + 1)
    return gpd.GeoDataFrame(
        {"parcel_id": [f"S{i}" for i in range(n)], "land_class": "forest"},
        geometry=[box(xs[i], miny, xs[i + 1], maxy) for i in range(n)],
        crs=CRS,
    )


def test_error_model_predicts_like_the_predict_stage_inside_the_cover(
    scene: dict, maps: dict
) -> None:
    # the LiDAR half of the 2019 map replaced by the predict stage's satellite-only map:
    # the error model's satellite prediction there must equal it, residuals all zero
    inp = scene["inputs"]
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    models = scene["out"][MODELS_RELPATH]
    satellite = predict(pjob, models=models, **{**inp_maps(inp), "lidar_metrics": None})
    found = lidar_residuals(
        models,
        composites=inp["composites"],
        terrain=inp["terrain"],
        lidar_metrics=inp["lidar_metrics"],
        quality={e: maps[map_relpath("quality", e)] for e in EPOCHS},
        parcels=strips(inp, 4),
    )
    assert not isinstance(found, str)
    z, labels, cell_m, epoch = found
    assert epoch == "2019" and cell_m == RES and z.shape == (N, N // 2)
    # the residuals are the satellite map minus the LiDAR map (as the predict stage maps
    # the flown half), over the SD of their difference
    lidar_cells = maps[map_relpath("quality", "2019")].sel(band="model_source").to_numpy() == 1
    assert np.isfinite(z).sum() == lidar_cells.sum() == N * N // 2

    def support(out: dict, name: str) -> np.ndarray:
        da = out[map_relpath(name, "2019")]
        return (da.sel(band="agb_sd_support") if name == "agb_sd" else da[0]).to_numpy()

    sat, lid = support(satellite, "agb"), support(maps, "agb")
    expected = (sat - lid) / np.hypot(support(satellite, "agb_sd"), support(maps, "agb_sd"))
    np.testing.assert_allclose(z, expected[:, : N // 2], rtol=1e-4, atol=1e-4)
    assert set(np.unique(labels)) == {1, 2}  # the two strips of the LiDAR half


def parcels_job_and_rasters(maps: dict) -> tuple[SinkJob, dict[str, xr.DataArray]]:
    """The sink job (epoch correlation 0.5) and the six epoch rasters of the parcels stage."""
    job = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.5),
        epochs=EPOCHS,
        reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
    )
    rasters = {
        f"{name}_{role}": maps[map_relpath(name, e)]
        for role, e in zip(("start", "end"), EPOCHS, strict=True)
        for name in ("carbon", "carbon_sd", "quality")
    }
    return job, rasters


def test_parcels_stage_fits_the_error_model_inside_the_lidar_cover(scene: dict, maps: dict) -> None:
    inp = scene["inputs"]
    job, rasters = parcels_job_and_rasters(maps)
    out = parcels_stage(
        job,
        parcels=strips(inp, 8),
        **rasters,
        models=scene["out"][MODELS_RELPATH],
        composites=inp["composites"],
        terrain=inp["terrain"],
        lidar_metrics=inp["lidar_metrics"],
        quality_maps={e: maps[map_relpath("quality", e)] for e in EPOCHS},
    )
    record = out[ERROR_CORRELOGRAM_RELPATH]
    assert "skipped" not in record and record["n_parcels"] == 4
    assert {"nugget", "shared", "range_m", "empirical", "all_pairs"} <= set(record)
    table = out[PARCEL_SINK_CSV_RELPATH]
    assert out[PARCEL_SINK_GPKG_RELPATH].attrs["error_aggregation"] == "spatial"
    sd = table["sink_sd_tco2e_yr"]
    assert (sd <= table["sink_sd_correlated_tco2e_yr"] * (1 + 1e-9)).all()
    assert (sd >= table["sink_sd_independent_tco2e_yr"] * (1 - 1e-9)).all()


def test_parcels_stage_takes_the_shared_parts_from_the_monitoring_plots(
    scene: dict, maps: dict
) -> None:
    # 24 strips with three monitoring plots each: the stocks' and the sink's shared parts
    # come from the plots (the LiDAR fit's nugget and range), and the parcel SDs are the
    # parcel sums' with those two correlograms; without a project sample, the LiDAR fit's
    inp = scene["inputs"]
    job, rasters = parcels_job_and_rasters(maps)
    parcels = strips(inp, 24)
    rng = np.random.default_rng(8)
    centres = [
        (geom.bounds[0] + 16.5, Y0 - 100.0 - 250.0 * k)
        for geom in parcels.geometry
        for k in range(3)
    ]
    plots = gpd.GeoDataFrame(
        {"plot_id": [f"M{i}" for i in range(len(centres))], "sample": "project"},
        geometry=[box(x - 12.9, y - 12.9, x + 12.9, y + 12.9) for x, y in centres],
        crs=CRS,
    )
    effect = np.repeat(rng.normal(0, 20, 24), 3)
    biomass = pd.DataFrame(
        [
            (pid, e, 90.0 + 10 * i + effect[k] + rng.normal(0, 15))
            for k, pid in enumerate(plots["plot_id"])
            for i, e in enumerate(EPOCHS)
        ],
        columns=["plot_id", "epoch", "carbon_mg_ha"],
    )
    common = {
        "parcels": parcels,
        **rasters,
        "models": scene["out"][MODELS_RELPATH],
        "composites": inp["composites"],
        "terrain": inp["terrain"],
        "lidar_metrics": inp["lidar_metrics"],
        "quality_maps": {e: maps[map_relpath("quality", e)] for e in EPOCHS},
    }
    out = parcels_stage(job, **common, plot_locations=plots, plot_biomass=biomass)
    record = out[ERROR_CORRELOGRAM_RELPATH]
    plot_record = record["monitoring_plots"]
    assert plot_record["n_parcels_with_pairs"] == 24 and plot_record["n_plots"] == 72
    assert record["shared"] == plot_record["stocks"]["shared"]
    assert record["shared_lidar"] == plot_record["lidar_shared"]
    stocks = Correlogram(record["nugget"], record["shared"], record["range_m"])
    sink = Correlogram(**record["sink"])
    assert (sink.nugget, sink.range_m) == (stocks.nugget, stocks.range_m)
    assert sink.shared == plot_record["change"]["shared"]
    expected = parcel_sink_table(
        job, parcels=parcels, **rasters, correlogram=stocks, sink_correlogram=sink
    )
    table = out[PARCEL_SINK_CSV_RELPATH]
    for col in ("carbon_sd_2019_mg_c", "carbon_sd_2024_mg_c", "sink_sd_tco2e_yr"):
        np.testing.assert_allclose(table[col], expected[col], rtol=1e-9)
    # no project sample: the LiDAR cover's fit, and the record says so
    inventory = plots.assign(sample="inventory")
    alone = parcels_stage(job, **common, plot_locations=inventory, plot_biomass=biomass)
    record = alone[ERROR_CORRELOGRAM_RELPATH]
    assert "no project monitoring sample" in record["monitoring_plots"]["skipped"]
    assert "sink" not in record and "shared_lidar" not in record


def test_cells_seen_only_by_landsat_take_the_common_band_model(scene: dict) -> None:
    # a red-edge band (Sentinel-2 only) that carries signal; in a block of cells the
    # season was clear only in Landsat scenes: no red edge, no NDRE, the rest present
    inp = {k: v for k, v in scene["inputs"].items() if k not in ("lidar_metrics", "lidar_repeat")}
    land = scene["land"]
    rng = np.random.default_rng(3)
    gap = np.zeros((N, N), dtype=bool)
    gap[10:30, 40:70] = True
    comps = {}
    for e, comp in inp["composites"].items():
        layers = {str(b): comp.sel(band=b).to_numpy() for b in comp["band"].to_numpy()}
        rededge = 0.05 + 0.1 * land.features["ndvi"] + rng.normal(0, 0.003, (N, N))
        layers["rededge1"] = np.where(gap, np.nan, rededge)
        layers["ndre"] = np.where(gap, np.nan, land.features["ndvi"] - 0.2)
        comps[e] = raster(layers)
    inp["composites"] = comps
    params = scene["job"].params.model_copy(update={"satellite_training": "plots"})
    out = model(dataclasses.replace(scene["job"], params=params), **inp)
    card = out[MODEL_CARD_RELPATH]
    common = card["common_band_model"]
    assert common["model_source"] == SOURCE_SATELLITE_COMMON
    assert common["left_out"] == ["ndre", "rededge1"]
    assert {"rededge1", "ndre"} <= set(card["satellite_model"]["features"])
    assert not {"rededge1", "ndre"} & set(common["features"])
    # its own validation: spatially blocked CV and a calibration of its own residuals
    assert common["candidates"][common["chosen"]]["spatial_cv"]["rmse_mg_ha"] > 0
    assert common["uncertainty"]["after"] == "the epoch bias correction"
    # plots in the gap have no red edge: the common-band model trains on more plot-epochs
    assert len(common["cv_predictions"]) > len(card["satellite_model"]["cv_predictions"])

    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    with pytest.warns(UserWarning, match=r"600 \(9\.4%\) lack a Sentinel-2-only band"):
        maps = predict(pjob, models=out[MODELS_RELPATH], **inp_maps(inp))
    for e in EPOCHS:
        src = maps[map_relpath("quality", e)].sel(band="model_source").to_numpy()
        agb = maps[map_relpath("agb", e)].to_numpy()[0]
        sd = maps[map_relpath("agb_sd", e)].to_numpy()[0]
        # the plot-sized window mean is NaN-aware but keeps a cell without data empty: the
        # cells lacking the red edge are the gap's, its neighbours' windows still have it
        assert (src[gap] == SOURCE_SATELLITE_COMMON).all()
        assert (src[~gap] == SOURCE_SATELLITE_PLOTS).all()
        assert np.isfinite(agb).all() and (sd[gap] > 0).all()
        by = maps[MAP_COVERAGE_RELPATH]["epochs"][e]["by_model_source"]
        assert by[str(SOURCE_SATELLITE_COMMON)]["cells"] == gap.sum() == 600
        assert by[str(SOURCE_NONE)]["cells"] == 0
    # where every band exists, the main model alone decides: same values as without the
    # fallback (the two models are not designed to agree where both could predict)
    bundle = load_models(out[MODELS_RELPATH])
    bundle["mapper"].common = None
    with pytest.warns(UserWarning, match=r"0 \(0\.0%\) lack .* 600 \(9\.4%\) have no value"):
        plain = predict(pjob, models=bundle, **inp_maps(inp))
    a, b = (m[map_relpath("agb", "2019")].to_numpy()[0] for m in (maps, plain))
    np.testing.assert_array_equal(a[~gap], b[~gap])
    assert np.isnan(b[gap]).all()


def test_the_maps_take_the_lidar_model_only_where_every_epoch_was_flown(scene: dict) -> None:
    # the second flight covers only the north-west quarter of the first (the scene's AGB
    # does not change)
    inp = scene["inputs"]
    first = inp["lidar_metrics"]
    frac = np.zeros((N, N))
    frac[: N // 2, : N // 2] = 1.0
    inside = xr.DataArray(frac > 0, dims=("y", "x"), coords={"y": first.y, "x": first.x})
    repeat = first.where(inside)
    repeat.loc[{"band": "lidar_fraction"}] = frac
    inp = {**inp, "lidar_repeat": {"2024": repeat}}
    with pytest.warns(PipelineWarning, match="1,600 of the 3,200 cells of the first LiDAR"):
        out = model(scene["job"], **inp)
    card = out[MODEL_CARD_RELPATH]
    assert card["lidar_repeat_epochs"] == ["2024"]
    assert card["lidar_cells"] == {"first_flight": N * N // 2, "every_epoch": N * N // 4}
    # a plot is inside a flight when its 25.8 m square lies in the flown cells (the
    # square reaches 7.9 m into the next cell: at that edge the covered share is 0.69)
    plots = inp["plot_locations"].set_index("plot_id")
    col = ((plots.geometry.centroid.x - X0) // RES).astype(int)
    row = ((Y0 - plots.geometry.centroid.y) // RES).astype(int)
    in_first = set(plots.index[col <= N // 2 - 2])
    in_repeat = set(plots.index[(col <= N // 2 - 2) & (row <= N // 2 - 2)])
    assert card["lidar_plots_by_epoch"] == {"2019": len(in_first), "2024": len(in_repeat)}
    assert card["lidar_plots"] == len(in_first) + len(in_repeat)
    pjob = PredictJob(params=PredictParams(), epochs=EPOCHS, seed=7, crs=CRS)
    maps = predict(pjob, models=out[MODELS_RELPATH], **inp_maps(inp))
    src = {e: maps[map_relpath("quality", e)].sel(band="model_source").to_numpy() for e in EPOCHS}
    # the LiDAR model maps the quarter flown twice, at both epochs, and nothing else: the
    # rest of the first flight takes the satellite model at both epochs, so no cell's
    # change mixes the two models
    lidar = np.zeros((N, N), dtype=bool)
    lidar[: N // 2, : N // 2] = True
    for e in EPOCHS:
        np.testing.assert_array_equal(src[e] == SOURCE_LIDAR, lidar)
    # and the change of a cell flown twice is the one model's on the same metrics: 0 (but
    # on the quarter's edge, whose plot-sized window reaches cells flown once)
    agb = {e: maps[map_relpath("agb", e)].to_numpy()[0] for e in EPOCHS}
    inner = lidar.copy()
    inner[N // 2 - 1, :] = inner[:, N // 2 - 1] = False
    np.testing.assert_array_equal(agb["2024"][inner], agb["2019"][inner])
    # the plot table: the flight's own share trains, the share flown at every epoch maps
    table = out[PLOT_FEATURES_RELPATH].set_index(["plot_id", "epoch"])
    for pid in in_first - in_repeat:
        assert table.loc[(pid, "2019"), "lidar_flight_fraction"] >= 0.95
        assert table.loc[(pid, "2019"), "lidar_fraction"] < 0.95
