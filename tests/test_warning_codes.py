"""Every warning the pipeline and the science raise has a code, its values and a text in each
report language but English (``pipeline/report/strings.yaml``, ``warnings``); the Chinese
report says real warnings in Chinese, their values filled in (``docs/warnings.md``)."""

from __future__ import annotations

import ast
import string
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pytest
from faulty_stac import GEOJSON, FaultyApi, faulty_api
from shapely.geometry import Polygon

from models.errors import CodedWarning, ModelsWarning
from models.plot_biomass import with_epoch
from pipeline import catalog, io
from pipeline.errors import PipelineWarning
from pipeline.report.words import LANGUAGES, Words, strings
from pipeline.runner import sort_warnings

REPO = Path(__file__).resolve().parent.parent
#: the class each package raises its warnings with
OWN = {"pipeline": "PipelineWarning", "models": "ModelsWarning"}


def _sources() -> list[tuple[str, ast.Module]]:
    paths = [p for package in OWN for p in sorted((REPO / package).rglob("*.py"))]
    return [
        (p.relative_to(REPO).as_posix(), ast.parse(p.read_text(), filename=str(p))) for p in paths
    ]


def _name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def test_every_warning_is_raised_as_a_coded_warning_of_its_packages_class():
    """``warnings.warn(PipelineWarning(message, code="...", values={...}))`` in pipeline/,
    ``ModelsWarning`` in models/: a warning raised as a string with a category has no code
    (its Chinese report would say it in English), and one of another class would be
    counted as library noise and left out of the report."""
    wrong = []
    for rel, tree in _sources():
        own = OWN[rel.split("/")[0]]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _name(node) == "warnings.warn"):
                continue
            arg = node.args[0] if node.args else None
            extra = len(node.args) > 1 or any(k.arg == "category" for k in node.keywords)
            if extra or not (isinstance(arg, ast.Call) and _name(arg) == own):
                wrong.append(f"{rel}:{node.lineno} (raise {own}(message, code=..., values=...))")
    assert not wrong, f"warnings raised without a code: {wrong}"


def _raised_codes() -> dict[str, set[str]]:
    """Each code of a warning construction in pipeline/ and models/, with its values' names
    (asserting that every construction gives its code and values as literals)."""
    found: dict[str, set[str]] = {}
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _name(node) in OWN.values()):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{rel}:{node.lineno}"
            assert isinstance(kw.get("code"), ast.Constant), f"{where}: no literal code"
            values = kw.get("values")
            assert isinstance(values, ast.Dict) and None not in values.keys, (
                f"{where}: values not a dict literal"
            )
            code = ast.literal_eval(kw["code"])
            keys = {ast.literal_eval(k) for k in values.keys if k is not None}
            assert found.setdefault(code, keys) == keys, f"{where}: {code} with other values"
    return found


def test_every_code_has_a_text_in_every_other_language_naming_exactly_its_values():
    texts = strings()["warnings"]
    found = _raised_codes()
    assert {"plots_outside_aoi", "no_epoch_column", "no_project_sample"} <= found.keys()
    assert sorted(found) == sorted(texts), "codes raised and texts of strings.yaml differ"
    formatter = string.Formatter()
    for code, keys in found.items():
        for lang in set(LANGUAGES) - {"en"}:
            named = {f for _, f, _, _ in formatter.parse(str(texts[code][lang])) if f}
            assert named == keys, (code, lang, named, keys)


def _chinese(caught: list[warnings.WarningMessage], code: str) -> list[str]:
    """The report's Chinese words for the caught warnings of ``code``."""
    said = []
    for w in caught:
        coded = w.message.coded() if isinstance(w.message, CodedWarning) else None
        if coded is not None and coded["code"] == code:
            said.append(Words("zh").warning(str(w.message), coded))
    return said


def test_a_repaired_polygon_is_said_in_chinese(tmp_path: Path) -> None:
    ring = Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])  # a bow-tie
    path = tmp_path / "p.gpkg"
    gpd.GeoDataFrame({"parcel_id": ["A"]}, geometry=[ring], crs="EPSG:32650").to_file(path)
    with pytest.warns(PipelineWarning) as caught:
        io.read_input(path, chunk_px=256, repair_geometry=True)
    assert _chinese(caught.list, "geometry_repaired") == [
        f"{path}：已用 shapely.make_valid 修复 1 个无效多边形（sources.repair_geometry）："
        "feature 0 (parcel_id 'A')；请核查其面积"
    ]


def test_a_tree_list_without_epochs_is_said_in_chinese() -> None:
    trees = pd.DataFrame({"plot_id": ["P1", "P1", "P2"], "dbh_cm": [12.0, 20.5, 8.0]})
    with pytest.warns(ModelsWarning) as caught:
        with_epoch(trees, "2019")
    assert _chinese(caught.list, "no_epoch_column") == [
        "样木清单没有 epoch 列：全部 3 行按同一次调查处理，期次为 '2019'（可用 "
        "stages.plots.tree_epoch 或 --epoch 指定；复测样地请添加 epoch 列）"
    ]


def test_a_looping_stac_api_is_said_in_chinese() -> None:
    """Page 1 -> page 2 -> page 2 again: paging stops at page 3, and item 1, on pages 1
    and 2, is used once."""

    def search(api: FaultyApi, call: int) -> tuple[int, str, str]:
        if call == 1:
            return 200, GEOJSON, api.page([1, 2], {"page": 2})
        return 200, GEOJSON, api.page([3, 1], {"page": 2})

    req = catalog.SearchRequest(("sentinel-2-l2a",), (100.0, 20.0, 130.0, 30.0), None, None, None)
    with faulty_api(search) as api, pytest.warns(PipelineWarning) as caught:
        catalog.search(req, kind="stac-api", location=api.url)
    loop = _chinese(caught.list, "stac_page_repeated")
    assert loop == [
        f"STAC API {api.url}：第 3 页与前面某一页相同（其“next”链接形成循环）；"
        "已在第 2 页后停止翻页"
    ]
    twice = _chinese(caught.list, "stac_items_repeated")
    assert twice == [f"STAC API {api.url}：有 1 个影像条目重复出现；每个只使用一次"]


def test_the_runner_records_the_code_of_a_models_warning() -> None:
    """ModelsWarning's code and values reach the manifest (``warning_codes``) as those of a
    PipelineWarning do; a warning raised as a string with the class has none."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_epoch(pd.DataFrame({"plot_id": ["P1"]}), "2024")
        warnings.warn("plots: no code here", PipelineWarning, stacklevel=1)
    own, other, codes = sort_warnings(caught)
    assert other == [] and len(own) == 2
    expected: dict[str, Any] = {"code": "no_epoch_column", "values": {"rows": 1, "epoch": "2024"}}
    assert codes == {own[0]: expected}


def test_a_repeat_flights_qa_warnings_are_said_in_chinese_with_the_flight_named() -> None:
    from pipeline.stages.lidar import warn_qa

    qa = {"skipped_tiles": ["e.laz: the tile has no points"], "normalised_input_chunks": [3, 5]}
    with pytest.warns(PipelineWarning) as caught:
        said = warn_qa(qa, 80.0, 60.0, "lidar (2024 flight)")
    assert len(said) == len(caught.list) == 3
    assert [str(w.message) for w in caught.list] == [f"lidar (2024 flight): {m}" for m in said]
    assert _chinese(caught.list, "lidar_tile_skipped") == [
        "lidar (2024 flight)：e.laz: the tile has no points；已跳过该图块"
        "（stages.lidar.allow_skipped_tiles）"
    ]
    assert _chinese(caught.list, "lidar_canopy_implausible")[0].startswith(
        "lidar (2024 flight)：冠层高度不合常理：冠层高度模型第 99 百分位数为 80.0 m，"
        "超过 stages.lidar.max_canopy_height_m = 60 m"
    )
    assert "处理块 3, 5 的点云" in _chinese(caught.list, "lidar_input_normalised")[0]
