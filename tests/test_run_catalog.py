"""The run folder's STAC catalog (pipeline.run_catalog) on the toy pipeline.

Offline, ``catalog.validate_all()`` checks every object against the STAC 1.1 core schemas
pystac bundles (:mod:`run_folder_checks`); the extensions' schemas are only online (the
last test uses them when their host answers). The extension fields are checked here
against rasterio instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
import rasterio
import toy_stages
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from run_folder_checks import check_catalog, offline_validation

from pipeline.config import load_config
from pipeline.contracts import RunLayout, style_relpath, styled_layer
from pipeline.run_catalog import PREFIX, item_id, write_catalog
from pipeline.runner import Runner, RunOptions


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("catalog")
    cfg = toy_stages.write_config(tmp)
    config = load_config(cfg)
    manifest = Runner(config, toy_stages.stages(), options=RunOptions(quiet=True)).run()
    return Path(config.output_dir), manifest


def test_catalog_validates_and_holds_every_output_with_its_checksums(toy_run):
    run, manifest = toy_run
    catalog = check_catalog(run)
    with offline_validation():
        assert catalog.validate_all() == len(manifest["outputs"])
    items = {item.id: item for item in catalog.get_items()}
    assert set(items) == {item_id(rel) for rel in manifest["outputs"]}
    for rel, record in manifest["outputs"].items():
        item = items[item_id(rel)]
        asset = item.assets["data"]
        assert Path(asset.get_absolute_href()).resolve() == (run / rel).resolve()
        assert item.properties[f"{PREFIX}content_checksum"] == record["checksum"]
        assert item.properties[f"{PREFIX}config_sha256"] == manifest["config_sha256"]
        assert item.properties[f"{PREFIX}stage"] == record["stage"]
        assert asset.extra_fields["file:checksum"] == "1220" + record["file_sha256"]
        assert item.datetime == pystac.utils.str_to_datetime(manifest["run_datetime"])
        assert item.common_metadata.created is not None
    # self-contained: no absolute path anywhere, so the folder can be moved
    for path in [run / "catalog.json", *(run / "stac").glob("*.json")]:
        assert str(run.resolve()) not in path.read_text(), path


def test_raster_item_has_projection_and_bands_of_the_file(toy_run):
    run, _ = toy_run
    item = pystac.Item.from_file(str(run / "stac" / f"{item_id('toy/noise.tif')}.json"))
    asset = item.assets["data"]
    with rasterio.open(run / "toy/noise.tif") as src:
        proj = ProjectionExtension.ext(item)
        assert proj.code == f"EPSG:{src.crs.to_epsg()}"
        assert proj.shape == [src.height, src.width]
        assert proj.transform == list(src.transform)[:6]
        bands = RasterExtension.ext(asset).bands or []
        assert [b.data_type for b in bands] == list(src.dtypes)
        assert [b["name"] for b in asset.extra_fields["bands"]] == list(src.descriptions)
        west, south, east, north = item.bbox or []
        assert -180 < west < east < 180 and -90 < south < north < 90


def test_catalog_follows_the_manifest_and_drops_stale_items(toy_run, tmp_path):
    run, manifest = toy_run
    layout = RunLayout(run)
    kept = {k: v for k, v in manifest["outputs"].items() if k == "toy/noise.tif"}
    write_catalog({**manifest, "outputs": kept}, layout)
    try:
        catalog = pystac.Catalog.from_file(str(layout.catalog))
        assert [i.id for i in catalog.get_items()] == [item_id("toy/noise.tif")]
        assert [p.name for p in layout.catalog_items_dir.glob("*.json")] == [
            f"{item_id('toy/noise.tif')}.json"
        ]
        assert not list(run.rglob(".*.tmp-*"))
    finally:
        write_catalog(manifest, layout)


def test_a_style_becomes_an_asset_of_its_layer(toy_run):
    run, manifest = toy_run
    style = style_relpath("toy/noise.tif", band="noise")
    assert style == "toy/noise.noise.qml"
    assert styled_layer(style, list(manifest["outputs"])) == ("toy/noise.tif", "noise")
    assert styled_layer(style_relpath("toy/noise.tif"), ["toy/noise.tif"]) == (
        "toy/noise.tif",
        None,
    )
    assert styled_layer("toy/other.qml", list(manifest["outputs"])) is None
    assert styled_layer("p/a.qml", ["p/a.csv", "p/a.gpkg"]) == ("p/a.gpkg", None)
    layout = RunLayout(run)
    (run / style).write_text("<qgis/>")
    outputs = {**manifest["outputs"], style: {"stage": "noise", "checksum": "x"}}
    try:
        catalog = write_catalog({**manifest, "outputs": outputs}, layout)
        item = catalog.get_item(item_id("toy/noise.tif"))
        assert item is not None
        assert item.assets["style_noise"].roles == ["style"]
        assert item_id(style) not in {i.id for i in catalog.get_items()}
    finally:
        (run / style).unlink()
        write_catalog(manifest, layout)


def test_manifest_of_a_second_run_keeps_file_checksums_of_skipped_stages(toy_run):
    run, first = toy_run
    config = load_config(run.parent / "toy.yaml")
    again = Runner(config, toy_stages.stages(), options=RunOptions(quiet=True)).run()
    assert all(s["status"].startswith("skipped") for s in again["stages"].values())
    assert again["outputs"] == first["outputs"]
    catalog = json.loads((run / "catalog.json").read_text())
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == 2
