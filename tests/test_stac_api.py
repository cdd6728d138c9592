"""STAC API searches over HTTP: a real STAC API (pgstac) and faulty servers on loopback."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stac_server import stac_api_server

from pipeline import catalog
from pipeline.errors import CatalogError, PipelineWarning

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


# --------------------------------------------------------------------------- faulty servers
# A small STAC API on loopback (standard library, one thread per request) whose search
# endpoint misbehaves as scripted: the faults real servers show, without the internet.


class _FaultyApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, search: Callable[[_FaultyApi, int], tuple[int, str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.search = search
        self.calls = 0
        self.release = threading.Event()  # set at teardown: a hanging answer ends

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def root(self) -> str:
        return json.dumps(
            {
                "type": "Catalog",
                "id": "faulty",
                "description": "a STAC API that misbehaves",
                "stac_version": "1.0.0",
                "conformsTo": [
                    "https://api.stacspec.org/v1.0.0/core",
                    "https://api.stacspec.org/v1.0.0/item-search",
                    "https://api.stacspec.org/v1.0.0/item-search#query",
                ],
                "links": [
                    {"rel": "self", "href": f"{self.url}/"},
                    {"rel": "root", "href": f"{self.url}/"},
                    {
                        "rel": "search",
                        "href": f"{self.url}/search",
                        "type": "application/geo+json",
                        "method": "POST",
                    },
                ],
            }
        )

    def page(self, ids: Sequence[int], next_body: dict[str, Any] | None) -> str:
        links = []
        if next_body is not None:
            links.append(
                {"rel": "next", "href": f"{self.url}/search", "method": "POST", "body": next_body}
            )
        features = [ITEMS[k] for k in ids]
        return json.dumps({"type": "FeatureCollection", "features": features, "links": links})


class _Handler(BaseHTTPRequestHandler):
    server: _FaultyApi

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, "application/json", self.server.root())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.calls += 1
        self._send(*self.server.search(self.server, self.server.calls))


@contextmanager
def faulty_api(search: Callable[[_FaultyApi, int], tuple[int, str, str]]) -> Iterator[_FaultyApi]:
    server = _FaultyApi(search)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


GEOJSON = "application/geo+json"
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
    def search(api: _FaultyApi, call: int) -> tuple[int, str, str]:
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
    def search(api: _FaultyApi, call: int) -> tuple[int, str, str]:
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


def _cli_search(url: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    from pipeline.cli import main

    err = io.StringIO()
    argv = ["search", "--catalog", "stac-api", "--location", url, "--bbox", "118.1", "26.1"]
    argv += ["118.2", "26.2", "--start", "2019-03-01", "--out", str(tmp_path / "i.json"), *extra]
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", PipelineWarning)
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_is_exit_2_naming_url_and_query(tmp_path: Path) -> None:
    def search(api: _FaultyApi, call: int) -> tuple[int, str, str]:
        api.release.wait(30)  # longer than the timeout: the client must give up first
        return 200, GEOJSON, api.page([], None)

    with faulty_api(search) as api:
        t0 = time.monotonic()
        rc, err = _cli_search(api.url, tmp_path, "--timeout", "0.5", "--retries", "1")
        took = time.monotonic() - t0
    assert rc == 2 and took < 15
    assert api.url in err and "timed out" in err.lower()
    assert "118.10000, 26.10000" in err and "2019-03-01" in err  # the query
    assert "Traceback" not in err and not (tmp_path / "i.json").exists()


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        (GEOJSON, '{"type": "FeatureCollection", "features": [{"id": "API_0'),  # truncated
    ],
)
def test_a_body_that_is_not_stac_json_is_exit_2(tmp_path: Path, ctype: str, body: str) -> None:
    with faulty_api(lambda api, call: (200, ctype, body)) as api:
        rc, err = _cli_search(api.url, tmp_path)
    assert rc == 2, err
    assert api.url in err and "JSONDecodeError" in err and "sentinel-2-l2a" in err
    assert "internal error" not in err and "Traceback" not in err
