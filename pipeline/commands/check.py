"""``forest-carbon check``: read and check a region's inputs without running anything.

The same checks ``run`` makes before any stage (:func:`pipeline.inputs.check_inputs`):
exit 2 with the first problem (file, feature or setting, and what to do), or exit 0 with
the warnings, if any, and a table of what was found for each configured input (format,
CRS, count, extent and its overlap with the AOI's; for a tree list its plots, epochs and
the trees whose species the species table knows). Writes nothing.

    forest-carbon check --config configs/regions/myregion.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_config, region_config_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a region's inputs (what run checks first)")
    p.add_argument("--region", help="region name: loads configs/regions/REGION.yaml")
    p.add_argument("--config", type=Path, help="config file (instead of --region)")
    p.add_argument("--stages", help="check only the inputs of these stages (comma-separated)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.inputs import check_inputs
    from pipeline.runner import Runner, RunOptions
    from pipeline.stages import STAGES

    if (args.region is None) == (args.config is None):
        raise ConfigError("check: give exactly one of --region NAME or --config FILE")
    path = args.config or region_config_path(args.region)
    config = load_config(path)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else None
    # the runner resolves --stages as run does (it touches no file until it runs)
    runner = Runner(config, STAGES, options=RunOptions(stages=stages, quiet=True))
    messages = [w.message for w in check_inputs(config, [s.name for s in runner.selected()])]
    for message in messages:
        print(f"warning: {message}")
    print(found_table(config))
    print(f"{path}: inputs checked, {len(messages)} warning(s)")
    return 0


def catalog_coverage(config: object) -> str:
    """Per epoch, the scenes a local catalog holds for it (the acquire stage's own
    search): how many, from which platforms, between which dates; a remote catalog is
    searched by the run, not here (no network in a check)."""
    from collections import Counter

    from pipeline import catalog
    from pipeline.config import Config
    from pipeline.errors import CatalogError
    from pipeline.inputs import read_layer
    from pipeline.stages.acquire import AcquireJob, aoi_bbox_wgs84

    assert isinstance(config, Config)
    if config.sources.catalog.kind != "local":
        return "a remote catalog: searched when the run starts"
    job = AcquireJob.from_config(config)
    bbox = aoi_bbox_wgs84(read_layer(config.aoi))
    parts = []
    for epoch in job.epochs:
        req = job.epoch_request(bbox, epoch)
        try:
            items = list(catalog.search(req, kind="local", location=job.source.location))
        except CatalogError:
            parts.append(f"epoch {epoch.name}: NO scene in {epoch.start}..{epoch.end}")
            continue
        dates = sorted(i.datetime.date() for i in items if i.datetime is not None)
        platforms = Counter(str(i.properties.get("platform", "?")) for i in items)
        which = ", ".join(f"{n} {p}" for p, n in sorted(platforms.items()))
        span = f"{dates[0]}..{dates[-1]}" if dates else "undated"
        parts.append(f"epoch {epoch.name}: {len(items)} scenes ({which}) {span}")
    return "; ".join(parts)


def found_table(config: object) -> str:
    """What each configured input holds, one line per input (module docstring)."""
    import geopandas as gpd
    import pandas as pd

    from models.allometry import is_known_species, normalise_species
    from pipeline.config import Config
    from pipeline.inputs import layer_fields, map_fields, read_layer
    from pipeline.io import read_table
    from pipeline.lidar.index import tiles_of
    from pipeline.subcompartment import has_record, recorded_stand

    assert isinstance(config, Config)
    s = config.sources
    aoi = read_layer(config.aoi).to_crs(config.crs).union_all()

    def vector(layer: gpd.GeoDataFrame) -> str:
        inside = layer.to_crs(config.crs).intersects(aoi).mean() if len(layer) else 0.0
        crs = layer.crs.to_string() if layer.crs is not None else "no CRS"
        fields = [c for c in layer.columns if c != layer.geometry.name]
        return f"{len(layer)} features, {crs}, {inside:.0%} of them meet the AOI; fields {fields}"

    def record(layer: gpd.GeoDataFrame, path: Path) -> str:
        """The sub-compartment record, under the pipeline's names (sources.parcel_fields)."""
        mapping = layer_fields(s, path)
        if mapping is not None:
            layer = map_fields(layer, mapping, path=path, where=str(path))
        if not has_record(layer):
            return "; no sub-compartment record (docs/parcel_layers.md)"
        stands = recorded_stand(layer)
        years = sorted({int(y) for y in layer.get("survey_year", pd.Series()).dropna()})
        return f"; sub-compartment record: {int(stands.sum())} stands, survey years {years}"

    rows: list[tuple[str, object, str]] = [("aoi", config.aoi, vector(read_layer(config.aoi)))]
    for name in ("plot_locations", "plot_design", "parcels", "project_area"):
        path = getattr(s, name)
        if path is not None:
            layer = read_layer(path)
            extra = record(layer, path) if name == "parcels" else ""
            rows.append((f"sources.{name}", path, vector(layer) + extra))
    if s.trees is not None:
        trees = read_table(s.trees, sheet=s.trees_sheet)
        known = trees["species"].map(lambda v: is_known_species(normalise_species(v)))
        epochs = sorted(trees["epoch"].astype(str).unique()) if "epoch" in trees else ["one"]
        rows.append(("sources.trees", s.trees,
                     f"{len(trees)} trees in {trees['plot_id'].nunique()} plots, epochs "
                     f"{epochs}; {known.mean():.0%} of the trees of species in the species "
                     "table"))  # fmt: skip
    if s.lidar_tiles is not None:
        tiles = tiles_of(s.lidar_tiles)
        rows.append(("sources.lidar_tiles", s.lidar_tiles, f"{len(tiles)} tile(s)"))
        for epoch, spec in s.lidar_repeat.items():
            setting = f"sources.lidar_repeat.{epoch}"
            rows.append((setting, spec, f"{len(tiles_of(spec, setting=setting))} tile(s)"))
    where = s.catalog.location or s.catalog.kind
    rows.append(("sources.catalog", where, f"{s.catalog.kind}, collections "
                 f"{list(s.catalog.collections)}; {catalog_coverage(config)}"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {k:<{width}}  {p}: {what}" for k, p, what in rows)
