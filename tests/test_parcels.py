"""Tests of fractional-coverage zonal sums (pipeline.zonal) and the parcels stage."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine
from helpers import assert_numpy_equals_dask
from shapely.geometry import LineString, box
from shapely.ops import split

from models.allometry import co2_per_c
from models.spatial_error import Correlogram
from pipeline.config import SinkParams
from pipeline.contracts import (
    ERROR_CORRELOGRAM_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    SinkJob,
)
from pipeline.errors import InputDataError, PipelineWarning
from pipeline.features import parcel_index
from pipeline.sink import stock_change_sink
from pipeline.stages.parcels import parcel_sink_table, parcels_stage, warn_unmapped
from pipeline.zonal import coverage_cells, coverage_windows, covered_fraction_sum, weighted_sum

RES_M = 10.0
X0, Y0 = 500_000.0, 3_000_000.0
CRS = "EPSG:32650"
# quality masking on (min_quality=1), so the sums also check that masked cells drop out
JOB = SinkJob.from_params(
    SinkParams(epoch_error_correlation=0.0, min_quality=1),
    epochs=("2019", "2024"),
    reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
)


def raster(values: np.ndarray, band: list | None = None) -> xr.DataArray:
    data = values if values.ndim == 3 else values[None]
    ny, nx = data.shape[1:]
    da = xr.DataArray(
        data.astype(np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": band or list(range(1, data.shape[0] + 1)),
            "y": Y0 - RES_M * (np.arange(ny) + 0.5),
            "x": X0 + RES_M * (np.arange(nx) + 0.5),
        },
    )
    return da.rio.write_crs(CRS)


def epoch_inputs(seed: int, shape=(20, 24)) -> dict[str, xr.DataArray]:
    """Seeded synthetic carbon/SD/quality maps of two epochs, with gaps (Mg C/ha)."""
    rng = np.random.default_rng(seed)
    c1 = rng.uniform(20, 120, shape)
    c2 = c1 + rng.normal(3, 2, shape)
    c1[rng.uniform(size=shape) < 0.1] = np.nan  # some non-forest pixels
    q = (rng.uniform(size=shape) > 0.05).astype(float)
    return {
        "carbon_start": raster(c1),
        "carbon_end": raster(c2),
        "carbon_sd_start": raster(0.2 * np.nan_to_num(c1, nan=50.0)),
        "carbon_sd_end": raster(0.2 * c2),
        "quality_start": raster(np.ones(shape)),
        "quality_end": raster(q),
    }


def partition(shape=(20, 24)) -> gpd.GeoDataFrame:
    """The grid extent cut by two oblique lines: polygons that cut cells fractionally."""
    ny, nx = shape
    extent = box(X0, Y0 - ny * RES_M, X0 + nx * RES_M, Y0)
    parts = list(split(extent, LineString([(X0 - 1, Y0 - 37.3), (X0 + 300, Y0 - 161.7)])).geoms)
    pieces = []
    for p in parts:
        pieces.extend(split(p, LineString([(X0 + 93.1, Y0 + 1), (X0 + 151.7, Y0 - 300)])).geoms)
    return gpd.GeoDataFrame(
        {"parcel_id": [f"P{i}" for i in range(len(pieces))], "forest_type": "chinese_fir"},
        geometry=pieces,
        crs=CRS,
    )


def test_half_cell_closed_form():
    # 2 x 2 grid of 10 m cells; the polygon is the left half of the top-left cell:
    # coverage 0.5, area 0.5 x 100 m2 = 0.005 ha, value-weighted sum 0.5 x 7
    transform = Affine(RES_M, 0, X0, 0, -RES_M, Y0)
    poly = gpd.GeoDataFrame(geometry=[box(X0, Y0 - 10, X0 + 5, Y0)], crs=CRS)
    (cov,) = coverage_cells(poly, transform=transform, shape=(2, 2), crs=CRS)
    np.testing.assert_array_equal(cov.cell, [0])
    np.testing.assert_allclose(cov.fraction, [0.5])
    values = np.array([[7.0, 1.0], [1.0, 1.0]])
    assert weighted_sum(cov, values) == pytest.approx(3.5)
    assert covered_fraction_sum(cov) * 100 / 10_000 == pytest.approx(0.005)


def test_half_cell_through_the_parcels_stage():
    # sink = (110 - 100) / years Mg C/ha/yr on every pixel; the parcel covers half a cell:
    # total = sink x 0.005 ha
    shape = (2, 2)
    inputs = {
        "carbon_start": raster(np.full(shape, 100.0)),
        "carbon_end": raster(np.full(shape, 110.0)),
        "carbon_sd_start": raster(np.full(shape, 3.0)),
        "carbon_sd_end": raster(np.full(shape, 4.0)),
        "quality_start": raster(np.ones(shape)),
        "quality_end": raster(np.ones(shape)),
    }
    parcels = gpd.GeoDataFrame(
        {"parcel_id": ["half"]}, geometry=[box(X0 + 10, Y0 - 15, X0 + 20, Y0 - 10)], crs=CRS
    )
    row = parcel_sink_table(JOB, parcels=parcels, **inputs).iloc[0]
    sink = 10.0 / JOB.years
    assert row["area_grid_ha"] == pytest.approx(0.005)
    assert row["forest_area_ha"] == pytest.approx(0.005)
    assert row["sink_mg_c_yr"] == pytest.approx(sink * 0.005)
    assert row["sink_tco2e_yr"] == pytest.approx(sink * 0.005 * 44 / 12)
    assert row["sink_sd_mg_c_yr"] == pytest.approx(5.0 / JOB.years * 0.005, rel=1e-5)
    assert row["carbon_2024_mg_c"] == pytest.approx(110 * 0.005)
    # 90 % interval: mean -/+ 1.6449 sd
    assert row["sink_hi_tco2e_yr"] - row["sink_tco2e_yr"] == pytest.approx(
        1.6448536 * row["sink_sd_tco2e_yr"], rel=1e-6
    )


def test_parcel_totals_add_up_to_the_aoi_total():
    inputs = epoch_inputs(11)
    parcels = partition()
    assert len(parcels) >= 4
    lidar = np.stack([np.zeros((20, 24)), np.full((20, 24), 0.25)])
    table = assert_numpy_equals_dask(
        parcel_sink_table,
        JOB,
        chunks=7,
        parcels=parcels,
        lidar_metrics=raster(lidar, band=["h_mean", "lidar_fraction"]),
        **inputs,
    )
    ds = stock_change_sink(
        *inputs.values(), years=JOB.years, epoch_error_correlation=0.0, min_quality=1
    )
    px_ha = RES_M * RES_M / 10_000
    # float64 sums of the float32 maps: parcel sums agree to rounding (rel 1e-9)
    sink_total = float(np.nansum(ds["sink_mg_c_ha_yr"].values.astype(np.float64))) * px_ha
    sd_total = float(np.nansum(ds["sink_sd_mg_c_ha_yr"].values.astype(np.float64))) * px_ha
    forest_ha = float(np.isfinite(ds["sink_mg_c_ha_yr"].values).sum()) * px_ha
    assert table["sink_mg_c_yr"].sum() == pytest.approx(sink_total, rel=1e-9)
    assert table["sink_tco2e_yr"].sum() == pytest.approx(sink_total * co2_per_c(), rel=1e-9)
    # fully correlated SDs add up over a partition as well
    assert table["sink_sd_mg_c_yr"].sum() == pytest.approx(sd_total, rel=1e-9)
    assert table["forest_area_ha"].sum() == pytest.approx(forest_ha, rel=1e-9)
    assert table["area_grid_ha"].sum() == pytest.approx(20 * 24 * px_ha, rel=1e-9)
    c2 = inputs["carbon_end"].values[0].astype(np.float64)
    q2 = inputs["quality_end"].values[0]
    assert table["carbon_2024_mg_c"].sum() == pytest.approx(
        float(np.nansum(np.where(q2 >= 1, c2, np.nan))) * px_ha, rel=1e-9
    )
    # cells are really cut: some coverage fractions are strictly between 0 and 1
    transform = inputs["carbon_end"].rio.transform()
    fractions = np.concatenate(
        [c.fraction for c in coverage_cells(parcels, transform=transform, shape=(20, 24), crs=CRS)]
    )
    assert ((fractions > 0.01) & (fractions < 0.99)).sum() > 10
    np.testing.assert_allclose(table["lidar_share"], 0.25)
    # the independent SD is the lower bound
    assert (table["sink_sd_independent_tco2e_yr"] < table["sink_sd_tco2e_yr"]).all()


def squares(n: int, side_px: int) -> gpd.GeoDataFrame:
    """``n`` x ``n`` squares of ``side_px`` cells, each shifted by a third of a cell (so
    they cut cells), a strip one cell wide down the grid's left edge and a square off it."""
    cells = [
        box(X0 + RES_M * (j * side_px + 1 / 3), Y0 - RES_M * ((i + 1) * side_px - 1 / 3),
            X0 + RES_M * ((j + 1) * side_px - 2 / 3), Y0 - RES_M * (i * side_px + 1 / 3))
        for i in range(n) for j in range(n)
    ]  # fmt: skip
    strip = box(X0 + 0.2 * RES_M, Y0 - RES_M * n * side_px, X0 + 0.8 * RES_M, Y0)
    off = box(X0 - 100 * RES_M, Y0 + 50 * RES_M, X0 - 90 * RES_M, Y0 + 60 * RES_M)
    polys = [*cells, strip, off]
    return gpd.GeoDataFrame({"parcel_id": [f"S{i}" for i in range(len(polys))]}, geometry=polys,
                            crs=CRS)  # fmt: skip


def test_coverage_windows_give_each_polygon_its_cells_on_a_window_near_its_block():
    # 6 x 6 squares of 4 cells on a 24 x 24 grid, read in blocks of 8: a window spans at
    # most a block plus its largest polygon (the strip makes one window as tall as the
    # grid), and each polygon's cells and fractions are those of the whole grid, in order
    shape, transform = (24, 24), Affine(RES_M, 0, X0, 0, -RES_M, Y0)
    polys = squares(6, 4)
    want = coverage_cells(polys, transform=transform, shape=shape, crs=CRS)
    extents = [np.ptp(np.divmod(c.cell, 24), axis=1) + 1 if c.cell.size else (0, 0) for c in want]
    seen = []
    sizes = []
    for win in coverage_windows(polys, transform=transform, shape=shape, crs=CRS, block=(8, 8)):
        ny, nx = win.shape
        largest = np.max([extents[i] for i in win.members], axis=0)
        assert ny <= 8 + largest[0] and nx <= 8 + largest[1]
        sizes.append(ny * nx)
        for i, cov in zip(win.members, win.covs, strict=True):
            rows, cols = np.divmod(cov.cell, nx)
            cells = (rows + win.y.start) * shape[1] + cols + win.x.start
            np.testing.assert_array_equal(cells, want[i].cell)
            np.testing.assert_array_equal(cov.fraction, want[i].fraction)
            seen.append(i)
    assert sorted(seen) == list(range(len(polys)))
    assert len(sizes) == 9 and sorted(sizes)[-2] <= 12 * 12  # one window per block
    assert want[-1].cell.size == 0  # the square off the grid has no cell


def test_window_grids_are_georeferenced_as_their_windows():
    # rasterising on a window (one cell wide for the strip, alone in its block) equals
    # the whole grid's cut
    values = raster(np.zeros((24, 24)))
    polys = squares(6, 4).iloc[[36, 20, 35, 37]]
    transform = values.rio.transform()
    whole = parcel_index(polys, values)
    windows = list(
        coverage_windows(polys, transform=transform, shape=(24, 24), crs=CRS, block=(8, 8))
    )
    assert min(w.shape[1] for w in windows if w.shape[0]) == 1
    for win in windows:
        if win.shape[0]:
            np.testing.assert_array_equal(
                parcel_index(polys, win.grid(values)), whole[win.y, win.x]
            )


def test_parcel_sums_over_many_windows_equal_the_whole_grids():
    # the squares in chunks of 5 px: dozens of windows, among them the one-cell strip
    parcels = squares(5, 4)
    inputs = epoch_inputs(5, shape=(20, 20))
    assert_numpy_equals_dask(parcel_sink_table, JOB, chunks=5, parcels=parcels.iloc[:-1],
                             **inputs)  # fmt: skip
    # the spatial SDs too (each window's kernel is cropped to each parcel's box)
    model = Correlogram(nugget=0.3, shared=0.2, range_m=25.0)
    sink_model = Correlogram(nugget=0.3, shared=0.5, range_m=25.0)
    assert_numpy_equals_dask(parcel_sink_table, SPATIAL, chunks=5, parcels=partition((20, 20)),
                             correlogram=model, sink_correlogram=sink_model, **inputs)  # fmt: skip


def test_a_layer_without_parcels_gives_an_empty_table():
    table = parcel_sink_table(JOB, parcels=partition().iloc[:0], **epoch_inputs(3))
    assert len(table) == 0 and list(table.columns) == ["parcel_id", "forest_type", "geometry"]


def test_stage_returns_gpkg_and_csv_tables():
    out = parcels_stage(JOB, parcels=partition(), **epoch_inputs(3))
    gdf, csv = out[PARCEL_SINK_GPKG_RELPATH], out[PARCEL_SINK_CSV_RELPATH]
    assert isinstance(gdf, gpd.GeoDataFrame)
    assert "geometry" not in csv.columns
    assert list(csv["parcel_id"]) == list(gdf["parcel_id"])
    assert {"mean_quality_2024", "lidar_share", "sink_lo_tco2e_yr"} <= set(csv.columns)
    # every area in ha has its 亩 (666.67 m2 = 6000/9 m2) right after it, in both tables
    for table in (gdf, csv):
        cols = list(table.columns)
        for ha in ("area_grid_ha", "forest_area_ha"):
            mu = ha.removesuffix("_ha") + "_mu"
            assert cols[cols.index(ha) + 1] == mu
            np.testing.assert_allclose(table[mu], table[ha] * 10_000 / (6000 / 9), rtol=1e-12)
    # rates per hectare are not areas
    assert "sink_tco2e_mu_yr" not in csv.columns
    assert gdf.attrs["epochs"] == ["2019", "2024"]
    # no models and maps to fit the error model to: the record says so, the SDs are the
    # fully correlated bound
    assert "correlated bound" in out[ERROR_CORRELOGRAM_RELPATH]["skipped"]
    np.testing.assert_allclose(csv["sink_sd_tco2e_yr"], csv["sink_sd_correlated_tco2e_yr"])
    assert gdf.attrs["error_aggregation"] == "correlated"


SPATIAL = replace(JOB, epoch_error_correlation=0.6)


@pytest.mark.parametrize(
    ("model", "bound"),
    [
        (Correlogram(nugget=1.0, shared=0.0, range_m=30.0), "independent"),
        (Correlogram(nugget=0.0, shared=1.0, range_m=30.0), "correlated"),
    ],
)
def test_spatial_sds_reach_the_bounds_at_the_correlogram_extremes(model, bound):
    table = parcel_sink_table(SPATIAL, parcels=partition(), correlogram=model, **epoch_inputs(4))
    assert table.attrs["error_aggregation"] == "spatial"
    assert table.attrs["error_correlogram"] == model.record()
    for e in ("2019", "2024"):
        np.testing.assert_allclose(
            table[f"carbon_sd_{e}_mg_c"], table[f"carbon_sd_{bound}_{e}_mg_c"], rtol=1e-9
        )
    if bound == "independent":
        # per pixel Var(sink) = s1^2 + s2^2 - 2 rho s1 s2: without spatial correlation the
        # pixel sink SDs (float32 in the sink map) add up as independent
        np.testing.assert_allclose(
            table["sink_sd_tco2e_yr"], table["sink_sd_independent_tco2e_yr"], rtol=1e-6
        )


def test_spatial_sds_lie_between_the_bounds():
    model = Correlogram(nugget=0.3, shared=0.05, range_m=40.0)
    table = parcel_sink_table(SPATIAL, parcels=partition(), correlogram=model, **epoch_inputs(5))
    for col, lo, hi in [
        ("sink_sd_tco2e_yr", "sink_sd_independent_tco2e_yr", "sink_sd_correlated_tco2e_yr"),
        (
            "carbon_sd_2024_mg_c",
            "carbon_sd_independent_2024_mg_c",
            "carbon_sd_correlated_2024_mg_c",
        ),
    ]:
        assert (table[lo] < table[col]).all() and (table[col] < table[hi]).all()
    # the interval is built on the spatial SD
    np.testing.assert_allclose(
        table["sink_hi_tco2e_yr"] - table["sink_tco2e_yr"],
        1.6448536 * table["sink_sd_tco2e_yr"],
        rtol=1e-6,
    )


def test_spatial_sink_sd_of_one_parcel_equals_the_double_sum():
    # a whole-grid parcel: Var(sink) = sum_ij rho(d_ij) (a_i a_j + b_i b_j - 2 r a_i b_j)
    # / years^2 with a, b the epochs' SDs where the sink is valid (pixel area 0.01 ha)
    shape = (6, 8)
    rng = np.random.default_rng(9)
    s1, s2 = rng.uniform(1, 5, shape), rng.uniform(1, 5, shape)
    inputs = {
        "carbon_start": raster(np.full(shape, 100.0)),
        "carbon_end": raster(np.full(shape, 110.0)),
        "carbon_sd_start": raster(s1),
        "carbon_sd_end": raster(s2),
        "quality_start": raster(np.ones(shape)),
        "quality_end": raster(np.ones(shape)),
    }
    parcels = gpd.GeoDataFrame(
        {"parcel_id": ["all"]}, geometry=[box(X0, Y0 - 60, X0 + 80, Y0)], crs=CRS
    )
    model = Correlogram(nugget=0.2, shared=0.1, range_m=25.0)
    row = parcel_sink_table(SPATIAL, parcels=parcels, correlogram=model, **inputs).iloc[0]
    yy, xx = np.indices(shape)
    pts = np.column_stack([yy.ravel(), xx.ravel()]) * RES_M
    rho = model(np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)))
    a = s1.astype(np.float32).ravel().astype(np.float64) * 0.01
    b = s2.astype(np.float32).ravel().astype(np.float64) * 0.01
    var = a @ rho @ a + b @ rho @ b - 2 * 0.6 * (a @ rho @ b)
    assert row["sink_sd_mg_c_yr"] == pytest.approx(np.sqrt(var) / SPATIAL.years, rel=1e-9)
    assert row["carbon_sd_2019_mg_c"] == pytest.approx(np.sqrt(a @ rho @ a), rel=1e-9)


def test_duplicate_parcel_ids_are_reported():
    parcels = partition()
    parcels["parcel_id"] = "same"
    with pytest.raises(InputDataError, match="duplicate parcel_id"):
        parcel_sink_table(JOB, parcels=parcels, **epoch_inputs(1))


def test_missing_lidar_band_is_named():
    with pytest.raises(InputDataError, match="lidar_fraction"):
        parcel_sink_table(
            JOB,
            parcels=partition(),
            lidar_metrics=raster(np.zeros((1, 20, 24)), band=["h_mean"]),
            **epoch_inputs(1),
        )


def test_parcels_partly_off_the_grid_are_flagged_and_warned_and_wholly_off_refused():
    # a 2 x 2 grid of 10 m cells (20 m x 20 m); parcel "in" lies inside, "edge" sticks out
    # 30 m east of a 10 m overlap (a quarter on the grid by shapely's own intersection),
    # "off" lies 1 km away
    inputs = {
        k: raster(np.full((2, 2), v))
        for k, v in {
            "carbon_start": 100.0,
            "carbon_end": 110.0,
            "carbon_sd_start": 3.0,
            "carbon_sd_end": 4.0,
            "quality_start": 1.0,
            "quality_end": 1.0,
        }.items()
    }
    grid = box(X0, Y0 - 20, X0 + 20, Y0)
    inside = box(X0 + 2, Y0 - 18, X0 + 12, Y0 - 8)
    edge = box(X0 + 10, Y0 - 20, X0 + 50, Y0 - 10)
    parcels = gpd.GeoDataFrame({"parcel_id": ["in", "edge"]}, geometry=[inside, edge], crs=CRS)
    with pytest.warns(PipelineWarning, match=r"1 of 2 polygons lie partly off.*'edge'.*25%"):
        table = parcel_sink_table(JOB, parcels=parcels, **inputs)
    want = [g.intersection(grid).area / g.area for g in (inside, edge)]
    # exactextract gives coverage fractions in float32
    np.testing.assert_allclose(table["grid_fraction"], want, rtol=1e-6)
    assert want[1] == pytest.approx(0.25)
    off = gpd.GeoDataFrame(
        {"parcel_id": ["in", "off"]},
        geometry=[inside, box(X0 + 1000, Y0, X0 + 1010, Y0 + 10)],
        crs=CRS,
    )
    with pytest.raises(InputDataError, match=r"1 of 2 polygons lie entirely off.*'off'"):
        parcel_sink_table(JOB, parcels=off, **inputs)


def test_parcels_partly_or_not_mapped_say_so_and_are_nan_not_zero():
    # 4 x 6 grid of 100 Mg C/ha at 2019, 110 at 2024. Parcel A (columns 0-1): forest land,
    # its left column never seen clear (n_valid 0, no value); B (columns 2-3): forest land
    # with no clear scene at 2019; C (columns 4-5): farmland (n_valid -1, no value wanted)
    shape = (4, 6)
    n_valid = np.ones(shape)
    n_valid[:, 0] = 0.0
    n_valid[:, 4:] = -1.0
    start_valid = n_valid.copy()
    start_valid[:, 2:4] = 0.0
    c1 = np.where(start_valid > 0, 100.0, np.nan)
    c2 = np.where(n_valid > 0, 110.0, np.nan)

    def quality(valid: np.ndarray) -> xr.DataArray:
        good = np.where(valid > 0, 1.0, 0.0)
        return raster(np.stack([np.where(valid > 0, 3.0, 0.0), valid, good]),
                      band=["model_source", "n_valid", "good"])  # fmt: skip

    inputs = {
        "carbon_start": raster(c1),
        "carbon_end": raster(c2),
        "carbon_sd_start": raster(np.where(np.isfinite(c1), 10.0, np.nan)),
        "carbon_sd_end": raster(np.where(np.isfinite(c2), 10.0, np.nan)),
        "quality_start": quality(start_valid),
        "quality_end": quality(n_valid),
    }
    cols = [box(X0 + 20 * k, Y0 - 40, X0 + 20 * (k + 1), Y0) for k in range(3)]
    parcels = gpd.GeoDataFrame({"parcel_id": ["A", "B", "C"]}, geometry=cols, crs=CRS)
    job = replace(JOB, parcel_error_aggregation="correlated")
    t = parcel_sink_table(job, parcels=parcels, **inputs).set_index("parcel_id")
    px_ha, whole_ha = 0.01, 8 * 0.01  # 8 cells of 100 m2 per parcel
    # A: half mapped: the totals are the mapped half's, and the table says it is half
    assert t.loc["A", "mapped_share_2019"] == pytest.approx(0.5)
    assert t.loc["A", "sink_mapped_share"] == pytest.approx(0.5)
    assert t.loc["A", "carbon_2019_mg_c"] == pytest.approx(100.0 * whole_ha / 2)
    assert t.loc["A", "carbon_sd_2024_mg_c"] == pytest.approx(10.0 * whole_ha / 2)  # correlated
    assert t.loc["A", "sink_mg_c_yr"] == pytest.approx(10.0 / job.years * whole_ha / 2)
    assert t.loc["A", "forest_area_ha"] == pytest.approx(whole_ha / 2)
    # B: nothing mapped at 2019, so its 2019 stock and its sink are unknown, not 0
    assert t.loc["B", "mapped_share_2019"] == 0.0 and t.loc["B", "mapped_share_2024"] == 1.0
    assert np.isnan(t.loc["B", ["carbon_2019_mg_c", "carbon_sd_2019_mg_c"]].astype(float)).all()
    assert np.isnan(t.loc["B", "sink_tco2e_yr"]) and t.loc["B", "sink_mapped_share"] == 0.0
    assert t.loc["B", "carbon_2024_mg_c"] == pytest.approx(110.0 * 8 * px_ha)
    # C: farmland, no value wanted: no forest carbon, share undefined
    assert t.loc["C", "carbon_2024_mg_c"] == 0.0 and np.isnan(t.loc["C", "mapped_share_2024"])
    with pytest.warns(PipelineWarning) as caught:
        warn_unmapped(t.reset_index(), ("2019", "2024"))
    text = " ".join(str(w.message) for w in caught)
    assert (
        "mapped_share_2019: 1 parcel(s) partly mapped" in text and "1 with no mapped cell" in text
    )
    assert "B 0%" in text
