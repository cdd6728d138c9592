"""LiDAR stage: LAS/LAZ tiles -> DTM, CHM and area-based metrics on the model grid.

Science (details and references in :mod:`pipeline.lidar`): ASPRS noise classes 7/18 are
dropped (plus a statistical outlier filter on unclassified clouds); ground returns are
class 2, or found by the simple morphological filter (SMRF; or the cloth simulation
filter) when a cloud has no ground class; the DTM is a TIN of the ground returns; every
return is normalised to height above the DTM; the CHM takes the highest return per cell
(p2r, by default per half cell with empty half cells filled from their neighbours) or
the pit-free algorithm; area-based
metrics (height mean, sd, max, percentiles of first returns, cover above 2 m, return
density and the LiDAR-covered share of each cell) are computed on the model grid shared
with the composites. Tiles are processed in buffered chunks on the active Dask scheduler
(:mod:`pipeline.lidar.engine`), so tile edges leave no seams.

Memory does not grow with the area flown: each chunk task writes its rasters into a
staging folder (the run folder's scratch folder of the stage) and returns only its QA
counts; the returned rasters are lazy, read back from there in ``BLOCK_PX`` blocks, with the
footprint mask, return density and covered share computed per block, and the QA's CHM
range and 99th percentile and the flights' DTM difference are exact statistics computed
block by block (:mod:`pipeline.lidar.stats`).

Outputs (run-folder relpaths): ``lidar/dtm.tif``, ``lidar/chm.tif`` (LiDAR resolution,
over the tiles), ``lidar/metrics.tif`` (model grid), ``lidar/qa.json``, ``lidar/tiles.csv``;
a repeat flight of another epoch (``sources.lidar_repeat``, docs/lidar.md) adds its
``lidar/chm_<epoch>.tif`` and ``lidar/metrics_<epoch>.tif``.
All tiles or fail: a tile that is empty, unreadable, corrupt or has no usable point (every
point classified noise) is an error naming it, unless ``stages.lidar.allow_skipped_tiles``
(then it is skipped with a warning). Every message of the QA (skipped tiles; chunks whose
input is already height-normalised, where the cloud holds no terrain and
``lidar/dtm.tif`` is NaN) is also a warning, which the runner records in the manifest and
the report lists: the heights and metrics of a normalised cloud are used as they are, but
its empty DTM is never silent.

Standalone: ``forest-carbon lidar TILES... --resolution 1 --out DIR``.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from dask.delayed import Delayed
from odc.geo.geobox import GeoBox

from pipeline.config import Config, LidarParams
from pipeline.contracts import (
    LIDAR_CHM_RELPATH,
    LIDAR_DTM_RELPATH,
    LIDAR_METRICS_RELPATH,
    LIDAR_QA_RELPATH,
    LIDAR_TILES_RELPATH,
    RunLayout,
    lidar_repeat_relpath,
)
from pipeline.errors import ConfigError, InputDataError, PipelineWarning
from pipeline.grid import cell_centres, north_up_geobox, region_geobox, snapped_bounds
from pipeline.lidar import engine
from pipeline.lidar.chm import P2R, PitFree
from pipeline.lidar.ground import CSF, SMRF
from pipeline.lidar.index import TileInfo, index_tiles, tiles_of
from pipeline.lidar.metrics import BAND_NAMES, BAND_UNITS, N_POINT_BANDS, footprint_fraction
from pipeline.lidar.read import Box
from pipeline.lidar.stats import Summary, summarise
from pipeline.stage import Stage


@dataclass(frozen=True)
class LidarJob:
    """What the LiDAR stage needs from the config: its params and the model grid.

    Attributes
    ----------
    params
        The ``stages.lidar`` section.
    crs
        Model CRS (``EPSG:n``); the tiles must be in it.
    resolution_m
        Model-grid resolution (the metrics' cell size).
    tile_crs
        CRS assumed for tiles whose header has none (``sources.lidar_crs``), or None.
    epoch
        Epoch of the first flight (``model.lidar_epoch``; the tile table's ``epoch``).
    """

    params: LidarParams
    crs: str
    resolution_m: float
    tile_crs: str | None = None
    epoch: str | None = None


def engine_settings(
    job: LidarJob, *, model_grid: GeoBox, lidar_grid: GeoBox
) -> engine.EngineSettings:
    """The frozen settings of the chunk tasks."""
    p = job.params
    algo: P2R | PitFree = (
        PitFree(thresholds_m=p.pitfree_thresholds_m, max_edge_m=p.pitfree_max_edge_m)
        if p.chm_algorithm == "pitfree"
        else P2R(subcells=p.p2r_subcells, fill=p.p2r_fill)
    )
    return engine.EngineSettings(
        resolution_m=p.resolution_m,
        min_ground_share=p.min_ground_share,
        buffer_m=p.buffer_m,
        chunk_size_m=engine.chunk_side(p.chunk_size_m, p.resolution_m, job.resolution_m),
        model_grid=model_grid,
        lidar_grid=lidar_grid,
        chm_algorithm=algo,
        ground=ground_algorithm(p),
        outlier_k=p.outlier_k,
        outlier_multiplier=p.outlier_multiplier,
        negative_tolerance_m=p.negative_tolerance_m,
        normalised_input=p.normalised_input,
        dtm_thin_m=p.dtm_thin_m if p.dtm_thin_m is not None else 2 * p.resolution_m,
        idw_rmax_m=p.idw_rmax_m,
        metrics_min_height_m=p.metrics_min_height_m,
        cover_threshold_m=p.cover_threshold_m,
        points_per_chunk=p.points_per_read,
    )


def ground_algorithm(p: LidarParams) -> CSF | SMRF:
    """The ground filter of unclassified clouds, with its parameters."""
    if p.ground_algorithm == "csf":
        return CSF(
            cloth_resolution_m=p.csf_cloth_resolution_m,
            rigidness=p.csf_rigidness,
            class_threshold_m=p.csf_class_threshold_m,
            time_step=p.csf_time_step,
            iterations=p.csf_iterations,
            slope_smooth=p.csf_slope_smooth,
        )
    return SMRF(
        cell_m=p.smrf_cell_m,
        slope=p.smrf_slope,
        window_m=p.smrf_window_m,
        threshold_m=p.smrf_threshold_m,
        scalar=p.smrf_scalar,
        low_outlier_m=p.smrf_low_outlier_m,
    )


def check_tile_crs(tiles: list[TileInfo], crs: str) -> None:
    """Every tile is in the model grid's CRS, or an error naming the tile."""
    want = pyproj.CRS.from_user_input(crs)
    for t in tiles:
        if t.crs is not None and not pyproj.CRS.from_user_input(t.crs).equals(
            want, ignore_axis_order=True
        ):
            raise InputDataError(
                f"{t.path}: the tile is in {t.crs} but the model grid is in {crs}; reproject "
                "the tiles (e.g. `pdal translate IN OUT reprojection "
                f'--filters.reprojection.out_srs="{crs}"`) or set the region crs'
            )


def lidar_grid_for(tiles: list[TileInfo], *, res_m: float, anchor_m: float) -> GeoBox:
    """The DTM/CHM grid over the tiles, snapped outwards to multiples of ``anchor_m``."""
    ok = [t for t in tiles if t.status == "ok"]
    b = (
        min(t.xmin for t in ok),
        min(t.ymin for t in ok),
        max(t.xmax for t in ok),
        max(t.ymax for t in ok),
    )
    x0, y0, x1, y1 = snapped_bounds(b, anchor_m)
    x1, y1 = max(x1, x0 + anchor_m), max(y1, y0 + anchor_m)
    shape = (round((y1 - y0) / res_m), round((x1 - x0) / res_m))
    return north_up_geobox(shape, x0_m=x0, ytop_m=y1, res_m=res_m)


def _dataarray(
    data: np.ndarray | da.Array,
    grid: GeoBox,
    crs: str,
    bands: list[str],
    units: list[str],
    long_name: str,
) -> xr.DataArray:
    xs, ys = cell_centres(grid)
    da = xr.DataArray(
        data.astype(np.float32, copy=False),
        dims=("band", "y", "x"),
        coords={"band": bands, "y": ys, "x": xs},
        attrs={"long_name": long_name, "units": units[0] if len(set(units)) == 1 else units},
    )
    da = da.rio.write_crs(crs)
    da = da.rio.write_transform(grid.affine)
    return da.rio.write_nodata(np.nan, encoded=False)


#: side (px) of the blocks in which the stage's rasters are read back from the staged
#: chunks: one COG block (1 MB of a 1 m raster). The writer stages in blocks of this
#: size, as it did for the whole arrays before (whose sides are rarely multiples of 16
#: px), and GDAL's averaged overviews depend on that layout: with 1024 px they differed
#: from the earlier files' in the last bits
BLOCK_PX = 512


def tile_failures(results: list[engine.ChunkResult], tiles: list[TileInfo]) -> dict[str, str]:
    """The tiles that could not be decoded, or gave no point that is not noise."""
    failures: dict[str, str] = {}
    usable: Counter[str] = Counter()
    for r in results:
        failures.update(r.failures)
        usable.update(r.usable)
    for t in tiles:
        # a tile read whole (every chunk under it) that gave no point: all were noise
        if t.status == "ok" and t.name not in failures and usable[t.name] == 0:
            failures[t.name] = (
                f"none of its {t.point_count} points is usable: all are classified as "
                "noise (ASPRS classes 7 and 18)"
            )
    return failures


def _terrain_block(
    window: engine.Window, pieces: list[tuple[Path, engine.Window]], boxes: list[Box], grid: GeoBox
) -> np.ndarray:
    """A block of the DTM or CHM: the staged chunks' cells, NaN outside every processed
    tile (IDW extrapolation stops there)."""
    r0, r1, c0, c1 = window
    out = engine.paste_staged(np.full((1, r1 - r0, c1 - c0), np.nan, np.float32), window, pieces)
    out[0, footprint_fraction(boxes, grid, window) == 0] = np.nan
    return out


def _metrics_block(
    window: engine.Window,
    metrics: list[tuple[Path, engine.Window]],
    counts: list[tuple[Path, engine.Window]],
    boxes: list[Box],
    grid: GeoBox,
) -> np.ndarray:
    """A block of the metrics (all bands): the staged chunks' point metrics where the
    tiles cover a cell, the return density and the covered share."""
    r0, r1, c0, c1 = window
    out = np.full((len(BAND_NAMES), r1 - r0, c1 - c0), np.nan, np.float32)
    engine.paste_staged(out[:N_POINT_BANDS], window, metrics)
    n_returns = engine.paste_staged(np.zeros((r1 - r0, c1 - c0), np.int64), window, counts)
    frac = footprint_fraction(boxes, grid, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(frac > 0, n_returns / (frac * grid.affine.a**2), np.nan)
    out[:N_POINT_BANDS, frac == 0] = np.nan
    out[N_POINT_BANDS] = density
    out[N_POINT_BANDS + 1] = frac
    return out


def _lazy(grid: GeoBox, bands: int, task: Callable[[engine.Window], Delayed]) -> da.Array:
    """A lazy ``(bands, y, x)`` float32 raster over ``grid`` whose ``BLOCK_PX`` blocks are
    ``task(window)``."""
    rows = [
        [
            da.from_delayed(task(w), shape=(bands, w[1] - w[0], w[3] - w[2]), dtype=np.float32)
            for w in (
                (r, min(r + BLOCK_PX, grid.height), c, min(c + BLOCK_PX, grid.width))
                for c in range(0, grid.width, BLOCK_PX)
            )
        ]
        for r in range(0, grid.height, BLOCK_PX)
    ]
    return da.block([rows])


def _overlaps(a: engine.Window, b: engine.Window) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1]) and max(a[2], b[2]) < min(a[3], b[3])


def _boxes_in(boxes: list[Box], grid: GeoBox, w: engine.Window) -> list[Box]:
    """The boxes with area in window ``w`` of ``grid`` (the others add nothing to it)."""
    a = grid.affine
    x0, x1 = a.c + w[2] * a.a, a.c + w[3] * a.a
    y0, y1 = a.f - w[1] * a.a, a.f - w[0] * a.a
    return [b for b in boxes if b[0] < x1 and b[2] > x0 and b[1] < y1 and b[3] > y0]


def staged_rasters(
    results: list[engine.ChunkResult],
    tiles: list[TileInfo],
    failures: dict[str, str],
    settings: engine.EngineSettings,
    folder: Path,
) -> tuple[da.Array, da.Array, da.Array]:
    """DTM, CHM and metrics (13 bands) as lazy rasters read block by block from the
    chunks' rasters staged in ``folder``, without the failed tiles' cover."""
    lg, mg = settings.lidar_grid, settings.model_grid
    good = [
        (t.xmin, t.ymin, t.xmax, t.ymax)
        for t in tiles
        if t.status == "ok" and t.name not in failures
    ]

    def staged(name: str, w: engine.Window) -> list[tuple[Path, engine.Window]]:
        on_lidar_grid = name in ("dtm_m", "chm_m")
        return [
            (engine.staged_path(folder, r.key, name), cw)
            for r in results
            if _overlaps(w, cw := r.lidar_window if on_lidar_grid else r.model_window)
        ]

    def terrain(name: str) -> da.Array:
        return _lazy(
            lg,
            1,
            lambda w: dask.delayed(_terrain_block, pure=True)(
                w, staged(name, w), _boxes_in(good, lg, w), lg
            ),
        )

    metrics = _lazy(
        mg,
        len(BAND_NAMES),
        lambda w: dask.delayed(_metrics_block, pure=True)(
            w, staged("metrics", w), staged("n_returns", w), _boxes_in(good, mg, w), mg
        ),
    )
    return terrain("dtm_m"), terrain("chm_m"), metrics


def _qa(
    tiles: list[TileInfo],
    results: list[engine.ChunkResult],
    failures: dict[str, str],
    settings: engine.EngineSettings,
    heights: Summary,
) -> dict[str, Any]:
    chunks = [r.stats for r in results]

    def total(k: str) -> int:
        return sum(int(str(c.get(k, 0))) for c in chunks)

    normalised = [c["chunk"] for c in chunks if c.get("input_normalised")]
    skipped = [t.error for t in tiles if t.status == "empty"]
    skipped += [f"{name}: failed: {msg}" for name, msg in sorted(failures.items())]
    skipped += [t.error for t in tiles if t.status == "failed"]
    n_out = total("n_points_out")
    return {
        "n_tiles": len(tiles),
        "n_tiles_ok": sum(t.status == "ok" and t.name not in failures for t in tiles),
        "n_tiles_empty": sum(t.status == "empty" for t in tiles),
        "n_tiles_failed": sum(t.status == "failed" or t.name in failures for t in tiles),
        "failed_tiles": {**{t.name: t.error for t in tiles if t.status == "failed"}, **failures},
        "empty_tiles": [t.name for t in tiles if t.status == "empty"],
        "n_points_read": total("n_read"),
        "n_noise_class_removed": total("n_noise_class"),
        "n_outliers_removed": total("n_outliers"),
        "n_ground": total("n_ground"),
        "n_heights_clamped": total("n_clamped"),
        "n_heights_below_tolerance_clamped": total("n_below_tolerance"),
        "n_without_terrain_removed": total("n_no_terrain_dropped"),
        "n_points_used": n_out,
        "share_heights_clamped": (total("n_clamped") / n_out) if n_out else 0.0,
        "share_heights_below_tolerance": (total("n_below_tolerance") / n_out) if n_out else 0.0,
        "negative_tolerance_m": settings.negative_tolerance_m,
        "normalised_input_chunks": normalised,
        "skipped_tiles": skipped,
        "ground_source": sorted({str(c["ground_source"]) for c in chunks}),
        "chm_max_m": heights.max,
        "chm_min_m": heights.min,
        "metrics_returns": (
            f"height statistics from first returns with height >= "
            f"{settings.metrics_min_height_m} m; cover_2m = share of first returns above "
            f"{settings.cover_threshold_m} m; density from all returns after noise removal"
        ),
        "chunk_side_m": settings.chunk_size_m,
        "buffer_m": settings.buffer_m,
        "chunks": chunks,
    }


def _tiles_table(tiles: list[TileInfo], failures: dict[str, str]) -> pd.DataFrame:
    rows = []
    for t in tiles:
        row = asdict(t)
        row["path"] = str(t.path)
        row["name"] = t.name
        if t.name in failures:
            row["status"] = "failed"
            row["error"] = failures[t.name]
        rows.append(row)
    cols = [
        "name",
        "status",
        "error",
        "point_count",
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "zmin",
        "zmax",
        "crs",
        "crs_source",
        "point_format",
        "version",
        "path",
    ]
    return pd.DataFrame(rows, columns=cols)


def refuse_skips(problems: list[str], params: LidarParams) -> None:
    """All tiles or fail: tiles that cannot be used are an error unless skips are allowed."""
    if not problems:
        return
    if params.allow_skipped_tiles:
        listing = "; ".join(problems)
        warnings.warn(
            PipelineWarning(
                f"lidar: {len(problems)} LiDAR tile(s) will be skipped "
                f"(stages.lidar.allow_skipped_tiles): {listing}",
                code="lidar_tiles_to_skip",
                values={"n": len(problems), "problems": listing},
            ),
            stacklevel=2,
        )
    else:
        raise InputDataError(
            f"{len(problems)} LiDAR tile(s) cannot be used: {'; '.join(problems)}; replace or "
            "remove them, or set stages.lidar.allow_skipped_tiles: true to run without them"
        )


def warn_qa(qa: dict[str, Any], p99: float, max_m: float, label: str) -> list[str]:
    """Warn, each with its code and ``label`` first, what the QA of a flight found that the
    user must know (its tiles skipped, chunks already height-normalised, a canopy
    implausibly tall: ``p99``, the CHM's 99th percentile, above ``max_m``: Z in feet read
    as metres?), and return the messages (``qa.json``'s ``messages``, without the label)."""
    said = []
    for problem in qa["skipped_tiles"]:
        said.append(f"{problem}; skipped (stages.lidar.allow_skipped_tiles)")
        warnings.warn(
            PipelineWarning(
                f"{label}: {said[-1]}",
                code="lidar_tile_skipped",
                values={"label": label, "problem": problem},
            ),
            stacklevel=3,
        )
    if qa["normalised_input_chunks"]:
        chunks = ", ".join(map(str, qa["normalised_input_chunks"]))
        said.append(
            f"chunks {chunks}: the input is already height-normalised (ground returns at "
            f"0 m); normalisation skipped and no DTM produced there, so {LIDAR_DTM_RELPATH} is "
            "NaN on them (take the terrain from the provider's DTM; if the heights are "
            "elevations, set stages.lidar.normalised_input: no)"
        )
        warnings.warn(
            PipelineWarning(
                f"{label}: {said[-1]}",
                code="lidar_input_normalised",
                values={"label": label, "chunks": chunks, "dtm": LIDAR_DTM_RELPATH},
            ),
            stacklevel=3,
        )
    if p99 > max_m:
        said.append(
            f"the canopy is implausibly tall: 99th percentile of the CHM {p99:.1f} m, above "
            f"stages.lidar.max_canopy_height_m = {max_m:g} m; are the Z values in feet (US "
            "survey feet read as metres give 3.28 times the height)? Check the header's "
            "vertical unit and convert Z to metres"
        )
        warnings.warn(
            PipelineWarning(
                f"{label}: {said[-1]}",
                code="lidar_canopy_implausible",
                values={"label": label, "p99": f"{p99:.1f}", "max_m": f"{max_m:g}"},
            ),
            stacklevel=3,
        )
    return said


def run_lidar(
    job: LidarJob,
    *,
    tiles: tuple[Path, ...],
    model_grid: GeoBox,
    staging: Path | None = None,
    use_dask: bool = True,
    label: str = "lidar",
) -> dict[str, object]:
    """The stage on an explicit model grid (the command's entry point); ``label`` starts
    its warnings.

    The chunks' rasters are staged in the folder ``staging`` (created if needed; every
    Dask worker must see it), which the returned rasters read lazily, block by block: it
    must outlive them (the runner gives the stage a scratch folder that it removes once
    the outputs are written). Without one, they are staged in a temporary folder and
    returned loaded in memory.
    """
    if staging is None:
        with tempfile.TemporaryDirectory(prefix="lidar-staging-") as tmp:
            out = run_lidar(
                job,
                tiles=tiles,
                model_grid=model_grid,
                staging=Path(tmp),
                use_dask=use_dask,
                label=label,
            )
            return {k: v.load() if isinstance(v, xr.DataArray) else v for k, v in out.items()}
    staging.mkdir(parents=True, exist_ok=True)
    index = index_tiles(list(tiles), assume_crs=job.tile_crs)
    check_tile_crs(index, job.crs)
    refuse_skips([t.error for t in index if t.status != "ok"], job.params)
    ok = [t for t in index if t.status == "ok"]
    if not ok:
        detail = "; ".join(t.error for t in index)
        raise InputDataError(f"no LiDAR tile has readable points: {detail}")
    lgrid = lidar_grid_for(index, res_m=job.params.resolution_m, anchor_m=job.resolution_m)
    settings = engine_settings(job, model_grid=model_grid, lidar_grid=lgrid)
    run = engine.run_dask if use_dask else engine.run_serial
    results = run(index, settings, staging)
    failures = tile_failures(results, index)
    refuse_skips([f"{k}: {v}" for k, v in sorted(failures.items())], job.params)
    if len(failures) + sum(t.status != "ok" for t in index) == len(index):
        raise InputDataError(
            "every LiDAR tile failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )
    dtm, chm, metrics = staged_rasters(results, index, failures, settings, staging)
    heights = summarise(chm, [99])
    qa = _qa(index, results, failures, settings, heights)
    p99 = heights.percentiles[0]
    qa["messages"] = warn_qa(qa, p99 or 0.0, job.params.max_canopy_height_m, label)
    units = [BAND_UNITS[b] for b in BAND_NAMES]
    return {
        LIDAR_DTM_RELPATH: _dataarray(
            dtm,
            lgrid,
            job.crs,
            ["elevation"],
            ["m"],
            "terrain elevation (TIN of ground returns)",
        ),
        LIDAR_CHM_RELPATH: _dataarray(
            chm,
            lgrid,
            job.crs,
            ["canopy_height"],
            ["m"],
            f"canopy height ({job.params.chm_algorithm})",
        ),
        LIDAR_METRICS_RELPATH: _dataarray(
            metrics, model_grid, job.crs, list(BAND_NAMES), units, "LiDAR area-based metrics"
        ),
        LIDAR_QA_RELPATH: qa,
        LIDAR_TILES_RELPATH: _tiles_table(index, failures),
    }


def model_grid_for_tiles(tiles: list[TileInfo], *, resolution_m: float) -> GeoBox:
    """A model grid covering the tiles (the command without an AOI)."""
    ok = [t for t in tiles if t.status == "ok"]
    if not ok:
        raise InputDataError("no LiDAR tile has readable points")
    g = lidar_grid_for(tiles, res_m=resolution_m, anchor_m=resolution_m)
    return g


def lidar(
    job: LidarJob,
    *,
    tiles: tuple[Path, ...],
    aoi: gpd.GeoDataFrame,
    repeat_tiles: Mapping[str, tuple[Path, ...]] | None = None,
    scratch: Path | None = None,
) -> dict[str, object]:
    """LiDAR stage: ``lidar/{dtm,chm,metrics}.tif``, ``lidar/qa.json``, ``lidar/tiles.csv``,
    and for each repeat flight ``lidar/{chm,metrics}_<epoch>.tif``.

    Parameters
    ----------
    job
        :class:`LidarJob` (LiDAR params, model CRS and resolution, assumed tile CRS).
    tiles
        LAS/LAZ tile paths.
    repeat_tiles
        Per epoch, the tiles of a repeat flight (``sources.lidar_repeat``): processed
        alone, the same way, on the same model grid (each flight's heights above its own
        ground); the tile table gains their rows (column ``epoch``), ``qa.json`` their QA
        under ``repeats`` with the two flights' DTM difference where they overlap.
    aoi
        Area of interest; the metrics' model grid is ``region_geobox(aoi, ...)``.
    scratch
        A folder that outlives the returned rasters (the runner's scratch folder of the
        stage), where each flight's chunks are staged (:func:`run_lidar`'s ``staging``);
        without one the rasters are returned in memory.

    Returns
    -------
    dict
        In-memory ``xarray.DataArray`` rasters (dims band, y, x; CRS and transform set,
        band names as descriptions) plus the QA dict and the tile table.

    Raises
    ------
    InputDataError
        No tiles, a tile without CRS (and no ``tile_crs``), conflicting CRS records,
        non-metric units, tiles in another CRS than the model's, or no tile with points.
    """
    if not math.isfinite(job.resolution_m) or job.resolution_m <= 0:
        raise InputDataError(f"model resolution must be positive, got {job.resolution_m}")
    grid = region_geobox(aoi, crs=job.crs, resolution_m=job.resolution_m)

    def staging(flight: str) -> Path | None:
        return None if scratch is None else scratch / flight

    out = run_lidar(job, tiles=tiles, model_grid=grid, staging=staging("first"))
    tables = [cast(pd.DataFrame, out[LIDAR_TILES_RELPATH]).assign(epoch=job.epoch)]
    qa = cast(dict[str, Any], out[LIDAR_QA_RELPATH])
    for epoch, paths in (repeat_tiles or {}).items():
        flight = run_lidar(
            job,
            tiles=paths,
            model_grid=grid,
            staging=staging(f"repeat_{epoch}"),
            label=f"lidar ({epoch} flight)",
        )
        qa.setdefault("repeats", {})[epoch] = {
            **cast(dict[str, Any], flight[LIDAR_QA_RELPATH]),
            "dtm_difference_m": dtm_difference(
                cast(xr.DataArray, out[LIDAR_DTM_RELPATH]),
                cast(xr.DataArray, flight[LIDAR_DTM_RELPATH]),
            ),
        }
        tables.append(cast(pd.DataFrame, flight[LIDAR_TILES_RELPATH]).assign(epoch=epoch))
        out[lidar_repeat_relpath("chm", epoch)] = flight[LIDAR_CHM_RELPATH]
        out[lidar_repeat_relpath("metrics", epoch)] = flight[LIDAR_METRICS_RELPATH]
    out[LIDAR_TILES_RELPATH] = pd.concat(tables, ignore_index=True)
    return out


def dtm_difference(first: xr.DataArray, repeat: xr.DataArray) -> dict[str, float | int | None]:
    """The repeat flight's DTM minus the first's where both have one (both DTM grids are
    snapped to the model grid, so their cells coincide): cells, mean, SD and the 1st and
    99th percentiles (m). Each flight's heights are above its own ground, so a shift
    between them does not enter the heights; a large one says the flights' vertical datums
    or ground filters differ. Computed block by block (:func:`pipeline.lidar.stats.summarise`)."""
    a, b = xr.align(first.squeeze("band", drop=True), repeat.squeeze("band", drop=True))
    diff = summarise((b - a).data, [1, 99])
    return {
        "cells": diff.n,
        "mean": diff.mean,
        "sd": diff.sd,
        "p01": diff.percentiles[0],
        "p99": diff.percentiles[1],
    }


def lidar_job(config: Config) -> LidarJob:
    """The LiDAR parameters with the model grid's CRS and resolution."""
    return LidarJob(
        params=config.stages.lidar,
        crs=config.crs,
        resolution_m=config.resolution_m,
        tile_crs=config.sources.lidar_crs,
        epoch=config.stages.model.lidar_epoch or config.epochs[0].name,
    )


def lidar_inputs(config: Config, layout: RunLayout) -> dict[str, Path | tuple[Path, ...]]:
    """The AOI and the LAS/LAZ tiles ``sources.lidar_tiles`` names (a glob or a ``.vpc``)."""
    pattern = config.sources.lidar_tiles
    if pattern is None:
        raise ConfigError(
            "sources.lidar_tiles: the lidar stage needs a glob of LAS/LAZ tiles or a .vpc file"
        )
    inputs: dict[str, Path | tuple[Path, ...]] = {"aoi": config.aoi, "tiles": tiles_of(pattern)}
    for epoch, spec in config.sources.lidar_repeat.items():
        inputs[f"repeat_tiles.{epoch}"] = tiles_of(spec, setting=f"sources.lidar_repeat.{epoch}")
    return inputs


STAGE = Stage(name="lidar", func=lidar, params=lidar_job, inputs=lidar_inputs, scratch=True)
