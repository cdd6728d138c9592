"""``forest-carbon catalog``: a bureau's GeoTIFF scenes as a local STAC catalog.

Small GF-1 WFV-shaped scenes are written here with rasterio (seeded): a four-band file
numbered as CRESDA numbers its bands, the same bands as one file each in another UTM zone,
and a four-band file whose bands carry descriptions in another order and whose date is only
in its ACQUISITIONDATETIME tag. The catalog is read back with the pipeline's own local
search and checked against the rasters: bounds transformed to WGS84 with pyproj, pixels
behind each asset, dates. Bad scenes are refused with exit 2, naming the file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox
from pyproj import Transformer
from pystac.extensions.projection import ProjectionExtension
from rasterio.transform import from_origin
from run_folder_checks import offline_validation

from pipeline import catalog
from pipeline import composite as C
from pipeline.cli import main
from pipeline.config import CompositeParams
from pipeline.errors import InputDataError, PipelineWarning

N = 24  # pixels per side
RES = 16.0  # GF-1 WFV
BANDS = ("blue", "green", "red", "nir")
#: (scene, CRS, upper-left x, y, date in the name or None)
MULTI = ("GF1_WFV3_E119.2_N26.5_20190330_L1A0003912345", "EPSG:32650", 700000.0, 2950000.0)
SINGLE = ("GF1_WFV1_E119.8_N26.4_20190412_L1A0003999999", "EPSG:32651", 100000.0, 2940000.0)
TAGGED = ("GF1_WFV2_E119.2_N26.5_L1A0004000001", "EPSG:32650", 700160.0, 2950160.0)
TAG_DATE = "2019-05-02T02:55:10+00:00"


def _dn(seed: int) -> np.ndarray:
    """Surface reflectance x 10000 of four bands, 0 (no data) in one corner."""
    dn = (np.random.default_rng(seed).uniform(0.02, 0.45, (4, N, N)) * 10000).astype("uint16")
    dn[:, 0, :2] = 0
    return dn


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32650",
    x0: float = 700000.0,
    y0: float = 2950000.0,
    descriptions: tuple[str, ...] | None = None,
    tags: dict[str, str] | None = None,
    driver: str = "GTiff",
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    geo = {"crs": crs, "transform": from_origin(x0, y0, RES, RES)} if crs else {}
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        nodata=0 if driver == "GTiff" else None,
        **geo,
    ) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
        if tags:
            dst.update_tags(ns="IMAGERY", **tags)


def make_scenes(root: Path) -> dict[str, Any]:
    """The three scenes; returns each scene's DN per band and its grid."""
    truth: dict[str, Any] = {}
    name, crs, x0, y0 = MULTI
    dn = _dn(1)
    write_tif(root / f"{name}.tiff", dn, crs=crs, x0=x0, y0=y0)
    (root / f"{name}.xml").write_text("<ProductMetaData/>")  # CRESDA's metadata: skipped
    truth[name] = {"dn": dict(zip(BANDS, dn, strict=True)), "grid": (crs, x0, y0)}
    name, crs, x0, y0 = SINGLE
    dn = _dn(2)
    for k in range(1, 5):  # CRESDA numbers: B1..B4
        write_tif(root / "wfv1" / f"{name}_B{k}.tif", dn[k - 1], crs=crs, x0=x0, y0=y0)
    truth[name] = {"dn": dict(zip(BANDS, dn, strict=True)), "grid": (crs, x0, y0)}
    name, crs, x0, y0 = TAGGED
    dn = _dn(3)
    order = ("NIR", "Red", "Green", "Blue")  # described, not in CRESDA's order
    write_tif(
        root / f"{name}.tif",
        dn[[3, 2, 1, 0]],
        crs=crs,
        x0=x0,
        y0=y0,
        descriptions=order,
        tags={"ACQUISITIONDATETIME": TAG_DATE},
    )
    truth[name] = {"dn": dict(zip(BANDS, dn, strict=True)), "grid": (crs, x0, y0)}
    return truth


def _wgs84_bounds(crs: str, x0: float, y0: float) -> tuple[float, ...]:
    """The raster's bounds in WGS84 by pyproj (edges densified), independent of rio-stac."""
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return tuple(to_wgs84.transform_bounds(x0, y0 - N * RES, x0 + N * RES, y0, densify_pts=100))


def _search(items_file: Path) -> list[pystac.Item]:
    req = catalog.SearchRequest(
        collections=("gf1-wfv",),
        bbox=(118.0, 25.0, 121.0, 28.0),
        start=dt.date(2019, 3, 1),
        end=dt.date(2019, 5, 31),
        max_cloud_cover=80.0,  # the scenes state no cloud cover: kept
    )
    return catalog.search_local(items_file, req)


def test_scenes_become_a_catalog_the_local_search_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = make_scenes(tmp_path / "scenes")
    out = tmp_path / "catalog"
    assert main(["catalog", str(tmp_path / "scenes"), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "3 gf1-wfv scene(s), 2019-03-30 to 2019-05-02" in log
    assert "2 CRSs (EPSG:32650, EPSG:32651)" in log
    assert "1 file(s) that are not .tif/.tiff were skipped" in log
    assert "no scene gives rededge1, rededge2, rededge3, nir08, swir16, swir22, ndvi," in log
    assert "the satellite model needs nir08, swir16, swir22, ndvi, evi, nbr, ndmi" in log
    assert "verified: false" in log
    items = {i.id: i for i in _search(out / "items.ndjson")}
    assert sorted(items) == sorted(truth)
    when = {
        MULTI[0]: dt.datetime(2019, 3, 30, tzinfo=dt.UTC),
        SINGLE[0]: dt.datetime(2019, 4, 12, tzinfo=dt.UTC),
        TAGGED[0]: dt.datetime.fromisoformat(TAG_DATE),
    }
    for item_id, item in items.items():
        crs, x0, y0 = truth[item_id]["grid"]
        assert item.datetime == when[item_id]
        assert item.properties["platform"] == "gf-1"
        proj = ProjectionExtension.ext(item)
        assert proj.epsg == int(crs.split(":")[1]) and proj.shape == [N, N]
        assert proj.transform is not None and proj.transform[:6] == [RES, 0.0, x0, 0.0, -RES, y0]
        np.testing.assert_allclose(item.bbox, _wgs84_bounds(crs, x0, y0), atol=1e-7)
        assert sorted(item.assets) == sorted(BANDS)
        for band in BANDS:  # each asset's pixels are that band's
            href = item.assets[band].href
            assert href.startswith("file://")
            with rasterio.open(href.removeprefix("file://")) as src:
                np.testing.assert_array_equal(src.read(1), truth[item_id]["dn"][band])
    one_band = items[SINGLE[0]].assets["red"].href
    assert one_band == (tmp_path / "scenes/wfv1" / f"{SINGLE[0]}_B3.tif").resolve().as_uri()
    # the file holds relative hrefs (the catalog and scenes can move together) ...
    lines = [json.loads(x) for x in (out / "items.ndjson").read_text().splitlines()]
    assert all(not a["href"].startswith("/") for d in lines for a in d["assets"].values())
    # ... and the same items are a valid static STAC catalog
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert sorted(i.id for i in cat.get_items(recursive=True)) == sorted(truth)
    with offline_validation():  # core schemas; the extension fields are checked above
        assert cat.validate_all() == len(truth)  # items validated


def _geobox(crs: str, x0: float, y0: float) -> GeoBox:
    return GeoBox.from_bbox(
        BoundingBox(x0, y0 - N * RES, x0 + N * RES, y0, crs=crs), crs=crs, resolution=RES
    )


def test_a_catalogued_four_band_scene_composites_with_warnings(tmp_path: Path) -> None:
    truth = make_scenes(tmp_path / "scenes")
    main(["catalog", str(tmp_path / "scenes"), "--out", str(tmp_path / "catalog")])
    items = {i.id: i for i in _search(tmp_path / "catalog" / "items.ndjson")}
    item = items[MULTI[0]]
    settings = C.CompositeSettings.from_params(
        CompositeParams(cloud_dilation_px=2, resampling="nearest"),
        chunk_px=16,
        default_provider=None,
    )
    with pytest.warns(PipelineWarning) as record:
        comp, scenes = C.seasonal_composite(
            [item], _geobox(*truth[MULTI[0]]["grid"]), settings=settings
        )
    messages = " | ".join(str(w.message) for w in record)
    assert "1 of the season's 1 scene(s) (gf1-wfv) have no cloud mask" in messages
    assert "has the band(s) rededge1, rededge2, rededge3, nir08, swir16, swir22:" in messages
    assert "ndvi, evi, nbr, ndmi, ndre are NaN throughout" in messages
    # the model needs the narrow NIR and SWIR everywhere: such a season alone is refused
    with pytest.raises(
        InputDataError,
        match=r"epoch 2019: its 1 scene\(s\) \(gf1-wfv\) give no nir08, swir16, swir22, "
        r"ndvi, evi, nbr, ndmi, which the satellite model needs",
    ):
        C.require_model_bands(scenes, epoch="2019")
    assert scenes[0].radiometry.scale == 1e-4 and scenes[0].radiometry.offset == 0.0
    for band in BANDS:
        dn = truth[MULTI[0]]["dn"][band]
        want = np.where(dn == 0, np.nan, dn.astype("float32") * np.float32(1e-4))
        np.testing.assert_allclose(comp.sel(band=band).values, want, rtol=0, atol=1e-7)
    assert np.isnan(comp.sel(band="ndvi").values).all()
    np.testing.assert_array_equal(
        comp.sel(band="n_valid").values, (truth[MULTI[0]]["dn"]["red"] > 0)
    )


def _no_date(root: Path) -> Path:
    path = root / "scene_blue.tif"
    write_tif(path, _dn(4)[0])
    return path


def _unknown_band(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330_swir.tif"
    write_tif(path, _dn(4)[0])
    return path


def _unknown_description(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330.tif"
    write_tif(path, _dn(4), descriptions=("blue", "green", "red", "thermal"))
    return path


def _png(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330_B1.tif"
    write_tif(path, _dn(4)[0].astype("uint8"), crs=None, driver="PNG")
    return path


def _text(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330_B1.tif"
    path.write_text("not an image")
    return path


def _l1a(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330_L1A.tif"
    write_tif(path, _dn(4), crs=None)
    return path


def _float(root: Path) -> Path:
    path = root / "GF1_WFV3_20190330.tif"
    write_tif(path, _dn(4).astype("float32") / 10000)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_date, r"no acquisition date: none in the file name \(YYYYMMDD\).*--datetime"),
        (_unknown_band, r"does not end in a band of collection gf1-wfv"),
        (_unknown_description, r"band description\(s\) \['thermal'\] are not bands"),
        (_png, r"a PNG file, not a GeoTIFF"),
        (_text, r"not a raster GDAL can read"),
        (_l1a, r"no map georeferencing \(CRS and geotransform\).*orthorectify"),
        (_float, r"floating-point data \(float32\).*x 10000"),
    ],
)
def test_bad_scenes_are_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    make_scenes(tmp_path / "scenes")
    bad = make(tmp_path / "scenes")
    out = tmp_path / "catalog"
    assert main(["catalog", str(tmp_path / "scenes"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".catalog*"))  # nothing half-written


def test_datetime_option_and_an_existing_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_date(tmp_path / "scenes")
    out = tmp_path / "catalog"
    args = ["catalog", str(tmp_path / "scenes"), "--out", str(out)]
    assert main([*args, "--datetime", "2019-04-01"]) == 0
    (item,) = _search(out / "items.ndjson")
    assert item.datetime == dt.datetime(2019, 4, 1, tzinfo=dt.UTC)
    assert main([*args, "--datetime", "2019-04-02"]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--datetime", "2019-04-02", "--force"]) == 0
    (item,) = _search(out / "items.ndjson")
    assert item.datetime == dt.datetime(2019, 4, 2, tzinfo=dt.UTC)


def test_gf6_wfv_eight_bands_by_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GF-6 WFV: eight bands; red edge 1 and 2 are read, coastal and yellow catalogued."""
    dn = np.concatenate([_dn(5), _dn(6)])
    write_tif(tmp_path / "scenes" / "GF6_WFV_E119.5_N26.3_20200415_L1A1119912345.tif", dn)
    out = tmp_path / "catalog"
    assert (
        main(["catalog", str(tmp_path / "scenes"), "--out", str(out), "--collection", "gf6-wfv"])
        == 0
    )
    assert "band_order_verified: false" in capsys.readouterr().out
    (item,) = catalog.search_local(
        out / "items.ndjson",
        catalog.SearchRequest(("gf6-wfv",), (118.0, 25.0, 121.0, 28.0), None, None, None),
    )
    order = ("blue", "green", "red", "nir", "rededge1", "rededge2", "coastal", "yellow")
    assert sorted(item.assets) == sorted(order)
    assert item.properties["platform"] == "gf-6"
    for k, band in enumerate(order):
        with rasterio.open(item.assets[band].href.removeprefix("file://")) as src:
            np.testing.assert_array_equal(src.read(1), dn[k])
    assert item.assets["rededge1"].extra_fields["eo:bands"][0]["center_wavelength"] == 0.71
    keys = catalog.asset_keys(item)  # the composite reads the red edge, not coastal/yellow
    assert keys["rededge1"] == "rededge1" and "coastal" not in keys
