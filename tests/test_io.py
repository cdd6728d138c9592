"""The one writer and reader of run files (:mod:`pipeline.io`): CSV encoding for Excel,
content checksums, COG overviews (averaged for continuous bands, nearest for classes)."""

from __future__ import annotations

import asyncio
import codecs
import csv
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from pipeline import io


def _chinese_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "parcel_id": ["P1", "P2"],
            "parcel_name": ["将乐县万安镇 12 林班", "顺昌县 3 小班"],
            "species": ["杉木", "马尾松"],
            "area_ha": [1.5, 2.25],
        }
    )


def test_csv_starts_with_bom_and_round_trips_chinese_text(tmp_path: Path) -> None:
    table = _chinese_table()
    path = tmp_path / "t.csv"
    io.write_output(table, path)
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert not raw[3:].startswith(codecs.BOM_UTF8)
    got = io.read_input(path, chunk_px=256)
    assert list(got.columns) == list(table.columns)
    pd.testing.assert_frame_equal(got, table)


@pytest.fixture
def bom_and_plain(tmp_path: Path) -> tuple[Path, Path]:
    """The Chinese table written by the pipeline (with a BOM) and as plain UTF-8."""
    with_bom, plain = tmp_path / "bom.csv", tmp_path / "plain.csv"
    io.write_output(_chinese_table(), with_bom)
    _chinese_table().to_csv(plain, index=False, encoding="utf-8")
    return with_bom, plain


def test_csv_readers_get_clean_column_names_with_or_without_bom(
    bom_and_plain: tuple[Path, Path],
) -> None:
    table = _chinese_table()
    with_bom, _ = bom_and_plain
    for path in bom_and_plain:
        assert list(io.read_table(path).columns) == list(table.columns)
    # what Excel and other BOM-aware readers see (an independent reader: the csv module)
    with with_bom.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(table.columns)
    assert rows[1][1] == "将乐县万安镇 12 林班"


def test_table_checksum_ignores_the_bom(bom_and_plain: tuple[Path, Path]) -> None:
    with_bom, plain = bom_and_plain
    assert with_bom.read_bytes() != plain.read_bytes()
    assert io.content_checksum(with_bom) == io.content_checksum(plain)


# --------------------------------------------------------------------------- overviews

#: 1024 px: one overview level (2x) below the COG's 512 px blocks
SIZE = 1024


def _raster(values: np.ndarray, band: list[str], *, nodata: float | None) -> xr.DataArray:
    da = xr.DataArray(
        values,
        dims=("band", "y", "x"),
        coords={
            "band": band,
            "y": 3_000_000 - 10.0 * (np.arange(SIZE) + 0.5),
            "x": 500_000 + 10.0 * (np.arange(SIZE) + 0.5),
        },
    )
    if nodata is not None:
        da.attrs["_FillValue"] = nodata
    return da.rio.write_crs("EPSG:32650")


def _overview(path: Path) -> np.ndarray:
    """The 2x overview GDAL stored (read at its size, which GDAL serves from it)."""
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]
        return src.read(out_shape=(src.count, SIZE // 2, SIZE // 2))


def test_continuous_overview_is_the_block_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    carbon = rng.gamma(4.0, 20.0, size=(1, SIZE, SIZE)).astype(np.float32)
    carbon[0, :6, :6] = np.nan  # non-forest: left out of the means
    carbon[0, 10, 11] = np.nan  # one cell of a 2 x 2 block
    path = tmp_path / "carbon.tif"
    io.write_cog(_raster(carbon, ["carbon"], nodata=float("nan")), path)
    got = _overview(path)
    blocks = carbon[0].astype(np.float64).reshape(SIZE // 2, 2, SIZE // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        want = np.nanmean(blocks, axis=(1, 3))
    assert np.isnan(got[0, :3, :3]).all()
    three = carbon[0, 10:12, 10:12].ravel()[[0, 2, 3]]  # the block's valid cells
    np.testing.assert_allclose(got[0, 5, 5], three.astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    # nearest neighbour would hold only values of the full resolution
    assert not np.isin(got[0, 3:, 3:], carbon).all()


def test_categorical_overviews_hold_only_values_of_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    classes = rng.choice(np.array([0, 3, 7], dtype=np.int16), size=(1, SIZE, SIZE))
    path = tmp_path / "quality.tif"
    io.write_cog(_raster(classes, ["model_source"], nodata=-1), path)
    got = _overview(path)
    assert set(np.unique(got)) <= {0, 3, 7}

    # a float flag band declared with CF flag_values, in a file with continuous bands
    flag = rng.choice(np.array([0.0, 1.0, 2.0], dtype=np.float32), size=(SIZE, SIZE))
    sink = rng.normal(2.0, 1.0, size=(SIZE, SIZE)).astype(np.float32)
    index = _raster(np.stack([sink, flag]), ["sink", "quality_flag"], nodata=float("nan"))
    ds = index.to_dataset(dim="band")
    ds["quality_flag"].attrs["flag_values"] = [0, 1, 2]
    assert io.overview_resampling(ds) == "NEAREST"
    assert io.overview_resampling(ds[["sink"]]) == "AVERAGE"
    path = tmp_path / "index.tif"
    io.write_cog(ds, path)
    got = _overview(path)
    assert set(np.unique(got[1])) <= {0.0, 1.0, 2.0}


#: calls of each :class:`_Counting` by its name: a module global, because a Dask cluster
#: runs a deserialised copy of the function (in this process, for an in-process worker)
_CALLS: dict[str, list[tuple[int, ...]]] = {}


class _Counting:
    """A block function that counts its calls, per chunk."""

    def __init__(self, name: str) -> None:
        self.name = name
        _CALLS[name] = []

    @property
    def calls(self) -> list[tuple[int, ...]]:
        return _CALLS[self.name]

    def __call__(self, block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None:
            _CALLS[self.name].append(tuple(block_info[0]["chunk-location"]))
        return np.stack([block[0] * 2.0, block[0] + 1.0]).astype(np.float32)


def _shared_maps(
    count: _Counting, *, chunk_px: int = 256
) -> tuple[np.ndarray, dict[str, xr.DataArray]]:
    """Two rasters, each a band of one shared block computation (like predict's maps)."""
    import dask.array as dsa

    rng = np.random.default_rng(3)
    values = rng.gamma(4.0, 20.0, size=(1, SIZE, SIZE)).astype(np.float32)
    data = dsa.from_array(values, chunks=(1, chunk_px, chunk_px))
    both = data.map_blocks(count, chunks=((2,), *data.chunks[1:]), dtype=np.float32)
    base = _raster(values, ["v"], nodata=float("nan"))
    maps = {
        name: xr.DataArray(
            both[[i]], dims=("band", "y", "x"), coords={**base.coords, "band": [name]}
        ).rio.write_crs("EPSG:32650")
        for i, name in enumerate(["double", "plus_one"])
    }
    return values, maps


@pytest.mark.parametrize("with_client", [False, True])
def test_rasters_of_one_graph_compute_their_shared_blocks_once(
    tmp_path: Path, with_client: bool
) -> None:
    """``write_cogs`` computes a block two rasters share once per chunk, with the
    synchronous scheduler and on a Dask cluster; writing the same rasters one at a time
    computes it once per raster (what the predict stage did: seven maps per epoch). The
    files hold the values computed directly with numpy."""
    n_chunks = (SIZE // 256) ** 2
    client = None
    if with_client:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False)
        client = Client(cluster)
    try:
        count = _Counting(f"together-{with_client}")
        values, maps = _shared_maps(count)
        io.write_cogs({tmp_path / f"{k}.tif": v for k, v in maps.items()}, client=client)
        assert sorted(count.calls) == sorted({c for c in count.calls})  # each chunk once
        assert len(count.calls) == n_chunks
        with (
            rasterio.open(tmp_path / "double.tif") as a,
            rasterio.open(tmp_path / "plus_one.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(1), values[0] * 2.0)
            np.testing.assert_array_equal(b.read(1), values[0] + 1.0)

        one_by_one = _Counting(f"one-by-one-{with_client}")
        _, maps = _shared_maps(one_by_one)
        for k, v in maps.items():
            io.write_cog(v, tmp_path / f"single_{k}.tif", client=client)
        assert len(one_by_one.calls) == 2 * n_chunks
    finally:
        if client is not None:
            client.close()
            cluster.close()


def test_a_cluster_computes_a_bounded_window_of_blocks_into_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Dask cluster ``write_cogs`` keeps ``PLACES_PER_THREAD`` places per thread in
    flight (a place: the blocks of both rasters at one chunk), not the whole grid: the
    client never holds more futures of blocks than that while 256 chunks are written. Each chunk is
    still computed once, and the files are byte for byte those of the synchronous
    scheduler, which computes one place at a time, and hold the numpy values."""
    from distributed import Client, LocalCluster

    chunk_px, threads = 64, 2
    real = io._computed_blocks
    held: list[int] = []  # the client's block futures each time the writer takes a block

    def watched(arrays: list[Any], client: Any) -> Iterator[Any]:
        names = {a.name for a in arrays}  # the tasks all places share are held too
        for item in real(arrays, client):
            # a future's release reaches the client on its event loop: let it get there
            client.sync(asyncio.sleep, 0)
            held.append(sum(1 for key in client.futures if key[0] in names))
            yield item

    count = _Counting("bounded-sync")
    values, maps = _shared_maps(count, chunk_px=chunk_px)
    io.write_cogs({tmp_path / "sync" / f"{k}.tif": v for k, v in maps.items()})
    monkeypatch.setattr(io, "_computed_blocks", watched)
    with (
        LocalCluster(n_workers=1, threads_per_worker=threads, processes=False) as cluster,
        Client(cluster) as client,
    ):
        count = _Counting("bounded-cluster")
        _, maps = _shared_maps(count, chunk_px=chunk_px)
        io.write_cogs(
            {tmp_path / "cluster" / f"{k}.tif": v for k, v in maps.items()}, client=client
        )
    n_chunks = (SIZE // chunk_px) ** 2
    assert len(count.calls) == len(set(count.calls)) == n_chunks
    assert len(held) == 2 * n_chunks
    # two blocks (one per raster) of each place in flight
    assert 2 < max(held) <= io.PLACES_PER_THREAD * threads * 2
    for name, want in (("double", values[0] * 2.0), ("plus_one", values[0] + 1.0)):
        cluster_bytes = (tmp_path / "cluster" / f"{name}.tif").read_bytes()
        assert cluster_bytes == (tmp_path / "sync" / f"{name}.tif").read_bytes()
        with rasterio.open(tmp_path / "cluster" / f"{name}.tif") as src:
            np.testing.assert_array_equal(src.read(1), want)


def _shift_sum(block: np.ndarray) -> np.ndarray:
    """Each cell plus its western neighbour (``map_overlap`` gives the block a halo)."""
    return block + np.roll(block, 1, axis=2)


def test_a_cluster_computes_the_chunks_that_overlapping_blocks_share_once(
    tmp_path: Path,
) -> None:
    """A ``map_overlap`` block reads its neighbours' edges, so the chunk under a block is
    needed by nine places. On a cluster each such chunk is computed once (held until the
    last place that needs it is submitted, not computed again for each neighbour), and
    the raster holds the numpy result."""
    from distributed import Client, LocalCluster

    count = _Counting("overlap")
    values, maps = _shared_maps(count, chunk_px=64)
    double = maps["double"]
    out = double.data.map_overlap(
        _shift_sum, depth={0: 0, 1: 1, 2: 1}, boundary="nearest", dtype=np.float32
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        io.write_cog(double.copy(data=out), tmp_path / "shifted.tif", client=client)
    assert len(count.calls) == len(set(count.calls)) == (SIZE // 64) ** 2
    want = values[0] * 2.0
    want = want + np.concatenate([want[:, :1], want[:, :-1]], axis=1)
    with rasterio.open(tmp_path / "shifted.tif") as src:
        np.testing.assert_array_equal(src.read(1), want)


def test_a_full_disk_while_writing_one_of_several_rasters_names_that_raster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_cogs`` holds every staging file open at once: the no-space error of a block
    write names the file being written, not the last one opened, and leaves no file."""
    import contextlib
    import errno

    from pipeline.errors import RunFolderError

    real = io._CogFile.open_staging

    @contextlib.contextmanager
    def staging(self: io._CogFile, tags: Any, band_tags: Any) -> Iterator[Any]:
        with real(self, tags, band_tags) as dst:
            if self.path.name != "first.tif":
                yield dst
                return

            class Full:
                def write(self, *args: Any, **kwargs: Any) -> None:
                    raise OSError(errno.ENOSPC, "No space left on device")

            yield Full()

    monkeypatch.setattr(io._CogFile, "open_staging", staging)
    values = np.ones((1, SIZE, SIZE), dtype=np.float32)
    rasters = {
        tmp_path / name: _raster(values, ["v"], nodata=float("nan"))
        for name in ("first.tif", "second.tif")
    }
    with pytest.raises(RunFolderError, match=r"first\.tif: no space left"):
        io.write_cogs(rasters)
    assert not list(tmp_path.iterdir())
