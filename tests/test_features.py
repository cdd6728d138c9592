"""Area-weighted plot features: checked against shapely cell-by-cell intersection areas."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from helpers import assert_numpy_equals_dask
from shapely.geometry import box

from pipeline.errors import InputDataError
from pipeline.features import (
    cell_weights,
    class_layers,
    focal_mean,
    parcel_classes,
    plot_features,
    predictor_stack,
    support_window_px,
    terrain_features,
    with_band_names,
)

CRS = "EPSG:32650"
RES = 10.0
X0, Y0 = 500_000.0, 2_950_000.0  # top-left corner


def make_raster(values: np.ndarray, names: list[str], *, chunks: int = 7) -> xr.DataArray:
    _, ny, nx = values.shape
    x = X0 + (np.arange(nx) + 0.5) * RES
    y = Y0 - (np.arange(ny) + 0.5) * RES
    da = xr.DataArray(
        values.astype(np.float32), dims=("band", "y", "x"), coords={"band": names, "y": y, "x": x}
    )
    return da.rio.write_crs(CRS).chunk({"band": 1, "y": chunks, "x": chunks})


def plot_square(cx: float, cy: float, side_m: float = 25.82) -> object:
    h = side_m / 2
    return box(cx - h, cy - h, cx + h, cy + h)


def reference_mean(values: np.ndarray, poly: object) -> float:
    """Independent reference: exact cell/polygon intersection areas from shapely."""
    ny, nx = values.shape
    num = den = 0.0
    for r in range(ny):
        for c in range(nx):
            cell = box(X0 + c * RES, Y0 - (r + 1) * RES, X0 + (c + 1) * RES, Y0 - r * RES)
            a = cell.intersection(poly).area
            if a > 0 and np.isfinite(values[r, c]):
                num += a * values[r, c]
                den += a
    return num / den


def test_area_weighted_mean_matches_exact_intersection_areas() -> None:
    rng = np.random.default_rng(7)
    vals = rng.uniform(0, 100, size=(2, 20, 20))
    da = make_raster(vals, ["a", "b"])
    polys = [
        plot_square(X0 + 63.3, Y0 - 71.9),
        plot_square(X0 + 140.0, Y0 - 25.0),
        plot_square(X0 + 91.7, Y0 - 155.2),
    ]
    plots = gpd.GeoDataFrame({"plot_id": ["p1", "p2", "p3"]}, geometry=polys, crs=CRS)
    table = plot_features(da, plots)
    for i, poly in enumerate(polys):
        for b, name in enumerate(["a", "b"]):
            assert table.loc[i, name] == pytest.approx(reference_mean(vals[b], poly), rel=1e-6)
        # a 0.0667 ha square is not the centre pixel: the weighted mean differs from it
        r = int((Y0 - poly.centroid.y) // RES)
        c = int((poly.centroid.x - X0) // RES)
        assert abs(table.loc[i, "a"] - vals[0, r, c]) > 1e-3
    assert table["valid_fraction"].tolist() == [1.0, 1.0, 1.0]
    assert table.loc[0, "x_m"] == pytest.approx(X0 + 63.3)


def test_coverage_fractions_sum_to_plot_area_in_cells() -> None:
    da = make_raster(np.zeros((1, 20, 20)), ["a"])
    plots = gpd.GeoDataFrame(
        {"plot_id": [1]}, geometry=[plot_square(X0 + 77.7, Y0 - 88.8)], crs=CRS
    )
    ((rows, cols, w),) = cell_weights(plots, da)
    assert w.sum() == pytest.approx(25.82**2 / RES**2, rel=1e-6)  # float32 coverage
    # a 25.8 m square at an arbitrary offset touches a 4 x 4 block of 10 m cells
    assert len(set(rows)) == 4 and len(set(cols)) == 4
    assert rows.min() == int((88.8 - 12.91) // RES) and cols.min() == int((77.7 - 12.91) // RES)


def test_nodata_cells_drop_out_and_are_reported() -> None:
    vals = np.arange(400, dtype=np.float64).reshape(1, 20, 20)
    vals[0, 5, 5] = np.nan
    da = make_raster(vals, ["a"])
    poly = box(X0 + 50, Y0 - 70, X0 + 70, Y0 - 50)  # exactly cells rows 5-6, cols 5-6
    plots = gpd.GeoDataFrame({"plot_id": ["x"]}, geometry=[poly], crs=CRS)
    table = plot_features(da, plots)
    assert table.loc[0, "a"] == pytest.approx(
        np.mean([vals[0, 5, 6], vals[0, 6, 5], vals[0, 6, 6]])
    )
    assert table.loc[0, "valid_fraction"] == pytest.approx(0.75)


def test_plots_in_another_crs_are_reprojected() -> None:
    vals = np.random.default_rng(1).uniform(0, 1, size=(1, 20, 20))
    da = make_raster(vals, ["a"])
    poly = plot_square(X0 + 100.0, Y0 - 100.0)
    utm = gpd.GeoDataFrame({"plot_id": [1]}, geometry=[poly], crs=CRS)
    wgs = utm.to_crs("EPSG:4326")
    assert plot_features(da, wgs).loc[0, "a"] == pytest.approx(
        plot_features(da, utm).loc[0, "a"], rel=1e-4
    )


def test_band_names_from_long_name_attribute_and_clear_error() -> None:
    da = make_raster(np.zeros((2, 4, 4)), ["a", "b"]).assign_coords(band=[1, 2])
    da.attrs["long_name"] = ("h_mean", "cover_2m")
    assert list(with_band_names(da, source="x.tif")["band"].to_numpy()) == ["h_mean", "cover_2m"]
    del da.attrs["long_name"]
    with pytest.raises(InputDataError, match=r"x\.tif: bands have no names"):
        with_band_names(da, source="x.tif")


def test_terrain_aspect_becomes_northness_eastness_and_stack_drops_qa_bands() -> None:
    terrain = make_raster(
        np.stack([np.full((4, 4), 300.0), np.full((4, 4), 20.0), np.full((4, 4), 90.0)]),
        ["elevation", "slope_deg", "aspect_deg"],
    )
    tf = terrain_features(terrain, source="t.tif")
    assert list(tf["band"].to_numpy()) == ["elevation", "slope_deg", "northness", "eastness"]
    np.testing.assert_allclose(tf.sel(band="northness").to_numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(tf.sel(band="eastness").to_numpy(), 1.0, atol=1e-6)
    comp = make_raster(np.ones((2, 4, 4)), ["ndvi", "n_valid"])
    stack = predictor_stack(comp, tf, sources=("c.tif", "t.tif"))
    assert list(stack["band"].to_numpy()) == [
        "ndvi",
        "elevation",
        "slope_deg",
        "northness",
        "eastness",
    ]
    with pytest.raises(InputDataError, match="elevation"):
        predictor_stack(terrain, tf, sources=("c.tif", "t.tif"))


def test_rasters_off_the_model_grid_are_refused() -> None:
    a = make_raster(np.ones((1, 6, 6)), ["a"])
    shifted = make_raster(np.ones((1, 6, 6)), ["b"]).assign_coords(x=a["x"] + RES / 2)
    with pytest.raises(InputDataError, match=r"b\.tif: not on the model grid of a\.tif"):
        predictor_stack(a, shifted, sources=("a.tif", "b.tif"))
    nearly = make_raster(np.ones((1, 6, 6)), ["b"]).assign_coords(x=a["x"] + 1e-9)
    assert predictor_stack(a, nearly, sources=("a.tif", "b.tif")).sizes["band"] == 2


def test_focal_mean_matches_brute_force_nanmean_across_chunks() -> None:
    rng = np.random.default_rng(3)
    vals = rng.uniform(0, 10, size=(2, 17, 13))
    vals[rng.uniform(size=vals.shape) < 0.15] = np.nan
    da = make_raster(vals, ["a", "b"], chunks=5)
    got = assert_numpy_equals_dask(focal_mean, da.compute(), chunks=5, size_px=3).to_numpy()
    ref = np.full(vals.shape, np.nan)
    for b in range(2):
        for r in range(17):
            for c in range(13):
                if np.isfinite(vals[b, r, c]):
                    win = vals[b, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
                    ref[b, r, c] = np.nanmean(win)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert support_window_px(25.82, 10.0) == 3 and support_window_px(25.82, 1.0) == 27
    assert focal_mean(da, size_px=1) is da


def test_parcel_class_layers_burn_cell_centres_and_average_to_class_shares() -> None:
    # two parcels split a 6 x 6 grid of 10 m cells at x = X0 + 24 m: the centres of
    # columns 0-1 (X0 + 5, + 15 m) lie in the west parcel, those of columns 2-5 in the east
    like = make_raster(np.zeros((1, 6, 6)), ["elevation"])
    parcels = gpd.GeoDataFrame(
        {"forest_type": ["pine", "fir"]},
        geometry=[box(X0, Y0 - 60, X0 + 24, Y0), box(X0 + 24, Y0 - 60, X0 + 60, Y0)],
        crs=CRS,
    )
    classes = parcel_classes(parcels, column="forest_type")
    assert classes == ["fir", "pine"]
    layers = class_layers(parcels, like, column="forest_type", classes=[*classes, "bamboo"])
    assert list(layers["band"].to_numpy()) == [
        "forest_type:fir",
        "forest_type:pine",
        "forest_type:bamboo",
    ]
    v = layers.compute().to_numpy()
    np.testing.assert_array_equal(v[1], np.tile([1, 1, 0, 0, 0, 0], (6, 1)))
    np.testing.assert_array_equal(v[0], 1 - v[1])
    assert not v[2].any()
    # averaged over a plot square, a band is the plot's share of that class
    square = gpd.GeoDataFrame({"plot_id": ["A"]}, geometry=[box(X0, Y0 - 30, X0 + 30, Y0)], crs=CRS)
    shares = plot_features(layers, square)
    assert shares.loc[0, "forest_type:pine"] == pytest.approx(2 / 3)
    assert shares.loc[0, "forest_type:fir"] == pytest.approx(1 / 3)
    with pytest.raises(InputDataError, match=r"model\.parcel_class_column"):
        parcel_classes(parcels, column="species")
