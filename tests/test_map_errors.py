"""The map errors at independent plots and the parcel-shared part they give
(pipeline.map_errors.plot_errors, plot_shared_parts)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from shapely.geometry import box

from models.spatial_error import Correlogram
from pipeline.map_errors import plot_errors, plot_shared_parts

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


def test_shared_part_from_plot_pairs_solves_the_correlogram_at_their_distance() -> None:
    # 300 parcels of two plots 100 m apart, errors with a parcel effect of variance 0.5
    # and a plot effect of 0.5 (intra-parcel correlation 0.5). With the LiDAR fit's
    # nugget 0.2 and range 100 m, E = exp(-1): r = shared + (0.8 - shared) E
    rng = np.random.default_rng(2)
    n = 300
    parcel = np.repeat(np.arange(1, n + 1), 2)
    effect = rng.normal(0, np.sqrt(0.5), n)[parcel - 1]
    rows = []
    for epoch in ("2019", "2024", "change"):
        z = effect + rng.normal(0, np.sqrt(0.5), 2 * n)
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
    errors = pd.concat(rows, ignore_index=True)
    lidar = Correlogram(nugget=0.2, shared=0.5, range_m=100.0)
    found = plot_shared_parts(errors, lidar, stocks=("2019", "2024"))
    assert not isinstance(found, str)
    stocks, change, record = found
    e = np.exp(-1.0)
    assert record["mean_exp_pairs"] == pytest.approx(e)
    for fitted, key in ((stocks, "stocks"), (change, "change")):
        r = record[key]["uncentred_share"]
        assert fitted.shared == pytest.approx((r - 0.8 * e) / (1 - e))
        assert (fitted.nugget, fitted.range_m) == (0.2, 100.0)
        # the model then gives the plots' correlation at their distance
        assert float(fitted(100.0)) == pytest.approx(r)
    # the true shared part: (0.5 - 0.8 e) / (1 - e) = 0.326
    assert stocks.shared == pytest.approx((0.5 - 0.8 * e) / (1 - e), abs=0.1)
    assert change.shared == pytest.approx((0.5 - 0.8 * e) / (1 - e), abs=0.1)
    # too few parcels with two plots: nothing estimated, and why
    few = errors[errors["parcel"] <= 5]
    assert "fewer than 20" in plot_shared_parts(few, lidar, stocks=("2019", "2024"))
