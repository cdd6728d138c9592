"""Config loading: bad files give exit 2 with the file and key path; the hash is stable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config, region_config_path

GOOD = {
    "region": "t",
    "aoi": "aoi/t.geojson",
    "crs": "EPSG:32650",
    "resolution_m": 10,
    "epochs": [
        {"name": "2019", "start": "2019-03-01", "end": "2019-11-30"},
        {"name": "2024", "start": "2024-03-01", "end": "2024-11-30"},
    ],
    "data_dir": "data/t",
    "output_dir": "outputs/t",
    "seed": 1,
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _run_cli(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["run", "--config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("mutate", "key_path", "says"),
    [
        (
            lambda d: d["stages"].__setitem__("lidar", {"resolutoin_m": 1}),
            "stages.lidar.resolutoin_m",
            "unknown key",
        ),
        (lambda d: d.__setitem__("resolution_m", "ten"), "resolution_m", "valid number"),
        (lambda d: d["epochs"][1].__setitem__("end", "2024-01-01"), "epochs[1]", "before start"),
        (
            lambda d: d["stages"]["lidar"].__setitem__("chm_algorithm", "tin"),
            "stages.lidar.chm_algorithm",
            "allowed: 'p2r' or 'pitfree'",
        ),
    ],
)
def test_bad_config_exit_2_with_key_path(tmp_path, capsys, mutate, key_path, says):
    data = {**GOOD, "epochs": [dict(e) for e in GOOD["epochs"]], "stages": {"lidar": {}}}
    mutate(data)
    path = _write(tmp_path, data)
    code, err = _run_cli(capsys, path)
    assert code == 2
    assert str(path) in err
    assert key_path in err
    assert says in err
    assert "Traceback" not in err


def test_missing_config_file_exit_2(tmp_path, capsys):
    code, err = _run_cli(capsys, tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml: config file not found" in err


def test_unknown_region_names_the_file(capsys):
    code = main(["run", "--region", "atlantis"])
    assert code == 2
    assert "configs/regions/atlantis.yaml" in capsys.readouterr().err


def test_hash_is_canonical_and_ignores_output_dir(tmp_path):
    a = load_config(_write(tmp_path, GOOD))
    reordered = dict(reversed(list(GOOD.items())))
    b_path = tmp_path / "b.yaml"
    b_path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    b = load_config(b_path, overrides={"output_dir": "elsewhere"})
    assert a.sha256 == b.sha256
    c = load_config(b_path, overrides={"seed": 2})
    assert c.sha256 != a.sha256


def test_config_is_frozen(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


def test_pinned_region_configs_load():
    for region in ("nanping",):
        cfg = load_config(region_config_path(region))
        assert cfg.region == region
        assert len(cfg.sha256) == 64


@pytest.mark.parametrize(
    ("sources", "model", "says"),
    [
        ({"lidar_tiles": "l/*.laz", "lidar_repeat": {"2030": "r/*.laz"}}, {}, "['2030']"),
        ({"lidar_tiles": "l/*.laz", "lidar_repeat": {"2019": "r/*.laz"}}, {}, "epoch '2019'"),
        (
            {"lidar_tiles": "l/*.laz", "lidar_repeat": {"2024": "r/*.laz"}},
            {"lidar_epoch": "2024"},
            "epoch '2024'",
        ),
        ({"lidar_repeat": {"2024": "r/*.laz"}}, {}, "needs sources.lidar_tiles"),
        ({"lidar_tiles": "l/*.laz"}, {"lidar_epoch": "2020"}, "'2020' is not one of"),
    ],
)
def test_lidar_repeat_epochs_are_checked(tmp_path, capsys, sources, model, says):
    data = {**GOOD, "sources": sources, "stages": {"model": model}}
    code, err = _run_cli(capsys, _write(tmp_path, data))
    assert code == 2 and says in err and "Traceback" not in err


def test_lidar_repeat_of_a_later_epoch_is_accepted(tmp_path):
    sources = {"lidar_tiles": "l/*.laz", "lidar_repeat": {"2024": "r/*.laz"}}
    cfg = load_config(_write(tmp_path, {**GOOD, "sources": sources}))
    assert cfg.sources.lidar_repeat == {"2024": "r/*.laz"}
