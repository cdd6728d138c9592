"""LiDAR stage on seeded synthetic clouds with known terrain and canopy (tests/lidar_fixtures.py).

Truth comes from the generator: the analytic terrain (DTM) and the crown raster (CHM);
metrics are checked against numpy's own percentile/std on the raw returns of a cloud
whose heights are known exactly (an already normalised cloud).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dask
import geopandas as gpd
import laspy
import numpy as np
import pytest
from helpers import assert_same_result
from lidar_fixtures import (
    Scene,
    iter_points,
    make_scene,
    point_set,
    sparse_ground_tile,
    write_tiles,
)
from shapely.geometry import box

from pipeline.config import LidarParams
from pipeline.contracts import (
    LIDAR_CHM_RELPATH,
    LIDAR_DTM_RELPATH,
    LIDAR_METRICS_RELPATH,
    LIDAR_QA_RELPATH,
    LIDAR_TILES_RELPATH,
)
from pipeline.errors import PipelineWarning
from pipeline.grid import cell_centres, north_up_geobox
from pipeline.lidar import engine
from pipeline.lidar.chm import P2R, chm, fill_from_neighbours
from pipeline.lidar.dtm import dtm_tin
from pipeline.lidar.ground import smrf_ground
from pipeline.lidar.metrics import BAND_NAMES
from pipeline.lidar.points import PointSet
from pipeline.stages.lidar import (
    LidarJob,
    engine_settings,
    ground_algorithm,
    lidar,
    lidar_grid_for,
    run_lidar,
)

X0, Y0, SIDE = 500_000.0, 2_900_000.0, 200.0
MODEL = north_up_geobox((20, 20), x0_m=X0, ytop_m=Y0 + SIDE, res_m=10.0)


def job(**kw: object) -> LidarJob:
    return LidarJob(LidarParams(**kw), crs="EPSG:32650", resolution_m=10.0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(seed=7, bounds=(X0, Y0, X0 + SIDE, Y0 + SIDE), slope_deg=30.0)


@pytest.fixture(scope="module")
def tiles4(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_tiles(scene, tmp_path_factory.mktemp("t4"), tile_m=100.0)


@pytest.fixture(scope="module")
def tiles1(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_tiles(scene, tmp_path_factory.mktemp("t1"), tile_m=200.0)


@pytest.fixture(scope="module")
def out4(tiles4: list[Path]) -> dict[str, object]:
    return run_lidar(job(chunk_size_m=100.0), tiles=tuple(tiles4), model_grid=MODEL)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((a - b) ** 2)))


def values(out: dict[str, object], key: str) -> np.ndarray:
    return np.asarray(out[key].values)  # type: ignore[attr-defined]


def test_dtm_and_chm_match_the_generator_truth(scene: Scene, out4: dict[str, object]) -> None:
    dtm = values(out4, LIDAR_DTM_RELPATH)[0]
    chm = values(out4, LIDAR_CHM_RELPATH)[0]
    assert dtm.shape == (200, 200)
    true_dtm = scene.true_dtm(X0, Y0 + SIDE, 1.0, dtm.shape)
    true_chm = scene.true_chm(X0, Y0 + SIDE, 1.0, chm.shape)
    # 30 degree slope: a 1 m cell spans 0.58 m of elevation, the TIN stays within decimetres
    assert rmse(dtm, true_dtm) < 0.15
    assert np.isfinite(dtm).all()
    # p2r misses the very top of a cell's crown at 8 pulses/m2; it never invents height
    assert rmse(chm, true_chm) < 2.5
    assert -1.0 < float(np.nanmean(chm - true_chm)) < 0.0
    assert float(np.nanmax(chm)) < float(true_chm.max()) + 0.5
    assert float(np.nanmin(chm)) >= 0.0
    tall = true_chm > 15
    assert float(np.nanmedian(np.abs(chm - true_chm)[tall])) < 1.0


def test_outputs_are_georeferenced_with_band_names(out4: dict[str, object]) -> None:
    m = out4[LIDAR_METRICS_RELPATH]
    assert list(m.band.values) == list(BAND_NAMES)  # type: ignore[attr-defined]
    assert m.rio.crs.to_epsg() == 32650  # type: ignore[attr-defined]
    assert tuple(m.rio.transform())[:6] == (10.0, 0.0, X0, 0.0, -10.0, Y0 + SIDE)  # type: ignore[attr-defined]
    d = out4[LIDAR_DTM_RELPATH]
    assert tuple(d.rio.transform())[:6] == (1.0, 0.0, X0, 0.0, -1.0, Y0 + SIDE)  # type: ignore[attr-defined]
    frac = m.sel(band="lidar_fraction").values  # type: ignore[attr-defined]
    assert np.allclose(frac, 1.0, atol=1e-3)
    qa = out4[LIDAR_QA_RELPATH]
    assert qa["n_tiles_ok"] == 4 and qa["n_noise_class_removed"] > 0  # type: ignore[index]
    assert qa["ground_source"] == ["class 2"]  # type: ignore[index]
    # ground returns scatter +-3 cm around the TIN: about half are clamped from just below 0;
    # only a few returns at the block's edge (IDW extrapolation) lie further below ground
    assert 0.1 < qa["share_heights_clamped"] < 0.4  # type: ignore[index]
    assert 0 <= qa["share_heights_below_tolerance"] < 1e-3  # type: ignore[index]
    table = out4[LIDAR_TILES_RELPATH]
    assert list(table["status"]) == ["ok"] * 4  # type: ignore[index]


def test_tiled_run_equals_single_tile_run_away_from_the_border(
    tiles1: list[Path], out4: dict[str, object]
) -> None:
    one = run_lidar(job(chunk_size_m=200.0), tiles=tuple(tiles1), model_grid=MODEL)
    b = 25  # metres from the region border, where the two runs see different neighbours
    for key in (LIDAR_DTM_RELPATH, LIDAR_CHM_RELPATH):
        a4 = values(out4, key)[0][b:-b, b:-b]
        a1 = values(one, key)[0][b:-b, b:-b]
        assert np.isfinite(a1).mean() > 0.99
        np.testing.assert_allclose(a4, a1, atol=2e-3, equal_nan=True)
    # metrics: every model cell lies inside one chunk; cells on the region border see a
    # different TIN hull in the two runs, the rest agree
    m4 = values(out4, LIDAR_METRICS_RELPATH)[:, 2:-2, 2:-2]
    m1 = values(one, LIDAR_METRICS_RELPATH)[:, 2:-2, 2:-2]
    assert np.isfinite(m1).all()
    np.testing.assert_allclose(m4, m1, atol=2e-3)


def test_numpy_and_dask_results_are_equal(tiles4: list[Path], tmp_path: Path) -> None:
    j = job(chunk_size_m=100.0, buffer_m=10.0)
    from pipeline.lidar.index import index_tiles

    index = index_tiles(tiles4)
    lg = lidar_grid_for(index, res_m=1.0, anchor_m=10.0)
    settings = engine_settings(j, model_grid=MODEL, lidar_grid=lg)
    for folder in ("serial", "dask"):
        (tmp_path / folder).mkdir()
    serial = engine.run_serial(index, settings, tmp_path / "serial")
    with dask.config.set(scheduler="threads", num_workers=2):
        par = engine.run_dask(index, settings, tmp_path / "dask")
    assert len(serial) == 4
    # every chunk's windows, counts and failures, and its staged rasters byte for byte
    assert_same_result(par, serial)
    staged = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert len(staged) == 4 * 4 and staged == sorted(p.name for p in (tmp_path / "dask").iterdir())
    for name in staged:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes()


def test_staged_rasters_are_lazy_and_equal_whatever_the_blocks(
    tiles4: list[Path], out4: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask.array as da

    from pipeline.stages import lidar as stage

    # 16 px blocks: the 100 m chunks and the tiles' footprint straddle them
    monkeypatch.setattr(stage, "BLOCK_PX", 16)
    out = run_lidar(
        job(chunk_size_m=100.0), tiles=tuple(tiles4), model_grid=MODEL, staging=tmp_path
    )
    for key in (LIDAR_DTM_RELPATH, LIDAR_CHM_RELPATH, LIDAR_METRICS_RELPATH):
        got = out[key]
        assert isinstance(got.data, da.Array) and got.data.numblocks[1] > 1  # type: ignore[attr-defined]
        # the same cells, bit for bit, as one block per raster (out4, loaded)
        assert_same_result(got.values, values(out4, key))  # type: ignore[attr-defined]
        assert got.rio.transform() == out4[key].rio.transform()  # type: ignore[attr-defined]
    assert out[LIDAR_QA_RELPATH] == out4[LIDAR_QA_RELPATH]
    # each of the 4 chunks staged its DTM, CHM, metrics and return counts
    assert len(list(tmp_path.glob("chunk_*.npy"))) == 4 * 4


def test_metrics_equal_numpy_on_a_normalisedpoint_set(scene: Scene, tmp_path: Path) -> None:
    paths = write_tiles(scene, tmp_path, tile_m=200.0, normalised=True)
    # the empty DTM is said: a warning (which the runner records and the report lists)
    with pytest.warns(PipelineWarning, match=r"already height-normalised.*dtm\.tif is NaN"):
        out = run_lidar(job(chunk_size_m=200.0), tiles=tuple(paths), model_grid=MODEL)
    qa = out[LIDAR_QA_RELPATH]
    assert qa["normalised_input_chunks"]  # type: ignore[index]
    assert any("already height-normalised" in m for m in qa["messages"])  # type: ignore[index]
    assert np.isnan(values(out, LIDAR_DTM_RELPATH)).all()
    las = laspy.read(paths[0])
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    keep = ~np.isin(np.asarray(las.classification), (7, 18))
    first = keep & (np.asarray(las.return_number) == 1)
    m = out[LIDAR_METRICS_RELPATH]
    for row, col in [(3, 4), (10, 10), (17, 2)]:
        cx0 = X0 + col * 10
        cy1 = Y0 + SIDE - row * 10
        in_cell = (x >= cx0) & (x < cx0 + 10) & (y >= cy1 - 10) & (y < cy1)
        h = np.clip(z[in_cell & first], 0, None)
        got = m[:, row, col].values  # type: ignore[index]
        ref = dict(
            h_mean=h.mean(),
            h_sd=h.std(ddof=1),
            h_max=h.max(),
            **{f"h_p{p}": np.percentile(h, p) for p in (10, 25, 50, 75, 90, 95, 99)},
            cover_2m=(h > 2).mean(),
            density_pts_m2=(in_cell & keep).sum() / 100.0,
        )
        for name, want in ref.items():
            assert got[BAND_NAMES.index(name)] == pytest.approx(want, abs=1e-3), name
    chm = values(out, LIDAR_CHM_RELPATH)[0]
    true_chm = scene.true_chm(X0, Y0 + SIDE, 1.0, chm.shape)
    assert rmse(chm, true_chm) < 2.5


@pytest.mark.parametrize(("ground", "source"), [("smrf", "SMRF"), ("csf", "CSF")])
def test_unclassified_cloud_uses_the_ground_and_outlier_filters(
    tmp_path: Path, ground: str, source: str
) -> None:
    s = make_scene(
        seed=11, bounds=(X0, Y0, X0 + 100, Y0 + 100), slope_deg=35.0, noise_fraction=0.003
    )
    paths = write_tiles(s, tmp_path, tile_m=100.0, classified=False)
    grid = north_up_geobox((10, 10), x0_m=X0, ytop_m=Y0 + 100, res_m=10.0)
    out = run_lidar(
        job(chunk_size_m=100.0, ground_algorithm=ground), tiles=tuple(paths), model_grid=grid
    )
    qa = out[LIDAR_QA_RELPATH]
    assert qa["ground_source"] == [source]  # type: ignore[index]
    assert qa["n_outliers_removed"] > 0  # type: ignore[index]
    dtm = values(out, LIDAR_DTM_RELPATH)[0]
    true_dtm = s.true_dtm(X0, Y0 + 100, 1.0, dtm.shape)
    inner = (slice(5, -5), slice(5, -5))
    assert rmse(dtm[inner], true_dtm[inner]) < 0.5
    chm = values(out, LIDAR_CHM_RELPATH)[0]
    true_chm = s.true_chm(X0, Y0 + 100, 1.0, chm.shape)
    # high noise (60-150 m) would show up as spikes if the outlier filter missed it
    assert float(np.nanpercentile(chm, 99.9)) < float(true_chm.max()) + 2.0
    assert rmse(chm[inner], true_chm[inner]) < 3.0


@pytest.mark.parametrize("slope_deg", [0.0, 35.0, 42.0])
def test_smrf_ground_gives_the_true_terrain_under_canopy(slope_deg: float) -> None:
    """SMRF on a steep forested slope: ground found, canopy rejected, TIN DTM near truth.

    Truth is closed-form: the scene's analytic terrain (a plane of ``slope_deg`` plus 3 m
    undulations) and the generator's own ground flag of every return.
    """
    s = make_scene(seed=5, bounds=(X0, Y0, X0 + 120, Y0 + 120), slope_deg=slope_deg, trees_ha=600.0)
    cols = list(iter_points(s))
    x = np.concatenate([c["x"] for c in cols]) - X0
    y = np.concatenate([c["y"] for c in cols]) - Y0
    z = np.concatenate([c["z"] for c in cols])
    cls = np.concatenate([c["classification"] for c in cols])
    keep = cls != 18  # high noise is the outlier filter's job; low noise stays in
    x, y, z, cls = x[keep], y[keep], z[keep], cls[keep]
    u = np.zeros(x.shape[0], np.uint8)
    pts = PointSet(
        x.astype(np.float32), y.astype(np.float32), z.astype(np.float32), u, u, u, (X0, Y0)
    )
    found = smrf_ground(pts, algorithm=ground_algorithm(LidarParams()))  # the defaults
    truth = cls == 2
    height = z - s.ground(x + X0, y + Y0)
    assert found[truth].mean() > 0.95  # nearly every ground return is kept
    assert not found[cls == 7].any()  # low noise (3-15 m below ground) is not ground
    assert found[height > 1.0].mean() < 0.002  # canopy returns are rejected
    grid = north_up_geobox((120, 120), x0_m=0.0, ytop_m=120.0, res_m=1.0)
    dtm = dtm_tin(pts.x_m[found], pts.y_m[found], pts.z_m[found], grid, thin_m=2.0)
    true_dtm = s.true_dtm(X0, Y0 + 120, 1.0, dtm.shape)
    chm = s.true_chm(X0, Y0 + 120, 1.0, dtm.shape)
    inner = np.zeros(dtm.shape, bool)
    inner[3:-3, 3:-3] = True
    assert (chm[inner] > 2).mean() > 0.4  # the test is about terrain under canopy
    assert rmse(dtm[inner], true_dtm[inner]) < 0.1
    assert rmse(dtm[inner & (chm > 2)], true_dtm[inner & (chm > 2)]) < 0.1


def test_p2r_subcells_fill_gaps_from_neighbours_and_keep_the_cell_maximum() -> None:
    # one return per 0.5 m sub-cell except the empty north-east sub-cell of cell (0, 1)
    xs = np.array([0.2, 0.7, 0.2, 0.7, 1.2, 1.2, 1.7], np.float32)
    ys = np.array([1.7, 1.7, 1.2, 1.2, 1.7, 1.2, 1.2], np.float32)
    zs = np.array([1.0, 2.0, 3.0, 4.0, 8.0, 6.0, 5.0], np.float32)
    u = np.zeros(xs.shape[0], np.uint8)
    pts = PointSet(xs, ys, zs, u, u, u, (0.0, 0.0))
    grid = north_up_geobox((1, 2), x0_m=0.0, ytop_m=2.0, res_m=1.0)
    assert np.array_equal(
        chm(pts, grid, algorithm=P2R(subcells=1, fill="none")), np.array([[4.0, 8.0]], np.float32)
    )
    filled = chm(pts, grid, algorithm=P2R(subcells=2, fill="neighbours"))
    # the empty sub-cell gets the mean of its 3 x 3 neighbours (8, 6, 5): below the max
    assert np.array_equal(filled, np.array([[4.0, 8.0]], np.float32))
    gaps = fill_from_neighbours(np.array([[np.nan, 2.0], [4.0, np.nan]], np.float32))
    assert np.array_equal(gaps, np.array([[3.0, 2.0], [4.0, 3.0]], np.float32))


def test_pitfree_and_filled_p2r_have_fewer_pits_than_plain_p2r(
    scene: Scene, tiles1: list[Path]
) -> None:
    grid = MODEL
    p2r = values(
        run_lidar(
            job(chunk_size_m=200.0, p2r_subcells=1, p2r_fill="none"),
            tiles=tuple(tiles1),
            model_grid=grid,
        ),
        LIDAR_CHM_RELPATH,
    )[0]
    filled = values(
        run_lidar(job(chunk_size_m=200.0), tiles=tuple(tiles1), model_grid=grid), LIDAR_CHM_RELPATH
    )[0]
    pf = values(
        run_lidar(
            job(chunk_size_m=200.0, chm_algorithm="pitfree"), tiles=tuple(tiles1), model_grid=grid
        ),
        LIDAR_CHM_RELPATH,
    )[0]

    def pits(c: np.ndarray) -> int:
        c = np.nan_to_num(c)
        nb = np.stack(
            [
                np.roll(np.roll(c, i, 0), j, 1)
                for i in (-1, 0, 1)
                for j in (-1, 0, 1)
                if (i, j) != (0, 0)
            ]
        )
        return int((c[1:-1, 1:-1] < nb.mean(0)[1:-1, 1:-1] - 3.0).sum())

    assert pits(pf) < pits(p2r)
    assert float(np.nanmax(pf)) <= float(np.nanmax(p2r)) + 1e-3
    # the default p2r (highest per half cell, empty half cells filled from their
    # neighbours) fills pits too, never exceeds the highest return, and is closer to truth
    assert pits(filled) < pits(p2r)
    assert float(np.nanmax(filled)) <= float(np.nanmax(p2r)) + 1e-3
    true_chm = scene.true_chm(X0, Y0 + SIDE, 1.0, p2r.shape)
    assert rmse(filled, true_chm) < rmse(p2r, true_chm)


def test_stage_function_builds_the_model_grid_from_the_aoi(tiles1: list[Path]) -> None:
    aoi = gpd.GeoDataFrame(geometry=[box(X0 - 15, Y0 + 3, X0 + 120, Y0 + 150)], crs="EPSG:32650")
    out = lidar(job(chunk_size_m=200.0), tiles=tuple(tiles1), aoi=aoi)
    m = out[LIDAR_METRICS_RELPATH]
    assert m.shape == (len(BAND_NAMES), 15, 14)  # type: ignore[attr-defined]
    # the grid starts 20 m west of the tiles (AOI snapped outwards to 10 m)
    assert float(m.x[0]) == X0 - 15.0  # type: ignore[attr-defined]
    frac = m.sel(band="lidar_fraction").values  # type: ignore[attr-defined]
    h_mean = m.sel(band="h_mean").values  # type: ignore[attr-defined]
    assert (frac[:, :2] == 0).all() and np.isnan(h_mean[:, :2]).all()
    assert np.allclose(frac[:, 2:], 1.0, atol=1e-3) and np.isfinite(h_mean[:, 2:]).all()


def test_chunk_side_is_a_multiple_of_both_resolutions() -> None:
    assert engine.chunk_side(1000.0, 1.0, 30.0) == 1020.0
    assert engine.chunk_side(1000.0, 0.5, 10.0) == 1000.0
    assert engine.chunk_side(100.0, 0.25, 20.0) == 100.0


def test_tin_rasteriser_equals_scipy_linear_interpolation() -> None:
    from scipy.interpolate import LinearNDInterpolator

    from pipeline.lidar.tin import rasterise_tin, triangulate

    rng = np.random.default_rng(5)
    x = rng.uniform(0, 50, 2000)
    y = rng.uniform(0, 40, 2000)
    z = np.sin(x / 7) * 5 + y * 0.3
    grid = north_up_geobox((100, 120), x0_m=-5.0, ytop_m=45.0, res_m=0.5)
    tri = triangulate(x, y)
    assert tri is not None
    got = rasterise_tin(x, y, z, tri, grid)
    xc, yc = cell_centres(grid)
    xx, yy = np.meshgrid(xc, yc)
    ref = LinearNDInterpolator(np.column_stack([x, y]), z)(xx, yy)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, atol=1e-4, equal_nan=True)
    # long-edged triangles dropped: fewer cells, same values where kept
    short = rasterise_tin(x, y, z, tri, grid, max_edge_m=1.5)
    assert np.isnan(short).sum() > np.isnan(got).sum()
    np.testing.assert_allclose(short[~np.isnan(short)], got[~np.isnan(short)], atol=1e-6)


def test_bilinear_normalisation_equals_scipy_regular_grid_interpolator() -> None:
    from scipy.interpolate import RegularGridInterpolator

    from pipeline.lidar.normalise import bilinear

    rng = np.random.default_rng(1)
    g = north_up_geobox((140, 130), x0_m=-20.0, ytop_m=120.0, res_m=1.0)
    z = rng.normal(size=g.shape).astype(np.float32)
    xc, yc = cell_centres(g)
    x = rng.uniform(xc[0], xc[-1], 10_000).astype(np.float32)
    y = rng.uniform(yc[-1], yc[0], 10_000).astype(np.float32)
    ref = RegularGridInterpolator((yc[::-1], xc), z[::-1])(np.column_stack([y, x]))
    np.testing.assert_allclose(bilinear(z, g, x, y), ref, atol=1e-4)


def test_footprint_fraction_is_the_exact_overlap_area() -> None:
    from pipeline.lidar.metrics import footprint_fraction

    grid = north_up_geobox((3, 3), x0_m=0.0, ytop_m=30.0, res_m=10.0)
    # two abutting tiles: x 5-15 and 15-25, y 0-12
    frac = footprint_fraction([(5.0, 0.0, 15.0, 12.0), (15.0, 0.0, 25.0, 12.0)], grid)
    want = np.array([[0, 0, 0], [0.1, 0.2, 0.1], [0.5, 1.0, 0.5]])
    np.testing.assert_allclose(frac, want, atol=1e-12)
    # a window of the grid (the stage's blocks) has the same cells, bit for bit
    part = footprint_fraction([(5.0, 0.0, 15.0, 12.0)], grid, (1, 3, 1, 3))
    whole = footprint_fraction([(5.0, 0.0, 15.0, 12.0)], grid)
    np.testing.assert_array_equal(part, whole[1:3, 1:3])


@pytest.mark.parametrize("seed", [0, 1])
def test_block_summary_equals_numpy_on_the_whole_array(seed: int) -> None:
    import dask.array as da

    from pipeline.lidar.stats import summarise

    rng = np.random.default_rng(seed)
    # ties, negatives, zeros, NaNs and one huge value, in uneven blocks
    values = np.round(rng.normal(3.0, 4.0, (97, 131)), 1).astype(np.float32)
    values[rng.random(values.shape) < 0.2] = np.nan
    values[5, 7], values[50, 3] = 0.0, 3.0e7
    arr = da.from_array(values, chunks=((40, 57), (10, 100, 21)))
    got = summarise(arr, [1, 50, 99, 100])
    finite = values[np.isfinite(values)].astype(np.float64)
    assert got.n == finite.size
    assert (got.min, got.max) == (finite.min(), finite.max())
    assert got.percentiles == tuple(np.percentile(finite, [1, 50, 99, 100]))
    # sums of block sums: numpy's pairwise sum of the whole array, to rounding
    assert got.mean == pytest.approx(finite.mean(), rel=1e-14)
    assert got.sd == pytest.approx(finite.std(), rel=1e-14)
    assert summarise(da.full((3, 3), np.nan, chunks=2), [99]).percentiles == (None,)


def test_terrain_memory_is_set_by_the_grid_not_by_a_gap_in_the_ground(tmp_path: Path) -> None:
    """Issue 17 defect 6: a small tile with sparse ground or a lake took gigabytes, because
    each long thin triangle over the gap had every cell of its bounding box tested at once.
    Here a tile with a lake or a river needs no more memory (traced) than the same tile
    with its returns spread everywhere: the grid sets the bound."""
    import tracemalloc

    side = 600.0
    model = north_up_geobox((60, 60), x0_m=X0, ytop_m=Y0 + side, res_m=10.0)
    peaks, dtms = {}, {}
    for gap in ("none", "lake", "river"):
        tile = sparse_ground_tile(tmp_path / f"{gap}.las", side, gap)
        tracemalloc.start()
        out = run_lidar(job(chunk_size_m=side), tiles=(tile,), model_grid=model, use_dask=False)
        peaks[gap] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        dtms[gap] = values(out, LIDAR_DTM_RELPATH)[0]
    for gap in ("lake", "river"):
        assert peaks[gap] <= 1.25 * peaks["none"], (gap, peaks)
        # the terrain is the plane the returns lie on, but for the IDW extrapolation beyond
        # their hull (the stage leaves the DTM empty where the tile has no returns, so the
        # gap itself is NaN)
        xc, _ = cell_centres(north_up_geobox(dtms[gap].shape, x0_m=0.0, ytop_m=side, res_m=1.0))
        truth = 300.0 + 0.05 * np.broadcast_to(xc, dtms[gap].shape)
        ok = np.isfinite(dtms[gap])
        assert ok.mean() > 0.5
        assert np.mean(np.abs(dtms[gap][ok] - truth[ok]) < 0.02) > 0.8


def test_outlier_filter_equals_a_brute_force_reference_with_duplicates() -> None:
    """The statistical outlier filter (collapsing exact duplicates before its k-d tree,
    issue 18 item 12) flags the returns of PDAL's rule computed by brute force: the mean
    distance to the k nearest other returns, duplicates counted at distance 0."""
    from scipy.spatial.distance import cdist

    from pipeline.lidar.noise import duplicate_groups, statistical_outlier_mask

    rng = np.random.default_rng(11)
    x, y = rng.uniform(0, 30, (2, 1500))
    z = 100 + 0.2 * x + rng.normal(0, 0.3, 1500)
    z[:5] += 40.0  # birds
    for cloud in ("plain", "duplicates"):
        if cloud == "duplicates":  # 300 returns twice, 20 a hundred times
            again = np.concatenate([np.arange(100, 400), np.repeat(np.arange(400, 420), 99)])
            x, y, z = (np.append(v, v[again]) for v in (x, y, z))
        pts = point_set(x, y, z)
        assert (duplicate_groups(pts) is None) == (cloud == "plain")
        xyz = np.column_stack([pts.x_m, pts.y_m, pts.z_m]).astype(np.float64)
        d = np.sort(cdist(xyz, xyz), axis=1)[:, 1:9].mean(axis=1)
        expected = d > d.mean() + 2.0 * d.std()
        got = statistical_outlier_mask(pts, k=8, multiplier=2.0, column_m=0.0, sample=10**6)
        np.testing.assert_array_equal(got, expected)
        assert got[:5].all()
        # the column shortcut finds the same birds
        columns = statistical_outlier_mask(pts, k=8, multiplier=2.0, sample=10**6)
        assert columns[:5].all() and columns.sum() <= expected.sum()


@pytest.mark.timeout(300)
def test_outlier_filter_completes_on_many_returns_at_one_xyz() -> None:
    """Issue 18 item 12: 574,000 returns at one XYZ never finished (each k-d tree query
    scanned them all: quadratic)."""
    from pipeline.lidar.noise import statistical_outlier_mask

    rng = np.random.default_rng(12)
    x, y = rng.uniform(0, 30, (2, 3000))
    z = 100 + rng.normal(0, 0.3, 3000)
    n_same = 574_000
    pts = point_set(
        np.concatenate([x, np.full(n_same, 15.0), [15.0]]),
        np.concatenate([y, np.full(n_same, 15.0), [15.0]]),
        np.concatenate([z, np.full(n_same, 100.0), [160.0]]),  # and a bird above them
    )
    out = statistical_outlier_mask(pts, k=8, multiplier=2.0)
    assert out[-1] and not out[3000:-1].any()


def test_repeat_flight_gives_its_epoch_metrics_over_its_own_cover(
    scene: Scene, tiles4: list[Path], tmp_path: Path
) -> None:
    # the same ground flown again after the canopy grew by 10 %, over the western half
    # only, without a ground class (its own ground filter): metrics on the same grid
    grown = dataclasses.replace(scene, canopy_m=scene.canopy_m * 1.1, seed=scene.seed + 1)
    again = write_tiles(grown, tmp_path / "2024", tile_m=100.0, classified=False)
    west = tuple(p for p in again if p.name.startswith(f"{int(X0)}_"))
    assert len(west) == 2
    aoi = gpd.GeoDataFrame(geometry=[box(X0, Y0, X0 + SIDE, Y0 + SIDE)], crs="EPSG:32650")
    first_job = LidarJob(LidarParams(chunk_size_m=100.0), "EPSG:32650", 10.0, epoch="2019")
    out = lidar(first_job, tiles=tuple(tiles4), aoi=aoi, repeat_tiles={"2024": west})
    first, rep = out[LIDAR_METRICS_RELPATH], out["lidar/metrics_2024.tif"]
    assert rep.shape == first.shape  # type: ignore[attr-defined]
    frac = rep.sel(band="lidar_fraction").values  # type: ignore[attr-defined]
    assert np.allclose(frac[:, :10], 1.0, atol=1e-3) and (frac[:, 10:] == 0).all()
    h0 = first.sel(band="h_max").values[:, :10]  # type: ignore[attr-defined]
    h1 = rep.sel(band="h_max").values[:, :10]  # type: ignore[attr-defined]
    assert np.isnan(rep.sel(band="h_max").values[:, 10:]).all()  # type: ignore[attr-defined]
    tall = h0 > 5.0
    assert tall.sum() > 50
    assert np.median(h1[tall] / h0[tall]) == pytest.approx(1.1, abs=0.02)
    # the repeat CHM against the grown scene's truth, as the first flight's (above)
    chm = values(out, "lidar/chm_2024.tif")[0]
    assert chm.shape == (200, 100)
    truth = grown.true_chm(X0, Y0 + SIDE, 1.0, chm.shape)
    assert rmse(chm, truth) < 2.5 and -1.0 < float(np.nanmean(chm - truth)) < 0.0
    # same ground: the two DTMs agree where both flew
    qa = out[LIDAR_QA_RELPATH]["repeats"]["2024"]  # type: ignore[index]
    diff = qa["dtm_difference_m"]
    assert diff["cells"] == 100 * 200 and abs(diff["mean"]) < 0.1 and diff["sd"] < 0.3
    assert qa["n_tiles"] == 2 and qa["ground_source"] == ["SMRF"]
    tiles = out[LIDAR_TILES_RELPATH]
    assert tiles["epoch"].tolist() == ["2019"] * 4 + ["2024"] * 2  # type: ignore[index]
