"""Catalog profiles on recorded real items, and the in-process local catalog search."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest

from pipeline import catalog
from pipeline import composite as C
from pipeline.errors import CatalogError, PipelineWarning

FIXTURES = Path(__file__).parent / "fixtures" / "items"  # provenance: README.md there

ES_V1_POST = "earth-search-v1_S2A_17SNB_20230617_0_L2A.json"
ES_V0_PRE = "earth-search-v0_S2A_28QCH_20200714_0_L2A.json"
PC_S2_PRE = "planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
PC_S2_POST = "planetary-computer_S2B_MSIL2A_20240419T095549_R122_T47XML.json"
PC_LANDSAT = "planetary-computer_LC09_L2SP_089090_20240417_02_T1.json"
ES_V1_PRE = "earth-search-v1_S2A_29RKH_20200219_0_L2A.json"
ES_V1_LANDSAT = "earth-search-v1_LC08_L2SP_033032_20231008_02_T1.json"
USGS_LANDSAT = "usgs_LC08_L2SP_028030_20200114_20200824_02_T1_SR.json"


def _item(name: str) -> pystac.Item:
    return pystac.Item.from_dict(json.loads((FIXTURES / name).read_text()))


def _reflectance(item: pystac.Item, dn: int) -> float:
    """What the composite's kernel makes of one DN of ``item`` (the code path that applies it)."""
    rad = catalog.radiometry(item)
    out = C.dn_to_reflectance(
        np.array([dn, rad.nodata_dn]), scale=rad.scale, offset=rad.offset, nodata_dn=rad.nodata_dn
    )
    assert np.isnan(out[1])  # DN 0 is no data, never reflectance -0.1 or -0.2
    return float(out[0])


# Worked values. Sentinel-2 L2A (ESA): reflectance = (DN + BOA_ADD_OFFSET) / 10000 with
# BOA_ADD_OFFSET = -1000 from processing baseline 04.00 on and 0 before, so DN 1500 is 0.05
# in a product that still carries the offset and 0.15 in one that does not (before 04.00,
# or Earth Search v1 with the offset already removed from the pixels). Landsat C2 L2
# (USGS LSDS-1619): DN * 0.0000275 - 0.2, so DN 10000 is 0.075.
@pytest.mark.parametrize(
    ("fixture", "provider", "baseline", "asset", "dn", "reflectance"),
    [
        (ES_V1_POST, "earth-search-v1", "05.09", "red", 1500, 0.15),  # flag true: removed
        (ES_V0_PRE, "earth-search-v0", None, "B04", 1500, 0.15),  # N0214; no property: date
        (PC_S2_PRE, "planetary-computer", "02.12", "B04", 1500, 0.15),
        (PC_S2_POST, "planetary-computer", "05.10", "B04", 1500, 0.05),  # raw ESA DN
        (PC_LANDSAT, "planetary-computer", None, "red", 10000, 0.075),
        (ES_V1_PRE, "earth-search-v1", "02.14", "red", 1500, 0.15),  # flag false, pre-04.00
        (ES_V1_LANDSAT, "earth-search-v1", None, "red", 10000, 0.075),
        (USGS_LANDSAT, "usgs", None, "red", 10000, 0.075),  # landsat-c2l2-sr, no raster:bands
    ],
)
def test_real_items_give_the_right_reflectance(
    fixture: str, provider: str, baseline: str | None, asset: str, dn: int, reflectance: float
) -> None:
    item = _item(fixture)
    assert catalog.provider_of(item) == provider
    assert item.properties.get("s2:processing_baseline") == baseline
    keys = catalog.asset_keys(item)
    assert keys["red"] == asset and asset in item.assets
    assert keys["mask"] in item.assets  # SCL / QA_PIXEL is where the profile says
    assert _reflectance(item, dn) == pytest.approx(reflectance, abs=1e-6)


def test_earth_search_v1_flag_decides_and_raster_bands_offset_is_not_applied_twice() -> None:
    item = _item(ES_V1_POST)
    declared = item.assets["red"].extra_fields["raster:bands"][0]
    assert (declared["scale"], declared["offset"]) == (0.0001, -0.1)  # what the item says...
    assert item.properties["earthsearch:boa_offset_applied"] is True  # ...and the flag
    assert _reflectance(item, 1500) == pytest.approx(0.15, abs=1e-6)  # flag wins: once only
    raw = item.clone()  # the same item as Earth Search publishes a scene it did not shift
    raw.properties["earthsearch:boa_offset_applied"] = False
    assert _reflectance(raw, 1500) == pytest.approx(0.05, abs=1e-6)
    # before baseline 04.00 there is no offset, whatever the flag and raster:bands say
    old = raw.clone()
    old.properties["s2:processing_baseline"] = "03.01"
    assert _reflectance(old, 1500) == pytest.approx(0.15, abs=1e-6)


def test_earth_search_v0_uses_its_own_baseline_and_flag_properties() -> None:
    item = _item(ES_V0_PRE)  # July 2020, before v0 published either property
    assert catalog.radiometry(item).reason == "no baseline, acquired 2020-07-14 < offset baseline"
    # the same item as v0 published scenes from 25 Jan 2022 on (cirrus-earth-search#21)
    new = item.clone()
    new.properties["sentinel:processing_baseline"] = "04.00"
    new.properties["sentinel:boa_offset_applied"] = True
    assert _reflectance(new, 1500) == pytest.approx(0.15, abs=1e-6)
    new.properties["sentinel:boa_offset_applied"] = False
    assert _reflectance(new, 1500) == pytest.approx(0.05, abs=1e-6)


def test_planetary_computer_s2_has_no_raster_bands_so_the_baseline_decides() -> None:
    for name, offset in ((PC_S2_PRE, 0.0), (PC_S2_POST, -0.1)):
        item = _item(name)
        assert all("raster:bands" not in a.extra_fields for a in item.assets.values())
        rad = catalog.radiometry(item)
        assert (rad.scale, rad.offset) == (0.0001, offset)
        assert rad.reason.startswith(f"baseline {item.properties['s2:processing_baseline']}")


def test_landsat_profile_matches_the_items_own_metadata() -> None:
    item = _item(PC_LANDSAT)
    rad = catalog.radiometry(item)
    for key in ("red", "blue", "nir08", "swir22"):
        rb = item.assets[key].extra_fields["raster:bands"][0]
        assert (rb["scale"], rb["offset"], rb["nodata"]) == (rad.scale, rad.offset, rad.nodata_dn)
    bits = {
        b["name"]: b["offset"]
        for b in item.assets["qa_pixel"].extra_fields["classification:bitfields"]
    }
    rule = catalog.collection_profile("landsat-c2-l2")["mask"]
    assert sorted(rule["invalid_bits"]) == sorted(
        bits[n] for n in ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow")
    )


def test_real_items_raster_bands_agree_with_the_profiles() -> None:
    # where a provider declares scale and offset per asset and says they are what to apply
    # (Earth Search v1 before baseline 04.00, Landsat C2 L2), the profile gives the same
    for name in (ES_V1_PRE, ES_V1_LANDSAT):
        item = _item(name)
        rad = catalog.radiometry(item)
        for key in ("blue", "red", "nir08", "swir22"):
            rb = item.assets[key].extra_fields["raster:bands"][0]
            assert (rb["scale"], rb["offset"]) == pytest.approx((rad.scale, rad.offset))
    usgs = _item(USGS_LANDSAT)
    assert catalog.profile_collection(usgs) == "landsat-c2-l2"  # USGS's own id is mapped
    assert catalog.radiometry(usgs) == catalog.radiometry(_item(ES_V1_LANDSAT))


def test_earth_search_collection_1_keeps_esa_dn() -> None:
    # Earth Search's sentinel-2-c1-l2a (baseline >= 05.00) keeps ESA's BOA_ADD_OFFSET in the
    # DN and says so only in raster:bands: the v1 item recast as a Collection 1 item
    c1 = _item(ES_V1_POST).clone()
    c1.collection_id = "sentinel-2-c1-l2a"
    del c1.properties["earthsearch:boa_offset_applied"]
    assert catalog.provider_of(c1) == "earth-search-v1-c1"
    assert catalog.profile_collection(c1) == "sentinel-2-l2a"
    assert catalog.asset_keys(c1)["red"] == "red" and catalog.asset_keys(c1)["mask"] == "scl"
    assert _reflectance(c1, 1500) == pytest.approx(0.05, abs=1e-6)
    rb = c1.assets["red"].extra_fields["raster:bands"][0]
    assert 1500 * rb["scale"] + rb["offset"] == pytest.approx(0.05, abs=1e-6)
    c1.properties["earthsearch:boa_offset_applied"] = True  # not a Collection 1 flag: ignored
    assert _reflectance(c1, 1500) == pytest.approx(0.05, abs=1e-6)


def test_pc_item_without_baseline_falls_back_to_date() -> None:
    item = _item(PC_S2_POST)
    del item.properties["s2:processing_baseline"]
    assert catalog.radiometry(item).offset == -0.1
    item.datetime = dt.datetime(2021, 12, 1, tzinfo=dt.UTC)
    assert catalog.radiometry(item).offset == 0.0


# --------------------------------------------------------------------------- local search


def _write_catalog(path: Path, seed: int = 11) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(40):
        day = dt.date(2019, 1, 1) + dt.timedelta(days=int(k * 9))
        lon = 118.0 + (k % 4) * 0.5
        coll = "sentinel-2-l2a" if k % 3 else "landsat-c2-l2"
        rows.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"ITEM_{k:02d}",
                "collection": coll,
                "bbox": [lon, 26.0, lon + 0.4, 26.4],
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [lon, 26.0],
                            [lon + 0.4, 26.0],
                            [lon + 0.4, 26.4],
                            [lon, 26.4],
                            [lon, 26.0],
                        ]
                    ],
                },
                "properties": {
                    "datetime": f"{day.isoformat()}T03:00:00Z",
                    "eo:cloud_cover": round(float(rng.uniform(0, 100)), 2),
                },
                "links": [],
                "assets": {},
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_local_search_filters_like_a_reference(tmp_path: Path) -> None:
    rows = _write_catalog(tmp_path / "items.ndjson")
    req = catalog.SearchRequest(
        collections=("sentinel-2-l2a",),
        bbox=(118.45, 26.1, 118.6, 26.2),
        start=dt.date(2019, 3, 1),
        end=dt.date(2019, 9, 30),
        max_cloud_cover=50.0,
    )
    got = catalog.search(req, kind="local", location=str(tmp_path / "items.ndjson"))
    expected = sorted(
        r["id"]
        for r in rows
        if r["collection"] == "sentinel-2-l2a"
        and r["bbox"][0] <= 118.6
        and r["bbox"][2] >= 118.45
        and "2019-03-01" <= r["properties"]["datetime"][:10] <= "2019-09-30"
        and r["properties"]["eo:cloud_cover"] <= 50.0
    )
    assert expected  # the case is not vacuous
    assert sorted(i.id for i in got) == expected
    assert all(i.properties["eo:cloud_cover"] <= 50 for i in got)


def test_empty_search_names_everything(tmp_path: Path) -> None:
    _write_catalog(tmp_path / "items.ndjson")
    req = catalog.SearchRequest(
        collections=("sentinel-2-l2a",),
        bbox=(10.0, 50.0, 10.1, 50.1),
        start=dt.date(2019, 3, 1),
        end=dt.date(2019, 9, 30),
        max_cloud_cover=20.0,
    )
    with pytest.raises(CatalogError) as err:
        catalog.search(req, kind="local", location=str(tmp_path / "items.ndjson"))
    msg = str(err.value)
    for part in (
        "items.ndjson",
        "sentinel-2-l2a",
        "10.00000, 50.00000",
        "2019-03-01",
        "2019-09-30",
        "20%",
    ):
        assert part in msg


def test_acquire_freezes_and_reuses(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from pipeline.config import AcquireParams, CatalogSource, Epoch
    from pipeline.stages.acquire import AcquireJob, acquire

    _write_catalog(tmp_path / "items.ndjson")
    job = AcquireJob(
        params=AcquireParams(max_cloud_cover=90),
        dem_collection=None,
        source=CatalogSource(kind="local", location=str(tmp_path / "items.ndjson")),
        epochs=(Epoch(name="e1", start=dt.date(2019, 1, 1), end=dt.date(2019, 6, 30)),),
        collections=("sentinel-2-l2a", "landsat-c2-l2"),
    )
    aoi = gpd.GeoDataFrame(geometry=[box(118.1, 26.1, 118.2, 26.2)], crs="EPSG:4326")
    out = acquire(job, aoi=aoi)
    assert list(out) == ["items/e1.json"]
    ids = [f["id"] for f in out["items/e1.json"]["features"]]
    assert ids and all(int(i[-2:]) % 4 == 0 for i in ids)  # only the lon-118.0 column
    # a rerun from the frozen items does not search (the catalog file is gone)
    (tmp_path / "items.ndjson").unlink()
    again = acquire(job, aoi=aoi, frozen={"e1": out["items/e1.json"]})
    assert [f["id"] for f in again["items/e1.json"]["features"]] == ids


# --------------------------------------------------------------------------- bad input


def test_missing_local_catalog_names_the_config_key(tmp_path: Path) -> None:
    from pipeline.config import CatalogSource, load_config
    from pipeline.contracts import RunLayout
    from pipeline.errors import ConfigError
    from pipeline.stages.acquire import acquire_inputs

    config = load_config(Path(__file__).parent.parent / "configs" / "regions" / "tiny.yaml")
    missing = tmp_path / "moved" / "items.ndjson"
    source = CatalogSource(kind="local", location=str(missing))
    config = config.model_copy(
        update={"sources": config.sources.model_copy(update={"catalog": source})}
    )
    with pytest.raises(ConfigError, match=r"sources\.catalog\.location: .*moved/items\.ndjson"):
        acquire_inputs(config, RunLayout(tmp_path / "run"))
    req = catalog.SearchRequest(("sentinel-2-l2a",), (118.0, 26.0, 118.1, 26.1), None, None, None)
    with pytest.raises(ConfigError, match=r"sources\.catalog\.location: .*moved/items\.ndjson"):
        catalog.search(req, kind="local", location=str(missing))


def test_an_empty_aoi_says_so_not_bbox_nan(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import Polygon

    from pipeline.errors import ConfigError, InputDataError
    from pipeline.stages.acquire import aoi_bbox_wgs84

    for aoi in (
        gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"),
        gpd.GeoDataFrame(geometry=[Polygon()], crs="EPSG:4326"),
    ):
        with pytest.raises(InputDataError, match=r"AOI \(config key `aoi`\) holds no geometry"):
            aoi_bbox_wgs84(aoi)
    with pytest.raises(ConfigError, match=r"bbox \[nan, .*not a WGS84 box"):
        catalog.SearchRequest(("x",), (float("nan"), 1.0, 2.0, 3.0), None, None, None)


def test_a_local_catalog_line_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "items.ndjson"
    _write_catalog(path)
    path.write_text(path.read_text() + '{"type": "Feature", "id": "TRUNC\n')
    req = catalog.SearchRequest(("sentinel-2-l2a",), (118.0, 26.0, 118.1, 26.1), None, None, None)
    with pytest.raises(CatalogError, match=r"items\.ndjson: cannot read the local catalog"):
        catalog.search(req, kind="local", location=str(path))


def test_local_assets_of_a_real_item_with_an_s3_self_link_stay_local(tmp_path: Path) -> None:
    data = json.loads((FIXTURES / ES_V1_PRE).read_text())
    remote_self = next(link["href"] for link in data["links"] if link["rel"] == "self")
    assert remote_self.startswith("s3://")  # kept as Earth Search published it
    scl_href = data["assets"]["scl"]["href"]
    data["assets"] = {k: data["assets"][k] for k in ("red", "nir", "scl")}  # a partial download
    data["assets"]["red"]["href"] = "../scenes/S2A_29RKH/red.tif"  # relative to the catalog
    data["assets"]["nir"]["href"] = str(tmp_path / "elsewhere" / "nir.tif")  # an absolute path
    path = tmp_path / "data" / "catalog" / "items.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data) + "\n")
    req = catalog.SearchRequest(("sentinel-2-l2a",), tuple(data["bbox"]), None, None, None)
    [item] = catalog.search(req, kind="local", location=str(path))
    # what odc-stac opens is the asset's absolute href, which pystac resolves against the
    # item's self link: local files must not become s3://sentinel-cogs/... URLs
    want = {
        "red": (tmp_path / "data" / "scenes" / "S2A_29RKH" / "red.tif").as_uri(),
        "nir": (tmp_path / "elsewhere" / "nir.tif").as_uri(),
        "scl": scl_href,
    }
    assert {k: a.get_absolute_href() for k, a in item.assets.items()} == want
    frozen = catalog.item_collection_from_dict(pystac.ItemCollection([item]).to_dict())
    assert {k: a.get_absolute_href() for k, a in frozen[0].assets.items()} == want


def test_an_item_twice_in_a_local_catalog_is_used_once_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "items.ndjson"
    rows = _write_catalog(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[:5]) + "\n")  # the first five appended again
    req = catalog.SearchRequest(
        ("sentinel-2-l2a", "landsat-c2-l2"), (117.0, 25.0, 121.0, 27.0), None, None, None
    )
    with pytest.warns(PipelineWarning, match=r"items\.ndjson: 5 item\(s\) came more than once"):
        got = catalog.search(req, kind="local", location=str(path))
    assert sorted(i.id for i in got) == sorted(r["id"] for r in rows)
