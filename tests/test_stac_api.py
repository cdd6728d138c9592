"""The pystac-client search path over HTTP against a real STAC API (pgstac) on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from stac_server import stac_api_server

from pipeline import catalog
from pipeline.errors import CatalogError

N_ITEMS = 36


def _collection(cid: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": f"test {cid}",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[100.0, 20.0, 130.0, 30.0]]},
            "temporal": {"interval": [["2019-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]]},
        },
    }


def _items(seed: int = 5) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(N_ITEMS):
        lon = 118.0 + (k % 3) * 1.0
        when = dt.datetime(2019, 3, 1) + dt.timedelta(days=int(k * 7))
        cid = "sentinel-2-l2a" if k % 4 else "landsat-c2-l2"
        out.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"API_{k:02d}",
                "collection": cid,
                "bbox": [lon, 26.0, lon + 0.5, 26.5],
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [lon, 26.0],
                            [lon + 0.5, 26.0],
                            [lon + 0.5, 26.5],
                            [lon, 26.5],
                            [lon, 26.0],
                        ]
                    ],
                },
                "properties": {
                    "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "eo:cloud_cover": round(float(rng.uniform(0, 100)), 2),
                },
                "links": [],
                "assets": {
                    "red": {"href": f"file:///nonexistent/{k}/red.tif", "type": "image/tiff"}
                },
            }
        )
    return out


ITEMS = _items()


@pytest.fixture(scope="session")
def stac_api() -> Iterator[str]:
    with stac_api_server(
        [_collection("sentinel-2-l2a"), _collection("landsat-c2-l2")], ITEMS
    ) as url:
        yield url


def _expected(
    bbox: tuple[float, ...], start: str, end: str, cloud: float, colls: set[str]
) -> list[str]:
    return sorted(
        i["id"]
        for i in ITEMS
        if i["collection"] in colls
        and i["bbox"][0] <= bbox[2]
        and i["bbox"][2] >= bbox[0]
        and start <= i["properties"]["datetime"][:10] <= end
        and i["properties"]["eo:cloud_cover"] <= cloud
    )


def test_search_filters_bbox_datetime_cloud_with_paging(stac_api: str) -> None:
    bbox = (118.1, 26.1, 118.2, 26.2)
    req = catalog.SearchRequest(
        collections=("sentinel-2-l2a",),
        bbox=bbox,
        start=dt.date(2019, 3, 1),
        end=dt.date(2019, 9, 30),
        max_cloud_cover=70.0,
        page_size=2,
    )
    got = catalog.search(req, kind="stac-api", location=stac_api)
    expected = _expected(bbox, "2019-03-01", "2019-09-30", 70.0, {"sentinel-2-l2a"})
    assert len(expected) > 2  # more than one page of 2
    assert sorted(i.id for i in got) == expected
    assert all(i.properties["eo:cloud_cover"] <= 70.0 for i in got)
    for i in got:
        assert i.datetime is not None
        assert "2019-03-01" <= i.datetime.date().isoformat() <= "2019-09-30"
        assert i.bbox is not None and i.bbox[0] <= 118.2 and i.bbox[2] >= 118.1


def test_server_pages_and_applies_query(stac_api: str) -> None:
    import pystac_client

    client = pystac_client.Client.open(stac_api)
    search = client.search(
        collections=["sentinel-2-l2a", "landsat-c2-l2"],
        limit=4,
        query={"eo:cloud_cover": {"lte": 30}},
    )
    pages = list(search.pages())
    ids = [i.id for p in pages for i in p.items]
    expected = _expected((0, 0, 180, 90), "0000", "9999", 30.0, {"sentinel-2-l2a", "landsat-c2-l2"})
    assert len(pages) == -(-len(expected) // 4) and len(pages) >= 2
    assert sorted(ids) == expected and len(set(ids)) == len(ids)


def test_empty_api_search_raises_with_details(stac_api: str) -> None:
    req = catalog.SearchRequest(
        collections=("sentinel-2-l2a",),
        bbox=(10.0, 50.0, 10.5, 50.5),
        start=dt.date(2019, 3, 1),
        end=dt.date(2019, 9, 30),
        max_cloud_cover=40.0,
    )
    with pytest.raises(
        CatalogError,
        match=r"stac-api http://127\.0\.0\.1:\d+.*sentinel-2-l2a"
        r".*10\.00000, 50\.00000.*2019-03-01.*40%",
    ):
        catalog.search(req, kind="stac-api", location=stac_api)
