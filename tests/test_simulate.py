"""Tests of the demo-region simulator on the tiny region (built once per session)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import laspy
import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import shapely
import yaml
from shapely import affinity
from shapely.geometry import MultiPolygon, box

from models.plot_biomass import split_empty_plots
from models.survey.sample_size import ar_tool03_sample_size
from pipeline.commands import simulate as simulate_cmd
from pipeline.config import load_config, region_config_path
from pipeline.grid import north_up_geobox, region_geobox
from pipeline.simulate.noise import hash_uniform
from pipeline.simulate.plots import empty_plot_rows
from pipeline.simulate.sampling import (
    Stratum,
    centre_region,
    plot_support_mean,
    project_sample,
)
from pipeline.simulate.satellite import solar_position, to_landsat_dn, to_s2_dn
from pipeline.simulate.stands import chapman_richards


def _simulate(out: Path, *extra: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    simulate_cmd.register(sub)
    args = parser.parse_args(["simulate", "--region", "tiny", "--out", str(out), *extra])
    assert args.func(args) == 0


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "tiny"
    _simulate(out)
    return out


def _items(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "catalog/items.ndjson").read_text().splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    """Another folder, built by ``python -m pipeline simulate`` in a new process with
    another hash seed, has the same bytes, the catalog too (its hrefs are relative)."""
    again = tmp_path / "again"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "simulate", "--region", "tiny", "--out", str(again)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    a, b = _files(tiny), _files(again)
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k] != b[k]]
    assert different == []
    other = tmp_path / "other"
    _simulate(other, "--seed", "8")
    c = _files(other)
    assert a["truth/agb_2019.tif"] != c["truth/agb_2019.tif"]
    assert a["plots/trees.csv"] != c["plots/trees.csv"]


def test_layout_and_complete_marker(tiny: Path) -> None:
    for rel in (
        "catalog/items.ndjson",
        "catalog/collections.json",
        "plots/trees.csv",
        "plots/plots.gpkg",
        "plots/design.gpkg",
        "parcels/parcels.gpkg",
        "parcels/project.gpkg",
        "truth/agb_2019.tif",
        "truth/carbon_2024.tif",
        "truth/canopy_height_2019.tif",
        "truth/forest_type.tif",
        "truth/sink.tif",
        "truth/reflectance_2019.tif",
        "truth/dem_lidar.tif",
        "truth/chm_lidar_2019.tif",
        "truth/chm_lidar_2024.tif",
        "truth/plots.csv",
        "truth/parcels.csv",
        "truth/summary.json",
        ".complete",
    ):
        assert (tiny / rel).is_file(), rel
    sim = load_config(region_config_path("tiny")).simulate
    n_scenes = 2 * (sim.n_s2_scenes + sim.n_landsat_scenes)  # two epochs
    assert len(list((tiny / "truth/clear").glob("*.tif"))) == n_scenes


def test_model_grid_matches_aoi(tiny: Path) -> None:
    cfg = load_config(region_config_path("tiny"))
    gb = region_geobox(gpd.read_file(tiny / "aoi.geojson"), crs=cfg.crs, resolution_m=10)
    with rasterio.open(tiny / "truth/agb_2019.tif") as src:
        assert src.crs.to_epsg() == 32650
        assert src.shape == gb.shape
        assert tuple(src.transform)[:6] == tuple(gb.transform)[:6]


def test_items_read_as_stac_and_offsets(tiny: Path) -> None:
    raw = _items(tiny)
    items = [pystac.Item.from_dict(d) for d in raw]
    assert {it.collection_id for it in items} == {
        "sentinel-2-l2a",
        "landsat-c2-l2",
        "cop-dem-glo-30",
    }
    for it in items:
        assert it.properties["forest-carbon:simulated"] is True
        for asset in it.assets.values():  # relative to the catalog file, which exists
            assert asset.href.startswith("../scenes/")
            assert (tiny / "catalog" / asset.href).resolve().is_file()
    s2 = [d for d in raw if d["collection"] == "sentinel-2-l2a"]
    assert {d["properties"]["s2:processing_baseline"][:2] for d in s2} == {"02", "05"}
    flags_new = []
    for d in s2:
        props = d["properties"]
        new = props["s2:processing_baseline"] >= "04.00"
        if new:
            flags_new.append(props["earthsearch:boa_offset_applied"])
        else:
            assert props["earthsearch:boa_offset_applied"] is False
        assert props["proj:epsg"] == 32650 and props["proj:code"] == "EPSG:32650"
        assert 0 <= props["eo:cloud_cover"] <= 100
        rb = d["assets"]["red"]["raster:bands"][0]
        assert rb["scale"] == 0.0001 and rb["offset"] == (-0.1 if new else 0.0)
        assert rb["nodata"] == 0 and rb["data_type"] == "uint16"
        path = tiny / "scenes/sentinel-2-l2a" / d["id"]
        with rasterio.open(path / "red.tif") as src:
            assert src.dtypes[0] == "uint16" and src.nodata == 0
            assert list(src.shape) == d["assets"]["red"]["proj:shape"]
        with rasterio.open(path / "swir16.tif") as src:
            assert src.res == (20.0, 20.0)
        with rasterio.open(path / "scl.tif") as src:
            scl = src.read(1)
            assert src.dtypes[0] == "uint8" and src.nodata == 0
            assert set(np.unique(scl)) <= set(range(1, 12))
    # post-04.00 scenes both with the offset removed by the provider and raw (+1000)
    assert set(flags_new) == {True, False}


def test_s2_dn_decodes_to_truth_reflectance(tiny: Path) -> None:
    """On clear pixels, DN decoded as Earth Search v1 means it is the truth reflectance:
    the raster:bands offset applies only where the provider has not removed it."""
    for it in _items(tiny):
        if it["collection"] != "sentinel-2-l2a":
            continue
        rb = it["assets"]["nir"]["raster:bands"][0]
        removed = it["properties"]["earthsearch:boa_offset_applied"]
        offset = 0.0 if removed else rb["offset"]
        with rasterio.open(tiny / "scenes/sentinel-2-l2a" / it["id"] / "nir.tif") as src:
            rho = src.read(1).astype(float) * rb["scale"] + offset
        with rasterio.open(tiny / "truth/clear" / f"{it['id']}.tif") as src:
            clear = src.read(1) == 1
        year = it["properties"]["datetime"][:4]
        with rasterio.open(tiny / f"truth/reflectance_{year}.tif") as src:
            truth = src.read(7)
        if clear.sum() < 100:
            continue
        # scene noise and illumination/season differences are a few hundredths at most
        assert abs(np.median(rho[clear] - truth[clear])) < 0.05
        assert 0.1 < np.median(rho[clear]) < 0.6


def test_landsat_encoding_and_qa(tiny: Path) -> None:
    ls = [d for d in _items(tiny) if d["collection"] == "landsat-c2-l2"]
    assert len(ls) == 2
    for it in ls:
        rb = it["assets"]["red"]["raster:bands"][0]
        assert rb["scale"] == 0.0000275 and rb["offset"] == -0.2
        d = tiny / "scenes/landsat-c2-l2" / it["id"]
        with rasterio.open(d / "qa_pixel.tif") as src:
            qa = src.read(1)
            assert src.dtypes[0] == "uint16" and src.nodata == 1 and src.res == (30.0, 30.0)
        allowed = {1, 21824, 21952, 21826, 22080, 22280, 23888, 54596}
        assert set(np.unique(qa)) <= allowed
        with rasterio.open(d / "red.tif") as src:
            red = src.read(1)
        assert np.all(red[qa == 1] == 0) and np.all(red[qa != 1] > 0)
        clear = (qa & (1 << 6)) > 0
        refl = red[clear & ((qa & 0b11000) == 0)] * 0.0000275 - 0.2
        assert 0.0 < np.median(refl) < 0.2
    # the decode rule: reflectance 0.05 is DN 9091 (USGS C2 L2 scale/offset)
    assert to_landsat_dn(np.array([0.05]))[0] == round(0.25 / 0.0000275)
    assert to_s2_dn(np.array([0.05]), offset_applied=True)[0] == 1500
    assert to_s2_dn(np.array([0.05]), offset_applied=False)[0] == 500


def test_dem_item(tiny: Path) -> None:
    dem = [d for d in _items(tiny) if d["collection"] == "cop-dem-glo-30"]
    assert len(dem) == 1 and "data" in dem[0]["assets"]
    with rasterio.open(tiny / "scenes/cop-dem-glo-30" / dem[0]["id"] / "data.tif") as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes[0] == "float32"
        z = src.read(1)
    summary = json.loads((tiny / "truth/summary.json").read_text())
    lo, hi = summary["elevation_range_m"]
    assert lo - 10 < np.median(z) < hi + 40


def test_lidar_tiles(tiny: Path) -> None:
    tiles = sorted((tiny / "lidar").glob("*.laz"))
    assert len(tiles) == 2  # the tiny block straddles a 1 km line
    classified_seen = unclassified_seen = False
    with rasterio.open(tiny / "truth/dem_lidar.tif") as src:
        dem, tf = src.read(1), src.transform
    for t in tiles:
        las = laspy.read(t)
        assert las.header.point_format.id == 6
        assert las.header.parse_crs().to_epsg() == 32650
        area = (las.header.maxs[0] - las.header.mins[0]) * (las.header.maxs[1] - las.header.mins[1])
        assert len(las.points) / area > 4.0  # points per m2
        rn, nr = np.asarray(las.return_number), np.asarray(las.number_of_returns)
        assert np.all((rn >= 1) & (rn <= nr)) and nr.max() >= 3
        cls = set(np.unique(np.asarray(las.classification)).tolist())
        if 2 in cls:
            classified_seen = True
            assert {2, 3, 4, 5, 7, 18} <= cls
            g = np.asarray(las.classification) == 2
            rows, cols = rasterio.transform.rowcol(tf, np.asarray(las.x)[g], np.asarray(las.y)[g])
            rows, cols = np.clip(rows, 0, dem.shape[0] - 1), np.clip(cols, 0, dem.shape[1] - 1)
            assert np.median(np.abs(np.asarray(las.z)[g] - dem[rows, cols])) < 0.3
        else:
            unclassified_seen = True
            assert cls <= {0, 1}
    assert classified_seen and unclassified_seen


def test_plot_trees_match_truth_raster(tiny: Path) -> None:
    truth = pd.read_csv(tiny / "truth/plots.csv")
    trees = pd.read_csv(tiny / "plots/trees.csv")
    assert list(trees.columns) == [
        "plot_id",
        "epoch",
        "tree_id",
        "species",
        "dbh_cm",
        "height_m",
        "age_yr",
    ]
    assert trees["height_m"].isna().any() and trees["height_m"].notna().any()
    half = math.sqrt(667.0) / 2
    design = gpd.read_file(tiny / "plots/design.gpkg", layer="strata")
    frames = design.set_index(["sample", "stratum"]).geometry
    plots = gpd.read_file(tiny / "plots/plots.gpkg").set_index("plot_id")
    pairs: dict[str, list[tuple[float, float]]] = {"inventory": [], "project": []}
    with rasterio.open(tiny / "truth/agb_2019.tif") as src:
        full = np.pad(src.read(1), 10)  # squares of buffer-method plots may reach past the AOI
        for _, r in truth[truth.epoch == 2019].iterrows():
            x, y = r.x_true_m, r.y_true_m
            # area-weighted mean of the 10 m truth over the true plot square (1 m supersample);
            # a project plot (buffer method) sees only its stratum frame's part of it
            gx, gy = np.meshgrid(
                np.arange(x - half + 0.5, x + half, 1.0), np.arange(y - half + 0.5, y + half, 1.0)
            )
            rows, cols = rasterio.transform.rowcol(src.transform, gx.ravel(), gy.ravel())
            values = full[np.asarray(rows) + 10, np.asarray(cols) + 10]
            if r["sample"] == "project":
                frame = frames[("project", plots.loc[r.plot_id, "stratum"])]
                values = values * shapely.contains_xy(frame, gx.ravel(), gy.ravel())
            pairs[r["sample"]].append((r.agb_mg_ha, float(values.mean())))
    inventory = np.array(pairs["inventory"])
    forest = inventory[:, 1] > 20
    assert forest.any(), "no forest plot with biomass"
    assert abs(np.median(inventory[forest, 0] / inventory[forest, 1] - 1)) < 0.2
    # the tiny project's young stands are too sparse for plot-by-plot checks: their total
    project = np.array(pairs["project"]).sum(axis=0)
    assert project[1] > 0 and abs(project[0] / project[1] - 1) < 0.2
    # trees carry the same ids across epochs (permanent plots)
    ids = trees.groupby("epoch")["tree_id"].apply(set)
    assert len(ids.iloc[0] & ids.iloc[1]) > 0


def test_parcels_and_project(tiny: Path) -> None:
    parcels = gpd.read_file(tiny / "parcels/parcels.gpkg")
    assert parcels.crs.to_epsg() == 32650
    assert set(parcels.forest_type) <= {
        "chinese_fir",
        "masson_pine",
        "broadleaf",
        "moso_bamboo",
        "non_forest",
    }
    assert abs(parcels.area_ha.sum() - 36.0) < 0.01
    project = gpd.read_file(tiny / "parcels/project.gpkg")
    assert set(project.parcel_id) <= set(parcels.parcel_id)
    assert (project.baseline_tco2e_ha_yr >= 0).all()
    truth = pd.read_csv(tiny / "truth/parcels.csv")
    # projects commit to no clear-cutting: none of its parcels was clear-cut
    in_project = truth[truth["parcel_id"].isin(project.parcel_id)]
    assert len(in_project) == len(project) and (in_project["disturbance"] != "clearcut").all()
    with rasterio.open(tiny / "truth/carbon_2019.tif") as src:
        total = float(src.read(1).astype(float).sum()) * 0.01
    assert truth["carbon_2019_mg"].sum() == pytest.approx(total, rel=0.02)
    plots = gpd.read_file(tiny / "plots/plots.gpkg")
    assert (plots.plot_area_ha == 0.0667).all() and (plots["sample"] == "inventory").sum() == 6


def _plots_with_truth(tiny: Path) -> gpd.GeoDataFrame:
    """The plots with their true centres and true squares (first epoch)."""
    plots = gpd.read_file(tiny / "plots/plots.gpkg")
    truth = pd.read_csv(tiny / "truth/plots.csv").drop_duplicates("plot_id")
    m = plots.merge(truth, on=["plot_id", "sample"], validate="one_to_one")
    half = math.sqrt(667.0) / 2
    m["true_square"] = [
        box(x - half, y - half, x + half, y + half)
        for x, y in zip(m.x_true_m, m.y_true_m, strict=True)
    ]
    m["true_centre"] = gpd.points_from_xy(m.x_true_m, m.y_true_m)
    return m


def test_design_frames_partition_their_sample_and_hold_their_plots(tiny: Path) -> None:
    design = gpd.read_file(tiny / "plots/design.gpkg", layer="strata")
    assert list(design.columns) == ["sample", "stratum", "area_ha", "centre_area_ha", "geometry"]
    assert design.crs.to_epsg() == 32650 and (design.geom_type == "MultiPolygon").all()
    assert not design.duplicated(["sample", "stratum"]).any()
    assert np.allclose(design.area_ha, design.area / 1e4, rtol=1e-12)
    assert set(design["sample"]) == {"inventory", "project"}
    for _, frames in design.groupby("sample"):
        geoms = list(frames.geometry)
        for i, a in enumerate(geoms):
            for b in geoms[i + 1 :]:
                assert a.intersection(b).area < 1e-3  # m2: shared edges only
    # the project's frames are its parcels, one per forest type present
    project = gpd.read_file(tiny / "parcels/project.gpkg")
    parcels = gpd.read_file(tiny / "parcels/parcels.gpkg").set_index("parcel_id")
    frames = design[design["sample"] == "project"]
    assert set(frames.stratum) == set(parcels.loc[project.parcel_id, "forest_type"])
    assert frames.union_all().symmetric_difference(project.union_all()).area < 1e-3
    # every plot's square meets its stratum's frame (buffer method, both samples), and the
    # centre area is the frame dilated by the plot square
    plots = _plots_with_truth(tiny)
    assert set(zip(plots["sample"], plots.stratum, strict=True)) <= set(
        zip(design["sample"], design.stratum, strict=True)
    )
    indexed = design.set_index(["sample", "stratum"])
    for _, p in plots.iterrows():
        f = indexed.geometry[(p["sample"], p.stratum)]
        assert f.intersects(p.true_square), p.plot_id
    for _, f in frames.iterrows():
        dilated = centre_region(f.geometry, half_side_m=math.sqrt(667.0) / 2)
        assert f.centre_area_ha == pytest.approx(dilated.area / 1e4, rel=1e-9)
        assert f.centre_area_ha > f.area_ha


def test_inventory_strata_follow_the_lidar_block(tiny: Path) -> None:
    summary = json.loads((tiny / "truth/summary.json").read_text())
    block = box(*summary["lidar"]["bounds"])
    plots = _plots_with_truth(tiny)
    inventory = plots[plots["sample"] == "inventory"]
    assert list(inventory.plot_id) == [f"P{i:03d}" for i in range(1, 7)]
    # a plot of the block's stratum has its square meeting the block; one outside has its
    # square meeting land outside it (buffer method: the square may straddle the edge)
    meets_block = inventory.true_square.apply(block.intersects)
    outside_block = inventory.true_square.apply(lambda sq: not block.contains(sq))
    for stratum, meets, out in zip(inventory.stratum, meets_block, outside_block, strict=True):
        assert meets if stratum == "lidar_block" else out
    assert set(inventory.stratum) == {"lidar_block", "outside"}
    # the block's share of the plots (simulation.yaml, plots.lidar_share: 0.3 of 6)
    assert (inventory.stratum == "lidar_block").sum() == 2


def test_project_sample_is_the_ar_tool03_plan(tiny: Path) -> None:
    rec = json.loads((tiny / "truth/summary.json").read_text())["project_sample"]
    assert rec["relative_error"] == 0.1 and rec["confidence"] == 0.9
    assert rec["sized_for"] == ["stock", "change"]
    strata = rec["strata"]
    areas = [s["centre_area_ha"] for s in strata.values()]
    wanted = np.zeros(len(strata), dtype=int)
    for quantity in rec["sized_for"]:
        mean = [s[quantity]["mean_mg_c_ha"] for s in strata.values()]
        if np.dot(areas, mean) <= 0:  # a change that is not positive has no relative target
            assert quantity in rec["not_sized_for"]
            continue
        plan = ar_tool03_sample_size(
            areas,
            [s[quantity]["sd_mg_c_ha"] for s in strata.values()],
            mean,
            plot_area_ha=rec["plot_area_ha"],
        )
        assert plan.n_plots == rec["plans"][quantity]["n_plots"] > 0
        plots = plan.plots
        # the change plan is capped at 5 % of the possible plots (the tiny project holds
        # about 25), at least 2 a stratum; the stock plan never is
        most = 0.05 * sum(areas) / rec["plot_area_ha"]
        if quantity == "change" and plan.n_plots > most:
            assert quantity in rec["capped"]
            plots = np.maximum(np.floor(plots * most / plots.sum()), 2).astype(int)
        wanted = np.maximum(wanted, plots)
    assert rec["plans"], "the tiny region's sample is sized for at least its stock"
    # each stratum takes the larger allocation
    assert [s["n_plots"] for s in strata.values()] == list(wanted)
    assert rec["n_plots"] == wanted.sum()
    plots = _plots_with_truth(tiny)
    project = plots[plots["sample"] == "project"]
    assert list(project.plot_id) == [f"J{i:03d}" for i in range(1, len(project) + 1)]
    assert len(project) == rec["n_placed"]
    for name, s in strata.items():
        placed = int((project.stratum == name).sum())
        assert placed == s["n_placed"]
        # all the plan's plots, unless the frame is recorded as too small for them
        assert placed == s["n_plots"] or (name in rec["short_strata"] and placed >= 2)
    # meeting the project area, not overlapping one another
    area = gpd.read_file(tiny / "parcels/project.gpkg").union_all()
    assert project.true_square.apply(area.intersects).all()
    squares = list(project.true_square)
    for i, a in enumerate(squares):
        for b in squares[i + 1 :]:
            assert a.intersection(b).area < 1e-6
    # measured at both epochs like the inventory plots
    trees = pd.read_csv(tiny / "plots/trees.csv", dtype={"epoch": str})
    measured = trees[trees.plot_id.str.startswith("J")].groupby("epoch").plot_id.nunique()
    assert measured.to_dict() == {"2019": len(project), "2024": len(project)}


def test_project_sample_places_plots_meeting_a_frame_smaller_than_a_plot() -> None:
    grid = north_up_geobox((40, 40), x0_m=0.0, ytop_m=400.0, res_m=10.0, crs="EPSG:32650")
    carbon = np.random.default_rng(0).gamma(4.0, 20.0, (40, 40))
    big = Stratum("project", "big", MultiPolygon([box(0, 0, 300, 300)]))
    small = Stratum("project", "small", MultiPolygon([box(350, 350, 370, 370)]))
    sample = project_sample(np.random.default_rng(1), [big, small], grid, (carbon, carbon * 1.1))
    assert [s.name for s in sample.strata] == ["big", "small"]
    side = math.sqrt(667.0)
    # the centre region of a rectangle is the rectangle grown by the plot's side
    assert sample.strata[0].centre_area_ha == pytest.approx((300 + side) ** 2 / 1e4)
    assert sample.strata[1].centre_area_ha == pytest.approx((20 + side) ** 2 / 1e4)
    n = sample.record["n_plots"]
    assert n == sample.record["n_placed"] == len(sample.centers)
    small_plots = sample.centers[np.array(sample.labels) == "small"]
    assert len(small_plots) >= 2
    half = side / 2
    for x, y in small_plots:
        assert box(x - half, y - half, x + half, y + half).intersects(small.frame)
    # the mean over the plot square keeps a constant field and the field's total
    assert np.allclose(plot_support_mean(np.full((5, 5), 7.0), 10.0), 7.0)
    spike = np.zeros((5, 5))
    spike[2, 2] = 1.0
    assert plot_support_mean(spike, 10.0).sum() == pytest.approx(1.0)


def test_project_sample_change_plan_falls_back_and_caps() -> None:
    grid = north_up_geobox((100, 100), x0_m=0.0, ytop_m=1000.0, res_m=10.0, crs="EPSG:32650")
    carbon = np.random.default_rng(0).gamma(4.0, 20.0, (100, 100))
    strata = [Stratum("project", "a", MultiPolygon([box(0, 0, 990, 990)]))]
    # a stand that loses carbon: no relative precision for the change, the stock plan only
    losing = project_sample(np.random.default_rng(1), strata, grid, (carbon, carbon * 0.9))
    assert "change" in losing.record["not_sized_for"]
    assert set(losing.record["plans"]) == {"stock"}
    assert losing.record["n_plots"] == losing.record["plans"]["stock"]["n_plots"]
    # a change near zero asks for more plots than the cap: scaled down to 5 % of the
    # possible plots (centre area / plot area), above the stock's plan, and recorded
    noise = np.random.default_rng(2).normal(0.5, 10.0, carbon.shape)
    still = project_sample(np.random.default_rng(1), strata, grid, (carbon, carbon + noise))
    most = 0.05 * still.strata[0].centre_area_ha / 0.0667
    assert still.record["plans"]["change"]["n_plots"] > most
    assert "change" in still.record["capped"]
    assert still.record["plans"]["stock"]["n_plots"] < math.floor(most)
    assert still.record["n_plots"] == math.floor(most) == len(still.centers)


def test_centre_region_is_the_minkowski_sum_with_the_plot_square() -> None:
    h = 5.0  # half side: a 10 m square
    assert centre_region(box(0, 0, 100, 50), h).area == pytest.approx(110 * 60)
    # a convex polygon grows by the perimeter x the square's half-width across each edge
    # (mixed area) plus the square: for a square of side L turned 45 degrees,
    # L^2 + 2 sqrt(2) L s + s^2 with s = 2h
    diamond = affinity.rotate(box(0, 0, 100, 100), 45)
    assert centre_region(diamond, h).area == pytest.approx(
        100**2 + 2 * math.sqrt(2) * 100 * 10 + 10**2
    )
    # a hole narrower than the square is filled; a wide one keeps its shrunken part
    narrow = box(0, 0, 100, 100).difference(box(40, 40, 48, 48))
    assert centre_region(narrow, h).area == pytest.approx(110 * 110)
    wide = box(0, 0, 100, 100).difference(box(30, 30, 70, 70))
    assert centre_region(wide, h).area == pytest.approx(110 * 110 - 30 * 30)


def test_hash_uniform_is_keyed_and_uniform() -> None:
    u = hash_uniform(1, np.arange(100_000), 3)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(hash_uniform(1, np.arange(10), 3), u[:10])
    assert not np.array_equal(hash_uniform(2, np.arange(10), 3), u[:10])


def test_chapman_richards_closed_form() -> None:
    # at k * t = ln 2 the curve is ymax * 0.5 ** c
    assert chapman_richards(np.log(2) / 0.1, 30.0, 0.1, 2.0) == pytest.approx(7.5)


def test_solar_position_noon_equinox() -> None:
    import datetime as dt

    # near the March equinox, solar noon at the equator on the Greenwich meridian: zenith ~0
    zen, _ = solar_position(dt.datetime(2021, 3, 20, 12, 7, tzinfo=dt.UTC), 0.0, 0.0)
    assert zen < 1.0
    # Nanping, 21 June, 10:30 local solar time: zenith = |lat - decl| at noon -> larger at 10:30
    zen, az = solar_position(dt.datetime(2019, 6, 21, 2, 38, tzinfo=dt.UTC), 118.1, 26.6)
    assert 15 < zen < 35 and 60 < az < 120


def test_a_plot_without_trees_is_recorded_as_an_empty_plot_row() -> None:
    # plots 0 and 2 hold trees, plot 1 none: one row for plot 1, read by the plots stage as
    # a zero-biomass plot (models.plot_biomass.split_empty_plots)
    rows = empty_plot_rows(["A", "B", "C"], "2024", np.array([0, 0, 2]))
    assert rows["plot_id"].tolist() == ["B"]
    trees = pd.concat(
        [rows, pd.DataFrame({"plot_id": ["A"], "epoch": ["2024"], "species": ["x"],
                             "dbh_cm": [12.0]})]
    )  # fmt: skip
    kept, empty = split_empty_plots(trees)
    assert kept["plot_id"].tolist() == ["A"]
    assert empty[["plot_id", "epoch"]].values.tolist() == [["B", "2024"]]


def test_parcels_smaller_than_a_cell_get_an_empty_record(tmp_path: Path) -> None:
    """At a prefecture's parcel density on the tiny region, some parcels own no cell (the
    cell-centre rule); the survey record is still one row per parcel, empty for those
    (the simulator failed on them: the tree tally had one row per parcel up to the last
    one owning a cell)."""
    from pipeline.simulate.region import simulate_region

    raw = yaml.safe_load(region_config_path("tiny").read_text())
    base = load_config(region_config_path("tiny"))
    many = {**raw["simulate"], "parcels_per_km2": 20_000 / base.simulate.size_km**2}
    config = load_config(region_config_path("tiny"), overrides={"simulate": many})
    simulate_region(config, tmp_path, seed=config.seed)
    parcels = gpd.read_file(tmp_path / "parcels" / "parcels.gpkg")
    truth = pd.read_csv(tmp_path / "truth" / "parcels.csv")
    assert len(parcels) == len(truth) > 10_000
    # a parcel without carbon in the truth owns no cell: its record is empty
    cellless = truth["carbon_2019_mg"].to_numpy() == 0
    assert cellless.any()
    assert parcels.loc[cellless, "dominant_species"].isna().all()
    assert parcels.loc[~cellless, "dominant_species"].notna().any()
