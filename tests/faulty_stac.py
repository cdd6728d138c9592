"""A scripted, faulty STAC API on loopback for tests (standard library, one thread per
request): its search endpoint misbehaves as a test scripts it (429/503, a hang, an HTML
body, truncated JSON, a ``next`` link that loops), the faults real servers show, without
the internet. Used by tests/test_stac_api.py and the bad-input matrix
(tests/test_bad_inputs.py).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

N_ITEMS = 36
GEOJSON = "application/geo+json"


def synthetic_items(seed: int = 5) -> list[dict[str, Any]]:
    """``N_ITEMS`` items of two collections near 118-120 E, 26 N, weekly from 2019-03-01,
    with random cloud covers (of ``seed``) and assets that do not exist."""
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


ITEMS = synthetic_items()


class FaultyApi(ThreadingHTTPServer):
    """The server: ``search(api, call)`` answers the ``call``-th search (status, type, body)."""

    daemon_threads = True

    def __init__(self, search: Callable[[FaultyApi, int], tuple[int, str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.search = search
        self.calls = 0
        self.release = threading.Event()  # set at teardown: a hanging answer ends

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up before the answer (a timeout under test) is expected."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

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
    server: FaultyApi

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
def faulty_api(search: Callable[[FaultyApi, int], tuple[int, str, str]]) -> Iterator[FaultyApi]:
    server = FaultyApi(search)
    # polled every 50 ms: shutdown() waits for the poll (0.5 s by default)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
