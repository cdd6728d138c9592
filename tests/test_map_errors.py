"""The map errors at independent plots and the parcel-shared part they give
(pipeline.map_errors.plot_errors, plot_shared_parts), and which plots may be compared with
a map over their square (pipeline.samples.whole_in_frame)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from helpers import assert_numpy_equals_dask
from shapely.geometry import box

from models.spatial_error import Correlogram
from pipeline.map_errors import plot_errors, plot_shared_parts
from pipeline.samples import whole_in_frame

CRS = "EPSG:32650"


def grid(values: np.ndarray) -> xr.DataArray:
    ny, nx = values.shape
    da = xr.DataArray(
        values.astype(np.float64),
        dims=("y", "x"),
        coords={"y": 1000.0 - 10.0 * (np.arange(ny) + 0.5), "x": 10.0 * (np.arange(nx) + 0.5)},
    )
    return da.rio.write_crs(CRS)


def test_plot_errors_standardise_by_the_mean_over_the_square() -> None:
    # a 10 x 10 grid of 10 m cells; plot A covers four cells exactly (map 100, 120, 100,
    # 120: mean 110, SD 10 everywhere), plot B half of two cells and all of two others;
    # plot C touches an unmapped cell and is left out
    agb = np.full((10, 10), 100.0)
    agb[:, 1::2] = 120.0
    agb[9, 9] = np.nan
    later = agb + 30.0
    sd = np.full((10, 10), 10.0)
    plots = gpd.GeoDataFrame(
        {"plot_id": ["A", "B", "C"]},
        geometry=[box(0, 980, 20, 1000), box(45, 930, 65, 950), box(80, 900, 100, 920)],
        crs=CRS,
    )
    parcels = gpd.GeoDataFrame({"parcel_id": ["p"]}, geometry=[box(0, 900, 50, 1000)], crs=CRS)
    observed = pd.DataFrame(
        {"plot_id": ["A", "A", "B", "B"], "epoch": ["1", "2", "1", "2"], "v": [130, 150, 90, 150]}
    )
    maps = {"1": (grid(agb), grid(sd)), "2": (grid(later), grid(sd))}
    out = plot_errors(
        plots, observed, value="v", maps=maps, parcels=parcels, first="1", last="2", rho=0.5
    ).set_index(["plot_id", "epoch"])
    assert set(out.index.get_level_values("plot_id")) == {"A", "B"}
    # B: columns 4 (half), 5, 6 (half): map (0.5 * 100 + 120 + 0.5 * 100) / 2 = 110
    assert out.loc[("A", "1"), "z"] == pytest.approx((130 - 110) / 10)
    assert out.loc[("B", "2"), "z"] == pytest.approx((150 - 140) / 10)
    assert out.loc[("B", "2"), "map"] == pytest.approx(140.0)
    # change: residuals 20 -> 10 (A), SD sqrt(100 + 100 - 100) = 10
    assert out.loc[("A", "change"), "z"] == pytest.approx((10 - 20) / 10)
    assert out.loc[("A", "change"), "map"] == pytest.approx(30.0)
    # A's centre lies in the parcel, B's (x 55) outside it
    assert out.loc[("A", "1"), "parcel"] == 1 and out.loc[("B", "1"), "parcel"] == 0


def test_plot_errors_on_windows_of_plots_equal_the_whole_maps() -> None:
    # 30 plots of 2.5 x 2.5 cells over a 40 x 40 grid cut into two parcels, the maps in
    # chunks of 6 px: each group of plots is read (and the parcels rasterised) on its
    # window only, and the errors equal those from the whole maps to the bit
    rng = np.random.default_rng(8)
    maps = {
        e: (grid(rng.uniform(50, 150, (40, 40))), grid(rng.uniform(5, 15, (40, 40))))
        for e in ("1", "2")
    }
    x, y = rng.uniform(0, 375, 30), rng.uniform(600, 975, 30)
    plots = gpd.GeoDataFrame(
        {"plot_id": [f"P{i}" for i in range(30)]},
        geometry=[box(a, b, a + 25, b + 25) for a, b in zip(x, y, strict=True)],
        crs=CRS,
    )
    parcels = gpd.GeoDataFrame(
        {"parcel_id": ["w", "e"]}, geometry=[box(0, 600, 203, 1000), box(203, 600, 400, 1000)],
        crs=CRS,
    )  # fmt: skip
    observed = pd.DataFrame(
        {
            "plot_id": [f"P{i}" for i in range(30)] * 2,
            "epoch": ["1"] * 30 + ["2"] * 30,
            "v": rng.uniform(50, 150, 60),
        }
    )
    out = assert_numpy_equals_dask(
        plot_errors, plots, observed, value="v", maps=maps, parcels=parcels, first="1",
        last="2", rho=0.3, chunks=6,
    )  # fmt: skip
    assert len(out) == 90
    # the parcel of the plot's centre cell, by that cell's centre
    west = np.floor(out["x_m"] / 10) * 10 + 5 < 203
    np.testing.assert_array_equal(out["parcel"], np.where(west, 1, 2))


def _pair_errors(scale: float) -> pd.DataFrame:
    """2,000 parcels of two plots 100 m apart, standardised errors with a parcel effect of
    variance 0.5 and a plot effect of 0.5, times ``scale`` (SDs misstating the errors'
    size: variance ``scale**2``)."""
    rng = np.random.default_rng(2)
    n = 2000
    parcel = np.repeat(np.arange(1, n + 1), 2)
    effect = rng.normal(0, np.sqrt(0.5), n)[parcel - 1]
    rows = []
    for epoch in ("2019", "2024", "change"):
        z = scale * (effect + rng.normal(0, np.sqrt(0.5), 2 * n))
        rows.append(
            pd.DataFrame(
                {
                    "plot_id": [f"P{i}" for i in range(2 * n)],
                    "parcel": parcel,
                    "x_m": np.tile([0.0, 100.0], n),
                    "y_m": 1000.0 * parcel,
                    "epoch": epoch,
                    "map": 0.0,
                    "z": z,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_shared_part_from_plot_pairs_solves_the_correlogram_at_their_distance() -> None:
    # With the LiDAR fit's nugget 0.2 and range 100 m, E = exp(-1): the plots' covariance
    # C = shared + (0.8 - shared) E
    errors = _pair_errors(1.0)
    lidar = Correlogram(nugget=0.2, shared=0.5, range_m=100.0)
    found = plot_shared_parts(errors, lidar, stocks=("2019", "2024"))
    assert not isinstance(found, str)
    stocks, change, record = found
    e = np.exp(-1.0)
    assert record["mean_exp_pairs"] == pytest.approx(e)
    for fitted, key in ((stocks, "stocks"), (change, "change")):
        c = record[key]["uncentred_between"]
        assert fitted.shared == pytest.approx((c - 0.8 * e) / (1 - e))
        assert (fitted.nugget, fitted.range_m) == (0.2, 100.0)
        # the model then gives the plots' covariance at their distance
        assert float(fitted(100.0)) == pytest.approx(c)
    # the true shared part: (0.5 - 0.8 e) / (1 - e) = 0.326
    assert stocks.shared == pytest.approx((0.5 - 0.8 * e) / (1 - e), abs=0.1)
    assert change.shared == pytest.approx((0.5 - 0.8 * e) / (1 - e), abs=0.1)
    # too few parcels with two plots: nothing estimated, and why
    few = _pair_errors(1.0)
    few = few[few["parcel"] <= 5]
    assert "fewer than 20" in plot_shared_parts(few, lidar, stocks=("2019", "2024"))


def test_shared_part_is_the_plots_covariance_when_the_sds_overstate_the_errors() -> None:
    # the same errors with SDs 1/sqrt(0.6) too large (E[z^2] = 0.6): the parcel effect's
    # variance in the SDs' units is 0.5 * 0.6 = 0.3, and a large parcel's variance,
    # shared * (sum w s)^2, must carry 0.3, not the correlation 0.5 the plots also show
    lidar = Correlogram(nugget=0.2, shared=0.5, range_m=100.0)
    found = plot_shared_parts(_pair_errors(np.sqrt(0.6)), lidar, stocks=("2019", "2024"))
    assert not isinstance(found, str)
    e = np.exp(-1.0)
    for fitted, key in zip(found[:2], ("stocks", "change"), strict=True):
        assert found[2][key]["uncentred_share"] == pytest.approx(0.5, abs=0.08)
        assert fitted.shared == pytest.approx((0.3 - 0.8 * e) / (1 - e), abs=0.06)


def test_plots_straddling_their_frame_are_not_whole() -> None:
    # frame of stratum "a": x 0-100; squares of 20 m wholly inside, touching the edge from
    # inside, straddling it, of another stratum the design does not list, and of the
    # inventory sample whose frame is elsewhere
    frames = gpd.GeoDataFrame(
        {"sample": ["project", "inventory"], "stratum": ["a", "b"], "area_ha": [1.0, 1.0]},
        geometry=[box(0, 0, 100, 100), box(500, 500, 600, 600)],
        crs=CRS,
    )
    plots = gpd.GeoDataFrame(
        {
            "plot_id": ["in", "edge", "across", "unlisted", "elsewhere"],
            "sample": ["project", "project", "project", "project", "inventory"],
            "stratum": ["a", "a", "a", "z", "b"],
        },
        geometry=[
            box(10, 10, 30, 30),
            box(80, 10, 100, 30),
            box(90, 10, 110, 30),
            box(90, 10, 110, 30),
            box(590, 590, 610, 610),
        ],
        crs=CRS,
    )
    np.testing.assert_array_equal(whole_in_frame(plots, frames), [True, True, False, True, False])
    # no design, or plots without strata: every square counts as whole
    assert whole_in_frame(plots, None).all()
    assert whole_in_frame(plots.drop(columns="stratum"), frames).all()
    # a design in another CRS is brought to the plots'
    np.testing.assert_array_equal(
        whole_in_frame(plots, frames.to_crs("EPSG:4326")), [True, True, False, True, False]
    )
