"""LiDAR tiles named by a virtual point cloud (.vpc), as PDAL's build_vpc and QGIS write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import InputDataError
from pipeline.lidar.index import tiles_of


def _vpc(path: Path, hrefs: list[str]) -> Path:
    """A virtual point cloud in the shape pdal_wrench build_vpc writes (STAC items of the
    pointcloud extension in a FeatureCollection), with the given ``data`` hrefs."""
    features = [
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/pointcloud/v1.0.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            ],
            "id": Path(h).stem,
            "geometry": None,
            "properties": {"datetime": "2019-07-01T00:00:00Z", "pc:type": "lidar"},
            "links": [],
            "assets": {"data": {"href": h, "roles": ["data"]}},
        }
        for h in hrefs
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_a_vpc_names_its_tiles_relative_to_itself(tiny_data: Path, tmp_path: Path) -> None:
    tiles = sorted((tiny_data / "lidar").glob("*.laz"))
    assert len(tiles) >= 2
    # the .vpc beside the tiles with relative hrefs, and one elsewhere with absolute ones
    local = _vpc(tiny_data / "lidar" / "tiles.vpc", [f"./{t.name}" for t in tiles])
    try:
        assert tiles_of(str(local)) == tuple(tiny_data / "lidar" / t.name for t in tiles)
    finally:
        local.unlink()
    far = _vpc(tmp_path / "far.vpc", [t.resolve().as_uri() for t in tiles])
    assert [p.resolve() for p in tiles_of(str(far))] == [t.resolve() for t in tiles]


@pytest.mark.parametrize(
    ("hrefs", "message"),
    [
        (["./missing.laz"], r"bad\.vpc: tile .*missing\.laz \(feature 0\) does not exist"),
        (["https://example.org/t.laz"], r"bad\.vpc: tile 'https://example.org/t.laz' is remote"),
        ([], r"bad\.vpc lists no tile"),
    ],
)
def test_a_bad_vpc_is_refused_by_name(tmp_path: Path, hrefs: list[str], message: str) -> None:
    vpc = _vpc(tmp_path / "bad.vpc", hrefs)
    with pytest.raises(InputDataError, match=r"sources\.lidar_tiles: .*" + message):
        tiles_of(str(vpc))


def test_a_vpc_that_is_not_json_is_refused(tmp_path: Path) -> None:
    vpc = tmp_path / "bad.vpc"
    vpc.write_text("<html>not a vpc</html>")
    with pytest.raises(InputDataError, match=r"bad\.vpc is not a readable virtual point cloud"):
        tiles_of(str(vpc))


def test_check_reads_the_lidar_tiles_of_a_vpc(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiles = sorted((tiny_data / "lidar").glob("*.laz"))
    vpc = _vpc(tmp_path / "tiles.vpc", [str(t.resolve()) for t in tiles])
    config = yaml.safe_load(tiny_config.read_text())
    config["sources"]["lidar_tiles"] = str(vpc)
    cfg = tmp_path / "vpc.yaml"
    cfg.write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["check", "--config", str(cfg), "--stages", "lidar"]) == 0
    assert f"{vpc}: {len(tiles)} tile(s)" in capsys.readouterr().out
