"""Scene search in STAC catalogs, and the per-provider profiles of the collections.

Science and conventions live in ``data_catalog/`` (YAML); this module reads them and
searches:

- ``local``: a region's ``catalog/items.ndjson`` (one STAC item per line), filtered
  in-process with DuckDB (bbox intersection, datetime window, ``eo:cloud_cover``); no
  server, no network, no DuckDB extensions (``json`` is built in). Asset hrefs may be
  relative to that file, so a data folder can be moved or copied whole.
- ``earth-search``, ``planetary-computer``, ``stac-api``: any STAC API through
  pystac-client. Servers that ignore the ``query`` extension return unfiltered items, so
  the cloud limit is enforced again on what comes back.

Items are searched and frozen unsigned. Planetary Computer hrefs need a SAS token that
expires within hours, so they are signed only just before they are read
(:func:`readable_items`, called by the composite's loader): a frozen ``items/<epoch>.json``
stays valid for ``reproduce`` and resumed runs.

It also resolves, per item, the DN-to-reflectance scale and offset (the Sentinel-2
processing-baseline 04.00 offset and whether the provider already removed it: the most
reported pitfall of the field, DESIGN.md section 4).

Command: ``forest-carbon search --catalog earth-search --bbox ... --start ... --end ...``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import pystac
import yaml
from pystac.utils import make_absolute_href
from urllib3 import Retry

from pipeline.errors import CatalogError, ConfigError, PipelineWarning

CATALOG_DIR = Path(__file__).resolve().parent.parent / "data_catalog"

BBox = tuple[float, float, float, float]


# --------------------------------------------------------------------------- profiles


@functools.cache
def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: catalog profile not found (data_catalog/ is part of the repo)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def catalogs() -> dict[str, Any]:
    """The endpoint table ``data_catalog/catalogs.yaml``."""
    return _load_yaml(CATALOG_DIR / "catalogs.yaml")


def collection_profile(collection: str) -> dict[str, Any]:
    """The profile ``data_catalog/collections/<collection>.yaml``."""
    path = CATALOG_DIR / "collections" / f"{collection}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CATALOG_DIR / "collections").glob("*.yaml"))
        raise ConfigError(
            f"collection {collection!r} has no profile in data_catalog/collections/ "
            f"(known: {', '.join(known)}); add one or fix sources.catalog.collections"
        )
    return _load_yaml(path)


def index_definitions() -> dict[str, Any]:
    """Spectral index definitions ``data_catalog/indices.yaml``."""
    return _load_yaml(CATALOG_DIR / "indices.yaml")


@functools.cache
def _provider_collections() -> dict[str, tuple[str, str | None]]:
    """A provider's collection id -> (our profile, the one provider that uses that id).

    Each profile's ``providers.<name>.collection`` says what the provider calls the
    product (Earth Search v0 ``sentinel-s2-l2a-cogs``, USGS ``landsat-c2l2-sr``, Earth
    Search ``sentinel-2-c1-l2a``...). An id only one provider uses names that provider too;
    an id several share (``sentinel-2-l2a``) names none.
    """
    index: dict[str, tuple[str, str | None]] = {}
    for path in sorted((CATALOG_DIR / "collections").glob("*.yaml")):
        profile = _load_yaml(path)
        users: dict[str, list[str]] = {}
        for name, entry in profile.get("providers", {}).items():
            users.setdefault(str(entry.get("collection", profile["collection"])), []).append(name)
        for cid, names in users.items():
            index[cid] = (str(profile["collection"]), names[0] if len(names) == 1 else None)
    return index


def provider_of(item: pystac.Item, *, default: str | None = None) -> str:
    """Which provider convention an item follows.

    Planetary Computer items link to planetarycomputer.microsoft.com; an item in a
    collection only one provider publishes (Earth Search v0 ``sentinel-s2-l2a-cogs``, USGS
    ``landsat-c2l2-sr``, Earth Search ``sentinel-2-c1-l2a``) follows that provider;
    otherwise Earth Search v1 (or ``default``, the catalog's configured provider).
    """
    # raw link targets: resolving a link (``link.href``) could fetch a remote root catalog
    hrefs = [link.target for link in item.links if isinstance(link.target, str)]
    hrefs += [a.href for a in item.assets.values()]
    if any("planetarycomputer.microsoft.com" in h or ".blob.core.windows.net" in h for h in hrefs):
        return "planetary-computer"
    implied = _provider_collections().get(str(item.collection_id), ("", None))[1]
    return implied or default or "earth-search-v1"


def profile_collection(item: pystac.Item) -> str:
    """Our profile name for an item's collection (``data_catalog/collections/<name>.yaml``).

    A provider's own name for a product maps to our profile of it (Earth Search v0
    ``sentinel-s2-l2a-cogs`` and ``sentinel-2-c1-l2a`` to ``sentinel-2-l2a``, USGS
    ``landsat-c2l2-sr`` to ``landsat-c2-l2``); other ids are their own profile's name.
    """
    if item.collection_id is None:
        raise CatalogError(f"item {item.id!r} names no collection; cannot pick its profile")
    return _provider_collections().get(item.collection_id, (item.collection_id, None))[0]


def asset_keys(item: pystac.Item, *, provider: str | None = None) -> dict[str, str]:
    """Our band names (and ``mask`` / ``elevation``) to the item's asset keys."""
    profile = collection_profile(profile_collection(item))
    prov = provider or provider_of(item)
    try:
        return dict(profile["providers"][prov]["assets"])
    except KeyError:
        raise CatalogError(
            f"item {item.id!r}: collection {item.collection_id!r} has no profile for provider "
            f"{prov!r} in data_catalog/collections/{profile_collection(item)}.yaml"
        ) from None


def _baseline_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("."))


@dataclass(frozen=True)
class Radiometry:
    """DN to reflectance of one item: ``reflectance = dn * scale + offset``."""

    scale: float
    offset: float
    nodata_dn: int
    #: why this offset (for QA records and error messages)
    reason: str


def radiometry(item: pystac.Item, *, provider: str | None = None) -> Radiometry:
    """The scale and offset that turn an item's reflectance DN into reflectance.

    Sentinel-2: ``scale`` always 1e-4; the -0.1 BOA offset applies from processing
    baseline 04.00 on, unless the provider flags that it already removed it
    (Earth Search v1 ``earthsearch:boa_offset_applied``, v0 ``sentinel:boa_offset_applied``;
    each provider entry of the profile may name its own baseline and flag properties);
    without a baseline the acquisition date decides. Landsat C2 L2: fixed
    0.0000275 and -0.2. Values come from ``data_catalog/collections/*.yaml``.
    """
    coll = profile_collection(item)
    profile = collection_profile(coll)
    if profile.get("kind") != "reflectance":
        raise CatalogError(f"item {item.id!r}: collection {coll!r} is not a reflectance product")
    nodata = int(profile["nodata_dn"])
    if "boa_add_offset_reflectance" not in profile:
        return Radiometry(float(profile["scale"]), float(profile["offset"]), nodata, "fixed")
    prov = provider or provider_of(item)
    prov_profile = profile["providers"].get(prov, {})
    props = item.properties
    baseline = props.get(prov_profile.get("baseline_property") or profile["baseline_property"])
    if baseline is not None:
        new = _baseline_tuple(baseline) >= _baseline_tuple(profile["boa_offset_from_baseline"])
        why = f"baseline {baseline}"
    else:
        cutoff = dt.datetime.fromisoformat(profile["boa_offset_from_date"]).replace(tzinfo=dt.UTC)
        when = item.datetime or item.common_metadata.start_datetime
        if when is None:
            raise CatalogError(f"item {item.id!r} has neither a processing baseline nor a date")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        new = when >= cutoff
        why = f"no baseline, acquired {when.date()}"
    flag_key = prov_profile.get("offset_applied_property")
    applied = bool(flag_key and props.get(flag_key, False))
    if new and not applied:
        return Radiometry(
            float(profile["scale"]),
            float(profile["boa_add_offset_reflectance"]),
            nodata,
            f"{why} >= {profile['boa_offset_from_baseline']}, offset in the DN",
        )
    if new and applied:
        return Radiometry(float(profile["scale"]), 0.0, nodata, f"{why}, {flag_key} true")
    return Radiometry(float(profile["scale"]), 0.0, nodata, f"{why} < offset baseline")


# --------------------------------------------------------------------------- reading


def signer_of(item: pystac.Item, *, default_provider: str | None = None) -> str | None:
    """How an item's hrefs must be signed before they are read, or None.

    The scheme is the ``sign`` of the ``data_catalog/catalogs.yaml`` entry of the item's
    provider (:func:`provider_of`): Planetary Computer items need ``planetary_computer``,
    wherever they were found (its API, or a local catalog of items copied from it).
    """
    prov = provider_of(item, default=default_provider)
    for entry in catalogs().values():
        if entry.get("provider") == prov and entry.get("sign"):
            return str(entry["sign"])
    return None


def readable_items(
    items: Sequence[pystac.Item], *, default_provider: str | None = None
) -> list[pystac.Item]:
    """The items as a reader must open them: signed copies where the provider needs it.

    Called just before the pixels are read (odc-stac in :mod:`pipeline.composite`), so
    the items that were searched, frozen and recorded keep their unsigned hrefs, and a
    SAS token (valid for an hour or so) is fetched when it is used. Items that need no
    signing are returned as they are; the argument is never changed.

    Raises
    ------
    CatalogError
        An item needs signing and the signer cannot be imported or fails; the message
        names the item and what to do.
    """
    out: list[pystac.Item] = []
    for item in items:
        scheme = signer_of(item, default_provider=default_provider)
        out.append(item if scheme is None else _signed(item, scheme))
    return out


def _signed(item: pystac.Item, scheme: str) -> pystac.Item:
    """A copy of ``item`` with its hrefs signed by ``scheme`` (``catalogs.yaml`` ``sign``)."""
    if scheme != "planetary_computer":
        raise ConfigError(
            f"data_catalog/catalogs.yaml: unknown signing scheme {scheme!r} for item "
            f"{item.id!r} (known: planetary_computer)"
        )
    need = (
        f"item {item.id!r}: its assets are in Planetary Computer's storage and are signed "
        f"(a SAS token) just before they are read"
    )
    try:
        import planetary_computer  # imported here: only Planetary Computer items need it
    except ImportError as err:
        raise CatalogError(
            f"{need}, but the planetary_computer package cannot be imported ({err}); install "
            f"the project's requirements.lock into this environment"
        ) from None
    try:
        signed: pystac.Item = planetary_computer.sign(item, copy=True)
    except (OSError, ValueError, KeyError) as err:  # requests' errors are OSErrors
        raise CatalogError(
            f"{need}, and signing failed ({type(err).__name__}: {err}). The token service "
            f"(planetarycomputer.microsoft.com/api/sas) must be reachable while scenes are "
            f"read; the frozen items hold unsigned hrefs, so rerun or resume the run later"
        ) from None
    return signed


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchRequest:
    """One search: collections, area (WGS84 bbox), date window, cloud limit."""

    collections: tuple[str, ...]
    bbox: BBox
    start: dt.date | None
    end: dt.date | None
    max_cloud_cover: float | None
    max_items: int = 200
    page_size: int = 100
    #: seconds to wait for a STAC API's answer, and how often to retry (urllib3 waits
    #: ``backoff_s * 2**(n - 1)`` s before retry n > 1); the config's defaults are in
    #: :class:`pipeline.config.AcquireParams`
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        # west > east is allowed: STAC's form of a box across the antimeridian
        _, south, _, north = self.bbox
        if not all(math.isfinite(v) for v in self.bbox) or south > north:
            raise ConfigError(
                f"search area: bbox {list(self.bbox)} is not a WGS84 box (west, south, east, "
                f"north, all finite, south <= north); an empty AOI gives this"
            )

    @property
    def datetime_range(self) -> str | None:
        if self.start is None and self.end is None:
            return None
        a = f"{self.start.isoformat()}T00:00:00Z" if self.start else ".."
        b = f"{self.end.isoformat()}T23:59:59Z" if self.end else ".."
        return f"{a}/{b}"

    def describe(self, catalog: str) -> str:
        cloud = "none" if self.max_cloud_cover is None else f"{self.max_cloud_cover:g}%"
        box = ", ".join(f"{v:.5f}" for v in self.bbox)
        return (
            f"catalog {catalog}, collections {', '.join(self.collections)}, bbox [{box}], "
            f"dates {self.start or '..'} to {self.end or '..'}, cloud limit {cloud}"
        )


def _cloud_ok(item: pystac.Item, limit: float | None) -> bool:
    """Within the cloud limit; an item that states no cloud cover (a bureau's own scene,
    catalogued by ``forest-carbon catalog``) is kept, as the local search's query keeps it."""
    cc = item.properties.get("eo:cloud_cover")
    return limit is None or cc is None or float(cc) <= limit


def _finish(items: Sequence[pystac.Item], req: SearchRequest, *, where: str) -> list[pystac.Item]:
    """Each item once, the cloud limit enforced client-side, order by (cloud, datetime, id),
    cap per collection.

    An item (collection and id) found twice, as a server that pages badly or a catalog file
    with a line appended twice gives it, is used once, with a warning: counted twice, one
    scene would weigh double in the composite's median and ``n_valid``.
    """
    unique: dict[tuple[str | None, str], pystac.Item] = {}
    for item in items:
        unique.setdefault((item.collection_id, item.id), item)
    repeats = len(items) - len(unique)
    if repeats:
        warnings.warn(
            PipelineWarning(
                f"{where}: {repeats} item(s) came more than once; each is used once",
                code="stac_items_repeated",
                values={"where": where, "repeats": repeats},
            ),
            stacklevel=3,
        )
    kept = [i for i in unique.values() if _cloud_ok(i, req.max_cloud_cover)]
    kept.sort(
        key=lambda i: (
            float(i.properties.get("eo:cloud_cover", 0.0)),
            i.datetime.isoformat() if i.datetime else "",
            i.id,
        )
    )
    out: list[pystac.Item] = []
    per: dict[str | None, int] = {}
    for item in kept:
        n = per.get(item.collection_id, 0)
        if n < req.max_items:
            out.append(item)
            per[item.collection_id] = n + 1
    out.sort(key=lambda i: (i.datetime.isoformat() if i.datetime else "", i.id))
    return out


def local_catalog_file(location: str | None) -> Path:
    """The local catalog's items file (``sources.catalog.location``), which must exist.

    Raises
    ------
    ConfigError
        No location, or no file there; the message names ``sources.catalog.location``.
    """
    if not location:
        raise ConfigError(
            "sources.catalog.location: the local catalog needs the path of its items.ndjson"
        )
    path = Path(location)
    if not path.is_file():
        raise ConfigError(
            f"sources.catalog.location: the local catalog {path} does not exist "
            f"(resolved from {Path.cwd()}); build the demo region with `forest-carbon "
            f"simulate`, or point sources.catalog.location at your catalog's items.ndjson"
        )
    return path


def search_local(path: Path, req: SearchRequest) -> list[pystac.Item]:
    """Search a newline-delimited JSON file of STAC items in-process with DuckDB."""
    minx, miny, maxx, maxy = req.bbox
    where = [
        "list_contains(?, json->>'$.collection')",
        "CAST(json->>'$.bbox[0]' AS DOUBLE) <= ?",
        "CAST(json->>'$.bbox[2]' AS DOUBLE) >= ?",
        "CAST(json->>'$.bbox[1]' AS DOUBLE) <= ?",
        "CAST(json->>'$.bbox[3]' AS DOUBLE) >= ?",
    ]
    params: list[Any] = [list(req.collections), maxx, minx, maxy, miny]
    if req.start is not None:
        where.append(
            "CAST(json->>'$.properties.datetime' AS TIMESTAMPTZ) >= CAST(? AS TIMESTAMPTZ)"
        )
        params.append(f"{req.start.isoformat()}T00:00:00Z")
    if req.end is not None:
        where.append(
            "CAST(json->>'$.properties.datetime' AS TIMESTAMPTZ) <= CAST(? AS TIMESTAMPTZ)"
        )
        params.append(f"{req.end.isoformat()}T23:59:59Z")
    if req.max_cloud_cover is not None:
        where.append(
            "(json->>'$.properties.\"eo:cloud_cover\"' IS NULL "
            "OR CAST(json->>'$.properties.\"eo:cloud_cover\"' AS DOUBLE) <= ?)"
        )
        params.append(req.max_cloud_cover)
    sql = "SELECT CAST(json AS VARCHAR) FROM read_ndjson_objects(?) WHERE " + " AND ".join(where)
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(sql, [str(path), *params]).fetchall()
    except duckdb.Error as err:
        raise CatalogError(f"{path}: cannot read the local catalog: {err}") from None
    finally:
        con.close()
    base = str(path.resolve())
    items = [pystac.Item.from_dict(_local_hrefs(json.loads(r[0]), base)) for r in rows]
    return _finish(items, req, where=f"local catalog {path}")


def _local_hrefs(item: dict[str, Any], catalog_file: str) -> dict[str, Any]:
    """An item of a local catalog with its local asset hrefs as absolute ``file://`` URIs.

    A relative href is resolved against the catalog file (as STAC resolves relative hrefs
    against the file they are written in), so a data folder can be moved or copied. A
    local path never stays bare: pystac would resolve it against the item's ``self`` link,
    and real items keep theirs (``s3://...``), which turned local files into S3 URLs.
    Remote hrefs (``https://``, ``s3://``, ``file://``) are kept as they are.
    """
    for asset in item.get("assets", {}).values():
        href = asset.get("href")
        if isinstance(href, str) and not urlparse(href).scheme:
            asset["href"] = Path(make_absolute_href(href, catalog_file)).as_uri()
    return item


#: HTTP statuses worth another try: rate limit and server-side faults (RFC 9110 6.6, 15.5.20)
RETRY_STATUSES = (429, 500, 502, 503, 504)


class _LoggedRetry(Retry):
    """urllib3's retry policy that says each new attempt as a :class:`PipelineWarning`."""

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Retry:
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        where = f"{_pool.scheme}://{_pool.host}:{_pool.port}{url or ''}" if _pool else url
        why = f"HTTP {response.status}" if response is not None else f"{error!r}"
        attempt = len(new.history) + 1
        wait = f"{new.get_backoff_time():.1f}"
        warnings.warn(
            PipelineWarning(
                f"STAC API {method} {where}: {why}; attempt {attempt} of {self.total_attempts} "
                f"in {wait} s",
                code="stac_retry",
                values={
                    "method": str(method),
                    "where": str(where),
                    "why": why,
                    "attempt": attempt,
                    "attempts": self.total_attempts,
                    "wait": wait,
                },
            ),
            stacklevel=2,
        )
        return new

    @property
    def total_attempts(self) -> int:
        """1 plus the retries this policy started with (``total`` less what it used)."""
        return 1 + int(self.total or 0) + len(self.history)


def _page_items(pages: Iterable[Mapping[str, Any]], *, where: str) -> list[pystac.Item]:
    """The items of a STAC API's pages, stopping at a page it has seen before.

    A server whose ``next`` link points back at a page (itself or an earlier one) would
    otherwise be followed until ``max_items`` and one scene counted many times. pystac-client
    follows ``next`` links as given, so the loop is caught here, on the page contents.
    """
    seen_pages: set[tuple[str, ...]] = set()
    items: list[pystac.Item] = []
    for n, page in enumerate(pages, start=1):
        features = page.get("features") or []
        key = tuple(str(f.get("id")) for f in features)
        if key in seen_pages:
            warnings.warn(
                PipelineWarning(
                    f"{where}: page {n} repeats an earlier page (its 'next' link loops); "
                    f"stopped paging after page {n - 1}",
                    code="stac_page_repeated",
                    values={"where": where, "page": n, "last": n - 1},
                ),
                stacklevel=2,
            )
            break
        seen_pages.add(key)
        items.extend(pystac.Item.from_dict(f) for f in features)
    return items


def search_api(url: str, req: SearchRequest) -> list[pystac.Item]:
    """Search a STAC API with pystac-client (POST, paging followed to ``max_items``).

    The items come back as the server sent them: hrefs that need signing are signed at
    load time (:func:`readable_items`), never here, so frozen items do not expire.

    Each request waits at most ``req.timeout_s`` for the server and is retried up to
    ``req.retries`` times, with exponential backoff, on a connection fault, a timeout or a
    status in :data:`RETRY_STATUSES` (honouring ``Retry-After``); each retry warns.

    Raises
    ------
    CatalogError
        The server failed, never answered or did not answer STAC JSON; the message names
        the URL and the query.
    """
    import pystac_client  # imported here: only API searches need it
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    retry = _LoggedRetry(
        total=req.retries,
        backoff_factor=req.backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # the search is a POST, and as safe to repeat as a GET
        raise_on_status=False,  # the last failed answer reaches the error message below
    )
    faults = (
        APIError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,
        pystac.STACError,
    )
    query = None
    if req.max_cloud_cover is not None:
        query = {"eo:cloud_cover": {"lte": req.max_cloud_cover}}
    try:
        client = pystac_client.Client.open(
            url,
            stac_io=StacApiIO(timeout=req.timeout_s, max_retries=retry),
            timeout=req.timeout_s,
        )
        search = client.search(
            collections=list(req.collections),
            bbox=list(req.bbox),
            datetime=req.datetime_range,
            query=query,
            limit=req.page_size,
            max_items=req.max_items * len(req.collections) * 4,
        )
        items = _page_items(search.pages_as_dicts(), where=f"STAC API {url}")
    except faults as err:
        raise CatalogError(
            f"STAC search failed at {url} ({type(err).__name__}: {err}) for the query "
            f"{req.describe(url)}. Check the URL (sources.catalog.location), the network, "
            f"or stages.acquire.timeout_s / retries"
        ) from None
    return _finish(items, req, where=f"STAC API {url}")


def search(req: SearchRequest, *, kind: str, location: str | None = None) -> pystac.ItemCollection:
    """Search the catalog ``kind`` (``data_catalog/catalogs.yaml``).

    Raises
    ------
    CatalogError
        Nothing found; the message names the catalog, collections, bbox, dates and
        cloud limit.
    """
    table = catalogs()
    if kind not in table:
        raise ConfigError(
            f"sources.catalog.kind: unknown catalog {kind!r} (known: {sorted(table)})"
        )
    entry = table[kind]
    if kind == "local":
        name = f"local {location}"
        items = search_local(local_catalog_file(location), req)
    else:
        url = location if kind == "stac-api" else (location or entry["url"])
        if not url:
            raise ConfigError("sources.catalog.location: a stac-api catalog needs its root URL")
        name = f"{kind} {url}"
        items = search_api(url, req)
    if not items:
        raise CatalogError(
            f"no items found: {req.describe(name)}. Widen the date window, raise "
            f"stages.acquire.max_cloud_cover, or check the AOI and collections"
        )
    return pystac.ItemCollection(items)


def item_collection_from_dict(data: Mapping[str, Any] | Sequence[Any]) -> pystac.ItemCollection:
    """A frozen ItemCollection (as written to ``items/<epoch>.json``) back as objects."""
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        return pystac.ItemCollection.from_dict(dict(data))
    if isinstance(data, Sequence):
        return pystac.ItemCollection([pystac.Item.from_dict(d) for d in data])
    raise CatalogError("frozen items: expected a STAC FeatureCollection (items/<epoch>.json)")
