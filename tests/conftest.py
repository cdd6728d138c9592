"""Shared fixtures: the tiny simulated region, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import region_config_path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``forest-carbon simulate --region tiny`` into a session folder."""
    out = tmp_path_factory.mktemp("region") / "tiny"
    assert main(["simulate", "--region", "tiny", "--out", str(out)]) == 0
    return out


@pytest.fixture
def tiny_config(tiny_data: Path, tmp_path: Path) -> Path:
    """The pinned tiny config, reading the session's data and writing under ``tmp_path``."""
    text = region_config_path("tiny").read_text()
    text = text.replace("data/tiny", str(tiny_data)).replace("outputs/tiny", str(tmp_path / "run"))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(text)
    return cfg
