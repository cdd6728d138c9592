"""``forest-carbon init``: a region config that loads, in the AOI's own UTM zone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config


def _aoi(path: Path, lon: float, lat: float, *, point: bool = False) -> Path:
    d = 0.05
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    geom = {"type": "Point", "coordinates": [lon, lat]} if point else {
        "type": "Polygon", "coordinates": [ring]
    }  # fmt: skip
    feature = {"type": "Feature", "properties": {}, "geometry": geom}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


@pytest.mark.parametrize(("lon", "lat"), [(118.1, 26.6), (-71.5, -33.4), (10.2, 60.8)])
def test_init_writes_a_config_in_the_aois_utm_zone_that_loads(
    tmp_path: Path, lon: float, lat: float
) -> None:
    aoi = _aoi(tmp_path / "aoi.geojson", lon, lat)
    out = tmp_path / "cfg" / "myregion.yaml"
    assert main(["init", "myregion", "--aoi", str(aoi), "--out", str(out)]) == 0
    config = load_config(out)
    # independent reference: the UTM zone formula of the AOI's centre (no Norway/Svalbard
    # exception applies to these points)
    zone = math.floor((lon + 0.025 + 180) / 6) + 1
    assert config.crs == f"EPSG:{(32600 if lat > 0 else 32700) + zone}"
    assert config.region == "myregion" and config.aoi == aoi
    # the inputs the region does not have yet are commented out, each with its document
    text = out.read_text(encoding="utf-8")
    assert "# trees: data/myregion/plots/trees.csv" in text and "docs/tree_lists.md" in text
    assert config.sources.trees is None and config.sources.parcels is None


def test_init_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    aoi = _aoi(tmp_path / "aoi.geojson", 118.1, 26.6)
    out = tmp_path / "r.yaml"
    out.write_text("# a bureau's edited config\n")
    assert main(["init", "r", "--aoi", str(aoi), "--out", str(out)]) == 2
    assert "exists; edit it, or give --force" in capsys.readouterr().err
    assert out.read_text() == "# a bureau's edited config\n"
    assert main(["init", "r", "--aoi", str(aoi), "--out", str(out), "--force"]) == 0
    assert load_config(out).region == "r"


@pytest.mark.parametrize(
    ("region", "point", "says"),
    [
        ("my region", False, "region name 'my region'"),
        ("r", True, "(--aoi)"),
    ],
)
def test_init_refuses_a_bad_name_or_aoi_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, region: str, point: bool, says: str
) -> None:
    aoi = _aoi(tmp_path / "aoi.geojson", 118.1, 26.6, point=point)
    out = tmp_path / "r.yaml"
    assert main(["init", region, "--aoi", str(aoi), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [aoi]
