"""A bureau's own files as it holds them (issue #17): tree lists naming species in Chinese
or pinyin, parcel layers with their own field names, tree lists in XLSX.

Each test builds its input from the tiny simulated region and goes through
``forest-carbon check`` (what ``run`` checks first), or the reader the stages use.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main


def _config(tiny_config: Path, **sources: object) -> Path:
    """The tiny config with ``sources`` changed."""
    config = yaml.safe_load(tiny_config.read_text())
    config["sources"].update({k: str(v) if isinstance(v, Path) else v for k, v in sources.items()})
    tiny_config.write_text(yaml.safe_dump(config, allow_unicode=True))
    return tiny_config


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(config), "--stages", "plots"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_says_which_species_names_were_translated(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trees = pd.read_csv(tiny_data / "plots" / "trees.csv")
    n_fir = int((trees["species"] == "Cunninghamia lanceolata").sum())
    assert n_fir > 0
    trees["species"] = trees["species"].replace({"Cunninghamia lanceolata": "杉木"})
    path = tmp_path / "trees.csv"
    trees.to_csv(path, index=False)
    code, said = _check(_config(tiny_config, trees=path), capsys)
    assert code == 0, said
    assert "1 species name(s) read through models/data/species_names.csv" in said
    assert f"杉木 read as Cunninghamia lanceolata (Chinese name, {n_fir} tree(s)" in said
    assert "Flora of China Vol. 4" in said
