"""Checks of a run folder's STAC catalog and QGIS styles, shared by the toy-pipeline
tests (test_run_catalog, test_styles) and the tiny end-to-end run.

Offline, ``catalog.validate_all()`` can check the STAC 1.1 core schemas pystac bundles,
but not the extensions' schemas, which pystac fetches from their URLs:
:class:`CoreSchemaValidator` validates the core and skips those (the extension fields are
checked against the files by the tests instead).
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio
from pystac.validation import RegisteredValidator, set_validator
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from pipeline.qml import BAND_PROPERTY
from pipeline.run_catalog import PREFIX, item_id


class CoreSchemaValidator(JsonSchemaSTACValidator):
    """pystac's validator on the core schemas it bundles; extension schemas are skipped."""

    def validate_extension(self, *args: object, **kwargs: object) -> None:
        return None


@contextlib.contextmanager
def offline_validation() -> Iterator[None]:
    """Use :class:`CoreSchemaValidator` as pystac's validator inside the block."""
    previous = RegisteredValidator.get_validator()
    set_validator(CoreSchemaValidator())
    try:
        yield
    finally:
        set_validator(previous)


def check_catalog(run: Path) -> pystac.Catalog:
    """The run's catalog validates (core schemas), and every output of its manifest is an
    item's asset carrying the manifest's checksums."""
    manifest = json.loads((run / "manifest.json").read_text())
    catalog = pystac.Catalog.from_file(str(run / "catalog.json"))
    with offline_validation():
        assert catalog.validate_all() > 0
    assets = {
        Path(a.get_absolute_href()).resolve(): (item, a)
        for item in catalog.get_items()
        for a in item.assets.values()
    }
    for rel, record in manifest["outputs"].items():
        item, asset = assets[(run / rel).resolve()]
        assert asset.extra_fields[f"{PREFIX}content_checksum"] == record["checksum"], rel
        assert asset.extra_fields["file:checksum"] == "1220" + record["file_sha256"], rel
        assert item.properties[f"{PREFIX}config_sha256"] == manifest["config_sha256"], rel
        if "style" not in (asset.roles or []):
            assert item.id == item_id(rel)
            assert item.properties[f"{PREFIX}stage"] == record["stage"], rel
    return catalog


def style_band(qml: Path) -> tuple[str, ET.Element]:
    """The band or attribute a style names, and its parsed XML (stdlib parser)."""
    root = ET.parse(qml).getroot()
    assert root.tag == "qgis"
    names = [o.get("value") for o in root.iter("Option") if o.get("name") == BAND_PROPERTY]
    assert len(names) == 1 and names[0], qml
    return str(names[0]), root


def check_raster_style(qml: Path, raster: Path) -> None:
    """The style names a band the raster has, draws that band, and its limits lie
    within the band's range."""
    band, root = style_band(qml)
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    with rasterio.open(raster) as src:
        assert band in src.descriptions, (qml, band, src.descriptions)
        index = src.descriptions.index(band) + 1
        assert renderer.get("band") == str(index)
        values = src.read(index, masked=True).compressed()
    values = values[np.isfinite(values)]
    lo, hi = (
        float(renderer.get("classificationMin", "nan")),
        float(renderer.get("classificationMax", "nan")),
    )
    assert values.min() <= lo <= hi <= values.max(), (qml, lo, hi, values.min(), values.max())
    stops = [float(i.get("value", "nan")) for i in root.iter("item")]
    assert stops and stops[0] == lo and stops[-1] == hi and stops == sorted(stops)


def check_vector_style(qml: Path, layer: Path) -> None:
    """The style's attribute is a column of the layer and its classes cover its values."""
    field, root = style_band(qml)
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("attr") == field
    values = gpd.read_file(layer)[field].to_numpy(dtype=float)
    ranges = [
        (float(r.get("lower", "nan")), float(r.get("upper", "nan"))) for r in root.iter("range")
    ]
    assert ranges[0][0] == np.nanmin(values) and ranges[-1][1] == np.nanmax(values)
    for v in values[np.isfinite(values)]:
        assert any(a <= v <= b for a, b in ranges), v
