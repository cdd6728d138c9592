"""The one writer and reader of run files (:mod:`pipeline.io`): CSV encoding for Excel,
content checksums."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pandas as pd

from pipeline import io


def _chinese_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "parcel_id": ["P1", "P2"],
            "parcel_name": ["将乐县万安镇 12 林班", "顺昌县 3 小班"],
            "species": ["杉木", "马尾松"],
            "area_ha": [1.5, 2.25],
        }
    )


def test_csv_starts_with_bom_and_round_trips_chinese_text(tmp_path: Path) -> None:
    table = _chinese_table()
    path = tmp_path / "t.csv"
    io.write_output(table, path)
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert not raw[3:].startswith(codecs.BOM_UTF8)
    got = io.read_input(path, chunk_px=256)
    assert list(got.columns) == list(table.columns)
    pd.testing.assert_frame_equal(got, table)


def test_csv_readers_get_clean_column_names_with_or_without_bom(tmp_path: Path) -> None:
    table = _chinese_table()
    with_bom = tmp_path / "bom.csv"
    io.write_output(table, with_bom)
    plain = tmp_path / "plain.csv"
    table.to_csv(plain, index=False, encoding="utf-8")
    for path in (with_bom, plain):
        assert list(io.read_table(path).columns) == list(table.columns)
    # what Excel and other BOM-aware readers see (an independent reader: the csv module)
    with with_bom.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(table.columns)
    assert rows[1][1] == "将乐县万安镇 12 林班"


def test_table_checksum_ignores_the_bom(tmp_path: Path) -> None:
    table = _chinese_table()
    with_bom = tmp_path / "bom.csv"
    io.write_output(table, with_bom)
    plain = tmp_path / "plain.csv"
    table.to_csv(plain, index=False, encoding="utf-8")
    assert with_bom.read_bytes() != plain.read_bytes()
    assert io.content_checksum(with_bom) == io.content_checksum(plain)
