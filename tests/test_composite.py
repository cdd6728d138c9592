"""Composite science on small synthetic scenes: numpy reference == the lazy Dask result.

The generator below writes a handful of tiny COG scenes (Earth-Search-v1-shaped items,
``file://`` hrefs) from a seeded RNG: Sentinel-2 before and after baseline 04.00 (with
and without the provider's "offset applied" flag), SCL clouds and shadows, and one
Landsat scene with QA_PIXEL bits. The reference recomputes every step with plain numpy
and scipy on the whole array; the pipeline's version runs chunked (chunks smaller than
the scene, so dilation and the median cross chunk edges).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from helpers import assert_numpy_equals_dask
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import box

from pipeline import catalog
from pipeline import composite as C
from pipeline.config import CompositeParams
from pipeline.errors import CatalogError, InputDataError, PipelineWarning, ScienceDomainError
from pipeline.stages.composite import CompositeJob, composite

CRS = "EPSG:32650"
X0, Y0 = 700000.0, 2950000.0  # upper-left corner, metres
N = 48  # pixels per side
RES = 10.0
S2_KEYS = (
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
)
LS_KEYS = ("blue", "green", "red", "nir08", "swir16", "swir22")


def _write(path: Path, arr: np.ndarray, *, nodata: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype,
        crs=CRS,
        transform=from_origin(X0, Y0, RES, RES),
        nodata=nodata,
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(arr, 1)


def _item_dict(
    item_id: str, collection: str, when: dt.datetime, props: dict[str, Any], assets: dict[str, Path]
) -> dict[str, Any]:
    lon0, lat0, lon1, lat1 = 119.0, 26.6, 119.1, 26.7  # only used for search, not loading
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "bbox": [lon0, lat0, lon1, lat1],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]],
        },
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "proj:epsg": 32650,
            "forest-carbon:simulated": True,
            **props,
        },
        "links": [],
        "assets": {
            k: {
                "href": p.resolve().as_uri(),
                "type": "image/tiff",
                "proj:epsg": 32650,
                "proj:shape": [N, N],
                "proj:transform": [RES, 0.0, X0, 0.0, -RES, Y0],
            }
            for k, p in assets.items()
        },
    }


def make_scenes(root: Path, seed: int = 7) -> tuple[list[pystac.Item], dict[str, Any]]:
    """Write the synthetic scenes; return items and the ground truth used to make them."""
    rng = np.random.default_rng(seed)
    truth = {b: rng.uniform(0.02, 0.4, (N, N)).astype("float32") for b in S2_KEYS}
    items: list[pystac.Item] = []
    dns: dict[str, dict[str, np.ndarray]] = {}
    specs = [
        # id, date, baseline, flag, dn offset actually in the pixels
        ("S2A_PRE_0_L2A", dt.datetime(2021, 6, 1), "03.01", None, 0),
        ("S2B_POST_FLAG_0_L2A", dt.datetime(2023, 6, 11), "05.09", True, 0),
        ("S2A_POST_RAW_0_L2A", dt.datetime(2022, 7, 1), "04.00", False, 1000),
        ("S2B_POST_RAW2_0_L2A", dt.datetime(2022, 7, 11), "04.00", False, 1000),
    ]
    for item_id, when, baseline, flag, dn_off in specs:
        assets: dict[str, Path] = {}
        noise = {b: rng.normal(0, 0.004, (N, N)) for b in S2_KEYS}
        dn_b = {}
        for b in S2_KEYS:
            dn = np.round((truth[b] + noise[b]) * 10000 + dn_off).astype("uint16")
            dn[0, :3] = 0  # no-data strip
            dn_b[b] = dn
            assets[b] = root / item_id / f"{b}.tif"
            _write(assets[b], dn, nodata=0)
        scl = np.full((N, N), 4, dtype="uint8")
        cy, cx = rng.integers(8, N - 8, 2)
        scl[cy - 3 : cy + 3, cx - 4 : cx + 4] = 9  # a cloud
        scl[(cy + 5) % N, :10] = 3  # a shadow streak
        scl[0, :3] = 0
        dn_b["scl"] = scl
        assets["scl"] = root / item_id / "scl.tif"
        _write(assets["scl"], scl, nodata=0)
        props: dict[str, Any] = {
            "s2:processing_baseline": baseline,
            "eo:cloud_cover": 10.0,
            "platform": "sentinel-2a",
        }
        if flag is not None:
            props["earthsearch:boa_offset_applied"] = flag
        items.append(
            pystac.Item.from_dict(_item_dict(item_id, "sentinel-2-l2a", when, props, assets))
        )
        dns[item_id] = dn_b
    # one Landsat scene: OLI reflectance = HLS forward model of the MSI truth
    coeffs = C.harmonisation_coefficients("sentinel-2a")
    assets = {}
    dn_l: dict[str, np.ndarray] = {}
    for b in LS_KEYS:
        slope, off = coeffs[b]
        oli = truth[b] * slope + off
        dn = np.round((oli + 0.2) / 0.0000275).astype("uint16")
        dn_l[b] = dn
        assets[b] = root / "LC09_X" / f"{b}.tif"
        _write(assets[b], dn, nodata=0)
    qa = np.full((N, N), 1 << 6, dtype="uint16")  # clear
    qa[10:14, 30:36] = (1 << 3) | (1 << 1)  # cloud + dilated cloud
    qa[40, :] = 1 << 4  # shadow
    qa[20:22, 5:9] = 1 << 5  # snow
    dn_l["qa_pixel"] = qa
    assets["qa_pixel"] = root / "LC09_X" / "qa_pixel.tif"
    _write(assets["qa_pixel"], qa, nodata=1)
    items.append(
        pystac.Item.from_dict(
            _item_dict(
                "LC09_X",
                "landsat-c2-l2",
                dt.datetime(2022, 8, 1),
                {"eo:cloud_cover": 5.0, "platform": "landsat-9"},
                assets,
            )
        )
    )
    dns["LC09_X"] = dn_l
    return items, {"truth": truth, "dn": dns}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pystac.Item], dict[str, Any]]:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


def _geobox() -> GeoBox:
    return GeoBox.from_bbox(
        BoundingBox(X0, Y0 - N * RES, X0 + N * RES, Y0, crs=CRS), crs=CRS, resolution=RES
    )


SETTINGS = C.CompositeSettings.from_params(
    CompositeParams(cloud_dilation_px=2, resampling="nearest"), chunk_px=20, default_provider=None
)


def _reference(
    items: list[pystac.Item], data: dict[str, Any], band: str
) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy/scipy composite of one band, written out independently of the module."""
    disk = C.disk(2)
    layers = []
    for item in items:
        dn = data["dn"][item.id]
        if item.collection_id == "sentinel-2-l2a":
            base = item.properties["s2:processing_baseline"]
            applied = item.properties.get("earthsearch:boa_offset_applied", False)
            offset = -0.1 if (base >= "04.00" and not applied) else 0.0
            scl = dn["scl"]
            bad = np.isin(scl, [0, 1, 3, 8, 9, 10, 11])
            bad |= ndimage.binary_dilation(np.isin(scl, [3, 8, 9, 10]), structure=disk)
            refl = np.where(dn[band] == 0, np.nan, dn[band] * 1e-4 + offset)
        else:
            if band not in dn:
                continue
            qa = dn["qa_pixel"].astype(np.int64)
            bad = (qa & 0b111111) != 0
            bad |= ndimage.binary_dilation((qa & 0b11110) != 0, structure=disk)
            slope, off = C.harmonisation_coefficients("sentinel-2a")[band]
            refl = ((dn[band] * 0.0000275 - 0.2) - off) / slope
        layers.append(np.where(bad, np.nan, refl))
    stack = np.stack(layers)
    with (
        np.errstate(all="ignore"),
        pytest.warns(RuntimeWarning) if np.isnan(stack).all(0).any() else _null(),
    ):
        med = np.nanmedian(stack, axis=0)
    return med, np.isfinite(stack).sum(0)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_radiometry_rules_on_synthetic_items(
    scenes: tuple[list[pystac.Item], dict[str, Any]],
) -> None:
    items, _ = scenes
    got = {i.id: catalog.radiometry(i).offset for i in items}
    assert got == {
        "S2A_PRE_0_L2A": 0.0,
        "S2B_POST_FLAG_0_L2A": 0.0,
        "S2A_POST_RAW_0_L2A": -0.1,
        "S2B_POST_RAW2_0_L2A": -0.1,
        "LC09_X": -0.2,
    }


@pytest.mark.parametrize("band", ["red", "nir08", "rededge1"])
def test_composite_equals_numpy_reference(
    scenes: tuple[list[pystac.Item], dict[str, Any]], band: str
) -> None:
    items, data = scenes
    comp, _ = C.seasonal_composite(items, _geobox(), settings=SETTINGS)
    assert comp.data.chunksize[1:] == (20, 20)  # stayed lazy and chunked
    got = comp.sel(band=band).values
    ref, count = _reference(items, data, band)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    if band == "red":
        np.testing.assert_array_equal(comp.sel(band="n_valid").values, count)


def test_composite_recovers_truth_and_masks(
    scenes: tuple[list[pystac.Item], dict[str, Any]],
) -> None:
    items, data = scenes
    comp, _ = C.seasonal_composite(items, _geobox(), settings=SETTINGS)
    red = comp.sel(band="red").values
    ok = np.isfinite(red)
    assert ok.mean() > 0.95
    # the offsets were removed exactly once: the median sits on the truth within noise
    assert np.median(np.abs(red[ok] - data["truth"]["red"][ok])) < 0.005
    # a pixel cloudy in every scene but one keeps only that scene
    assert comp.sel(band="n_valid").values.max() == 5


def test_landsat_harmonisation_inverts_hls(
    scenes: tuple[list[pystac.Item], dict[str, Any]],
) -> None:
    items, data = scenes
    ls = [i for i in items if i.collection_id == "landsat-c2-l2"]
    comp, _ = C.seasonal_composite(
        ls,
        _geobox(),
        settings=C.CompositeSettings.from_params(
            CompositeParams(cloud_dilation_px=0, resampling="nearest"),
            chunk_px=20,
            default_provider=None,
        ),
    )
    blue = comp.sel(band="blue").values
    ok = np.isfinite(blue)
    # DN rounding is 0.0000275 reflectance; after the inverse, MSI truth within 3e-5
    np.testing.assert_allclose(blue[ok], data["truth"]["blue"][ok], atol=3e-5)
    # QA bits: cloud, shadow and snow pixels are masked
    assert np.isnan(blue[11, 32]) and np.isnan(blue[40, 7]) and np.isnan(blue[21, 6])
    # Landsat has no B08 / red edge: those stay empty rather than borrowed
    assert np.isnan(comp.sel(band="rededge1").values).all()
    # without harmonisation the values differ by the published regression
    raw, _ = C.seasonal_composite(
        ls,
        _geobox(),
        settings=C.CompositeSettings.from_params(
            CompositeParams(cloud_dilation_px=0, resampling="nearest", harmonise_landsat=False),
            chunk_px=20,
            default_provider=None,
        ),
    )
    slope, off = C.harmonisation_coefficients("sentinel-2a")["blue"]
    np.testing.assert_allclose(raw.sel(band="blue").values[ok], blue[ok] * slope + off, atol=1e-6)


def test_hls_coefficients_match_published_table() -> None:
    # NASA HLS bandpass adjustment page, Sentinel-2A column (MSI -> OLI)
    c = C.harmonisation_coefficients("sentinel-2a")
    assert c["red"] == (0.9765, 0.0009) and c["swir22"] == (1.003, -0.0012)
    assert C.harmonisation_coefficients("sentinel-2b")["green"] == (1.0075, -0.0008)


def _landsat_item(
    root: Path, item_id: str, platform: str, truth: dict[str, np.ndarray], *, etm: bool
) -> pystac.Item:
    """A clear Landsat item whose reflectance is the published forward models of the MSI
    truth: HLS's MSI -> OLI, and for ETM+/TM then Roy et al.'s ETM+ -> OLI inverted."""
    hls = C.harmonisation_coefficients("sentinel-2a")
    roy = C.etm_to_oli_coefficients("etm+")
    assets = {}
    for b in LS_KEYS:
        refl = truth[b] * hls[b][0] + hls[b][1]
        if etm:
            refl = (refl - roy[b][1]) / roy[b][0]
        assets[b] = root / item_id / f"{b}.tif"
        _write(assets[b], np.round((refl + 0.2) / 0.0000275).astype("uint16"), nodata=0)
    assets["qa_pixel"] = root / item_id / "qa_pixel.tif"
    _write(assets["qa_pixel"], np.full((N, N), 1 << 6, dtype="uint16"), nodata=1)
    props = {"eo:cloud_cover": 5.0, "platform": platform}
    return pystac.Item.from_dict(
        _item_dict(item_id, "landsat-c2-l2", dt.datetime(2012, 8, 1), props, assets)
    )


LANDSAT_ONLY = C.CompositeSettings.from_params(
    CompositeParams(cloud_dilation_px=0, resampling="nearest"), chunk_px=20, default_provider=None
)


@pytest.mark.parametrize("platform", ["landsat-7", "LANDSAT_7"])
def test_etm_plus_goes_to_msi_through_oli(
    tmp_path: Path, scenes: tuple[list[pystac.Item], dict[str, Any]], platform: str
) -> None:
    truth = scenes[1]["truth"]
    item = _landsat_item(tmp_path, "LE07_X", platform, truth, etm=True)
    comp, _ = C.seasonal_composite([item], _geobox(), settings=LANDSAT_ONLY)
    for b in ("blue", "nir08", "swir22"):
        # DN rounding is 0.0000275 ETM+ reflectance, about 2.4e-5 after the slope of 0.85
        np.testing.assert_allclose(comp.sel(band=b).values, truth[b], atol=3e-5)
    # read as OLI (the former behaviour), the NIR would sit 0.04 + 15 % off
    oli_read = _landsat_item(tmp_path, "LC08_X", "landsat-8", truth, etm=True)
    wrong, _ = C.seasonal_composite([oli_read], _geobox(), settings=LANDSAT_ONLY)
    assert np.median(np.abs(wrong.sel(band="nir08").values - truth["nir08"])) > 0.01


def test_tm_scenes_take_etm_coefficients_and_say_so(
    tmp_path: Path, scenes: tuple[list[pystac.Item], dict[str, Any]]
) -> None:
    item = _landsat_item(tmp_path, "LT05_X", "landsat-5", scenes[1]["truth"], etm=True)
    with pytest.warns(PipelineWarning, match="LT05_X.*Roy et al"):
        scene = C.load_scene(item, _geobox(), settings=LANDSAT_ONLY)
    assert scene.harmonised == "tm>oli>msi"


def test_landsat_item_of_unknown_platform_is_refused(
    tmp_path: Path, scenes: tuple[list[pystac.Item], dict[str, Any]]
) -> None:
    item = _landsat_item(tmp_path, "LX_X", "landsat-10", scenes[1]["truth"], etm=False)
    with pytest.raises(CatalogError, match=r"LX_X.*landsat-10.*landsat-c2-l2\.yaml"):
        C.load_scene(item, _geobox(), settings=LANDSAT_ONLY)


def test_roy_coefficients_match_published_table() -> None:
    # Roy et al. 2016, Remote Sens. Environ. 185:57-70, Table 2, OLS ETM+ -> OLI
    c = C.etm_to_oli_coefficients("etm+")
    assert c["blue"] == (0.8474, 0.0003) and c["red"] == (0.9047, 0.0061)
    assert c["nir08"] == (0.8462, 0.0412) and c["swir22"] == (0.9071, 0.0172)
    assert C.etm_to_oli_coefficients("oli") == {}


def test_indices_closed_form() -> None:
    # the NIR indices use the narrow NIR (B8A / OLI B5, "nir08"), NDRE the broad one (B08)
    v = {
        b: xr.DataArray(np.array([x], dtype="float32"))
        for b, x in {
            "nir": 0.4,
            "nir08": 0.35,
            "red": 0.05,
            "blue": 0.03,
            "swir16": 0.2,
            "swir22": 0.1,
            "rededge1": 0.1,
        }.items()
    }
    out = C.indices(v)
    assert float(out["ndvi"][0]) == pytest.approx(0.30 / 0.40, rel=1e-6)
    assert float(out["nbr"][0]) == pytest.approx(0.25 / 0.45, rel=1e-6)
    assert float(out["ndmi"][0]) == pytest.approx(0.15 / 0.55, rel=1e-6)
    assert float(out["ndre"][0]) == pytest.approx(0.3 / 0.5, rel=1e-6)
    assert float(out["evi"][0]) == pytest.approx(2.5 * 0.30 / (0.35 + 0.3 - 0.225 + 1), rel=1e-6)


def test_indices_of_a_landsat_only_pixel() -> None:
    # only the bands Landsat has: the NIR indices exist, the red-edge one does not
    v = {
        b: xr.DataArray(np.array([x], dtype="float32"))
        for b, x in {"nir": np.nan, "rededge1": np.nan, "nir08": 0.35, "red": 0.05,
                     "blue": 0.03, "swir16": 0.2, "swir22": 0.1}.items()
    }  # fmt: skip
    out = C.indices(v)
    assert {k for k, a in out.items() if np.isfinite(float(a[0]))} == {"ndvi", "nbr", "ndmi", "evi"}
    assert set(C.single_sensor_bands()) == {"rededge1", "rededge2", "rededge3", "nir", "ndre"}


def test_median_and_indices_are_quiet_where_there_is_no_data() -> None:
    """Empty pixels give NaN without RuntimeWarnings, also computed on threads."""
    import warnings

    import dask

    rng = np.random.default_rng(5)
    layers = [rng.uniform(0.01, 0.4, (12, 12)).astype("float32") for _ in range(3)]
    for a in layers:
        a[:4, :4] = np.nan  # no valid observation here
    layers[0][6, 6] = np.nan  # one of three missing: median of the other two
    zero = np.zeros((12, 12), dtype="float32")  # a + b == 0: index undefined
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with dask.config.set(scheduler="threads", num_workers=4):
            med, count = C.median_stack([da.from_array(a, chunks=4) for a in layers])
            med_v, count_v = dask.compute(med, count)
            nd = C.normalised_difference(
                xr.DataArray(da.from_array(zero, chunks=4)),
                xr.DataArray(da.from_array(zero, chunks=4)),
            ).values
    assert np.isnan(med_v[:4, :4]).all() and (count_v[:4, :4] == 0).all()
    assert med_v[6, 6] == pytest.approx((layers[1][6, 6] + layers[2][6, 6]) / 2, rel=1e-6)
    ref = np.median(np.stack(layers)[:, 4:, 4:], axis=0)
    ref[2, 2] = med_v[6, 6]
    np.testing.assert_allclose(med_v[4:, 4:], ref, rtol=1e-6)
    assert np.isnan(nd).all()


def test_dilation_is_seamless_across_chunks() -> None:
    rng = np.random.default_rng(3)
    m = rng.random((37, 41)) > 0.97
    want = ndimage.binary_dilation(m, structure=C.disk(3))
    for chunks in [(5, 7), (10, 3)]:
        # dilate works on Dask arrays: the numpy side is the whole array as one chunk
        got = assert_numpy_equals_dask(lambda a: C.dilate(da.asarray(a), 3), m, chunks=chunks)
        np.testing.assert_array_equal(got, want)


def test_median_and_indices_numpy_equals_dask() -> None:
    rng = np.random.default_rng(8)
    layers = [rng.uniform(0.01, 0.4, (13, 11)).astype("float32") for _ in range(4)]
    for a in layers:
        a[rng.uniform(size=a.shape) < 0.3] = np.nan
    for a in layers:
        a[:2, :2] = np.nan  # no valid observation
    assert_numpy_equals_dask(
        lambda ls: C.median_stack([da.asarray(a) for a in ls]), layers, chunks=(4, 5)
    )
    bands = {
        b: xr.DataArray(rng.uniform(0.01, 0.5, (13, 11)).astype("float32"), dims=("y", "x"))
        for b in ("blue", "green", "red", "rededge1", "nir", "nir08", "swir16", "swir22")
    }
    for b in bands.values():
        b[0, :4] = 0.0  # a + b == 0: index undefined
    assert_numpy_equals_dask(C.indices, bands, chunks=(4, 5))


def test_horn_slope_aspect_on_planes() -> None:
    yy, xx = np.mgrid[0:6, 0:6].astype(float)
    # rows run north to south: northing decreases with row index
    east_up = 0.5 * xx * 10  # rises 0.5 m per metre eastwards -> faces west
    slope, aspect = C.horn_slope_aspect(east_up, dx_m=10, dy_m=10)
    assert slope[2, 2] == pytest.approx(np.degrees(np.arctan(0.5)), abs=1e-4)
    assert aspect[2, 2] == pytest.approx(270.0, abs=1e-4)
    north_up = -yy * 10 * 0.2  # rises towards the north (row 0) -> faces south
    slope, aspect = C.horn_slope_aspect(north_up, dx_m=10, dy_m=10)
    assert aspect[3, 3] == pytest.approx(180.0, abs=1e-4)
    assert np.isnan(slope[0, 0])  # edge has no neighbours
    flat = np.zeros((4, 4))
    assert np.isnan(C.horn_slope_aspect(flat, dx_m=10, dy_m=10)[1][1, 1])


def test_terrain_from_dem_item(tmp_path: Path) -> None:
    _, xx = np.mgrid[0:N, 0:N].astype("float32")
    dem = (100 + 0.3 * xx * RES).astype("float32")  # rises eastwards, 0.3 m/m
    _write(tmp_path / "dem.tif", dem, nodata=-32767.0)
    item = pystac.Item.from_dict(
        _item_dict(
            "Copernicus_DSM_X",
            "cop-dem-glo-30",
            dt.datetime(2021, 4, 22),
            {},
            {"data": tmp_path / "dem.tif"},
        )
    )
    t = C.terrain([item], _geobox(), settings=SETTINGS)
    assert list(t.band.values) == ["elevation", "slope_deg", "aspect_deg"]
    vals = t.values
    np.testing.assert_allclose(vals[0], dem, atol=1e-3)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(vals[1][inner], np.degrees(np.arctan(0.3)), atol=1e-3)
    np.testing.assert_allclose(vals[2][inner], 270.0, atol=1e-3)
    # the chunked slope and aspect equal Horn's on the whole array (numpy)
    slope, aspect = C.horn_slope_aspect(vals[0], dx_m=RES, dy_m=RES)
    np.testing.assert_array_equal(vals[1], slope)
    np.testing.assert_array_equal(vals[2], aspect)


def test_dark_object_qa_flags_wrong_offset_flag(tmp_path: Path) -> None:
    items, _ = make_scenes(tmp_path / "s")
    raw = next(i for i in items if i.id == "S2A_POST_RAW_0_L2A")
    # the provider claims it removed the offset, but the pixels still carry it
    lying = raw.clone()
    lying.properties["earthsearch:boa_offset_applied"] = True
    # dark objects: the synthetic truth starts at 0.02 reflectance
    scenes_ = [C.load_scene(i, _geobox(), settings=SETTINGS) for i in (raw, lying)]
    qa = C.dark_object_qa(scenes_, stride=1)
    assert qa[0]["status"] == "ok"
    assert qa[1]["status"].startswith("suspect: dark objects too bright")
    assert qa[1]["dark_object_reflectance"] > 0.1


def _stage(items: list[pystac.Item], *, check: str = "warn") -> dict[str, Any]:
    """The composite stage on ``items`` as one epoch "2022", on the synthetic grid."""
    job = CompositeJob(
        params=CompositeParams(cloud_dilation_px=2, resampling="nearest", dark_object_check=check),
        epochs=("2022",),
        crs=CRS,
        resolution_m=RES,
        chunk_px=20,
        default_provider=None,
    )
    aoi = gpd.GeoDataFrame(geometry=[box(X0, Y0 - N * RES, X0 + N * RES, Y0)], crs=CRS)
    collection = pystac.ItemCollection([i.clone() for i in items]).to_dict()
    return composite(job, aoi=aoi, items={"2022": collection})


def _all_cloud(item: pystac.Item, root: Path) -> pystac.Item:
    """``item`` with a scene classification that marks every pixel as cloud (SCL 9)."""
    cloudy = item.clone()
    cloudy.id = item.id.replace("_L2A", "_CLOUDY_L2A")
    scl = root / f"{cloudy.id}_scl.tif"
    _write(scl, np.full((N, N), 9, dtype="uint8"), nodata=0)
    cloudy.assets["scl"].href = scl.resolve().as_uri()
    return cloudy


def test_all_nan_composite_is_refused_naming_the_epoch(tmp_path: Path) -> None:
    items, _ = make_scenes(tmp_path / "s")
    s2 = [i for i in items if i.collection_id == "sentinel-2-l2a"][:2]
    with pytest.raises(InputDataError, match=r"epoch 2022: the composite has no clear pixel"):
        _stage([_all_cloud(i, tmp_path) for i in s2])


def test_suspect_offset_and_no_clear_pixels_are_warnings(tmp_path: Path) -> None:
    items, _ = make_scenes(tmp_path / "s")
    raw = next(i for i in items if i.id == "S2A_POST_RAW_0_L2A")
    lying = raw.clone()
    lying.id = "S2A_LYING_L2A"
    lying.properties["earthsearch:boa_offset_applied"] = True
    cloudy = _all_cloud(raw, tmp_path)
    with pytest.warns(PipelineWarning) as record:
        out = _stage([raw, lying, cloudy])
    messages = [str(w.message) for w in record if issubclass(w.category, PipelineWarning)]
    assert len(messages) == 2
    assert "S2A_LYING_L2A: suspect: dark objects too bright" in messages[0]
    assert "epoch 2022" in messages[0] and "composites/qa.json" in messages[0]
    assert "S2A_POST_RAW_0_CLOUDY_L2A: no clear pixels" in messages[1]
    statuses = {r["item_id"]: r["status"] for r in out["composites/qa.json"]["epochs"]["2022"]}
    assert statuses["S2A_POST_RAW_0_L2A"] == "ok"
    with pytest.raises(ScienceDomainError, match="S2A_LYING_L2A"):
        _stage([raw, lying], check="error")


def test_an_item_with_some_bands_is_used_for_those_with_a_warning(
    scenes: tuple[list[pystac.Item], dict[str, Any]],
) -> None:
    items, data = scenes
    full = [i for i in items if i.collection_id == "sentinel-2-l2a"]
    partial = full[0].clone()  # a partial download: no red edge, no swir22
    for key in ("rededge1", "rededge2", "rededge3", "swir22"):
        del partial.assets[key]
    mixed = [partial, *full[1:]]
    with pytest.warns(PipelineWarning, match=rf"{partial.id}' lacks the assets of rededge1"):
        comp, _ = C.seasonal_composite(mixed, _geobox(), settings=SETTINGS)
    for band, used in (("red", mixed), ("rededge1", full[1:]), ("swir22", full[1:])):
        ref, count = _reference(used, data, band)
        got = comp.sel(band=band).values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
        if band == "red":  # every scene counts where it has red
            np.testing.assert_array_equal(comp.sel(band="n_valid").values, count)
    no_mask = full[1].clone()
    del no_mask.assets["scl"]
    with pytest.raises(CatalogError, match=r"lacks its mask asset"):
        C.load_scene(no_mask, _geobox(), settings=SETTINGS)


# --------------------------------------------------------------------------- signing at load

PC_KEYS = dict(
    zip(
        S2_KEYS, ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), strict=True
    )
)
PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
PC_BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2"


def _planetary_computer_copy(item: pystac.Item) -> tuple[pystac.Item, dict[str, str]]:
    """``item`` as Planetary Computer publishes it (unsigned blob hrefs, its asset keys),
    and each blob href's local file (what the fake signer hands the reader)."""
    data = item.to_dict()
    data["id"] = item.id.replace("_L2A", "_PC_L2A")
    data["links"] = [
        {"rel": "self", "href": f"{PC_API}/collections/sentinel-2-l2a/items/{data['id']}"}
    ]
    local: dict[str, str] = {}
    assets = {}
    for ours, asset in data["assets"].items():
        key = "SCL" if ours == "scl" else PC_KEYS[ours]
        href = f"{PC_BLOB}/{data['id']}/{key}.tif"
        local[href] = asset["href"]
        assets[key] = {**asset, "href": href}
    data["assets"] = assets
    return pystac.Item.from_dict(data), local


class _FakeSigner:
    """Stands in for ``planetary_computer.sign``: a signed copy whose hrefs lead to the
    local files (so the reader can open them), and a record of what it signed."""

    def __init__(self, local: dict[str, str]) -> None:
        self.local = local
        self.signed: list[str] = []

    def __call__(self, obj: pystac.Item, copy: bool = True) -> pystac.Item:
        assert copy, "the frozen item must not be signed in place"
        out = obj.clone()
        for asset in out.assets.values():
            asset.href = self.local[asset.href]
        self.signed.append(obj.id)
        return out


def test_planetary_computer_items_are_frozen_unsigned_and_signed_at_load(
    scenes: tuple[list[pystac.Item], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import planetary_computer
    from faulty_stac import GEOJSON, faulty_api

    items, data = scenes
    plain = next(i for i in items if i.id == "S2A_PRE_0_L2A")
    pc_item, local = _planetary_computer_copy(plain)
    signer = _FakeSigner(local)
    monkeypatch.setattr(planetary_computer, "sign", signer)
    body = json.dumps({"type": "FeatureCollection", "features": [pc_item.to_dict()], "links": []})
    req = catalog.SearchRequest(
        collections=("sentinel-2-l2a",),
        bbox=(118.9, 26.5, 119.2, 26.8),
        start=dt.date(2021, 5, 1),
        end=dt.date(2021, 7, 1),
        max_cloud_cover=None,
    )
    with faulty_api(lambda api, call: (200, GEOJSON, body)) as api:
        found = catalog.search(req, kind="planetary-computer", location=api.url)
    frozen = found.to_dict()
    hrefs = [a["href"] for f in frozen["features"] for a in f["assets"].values()]
    assert signer.signed == [] and sorted(hrefs) == sorted(local)  # searched, frozen unsigned
    before = json.dumps(frozen, sort_keys=True)
    out = composite(
        CompositeJob(
            params=CompositeParams(cloud_dilation_px=2, resampling="nearest"),
            epochs=("2021",),
            crs=CRS,
            resolution_m=RES,
            chunk_px=20,
            default_provider=None,
        ),
        aoi=gpd.GeoDataFrame(geometry=[box(X0, Y0 - N * RES, X0 + N * RES, Y0)], crs=CRS),
        items={"2021": frozen},
    )
    assert signer.signed == [pc_item.id]  # the reader got the signed hrefs
    assert json.dumps(frozen, sort_keys=True) == before  # the frozen items stay unsigned
    ref, _ = _reference([plain], data, "red")
    got = out["composites/2021.tif"].sel(band="red").values
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_items_that_need_no_signing_are_read_as_they_are(
    scenes: tuple[list[pystac.Item], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import planetary_computer

    def refuse(obj: Any, copy: bool = True) -> Any:
        raise AssertionError(f"{obj.id} was signed")

    monkeypatch.setattr(planetary_computer, "sign", refuse)
    items, _ = scenes
    assert catalog.readable_items(items) == items
    C.load_scene(items[0], _geobox(), settings=SETTINGS)


@pytest.mark.parametrize("fault", ["no package", "token service down"])
def test_a_failing_signer_is_refused_naming_the_item(
    scenes: tuple[list[pystac.Item], dict[str, Any]], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    import sys

    import planetary_computer
    import requests

    pc_item, _ = _planetary_computer_copy(scenes[0][0])
    if fault == "no package":
        monkeypatch.setitem(sys.modules, "planetary_computer", None)  # import fails
        match = r"planetary_computer package cannot be imported.*requirements.lock"
    else:

        def down(obj: Any, copy: bool = True) -> Any:
            raise requests.ConnectionError("Max retries exceeded with url: /api/sas/v1/token")

        monkeypatch.setattr(planetary_computer, "sign", down)
        match = r"signing failed \(ConnectionError.*rerun or resume the run later"
    with pytest.raises(CatalogError, match=rf"item '{pc_item.id}': .*{match}"):
        C.load_scene(pc_item, _geobox(), settings=SETTINGS)
