"""Reading and writing stage inputs and outputs, atomically, with content checksums.

Only the runner, the stand-alone commands and the demo-region simulator (for its COGs)
call this module: stages take and return in-memory objects. Every file is first written
under a temporary name in its final folder (``.<name>.tmp-<pid>``) and renamed into place
with :func:`os.replace`, which is atomic on POSIX filesystems: a run killed at any point
leaves either the previous file or no file under the final name, never a partial one.

Rasters are computed block by block: each Dask block is computed on the cluster and
written by this process into a tiled GeoTIFF, which GDAL then converts to a Cloud
Optimized GeoTIFF (``driver="COG"``). Memory therefore stays at a few blocks whatever
the raster size, and the same code works with a remote cluster that shares no disk. The
rasters of one stage are computed in one pass (:func:`write_cogs`), so the work their
blocks share (one prediction per chunk for seven maps) runs once.

Content checksums (:func:`content_checksum`) are what ``reproduce`` compares: for a raster
a hash of its pixels, dtype, nodata, CRS and transform; for a table a hash of its rows
(and geometries as WKB); for a workbook (XLSX) the rows of every sheet, by sheet name;
for JSON its canonical form; otherwise the bytes. File metadata
such as GeoPackage timestamps therefore does not count as a difference.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray
import xarray as xr

from pipeline.errors import ForestCarbonError, InputDataError, RunFolderError

if TYPE_CHECKING:
    from pipeline.inputs import FieldMapping

RASTER_SUFFIXES = {".tif", ".tiff"}

#: encoding of every CSV the pipeline writes: UTF-8 with a byte-order mark, which Excel
#: needs to recognise UTF-8 (without it, it decodes Chinese names with the system code
#: page); readers use the same codec, which also reads plain UTF-8 and drops the mark
CSV_ENCODING = "utf-8-sig"

#: GDAL block cache (bytes) of the process that writes rasters. GDAL's default is 5% of
#: RAM (1.2 GB on a 24 GB machine), and the writer would fill it with the dirty blocks of
#: the whole raster and, in the COG conversion, with its source blocks and a swath as wide
#: as the raster (the swath is a quarter of the cache), so its memory would grow with the
#: region. 32 MiB holds 8 one-band float32 staging blocks of 1024 x 1024 px (the largest
#: chunk a run uses) or 32 COG blocks of 512 x 512 px; GDAL flushes to disk beyond that,
#: which costs time, not results.
WRITER_GDAL_CACHE_BYTES = 32 * 2**20
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".shp"}
#: vector formats read as inputs: those the pipeline writes, FlatGeobuf and GeoParquet
VECTOR_INPUT_SUFFIXES = VECTOR_SUFFIXES | {".fgb", ".parquet", ".geoparquet"}
#: tables read as inputs (:func:`read_table`)
TABLE_SUFFIXES = {".csv", ".xlsx"}
#: the files of a Shapefile beside its ``.shp`` that an input's checksum covers (its
#: attributes, index, CRS and encoding)
SHAPEFILE_SIDECARS = (".dbf", ".shx", ".prj", ".cpg")


# --------------------------------------------------------------------------- paths


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling a file is written to before being renamed into place."""
    # the suffix is kept last: GDAL picks drivers and checks names by it
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


#: called with a temporary's path before it is created (the run folder's journal,
#: :class:`pipeline.run_folder.Journal`)
TemporaryJournal = Callable[[Path], None]

#: errno values of a full disk or an exhausted quota
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: free space (bytes) under which a failed write is put down to a full disk: GDAL reports
#: ENOSPC only on stderr (libtiff) and raises "Write failed" without an errno, or, when
#: the disk fills while it closes a GeoTIFF, a ``CPLE_AppDefinedError`` ("IO error
#: writing tag data") that is no OSError at all
FULL_DISK_BYTES = 16 * 2**20


def _is_no_space(err: BaseException, path: Path) -> bool:
    if getattr(err, "errno", None) in NO_SPACE_ERRNOS:
        return True
    if isinstance(err, ForestCarbonError):  # the pipeline's own error, full disk or not
        return False
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES


@contextlib.contextmanager
def full_disk_named(path: Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`RunFolderError` naming it.

    Used inside the temporaries' cleanup, so the disk is judged before they are removed.
    """
    try:
        yield
    except Exception as err:  # GDAL's and pyogrio's write errors are not all OSErrors
        if not _is_no_space(err, path):
            raise
        raise RunFolderError(
            f"{path}: no space left on the device while writing it (nothing was written under "
            "that name); free some space or give an output folder on another disk"
        ) from None


@contextlib.contextmanager
def atomic_path(path: Path, *, journal: TemporaryJournal | None = None) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``path`` when the block succeeds.

    ``journal`` records the temporary before it exists (see :mod:`pipeline.run_folder`).
    A full disk raises :class:`~pipeline.errors.RunFolderError` naming ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    if journal is not None:
        journal(tmp)
    try:
        with full_disk_named(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block succeeds.

    A folder that exists at ``path`` is replaced only with ``replace`` (it is moved aside,
    the new one renamed into place, then the old one removed), otherwise refused before
    any work. A failed block leaves ``path`` as it was and no temporary folder.

    Raises
    ------
    RunFolderError
        ``path`` exists and ``replace`` is false.
    """
    if path.exists() and not replace:
        raise RunFolderError(f"{path} exists; remove it, give another folder, or replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with full_disk_named(path):
            yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_file_sha256(spec: Path | tuple[Path, ...]) -> dict[Path, str]:
    """The sha256 of every file of an input: a file, the files under a directory, or a
    tuple of such paths (in :func:`input_checksum`'s order)."""
    paths = spec if isinstance(spec, tuple) else (spec,)
    out: dict[Path, str] = {}
    for p in paths:
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            sidecars = (
                [p.with_suffix(x) for x in SHAPEFILE_SIDECARS] if p.suffix.lower() == ".shp" else []
            )
            files = [p, *(q for q in sidecars if q.is_file())]
        else:
            raise InputDataError(f"{p}: input not found")
        out.update({q: file_sha256(q) for q in files})
    return out


def input_checksum(
    spec: Path | tuple[Path, ...], *, files: Mapping[Path, str] | None = None
) -> str:
    """sha256 of an input file, of every file under a directory, or of a tuple of paths:
    of each file's name (relative to its directory) and sha256. ``files`` are those of
    :func:`input_file_sha256` when already computed."""
    if files is None:
        files = input_file_sha256(spec)
    paths = spec if isinstance(spec, tuple) else (spec,)
    h = hashlib.sha256()
    for q, sha in files.items():
        folder = next((p for p in paths if p.is_dir() and p in q.parents), None)
        h.update(str(q.relative_to(folder) if folder else q.name).encode())
        h.update(sha.encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def read_input(
    spec: Path | tuple[Path, ...],
    *,
    chunk_px: int,
    repair_geometry: bool = False,
    fields: FieldMapping | None = None,
    sheet: str | None = None,
) -> Any:
    """Load an input the way :mod:`pipeline.stage` documents (by suffix); invalid polygons
    are refused, or repaired with ``repair_geometry``, and a layer's fields are renamed as
    ``fields`` maps them (:func:`pipeline.inputs.read_vector`); a table is read from CSV or
    from ``sheet`` of a workbook (:func:`read_table`)."""
    if isinstance(spec, tuple) or spec.is_dir():
        return spec
    suffix = spec.suffix.lower()
    if not spec.exists():
        raise InputDataError(f"{spec}: input not found")
    if suffix in RASTER_SUFFIXES:
        return open_raster(spec, chunk_px=chunk_px)
    if suffix in VECTOR_INPUT_SUFFIXES:
        from pipeline.inputs import read_vector

        return read_vector(spec, repair=repair_geometry, fields=fields)
    if suffix in TABLE_SUFFIXES:
        return read_table(spec, sheet=sheet)
    if suffix == ".json":
        try:
            return json.loads(spec.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputDataError(f"{spec}: not a JSON file ({err})") from None
    return spec


def read_table(path: Path, *, sheet: str | None = None) -> pd.DataFrame:
    """A table: CSV, UTF-8 with or without a byte-order mark (never part of a column name),
    or a detected Chinese encoding, warned (:func:`pipeline.inputs.read_csv_text`); or
    ``sheet`` (default: the first) of an XLSX workbook (:func:`pipeline.inputs.read_xlsx`)."""
    from pipeline.inputs import read_csv_text, read_xlsx

    if path.suffix.lower() == ".xlsx":
        return read_xlsx(path, sheet=sheet)
    return read_csv_text(path)


def open_raster(path: Path, *, chunk_px: int = 1024) -> xr.DataArray:
    """A raster as a lazy DataArray ``(band, y, x)`` whose ``band`` coordinate holds names."""
    arr = rioxarray.open_rasterio(path, chunks={"band": 1, "y": chunk_px, "x": chunk_px})
    if not isinstance(arr, xr.DataArray):
        raise InputDataError(f"{path}: holds subdatasets; expected a single (multi-band) raster")
    names = arr.attrs.get("long_name")
    if isinstance(names, str):
        names = (names,)
    if names and len(names) == arr.sizes["band"]:
        arr = arr.assign_coords(band=list(names))
    return arr


# --------------------------------------------------------------------------- writing


def _as_band_array(obj: xr.DataArray | xr.Dataset) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        arr = xr.concat([obj[n] for n in names], dim="band").assign_coords(band=names)
        arr.attrs = {**obj.attrs}
        units = [obj[n].attrs.get("units", "") for n in names]
        if any(units):
            arr.attrs["units"] = tuple(units)
        return arr
    if "band" not in obj.dims:
        return obj.expand_dims(band=[obj.name or "band_1"])
    return obj


def _nodata_of(arr: xr.DataArray) -> float | None:
    for key in ("nodata", "_FillValue"):
        if key in arr.attrs:
            return arr.attrs[key]
        if key in arr.encoding:
            return arr.encoding[key]
    if np.issubdtype(arr.dtype, np.floating):
        return float("nan")
    return None


ProgressCallback = Callable[[int, int], None]


def write_cog(
    arr_in: xr.DataArray | xr.Dataset,
    path: Path,
    *,
    client: Any = None,
    progress: ProgressCallback | None = None,
    tags: Mapping[str, str] | None = None,
    band_tags: Mapping[str, str] | None = None,
    journal: TemporaryJournal | None = None,
) -> None:
    """Write a georeferenced DataArray/Dataset as a COG, block by block, atomically.

    Every COG of the project (run outputs and the simulated demo data) is written here or
    by :func:`write_cogs`, which writes several at once: deflate with the predictor that
    suits the data type, 512 px blocks and overviews resampled as
    :func:`overview_resampling` says (averages of continuous quantities, nearest
    neighbour where a band holds classes or flags). Band names come from the ``band``
    coordinate, units from ``attrs["units"]`` (one, or one per band), nodata from
    ``attrs``/``encoding`` (``nodata``, ``_FillValue``; ``None`` writes none; NaN for
    floats by default).

    Parameters
    ----------
    arr_in
        ``(band, y, x)`` or ``(y, x)`` array, or a Dataset (one band per variable), with
        CRS and transform set (``.rio.write_crs`` / ``.rio.write_transform``).
    path
        The COG to write (replaced atomically).
    client
        Distributed client that computes the blocks (else the synchronous scheduler).
    progress
        ``progress(done, total)`` is called after each block is written.
    tags, band_tags
        GDAL metadata items of the dataset, and of every band.
    journal
        Records each temporary before it is created (see :func:`atomic_path`).
    """
    write_cogs(
        {path: arr_in},
        client=client,
        progress=None if progress is None else {path: progress},
        tags=tags,
        band_tags=band_tags,
        journal=journal,
    )


def write_cogs(
    arrays: Mapping[Path, xr.DataArray | xr.Dataset],
    *,
    client: Any = None,
    progress: Mapping[Path, ProgressCallback] | None = None,
    tags: Mapping[str, str] | None = None,
    band_tags: Mapping[str, str] | None = None,
    journal: TemporaryJournal | None = None,
) -> None:
    """Write several COGs (:func:`write_cog`, one per ``arrays`` item) in one pass.

    A stage's rasters usually come from one graph: the ``predict`` stage's seven maps
    of an epoch are bands of one prediction per chunk. Written one file at a time, each
    file's blocks would compute that prediction again (seven times the model and the
    reads of its predictors); here the blocks of every file are computed together, so
    the tasks they share run once per chunk, and each block is written to its file's
    staging GeoTIFF as it arrives. ``progress`` maps a path to its ``progress(done,
    total)``. Each file is then converted to a COG and replaced atomically.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    files = [_CogFile.prepare(arr, path) for path, arr in arrays.items()]
    progress = progress or {}
    try:
        with (
            contextlib.ExitStack() as stack,
            rasterio.Env(GDAL_CACHEMAX=WRITER_GDAL_CACHE_BYTES),  # bytes, not MB, in rasterio
        ):
            dsts = []
            for f in files:
                # entered just before its file, so closing that file is named by it
                stack.enter_context(full_disk_named(f.path))
                if journal is not None:
                    journal(f.stage_tmp)
                dsts.append(stack.enter_context(f.open_staging(tags, band_tags)))
            done = [0] * len(files)
            for i, (b, y0, x0), values in _computed_blocks([f.data for f in files], client):
                win = Window(x0, y0, values.shape[2], values.shape[1])
                # a write names its own file (the stack's innermost handler is the last file's)
                with full_disk_named(files[i].path):
                    dsts[i].write(
                        values, indexes=list(range(b + 1, b + 1 + values.shape[0])), window=win
                    )
                done[i] += 1
                callback = progress.get(files[i].path)
                if callback is not None:
                    callback(done[i], int(np.prod(files[i].data.numblocks)))
        for f in files:
            with (
                full_disk_named(f.path),
                atomic_path(f.path, journal=journal) as tmp,
                rasterio.Env(GDAL_CACHEMAX=WRITER_GDAL_CACHE_BYTES),
            ):
                rasterio.shutil.copy(
                    f.stage_tmp,
                    tmp,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    # floating-point prediction for floats, horizontal differencing for integers
                    PREDICTOR="YES",
                    BLOCKSIZE=COG_BLOCK_PX,
                    OVERVIEWS="AUTO",
                    OVERVIEW_RESAMPLING=f.resampling,
                    NUM_THREADS=1,
                )
    finally:
        for f in files:
            if f.stage_tmp.exists():
                f.stage_tmp.unlink()


#: block size (px) of every COG the project writes
COG_BLOCK_PX = 512


class _CogFile:
    """One COG being written by :func:`write_cogs`: its band array (a Dask array with one
    band per block), its staging GeoTIFF and the metadata both get."""

    def __init__(self, arr: xr.DataArray, data: da.Array, path: Path, resampling: str) -> None:
        self.arr, self.data, self.path, self.resampling = arr, data, path, resampling
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage_tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.blocks{path.suffix}")

    @classmethod
    def prepare(cls, arr_in: xr.DataArray | xr.Dataset, path: Path) -> _CogFile:
        arr = _as_band_array(arr_in).transpose("band", "y", "x")
        if arr.rio.crs is None:
            raise ValueError(f"{path}: raster has no CRS (set it with .rio.write_crs)")
        data = arr.data if isinstance(arr.data, da.Array) else da.from_array(np.asarray(arr.data))
        return cls(arr, data.rechunk({0: 1}), path, overview_resampling(arr_in))

    @contextlib.contextmanager
    def open_staging(
        self, tags: Mapping[str, str] | None, band_tags: Mapping[str, str] | None
    ) -> Iterator[Any]:
        """The staging GeoTIFF, open for writing, with band names, units and tags set."""
        import rasterio

        arr, data = self.arr, self.data
        bands, height, width = data.shape
        # The staging file's blocks are the Dask blocks, one band each (GTiff wants
        # multiples of 16), so every computed block fills whole GDAL blocks: none waits in
        # the bounded cache for a neighbour or another band, whatever order blocks finish
        # in. The COG's own layout is set by the conversion.
        stage_y, stage_x = data.chunks[1][0], data.chunks[2][0]
        if stage_y % 16 or stage_x % 16:
            stage_y = stage_x = COG_BLOCK_PX
        profile = {
            "driver": "GTiff",
            "dtype": str(data.dtype),
            "count": bands,
            "height": height,
            "width": width,
            "crs": arr.rio.crs,
            "transform": arr.rio.transform(recalc=True),
            "nodata": _nodata_of(arr),
            "tiled": True,
            "blockxsize": stage_x,
            "blockysize": stage_y,
            "interleave": "band",
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        with rasterio.open(self.stage_tmp, "w", **profile) as dst:
            names = [str(b) for b in arr.coords["band"].values] if "band" in arr.coords else []
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
            units = arr.attrs.get("units")
            if units:
                unit_list = [units] * bands if isinstance(units, str) else list(units)
                for i, u in enumerate(unit_list, start=1):
                    if u:
                        dst.set_band_unit(i, u)
            if band_tags:
                for i in range(1, bands + 1):
                    dst.update_tags(i, **band_tags)
            if tags:
                dst.update_tags(**tags)
            yield dst


def overview_resampling(obj: xr.DataArray | xr.Dataset) -> str:
    """GDAL resampling of a raster's overviews: ``AVERAGE``, or ``NEAREST`` when a band
    holds classes or flags.

    A band is categorical when its data type is an integer (the quality maps, class and
    mask layers, QA bit fields) or when it declares CF flag values (``flag_values`` in its
    attributes, as the forest carbon index's ``quality_flag`` does): averaging would
    invent classes and bit patterns that are not in the data. Continuous bands (carbon,
    SDs, sink, reflectance) get the mean of the cells they cover (nodata cells left out),
    so an overview shows the same mean density as the full resolution.

    GDAL's COG driver resamples all bands of a file alike, so a file that mixes both kinds
    gets ``NEAREST``: a decimated continuous band is still a sample of true values, while
    an averaged flag is not a flag.
    """
    variables = list(obj.data_vars.values()) if isinstance(obj, xr.Dataset) else [obj]
    categorical = any(v.dtype.kind in "biu" or "flag_values" in v.attrs for v in variables)
    return "NEAREST" if categorical else "AVERAGE"


#: places (the blocks that start at one pixel in every array) computed at once on a
#: distributed cluster, per thread of the cluster. With one per thread a thread would idle
#: from the moment its place finishes until the writer has taken it and submitted the next;
#: two keep every thread busy. Finished blocks wait for the one writing thread, so memory
#: holds a few places' blocks per thread, whatever the size of the grid.
PLACES_PER_THREAD = 2


def _computed_blocks(
    arrays: list[da.Array], client: Any
) -> Iterator[tuple[int, tuple[int, int, int], np.ndarray]]:
    """Yield ``(array index, (band0, y0, x0), block)`` for every block of ``arrays``.

    The blocks that start at the same place in every array are computed together, so the
    tasks they share (one prediction per chunk for seven maps) run once. Without a client
    the synchronous scheduler computes one place at a time. With one, a bounded window of
    places is in flight (:data:`PLACES_PER_THREAD` per thread of the cluster): the next
    place is submitted when one has finished, and each block is released once it has been
    taken. (Submitting every block at once let the finished blocks that the writer had not
    taken yet, and the graph of the whole grid, pile up in memory.) A task that several
    places need is kept from the first of them to the last, so it runs once: with
    ``map_overlap``, about one row of chunks under the blocks. The writer puts each block
    at its own place, so the order blocks finish in does not change a file.
    """
    import dask
    from dask.core import get_dependencies

    # one optimised graph of all arrays, of which each place gets only the tasks it needs:
    # culling the whole graph for every place would take time quadratic in the blocks
    optimized = dask.optimize(*arrays)
    graph = dict(optimized[0].__dask_graph__()) if optimized else {}
    # a key may be in two arrays (the very same block): it is computed once
    places: dict[tuple[int, int], list[Any]] = {}  # (y0, x0) -> its distinct block keys
    where: dict[Any, list[tuple[int, tuple[int, int, int]]]] = {}  # key -> (array, start)
    for i, data in enumerate(optimized):
        offsets = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in data.chunks]
        for index in np.ndindex(*data.numblocks):
            b0, y0, x0 = (int(offsets[d][index[d]]) for d in range(3))
            key = (data.name, *index)  # a Dask array's block keys
            if key not in where:
                places.setdefault((y0, x0), []).append(key)
            where.setdefault(key, []).append((i, (b0, y0, x0)))

    def tasks_of(keys: list[Any]) -> dict[Any, Any]:
        """The part of ``graph`` that computes ``keys``."""
        needed: dict[Any, Any] = {}
        stack = list(keys)
        while stack:
            key = stack.pop()
            if key not in needed:
                needed[key] = graph[key]
                stack.extend(get_dependencies(graph, key))
        return needed

    if client is None:
        from dask.local import get_sync

        for keys in places.values():
            for key, value in zip(keys, get_sync(tasks_of(keys), keys), strict=True):
                for i, start in where[key]:
                    yield i, start, np.asarray(value)
        return
    from distributed import as_completed

    # A task that several places need (the cells around a chunk that ``map_overlap``
    # reads from its neighbours) is held from the first of them until the last has been
    # submitted: released in between, the next place would compute it again (on average
    # 4.2 times on a grid of 16 x 16 chunks with a one-cell overlap).
    last_needed: dict[Any, int] = {}
    for n, keys in enumerate(places.values()):
        last_needed.update(dict.fromkeys(tasks_of(keys), n))
    held: dict[Any, Any] = {}  # key -> its future
    queue = enumerate(places.values())
    in_flight = as_completed()
    unfinished: dict[Any, set[Any]] = {}  # key -> the keys of its place not finished yet

    def submit_next() -> None:
        n, keys = next(queue, (-1, []))
        if n < 0:
            return
        tasks = tasks_of(keys)
        waiting = set(keys)
        unfinished.update(dict.fromkeys(keys, waiting))
        shared = [k for k in tasks if last_needed[k] > n and k not in held and k not in waiting]
        futures = client.get(tasks, [*keys, *shared], sync=False)
        in_flight.update(futures[: len(keys)])
        held.update(zip(shared, futures[len(keys) :], strict=True))
        for k in [k for k in held if last_needed[k] == n]:
            held.pop(k).release()

    for _ in range(min(PLACES_PER_THREAD * sum(client.nthreads().values()), len(places))):
        submit_next()
    for fut in in_flight:
        key, value = fut.key, np.asarray(fut.result())
        fut.release()  # the worker may drop its copy: the writer holds the block now
        waiting = unfinished.pop(key)
        waiting.discard(key)
        if not waiting:
            # before the writer takes the blocks, so the cluster works meanwhile
            submit_next()
        for i, start in where[key]:
            yield i, start, value


def write_output(
    obj: Any,
    path: Path,
    *,
    client: Any = None,
    progress: ProgressCallback | None = None,
    journal: TemporaryJournal | None = None,
) -> None:
    """Write one stage output by its type (see :mod:`pipeline.stage`), atomically."""
    import geopandas as gpd

    if isinstance(obj, xr.DataArray | xr.Dataset):
        write_cog(obj, path, client=client, progress=progress, journal=journal)
        return
    with atomic_path(path, journal=journal) as tmp:
        if isinstance(obj, gpd.GeoDataFrame):
            driver = "GeoJSON" if path.suffix.lower() == ".geojson" else "GPKG"
            obj.to_file(tmp, driver=driver, layer=path.stem if driver == "GPKG" else None)
        elif isinstance(obj, pd.DataFrame):
            obj.to_csv(tmp, index=False, encoding=CSV_ENCODING)
        elif isinstance(obj, dict | list):
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        elif isinstance(obj, str):
            tmp.write_text(obj)
        elif isinstance(obj, bytes):
            tmp.write_bytes(obj)
        else:
            raise TypeError(f"{path}: cannot write an output of type {type(obj).__name__}")


def write_outputs(
    outputs: Mapping[Path, Any],
    *,
    client: Any = None,
    progress: Mapping[Path, ProgressCallback] | None = None,
    journal: TemporaryJournal | None = None,
) -> None:
    """Write a stage's outputs (the runner and the stand-alone commands): its rasters in
    one pass (:func:`write_cogs`, with ``progress`` per raster path), then the rest."""
    rasters = {p: o for p, o in outputs.items() if isinstance(o, xr.DataArray | xr.Dataset)}
    if rasters:
        write_cogs(rasters, client=client, progress=progress, journal=journal)
    for path, obj in outputs.items():
        if path not in rasters:
            write_output(obj, path, client=client, journal=journal)


# --------------------------------------------------------------------------- checksums


def _raster_checksum(path: Path) -> str:
    import rasterio

    h = hashlib.sha256()
    with rasterio.open(path) as src:
        h.update(
            json.dumps(
                [
                    src.dtypes,
                    src.nodata,
                    src.crs.to_wkt() if src.crs else None,
                    list(src.transform)[:6],
                    src.descriptions,
                ],
                default=str,
            ).encode()
        )
        for _, window in src.block_windows(1):
            h.update(np.ascontiguousarray(src.read(window=window)).tobytes())
    return h.hexdigest()


def _table_checksum(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([str(c) for c in df.columns]).encode())
    for col in df.columns:
        values = df[col]
        if hasattr(values, "to_wkb"):
            for wkb in values.to_wkb():
                h.update(b"" if wkb is None else wkb)
        else:
            h.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    return h.hexdigest()


def content_checksum(path: Path) -> str:
    """A checksum of what a file holds, not of its bytes (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return _raster_checksum(path)
    if suffix in VECTOR_SUFFIXES:
        import geopandas as gpd

        return _table_checksum(gpd.read_file(path))
    if suffix == ".csv":
        return _table_checksum(read_table(path))
    if suffix == ".xlsx":
        # the zip entries and document properties carry the time of writing
        h = hashlib.sha256()
        for name, sheet in pd.read_excel(path, sheet_name=None, engine="openpyxl").items():
            h.update(json.dumps(name).encode())
            h.update(_table_checksum(sheet).encode())
        return h.hexdigest()
    if suffix == ".json":
        data = json.loads(path.read_text())
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return file_sha256(path)
