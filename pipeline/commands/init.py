"""``forest-carbon init REGION --aoi FILE``: a commented region config for a bureau to fill in.

Reads the AOI (checked as ``run`` checks it, :func:`pipeline.inputs.read_polygons`), takes
the model grid's CRS from the UTM zone of its centre (:func:`pipeline.crs.utm_zone`) and
writes ``configs/regions/REGION.yaml`` (or ``--out``): every setting a region needs, the
inputs it does not have yet commented out with what each must hold and the document that
describes it. The file loads as it is (``forest-carbon check --region REGION`` then says
what is missing); it is never overwritten without ``--force``.

    forest-carbon init jianou --aoi aoi/jianou.geojson --country CN
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: the commented template; ``{...}`` are filled by :func:`render`
TEMPLATE = """\
# {region}: region config written by `forest-carbon init` from {aoi}.
# Fill in the inputs you have (uncomment a line), then `forest-carbon check --region {region}`
# reads every input and names each problem; `forest-carbon run --region {region}` runs.
# The settings and the input files are described in docs/README.md.
region: {region}
country: {country}          # CN: the report is in Chinese (stages.report.language overrides)
aoi: {aoi}
crs: {crs}          # UTM zone of the AOI's centre; a projected CRS in metres
resolution_m: 10
# the epochs to compare: a season of scenes each; the sink is from the first to the last
epochs:
  - {{name: "2019", start: 2019-03-01, end: 2019-11-30, reference_date: 2019-07-01}}
  - {{name: "2024", start: 2024-03-01, end: 2024-11-30, reference_date: 2024-07-01}}
data_dir: data/{region}
output_dir: outputs/{region}
seed: 1
sources:
  # satellite scenes: Earth Search's STAC API, or a local catalog of your own items
  # (docs/scene_catalogs.md): {{kind: local, location: data/{region}/catalog/items.ndjson}}
  catalog: {{kind: earth-search}}
  # airborne LiDAR tiles (LAS/LAZ): a glob, or a .vpc virtual point cloud
  # (docs/input_checks.md); lidar_crs when their headers lack a CRS
  # lidar_tiles: data/{region}/lidar/*.laz
  # the same area flown again at a later epoch (docs/lidar.md)
  # lidar_repeat: {{"2024": data/{region}/lidar_2024/*.laz}}
  # field tree lists, one row per tree (docs/tree_lists.md); CSV in UTF-8 or GBK, or
  # XLSX (the first sheet, or trees_sheet); species in Latin, Chinese or pinyin
  # trees: data/{region}/plots/trees.csv
  # trees_sheet: 样木
  # plot squares with plot_id, sample and stratum (docs/estimation.md)
  # plot_locations: data/{region}/plots/plots.gpkg
  # the plot samples' designs, layer strata (docs/estimation.md)
  # plot_design: data/{region}/plots/design.gpkg
  # parcels (小班): GeoPackage, Shapefile, FlatGeobuf or GeoParquet with parcel_id,
  # land_class and the attributes the roll-ups name (docs/parcel_layers.md)
  # parcels: data/{region}/parcels/parcels.gpkg
  # the layer's own field names for those columns (pipeline name: the layer's field);
  # a Shapefile with Chinese field names needs its .cpg (e.g. GBK)
  # parcel_fields: {{parcel_id: 小班号, land_class: 地类, forest_type: 优势树种}}
  # a carbon project's parcels, for credits (docs/methodologies.md)
  # project_area: data/{region}/parcels/project.gpkg
"""

#: what a region's name may hold: it becomes a file name and folder names
REGION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def render(region: str, *, aoi: Path, crs: str, country: str) -> str:
    """The config text for ``region`` (see :data:`TEMPLATE`)."""
    return TEMPLATE.format(region=region, aoi=aoi.as_posix(), crs=crs, country=country)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a commented region config to fill in")
    p.add_argument("region", help="region name (letters, digits, _ and -)")
    p.add_argument("--aoi", type=Path, required=True, help="the region's AOI polygon file")
    p.add_argument("--country", default="CN", help="ISO country code (CN: Chinese report)")
    p.add_argument("--out", type=Path, help="config file (default configs/regions/REGION.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import pyproj

    from pipeline.config import load_config, region_config_path
    from pipeline.crs import GENERIC_ADVICE, utm_zone
    from pipeline.errors import ConfigError
    from pipeline.inputs import read_polygons
    from pipeline.io import atomic_path

    if not REGION_NAME.match(args.region):
        raise ConfigError(
            f"init: region name {args.region!r}: use letters, digits, _ and - (it names the "
            "config file and the data and output folders)"
        )
    out: Path = args.out or region_config_path(args.region)
    if out.exists() and not args.force:
        raise ConfigError(f"init: {out} exists; edit it, or give --force to overwrite it")
    aoi = read_polygons(args.aoi, setting="--aoi")
    crs = utm_zone(pyproj.CRS(aoi.crs), tuple(aoi.total_bounds))
    if crs is None:
        raise ConfigError(f"init: {args.aoi} (--aoi): the AOI's UTM zone cannot be told; "
                          f"{GENERIC_ADVICE}")  # fmt: skip
    with atomic_path(out) as tmp:
        tmp.write_text(
            render(args.region, aoi=args.aoi, crs=crs, country=args.country), encoding="utf-8"
        )
        load_config(tmp)  # the file loads as it is, or nothing is written
    print(f"{out}: written (crs {crs}); fill in the inputs, then forest-carbon check")
    return 0
