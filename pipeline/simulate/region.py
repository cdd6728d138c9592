"""Build a whole simulated region: the orchestration of the simulator's modules.

``simulate_region(config, out_dir, seed=...)`` writes, into ``out_dir`` (which must not
exist yet; the command writes to a temporary folder and renames it), the demo data layout
of the project (``catalog/``, ``scenes/``, ``lidar/``, ``plots/``, ``parcels/``, ``truth/``),
with asset hrefs relative to the catalog file (``../scenes/...``), so the folder can be
moved or copied. Everything is a function of the seed: one ``numpy.random.SeedSequence``
is spawned into independent child streams per component, and trees use counter-based
numbers keyed by pixel, so the same seed gives the same bytes, in any folder.

The steps, in order: the landscape (terrain, parcels, stands) and its truth maps, the
parcel files, the satellite scenes, the DEM and the STAC catalog, the LiDAR blocks, the
field plots of both samples (the region's inventory ``P001``... and the carbon project's
monitoring plots ``J001``...: ``plots/plots.gpkg`` with each plot's ``sample`` and
``stratum``, their trees in ``plots/trees.csv``, the designs in ``plots/design.gpkg``, the
true plot values in ``truth/plots.csv``), and ``truth/summary.json`` (with the project
sample's AR-TOOL03 plan under ``project_sample``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pipeline.config import Config
from pipeline.grid import cell_centres, north_up_geobox
from pipeline.io import write_cog
from pipeline.simulate import lidar as lidar_mod
from pipeline.simulate import plots as plots_mod
from pipeline.simulate import sampling, stac_items
from pipeline.simulate import satellite as sat
from pipeline.simulate.io import raster, write_gpkg, write_json
from pipeline.simulate.noise import gaussian_field
from pipeline.simulate.parcels import (
    choose_project,
    make_parcels,
    make_roads,
    rasterise,
    survey_record,
)
from pipeline.simulate.science import coefficients, type_codes
from pipeline.simulate.stands import StandEpoch, generate_trees, stand_epochs
from pipeline.simulate.terrain import Terrain, make_terrain
from pipeline.simulate.truth import EpochTruth, epoch_truth
from pipeline.sink import decimal_year
from pipeline.units import M2_PER_HA

_BLOCK_M = 60.0  # AOI sides are multiples of 60 m so 10, 20 and 60 m grids nest


def aoi_grid(config: Config) -> GeoBox:
    """The simulated AOI on the model grid (square of ``size_km`` around the centre)."""
    p = config.simulate
    t = Transformer.from_crs("EPSG:4326", config.crs, always_xy=True)
    cx, cy = t.transform(p.center_lon, p.center_lat)
    cx = round(cx / _BLOCK_M) * _BLOCK_M
    cy = round(cy / _BLOCK_M) * _BLOCK_M
    half = max(1, round(p.size_km * 1000.0 / 2.0 / _BLOCK_M)) * _BLOCK_M
    res = config.resolution_m
    n = round(2 * half / res)
    return north_up_geobox((n, n), x0_m=cx - half, ytop_m=cy + half, res_m=res, crs=config.crs)


def aoi_frame(grid: GeoBox, crs: str) -> gpd.GeoDataFrame:
    """The AOI polygon in WGS84, inset 1 m so snapping it outwards gives back ``grid``."""
    xmin, ymin, xmax, ymax = grid.boundingbox
    poly = box(xmin + 1.0, ymin + 1.0, xmax - 1.0, ymax - 1.0)
    return gpd.GeoDataFrame({"name": ["simulated AOI"]}, geometry=[poly], crs=crs).to_crs(
        "EPSG:4326"
    )


def _plan_scenes(config: Config, rng: np.random.Generator) -> list[sat.Scene]:
    c = coefficients()
    cl = c["clouds"]
    p = config.simulate
    offset_from = dt.date.fromisoformat(c["sentinel2"]["offset_from_date"])
    scenes = []
    for ei, ep in enumerate(config.epochs):
        span = (ep.end - ep.start).days
        for coll, count in (
            ("sentinel-2-l2a", p.n_s2_scenes),
            ("landsat-c2-l2", p.n_landsat_scenes),
        ):
            days = np.sort(rng.choice(span + 1, size=min(count, span + 1), replace=False))
            for k, day in enumerate(days):
                date = ep.start + dt.timedelta(days=int(day))
                mostly = rng.uniform() < float(cl["p_mostly_cloudy"])
                lo, hi = cl["mostly_cloudy_fraction"] if mostly else cl["cloud_fraction"]
                frac = float(rng.uniform(lo, hi))
                hgt = float(rng.uniform(*cl["cloud_height_m"]))
                seed = int(rng.integers(2**62))
                if coll == "sentinel-2-l2a":
                    platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
                    when = dt.datetime.combine(date, dt.time(2, 38, 41), dt.UTC)
                    baselines = c["sentinel2"][
                        "baselines_after" if date >= offset_from else "baselines_before"
                    ]
                    extra = {"baseline": str(baselines[k % len(baselines)])}
                else:
                    platform = "landsat-8" if date.year < 2022 or k % 2 == 0 else "landsat-9"
                    when = dt.datetime.combine(date, dt.time(2, 31, 12), dt.UTC)
                    extra = {}
                scenes.append(
                    sat.Scene(coll, platform, ep.name, ei, when, frac, hgt, seed, extra=extra)
                )
    return scenes


@dataclass(frozen=True)
class _Streams:
    """Independent random streams of the components, spawned from one seed."""

    terrain: np.random.Generator
    parcels: np.random.Generator
    roads: np.random.Generator
    stock: np.random.Generator
    scenes: np.random.Generator
    plots: np.random.Generator
    measure: np.random.Generator
    project: np.random.Generator
    dem: np.random.Generator
    lidar: np.random.Generator
    #: the project's monitoring plots (placement, GPS, measurement); spawned last, so the
    #: other streams are those of a simulator without it
    project_plots: np.random.Generator
    #: the parcel layer's sub-compartment survey errors; spawned after project_plots
    xiaoban: np.random.Generator
    #: key of the counter-based numbers of the trees (keyed by pixel)
    tree_seed: int


def _streams(seed: int) -> _Streams:
    ss = np.random.SeedSequence(seed)
    (
        terrain, parcels, roads, stock, scenes, plots, measure, project, dem, lidar,
        project_plots, xiaoban,
    ) = (np.random.default_rng(s) for s in ss.spawn(12))  # fmt: skip
    return _Streams(
        terrain=terrain,
        parcels=parcels,
        roads=roads,
        stock=stock,
        scenes=scenes,
        plots=plots,
        measure=measure,
        project=project,
        dem=dem,
        lidar=lidar,
        project_plots=project_plots,
        xiaoban=xiaoban,
        tree_seed=int(ss.generate_state(1, dtype=np.uint64)[0]),
    )


@dataclass(frozen=True)
class _Landscape:
    """The simulated landscape: terrain, parcels and stands on the model grid."""

    grid: GeoBox
    epochs: list[str]
    #: reference date of each epoch as a decimal year
    years: list[float]
    terrain: Terrain
    elevation_m: npt.NDArray[np.float64]
    slope_deg: npt.NDArray[np.float64]
    aspect_deg: npt.NDArray[np.float64]
    parcels: gpd.GeoDataFrame
    #: parcel row per model-grid cell, -1 on roads
    parcel_idx: npt.NDArray[np.int64]
    stocking: npt.NDArray[np.float64]
    stands: list[StandEpoch]


@dataclass(frozen=True)
class _Truth:
    """Per epoch: the truth maps and the land use of every cell (forest type or other)."""

    maps: list[EpochTruth]
    use: list[npt.NDArray[np.object_]]


def _landscape(config: Config, grid: GeoBox, rs: _Streams) -> _Landscape:
    years = [decimal_year(e.reference) for e in config.epochs]
    xmin, ymin, xmax, ymax = grid.boundingbox
    terrain = make_terrain(rs.terrain, center_x_m=(xmin + xmax) / 2, center_y_m=(ymin + ymax) / 2)
    xx, yy = np.meshgrid(*cell_centres(grid))
    elev = terrain.elevation(xx, yy)
    slope, aspect = terrain.slope_aspect_deg(xx, yy)
    parcels = make_parcels(
        rs.parcels,
        grid,
        terrain,
        crs=config.crs,
        epoch_years=years,
        parcels_per_km2=config.simulate.parcels_per_km2,
    )
    roads = make_roads(rs.roads, grid)
    pidx = rasterise(parcels, roads, grid)
    land = coefficients()["landscape"]
    stocking = np.exp(
        float(land["stocking_sd_log"])
        * gaussian_field(
            rs.stock,
            grid.shape.yx,
            length_px=float(land["stocking_length_scale_m"]) / grid.resolution.x,
        )
        - 0.5 * float(land["stocking_sd_log"]) ** 2
    )
    return _Landscape(
        grid=grid,
        epochs=[e.name for e in config.epochs],
        years=years,
        terrain=terrain,
        elevation_m=elev,
        slope_deg=slope,
        aspect_deg=aspect,
        parcels=parcels,
        parcel_idx=pidx,
        stocking=stocking,
        stands=stand_epochs(parcels, years),
    )


def _truth(land: _Landscape, tree_seed: int) -> _Truth:
    pidx = land.parcel_idx
    maps = [
        epoch_truth(tree_seed, land.grid, pidx, land.stocking, st, n_parcels=len(land.parcels))
        for st in land.stands
    ]
    use = []
    for i in range(len(land.epochs)):
        u = np.asarray(land.parcels[f"type_{i}"].to_numpy(), dtype=object)[np.maximum(pidx, 0)]
        u[pidx < 0] = "road"
        use.append(u)
    return _Truth(maps, use)


def _write_truth_maps(land: _Landscape, truth: _Truth, tdir: Path) -> None:
    """``truth/``: AGB, carbon and canopy height per epoch, the sink, the forest types."""
    grid = land.grid
    for ep, tr in zip(land.epochs, truth.maps, strict=True):
        for name, values, units in (
            ("agb", tr.agb_mg_ha, "Mg/ha"),
            ("carbon", tr.carbon_mg_ha, "Mg C/ha"),
            ("canopy_height", tr.canopy_height_m, "m"),
        ):
            write_cog(
                raster(values.astype(np.float32), grid, nodata=None, bands=[name]),
                tdir / f"{name}_{ep}.tif",
                band_tags={"units": units},
            )
    dt_years = land.years[-1] - land.years[0]
    sink = (truth.maps[-1].carbon_mg_ha - truth.maps[0].carbon_mg_ha) / dt_years
    write_cog(
        raster(sink.astype(np.float32), grid, nodata=None, bands=["sink"]),
        tdir / "sink.tif",
        band_tags={"units": "Mg C/ha/yr"},
    )
    codes = type_codes()
    ft = np.vectorize(lambda s: codes[s] if s in codes else 0, otypes=[np.uint8])(truth.use[-1])
    write_cog(
        raster(ft, grid, nodata=None, bands=["forest_type"]),
        tdir / "forest_type.tif",
        tags={f"code_{v}": k for k, v in sorted(codes.items())},
    )


def _write_parcels(
    land: _Landscape,
    truth: _Truth,
    rng: np.random.Generator,
    xiaoban_rng: np.random.Generator,
    out_dir: Path,
    tdir: Path,
) -> gpd.GeoDataFrame:
    """``parcels/`` (parcels, project) and ``truth/parcels.csv``; returns the project."""
    parcels, pidx = land.parcels, land.parcel_idx
    cell_ha = land.grid.resolution.x**2 / M2_PER_HA
    valid = pidx >= 0
    stock_mg = [
        np.bincount(pidx[valid], weights=t.carbon_mg_ha[valid] * cell_ha, minlength=len(parcels))
        for t in truth.maps
    ]
    area_ha = parcels.geometry.area.to_numpy() / M2_PER_HA
    sink_t = (stock_mg[-1] - stock_mg[0]) * 44.0 / 12.0 / (land.years[-1] - land.years[0])
    ptruth = pd.DataFrame(
        {
            "parcel_id": parcels["parcel_id"],
            "forest_type": parcels["forest_type"],
            "disturbance": parcels["disturbance"],
        }
    )
    for ep, s in zip(land.epochs, stock_mg, strict=True):
        ptruth[f"carbon_{ep}_mg"] = np.round(s, 3)
    ptruth["sink_tco2e_yr"] = np.round(sink_t, 3)
    ptruth.to_csv(tdir / "parcels.csv", index=False)
    (out_dir / "parcels").mkdir()
    pub = parcels[
        ["parcel_id", "township", "village", "compartment", "forest_type", "land_class"]
    ].copy()
    pub["area_ha"] = np.round(area_ha, 4)
    stand_ha = np.bincount(pidx[valid], minlength=len(parcels)).astype(np.float64) * cell_ha
    pub = pub.join(survey_record(parcels, truth.maps[0].stands, stand_ha, land.years, xiaoban_rng))
    write_gpkg(
        out_dir / "parcels" / "parcels.gpkg",
        gpd.GeoDataFrame(pub, geometry=parcels.geometry, crs=land.grid.crs),
        layer="parcels",
    )
    project = choose_project(rng, parcels, sink_t / np.maximum(area_ha, 1e-9))
    write_gpkg(out_dir / "parcels" / "project.gpkg", project, layer="project")
    return project


@dataclass(frozen=True)
class _SceneState:
    """What a scene looks like before the sensor: sun, terrain illumination, sky."""

    scene: sat.Scene
    sun_zenith_deg: float
    sun_azimuth_deg: float
    cos_incidence: npt.NDArray[np.float64]
    #: clear-sky surface reflectance (band, y, x) on the model grid
    rho: npt.NDArray[np.float64]
    clouds: sat.CloudState
    #: observed reflectance (clouds, shadows, noise) on the model grid
    obs: npt.NDArray[np.float64]
    #: the scene's stream, continued by the sensor's classification noise
    rng: np.random.Generator


def _scene_state(config: Config, land: _Landscape, truth: _Truth, sc: sat.Scene) -> _SceneState:
    ei = sc.epoch_index
    p = config.simulate
    sz, sa = sat.solar_position(sc.when, p.center_lon, p.center_lat)
    factor, cos_i = sat.illumination_factor(land.slope_deg, land.aspect_deg, sz, sa)
    doy = sc.when.timetuple().tm_yday
    rho = sat.base_reflectance(truth.use[ei], truth.maps[ei].agb_mg_ha, doy) * factor[None]
    cl = sat.clouds(sc, land.grid, sz, sa)
    rng = np.random.default_rng(sc.seed + 1)
    obs = sat.observe(rho, cl, rng=rng)
    return _SceneState(sc, sz, sa, cos_i, rho, cl, obs, rng)


def _href(*parts: str) -> str:
    """An asset href relative to ``catalog/items.ndjson``, where STAC resolves it."""
    return "/".join(("..", *parts))


def _write_s2_scene(
    st: _SceneState,
    use: npt.NDArray[np.object_],
    grid: GeoBox,
    *,
    tile: str,
    raw_offset: bool,
    post_baseline: bool,
    out_dir: Path,
) -> dict[str, Any]:
    """Write a Sentinel-2 L2A scene's bands and SCL; returns its STAC item."""
    c = coefficients()
    sc = st.scene
    item_id = f"S2{sc.platform[-1].upper()}_{tile}_{sc.when.strftime('%Y%m%d')}_0_L2A"
    rel = ("scenes", sc.collection, item_id)
    g20 = sat.s2_20m_grid(grid)
    hrefs = {}
    obs20 = sat.block_mean(st.obs, 2)
    for bi, (b, res) in enumerate(
        zip(c["reflectance"]["bands"], c["sentinel2"]["resolution_m"], strict=True)
    ):
        g = grid if res == 10 else g20
        arr = st.obs[bi] if res == 10 else obs20[bi]
        write_cog(
            raster(sat.to_s2_dn(arr, offset_applied=raw_offset), g, nodata=0),
            out_dir.joinpath(*rel, f"{b}.tif"),
        )
        hrefs[b] = _href(*rel, f"{b}.tif")
    scl = sat.scl_20m(obs20, st.clouds, use, st.cos_incidence, rng=st.rng)
    write_cog(raster(scl, g20, nodata=0), out_dir.joinpath(*rel, "scl.tif"))
    hrefs["scl"] = _href(*rel, "scl.tif")
    k = c["sentinel2"]["scl_classes"]
    pct = {
        name: float((scl == k[key]).mean() * 100)
        for name, key in (
            ("vegetation", "vegetation"),
            ("not_vegetated", "not_vegetated"),
            ("water", "water"),
            ("cloud_shadow", "cloud_shadow"),
            ("medium_proba_clouds", "cloud_medium"),
            ("high_proba_clouds", "cloud_high"),
            ("thin_cirrus", "thin_cirrus"),
            ("dark_features", "dark_area"),
            ("unclassified", "unclassified"),
        )
    }
    return stac_items.s2_item(
        item_id=item_id,
        when=sc.when,
        platform=sc.platform,
        baseline=sc.extra["baseline"],
        post_baseline=post_baseline,
        boa_offset_applied=post_baseline and not raw_offset,
        grid10=grid,
        crs=str(grid.crs),
        hrefs=hrefs,
        cloud_cover=pct["medium_proba_clouds"] + pct["high_proba_clouds"] + pct["thin_cirrus"],
        scl_percent=pct,
        sun_zenith=st.sun_zenith_deg,
        sun_azimuth=st.sun_azimuth_deg,
        tile=tile,
    )


def _write_landsat_scene(
    st: _SceneState, water0: npt.NDArray[np.bool_], grid: GeoBox, *, out_dir: Path
) -> dict[str, Any]:
    """Write a Landsat C2 L2 scene's bands and QA_PIXEL; returns its STAC item."""
    c = coefficients()
    sc = st.scene
    sensor = "LC08" if sc.platform == "landsat-8" else "LC09"
    item_id = f"{sensor}_L2SP_120041_{sc.when.strftime('%Y%m%d')}_02_T1"
    rel = ("scenes", sc.collection, item_id)
    g30 = sat.landsat_grid(grid)
    inside30 = sat.inside_model(grid, g30)
    oli = sat.hls_to_oli(sat.resample_to(st.obs, grid, g30, smooth_px=3))
    hrefs = {}
    for bi, b in enumerate(c["landsat"]["bands"]):
        dn = sat.to_landsat_dn(oli[bi])
        dn[~inside30] = 0
        write_cog(raster(dn, g30, nodata=0), out_dir.joinpath(*rel, f"{b}.tif"))
        hrefs[b] = _href(*rel, f"{b}.tif")
    op30 = sat.resample_to(st.clouds.opacity, grid, g30, smooth_px=3)
    sh30 = sat.resample_to(st.clouds.shadow, grid, g30, smooth_px=3)
    water30 = sat.resample_to(water0.astype(np.float64), grid, g30, smooth_px=1) > 0.5
    qa = sat.qa_pixel(op30, sh30, water30, inside30)
    qa_fill = float(c["landsat"]["qa_fill"])
    write_cog(raster(qa, g30, nodata=qa_fill), out_dir.joinpath(*rel, "qa_pixel.tif"))
    hrefs["qa_pixel"] = _href(*rel, "qa_pixel.tif")
    return stac_items.landsat_item(
        item_id=item_id,
        when=sc.when,
        platform=sc.platform,
        grid30=g30,
        crs=str(grid.crs),
        hrefs=hrefs,
        cloud_cover=float((op30[inside30] > 0.1).mean() * 100),
        sun_zenith=st.sun_zenith_deg,
        sun_azimuth=st.sun_azimuth_deg,
        wrs_path="120",
        wrs_row="041",
    )


def _simulate_scenes(
    config: Config,
    land: _Landscape,
    truth: _Truth,
    rng: np.random.Generator,
    *,
    out_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Write every scene, its clear-sky mask and the reflectance truth per epoch.

    Returns the scenes' STAC items and the number of scenes per collection.
    """
    c = coefficients()
    grid, tdir = land.grid, out_dir / "truth"
    utm_zone = int(config.crs.split(":")[1]) % 100
    xmin, ymin, xmax, ymax = grid.boundingbox
    tile = (
        f"{utm_zone:02d}R{stac_items.mgrs_square(utm_zone, (xmin + xmax) / 2, (ymin + ymax) / 2)}"
    )
    offset_from = dt.date.fromisoformat(c["sentinel2"]["offset_from_date"])
    items: list[dict[str, Any]] = []
    # clear-sky reflectance of every Sentinel-2 scene, NaN where the scene was cloudy or
    # shadowed: the composite truth is what a perfect cloud mask lets a median see
    clear_rho: dict[int, list[np.ndarray]] = {i: [] for i in range(len(land.epochs))}
    sky_rho: dict[int, list[np.ndarray]] = {i: [] for i in range(len(land.epochs))}
    n_scenes = {"sentinel-2-l2a": 0, "landsat-c2-l2": 0}
    n_post_baseline = 0
    water0 = truth.use[0] == "water"
    for sc in _plan_scenes(config, rng):
        st = _scene_state(config, land, truth, sc)
        if sc.collection == "sentinel-2-l2a":
            clear_rho[sc.epoch_index].append(
                np.where(st.clouds.clear[None], st.rho, np.nan).astype(np.float32)
            )
            sky_rho[sc.epoch_index].append(st.rho.astype(np.float32))
            post_baseline = sc.when.date() >= offset_from
            # Earth Search v1 removes the +1000 BOA offset from the pixels of most
            # baseline >= 04.00 scenes and flags it (earthsearch:boa_offset_applied: true);
            # some scenes keep the raw +1000 with the flag false (Element84/earth-search#66,
            # cirrus-geo/cirrus-earth-search#21). Every third post-baseline scene is raw, so
            # both paths are exercised.
            raw_offset = post_baseline and n_post_baseline % 3 == 2
            n_post_baseline += post_baseline
            item = _write_s2_scene(
                st,
                truth.use[sc.epoch_index],
                grid,
                tile=tile,
                raw_offset=raw_offset,
                post_baseline=post_baseline,
                out_dir=out_dir,
            )
        else:
            item = _write_landsat_scene(st, water0, grid, out_dir=out_dir)
        items.append(item)
        n_scenes[sc.collection] += 1
        write_cog(
            raster(st.clouds.clear.astype(np.uint8), grid, nodata=None, bands=["clear"]),
            tdir / "clear" / f"{item['id']}.tif",
        )
    for ei, ep in enumerate(land.epochs):
        # median over the dates each pixel was truly clear; where it never was, over all
        # dates (the clear-sky reflectance no composite could have seen)
        seen = np.stack(clear_rho[ei])
        never = np.isnan(seen).all(axis=0)
        seen[:, never] = np.stack(sky_rho[ei])[:, never]
        med = np.nanmedian(seen, axis=0).astype(np.float32)
        write_cog(
            raster(med, grid, nodata=None, bands=list(c["reflectance"]["bands"])),
            tdir / f"reflectance_{ep}.tif",
            band_tags={"units": "reflectance"},
        )
    return items, n_scenes


def _simulate_dem(
    config: Config,
    land: _Landscape,
    truth: _Truth,
    aoi: gpd.GeoDataFrame,
    rng: np.random.Generator,
    *,
    out_dir: Path,
) -> dict[str, Any]:
    """Write the Copernicus DEM tile (EPSG:4326, 1 arc-second); returns its STAC item."""
    d = coefficients()["dem"]
    grid = land.grid
    w, s, e, n = aoi.total_bounds
    step = 1.0 / 3600.0
    w0, n0 = math.floor(w / step) * step, math.ceil(n / step) * step
    nx_d, ny_d = math.ceil((e - w0) / step), math.ceil((n0 - s) / step)
    dem_grid = GeoBox((ny_d, nx_d), Affine(step, 0.0, w0, 0.0, -step, n0), "EPSG:4326")
    lo2, la2 = np.meshgrid(*cell_centres(dem_grid))
    to_utm = Transformer.from_crs("EPSG:4326", config.crs, always_xy=True)
    ux, uy = to_utm.transform(lo2, la2)
    col = np.clip(((ux - grid.affine.c) / grid.resolution.x).astype(np.int64), 0, grid.width - 1)
    row = np.clip(((grid.affine.f - uy) / grid.resolution.x).astype(np.int64), 0, grid.height - 1)
    canopy = ndimage.uniform_filter(truth.maps[0].canopy_height_m, size=3)[row, col]
    dem = (
        land.terrain.elevation(ux, uy)
        + float(d["canopy_fraction"]) * canopy
        + rng.normal(0.0, float(d["noise_sd_m"]), ux.shape)
    )
    p = config.simulate
    lat, lon = math.floor(p.center_lat), math.floor(p.center_lon)
    dem_id = f"Copernicus_DSM_COG_10_N{lat:02d}_00_E{lon:03d}_00_DEM"
    rel = ("scenes", "cop-dem-glo-30", dem_id, "data.tif")
    write_cog(raster(dem.astype(np.float32), dem_grid, nodata=-32767.0), out_dir.joinpath(*rel))
    return stac_items.dem_item(
        item_id=dem_id,
        href=_href(*rel),
        shape=(ny_d, nx_d),
        transform=list(dem_grid.affine)[:6],
        bbox=[
            round(w0, 8),
            round(n0 - ny_d * step, 8),
            round(w0 + nx_d * step, 8),
            round(n0, 8),
        ],
    )


def _write_catalog(
    config: Config, items: list[dict[str, Any]], aoi: gpd.GeoDataFrame, out_dir: Path
) -> None:
    """``catalog/items.ndjson`` and ``catalog/collections.json``."""
    (out_dir / "catalog").mkdir()
    with open(out_dir / "catalog" / "items.ndjson", "w") as f:
        for it in items:
            f.write(json.dumps(it, sort_keys=True) + "\n")
    bbox = [float(v) for v in aoi.total_bounds]
    write_json(
        out_dir / "catalog" / "collections.json",
        stac_items.collections(
            bbox, [f"{config.epochs[0].start}T00:00:00Z", f"{config.epochs[-1].end}T23:59:59Z"]
        ),
    )


def _lidar_blocks(
    config: Config, land: _Landscape, out_dir: Path
) -> list[tuple[int, tuple[float, float, float, float], Path]]:
    """The LiDAR blocks ``(epoch index, bounds, folder)``: the first epoch's, then the last's."""
    p = config.simulate
    xmin, ymin, xmax, ymax = land.grid.boundingbox
    side = min(p.lidar_km * 1000.0, xmax - xmin, ymax - ymin)
    side = math.floor(side)
    # the block sits in the south-west of the AOI centre, straddling a km line when possible
    bx0 = math.floor(max(xmin, min((xmin + xmax) / 2 - side / 2, xmax - side)))
    by0 = math.floor(max(ymin, min((ymin + ymax) / 2 - side / 2, ymax - side)))
    blocks = [
        (0, (float(bx0), float(by0), float(bx0 + side), float(by0 + side)), out_dir / "lidar")
    ]
    if p.lidar2_km > 0:
        s2 = math.floor(min(p.lidar2_km * 1000.0, side))
        blocks.append(
            (
                len(land.epochs) - 1,
                (float(bx0), float(by0), float(bx0 + s2), float(by0 + s2)),
                out_dir / f"lidar_{land.epochs[-1]}",
            )
        )
    return blocks


def _simulate_lidar(
    config: Config,
    land: _Landscape,
    blocks: list[tuple[int, tuple[float, float, float, float], Path]],
    rs: _Streams,
    tdir: Path,
) -> list[dict[str, object]]:
    """Write the LAZ tiles of the blocks and the LiDAR truth; returns the tile table."""
    lc = coefficients()["lidar"]
    grid = land.grid
    a, res = grid.affine, grid.resolution.x
    tiles_all = []
    for ei, b, ldir in blocks:
        # the trees of the model cells under the block, one cell beyond it on every side
        c0 = max(0, int((b[0] - a.c) // res) - 1)
        c1 = min(grid.width - 1, int((b[2] - a.c) // res) + 1)
        r0 = max(0, int((a.f - b[3]) // res) - 1)
        r1 = min(grid.height - 1, int((a.f - b[1]) // res) + 1)
        rr, cc = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
        pix = np.sort((rr * grid.width + cc).ravel())
        trees = generate_trees(
            rs.tree_seed,
            grid,
            pix,
            land.parcel_idx.ravel()[pix],
            land.stocking.ravel()[pix],
            land.stands[ei],
        )
        lep = config.epochs[ei]
        flight_date = lep.start + dt.timedelta(
            days=int((lep.end - lep.start).days * float(lc["flight_doy_fraction"]))
        )
        flight = dt.datetime.combine(flight_date, dt.time(2, 0, 0), dt.UTC)
        lt, tiles = lidar_mod.simulate_block(
            trees,
            land.terrain,
            b,
            crs=config.crs,
            out_dir=ldir,
            flight=flight,
            seed=int(rs.lidar.integers(2**62)),
        )
        if ei == 0:
            write_cog(
                raster(lt.dem_1m.astype(np.float32), lt.grid_1m, nodata=None, bands=["elevation"]),
                tdir / "dem_lidar.tif",
                band_tags={"units": "m"},
            )
        write_cog(
            raster(lt.chm_1m.astype(np.float32), lt.grid_1m, nodata=None, bands=["canopy_height"]),
            tdir / f"chm_lidar_{land.epochs[ei]}.tif",
            band_tags={"units": "m"},
        )
        for t in tiles:
            t["epoch"] = land.epochs[ei]
            t["folder"] = ldir.name
        tiles_all.extend(tiles)
    return tiles_all


def _simulate_plots(
    config: Config,
    land: _Landscape,
    truth: _Truth,
    project: gpd.GeoDataFrame,
    lidar_bounds: tuple[float, float, float, float],
    rs: _Streams,
    out_dir: Path,
) -> tuple[dict[str, int], int, dict[str, Any]]:
    """``plots/`` (plot polygons, measured trees, sample designs) and ``truth/plots.csv``.

    Returns the number of plots per sample, of measured tree records, and the project
    sample's sizing record (see :mod:`pipeline.simulate.sampling`).
    """
    grid = land.grid
    inventory_strata, centers, labels = sampling.inventory_sample(
        rs.plots,
        sampling.inventory_strata(land.parcels, lidar_bounds),
        config.simulate.n_plots,
    )
    inventory_ids = [f"P{i + 1:03d}" for i in range(len(centers))]
    inventory, inventory_gps = plots_mod.plot_polygons(rs.plots, centers, inventory_ids, config.crs)
    inventory["sample"] = sampling.INVENTORY
    inventory["stratum"] = labels
    inventory_frames = {s.name: s.frame for s in inventory_strata}
    inventory_trees, inventory_truth = _measure_plots(
        land,
        rs.tree_seed,
        rs.measure,
        sampling.INVENTORY,
        inventory_ids,
        centers,
        inventory_gps,
        frames=[inventory_frames[label] for label in labels],
    )
    # the project sample's own stream places, locates and measures its plots
    sample = sampling.project_sample(
        rs.project_plots,
        sampling.project_strata(land.parcels, project),
        grid,
        (truth.maps[0].carbon_mg_ha, truth.maps[-1].carbon_mg_ha),
    )
    project_ids = [f"J{i + 1:03d}" for i in range(len(sample.centers))]
    project_plots, project_gps = plots_mod.plot_polygons(
        rs.project_plots, sample.centers, project_ids, config.crs
    )
    project_plots["sample"] = sampling.PROJECT
    project_plots["stratum"] = sample.labels
    frames = {s.name: s.frame for s in sample.strata}
    project_trees, project_truth = _measure_plots(
        land,
        rs.tree_seed,
        rs.project_plots,
        sampling.PROJECT,
        project_ids,
        sample.centers,
        project_gps,
        frames=[frames[label] for label in sample.labels],
    )
    (out_dir / "plots").mkdir()
    write_gpkg(
        out_dir / "plots" / "plots.gpkg",
        pd.concat([inventory, project_plots], ignore_index=True),
        layer="plots",
    )
    write_gpkg(
        out_dir / "plots" / "design.gpkg",
        sampling.design_table([*inventory_strata, *sample.strata], config.crs),
        layer="strata",
    )
    trees_df = pd.concat([inventory_trees, project_trees], ignore_index=True)
    trees_df.to_csv(out_dir / "plots" / "trees.csv", index=False, float_format="%.10g")
    pd.DataFrame(inventory_truth + project_truth).to_csv(
        out_dir / "truth" / "plots.csv", index=False
    )
    n_by_sample = {sampling.INVENTORY: len(inventory_ids), sampling.PROJECT: len(project_ids)}
    return n_by_sample, len(trees_df), sample.record


def _measure_plots(
    land: _Landscape,
    tree_seed: int,
    rng: np.random.Generator,
    sample: str,
    plot_ids: list[str],
    centers: npt.NDArray[np.float64],
    gps: npt.NDArray[np.float64],
    frames: list[BaseGeometry] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The measured tree lists of a sample's plots at every epoch, and their true values.

    ``rng`` is the sample's measurement stream; ``tree_seed`` keys the simulated trees;
    ``frames`` (one per plot) limit each plot's trees to its stratum's frame.
    """
    tables, truth_rows = [], []
    id_maps: list[dict[tuple[int, int, int], str]] = [{} for _ in plot_ids]
    plot_area = float(coefficients()["plots"]["plot_area_ha"])
    for ei, ep in enumerate(land.epochs):
        trees, which = plots_mod.plot_trees(
            tree_seed, land.grid, centers, land.parcel_idx, land.stocking, land.stands[ei], frames
        )
        order = np.lexsort((trees.slot, trees.cohort, trees.pixel, which))
        trees, which = trees.subset(order), which[order]
        tids = []
        for w_, px, co, sl in zip(which, trees.pixel, trees.cohort, trees.slot, strict=True):
            key = (int(px), int(co), int(sl))
            m = id_maps[int(w_)]
            if key not in m:
                m[key] = f"{plot_ids[int(w_)]}-T{len(m) + 1:04d}"
            tids.append(m[key])
        dm, hm, age = plots_mod.measure(rng, trees)
        tables.append(plots_mod.tree_table(plot_ids, ep, trees, which, dm, hm, age, tids))
        empty = plots_mod.empty_plot_rows(plot_ids, ep, which)
        if len(empty):
            tables.append(empty)
        agb = trees.agb_kg()
        per_plot = np.bincount(which, weights=agb, minlength=len(plot_ids)) / 1000.0 / plot_area
        nt = np.bincount(which, minlength=len(plot_ids))
        for i, pid in enumerate(plot_ids):
            truth_rows.append(
                {
                    "plot_id": pid,
                    "sample": sample,
                    "epoch": ep,
                    "agb_mg_ha": round(float(per_plot[i]), 4),
                    "n_trees": int(nt[i]),
                    "x_true_m": round(float(centers[i, 0]), 3),
                    "y_true_m": round(float(centers[i, 1]), 3),
                    "x_gps_m": round(float(gps[i, 0]), 3),
                    "y_gps_m": round(float(gps[i, 1]), 3),
                }
            )
    return pd.concat(tables, ignore_index=True), truth_rows


def simulate_region(config: Config, out_dir: Path, *, seed: int) -> dict[str, Any]:
    """Simulate the region into ``out_dir``. Returns the summary."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t_start - sum(timings.values()), 2)

    tdir = out_dir / "truth"
    rs = _streams(seed)
    grid = aoi_grid(config)
    aoi = aoi_frame(grid, config.crs)
    aoi.to_file(out_dir / "aoi.geojson", driver="GeoJSON")
    land = _landscape(config, grid, rs)
    lap("landscape")
    truth = _truth(land, rs.tree_seed)
    lap("truth")
    _write_truth_maps(land, truth, tdir)
    project = _write_parcels(land, truth, rs.project, rs.xiaoban, out_dir, tdir)
    lap("parcels")
    items, n_scenes = _simulate_scenes(config, land, truth, rs.scenes, out_dir=out_dir)
    lap("satellite")
    items.append(_simulate_dem(config, land, truth, aoi, rs.dem, out_dir=out_dir))
    _write_catalog(config, items, aoi, out_dir)
    lap("dem_catalog")
    blocks = _lidar_blocks(config, land, out_dir)
    tiles = _simulate_lidar(config, land, blocks, rs, tdir)
    lap("lidar")
    lidar_bounds = blocks[0][1]
    n_plots, n_plot_trees, project_sample = _simulate_plots(
        config, land, truth, project, lidar_bounds, rs, out_dir
    )
    lap("plots")
    counts = {
        "n_parcels": len(land.parcels),
        "n_project_parcels": len(project),
        "n_plots": n_plots,
        "n_plot_trees": n_plot_trees,
        "project_sample": project_sample,
        "n_scenes": n_scenes,
        "n_items": len(items),
    }
    summary = _summary(
        config, land, truth, seed=seed, counts=counts, lidar_bounds=lidar_bounds, lidar_tiles=tiles
    )
    write_json(tdir / "summary.json", summary)
    lap("summary")
    summary["timings_s"] = timings
    return summary


def _summary(
    config: Config,
    land: _Landscape,
    truth: _Truth,
    *,
    seed: int,
    counts: dict[str, Any],
    lidar_bounds: tuple[float, float, float, float],
    lidar_tiles: list[dict[str, object]],
) -> dict[str, Any]:
    """``truth/summary.json``: what was simulated, with headline truth figures."""
    grid, epochs = land.grid, land.epochs
    p = config.simulate
    cell_ha = grid.resolution.x**2 / M2_PER_HA
    maps = list(zip(epochs, truth.maps, strict=True))
    return {
        "region": config.region,
        "simulated": True,
        "seed": seed,
        "crs": config.crs,
        "bounds": list(grid.boundingbox),
        "resolution_m": grid.resolution.x,
        "shape": [grid.height, grid.width],
        "epochs": {
            ep: {"reference_year": round(y, 4)} for ep, y in zip(epochs, land.years, strict=True)
        },
        **counts,
        "lidar": {
            "bounds": list(lidar_bounds),
            "epoch": epochs[0],
            "tiles": lidar_tiles,
            "second_epoch": epochs[-1] if p.lidar2_km > 0 else None,
        },
        "type_codes": type_codes(),
        "n_trees": {ep: t.n_trees for ep, t in maps},
        "mean_agb_mg_ha": {ep: round(float(t.agb_mg_ha.mean()), 4) for ep, t in maps},
        "total_carbon_mg": {ep: round(float(t.carbon_mg_ha.sum() * cell_ha), 3) for ep, t in maps},
        "elevation_range_m": [
            round(float(land.elevation_m.min()), 3),
            round(float(land.elevation_m.max()), 3),
        ],
        "max_slope_deg": round(float(land.slope_deg.max()), 3),
    }
