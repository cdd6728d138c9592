"""Tests of the per-pixel stock-change sink (pipeline.sink, pipeline.stages.sink)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from helpers import assert_numpy_equals_dask, dask_chunked
from hypothesis import given, settings
from hypothesis import strategies as st

from models.allometry import co2_per_c
from pipeline import io
from pipeline.config import SinkParams, parse_config
from pipeline.contracts import (
    INDEX_RELPATH,
    PARCEL_SINK_GPKG_RELPATH,
    SINK_RELPATH,
    SinkJob,
    resolve_correlation,
    sink_job,
)
from pipeline.errors import ConfigError, InputDataError
from pipeline.sink import forest_carbon_index, stock_change_sink, years_between
from pipeline.stages.sink import sink

RES_M = 10.0
X0, Y0 = 500_000.0, 3_000_000.0


def raster(values: np.ndarray, *, nodata: float | None = None):
    """A (band, y, x) raster on a 10 m EPSG:32650 grid."""
    ny, nx = values.shape
    da = xr.DataArray(
        values[None].astype(np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": [1],
            "y": Y0 - RES_M * (np.arange(ny) + 0.5),
            "x": X0 + RES_M * (np.arange(nx) + 0.5),
        },
    )
    if nodata is not None:
        da.attrs["_FillValue"] = nodata
    return da.rio.write_crs("EPSG:32650")


def epoch_stack(seed: int, shape: tuple[int, int] = (7, 9)):
    """Seeded synthetic carbon, SD and quality maps of two epochs (Mg C/ha)."""
    rng = np.random.default_rng(seed)
    c1 = rng.uniform(20, 120, shape)
    c2 = c1 + rng.normal(2, 3, shape)
    c1[0, 0] = np.nan  # not forest at the start
    s1 = 0.15 * c1
    s2 = 0.15 * c2
    q1 = (rng.uniform(size=shape) > 0.1).astype(float)
    q2 = np.ones(shape)
    return [raster(a) for a in (c1, c2, s1, s2, q1, q2)]


def test_one_pixel_against_closed_form():
    # C1 = 100, C2 = 110 Mg C/ha, s1 = 3, s2 = 4, 5 years:
    # sink = 10/5 = 2 Mg C/ha/yr; rho = 0: sd = sqrt(9 + 16)/5 = 1;
    # rho = 0.5: var = 9 + 16 - 2*0.5*3*4 = 13, sd = sqrt(13)/5 = 0.72111
    args = [raster(np.array([[v]])) for v in (100.0, 110.0, 3.0, 4.0, 1.0, 1.0)]
    ds = stock_change_sink(*args, years=5.0, epoch_error_correlation=0.0, min_quality=1)
    assert float(ds["sink_mg_c_ha_yr"].squeeze()) == pytest.approx(2.0)
    assert float(ds["sink_sd_mg_c_ha_yr"].squeeze()) == pytest.approx(1.0)
    assert float(ds["sink_tco2e_ha_yr"].squeeze()) == pytest.approx(2.0 * 44 / 12, rel=1e-6)
    assert float(ds["sink_sd_tco2e_ha_yr"].squeeze()) == pytest.approx(44 / 12, rel=1e-6)
    ds = stock_change_sink(*args, years=5.0, epoch_error_correlation=0.5, min_quality=1)
    assert float(ds["sink_sd_mg_c_ha_yr"].squeeze()) == pytest.approx(math.sqrt(13) / 5, rel=1e-6)


def test_rho_zero_is_the_largest_sd_for_nonnegative_correlation():
    args = epoch_stack(1)
    sds = [
        float(
            stock_change_sink(*args, years=5.0, epoch_error_correlation=r, min_quality=1)[
                "sink_sd_mg_c_ha_yr"
            ].sum()
        )
        for r in (0.0, 0.3, 0.9)
    ]
    assert sds[0] > sds[1] > sds[2]


def test_masks_non_forest_poor_quality_and_nodata():
    c1 = np.array([[100.0, np.nan, 100.0, -9999.0]])
    c2 = np.array([[110.0, 110.0, 110.0, 110.0]])
    sd = np.full((1, 4), 5.0)
    q1 = np.array([[1.0, 1.0, 0.0, 1.0]])
    args = [
        raster(c1, nodata=-9999.0),
        raster(c2),
        raster(sd),
        raster(sd),
        raster(q1),
        raster(np.ones((1, 4))),
    ]
    ds = stock_change_sink(*args, years=5.0, epoch_error_correlation=0.0, min_quality=1)
    sink_v = ds["sink_mg_c_ha_yr"].values[0]
    assert sink_v[0] == pytest.approx(2.0)
    assert np.isnan(sink_v[1:]).all()  # not forest, poor quality, nodata
    fci = forest_carbon_index(args[1], args[3], args[5], ds, min_quality=1)
    np.testing.assert_array_equal(fci["quality_flag"].values[0], [2, 1, 1, 1])


@settings(max_examples=8, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=9))
def test_dask_equals_numpy_for_any_chunking(chunk):
    args = epoch_stack(7)
    ds = assert_numpy_equals_dask(
        stock_change_sink,
        *args,
        chunks=chunk,
        years=4.5,
        epoch_error_correlation=0.2,
        min_quality=1,
    )
    assert_numpy_equals_dask(
        forest_carbon_index, args[1], args[3], args[5], ds, chunks=chunk, min_quality=1
    )


def test_grid_mismatch_is_an_input_error():
    args = epoch_stack(2)
    args[1] = raster(np.ones((3, 3)))
    with pytest.raises(InputDataError, match="same grid"):
        stock_change_sink(*args, years=5.0, epoch_error_correlation=0.0, min_quality=1)


def _config(**sink_params):
    return parse_config(
        {
            "region": "t",
            "aoi": "aoi/t.geojson",
            "crs": "EPSG:32650",
            "resolution_m": 10,
            "epochs": [
                {
                    "name": "2019",
                    "start": "2019-03-01",
                    "end": "2019-11-30",
                    "reference_date": "2019-07-01",
                },
                {
                    "name": "2024",
                    "start": "2024-03-01",
                    "end": "2024-11-30",
                    "reference_date": "2024-07-01",
                },
            ],
            "data_dir": "data/t",
            "output_dir": "outputs/t",
            "seed": 1,
            "stages": {"sink": sink_params},
        },
        source="test",
    )


def test_job_uses_reference_dates():
    job = sink_job(_config())
    # 2019-07-01 .. 2024-07-01 = 1827 days (2020 and 2024 are leap years)
    assert job.years == pytest.approx(1827 / 365.25)
    assert (job.epoch_start, job.epoch_end) == ("2019", "2024")
    with pytest.raises(ConfigError, match="unknown epoch"):
        sink_job(_config(epochs=["2019", "2020"]))
    with pytest.raises(InputDataError, match="not after"):
        years_between(dt.date(2024, 1, 1), dt.date(2019, 1, 1))


def test_stage_outputs_write_as_described_cogs(tmp_path):
    job = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.0, min_quality=1),
        epochs=("2019", "2024"),
        reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
    )
    c1, c2, s1, s2, q1, q2 = dask_chunked(epoch_stack(3), 4)
    out = sink(
        job,
        carbon_start=c1,
        carbon_end=c2,
        carbon_sd_start=s1,
        carbon_sd_end=s2,
        quality_start=q1,
        quality_end=q2,
    )
    assert set(out) == {SINK_RELPATH, INDEX_RELPATH}
    path = tmp_path / "sink.tif"
    io.write_cog(out[SINK_RELPATH], path)
    with rasterio.open(path) as src:
        assert src.descriptions == (
            "sink_mg_c_ha_yr",
            "sink_sd_mg_c_ha_yr",
            "sink_tco2e_ha_yr",
            "sink_sd_tco2e_ha_yr",
        )
        assert src.units[2] == "t CO2e ha-1 yr-1"
        band1, band3 = src.read(1), src.read(3)
    np.testing.assert_allclose(band3, band1 * co2_per_c(), rtol=1e-6)
    expected = (c2.values[0] - c1.values[0]) / job.years
    expected[q1.values[0] < 1] = np.nan
    np.testing.assert_allclose(band1, expected, rtol=1e-5)


def test_sink_command_on_explicit_files(tmp_path, capsys):
    import argparse

    import geopandas as gpd
    from shapely.geometry import box

    from pipeline.commands import sink as sink_command

    names = ["c1", "c2", "s1", "s2", "q1", "q2"]
    paths = {}
    for name, da in zip(names, epoch_stack(5), strict=True):
        paths[name] = tmp_path / f"{name}.tif"
        io.write_cog(da, paths[name])
    parcels = tmp_path / "parcels.gpkg"
    gpd.GeoDataFrame(
        {"parcel_id": ["A"]}, geometry=[box(X0, Y0 - 70, X0 + 90, Y0)], crs="EPSG:32650"
    ).to_file(parcels)
    parser = argparse.ArgumentParser()
    sink_command.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sink",
            "--carbon",
            str(paths["c1"]),
            str(paths["c2"]),
            "--sd",
            str(paths["s1"]),
            str(paths["s2"]),
            "--quality",
            str(paths["q1"]),
            str(paths["q2"]),
            "--dates",
            "2019-07-01",
            "2024-07-01",
            "--parcels",
            str(parcels),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert args.func(args) == 0
    with rasterio.open(tmp_path / "out" / INDEX_RELPATH) as src:
        assert src.count == 5 and src.descriptions[-1] == "quality_flag"
        sink_band = src.read(3)
    table = gpd.read_file(tmp_path / "out" / PARCEL_SINK_GPKG_RELPATH)
    # the one parcel covers the whole grid: its sink is the raster's sum x 0.01 ha
    assert table["sink_mg_c_yr"].iloc[0] == pytest.approx(
        float(np.nansum(sink_band.astype(np.float64))) * 0.01, rel=1e-6
    )
    assert "parcel_sink.csv" in capsys.readouterr().out


def test_uses_the_good_band_of_a_multiband_quality_raster():
    # predict writes quality as bands model_source, n_valid, good (int16, nodata -1)
    c1, c2, s1, s2 = (raster(np.array([[v, v]])) for v in (100.0, 110.0, 3.0, 4.0))
    q = raster(np.zeros((1, 2)))
    stack = xr.concat([q + 3, q + 12, raster(np.array([[1.0, 0.0]]))], dim="band").assign_coords(
        band=["model_source", "n_valid", "good"]
    )
    ds = stock_change_sink(
        c1, c2, s1, s2, stack, stack, years=5.0, epoch_error_correlation=0.0, min_quality=1
    )
    v = ds["sink_mg_c_ha_yr"].values
    assert v[0, 0] == pytest.approx(2.0) and np.isnan(v[0, 1])


def test_estimated_correlation_comes_from_the_model_card():
    dates = (dt.date(2019, 7, 1), dt.date(2024, 7, 1))
    job = SinkJob.from_params(
        SinkParams(epoch_error_correlation="estimated"),
        epochs=("2019", "2024"),
        reference_dates=dates,
    )
    card = {"epoch_error_correlation": {"2019/2024": {"rho": 0.79, "n_plots": 79}}}
    assert resolve_correlation(job, card).correlation == 0.79
    # too few re-measured plots: the conservative 0
    none = {"epoch_error_correlation": {"2019/2024": {"rho": None, "n_plots": 3}}}
    assert resolve_correlation(job, none).correlation == 0.0
    fixed = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.3), epochs=("2019", "2024"), reference_dates=dates
    )
    assert resolve_correlation(fixed, card).correlation == 0.3
    with pytest.raises(InputDataError, match="no model card"):
        resolve_correlation(job, None)
    with pytest.raises(InputDataError, match="not resolved"):
        _ = job.correlation
    # the sink SD follows: s1 = s2 = s gives sd = s * sqrt(2 (1 - rho)) / years
    c1, c2, s1, _, q1, q2 = epoch_stack(3)
    ds = sink(
        job,
        carbon_start=c1,
        carbon_end=c2,
        carbon_sd_start=s1,
        carbon_sd_end=s1,
        quality_start=q1,
        quality_end=q2,
        model_card=card,
    )[SINK_RELPATH]
    expected = np.squeeze(s1.values) * math.sqrt(2 * (1 - 0.79)) / job.years
    got = np.squeeze(ds["sink_sd_mg_c_ha_yr"].values)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
