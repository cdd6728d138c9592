"""The bad-input matrix: every bad input a clear refusal (exit 2) or a logged warning.

Each case takes the tiny simulated region (built once per session), breaks one input (a
copy of the file, in the case's own folder; the config is a dict to edit), runs the
command line in-process and asserts

- the exit code: 2 for a refusal, 0 where the input is usable and the issue asks for a
  warning (then the warning is asserted, also in the manifest for a stage's warning, and
  ``then`` checks what the stage wrote, e.g. a QA row);
- that the message names the file, key or field (each of ``says`` is in the output);
- no traceback and no "internal error" (no ``--debug``);
- that the run folder (or the ``--out`` of ``reproduce`` and the stand-alone commands;
  of a system folder, its entries) has nothing new or changed: for a refusal the folder
  is not even created, as the inputs are checked before the runner touches it, and
  ``check`` writes nothing whatever it finds. A case only a stage can see (``in_stage``:
  a tile whose point records are corrupt or all noise, a local catalog the ``acquire``
  stage searches) fails in the stage, and the run removes the folder it created
  (:func:`pipeline.run_folder.claim`).

Adding a case is one :class:`Case` entry in ``CASES``. Cases that ``check`` (the checks
``run`` makes first, :mod:`pipeline.inputs`) cost a fraction of a second; ``run`` cases
that refuse cost the same, as nothing runs; the in-stage cases (a LiDAR, plots or
acquire stage) share one Dask cluster (``--scheduler``) for the module.

The items of issue 18 and where each is tested (the matrix's case ids, else the test):

1. a STAC ``next`` link that loops: ``stac-api-next-link-loops`` (the STAC API cases
   search a scripted server on loopback, :mod:`faulty_stac`), and how many pages are
   fetched: ``test_stac_api.py::
   test_a_next_link_that_loops_stops_with_a_warning_and_each_item_once``; an item twice
   in a local catalog: ``catalog-item-twice``.
2. parcels that miss the grid: ``parcels-wrong-crs-label``, ``parcels-elsewhere``,
   ``parcels-one-outside``, ``parcels-partly-off-grid``, ``project-off-grid``.
3. invalid geometry: ``aoi-self-intersecting``, ``parcels-self-intersecting(-repaired)``,
   ``project-self-intersecting``; what the stages read:
   ``test_a_stage_reads_invalid_polygons_refused_or_repaired_as_asked`` (below).
4. the output folder: ``output-system-folder`` (``/sys/forest-carbon-test``),
   ``output-relative-escape`` (``../../x``), ``output-users-folder``; only a run's own
   temporaries cleaned (needs a killed run): ``test_run_folder.py::
   test_only_the_killed_runs_own_temporaries_are_removed``.
5. the lock (two real processes): ``test_run_folder.py::
   test_a_second_run_is_refused_while_the_first_holds_the_folder``.
6. LiDAR tiles, all or fail: ``lidar-empty-tile`` (0 points in the header),
   ``lidar-garbage-tile``, ``lidar-corrupt-points``, ``lidar-only-noise`` (points, none
   usable), ``lidar-skips-allowed``, ``lidar-only-noise-skipped``; a repeat flight's
   (``sources.lidar_repeat``): ``lidar-repeat-no-match``, ``lidar-repeat-first-epoch``,
   ``lidar-repeat-other-crs``.
7. stale outputs (needs earlier runs): ``test_run_folder.py::
   test_a_stage_left_out_whose_input_changed_is_marked_stale_then_redone`` and the tests
   beside it.
8. a height of ``abc``: ``trees-height-not-a-number`` (a warning and a QA row).
9. the dashboard: ``test_run_folder.py::
   test_the_dashboard_listens_on_this_machine_only_unless_the_config_asks``.
10. pickles (needs a fitted model): ``test_run_folder.py::
    test_a_models_file_changed_after_the_run_is_not_unpickled``; that no other code loads
    a pickle: ``test_run_folder.py::
    test_the_only_unpickling_in_the_code_is_the_checked_models_file``.
11. STAC timeouts and retries: ``stac-api-never-answers``, ``stac-api-keeps-failing``;
    ``test_stac_api.py::test_429_and_503_are_retried_with_each_attempt_warned``,
    ``test_a_server_that_keeps_failing_ends_with_its_last_answer``.
12. quadratic hot spots (performance, not input): ``benchmarks/bench_plots.py`` and
    ``test_plot_biomass.py::test_height_models_match_a_tree_by_tree_reference``;
    ``test_lidar.py::test_outlier_filter_completes_on_many_returns_at_one_xyz``.
13. exit 1 where the input is at fault: ``crs-geographic``, ``crs-unknown``,
    ``aoi-point``, ``aoi-not-geojson``, ``aoi-truncated-json``, ``project-not-vector``,
    ``aoi-empty-geometry``, ``trees-gbk``, ``trees-cp1252``, ``catalog-not-json``,
    ``catalog-line-not-json``; an HTML body or truncated JSON from a STAC API:
    ``stac-api-html-body``, ``stac-api-truncated-json``; a non-JSON items file of
    ``forest-carbon composite``: ``composite-items-not-json``; ``reproduce`` from inside
    the run folder: ``test_run_folder.py::
    test_reproduce_works_from_inside_the_run_folder_and_from_elsewhere``; a full disk (a
    small tmpfs): ``test_run_folder.py::
    test_a_tiny_run_on_a_full_disk_exits_2_naming_the_file_and_leaves_no_partial_file``
    (a real process) and the two toy tests beside it.
14. misleading messages: an empty AOI ``aoi-no-features``, ``aoi-empty-geometry``; a
    truncated LAZ header ``lidar-truncated-header``; plots outside the AOI
    ``plots-outside-aoi``; a missing catalog ``catalog-missing``; unknown keys ``key-*``;
    grid mismatch ``sink-maps-on-two-grids``; 0 points ``lidar-empty-tile``;
    ``reproduce`` of a changed input ``reproduce-input-changed``, of one the checks refuse
    ``reproduce-input-invalid(-*)``, of a file that is not a manifest
    ``reproduce-not-a-manifest``, of changed frozen items ``reproduce-frozen-items-changed``,
    its other exit codes (3 different, 2, 1 internal error) ``test_run_folder.py::
    test_reproduce_exit_codes``, a retry over a failed attempt ``test_run_folder.py::
    test_reproduce_retries_over_a_failed_attempt_and_refuses_a_users_folder``; STAC errors
    naming the query: the ``stac-api-*`` cases, and of an empty search (a real STAC API):
    ``test_stac_api.py::test_empty_api_search_raises_with_details``.
15. relative asset hrefs: ``catalog-s3-self-links`` (local assets stay local files);
    a moved data folder runs (real processes, also killed and resumed):
    ``test_end_to_end.py::
    test_a_moved_data_folder_killed_at_several_points_resumes_to_identical_outputs``;
    byte-identical data in two folders (a real process): ``test_simulate.py::
    test_same_seed_same_bytes_other_seed_differs``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import geopandas as gpd
import laspy
import numpy as np
import pandas as pd
import pyproj
import pytest
import yaml
from faulty_stac import GEOJSON, FaultyApi, faulty_api
from laspy.vlrs.known import GeoKeyDirectoryVlr, WktCoordinateSystemVlr
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from pipeline import catalog
from pipeline.cli import main
from pipeline.config import AcquireParams, region_config_path
from pipeline.contracts import ITEMS_DIR, LIDAR_TILES_RELPATH, PLOTS_QA_RELPATH
from pipeline.errors import PipelineWarning


@dataclass
class Region:
    """A case's copy of the tiny region: its config (a dict) and its own folder.

    A case whose command is not ``<command> --config <the case's config>`` sets ``argv``
    (and ``watch``, the output folder that must stay untouched, when it is not the
    config's ``output_dir``); ``scheduler`` is the module's Dask cluster, for a case that
    makes its input with a run; ``stack`` holds what a case starts (a STAC API server)
    until the case ends.
    """

    data: Path
    work: Path
    config: dict[str, Any]
    scheduler: str
    argv: list[str] | None = None
    watch: Path | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def own(self, key: str) -> Path:
        """Copy the file of ``sources.<key>`` (or ``aoi``) into the case's folder."""
        holder = self.config if key == "aoi" else self.config["sources"]
        src = Path(holder[key])
        dst = self.work / "inputs" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        holder[key] = str(dst)
        return dst

    def tiles(self, repeat: str | None = None) -> list[Path]:
        """Copy the LiDAR tiles (of the repeat flight of epoch ``repeat``) into the case's
        folder; their paths."""
        folder = "lidar" if repeat is None else f"lidar_{repeat}"
        src = sorted(Path(p) for p in Path(self.data / folder).glob("*.laz"))
        dst = self.work / folder
        dst.mkdir(parents=True, exist_ok=True)
        for p in src:
            shutil.copy(p, dst / p.name)
        if repeat is None:
            self.config["sources"]["lidar_tiles"] = str(dst / "*.laz")
        else:
            self.config["sources"]["lidar_repeat"] = {repeat: str(dst / "*.laz")}
        return [dst / p.name for p in src]


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, what must be said, and how the CLI must end."""

    id: str
    make: Callable[[Region], None]
    says: tuple[str, ...]
    command: str = "run"
    stages: str | None = None
    exit: int = 2
    in_stage: bool = False
    #: for exit 0: what must not be said (e.g. an error)
    not_says: tuple[str, ...] = field(default=())
    #: for exit 0: a check of the run folder (what the stage wrote)
    then: Callable[[Path], None] | None = None


# --------------------------------------------------------------------------- makers


def setting(path: str, value: Any) -> Callable[[Region], None]:
    """Set a config key (dotted path) to ``value``."""

    def make(r: Region) -> None:
        *parents, last = path.split(".")
        node = r.config
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return make


def unknown_key(path: str) -> Callable[[Region], None]:
    return setting(f"{path}.bogus_key" if path else "bogus_key", 1)


def layer(
    key: str, edit: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]
) -> Callable[[Region], None]:
    """Rewrite the layer of ``key`` (``aoi`` or a ``sources`` key) through ``edit``."""

    def make(r: Region) -> None:
        path = r.own(key)
        out = edit(gpd.read_file(path))
        path.unlink()
        out.to_file(path, driver="GeoJSON" if path.suffix == ".geojson" else "GPKG")

    return make


def text_file(key: str, text: bytes, suffix: str | None = None) -> Callable[[Region], None]:
    """Replace the file of ``key`` with ``text`` (optionally under another suffix)."""

    def make(r: Region) -> None:
        path = r.own(key)
        if suffix is not None:
            path.unlink()
            path = path.with_suffix(suffix)
            holder = r.config if key == "aoi" else r.config["sources"]
            holder[key] = str(path)
        path.write_bytes(text)

    return make


def bowtie(gdf: gpd.GeoDataFrame) -> BaseGeometry:
    """A self-intersecting ring over the first feature's bounding box."""
    x0, y0, x1, y1 = gdf.geometry.iloc[0].bounds
    return Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)])


def first_geometry(make_geom: Callable[[gpd.GeoDataFrame], BaseGeometry | None]) -> Callable:
    def edit(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        geoms = list(gdf.geometry)
        geoms[0] = make_geom(gdf)
        return gdf.set_geometry(gpd.GeoSeries(geoms, crs=gdf.crs))

    return edit


def all_geometries(make_geom: Callable[[BaseGeometry], BaseGeometry]) -> Callable:
    def edit(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        return gdf.set_geometry(gpd.GeoSeries([make_geom(g) for g in gdf.geometry], crs=gdf.crs))

    return edit


def shifted(dx: float, dy: float) -> Callable:
    from shapely import affinity

    return all_geometries(lambda g: affinity.translate(g, dx, dy))


def relabelled(crs: str) -> Callable:
    return lambda gdf: gdf.set_crs(crs, allow_override=True)


def no_crs(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return gdf.set_crs(None, allow_override=True)


def no_features(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return gdf.iloc[:0]


def half_off_grid(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The first parcel stretched across the AOI's west edge (about half off the grid)."""
    x0 = gdf.total_bounds[0]
    geoms = list(gdf.geometry)
    _, gy0, _, gy1 = geoms[0].bounds
    geoms[0] = Polygon([(x0 - 100, gy0), (x0 + 100, gy0), (x0 + 100, gy1), (x0 - 100, gy1)])
    return gdf.set_geometry(gpd.GeoSeries(geoms, crs=gdf.crs))


def trees_reencoded(encoding: str, extra: str) -> Callable[[Region], None]:
    """The tree list with a remark column of ``extra``, saved in ``encoding``."""

    def make(r: Region) -> None:
        path = r.own("trees")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        lines = [f"{lines[0]},remark"] + [f"{ln},{extra}" for ln in lines[1:]]
        path.write_bytes(("\n".join(lines) + "\n").encode(encoding))

    return make


def tile_edit(
    edit: Callable[[Path], None], which: int | None = 0, repeat: str | None = None
) -> Callable[[Region], None]:
    """Copy the LiDAR tiles (of the repeat flight of epoch ``repeat``) into the case folder
    and edit tile ``which`` (None: all)."""

    def make(r: Region) -> None:
        tiles = r.tiles(repeat)
        for path in tiles if which is None else [tiles[which]]:
            edit(path)

    return make


def rewrite_las(path: Path, change: Callable[[laspy.LasData], laspy.LasData]) -> None:
    las = laspy.read(path)
    out = change(las)
    out.write(path)


def crs_vlrs_removed(las: laspy.LasData) -> laspy.LasData:
    kept = [
        v for v in las.header.vlrs if not isinstance(v, WktCoordinateSystemVlr | GeoKeyDirectoryVlr)
    ]
    las.header.vlrs.clear()
    las.header.vlrs.extend(kept)
    las.header.global_encoding.wkt = False
    return las


def crs_set(epsg: int) -> Callable[[laspy.LasData], laspy.LasData]:
    def change(las: laspy.LasData) -> laspy.LasData:
        las = crs_vlrs_removed(las)
        las.header.add_crs(pyproj.CRS.from_epsg(epsg))
        return las

    return change


def no_points(path: Path) -> None:
    las = laspy.read(path)
    empty = laspy.LasData(las.header, points=las.points[:0])
    empty.write(path)


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, point records cut


def garbage(path: Path) -> None:
    path.write_bytes(b"not a LAS file at all" * 10)


def all_noise(las: laspy.LasData) -> laspy.LasData:
    """Every point classified as noise (ASPRS 7 low noise, 18 high noise, alternately)."""
    las.classification = np.where(np.arange(len(las.points)) % 2 == 0, 7, 18).astype(np.uint8)
    return las


def tiles_table_says(name: str, status: str) -> Callable[[Path], None]:
    """``lidar/tiles.csv`` gives tile ``name`` of the first flight the ``status``."""

    def then(run: Path) -> None:
        tiles = pd.read_csv(run / LIDAR_TILES_RELPATH, dtype={"epoch": str})
        first = tiles[tiles["epoch"] == tiles["epoch"].iloc[0]].set_index("name")
        assert first.loc[name, "status"] == status, tiles

    return then


def z_in_feet(las: laspy.LasData) -> laspy.LasData:
    # US survey feet per metre (1 ft = 1200/3937 m, NIST Handbook 44)
    las.z = np.asarray(las.z) * (3937 / 1200)
    return las


def local_catalog(edit: Callable[[list[str]], list[str]]) -> Callable[[Region], None]:
    """The local catalog's lines passed through ``edit``, in a copy beside a link to the
    scenes (the items' asset hrefs are relative to the catalog file)."""

    def make(r: Region) -> None:
        source = r.config["sources"]["catalog"]
        src = Path(source["location"])
        dst = r.work / "catalog" / src.name
        dst.parent.mkdir(parents=True)
        (r.work / "scenes").symlink_to(src.parent.parent / "scenes")
        dst.write_text("".join(f"{line}\n" for line in edit(src.read_text().splitlines())))
        source["location"] = str(dst)

    return make


def s3_self_links(lines: list[str]) -> list[str]:
    """Each item with the ``s3://`` self link Earth Search publishes."""
    out = []
    for line in lines:
        item = json.loads(line)
        href = f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{item['id']}/{item['id']}.json"
        links = [link for link in item.get("links", []) if link.get("rel") != "self"]
        item["links"] = [*links, {"rel": "self", "href": href, "type": "application/json"}]
        out.append(json.dumps(item))
    return out


def frozen_assets_are_local_files(run: Path) -> None:
    """Every asset of the items ``acquire`` froze is a local file, none an S3 URL."""
    frozen = sorted((run / ITEMS_DIR).glob("*.json"))
    assert frozen
    for path in frozen:
        for item in catalog.item_collection_from_dict(json.loads(path.read_text())):
            for asset in item.assets.values():
                href = asset.get_absolute_href() or ""
                assert urlparse(href).scheme == "file", href
                assert Path(urlparse(href).path).is_file(), href


def users_folder(r: Region) -> None:
    """``output_dir`` is a folder of the user's own (not empty, not a run folder)."""
    out = Path(r.config["output_dir"])
    out.mkdir()
    (out / "notes.txt").write_text("field notes, not a run")


def recorded_then(
    change: Callable[[Region, Path], None], *options: str
) -> Callable[[Region], None]:
    """A recorded run (``acquire``), then ``change(region, run folder)``: ``reproduce``
    its manifest (with ``options``) into a new folder."""

    def make(r: Region) -> None:
        r.own("aoi")
        cfg = r.work / "recorded.yaml"
        cfg.write_text(yaml.safe_dump(r.config))
        argv = ["run", "--config", str(cfg), "--stages", "acquire", "--scheduler", r.scheduler]
        assert main([*argv, "--quiet"]) == 0
        run = Path(r.config["output_dir"])
        change(r, run)
        r.watch = r.work / "again"
        r.argv = ["reproduce", str(run / "manifest.json"), "--out", str(r.watch), "--quiet"]
        r.argv += options

    return make


def aoi_line_added(r: Region, run: Path) -> None:
    """The AOI file changed (a line added), still valid."""
    aoi = Path(r.config["aoi"])
    aoi.write_text(aoi.read_text() + "\n")


def aoi_made_a_point(r: Region, run: Path) -> None:
    """The AOI file changed into an invalid one: its polygon replaced by a point."""
    aoi = Path(r.config["aoi"])
    points = all_geometries(lambda g: g.centroid)(gpd.read_file(aoi))
    aoi.unlink()
    points.to_file(aoi, driver="GeoJSON")


def frozen_items_edited(r: Region, run: Path) -> None:
    """A STAC item the run froze (``items/<epoch>.json``) edited: a scene's cloud cover."""
    path = sorted((run / ITEMS_DIR).glob("*.json"))[0]
    items = json.loads(path.read_text())
    items["features"][0]["properties"]["eo:cloud_cover"] = 99.0
    path.write_text(json.dumps(items))


def manifest_warning_names(stage: str, name: str) -> Callable[[Path], None]:
    """A warning of ``stage`` in the manifest names ``name`` (the console may wrap a long
    path inside a word)."""

    def then(run: Path) -> None:
        said = json.loads((run / "manifest.json").read_text())["stages"][stage]["warnings"]
        assert any(name in w for w in said), said

    return then


def tree_cell(row: int, column: str, value: str) -> Callable[[Region], None]:
    """The tree list with the cell of ``column`` in data row ``row`` set to ``value``."""

    def make(r: Region) -> None:
        path = r.own("trees")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.loc[row, column] = value
        table.to_csv(path, index=False)

    return make


def qa_row(tree_id: str, column: str, value: str, reason: str) -> Callable[[Path], None]:
    """``plots/qa.csv`` has the row of ``tree_id``'s ``column`` holding ``value``."""

    def then(run: Path) -> None:
        qa = pd.read_csv(run / PLOTS_QA_RELPATH, dtype=str)
        rows = qa[(qa["tree_id"] == tree_id) & (qa["field"] == column)]
        assert rows[["value", "reason"]].values.tolist() == [[value, reason]], qa

    return then


# the stand-alone commands: a case gives its own command line and the folder it watches


def stac_api_answering(
    answer: Callable[[FaultyApi, int], tuple[int, str, str]], *options: str
) -> Callable[[Region], None]:
    """``forest-carbon search`` of a STAC API on loopback whose search answers ``answer``
    (:mod:`faulty_stac`); the items go to ``found/items.json``."""

    def make(r: Region) -> None:
        api = r.stack.enter_context(faulty_api(answer))
        r.watch = r.work / "found"
        r.argv = ["search", "--catalog", "stac-api", "--location", api.url, "--bbox", "118.1",
                  "26.1", "118.2", "26.2", "--start", "2019-03-01",
                  "--out", str(r.watch / "items.json"), *options]  # fmt: skip

    return make


def html_page(api: FaultyApi, call: int) -> tuple[int, str, str]:
    """What a proxy in front of a STAC API answers when the API is down."""
    return 200, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>"


def truncated_page(api: FaultyApi, call: int) -> tuple[int, str, str]:
    return 200, GEOJSON, '{"type": "FeatureCollection", "features": [{"id": "API_0'


def looping_pages(api: FaultyApi, call: int) -> tuple[int, str, str]:
    """Page 1, then page 2 again and again (its ``next`` link points at itself); page 2
    repeats item 1 of page 1."""
    return 200, GEOJSON, api.page([1, 2] if call == 1 else [3, 1], {"page": 2})


def never_answering(api: FaultyApi, call: int) -> tuple[int, str, str]:
    api.release.wait(30)  # longer than the case's --timeout: the client gives up first
    return 200, GEOJSON, api.page([], None)


def always_503(api: FaultyApi, call: int) -> tuple[int, str, str]:
    return 503, "text/plain", "down for maintenance"


def each_item_once(found: Path) -> None:
    """The items written are each there once (ids of the scripted pages, less the cloudy)."""
    ids = [f["id"] for f in json.loads((found / "items.json").read_text())["features"]]
    assert ids and len(set(ids)) == len(ids) and set(ids) <= {"API_01", "API_02", "API_03"}, ids


def items_file_not_json(r: Region) -> None:
    """``forest-carbon composite`` of an items file that is an HTML page."""
    bad = r.work / "2024.json"
    bad.write_text("<html>not json</html>")
    r.watch = r.work / "composite"
    r.argv = ["composite", str(bad), "--aoi", r.config["aoi"], "--crs", "EPSG:32650",
              "--out", str(r.watch)]  # fmt: skip


def maps_on_two_grids(r: Region) -> None:
    """``forest-carbon sink`` with the end epoch's SD map one column wider than the rest."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    def write(name: str, nx: int) -> str:
        da = xr.DataArray(
            np.full((1, 4, nx), 50.0, np.float32),
            dims=("band", "y", "x"),
            coords={
                "band": [1],
                "y": 3e6 - 10 * (np.arange(4) + 0.5),
                "x": 5e5 + 10 * (np.arange(nx) + 0.5),
            },
        ).rio.write_crs("EPSG:32650")
        path = r.work / f"{name}.tif"
        da.rio.to_raster(path)
        return str(path)

    maps = [write(n, 5 if n == "sd_end" else 4) for n in ("c1", "c2", "sd1", "sd_end", "q1", "q2")]
    r.watch = r.work / "sink"
    r.argv = ["sink", "--carbon", *maps[:2], "--sd", *maps[2:4], "--quality", *maps[4:],
              "--dates", "2019-07-01", "2024-07-01", "--out", str(r.watch)]  # fmt: skip


def not_a_manifest(r: Region) -> None:
    """``forest-carbon reproduce`` of a file that is not a run's manifest (cut short)."""
    bad = r.work / "manifest.json"
    bad.write_text('{"config": {"region": "tiny"')
    r.watch = r.work / "again"
    r.argv = ["reproduce", str(bad), "--out", str(r.watch), "--quiet"]


one_plot_outside_aoi = layer(
    "plot_locations",
    lambda g: g.set_geometry(
        [shifted(30_000, 0)(g.iloc[:1]).geometry.iloc[0], *g.geometry.iloc[1:]]
    ),
)
ONE_PLOT_OUTSIDE_AOI = (
    "(sources.plot_locations): ",
    "plots lie outside the AOI's extent",
    "plot_id 'P001'",
)


# --------------------------------------------------------------------------- the matrix

LIDAR = "lidar"
PLOTS = "plots"
ACQUIRE = "acquire"
CASES: tuple[Case, ...] = (
    # config: CRS and keys
    Case("crs-geographic", setting("crs", "EPSG:4326"), ("crs: EPSG:4326 is geographic", "UTM")),
    Case("crs-unknown", setting("crs", "EPSG:999999"), ("crs: EPSG:999999 is not a CRS",)),
    Case("crs-feet", setting("crs", "EPSG:2227"), ("crs: EPSG:2227", "US survey foot")),
    Case(
        "lidar-crs-geographic",
        setting("sources.lidar_crs", "EPSG:4326"),
        ("sources.lidar_crs: EPSG:4326 is geographic",),
    ),
    Case(
        "lidar-crs-unknown",
        setting("sources.lidar_crs", "EPSG:999999"),
        ("sources.lidar_crs: EPSG:999999 is not a CRS",),
    ),
    Case("key-top", unknown_key(""), ("bogus_key: unknown key (allowed: region,", "seed")),
    Case("key-sources", unknown_key("sources"), ("sources.bogus_key", "allowed:", "lidar_tiles")),
    Case(
        "key-lidar", unknown_key("stages.lidar"), ("stages.lidar.bogus_key", "allow_skipped_tiles")
    ),
    Case("key-dask", unknown_key("dask"), ("dask.bogus_key", "allowed: n_workers")),
    Case(
        "key-epoch",
        lambda r: r.config["epochs"][0].update(bogus_key=1),
        ("epochs[0].bogus_key: unknown key (allowed: name, start, end, reference_date)",),
    ),
    # the AOI
    Case("aoi-missing", setting("aoi", "nowhere/aoi.geojson"), ("nowhere/aoi.geojson (aoi)",)),
    Case(
        "aoi-point",
        layer("aoi", all_geometries(lambda g: g.centroid)),
        ("tiny.geojson (aoi): feature 0 is a Point", "polygons"),
    ),
    Case(
        "aoi-line",
        layer("aoi", all_geometries(lambda g: LineString(g.exterior.coords))),
        ("(aoi): feature 0 is a LineString",),
    ),
    Case(
        "aoi-not-geojson",
        text_file("aoi", b"the area is the county of Shunchang\n"),
        ("tiny.geojson (aoi): not a vector file",),
    ),
    Case(
        "aoi-truncated-json",
        text_file("aoi", b'{"type": "FeatureCollection", "features": [{"type": "Fea'),
        ("(aoi): not a vector file",),
    ),
    Case("aoi-no-features", layer("aoi", no_features), ("(aoi): the layer has no features",)),
    Case(
        "aoi-empty-geometry",
        layer("aoi", first_geometry(lambda g: Polygon())),
        ("(aoi): feature 0 has an empty geometry",),
    ),
    Case(
        "aoi-self-intersecting",
        layer("aoi", first_geometry(bowtie)),
        ("(aoi): feature 0 is an invalid polygon", "Self-intersection", "-makevalid"),
    ),
    Case(
        "aoi-gpkg-without-crs",
        lambda r: (
            gpd.read_file(r.config["aoi"])
            .set_crs(None, allow_override=True)
            .to_file(r.work / "aoi.gpkg"),
            r.config.update(aoi=str(r.work / "aoi.gpkg")),
        ),
        ("aoi.gpkg (aoi): the layer has no CRS",),
    ),
    # the parcel layer
    Case(
        "parcels-self-intersecting",
        layer("parcels", first_geometry(bowtie)),
        ("parcels.gpkg (sources.parcels): feature 0 (parcel_id", "invalid polygon"),
    ),
    Case(
        "parcels-self-intersecting-repaired",
        lambda r: (
            layer("parcels", first_geometry(bowtie))(r),
            setting("sources.repair_geometry", True)(r),
        ),
        (
            "(sources.parcels): 1 invalid polygon(s) repaired with shapely.make_valid",
            "parcel_id 'NP0001'",
        ),
        command="check",
        exit=0,
    ),
    Case(
        "parcels-not-vector",
        text_file("parcels", b"parcel_id,area\nA1,3.2\n"),
        ("parcels.gpkg (sources.parcels): not a vector file",),
    ),
    Case(
        "parcels-empty-geometry",
        layer("parcels", first_geometry(lambda g: None)),
        ("(sources.parcels): feature 0 (parcel_id", "empty geometry"),
    ),
    Case(
        "parcels-no-features",
        layer("parcels", no_features),
        ("(sources.parcels): the layer has no",),
    ),
    Case(
        "parcels-points",
        layer("parcels", all_geometries(lambda g: g.centroid)),
        ("(sources.parcels): feature 0 (parcel_id", "is a Point"),
    ),
    Case(
        "parcels-wrong-crs-label",
        layer("parcels", relabelled("EPSG:32651")),
        ("(sources.parcels): 6 of 6 polygons lie entirely off the model grid", "CRS label"),
    ),
    Case(
        "parcels-elsewhere",
        layer("parcels", shifted(50_000, 0)),
        ("(sources.parcels): 6 of 6 polygons lie entirely off", "0 t of carbon"),
    ),
    Case(
        "parcels-one-outside",
        layer(
            "parcels",
            lambda g: g.assign(
                geometry=[shifted(5_000, 0)(g.iloc[:1]).geometry.iloc[0], *g.geometry.iloc[1:]]
            ),
        ),
        ("(sources.parcels): 1 of 6 polygons lie entirely off", "parcel_id"),
    ),
    Case(
        "parcels-partly-off-grid",
        layer("parcels", half_off_grid),
        ("(sources.parcels): 1 of 6 polygons lie partly off the map grid", "grid_fraction"),
        command="check",
        exit=0,
    ),
    Case("parcels-no-crs", layer("parcels", no_crs), ("(sources.parcels): the layer has no CRS",)),
    # the project area
    Case(
        "project-self-intersecting",
        layer("project_area", first_geometry(bowtie)),
        ("project.gpkg (sources.project_area): feature 0 (parcel_id", "Self-intersection"),
    ),
    Case(
        "project-not-vector",
        text_file("project_area", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("project.gpkg (sources.project_area): not a vector file",),
    ),
    Case(
        "project-csv-instead",
        text_file("project_area", b"parcel_id,baseline\nP1,1.0\n", suffix=".csv"),
        ("project.csv (sources.project_area)",),
    ),
    Case(
        "project-empty-geometry",
        layer("project_area", first_geometry(lambda g: Polygon())),
        ("(sources.project_area): feature 0 (parcel_id", "empty geometry"),
    ),
    Case(
        "project-off-grid",
        layer("project_area", shifted(0, -20_000)),
        ("(sources.project_area): 1 of 1 polygons lie entirely off the model grid",),
    ),
    Case(
        "project-missing",
        setting("sources.project_area", "nowhere/project.gpkg"),
        ("nowhere/project.gpkg (sources.project_area): file not found",),
    ),
    # plots and trees
    Case(
        "plots-outside-aoi",
        layer("plot_locations", shifted(30_000, 30_000)),
        ("plots.gpkg (sources.plot_locations): none of its 26 plots lies in the AOI's extent",),
        not_says=("cv_block_m",),
    ),
    Case(
        "plots-one-outside-aoi",
        one_plot_outside_aoi,
        ONE_PLOT_OUTSIDE_AOI,
        command="check",
        exit=0,
    ),
    Case(
        # the same warning of the checks before a run: recorded with the plots stage (the
        # first that reads the file), so the manifest and the report have it
        "plots-one-outside-aoi-run",
        one_plot_outside_aoi,
        ONE_PLOT_OUTSIDE_AOI,
        stages=PLOTS,
        exit=0,
        in_stage=True,
    ),
    Case(
        "plots-missing",
        setting("sources.plot_locations", "nowhere/plots.gpkg"),
        ("nowhere/plots.gpkg (sources.plot_locations): file not found",),
    ),
    Case(
        "trees-gbk",
        trees_reencoded("gbk", "杉木人工林，福建南平"),
        ("trees.csv: the text is not UTF-8; read it as", "GB"),
        command="check",
        exit=0,
    ),
    Case(
        "trees-cp1252",
        trees_reencoded("cp1252", "Forêt domaniale, relevé été"),
        ("trees.csv: the text is not UTF-8", "CSV UTF-8"),
    ),
    Case(
        "trees-missing",
        setting("sources.trees", "nowhere/trees.csv"),
        ("nowhere/trees.csv (sources.trees): file not found",),
    ),
    # LiDAR tiles: header checks before the run
    Case(
        "lidar-no-match",
        setting("sources.lidar_tiles", "nowhere/*.laz"),
        ("sources.lidar_tiles: no file matches 'nowhere/*.laz'",),
    ),
    Case(
        "lidar-repeat-no-match",
        setting("sources.lidar_repeat", {"2024": "nowhere/*.laz"}),
        ("sources.lidar_repeat.2024: no file matches 'nowhere/*.laz'",),
    ),
    Case(
        "lidar-repeat-first-epoch",
        setting("sources.lidar_repeat", {"2019": "nowhere/*.laz"}),
        ("sources.lidar_repeat: epoch '2019' is the epoch of sources.lidar_tiles",),
    ),
    Case(
        "lidar-repeat-other-crs",
        tile_edit(lambda p: rewrite_las(p, crs_set(32651)), which=None, repeat="2024"),
        ("609_2942.laz: the tile is in EPSG:32651 but the model grid is in EPSG:32650",),
    ),
    Case(
        "lidar-empty-tile",
        tile_edit(no_points),
        ("609_2942.laz: the tile has no points", "allow_skipped_tiles"),
    ),
    Case(
        "lidar-garbage-tile",
        tile_edit(garbage, which=1),
        ("610_2942.laz: cannot read the header", "allow_skipped_tiles"),
    ),
    Case(
        "lidar-truncated-header",
        tile_edit(lambda p: p.write_bytes(p.read_bytes()[:300])),
        ("609_2942.laz: the header is truncated (the file has 300 bytes",),
        not_says=("no CRS",),
    ),
    Case(
        "lidar-skips-allowed",
        lambda r: (tile_edit(no_points)(r), setting("stages.lidar.allow_skipped_tiles", True)(r)),
        ("will be skipped (stages.lidar.allow_skipped_tiles)", "609_2942.laz"),
        command="check",
        exit=0,
    ),
    Case(
        "lidar-no-crs",
        tile_edit(lambda p: rewrite_las(p, crs_vlrs_removed)),
        ("609_2942.laz: the tile's header has no CRS", "--crs", "cannot be told"),
    ),
    Case(
        "lidar-other-crs",
        tile_edit(lambda p: rewrite_las(p, crs_set(32651)), which=None),
        ("609_2942.laz: the tile is in EPSG:32651 but the model grid is in EPSG:32650", "pdal"),
    ),
    Case(
        "lidar-mixed-crs",
        tile_edit(lambda p: rewrite_las(p, crs_set(32651))),
        ("different CRSs (609_2942.laz has EPSG:32651, 610_2942.laz has EPSG:32650)",),
    ),
    Case(
        "lidar-geographic-header",
        tile_edit(lambda p: rewrite_las(p, crs_set(4326))),
        ("609_2942.laz: CRS EPSG:4326 is geographic",),
    ),
    Case(
        "lidar-feet-header",
        tile_edit(lambda p: rewrite_las(p, crs_set(2227))),
        ("609_2942.laz: CRS EPSG:2227 has axes in", "US survey foot"),
    ),
    Case(
        "lidar-crs-overrides-header",
        lambda r: (
            tile_edit(lambda p: rewrite_las(p, crs_set(32651)))(r),
            setting("sources.lidar_crs", "EPSG:32650")(r),
        ),
        ("609_2942.laz: the header says EPSG:32651; using EPSG:32650 as stated",),
        command="check",
        stages=LIDAR,
        exit=0,
    ),
    # LiDAR tiles: what only decoding the points shows
    Case(
        "lidar-corrupt-points",
        tile_edit(truncated),
        ("609_2942.laz", "corrupt or truncated", "allow_skipped_tiles"),
        stages=LIDAR,
        in_stage=True,
    ),
    Case(
        "lidar-only-noise",
        tile_edit(lambda p: rewrite_las(p, all_noise)),
        ("609_2942.laz: none of its", "points is usable: all are classified as noise"),
        stages=LIDAR,
        in_stage=True,
    ),
    Case(
        "lidar-only-noise-skipped",
        lambda r: (
            tile_edit(lambda p: rewrite_las(p, all_noise))(r),
            setting("stages.lidar.allow_skipped_tiles", True)(r),
        ),
        ("609_2942.laz: failed: none of its", "skipped (stages.lidar.allow_skipped_tiles)"),
        stages=LIDAR,
        exit=0,
        in_stage=True,
        then=tiles_table_says("609_2942.laz", "failed"),
    ),
    Case(
        "lidar-z-in-feet",
        tile_edit(lambda p: rewrite_las(p, z_in_feet), which=None),
        ("the canopy is implausibly tall", "stages.lidar.max_canopy_height_m", "feet"),
        stages=LIDAR,
        exit=0,
        in_stage=True,
    ),
    # the tree list, in the plots stage
    Case(
        "trees-height-not-a-number",
        tree_cell(0, "height_m", "abc"),
        ("tree list: cells that are not numbers (height_m: 1)", "plots/qa.csv"),
        stages=PLOTS,
        exit=0,
        in_stage=True,
        then=qa_row("P001-T0001", "height_m", "abc", "not a number"),
    ),
    # the local catalog, searched by the acquire stage
    Case(
        "catalog-missing",
        setting("sources.catalog.location", "nowhere/items.ndjson"),
        ("sources.catalog.location: the local catalog nowhere/items.ndjson does not exist",),
        stages=ACQUIRE,
        in_stage=True,
    ),
    Case(
        "catalog-line-not-json",
        local_catalog(lambda lines: [*lines, '{"type": "Feature", "id": "TRUNC']),
        ("items.ndjson: cannot read the local catalog",),
        stages=ACQUIRE,
        in_stage=True,
    ),
    Case(
        "catalog-not-json",
        local_catalog(lambda lines: ["<html><body>502 Bad Gateway</body></html>"]),
        ("items.ndjson: cannot read the local catalog",),
        stages=ACQUIRE,
        in_stage=True,
    ),
    Case(
        "catalog-item-twice",
        local_catalog(lambda lines: [*lines, *lines]),
        ("local catalog ", "item(s) came more than once; each is used once"),
        stages=ACQUIRE,
        exit=0,
        in_stage=True,
        then=manifest_warning_names(ACQUIRE, "catalog/items.ndjson: "),
    ),
    Case(
        "catalog-s3-self-links",
        local_catalog(s3_self_links),
        (),
        stages=ACQUIRE,
        exit=0,
        in_stage=True,
        then=frozen_assets_are_local_files,
    ),
    # the run folder
    Case(
        "output-system-folder",
        # a folder that cannot be created even by root: should the check ever break, the
        # run fails there instead of writing into a system folder
        setting("output_dir", "/sys/forest-carbon-test"),
        ("resolves to /sys/forest-carbon-test, inside the system folder /sys",),
    ),
    Case(
        "output-relative-escape",
        setting("output_dir", "../../x"),
        ("output_dir ../../x: the relative path leaves the working directory",),
    ),
    Case(
        "output-users-folder",
        users_folder,
        ("/run: the folder is not empty and is not a run folder", "output_dir or --out"),
    ),
    # reproduce
    Case(
        "reproduce-input-changed",
        recorded_then(aoi_line_added),
        ("input files differ from the recorded run's", "tiny.geojson: changed"),
        command="reproduce",
    ),
    Case(
        "reproduce-input-invalid",
        recorded_then(aoi_made_a_point),
        ("tiny.geojson (aoi): feature 0 is a Point", "polygons"),
        command="reproduce",
        not_says=("differ from the recorded run's",),
    ),
    Case(
        "reproduce-input-invalid-changes-allowed",
        recorded_then(aoi_made_a_point, "--allow-changed-inputs"),
        ("tiny.geojson (aoi): feature 0 is a Point",),
        command="reproduce",
    ),
    Case(
        "reproduce-frozen-items-changed",
        recorded_then(frozen_items_edited),
        ("input files differ from the recorded run's", ".json: changed", "/items/"),
        command="reproduce",
    ),
    # the stand-alone commands
    Case(
        "stac-api-html-body",
        stac_api_answering(html_page),
        (
            "STAC search failed at http://127.0.0.1:",
            "JSONDecodeError",
            "for the query",
            "bbox [118.10000, 26.10000",
            "sources.catalog.location",
        ),
        command="search",
    ),
    Case(
        "stac-api-truncated-json",
        stac_api_answering(truncated_page),
        (
            "STAC search failed at http://127.0.0.1:",
            "unexpected end of data",
            "collections sentinel-2-l2a",
            "dates 2019-03-01",
        ),
        command="search",
    ),
    Case(
        "stac-api-never-answers",
        stac_api_answering(never_answering, "--timeout", "0.5", "--retries", "1"),
        (
            "STAC search failed at http://127.0.0.1:",
            "timed out",
            "bbox [118.10000, 26.10000",
            "stages.acquire.timeout_s",
        ),
        command="search",
    ),
    Case(
        "stac-api-keeps-failing",
        stac_api_answering(always_503, "--retries", "1"),
        (
            "HTTP 503; attempt 2 of 2",
            "STAC search failed at http://127.0.0.1:",
            "down for maintenance",
            "dates 2019-03-01",
        ),
        command="search",
    ),
    Case(
        "stac-api-next-link-loops",
        stac_api_answering(looping_pages),
        (
            "page 3 repeats an earlier page (its 'next' link loops)",
            "1 item(s) came more than once; each is used once",
        ),
        exit=0,
        then=each_item_once,
        command="search",
    ),
    Case(
        "composite-items-not-json",
        items_file_not_json,
        ("2024.json: not a JSON file",),
        command="composite",
    ),
    Case(
        "sink-maps-on-two-grids",
        maps_on_two_grids,
        ("carbon SD (end epoch) (", "sd_end.tif) is not on the same grid as carbon (start"),
        command="sink",
    ),
    Case(
        "reproduce-not-a-manifest",
        not_a_manifest,
        ("manifest.json: not a run manifest (not JSON",),
        command="reproduce",
    ),
)


# --------------------------------------------------------------------------- the test


def snapshot(folder: Path, *, mine: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (empty if it does not exist); of a folder
    not under ``mine`` (a system folder) only its entries and their modification times."""
    if not folder.exists():
        return {}
    if not folder.resolve().is_relative_to(mine):
        return {p.name: str(p.lstat().st_mtime_ns) for p in sorted(folder.iterdir())}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One Dask cluster for the cases that run a stage (a cluster per run costs seconds)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def region(
    tiny_data: Path, tmp_path: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Region]:
    """A case's region, run from its own folder (a relative ``output_dir`` lands there)."""
    text = region_config_path("tiny").read_text().replace("data/tiny", str(tiny_data))
    config = yaml.safe_load(text)
    config["output_dir"] = str(tmp_path / "run")
    config["aoi"] = str(Path(__file__).resolve().parents[1] / config["aoi"])  # the repo's
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        yield Region(tiny_data, tmp_path, config, scheduler, stack=stack)


def test_the_matrix_has_at_least_60_cases_with_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


def test_the_unbroken_region_passes_the_checks(
    region: Region, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control of the matrix: the region each case breaks passes."""
    cfg = region.work / "config.yaml"
    cfg.write_text(yaml.safe_dump(region.config))
    assert main(["check", "--config", str(cfg)]) == 0
    # the simulator places the project plot J016 just west of the grid (its square ends
    # 3 cm short of it): the one warning, a finding of these checks
    out = capsys.readouterr().out.strip()
    assert out.endswith("inputs checked, 1 warning(s)"), out
    assert "1 of 26 plots lie outside the AOI's extent (feature 21 (plot_id 'J016'))" in out
    assert not Path(region.config["output_dir"]).exists()
    # the table of what was found, against the files read independently
    sources = region.config["sources"]
    trees = pd.read_csv(sources["trees"])
    parcels = gpd.read_file(sources["parcels"])
    assert (
        f"{len(trees)} trees in {trees['plot_id'].nunique()} plots, epochs ['2019', '2024']" in out
    )
    assert (
        f"{sources['parcels']}: {len(parcels)} features, EPSG:32650, 100% of them meet the AOI"
        in out
    )
    assert f"{len(glob.glob(sources['lidar_tiles']))} tile(s)" in out
    stands = int(parcels["dominant_species"].notna().sum())
    assert f"sub-compartment record: {stands} stands, survey years [2019]" in out
    # scenes per epoch: the catalog's lines dated in each epoch's window, under the cloud
    # limit (every item of the simulated catalog meets the AOI)
    lines = Path(sources["catalog"]["location"]).read_text().splitlines()
    props = [json.loads(line)["properties"] for line in lines]
    limit = AcquireParams().max_cloud_cover
    for epoch in region.config["epochs"]:
        n = sum(
            str(epoch["start"]) <= p["datetime"][:10] <= str(epoch["end"])
            and p.get("eo:cloud_cover", 0.0) <= limit
            for p in props
        )
        assert f"epoch {epoch['name']}: {n} scenes (" in out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, region: Region, capsys: pytest.CaptureFixture[str]) -> None:
    case.make(region)
    capsys.readouterr()  # what making the input printed (a recorded run) is not the case's
    cfg = region.work / "config.yaml"
    cfg.write_text(yaml.safe_dump(region.config, allow_unicode=True))
    run_folder = region.watch or Path(os.path.abspath(region.config["output_dir"]))
    before = snapshot(run_folder, mine=region.work)
    argv = region.argv or [case.command, "--config", str(cfg)]
    if region.argv is None:
        if case.stages:
            argv += ["--stages", case.stages]
        if case.in_stage:
            argv += ["--scheduler", region.scheduler]
        if case.command == "run":
            argv.append("--quiet")
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        code = main(argv)
    captured = capsys.readouterr()
    # the stand-alone commands leave their warnings to Python, which prints them on
    # stderr (pytest would catch them); run, check and reproduce print their own
    said = [str(w.message) for w in escaped if issubclass(w.category, PipelineWarning)]
    if argv[0] in ("run", "check", "reproduce"):
        said = []
    # the console wraps long lines: compare with whitespace runs as single spaces
    text = " ".join((captured.out + captured.err + " ".join(said)).split())
    assert code == case.exit, text
    for needle in case.says:
        assert needle in text, (needle, text)
    for needle in case.not_says:
        assert needle not in text, (needle, text)
    assert "Traceback" not in text and "internal error" not in text, text
    after = snapshot(run_folder, mine=region.work)
    if case.command == "check":  # the checks write nothing, whatever they find
        assert after == before == {}, sorted(after)
    if case.exit == 2:
        assert after == before, sorted(set(after) ^ set(before))
    if case.in_stage and case.exit == 0:
        manifest = json.loads((run_folder / "manifest.json").read_text())
        recorded = " ".join(" ".join(manifest["stages"][case.stages or ""]["warnings"]).split())
        for needle in case.says:
            assert needle in recorded, (needle, recorded)
    if case.then is not None:
        case.then(run_folder)


def test_a_stage_reads_invalid_polygons_refused_or_repaired_as_asked(tmp_path: Path) -> None:
    """What the stages get (``io.read_input``): a bow-tie refused, or its two triangles.

    Independent reference: the bow-tie over the unit square crosses itself at (0.5, 0.5);
    its two triangles have areas 1/4 each (base 1, height 1/2), so the repair has area 1/2
    where shapely gives the invalid ring an area of 0.
    """
    from pipeline import io
    from pipeline.errors import InputDataError

    ring = Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
    assert ring.area == 0.0
    path = tmp_path / "p.gpkg"
    gpd.GeoDataFrame({"parcel_id": ["A"]}, geometry=[ring], crs="EPSG:32650").to_file(path)
    with pytest.raises(InputDataError, match=r"p\.gpkg: feature 0 \(parcel_id 'A'\) is an invalid"):
        io.read_input(path, chunk_px=256)
    with pytest.warns(PipelineWarning, match=r"repaired with shapely\.make_valid.*'A'"):
        got = io.read_input(path, chunk_px=256, repair_geometry=True)
    assert got.geometry.iloc[0].is_valid
    assert got.geometry.iloc[0].area == pytest.approx(0.5)


def test_a_gbk_tree_list_reads_as_the_same_table_as_its_utf8_copy(tmp_path: Path) -> None:
    """What the plots stage gets from a GBK file: the table of its UTF-8 copy, and a warning."""
    import pandas as pd

    from pipeline import io

    text = (
        "plot_id,tree_id,species,dbh_cm,备注\n"
        "P1,T1,杉木,12.5,福建南平人工林\n"
        "P1,T2,马尾松,20.1,林缘\n"
    )
    gbk, utf8 = tmp_path / "gbk.csv", tmp_path / "utf8.csv"
    gbk.write_bytes(text.encode("gbk"))
    utf8.write_text(text, encoding="utf-8")
    with pytest.warns(PipelineWarning, match=r"gbk\.csv: the text is not UTF-8; read it as GB"):
        got = io.read_input(gbk, chunk_px=256)
    pd.testing.assert_frame_equal(got, pd.read_csv(utf8))


@pytest.mark.parametrize("command", ["lidar", "composite"])
def test_a_point_aoi_is_refused_by_the_stand_alone_commands(
    command: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(
        geometry=[Polygon([(0, 0), (1, 0), (1, 1)]).centroid], crs="EPSG:4326"
    ).to_file(aoi)
    out = tmp_path / "out"
    if command == "lidar":
        argv = ["lidar", str(tiny_data / "lidar"), "--aoi", str(aoi), "--out", str(out)]
    else:
        argv = ["composite", "items.json", "--aoi", str(aoi), "--crs", "EPSG:32650"]
        argv += ["--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{aoi} (--aoi): feature 0 is a Point" in err and not out.exists()


def test_a_real_process_refuses_with_one_line_and_no_traceback(region: Region) -> None:
    """In a subprocess, as a user runs it: exit 2, one line on stderr, nothing written."""
    import os
    import subprocess
    import sys

    layer("aoi", all_geometries(lambda g: g.centroid))(region)
    cfg = region.work / "config.yaml"
    cfg.write_text(yaml.safe_dump(region.config))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # this checkout's code, whichever the environment installed
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "(aoi): feature 0 is a Point" in lines[0], done.stderr
    assert not Path(region.config["output_dir"]).exists()
