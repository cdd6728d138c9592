"""Seeded airborne-LiDAR point clouds with known truth, for tests and benchmarks.

In the spirit of lidR's ``generate_las()``: a sloped, undulating terrain (an analytic
function, so the true DTM is exact), tree crowns drawn as half-ellipsoids on a fine raster
(the true canopy surface), and pulses with up to three returns (canopy top, inside the
crown, ground), plus high (class 18) and low (class 7) noise. The unclassified variant
sets every class to 1 (noise included), as in a raw delivery without ground filtering.

Nothing here is science the pipeline relies on: these are synthetic scenes whose numbers
only need to be plausible (canopy 8-28 m, 20-35 degree slopes) and known exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
import pyproj

from pipeline.lidar.points import PointSet

FINE_M = 0.25  # resolution of the true canopy raster


@dataclass(frozen=True)
class Scene:
    """A synthetic forest scene: terrain function, canopy raster and pulse density."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    slope_deg: float
    base_m: float
    canopy_m: np.ndarray  # (rows from north, cols from west) at FINE_M
    pulses_m2: float
    noise_fraction: float
    seed: int

    def ground(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True ground elevation (m) at ``x, y``."""
        dx = x - self.xmin
        dy = y - self.ymin
        return (
            self.base_m
            + math.tan(math.radians(self.slope_deg)) * dx
            + 3.0 * np.sin(2 * np.pi * dy / 150.0) * np.cos(2 * np.pi * dx / 230.0)
        )

    def canopy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True canopy height (m above ground) at ``x, y`` (nearest fine cell)."""
        nrow, ncol = self.canopy_m.shape
        col = np.clip(((x - self.xmin) / FINE_M).astype(np.int64), 0, ncol - 1)
        row = np.clip(((self.ymax - y) / FINE_M).astype(np.int64), 0, nrow - 1)
        return self.canopy_m[row, col]

    def true_dtm(self, x0: float, ytop: float, res: float, shape: tuple[int, int]) -> np.ndarray:
        """True ground at the cell centres of a north-up grid."""
        rows, cols = shape
        xc = x0 + (np.arange(cols) + 0.5) * res
        yc = ytop - (np.arange(rows) + 0.5) * res
        xx, yy = np.meshgrid(xc, yc)
        return self.ground(xx, yy)

    def true_chm(self, x0: float, ytop: float, res: float, shape: tuple[int, int]) -> np.ndarray:
        """True canopy height: the highest canopy surface inside each cell."""
        k = round(res / FINE_M)
        c0 = round((x0 - self.xmin) / FINE_M)
        r0 = round((self.ymax - ytop) / FINE_M)
        rows, cols = shape
        block = self.canopy_m[r0 : r0 + rows * k, c0 : c0 + cols * k]
        return block.reshape(rows, k, cols, k).max(axis=(1, 3))


def make_scene(
    *,
    seed: int = 42,
    bounds: tuple[float, float, float, float] = (500_000.0, 2_900_000.0, 500_200.0, 2_900_200.0),
    slope_deg: float = 30.0,
    trees_ha: float = 300.0,
    pulses_m2: float = 8.0,
    noise_fraction: float = 0.002,
) -> Scene:
    """Build a scene: crowns at Poisson positions, heights 8-28 m, on sloped terrain."""
    rng = np.random.default_rng(seed)
    xmin, ymin, xmax, ymax = bounds
    ncol = round((xmax - xmin) / FINE_M)
    nrow = round((ymax - ymin) / FINE_M)
    canopy = np.zeros((nrow, ncol), dtype=np.float32)
    n_trees = rng.poisson(trees_ha * (xmax - xmin) * (ymax - ymin) / 10_000)
    tx = rng.uniform(xmin, xmax, n_trees)
    ty = rng.uniform(ymin, ymax, n_trees)
    th = rng.uniform(8.0, 28.0, n_trees)
    for x, y, h in zip(tx, ty, th, strict=True):
        r = 1.0 + 0.12 * h
        depth = 0.5 * h
        c0 = max(int((x - r - xmin) / FINE_M), 0)
        c1 = min(int((x + r - xmin) / FINE_M) + 1, ncol)
        r0 = max(int((ymax - y - r) / FINE_M), 0)
        r1 = min(int((ymax - y + r) / FINE_M) + 1, nrow)
        if c1 <= c0 or r1 <= r0:
            continue
        cx = xmin + (np.arange(c0, c1) + 0.5) * FINE_M
        cy = ymax - (np.arange(r0, r1) + 0.5) * FINE_M
        d2 = ((cx[None, :] - x) ** 2 + (cy[:, None] - y) ** 2) / r**2
        surf = np.where(d2 < 1.0, h - depth * (1.0 - np.sqrt(np.clip(1.0 - d2, 0, 1))), 0.0)
        np.maximum(canopy[r0:r1, c0:c1], surf.astype(np.float32), out=canopy[r0:r1, c0:c1])
    return Scene(xmin, ymin, xmax, ymax, slope_deg, 300.0, canopy, pulses_m2, noise_fraction, seed)


def iter_points(
    scene: Scene, *, strip_m: float = 50.0, normalised: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Returns of the scene in west-east strips (bounded memory), as column arrays.

    Keys: x, y, z (m), classification (ASPRS), return_number, number_of_returns.
    """
    x = scene.xmin
    strip = 0
    while x < scene.xmax - 1e-9:
        x1 = min(x + strip_m, scene.xmax)
        rng = np.random.default_rng([scene.seed, strip])
        area = (x1 - x) * (scene.ymax - scene.ymin)
        n = rng.poisson(scene.pulses_m2 * area)
        px = rng.uniform(x, x1, n)
        py = rng.uniform(scene.ymin, scene.ymax, n)
        g = np.zeros(n) if normalised else scene.ground(px, py)
        c = scene.canopy(px, py).astype(np.float64)
        veg = c > 0.5
        mid = veg & (rng.random(n) < 0.5)
        last = veg & (rng.random(n) < 0.35)
        nret = 1 + mid.astype(np.uint8) + last.astype(np.uint8)
        # first returns: canopy top (vegetated) or ground (open)
        z1 = np.where(veg, g + c - np.abs(rng.normal(0, 0.15, n)), g + rng.normal(0, 0.03, n))
        cls1 = np.where(veg, 5, 2)
        parts = [(px, py, z1, cls1, np.ones(n, np.uint8), nret)]
        zm = g[mid] + c[mid] * rng.uniform(0.2, 0.9, mid.sum())
        parts.append(
            (px[mid], py[mid], zm, np.full(mid.sum(), 5), np.full(mid.sum(), 2), nret[mid])
        )
        zl = g[last] + rng.normal(0, 0.03, last.sum())
        parts.append((px[last], py[last], zl, np.full(last.sum(), 2), nret[last], nret[last]))
        n_noise = rng.binomial(n, scene.noise_fraction)
        nx = rng.uniform(x, x1, n_noise)
        ny = rng.uniform(scene.ymin, scene.ymax, n_noise)
        ng = np.zeros(n_noise) if normalised else scene.ground(nx, ny)
        high = rng.random(n_noise) < 0.5
        nz = np.where(high, ng + rng.uniform(60, 150, n_noise), ng - rng.uniform(3, 15, n_noise))
        ones = np.ones(n_noise, np.uint8)
        parts.append((nx, ny, nz, np.where(high, 18, 7), ones, ones))
        yield {
            "x": np.concatenate([p[0] for p in parts]),
            "y": np.concatenate([p[1] for p in parts]),
            "z": np.concatenate([p[2] for p in parts]),
            "classification": np.concatenate([p[3] for p in parts]).astype(np.uint8),
            "return_number": np.concatenate([p[4] for p in parts]).astype(np.uint8),
            "number_of_returns": np.concatenate([p[5] for p in parts]).astype(np.uint8),
        }
        x = x1
        strip += 1


def las_header(crs: str | None = "EPSG:32650", *, point_format: int = 6) -> laspy.LasHeader:
    """A LAS 1.4 header with centimetre scales and (optionally) a WKT CRS record."""
    header = laspy.LasHeader(point_format=point_format, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([500_000.0, 2_900_000.0, 0.0])
    if crs is not None:
        header.add_crs(pyproj.CRS.from_user_input(crs))
    return header


def write_tiles(
    scene: Scene,
    out_dir: Path,
    *,
    tile_m: float = 100.0,
    classified: bool = True,
    normalised: bool = False,
    crs: str | None = "EPSG:32650",
    strip_m: float = 50.0,
) -> list[Path]:
    """Write the scene as LAZ tiles named ``<xmin>_<ymin>.laz``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[tuple[int, int], laspy.LasWriter] = {}
    paths: dict[tuple[int, int], Path] = {}
    try:
        for pts in iter_points(scene, strip_m=strip_m, normalised=normalised):
            ix = np.floor((pts["x"] - scene.xmin) / tile_m).astype(np.int64)
            iy = np.floor((pts["y"] - scene.ymin) / tile_m).astype(np.int64)
            for key in sorted(set(zip(ix.tolist(), iy.tolist(), strict=True))):
                sel = (ix == key[0]) & (iy == key[1])
                if key not in writers:
                    name = (
                        f"{int(scene.xmin + key[0] * tile_m)}_{int(scene.ymin + key[1] * tile_m)}"
                    )
                    paths[key] = out_dir / f"{name}.laz"
                    writers[key] = laspy.open(paths[key], mode="w", header=las_header(crs))
                w = writers[key]
                rec = laspy.ScaleAwarePointRecord.zeros(int(sel.sum()), header=w.header)
                rec.x = pts["x"][sel]
                rec.y = pts["y"][sel]
                rec.z = pts["z"][sel]
                cls = pts["classification"][sel]
                rec.classification = cls if classified else np.ones_like(cls)
                rec.return_number = pts["return_number"][sel]
                rec.number_of_returns = pts["number_of_returns"][sel]
                w.write_points(rec)
    finally:
        for w in writers.values():
            w.close()
    return [paths[k] for k in sorted(paths)]


def sparse_ground_tile(
    path: Path,
    side_m: float,
    gap: str,
    *,
    seed: int = 3,
    origin: tuple[float, float] = (500_000.0, 2_900_000.0),
) -> Path:
    """A LAS 1.4 (point format 8) tile of sparse ground returns (one per 200 m2, as the
    186 KB tile of issue 17 defect 6) on a plane, with a gap where water gives no return:
    ``lake`` (a disc of 0.35 x the side in radius), ``river`` (a diagonal band of 0.6 x
    the side) or ``none``; the same number of returns whatever the gap, on the plane
    z = 300 + 0.05 x (m, x from the west edge)."""
    rng = np.random.default_rng(seed)
    n = int(side_m * side_m / 200.0)
    x, y = rng.uniform(0, side_m, (2, 4 * n))
    if gap == "lake":
        keep = np.hypot(x - side_m / 2, y - side_m / 2) > 0.35 * side_m
    elif gap == "river":
        keep = np.abs(x - y) / np.sqrt(2) > 0.3 * side_m
    else:
        keep = np.ones(x.shape, bool)
    x, y = x[keep][:n], y[keep][:n]  # the same number of returns whatever the gap
    header = las_header(point_format=8)
    rec = laspy.ScaleAwarePointRecord.zeros(x.size, header=header)
    rec.x, rec.y, rec.z = origin[0] + x, origin[1] + y, 300.0 + 0.05 * x
    rec.classification = np.full(x.size, 2, np.uint8)
    rec.return_number = rec.number_of_returns = np.ones(x.size, np.uint8)
    with laspy.open(path, mode="w", header=header) as w:
        w.write_points(rec)
    return path


def point_set(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> PointSet:
    """Unclassified single returns at ``x, y, z`` (chunk coordinates, float32)."""
    ones = np.ones(np.shape(x)[0], np.uint8)
    f32 = [np.asarray(v, np.float32) for v in (x, y, z)]
    return PointSet(*f32, ones, ones, ones, (0.0, 0.0))
