"""Real-world tile problems: the LiDAR stage's errors and QA name the tile and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import laspy
import numpy as np
import pyproj
import pytest
from lidar_fixtures import Scene, las_header, make_scene, write_tiles

from pipeline.config import LidarParams
from pipeline.contracts import (
    LIDAR_CHM_RELPATH,
    LIDAR_METRICS_RELPATH,
    LIDAR_QA_RELPATH,
    LIDAR_TILES_RELPATH,
)
from pipeline.errors import InputDataError, PipelineWarning
from pipeline.grid import north_up_geobox
from pipeline.lidar.index import index_tiles
from pipeline.stages.lidar import LidarJob, run_lidar

X0, Y0 = 500_000.0, 2_900_000.0
GRID = north_up_geobox((10, 20), x0_m=X0, ytop_m=Y0 + 100, res_m=10.0)


def job(
    crs: str = "EPSG:32650", tile_crs: str | None = None, *, allow_skips: bool = False
) -> LidarJob:
    params = LidarParams(chunk_size_m=50.0, buffer_m=10.0, allow_skipped_tiles=allow_skips)
    return LidarJob(params, crs=crs, resolution_m=10.0, tile_crs=tile_crs)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(seed=3, bounds=(X0, Y0, X0 + 100, Y0 + 100), pulses_m2=3.0)


def test_tile_without_crs_is_an_error_naming_it_unless_a_crs_is_given(
    scene: Scene, tmp_path: Path
) -> None:
    paths = write_tiles(scene, tmp_path, tile_m=50.0, crs=None)
    with pytest.raises(
        InputDataError, match=r"500000_2900000\.laz: the tile's header has no CRS.*--crs"
    ):
        run_lidar(job(), tiles=tuple(paths), model_grid=GRID)
    out = run_lidar(job(tile_crs="EPSG:32650"), tiles=tuple(paths), model_grid=GRID)
    assert out[LIDAR_TILES_RELPATH]["crs_source"].str.startswith("stated").all()  # type: ignore[index]


def test_conflicting_crs_records_are_an_error(tmp_path: Path) -> None:
    header = las_header("EPSG:32650")
    other = laspy.LasHeader(point_format=1, version="1.2")
    other.add_crs(pyproj.CRS.from_epsg(32651))
    header.vlrs.extend(other.vlrs)
    path = tmp_path / "conflict.laz"
    las = laspy.LasData(header)
    las.x = np.array([X0 + 1.0])
    las.y = np.array([Y0 + 1.0])
    las.z = np.array([300.0])
    las.write(path)
    with pytest.raises(
        InputDataError, match=r"conflict\.laz: conflicting CRS records.*EPSG:32650.*EPSG:32651"
    ):
        index_tiles([path])


def test_a_stated_crs_overrides_conflicting_and_wrong_headers(scene: Scene, tmp_path: Path) -> None:
    """As the messages say: --crs (sources.lidar_crs) wins over the header, with a warning
    per tile whose header said otherwise; the result equals that of correct headers."""
    conflict = tmp_path / "conflict.laz"
    header = las_header("EPSG:32650")
    other = laspy.LasHeader(point_format=1, version="1.2")
    other.add_crs(pyproj.CRS.from_epsg(32651))
    header.vlrs.extend(other.vlrs)
    las = laspy.LasData(header)
    las.x, las.y, las.z = np.array([X0 + 1.0]), np.array([Y0 + 1.0]), np.array([300.0])
    las.write(conflict)
    with pytest.warns(PipelineWarning, match=r"conflict\.laz: the header says .*conflicting"):
        (info,) = index_tiles([conflict], assume_crs="EPSG:32650")
    assert info.crs == "EPSG:32650" and info.crs_source.startswith("stated")
    good = write_tiles(scene, tmp_path / "good", tile_m=100.0)
    wrong = write_tiles(scene, tmp_path / "wrong", tile_m=100.0, crs="EPSG:32651")
    with pytest.warns(PipelineWarning, match=r"the header says EPSG:32651; using EPSG:32650"):
        got = run_lidar(job(tile_crs="EPSG:32650"), tiles=tuple(wrong), model_grid=GRID)
    want = run_lidar(job(), tiles=tuple(good), model_grid=GRID)
    np.testing.assert_array_equal(
        got[LIDAR_METRICS_RELPATH].values,  # type: ignore[attr-defined]
        want[LIDAR_METRICS_RELPATH].values,  # type: ignore[attr-defined]
    )


def test_feet_units_are_an_error_saying_to_convert(tmp_path: Path) -> None:
    header = las_header("EPSG:2264")  # NAD83 / North Carolina (ftUS)
    path = tmp_path / "feet.laz"
    las = laspy.LasData(header)
    las.x = np.array([X0 + 1.0])
    las.y = np.array([Y0 + 1.0])
    las.z = np.array([300.0])
    las.write(path)
    with pytest.raises(
        InputDataError, match=r"feet\.laz: CRS EPSG:2264 has axes in .*foot.*in metres"
    ) as err:
        index_tiles([path])
    # the advice is the tile's own UTM zone, not the demo region's: the point lies at
    # 84.45 W, 41.59 N (pyproj), and floor((lon + 180) / 6) + 1 = zone 16
    assert "UTM zone EPSG:32616" in str(err.value)


def test_tiles_in_another_crs_than_the_model_grid(scene: Scene, tmp_path: Path) -> None:
    paths = write_tiles(scene, tmp_path, tile_m=100.0)
    with pytest.raises(
        InputDataError, match=r"is in EPSG:32650 but the model grid is in EPSG:32651"
    ):
        run_lidar(job(crs="EPSG:32651"), tiles=tuple(paths), model_grid=GRID)


def test_corrupt_tile_is_listed_and_other_tiles_keep_their_results(
    scene: Scene, tmp_path: Path
) -> None:
    paths = write_tiles(scene, tmp_path, tile_m=50.0)
    bad = paths[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated LAZ: header intact, points cut
    garbage = tmp_path / "garbage.laz"
    garbage.write_bytes(b"not a LAS file at all" * 10)
    with pytest.raises(
        InputDataError, match=r"garbage\.laz: cannot read the header.*allow_skipped"
    ):
        run_lidar(job(), tiles=(*paths, garbage), model_grid=GRID)
    with pytest.raises(InputDataError, match=rf"{bad.name}: .*corrupt or truncated.*allow_skipped"):
        run_lidar(job(), tiles=tuple(paths), model_grid=GRID)
    out = run_lidar(job(allow_skips=True), tiles=(*paths, garbage), model_grid=GRID)
    qa = out[LIDAR_QA_RELPATH]
    assert set(qa["failed_tiles"]) == {bad.name, garbage.name}  # type: ignore[index]
    assert "corrupt or truncated" in qa["failed_tiles"][bad.name]  # type: ignore[index]
    assert "cannot read the header" in qa["failed_tiles"][garbage.name]  # type: ignore[index]
    table = out[LIDAR_TILES_RELPATH].set_index("name")  # type: ignore[attr-defined]
    assert table.loc[bad.name, "status"] == "failed"
    assert (table.drop([bad.name, garbage.name])["status"] == "ok").all()
    chm = np.asarray(out[LIDAR_CHM_RELPATH].values)[0]  # type: ignore[attr-defined]
    # the bad tile (south-west 50 m) has no CHM; the other three are filled
    assert np.isnan(chm[50:, :50]).all()
    assert np.isfinite(chm[:50, :]).mean() > 0.9 and np.isfinite(chm[50:, 50:]).mean() > 0.9
    frac = out[LIDAR_METRICS_RELPATH].sel(band="lidar_fraction").values  # type: ignore[attr-defined]
    assert (frac[5:, :5] == 0).all() and np.allclose(frac[:5, :10], 1.0, atol=1e-3)
    assert (frac[:, 10:] == 0).all()  # the grid reaches 100 m east of the tiles


def test_empty_tile_is_reported_and_all_empty_is_an_error(scene: Scene, tmp_path: Path) -> None:
    paths = write_tiles(scene, tmp_path / "t", tile_m=100.0)
    empty = tmp_path / "empty.laz"
    with laspy.open(empty, mode="w", header=las_header()) as w:
        w.write_points(laspy.ScaleAwarePointRecord.zeros(0, header=w.header))
    with pytest.raises(InputDataError, match=r"empty\.laz: the tile has no points.*allow_skipped"):
        run_lidar(job(), tiles=(*paths, empty), model_grid=GRID)
    out = run_lidar(job(allow_skips=True), tiles=(*paths, empty), model_grid=GRID)
    qa = out[LIDAR_QA_RELPATH]
    assert qa["empty_tiles"] == ["empty.laz"]  # type: ignore[index]
    skipped = "empty.laz: the tile has no points; skipped (stages.lidar.allow_skipped_tiles)"
    assert skipped in qa["messages"]  # type: ignore[index]
    assert qa["n_tiles_ok"] == 1  # type: ignore[index]
    only_empty = tmp_path / "e2"
    only_empty.mkdir()
    shutil.copy(empty, only_empty / "a.laz")
    with pytest.raises(
        InputDataError, match=r"no LiDAR tile has readable points: a\.laz: the tile has no points"
    ):
        run_lidar(job(allow_skips=True), tiles=(only_empty / "a.laz",), model_grid=GRID)


def test_no_tiles_is_an_error() -> None:
    with pytest.raises(InputDataError, match="no LiDAR tiles given"):
        index_tiles([])


def test_command_writes_cogs_and_reports_a_failed_tile(scene: Scene, tmp_path: Path) -> None:
    import argparse

    import rasterio

    from pipeline.commands import lidar as command

    paths = write_tiles(scene, tmp_path / "tiles", tile_m=50.0)
    paths[-1].write_bytes(paths[-1].read_bytes()[:2000])
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "lidar",
            str(tmp_path / "tiles"),
            "--resolution",
            "1",
            "--grid-resolution",
            "10",
            "--chunk-size",
            "50",
            "--out",
            str(out),
        ]
    )
    with pytest.raises(
        InputDataError,
        match=rf"1 of 4 LiDAR tiles failed \({paths[-1].name}.*"
        rf"results are in {out}",
    ):
        args.func(args)
    with rasterio.open(out / "metrics.tif") as src:
        assert src.descriptions[0] == "h_mean" and src.descriptions[-1] == "lidar_fraction"
        assert src.crs.to_epsg() == 32650 and src.res == (10.0, 10.0)
        assert src.count == 13
    with rasterio.open(out / "chm.tif") as src:
        chm = src.read(1)
        assert src.res == (1.0, 1.0) and np.isfinite(chm).mean() > 0.5
    assert (out / "qa.json").is_file() and (out / "tiles.csv").is_file()
    assert not list(out.glob(".lidar-staging-*"))  # the staged chunks are gone
