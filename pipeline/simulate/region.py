"""Build a whole simulated region: the orchestration of the simulator's modules.

``simulate_region(config, out_dir, seed=...)`` writes, into ``out_dir`` (which must not
exist yet; the command writes to a temporary folder and renames it), the demo data layout
of the project (``catalog/``, ``scenes/``, ``lidar/``, ``plots/``, ``parcels/``, ``truth/``),
with ``file://`` hrefs pointing at ``final_dir``. Everything is a function of the seed:
one ``numpy.random.SeedSequence`` is spawned into independent child streams per component,
and trees use counter-based numbers keyed by pixel, so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import box

from pipeline.config import Config
from pipeline.grid import cell_centres, north_up_geobox
from pipeline.io import write_cog
from pipeline.simulate import lidar as lidar_mod
from pipeline.simulate import plots as plots_mod
from pipeline.simulate import satellite as sat
from pipeline.simulate import stac_items
from pipeline.simulate.io import raster, write_gpkg, write_json
from pipeline.simulate.noise import gaussian_field
from pipeline.simulate.parcels import choose_project, make_parcels, make_roads, rasterise
from pipeline.simulate.science import FOREST_TYPES, coefficients, type_codes
from pipeline.simulate.stands import generate_trees, stand_epochs
from pipeline.simulate.terrain import make_terrain
from pipeline.simulate.truth import epoch_truth

_BLOCK_M = 60.0  # AOI sides are multiples of 60 m so 10, 20 and 60 m grids nest


def _year_fraction(d: dt.date) -> float:
    start = dt.date(d.year, 1, 1)
    days = (dt.date(d.year + 1, 1, 1) - start).days
    return d.year + ((d - start).days + 0.5) / days


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


def simulate_region(config: Config, out_dir: Path, *, final_dir: Path, seed: int) -> dict[str, Any]:
    """Simulate the region into ``out_dir``; hrefs point to ``final_dir``. Returns the summary."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t_start - sum(timings.values()), 2)

    c = coefficients()
    crs = config.crs
    final_dir = final_dir.resolve()
    ss = np.random.SeedSequence(seed)
    (
        r_terrain,
        r_parcels,
        r_roads,
        r_stock,
        r_scenes,
        r_plots,
        r_measure,
        r_project,
        r_dem,
        r_lidar,
    ) = (np.random.default_rng(s) for s in ss.spawn(10))
    tree_seed = int(ss.generate_state(1, dtype=np.uint64)[0])
    grid = aoi_grid(config)
    p = config.simulate
    epochs = [e.name for e in config.epochs]
    years = [_year_fraction(e.reference) for e in config.epochs]
    aoi = aoi_frame(grid, crs)
    aoi.to_file(out_dir / "aoi.geojson", driver="GeoJSON")

    # --- terrain, parcels, stands -------------------------------------------------
    xmin, ymin, xmax, ymax = grid.boundingbox
    terrain = make_terrain(r_terrain, center_x_m=(xmin + xmax) / 2, center_y_m=(ymin + ymax) / 2)
    xx, yy = np.meshgrid(*cell_centres(grid))
    elev = terrain.elevation(xx, yy)
    slope, aspect = terrain.slope_aspect_deg(xx, yy)
    parcels = make_parcels(r_parcels, grid, terrain, crs=crs, epoch_years=years)
    roads = make_roads(r_roads, grid)
    pidx = rasterise(parcels, roads, grid)
    land = c["landscape"]
    stocking = np.exp(
        float(land["stocking_sd_log"])
        * gaussian_field(
            r_stock,
            grid.shape.yx,
            length_px=float(land["stocking_length_scale_m"]) / grid.resolution.x,
        )
        - 0.5 * float(land["stocking_sd_log"]) ** 2
    )
    stands = stand_epochs(parcels, years)
    lap("landscape")

    # --- truth per epoch ---------------------------------------------------------
    codes = type_codes()
    truths = [epoch_truth(tree_seed, grid, pidx, stocking, st) for st in stands]
    use = []
    for i in range(len(epochs)):
        u = np.asarray(parcels[f"type_{i}"].to_numpy(), dtype=object)[np.maximum(pidx, 0)]
        u[pidx < 0] = "road"
        use.append(u)
    lap("truth")
    dt_years = years[-1] - years[0]
    tdir = out_dir / "truth"
    for ep, tr in zip(epochs, truths, strict=True):
        write_cog(
            raster(tr.agb_mg_ha.astype(np.float32), grid, nodata=None, bands=["agb"]),
            tdir / f"agb_{ep}.tif",
            band_tags={"units": "Mg/ha"},
        )
        write_cog(
            raster(tr.carbon_mg_ha.astype(np.float32), grid, nodata=None, bands=["carbon"]),
            tdir / f"carbon_{ep}.tif",
            band_tags={"units": "Mg C/ha"},
        )
        write_cog(
            raster(
                tr.canopy_height_m.astype(np.float32), grid, nodata=None, bands=["canopy_height"]
            ),
            tdir / f"canopy_height_{ep}.tif",
            band_tags={"units": "m"},
        )
    sink = (truths[-1].carbon_mg_ha - truths[0].carbon_mg_ha) / dt_years
    write_cog(
        raster(sink.astype(np.float32), grid, nodata=None, bands=["sink"]),
        tdir / "sink.tif",
        band_tags={"units": "Mg C/ha/yr"},
    )
    ft = np.vectorize(lambda s: codes[s] if s in codes else 0, otypes=[np.uint8])(use[-1])
    write_cog(
        raster(ft, grid, nodata=None, bands=["forest_type"]),
        tdir / "forest_type.tif",
        tags={f"code_{v}": k for k, v in sorted(codes.items())},
    )

    # --- parcels and project -----------------------------------------------------
    cell_ha = grid.resolution.x**2 / 10_000.0
    npar = len(parcels)
    valid = pidx >= 0
    stock_mg = [
        np.bincount(pidx[valid], weights=t.carbon_mg_ha[valid] * cell_ha, minlength=npar)
        for t in truths
    ]
    area_ha = parcels.geometry.area.to_numpy() / 10_000.0
    sink_t = (stock_mg[-1] - stock_mg[0]) * 44.0 / 12.0 / dt_years
    ptruth = pd.DataFrame(
        {
            "parcel_id": parcels["parcel_id"],
            "forest_type": parcels["forest_type"],
            "disturbance": parcels["disturbance"],
        }
    )
    for ep, s in zip(epochs, stock_mg, strict=True):
        ptruth[f"carbon_{ep}_mg"] = np.round(s, 3)
    ptruth["sink_tco2e_yr"] = np.round(sink_t, 3)
    ptruth.to_csv(tdir / "parcels.csv", index=False)
    (out_dir / "parcels").mkdir()
    pub = parcels[["parcel_id", "forest_type", "land_class"]].copy()
    pub["area_ha"] = np.round(area_ha, 4)
    write_gpkg(
        out_dir / "parcels" / "parcels.gpkg",
        gpd.GeoDataFrame(pub, geometry=parcels.geometry, crs=crs),
        layer="parcels",
    )
    project = choose_project(r_project, parcels, sink_t / np.maximum(area_ha, 1e-9))
    write_gpkg(out_dir / "parcels" / "project.gpkg", project, layer="project")
    lap("parcels")

    # --- satellite -----------------------------------------------------------------
    lon, lat = p.center_lon, p.center_lat
    utm_zone = int(crs.split(":")[1]) % 100
    tile = (
        f"{utm_zone:02d}R{stac_items.mgrs_square(utm_zone, (xmin + xmax) / 2, (ymin + ymax) / 2)}"
    )
    scenes = _plan_scenes(config, r_scenes)
    g20 = sat.s2_20m_grid(grid)
    g30 = sat.landsat_grid(grid)
    inside30 = sat.inside_model(grid, g30)
    water30 = sat.resample_to((use[0] == "water").astype(np.float64), grid, g30, smooth_px=1) > 0.5
    items: list[dict[str, Any]] = []
    # clear-sky reflectance of every Sentinel-2 scene, NaN where the scene was cloudy or
    # shadowed: the composite truth is what a perfect cloud mask lets a median see
    clear_rho: dict[int, list[np.ndarray]] = {i: [] for i in range(len(epochs))}
    sky_rho: dict[int, list[np.ndarray]] = {i: [] for i in range(len(epochs))}
    n_scenes = {"sentinel-2-l2a": 0, "landsat-c2-l2": 0}
    n_post_baseline = 0
    for sc in scenes:
        ei = sc.epoch_index
        sz, sa = sat.solar_position(sc.when, lon, lat)
        factor, cos_i = sat.illumination_factor(slope, aspect, sz, sa)
        rho = (
            sat.base_reflectance(use[ei], truths[ei].agb_mg_ha, sc.when.timetuple().tm_yday)
            * factor[None]
        )
        cl = sat.clouds(sc, grid, sz, sa)
        rng = np.random.default_rng(sc.seed + 1)
        obs = sat.observe(rho, cl, rng=rng)
        date = sc.when.strftime("%Y%m%d")
        if sc.collection == "sentinel-2-l2a":
            item_id = f"S2{sc.platform[-1].upper()}_{tile}_{date}_0_L2A"
            clear_rho[ei].append(np.where(cl.clear[None], rho, np.nan).astype(np.float32))
            sky_rho[ei].append(rho.astype(np.float32))
            post_baseline = sc.when.date() >= dt.date.fromisoformat(
                c["sentinel2"]["offset_from_date"]
            )
            # Earth Search v1 removes the +1000 BOA offset from the pixels of most
            # baseline >= 04.00 scenes and flags it (earthsearch:boa_offset_applied: true);
            # some scenes keep the raw +1000 with the flag false (Element84/earth-search#66,
            # cirrus-geo/cirrus-earth-search#21). Every third post-baseline scene is raw, so
            # both paths are exercised.
            raw_offset = post_baseline and n_post_baseline % 3 == 2
            n_post_baseline += post_baseline
            sdir = out_dir / "scenes" / sc.collection / item_id
            hrefs = {}
            obs20 = sat.block_mean(obs, 2)
            for bi, (b, res) in enumerate(
                zip(c["reflectance"]["bands"], c["sentinel2"]["resolution_m"], strict=True)
            ):
                g = grid if res == 10 else g20
                arr = obs[bi] if res == 10 else obs20[bi]
                write_cog(
                    raster(sat.to_s2_dn(arr, offset_applied=raw_offset), g, nodata=0),
                    sdir / f"{b}.tif",
                )
                hrefs[b] = (final_dir / "scenes" / sc.collection / item_id / f"{b}.tif").as_uri()
            scl = sat.scl_20m(obs20, cl, use[ei], cos_i, rng=rng)
            write_cog(raster(scl, g20, nodata=0), sdir / "scl.tif")
            hrefs["scl"] = (final_dir / "scenes" / sc.collection / item_id / "scl.tif").as_uri()
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
            cover = pct["medium_proba_clouds"] + pct["high_proba_clouds"] + pct["thin_cirrus"]
            items.append(
                stac_items.s2_item(
                    item_id=item_id,
                    when=sc.when,
                    platform=sc.platform,
                    baseline=sc.extra["baseline"],
                    post_baseline=post_baseline,
                    boa_offset_applied=post_baseline and not raw_offset,
                    grid10=grid,
                    crs=crs,
                    hrefs=hrefs,
                    cloud_cover=cover,
                    scl_percent=pct,
                    sun_zenith=sz,
                    sun_azimuth=sa,
                    tile=tile,
                )
            )
        else:
            sensor = "LC08" if sc.platform == "landsat-8" else "LC09"
            item_id = f"{sensor}_L2SP_120041_{date}_02_T1"
            sdir = out_dir / "scenes" / sc.collection / item_id
            oli = sat.hls_to_oli(sat.resample_to(obs, grid, g30, smooth_px=3))
            hrefs = {}
            for bi, b in enumerate(c["landsat"]["bands"]):
                dn = sat.to_landsat_dn(oli[bi])
                dn[~inside30] = 0
                write_cog(raster(dn, g30, nodata=0), sdir / f"{b}.tif")
                hrefs[b] = (final_dir / "scenes" / sc.collection / item_id / f"{b}.tif").as_uri()
            op30 = sat.resample_to(cl.opacity, grid, g30, smooth_px=3)
            sh30 = sat.resample_to(cl.shadow, grid, g30, smooth_px=3)
            qa = sat.qa_pixel(op30, sh30, water30, inside30)
            write_cog(raster(qa, g30, nodata=float(c["landsat"]["qa_fill"])), sdir / "qa_pixel.tif")
            hrefs["qa_pixel"] = (
                final_dir / "scenes" / sc.collection / item_id / "qa_pixel.tif"
            ).as_uri()
            cover = float((op30[inside30] > 0.1).mean() * 100)
            items.append(
                stac_items.landsat_item(
                    item_id=item_id,
                    when=sc.when,
                    platform=sc.platform,
                    grid30=g30,
                    crs=crs,
                    hrefs=hrefs,
                    cloud_cover=cover,
                    sun_zenith=sz,
                    sun_azimuth=sa,
                    wrs_path="120",
                    wrs_row="041",
                )
            )
        n_scenes[sc.collection] += 1
        write_cog(
            raster(cl.clear.astype(np.uint8), grid, nodata=None, bands=["clear"]),
            tdir / "clear" / f"{item_id}.tif",
        )
    for ei, ep in enumerate(epochs):
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
    lap("satellite")

    # --- Copernicus DEM (EPSG:4326, 1 arc-second) ------------------------------------
    d = c["dem"]
    w, s, e, n = aoi.total_bounds
    step = 1.0 / 3600.0
    w0, n0 = math.floor(w / step) * step, math.ceil(n / step) * step
    nx_d, ny_d = math.ceil((e - w0) / step), math.ceil((n0 - s) / step)
    lons = w0 + (np.arange(nx_d) + 0.5) * step
    lats = n0 - (np.arange(ny_d) + 0.5) * step
    lo2, la2 = np.meshgrid(lons, lats)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    ux, uy = to_utm.transform(lo2, la2)
    col = np.clip(((ux - grid.affine.c) / grid.resolution.x).astype(np.int64), 0, grid.width - 1)
    row = np.clip(((grid.affine.f - uy) / grid.resolution.x).astype(np.int64), 0, grid.height - 1)
    canopy = ndimage.uniform_filter(truths[0].canopy_height_m, size=3)[row, col]
    dem = (
        terrain.elevation(ux, uy)
        + float(d["canopy_fraction"]) * canopy
        + r_dem.normal(0.0, float(d["noise_sd_m"]), ux.shape)
    )
    dem_grid = GeoBox((ny_d, nx_d), Affine(step, 0.0, w0, 0.0, -step, n0), "EPSG:4326")
    dem_id = f"Copernicus_DSM_COG_10_N{math.floor(lat):02d}_00_E{math.floor(lon):03d}_00_DEM"
    write_cog(
        raster(dem.astype(np.float32), dem_grid, nodata=-32767.0),
        out_dir / "scenes" / "cop-dem-glo-30" / dem_id / "data.tif",
    )
    items.append(
        stac_items.dem_item(
            item_id=dem_id,
            href=(final_dir / "scenes" / "cop-dem-glo-30" / dem_id / "data.tif").as_uri(),
            shape=(ny_d, nx_d),
            transform=[step, 0.0, w0, 0.0, -step, n0],
            bbox=[
                round(w0, 8),
                round(n0 - ny_d * step, 8),
                round(w0 + nx_d * step, 8),
                round(n0, 8),
            ],
        )
    )
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
    lap("dem_catalog")

    # --- LiDAR ----------------------------------------------------------------------
    lc = c["lidar"]
    side = min(p.lidar_km * 1000.0, xmax - xmin, ymax - ymin)
    side = math.floor(side)
    # the block sits in the south-west of the AOI centre, straddling a km line when possible
    bx0 = math.floor(max(xmin, min((xmin + xmax) / 2 - side / 2, xmax - side)))
    by0 = math.floor(max(ymin, min((ymin + ymax) / 2 - side / 2, ymax - side)))
    lidar_bounds = (float(bx0), float(by0), float(bx0 + side), float(by0 + side))
    lidar_epochs = [(0, lidar_bounds, out_dir / "lidar")]
    if p.lidar2_km > 0:
        s2 = math.floor(min(p.lidar2_km * 1000.0, side))
        lidar_epochs.append(
            (
                len(epochs) - 1,
                (float(bx0), float(by0), float(bx0 + s2), float(by0 + s2)),
                out_dir / f"lidar_{epochs[-1]}",
            )
        )
    tiles_all = []
    for ei, b, ldir in lidar_epochs:
        c0 = max(0, int((b[0] - grid.affine.c) // grid.resolution.x) - 1)
        c1 = min(grid.width - 1, int((b[2] - grid.affine.c) // grid.resolution.x) + 1)
        r0 = max(0, int((grid.affine.f - b[3]) // grid.resolution.x) - 1)
        r1 = min(grid.height - 1, int((grid.affine.f - b[1]) // grid.resolution.x) + 1)
        rr, cc = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
        pix = np.sort((rr * grid.width + cc).ravel())
        trees = generate_trees(
            tree_seed, grid, pix, pidx.ravel()[pix], stocking.ravel()[pix], stands[ei]
        )
        lep = config.epochs[ei]
        flight_date = lep.start + dt.timedelta(
            days=int((lep.end - lep.start).days * float(lc["flight_doy_fraction"]))
        )
        flight = dt.datetime.combine(flight_date, dt.time(2, 0, 0), dt.UTC)
        lt, tiles = lidar_mod.simulate_block(
            trees,
            terrain,
            b,
            crs=crs,
            out_dir=ldir,
            flight=flight,
            seed=int(r_lidar.integers(2**62)),
        )
        if ei == 0:
            write_cog(
                raster(lt.dem_1m.astype(np.float32), lt.grid_1m, nodata=None, bands=["elevation"]),
                tdir / "dem_lidar.tif",
                band_tags={"units": "m"},
            )
        write_cog(
            raster(lt.chm_1m.astype(np.float32), lt.grid_1m, nodata=None, bands=["canopy_height"]),
            tdir / f"chm_lidar_{epochs[ei]}.tif",
            band_tags={"units": "m"},
        )
        for t in tiles:
            t["epoch"] = epochs[ei]
            t["folder"] = ldir.name
        tiles_all.extend(tiles)
    lap("lidar")

    # --- plots ------------------------------------------------------------------------
    forest0 = np.isin(use[0], FOREST_TYPES)
    centers = plots_mod.choose_plots(r_plots, grid, pidx, forest0, lidar_bounds, p.n_plots)
    plot_ids = [f"P{i + 1:03d}" for i in range(len(centers))]
    gdf, gps = plots_mod.plot_polygons(r_plots, centers, plot_ids, crs)
    (out_dir / "plots").mkdir()
    write_gpkg(out_dir / "plots" / "plots.gpkg", gdf, layer="plots")
    tables, truth_rows = [], []
    id_maps: list[dict[tuple[int, int, int], str]] = [{} for _ in plot_ids]
    plot_area = float(c["plots"]["plot_area_ha"])
    for ei, ep in enumerate(epochs):
        trees, which = plots_mod.plot_trees(tree_seed, grid, centers, pidx, stocking, stands[ei])
        order = np.lexsort((trees.slot, trees.cohort, trees.pixel, which))
        trees, which = trees.subset(order), which[order]
        tids = []
        for w_, px, co, sl in zip(which, trees.pixel, trees.cohort, trees.slot, strict=True):
            key = (int(px), int(co), int(sl))
            m = id_maps[int(w_)]
            if key not in m:
                m[key] = f"{plot_ids[int(w_)]}-T{len(m) + 1:04d}"
            tids.append(m[key])
        dm, hm, age = plots_mod.measure(r_measure, trees)
        tables.append(plots_mod.tree_table(plot_ids, ep, trees, which, dm, hm, age, tids))
        agb = trees.agb_kg()
        per_plot = np.bincount(which, weights=agb, minlength=len(plot_ids)) / 1000.0 / plot_area
        nt = np.bincount(which, minlength=len(plot_ids))
        for i, pid in enumerate(plot_ids):
            truth_rows.append(
                {
                    "plot_id": pid,
                    "epoch": ep,
                    "agb_mg_ha": round(float(per_plot[i]), 4),
                    "n_trees": int(nt[i]),
                    "x_true_m": round(float(centers[i, 0]), 3),
                    "y_true_m": round(float(centers[i, 1]), 3),
                    "x_gps_m": round(float(gps[i, 0]), 3),
                    "y_gps_m": round(float(gps[i, 1]), 3),
                }
            )
    trees_df = pd.concat(tables, ignore_index=True)
    trees_df.to_csv(out_dir / "plots" / "trees.csv", index=False, float_format="%.10g")
    pd.DataFrame(truth_rows).to_csv(tdir / "plots.csv", index=False)
    lap("plots")

    summary: dict[str, Any] = {
        "region": config.region,
        "simulated": True,
        "seed": seed,
        "crs": crs,
        "bounds": list(grid.boundingbox),
        "resolution_m": grid.resolution.x,
        "shape": [grid.height, grid.width],
        "epochs": {
            ep: {"reference_year": round(y, 4)} for ep, y in zip(epochs, years, strict=True)
        },
        "n_parcels": npar,
        "n_project_parcels": len(project),
        "n_plots": len(plot_ids),
        "n_plot_trees": len(trees_df),
        "n_scenes": n_scenes,
        "n_items": len(items),
        "lidar": {
            "bounds": list(lidar_bounds),
            "epoch": epochs[0],
            "tiles": tiles_all,
            "second_epoch": epochs[-1] if p.lidar2_km > 0 else None,
        },
        "type_codes": codes,
        "n_trees": {ep: t.n_trees for ep, t in zip(epochs, truths, strict=True)},
        "mean_agb_mg_ha": {
            ep: round(float(t.agb_mg_ha.mean()), 4) for ep, t in zip(epochs, truths, strict=True)
        },
        "total_carbon_mg": {
            ep: round(float(t.carbon_mg_ha.sum() * cell_ha), 3)
            for ep, t in zip(epochs, truths, strict=True)
        },
        "elevation_range_m": [round(float(elev.min()), 3), round(float(elev.max()), 3)],
        "max_slope_deg": round(float(slope.max()), 3),
    }
    write_json(tdir / "summary.json", summary)
    lap("summary")
    summary["timings_s"] = timings
    return summary
