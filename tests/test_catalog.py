"""Catalog profiles on recorded real items, and the in-process local catalog search."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest

from pipeline import catalog
from pipeline.errors import CatalogError

FIXTURES = Path(__file__).parent / "fixtures" / "stac"


def _item(name: str) -> pystac.Item:
    return pystac.Item.from_dict(json.loads((FIXTURES / name).read_text()))


# DN of a dark forest pixel and the reflectance a user must get (ESA: (DN + offset)/10000)
@pytest.mark.parametrize(
    ("fixture", "provider", "dn", "reflectance", "asset"),
    [
        # Earth Search v1, baseline 05.09, flag true: DN already shifted -> DN/1e4, even
        # though raster:bands says offset -0.1
        ("earth-search-v1_S2B_22MHD_20230912_0_L2A.json", "earth-search-v1", 350, 0.035, "red"),
        # Earth Search v0, baseline 02.14: DN/1e4
        ("earth-search-v0_S2A_28QCH_20200714_0_L2A.json", "earth-search-v0", 350, 0.035, "B04"),
        # Planetary Computer, baseline 05.10, raw ESA DN: (DN - 1000)/1e4
        (
            "planetary-computer_S2B_MSIL2A_20240419T095549_R122_T47XML.json",
            "planetary-computer",
            1350,
            0.035,
            "B04",
        ),
        # Landsat C2 L2 on PC: DN * 2.75e-5 - 0.2
        (
            "planetary-computer_LC09_L2SP_089090_20240417_02_T1.json",
            "planetary-computer",
            8545,
            8545 * 2.75e-5 - 0.2,
            "red",
        ),
    ],
)
def test_real_items_give_the_right_reflectance(
    fixture: str, provider: str, dn: int, reflectance: float, asset: str
) -> None:
    item = _item(fixture)
    assert catalog.provider_of(item) == provider
    keys = catalog.asset_keys(item)
    assert keys["red"] in item.assets and keys["red"] == asset
    rad = catalog.radiometry(item)
    assert dn * rad.scale + rad.offset == pytest.approx(reflectance, abs=1e-9)


def test_earth_search_raster_bands_offset_is_not_applied_twice() -> None:
    item = _item("earth-search-v1_S2B_22MHD_20230912_0_L2A.json")
    declared = item.assets["red"].extra_fields["raster:bands"][0]
    assert declared["offset"] == -0.1  # what the item says...
    assert catalog.radiometry(item).offset == 0.0  # ...and what the flag overrides
    flipped = item.clone()
    flipped.properties["earthsearch:boa_offset_applied"] = False
    assert catalog.radiometry(flipped).offset == -0.1


def test_landsat_profile_matches_the_items_own_metadata() -> None:
    item = _item("planetary-computer_LC09_L2SP_089090_20240417_02_T1.json")
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


def test_pc_item_without_baseline_falls_back_to_date() -> None:
    item = _item("planetary-computer_S2B_MSIL2A_20240419T095549_R122_T47XML.json")
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
