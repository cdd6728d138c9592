"""A bureau's own files as it holds them (issue #17): tree lists naming species in Chinese
or pinyin, parcel layers with their own field names, tree lists in XLSX.

Each test builds its input from the tiny simulated region and goes through
``forest-carbon check`` (what ``run`` checks first), or the reader the stages use.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
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


# ------------------------------------------------------------------ parcel layers
#: the parcel layer's fields as a Chinese bureau names them
BUREAU_FIELDS = {"parcel_id": "小班号", "land_class": "地类", "forest_type": "优势树种"}


def _bureau_layer(tiny_data: Path, path: Path, **write: object) -> gpd.GeoDataFrame:
    """The tiny parcel layer with the bureau's field names, written to ``path``."""
    parcels = gpd.read_file(tiny_data / "parcels" / "parcels.gpkg")
    renamed = parcels.rename(columns=BUREAU_FIELDS)
    if path.suffix == ".shp":  # a DBF field name holds at most 10 bytes
        renamed = renamed[[c for c in renamed.columns if len(c.encode("gbk")) <= 10]]
    if path.suffix == ".parquet":
        renamed.to_parquet(path)
    else:
        renamed.to_file(path, **write)  # type: ignore[arg-type]
    return parcels


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("parcels.shp", {"encoding": "GBK"}),
        ("parcels.gpkg", {}),
        ("parcels.fgb", {}),
        ("parcels.parquet", {}),
    ],
    ids=["shapefile-gbk", "geopackage", "flatgeobuf", "geoparquet"],
)
def test_a_parcel_layer_with_its_own_field_names_reads_as_the_pipelines(
    name: str,
    write: dict[str, object],
    tiny_config: Path,
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline import io
    from pipeline.config import load_config
    from pipeline.inputs import layer_fields

    path = tmp_path / name
    original = _bureau_layer(tiny_data, path, **write)
    if name.endswith(".shp"):
        # what makes it a Chinese bureau's Shapefile: a .cpg naming GBK and GBK bytes
        assert path.with_suffix(".cpg").read_text().strip().upper() == "GBK"
        dbf = path.with_suffix(".dbf").read_bytes()
        assert "小班号".encode("gbk") in dbf and "小班号".encode() not in dbf
    cfg = _config(tiny_config, parcels=path, parcel_fields=BUREAU_FIELDS)
    code, said = _check(cfg, capsys)
    assert code == 0, said
    # what a stage gets: the runner's call (io.read_input with the layer's mapping)
    sources = load_config(cfg).sources
    got = io.read_input(path, chunk_px=256, fields=layer_fields(sources, path))
    # (FlatGeobuf's spatial index orders the features anew)
    columns = ["land_class", "forest_type"]
    pd.testing.assert_frame_equal(
        pd.DataFrame(got.set_index("parcel_id")[columns]).sort_index(),
        pd.DataFrame(original.set_index("parcel_id")[columns]).sort_index(),
        check_dtype=False,
    )
    assert got.geometry.area.sum() == pytest.approx(original.geometry.area.sum(), rel=1e-9)
    # the project layer keeps the pipeline's names (parcel_id): read as it is
    assert sources.project_area is not None
    project = io.read_input(
        sources.project_area, chunk_px=256, fields=layer_fields(sources, sources.project_area)
    )
    assert "parcel_id" in project.columns


def test_a_parcel_layer_without_the_mapped_id_field_is_refused_naming_both(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An acceptance point of issue #17: the file and the field are named."""
    path = tmp_path / "parcels.shp"
    _bureau_layer(tiny_data, path, encoding="GBK")
    fields = {**BUREAU_FIELDS, "parcel_id": "小班编号"}
    code, said = _check(_config(tiny_config, parcels=path, parcel_fields=fields), capsys)
    assert code == 2
    assert (
        f"{path} (sources.parcels): no field '小班编号' (sources.parcel_fields.parcel_id)" in said
    )
    assert "'小班号'" in said and "Traceback" not in said
    assert ".cpg" not in said  # it has one: no advice on encodings


def test_a_shapefile_without_its_cpg_says_how_its_encoding_is_told(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "parcels.shp"
    _bureau_layer(tiny_data, path, encoding="GBK")
    path.with_suffix(".cpg").unlink()
    code, said = _check(_config(tiny_config, parcels=path, parcel_fields=BUREAU_FIELDS), capsys)
    # read as ISO-8859-1, 小班号 is garbled: the first mapped field is not found
    assert code == 2 and "(sources.parcel_fields." in said
    assert "the Shapefile has no .cpg file" in said and "(e.g. one line GBK)" in said


def test_a_field_mapped_to_two_names_is_a_config_error(
    tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields = {"parcel_id": "小班号", "compartment": "小班号"}
    code, said = _check(_config(tiny_config, parcel_fields=fields), capsys)
    assert code == 2 and "sources.parcel_fields" in said and "'小班号'" in said


def test_init_writes_the_field_mapping_commented_and_it_loads_uncommented(
    tiny_data: Path, tmp_path: Path
) -> None:
    from pipeline.commands.init import render
    from pipeline.config import parse_config

    text = render("bureau", aoi=tiny_data / "aoi.geojson", crs="EPSG:32650", country="CN")
    lines = [ln for ln in text.splitlines() if "parcel_fields:" in ln]
    assert len(lines) == 1 and lines[0].lstrip().startswith("# parcel_fields:")
    uncommented = text.replace("# parcel_fields:", "parcel_fields:")
    config = parse_config(yaml.safe_load(uncommented), source="init")
    assert config.sources.parcel_fields["parcel_id"] == "小班号"


def test_a_shapefiles_checksum_covers_its_attributes_and_encoding(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Editing the .dbf (attributes) or .cpg of a Shapefile changes the input's checksum,
    so the stages that read it are not skipped as unchanged."""
    from pipeline import io

    path = tmp_path / "parcels.shp"
    _bureau_layer(tiny_data, path, encoding="GBK")
    files = io.input_file_sha256(path)
    assert {p.suffix for p in files} == {".shp", ".dbf", ".shx", ".prj", ".cpg"}
    before = io.input_checksum(path)
    layer = gpd.read_file(path)
    layer.loc[0, "地类"] = "farmland"
    layer.to_file(path, encoding="GBK")
    assert io.input_checksum(path) != before


# ------------------------------------------------------------------ XLSX tree lists
def _workbook(trees: pd.DataFrame, path: Path, *, sheets: tuple[str, ...] = ("样木",)) -> None:
    """``trees`` written cell by cell with openpyxl into sheet ``sheets[-1]``, after
    sheets holding something else (a cover sheet, as bureaus' workbooks have)."""
    from openpyxl import Workbook

    book = Workbook()
    assert book.active is not None
    book.remove(book.active)
    for name in sheets[:-1]:
        book.create_sheet(name).append(["南平市森林资源调查", "2024"])
    sheet = book.create_sheet(sheets[-1])
    sheet.append(list(trees.columns))
    for row in trees.itertuples(index=False):
        sheet.append([None if pd.isna(v) else v for v in row])
    book.save(path)


@pytest.mark.parametrize("sheets", [("样木",), ("封面", "样木")], ids=["first", "named"])
def test_an_xlsx_tree_list_reads_as_its_csv_and_runs_the_plots_stage(
    sheets: tuple[str, ...],
    tiny_config: Path,
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline import io
    from pipeline.config import load_config
    from pipeline.inputs import read_settings

    csv = tiny_data / "plots" / "trees.csv"
    trees = pd.read_csv(csv)
    xlsx = tmp_path / "trees.xlsx"
    _workbook(trees, xlsx, sheets=sheets)
    sheet = sheets[-1] if len(sheets) > 1 else None
    cfg = _config(tiny_config, trees=xlsx, trees_sheet=sheet)
    code, said = _check(cfg, capsys)
    assert code == 0, said
    config = load_config(cfg)
    got = io.read_input(xlsx, chunk_px=256, **read_settings(config.sources, xlsx))
    pd.testing.assert_frame_equal(got, io.read_input(csv, chunk_px=256), check_dtype=False)
    # the stand-alone plots command on the workbook gives the plots of the CSV
    out_x, out_c = tmp_path / "from_xlsx", tmp_path / "from_csv"
    plots = str(tiny_data / "plots" / "plots.gpkg")
    argv = ["plots", "--plots", plots, "--draws", "20"]
    sheet_args = ["--sheet", sheet] if sheet else []
    assert main([*argv, str(xlsx), *sheet_args, "--out", str(out_x)]) == 0
    assert main([*argv, str(csv), "--out", str(out_c)]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(out_x / "plot_biomass.csv"), pd.read_csv(out_c / "plot_biomass.csv")
    )


def test_an_xlsx_tree_list_is_checked_for_its_sheet_and_columns(
    tiny_config: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trees = pd.read_csv(tiny_data / "plots" / "trees.csv")
    xlsx = tmp_path / "trees.xlsx"
    _workbook(trees, xlsx, sheets=("封面", "样木"))
    code, said = _check(_config(tiny_config, trees=xlsx, trees_sheet="Sheet1"), capsys)
    assert code == 2
    assert f"{xlsx}: no sheet 'Sheet1' (sources.trees_sheet or --sheet)" in said
    assert "['封面', '样木']" in said
    # the first sheet is the cover: no tree-list columns, refused naming them
    code, said = _check(_config(tiny_config, trees=xlsx, trees_sheet=None), capsys)
    assert code == 2
    assert f"{xlsx} (sources.trees): tree list lacks column(s) ['plot_id', 'tree_id'" in said
    # a column renamed: the same check as a CSV's
    renamed = tmp_path / "renamed.csv"
    trees.rename(columns={"species": "树种"}).to_csv(renamed, index=False)
    code, said = _check(_config(tiny_config, trees=renamed, trees_sheet=None), capsys)
    assert code == 2 and "lacks column(s) ['species']" in said and "'树种'" in said
    xlsx.write_bytes(b"plot_id,tree_id\n")
    code, said = _check(_config(tiny_config, trees=xlsx), capsys)
    assert code == 2 and "not an XLSX workbook" in said


def test_a_run_reads_the_bureaus_workbook_as_its_csv(
    tiny_config: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """The runner reads the tree list through the config's settings (the sheet): the
    ``plots`` stage of a run on a workbook with Chinese species names gives the plots of
    the same run on the CSV in Latin names."""
    trees = pd.read_csv(tiny_data / "plots" / "trees.csv")
    zh = {"Cunninghamia lanceolata": "杉木", "Pinus massoniana": "马尾松", "Schima superba": "木荷"}
    xlsx = tmp_path / "trees.xlsx"
    _workbook(trees.replace({"species": zh}), xlsx, sheets=("封面", "样木"))
    runs = {}
    for name, sources in {
        "csv": {},
        "xlsx": {"trees": xlsx, "trees_sheet": "样木"},
    }.items():
        cfg = _config(tiny_config, **sources)
        config = yaml.safe_load(cfg.read_text())
        config["output_dir"] = str(tmp_path / name)
        cfg.write_text(yaml.safe_dump(config, allow_unicode=True))
        assert main(["run", "--config", str(cfg), "--stages", "plots", "--quiet"]) == 0
        runs[name] = tmp_path / name / "plots"
    pd.testing.assert_frame_equal(
        pd.read_csv(runs["xlsx"] / "plot_biomass.csv"),
        pd.read_csv(runs["csv"] / "plot_biomass.csv"),
    )
    qa = pd.read_csv(runs["xlsx"] / "qa.csv")
    assert set(qa.loc[qa["action"] == "translate", "value"]) == set(zh.values()) & set(
        trees["species"].replace(zh)
    )
