"""The chunk engine: tiles in, seamless DTM/CHM blocks and per-cell metrics out.

Like lidR's LAScatalog engine (Roussel et al. 2020), the area is cut into square chunks
(default: one per 1 km, anchored at whole multiples of the chunk size, so 1 km tiles map
to one chunk each) and every chunk is processed with the points of a ``buffer_m`` ring
around it, so the TIN, the normalisation and the pit-free CHM near a chunk's edge see
the same neighbours as in a single-tile run: no seams. Chunk sides are whole multiples of
the model-grid and LiDAR resolutions, so every model cell lies in exactly one chunk and
its metrics use all its points.

Reading is two-phase so that each tile is decoded at most twice whatever the layout,
instead of once per neighbouring chunk:

1. halo tasks, one per tile that reaches into the ring of a chunk it is not under: decode
   the tile once and keep only the points in those rings (about 4 x buffer / chunk side
   of the points), split per chunk;
2. chunk tasks: decode the tiles under the chunk's core (keeping their points in core and
   ring), add the ring points from the halo tasks, then noise -> ground -> DTM ->
   normalise -> CHM -> metrics.

With tiles aligned to chunks, each tile is decoded twice (its chunk, its halo); a single
tile, or chunks larger than the whole block, need no halo decode at all.

Chunk cores, like model and LiDAR cells, are closed-open (``[west, east) x [south,
north)``): a return on a shared edge belongs to exactly one chunk and one cell, so tiled
and single-tile runs agree. (Returns exactly on the north or east edge of the whole block
fall outside every core and are used only as buffer.)

Both are ``dask.delayed`` tasks run by whatever Dask scheduler is active (the runner's
distributed client, or the threaded scheduler). A chunk task holds one chunk's points
(15 bytes per return; noise classes are dropped while reading) and processes them in
blocks, so memory depends on the chunk size, not on the number of tiles: about 1.5 GB
for a 1 km chunk of 20 million returns (benchmarks/bench_lidar.py). Halo results are
small (the rings) and released once their chunks are done.
A chunk task writes its rasters (:class:`ChunkRasters`, cropped to the output grids) as
``.npy`` files into a staging folder that every worker sees, and returns only its windows
and QA counts (:class:`ChunkResult`), so nothing that grows with the area is gathered;
:func:`paste_staged` reads them back window by window (``mmap``), for the stage to build
its rasters block by block.
A tile that fails to decode is reported, and the other tiles' results stand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import dask
import numpy as np
from odc.geo.geobox import GeoBox

from pipeline.errors import InputDataError
from pipeline.grid import cell_window, flat_index, north_up_geobox
from pipeline.lidar.chm import P2R, PitFree, chm
from pipeline.lidar.dtm import dtm_tin
from pipeline.lidar.ground import CSF, SMRF, classify_ground
from pipeline.lidar.index import TileInfo
from pipeline.lidar.metrics import point_metrics
from pipeline.lidar.noise import noise_class_mask, statistical_outlier_mask
from pipeline.lidar.normalise import NormaliseStats, clamp_heights, looks_normalised, normalise
from pipeline.lidar.points import GROUND, PointSet, empty_points
from pipeline.lidar.read import Box, PointSink, Target, read_targets


@dataclass(frozen=True)
class EngineSettings:
    """Everything a chunk task needs (frozen, picklable).

    Built from :class:`pipeline.config.LidarParams` (the defaults' home) by
    :func:`pipeline.stages.lidar.engine_settings`.
    """

    resolution_m: float
    min_ground_share: float
    buffer_m: float
    chunk_size_m: float
    model_grid: GeoBox
    lidar_grid: GeoBox
    chm_algorithm: P2R | PitFree
    ground: CSF | SMRF
    outlier_k: int
    outlier_multiplier: float
    negative_tolerance_m: float
    normalised_input: Literal["detect", "yes", "no"]
    dtm_thin_m: float
    idw_rmax_m: float
    metrics_min_height_m: float
    cover_threshold_m: float
    points_per_chunk: int


@dataclass(frozen=True)
class ChunkSpec:
    """A chunk: its key, core box and the tiles under its core and its ring."""

    key: tuple[int, int]
    core: Box
    core_tiles: tuple[TileInfo, ...]
    ring_tiles: tuple[TileInfo, ...]

    def buffered(self, buffer_m: float) -> Box:
        b = buffer_m
        return (self.core[0] - b, self.core[1] - b, self.core[2] + b, self.core[3] + b)


#: rows ``r0:r1`` and columns ``c0:c1`` of an output grid, as ``(r0, r1, c0, c1)``
Window = tuple[int, int, int, int]


@dataclass
class ChunkResult:
    """What a chunk task returns: the windows its rasters fill in the output grids (the
    rasters themselves are staged, :class:`ChunkRasters`), its QA counts and failures."""

    key: tuple[int, int]
    lidar_window: Window
    model_window: Window
    stats: dict[str, object] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    #: returns of each core tile kept (not noise) in the chunk's buffered box: a tile
    #: with none in every chunk has no usable point
    usable: dict[str, int] = field(default_factory=dict)


@dataclass
class ChunkRasters:
    """One chunk's rasters, cropped to its windows of the output grids: DTM and CHM in
    its ``lidar_window``, the point metrics (``N_POINT_BANDS`` bands) and the return
    counts in its ``model_window``."""

    dtm_m: np.ndarray
    chm_m: np.ndarray
    metrics: np.ndarray
    n_returns: np.ndarray

    def save(self, folder: Path, key: tuple[int, int]) -> None:
        """Write each raster to its :func:`staged_path` (renamed into place when whole)."""
        for name, arr in vars(self).items():
            path = staged_path(folder, key, name)
            tmp = path.with_name(f".{path.name}")
            np.save(tmp, arr)
            os.replace(tmp, path)


def staged_path(folder: Path, key: tuple[int, int], name: str) -> Path:
    """The ``.npy`` file of raster ``name`` (a :class:`ChunkRasters` field) of chunk ``key``."""
    return folder / f"chunk_{key[0]}_{key[1]}_{name}.npy"


def paste_staged(
    out: np.ndarray, window: Window, pieces: Sequence[tuple[Path, Window]]
) -> np.ndarray:
    """Fill ``out`` (the cells of ``window`` of an output grid, bands first) with the parts
    of the staged rasters ``pieces`` (each a file and the chunk's window in that grid) that
    fall inside it; cells outside every piece keep their value."""
    r0, r1, c0, c1 = window
    for path, (a0, a1, b0, b1) in pieces:
        y0, y1, x0, x1 = max(r0, a0), min(r1, a1), max(c0, b0), min(c1, b1)
        if y1 > y0 and x1 > x0:
            src = np.load(path, mmap_mode="r")
            out[..., y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = src[
                ..., y0 - a0 : y1 - a0, x0 - b0 : x1 - b0
            ]
    return out


def chunk_side(chunk_size_m: float, *resolutions_m: float) -> float:
    """``chunk_size_m`` rounded up to a whole multiple of every resolution."""
    step = Fraction(str(resolutions_m[0]))
    for r in resolutions_m[1:]:
        f = Fraction(str(r))
        # least common multiple of two fractions
        num = math.lcm(step.numerator, f.numerator)
        den = math.gcd(step.denominator, f.denominator)
        step = Fraction(num, den)
    n = math.ceil(Fraction(str(chunk_size_m)) / step)
    return float(max(n, 1) * step)


def ring_boxes(core: Box, buffer_m: float) -> list[Box]:
    """The four rectangles of the ring of width ``buffer_m`` around ``core``."""
    x0, y0, x1, y1 = core
    b = buffer_m
    return [
        (x0 - b, y0 - b, x1 + b, y0),
        (x0 - b, y1, x1 + b, y1 + b),
        (x0 - b, y0, x0, y1),
        (x1, y0, x1 + b, y1),
    ]


def plan_chunks(tiles: list[TileInfo], *, side_m: float, buffer_m: float) -> list[ChunkSpec]:
    """Chunks (anchored at multiples of ``side_m``) covering the tiles with points."""
    ok = [t for t in tiles if t.status == "ok"]
    if not ok:
        return []
    keys: set[tuple[int, int]] = set()
    for t in ok:
        # closed-open cores: a tile ending exactly on a chunk edge does not reach past it
        i0, j0 = math.floor(t.xmin / side_m), math.floor(t.ymin / side_m)
        i1 = max(math.ceil(t.xmax / side_m), i0 + 1)
        j1 = max(math.ceil(t.ymax / side_m), j0 + 1)
        for i in range(i0, i1):
            for j in range(j0, j1):
                keys.add((i, j))
    specs = []
    for i, j in sorted(keys, key=lambda k: (-k[1], k[0])):
        core = (i * side_m, j * side_m, (i + 1) * side_m, (j + 1) * side_m)
        core_tiles = tuple(t for t in ok if t.intersects(core))
        if not core_tiles:
            continue
        rings = ring_boxes(core, buffer_m) if buffer_m > 0 else []
        # core tiles give their ring points in the core read (same decode)
        ring_tiles = tuple(
            t for t in ok if t not in core_tiles and any(t.intersects(r) for r in rings)
        )
        specs.append(ChunkSpec((i, j), core, core_tiles, ring_tiles))
    return specs


def read_halo(
    tile: TileInfo, chunks: list[ChunkSpec], settings: EngineSettings
) -> tuple[dict[tuple[int, int], PointSet], dict[str, str]]:
    """Points of ``tile`` in the rings of ``chunks``, split per chunk (one decode)."""
    targets = {
        c.key: Target(
            tuple(ring_boxes(c.core, settings.buffer_m)),
            (c.core[0], c.core[1]),
            PointSink(tile.point_count),
            exclude=c.core,
        )
        for c in chunks
    }
    try:
        read_targets(tile.path, list(targets.values()), points_per_chunk=settings.points_per_chunk)
    except InputDataError as err:
        return {}, {tile.name: str(err)}
    return {k: t.sink.points(t.origin) for k, t in targets.items()}, {}


def _read_chunk(
    spec: ChunkSpec,
    halos: list[tuple[dict[tuple[int, int], PointSet], dict[str, str]]],
    settings: EngineSettings,
) -> tuple[PointSet, dict[str, str], int, dict[str, int]]:
    origin = (spec.core[0], spec.core[1])
    failures: dict[str, str] = {}
    pieces = []
    for pieces_by_chunk, failed in halos:
        failures.update(failed)
        if spec.key in pieces_by_chunk:
            pieces.append(pieces_by_chunk[spec.key])
    capacity = sum(t.point_count for t in spec.core_tiles) + sum(len(p) for p in pieces)
    sink = PointSink(capacity)
    usable: dict[str, int] = {}
    for t in spec.core_tiles:
        before = sink.n
        try:
            read_targets(
                t.path,
                [Target((spec.buffered(settings.buffer_m),), origin, sink, count_box=spec.core)],
                points_per_chunk=settings.points_per_chunk,
            )
        except InputDataError as err:
            failures[t.name] = str(err)
        usable[t.name] = sink.n - before
    for p in pieces:
        sink.add_points(p)
    pts = sink.points(origin) if sink.n else empty_points(origin)
    return pts, failures, sink.n_noise, usable


def _drop_noise(pts: PointSet, stats: dict[str, object], *, n_noise_read: int) -> PointSet:
    """``pts`` without the ASPRS noise classes (counted with those the reader dropped)."""
    noise = noise_class_mask(pts)
    n_noise = int(np.count_nonzero(noise))
    stats["n_noise_class"] = n_noise_read + n_noise
    return pts.select(~noise) if n_noise else pts


def _with_ground(
    pts: PointSet, side: float, settings: EngineSettings, stats: dict[str, object]
) -> PointSet:
    """``pts`` with ground returns in class 2: their own, or the ground filter's."""
    # decide by the core's own returns: buffer returns (or returns on the shared edge) of
    # a classified neighbour must not make an unclassified tile look classified, or its
    # ground would be extrapolated from the buffer alone
    core = (pts.x_m >= 0) & (pts.x_m < side) & (pts.y_m >= 0) & (pts.y_m < side)
    n_core = int(np.count_nonzero(core))
    n_core_ground = int(np.count_nonzero(pts.classification[core] == GROUND))
    classified = n_core > 0 and n_core_ground >= settings.min_ground_share * n_core
    stats["ground_source"] = "class 2" if classified else type(settings.ground).__name__
    if classified:
        stats["n_outliers"] = 0
        return pts
    out = statistical_outlier_mask(
        pts, k=settings.outlier_k, multiplier=settings.outlier_multiplier
    )
    stats["n_outliers"] = int(out.sum())
    return classify_ground(pts.select(~out), algorithm=settings.ground)


def _terrain_needed(
    pts: PointSet, spec: ChunkSpec, buf_grid: GeoBox, *, nb: int, n_core: int, res: float
) -> np.ndarray:
    """Cells of ``buf_grid`` whose terrain is needed: under every ring return (for the
    normalisation) and under the core tiles' footprints (output)."""
    side = spec.core[2] - spec.core[0]
    # returns in the core lie under the core tiles, so only the ring's need looking at
    x, y = pts.x_m, pts.y_m
    ring = (x < 0) | (x >= side) | (y < 0) | (y >= side)
    needed = np.zeros(buf_grid.height * buf_grid.width, bool)
    flat, inside = flat_index(buf_grid, x[ring], y[ring])
    needed[flat[inside]] = True
    needed = needed.reshape(buf_grid.shape)
    for t in spec.core_tiles:
        c0 = max(math.floor((max(t.xmin, spec.core[0]) - spec.core[0]) / res) + nb, 0)
        c1 = min(math.ceil((min(t.xmax, spec.core[2]) - spec.core[0]) / res) + nb, nb + n_core)
        r0 = max(math.floor((spec.core[3] - min(t.ymax, spec.core[3])) / res) + nb, 0)
        r1 = min(math.ceil((spec.core[3] - max(t.ymin, spec.core[1])) / res) + nb, nb + n_core)
        needed[r0:r1, c0:c1] = True
    return needed


def _metrics_grid(
    spec: ChunkSpec, settings: EngineSettings
) -> tuple[tuple[int, int, int, int], GeoBox]:
    """The model-grid window of the chunk and its cells in chunk coordinates (metres from
    the chunk's SW corner, the frame of its points)."""
    mw = cell_window(settings.model_grid, spec.core)
    ma = settings.model_grid.affine
    sub = north_up_geobox(
        (max(mw[1] - mw[0], 0), max(mw[3] - mw[2], 0)),
        x0_m=ma.c + mw[2] * ma.a - spec.core[0],
        ytop_m=ma.f - mw[0] * ma.a - spec.core[1],
        res_m=ma.a,
    )
    return mw, sub


def process_points(
    pts: PointSet, spec: ChunkSpec, settings: EngineSettings, *, n_noise_read: int = 0
) -> tuple[ChunkResult, ChunkRasters]:
    """Noise -> ground -> DTM -> normalise -> CHM -> metrics for one chunk's points.

    ``n_noise_read`` counts the noise returns of the core already dropped by the reader.
    """
    res = settings.resolution_m
    side = spec.core[2] - spec.core[0]
    stats: dict[str, object] = {
        "chunk": f"{spec.key[0]}_{spec.key[1]}",
        "n_read": len(pts) + n_noise_read,
    }
    pts = _with_ground(_drop_noise(pts, stats, n_noise_read=n_noise_read), side, settings, stats)
    ground = pts.classification == GROUND
    stats["n_ground"] = int(ground.sum())
    if settings.normalised_input == "detect":
        normalised = looks_normalised(pts.z_m[ground])
    else:
        normalised = settings.normalised_input == "yes"
    stats["input_normalised"] = normalised
    # DTM over core + ring (whole cells), so normalisation near the core edge is exact
    nb = math.ceil(settings.buffer_m / res)
    b = nb * res
    n_core = round(side / res)
    n_buf = n_core + 2 * nb
    buf_grid = north_up_geobox((n_buf, n_buf), x0_m=-b, ytop_m=side + b, res_m=res)
    if normalised:
        dtm = np.full(buf_grid.shape, np.nan, np.float32)
        pts, nstats = clamp_heights(
            pts.with_z(pts.z_m.copy()), tolerance_m=settings.negative_tolerance_m
        )
    else:
        dtm = dtm_tin(
            pts.x_m[ground],
            pts.y_m[ground],
            pts.z_m[ground],
            buf_grid,
            thin_m=settings.dtm_thin_m,
            idw_rmax_m=settings.idw_rmax_m,
            needed=_terrain_needed(pts, spec, buf_grid, nb=nb, n_core=n_core, res=res),
        )
        pts, nstats = normalise(pts, dtm, buf_grid, tolerance_m=settings.negative_tolerance_m)
    stats.update(
        n_clamped=nstats.n_clamped,
        n_below_tolerance=nstats.n_below_tolerance,
        n_no_terrain_dropped=nstats.n_no_terrain_dropped,
    )
    algo = settings.chm_algorithm
    if isinstance(algo, PitFree) or algo.fill != "none":
        # both look at neighbouring cells: computed over the ring too, so no seams
        chm_buf = chm(pts, buf_grid, algorithm=algo)
        chm_core = chm_buf[nb : nb + n_core, nb : nb + n_core]
    else:
        core_grid = north_up_geobox((n_core, n_core), x0_m=0.0, ytop_m=side, res_m=res)
        chm_core = chm(pts, core_grid, algorithm=algo)
    dtm_core = dtm[nb : nb + n_core, nb : nb + n_core]
    # crop to the output grids
    lw = cell_window(settings.lidar_grid, spec.core)
    la = settings.lidar_grid.affine
    lr0 = lw[0] - round((la.f - spec.core[3]) / res)
    lc0 = lw[2] - round((spec.core[0] - la.c) / res)
    sl = (slice(lr0, lr0 + lw[1] - lw[0]), slice(lc0, lc0 + lw[3] - lw[2]))
    mw, sub = _metrics_grid(spec, settings)
    metrics, n_returns = point_metrics(
        pts,
        sub,
        min_height_m=settings.metrics_min_height_m,
        cover_threshold_m=settings.cover_threshold_m,
    )
    stats["n_points_out"] = len(pts)
    rasters = ChunkRasters(
        dtm_m=np.ascontiguousarray(dtm_core[sl]),
        chm_m=np.ascontiguousarray(chm_core[sl]),
        metrics=metrics,
        n_returns=n_returns,
    )
    return ChunkResult(key=spec.key, lidar_window=lw, model_window=mw, stats=stats), rasters


def process_chunk(
    spec: ChunkSpec,
    halos: list[tuple[dict[tuple[int, int], PointSet], dict[str, str]]],
    settings: EngineSettings,
    folder: Path,
) -> ChunkResult:
    """Read and process one chunk and stage its rasters in ``folder`` (a Dask task)."""
    pts, failures, n_noise, usable = _read_chunk(spec, halos, settings)
    result, rasters = process_points(pts, spec, settings, n_noise_read=n_noise)
    del pts  # the chunk's points are not needed while its rasters are written
    rasters.save(folder, spec.key)
    result.failures = failures
    result.usable = usable
    return result


def halo_plan(specs: list[ChunkSpec]) -> dict[str, tuple[TileInfo, list[ChunkSpec]]]:
    """For every tile reaching into a ring: the chunks whose ring it reaches."""
    plan: dict[str, tuple[TileInfo, list[ChunkSpec]]] = {}
    for s in specs:
        for t in s.ring_tiles:
            plan.setdefault(str(t.path), (t, []))[1].append(s)
    return plan


def build_tasks(tiles: list[TileInfo], settings: EngineSettings, folder: Path) -> list[object]:
    """One ``dask.delayed`` task per chunk (depending on the halo tasks it needs), staging
    its rasters in ``folder``."""
    side = settings.chunk_size_m
    specs = plan_chunks(tiles, side_m=side, buffer_m=settings.buffer_m)
    halo = {
        key: dask.delayed(read_halo, pure=True)(t, chunks, settings)
        for key, (t, chunks) in halo_plan(specs).items()
    }
    tasks = []
    for s in specs:
        deps = [halo[str(t.path)] for t in s.ring_tiles]
        tasks.append(dask.delayed(process_chunk, pure=True)(s, deps, settings, folder))
    return tasks


def run_serial(tiles: list[TileInfo], settings: EngineSettings, folder: Path) -> list[ChunkResult]:
    """The same computation without Dask (plain function calls, for tests and debugging)."""
    specs = plan_chunks(tiles, side_m=settings.chunk_size_m, buffer_m=settings.buffer_m)
    halo = {k: read_halo(t, c, settings) for k, (t, c) in halo_plan(specs).items()}
    return [
        process_chunk(s, [halo[str(t.path)] for t in s.ring_tiles], settings, folder) for s in specs
    ]


def run_dask(tiles: list[TileInfo], settings: EngineSettings, folder: Path) -> list[ChunkResult]:
    """Run the chunk tasks on the active Dask scheduler, staging their rasters in
    ``folder`` (which every worker must see); returns the chunks' results in plan order."""
    tasks = build_tasks(tiles, settings, folder)
    if not tasks:
        return []
    return list(dask.compute(*tasks))


__all__ = [
    "ChunkRasters",
    "ChunkResult",
    "ChunkSpec",
    "EngineSettings",
    "NormaliseStats",
    "Window",
    "build_tasks",
    "chunk_side",
    "paste_staged",
    "plan_chunks",
    "process_chunk",
    "run_dask",
    "run_serial",
    "staged_path",
]
