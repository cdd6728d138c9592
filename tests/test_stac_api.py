"""STAC API searches over HTTP: a real STAC API (pgstac) and faulty servers on loopback."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from faulty_stac import GEOJSON, ITEMS, FaultyApi, faulty_api
from stac_server import stac_api_server

from pipeline import catalog
from pipeline.errors import CatalogError, PipelineWarning


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


# --------------------------------------------------------------------------- faulty servers

WIDE = catalog.SearchRequest(
    collections=("sentinel-2-l2a",),
    bbox=(100.0, 20.0, 130.0, 30.0),
    start=None,
    end=None,
    max_cloud_cover=None,
    backoff_s=0.01,
)


def test_a_next_link_that_loops_stops_with_a_warning_and_each_item_once() -> None:
    # page 1 -> page 2 -> page 2 again (next points at itself) -> ...; page 2 repeats item 1
    def search(api: FaultyApi, call: int) -> tuple[int, str, str]:
        if call == 1:
            return 200, GEOJSON, api.page([1, 2], {"page": 2})
        return 200, GEOJSON, api.page([3, 1], {"page": 2})

    with faulty_api(search) as api, pytest.warns(PipelineWarning) as caught:
        got = catalog.search(WIDE, kind="stac-api", location=api.url)
    assert sorted(i.id for i in got) == ["API_01", "API_02", "API_03"]
    assert api.calls == 3  # the repeat is seen on the third page and paging stops there
    said = [str(w.message) for w in caught if w.category is PipelineWarning]
    assert any("page 3 repeats an earlier page" in m and api.url in m for m in said)
    assert any("1 item(s) came more than once" in m for m in said)


def test_429_and_503_are_retried_with_each_attempt_warned() -> None:
    def search(api: FaultyApi, call: int) -> tuple[int, str, str]:
        if call <= 3:
            return (429 if call == 1 else 503), "text/plain", "busy"
        return 200, GEOJSON, api.page([1, 2], None)

    with faulty_api(search) as api, pytest.warns(PipelineWarning) as caught:
        got = catalog.search(WIDE, kind="stac-api", location=api.url)
    assert sorted(i.id for i in got) == ["API_01", "API_02"]
    said = [str(w.message) for w in caught if w.category is PipelineWarning]
    assert [m.split("; ")[0].split(": ")[-1] for m in said] == ["HTTP 429", "HTTP 503", "HTTP 503"]
    assert [m.split("attempt ")[1].split(" in")[0] for m in said] == ["2 of 5", "3 of 5", "4 of 5"]


def test_a_server_that_keeps_failing_ends_with_its_last_answer() -> None:
    with faulty_api(lambda api, call: (503, "text/plain", "down for maintenance")) as api:
        req = dataclasses.replace(WIDE, retries=2)
        with pytest.warns(PipelineWarning), pytest.raises(CatalogError) as err:
            catalog.search(req, kind="stac-api", location=api.url)
    assert api.calls == 3
    assert api.url in str(err.value) and "down for maintenance" in str(err.value)
