"""Airborne laser scanning of part of the AOI: 1 km LAZ tiles (ASPRS LAS 1.4, format 6).

Geometry (coefficients in ``simulation.yaml``, ``lidar``; all assumptions unless cited):

* the canopy surface is the maximum over individual crowns rasterised at
  ``crown_raster_m``: cones for Chinese fir and Masson pine, half-ellipsoids for
  broadleaves and bamboo (the usual geometric crown primitives, e.g. Pretzsch 2009,
  Forest Dynamics, Growth and Yield, Springer, ch. 8; crown radius linear in DBH and crown
  length a share of height: assumption). Crowns come from the same trees as the truth
  rasters and plots (:mod:`pipeline.simulate.stands`);
* pulses are uniform (``pulse_density_per_m2``, Poisson); a pulse over canopy gives 1-4
  returns (``returns_probabilities``): the first just below the crown surface
  (exponential penetration), intermediate ones inside the canopy, the last on the ground
  when it reaches it; pulses in gaps give one ground return;
* ground returns lie on the analytic terrain (bilinear on its 1 m samples, error << 1 mm)
  with ``ground_noise_sd_m`` vertical noise;
* low noise (class 7) below ground and high noise (class 18, birds/atmosphere) far above;
* classified tiles use ASPRS classes 2 (ground), 3/4/5 (low/medium/high vegetation by
  normalised height); every ``unclassified_every``-th tile is delivered unclassified
  (class 1, or 0 = never classified) so ground classification is exercised;
* flight strips run east-west; ``point_source_id`` is the strip, ``scan_angle`` the
  cross-track angle, ``gps_time`` adjusted standard GPS time of the flight day.

Truth: ``truth/dem_lidar.tif`` (ground at 1 m cell centres) and
``truth/chm_lidar_<epoch>.tif`` (1 m maximum of the crown surface). All vectorised numpy.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
import numpy.typing as npt
from odc.geo.geobox import GeoBox
from pyproj import CRS
from scipy import ndimage

from pipeline.grid import cell_centres, north_up_geobox
from pipeline.simulate.science import FOREST_TYPES, coefficients
from pipeline.simulate.stands import Trees
from pipeline.simulate.terrain import Terrain

FloatArray = npt.NDArray[np.float64]


def crown_surface(trees: Trees, grid: GeoBox) -> FloatArray:
    """Height above ground of the top of the canopy on ``grid`` (max over crowns)."""
    coef = coefficients()["forest_types"]
    surf = np.zeros(grid.height * grid.width)
    if len(trees) == 0:
        return surf.reshape(grid.shape)
    r = trees.crown_radius_m()
    length = trees.crown_length_m()
    cone = np.array([coef[t]["crown_shape"] == "cone" for t in FOREST_TYPES])[trees.type_index]
    order = np.argsort(-r, kind="stable")
    r, length, cone = r[order], length[order], cone[order]
    x, y, h = trees.x_m[order], trees.y_m[order], trees.height_m[order]
    res = grid.resolution.x
    fc = (x - grid.affine.c) / res
    fr = (grid.affine.f - y) / res
    ci = np.floor(fc).astype(np.int64)
    ri = np.floor(fr).astype(np.int64)
    reach = math.ceil(float(r.max()) / res) + 1
    for di in range(-reach, reach + 1):
        for dj in range(-reach, reach + 1):
            dmin = max(0.0, math.hypot(max(abs(di) - 1, 0), max(abs(dj) - 1, 0))) * res
            n = int(np.searchsorted(-r, -dmin, side="right"))  # trees with r >= dmin
            if n == 0:
                continue
            rr = ri[:n] + di
            cc = ci[:n] + dj
            dx = (cc + 0.5) * res - fc[:n] * res
            dy = (rr + 0.5) * res - fr[:n] * res
            d = np.hypot(dx, dy) / r[:n]
            m = (d <= 1.0) & (rr >= 0) & (rr < grid.height) & (cc >= 0) & (cc < grid.width)
            if not m.any():
                continue
            dd = d[m]
            z = np.where(
                cone[:n][m],
                h[:n][m] - length[:n][m] * dd,
                h[:n][m] - length[:n][m] * (1.0 - np.sqrt(1.0 - dd**2)),
            )
            np.maximum.at(surf, rr[m] * grid.width + cc[m], z)
    return surf.reshape(grid.shape)


@dataclass(frozen=True)
class LidarTruth:
    dem_1m: FloatArray
    chm_1m: FloatArray
    grid_1m: GeoBox


def gps_seconds(when: dt.datetime) -> float:
    """Adjusted standard GPS time (GPS seconds since 1980-01-06 minus 1e9; 18 leap s)."""
    epoch = dt.datetime(1980, 1, 6, tzinfo=dt.UTC)
    return (when - epoch).total_seconds() + 18.0 - 1e9


def _bilinear(a: FloatArray, g: GeoBox, x: FloatArray, y: FloatArray) -> FloatArray:
    col = (x - g.affine.c) / g.resolution.x - 0.5
    row = (g.affine.f - y) / g.resolution.x - 0.5
    return np.asarray(ndimage.map_coordinates(a, [row, col], order=1, mode="nearest"))


def simulate_block(
    trees: Trees,
    terrain: Terrain,
    bounds: tuple[float, float, float, float],
    *,
    crs: str,
    out_dir: Path,
    flight: dt.datetime,
    seed: int,
) -> tuple[LidarTruth, list[dict[str, object]]]:
    """Write the LAZ tiles of a LiDAR block and return its truth and a tile table."""
    c = coefficients()["lidar"]
    shape = (round(bounds[3] - bounds[1]), round(bounds[2] - bounds[0]))
    g1 = north_up_geobox(shape, x0_m=bounds[0], ytop_m=bounds[3], res_m=1.0, crs=crs)
    gc = north_up_geobox(
        (round(g1.height / c["crown_raster_m"]), round(g1.width / c["crown_raster_m"])),
        x0_m=g1.affine.c,
        ytop_m=g1.affine.f,
        res_m=float(c["crown_raster_m"]),
        crs=crs,
    )
    surf = crown_surface(trees, gc)
    k = round(1.0 / gc.resolution.x)
    chm = surf.reshape(g1.height, k, g1.width, k).max(axis=(1, 3))
    xx, yy = np.meshgrid(*cell_centres(g1))
    dem = terrain.elevation(xx, yy)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = []
    kx0, ky0 = math.floor(bounds[0] / 1000), math.floor(bounds[1] / 1000)
    kx1, ky1 = math.ceil(bounds[2] / 1000), math.ceil(bounds[3] / 1000)
    position = 0
    for tx in range(kx0, kx1):
        for ty in range(ky0, ky1):
            tb = (
                max(bounds[0], tx * 1000.0),
                max(bounds[1], ty * 1000.0),
                min(bounds[2], (tx + 1) * 1000.0),
                min(bounds[3], (ty + 1) * 1000.0),
            )
            if tb[2] <= tb[0] or tb[3] <= tb[1]:
                continue
            position += 1
            every = int(c["unclassified_every"])
            classified = position % every != 0
            code = 1 if (position // every) % 2 == 1 else 0
            rng = np.random.default_rng([seed, tx, ty])
            path = out_dir / f"{tx}_{ty}.laz"
            n = _write_tile(
                path,
                rng,
                tb,
                surf,
                gc,
                dem,
                g1,
                trees,
                crs=crs,
                flight=flight,
                classified=classified,
                unclassified_code=code,
            )
            tiles.append(
                {
                    "tile": path.name,
                    "xmin": tb[0],
                    "ymin": tb[1],
                    "xmax": tb[2],
                    "ymax": tb[3],
                    "classified": classified,
                    "n_points": n,
                }
            )
    return LidarTruth(dem, chm, g1), tiles


def _write_tile(
    path: Path,
    rng: np.random.Generator,
    tb: tuple[float, float, float, float],
    surf: FloatArray,
    gc: GeoBox,
    dem: FloatArray,
    g1: GeoBox,
    trees: Trees,
    *,
    crs: str,
    flight: dt.datetime,
    classified: bool,
    unclassified_code: int,
) -> int:
    c = coefficients()["lidar"]
    area = (tb[2] - tb[0]) * (tb[3] - tb[1])
    n = int(rng.poisson(area * float(c["pulse_density_per_m2"])))
    px = rng.uniform(tb[0], tb[2], n)
    py = rng.uniform(tb[1], tb[3], n)
    col = np.clip(((px - gc.affine.c) / gc.resolution.x).astype(np.int64), 0, gc.width - 1)
    row = np.clip(((gc.affine.f - py) / gc.resolution.x).astype(np.int64), 0, gc.height - 1)
    s = surf[row, col]
    canopy = s > 0.5
    probs = np.array(c["returns_probabilities"], dtype=np.float64)
    nret = np.where(canopy, rng.choice(np.arange(1, probs.size + 1), n, p=probs / probs.sum()), 1)
    total = int(nret.sum())
    pulse = np.repeat(np.arange(n), nret)
    starts = np.cumsum(nret) - nret
    rnum = np.arange(total) - np.repeat(starts, nret) + 1
    nr = nret[pulse]
    sp = s[pulse]
    first_h = np.maximum(sp - rng.exponential(float(c["first_return_depth_m"]), total), 0.0)
    h = np.where(rnum == 1, first_h, rng.uniform(0.0, 1.0, total) * first_h)
    # the last return of a multi-return pulse reaches the ground
    ground = (~canopy[pulse]) | ((rnum == nr) & (nr > 1))
    h = np.where(ground, 0.0, np.maximum(h, 0.3))
    x, y = px[pulse], py[pulse]
    zg = _bilinear(dem, g1, x, y)
    z = zg + h + np.where(ground, rng.normal(0.0, float(c["ground_noise_sd_m"]), total), 0.0)
    cls = np.where(
        ground, 2, np.where(h < c["veg_low_max_m"], 3, np.where(h < c["veg_medium_max_m"], 4, 5))
    )
    # noise points
    n_low = int(rng.poisson(total * float(c["low_noise_rate"])))
    n_high = int(rng.poisson(total * float(c["high_noise_rate"])))
    nx_ = rng.uniform(tb[0], tb[2], n_low + n_high)
    ny_ = rng.uniform(tb[1], tb[3], n_low + n_high)
    lo, hi = c["low_noise_depth_m"], c["high_noise_height_m"]
    nz = _bilinear(dem, g1, nx_, ny_) + np.concatenate(
        [-rng.uniform(lo[0], lo[1], n_low), rng.uniform(hi[0], hi[1], n_high)]
    )
    x = np.concatenate([x, nx_])
    y = np.concatenate([y, ny_])
    z = np.concatenate([z, nz])
    cls = np.concatenate([cls, np.full(n_low, 7), np.full(n_high, 18)])
    rnum = np.concatenate([rnum, np.ones(n_low + n_high, dtype=np.int64)])
    nr = np.concatenate([nr, np.ones(n_low + n_high, dtype=np.int64)])
    is_ground = cls == 2
    if not classified:
        cls = np.full_like(cls, unclassified_code)
    m = x.shape[0]
    strip_w = float(c["strip_width_m"])
    strip = np.floor((y - math.floor(tb[1] / strip_w) * strip_w) / strip_w).astype(np.int64)
    strip_center = (np.floor(y / strip_w) + 0.5) * strip_w
    angle = np.degrees(np.arctan2(y - strip_center, float(c["flight_altitude_m"])))
    t0 = gps_seconds(flight)
    gps = t0 + strip * 600.0 + (x - tb[0]) / 70.0
    intensity = np.where(is_ground, rng.normal(2200, 300, m), rng.normal(1100, 250, m) / rnum)
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.full(3, float(c["xyz_scale_m"]))
    header.offsets = np.array([math.floor(tb[0]), math.floor(tb[1]), 0.0])
    header.add_crs(CRS.from_user_input(crs))
    header.creation_date = flight.date()
    header.system_identifier = "SIMULATED ALS"
    header.generating_software = "forest-carbon simulate"
    las = laspy.LasData(header)
    las.x = x
    las.y = y
    las.z = z
    las.return_number = rnum.astype(np.uint8)
    las.number_of_returns = nr.astype(np.uint8)
    las.classification = cls.astype(np.uint8)
    las.intensity = np.clip(intensity, 1, 65535).astype(np.uint16)
    las.scan_angle = np.rint(angle / 0.006).astype(np.int16)
    las.point_source_id = (strip + 1).astype(np.uint16)
    las.gps_time = gps
    las.write(str(path), laz_backend=laspy.LazBackend.Lazrs)
    return m
