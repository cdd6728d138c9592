"""``forest-carbon plots TREES.csv [--plots PLOTS.gpkg] [--equation NAME] --out DIR``.

Runs the ``plots`` stage on explicit files: writes DIR/trees.csv, DIR/plot_biomass.csv and
DIR/qa.csv. ``--list-equations`` prints the allometric registry with citations and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import ConfigError, InputDataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plots", help="plot biomass and carbon from field tree lists")
    p.add_argument("trees", type=Path, nargs="?", help="tree list (CSV or GeoPackage)")
    p.add_argument("--plots", type=Path, help="plot layer with plot_id and plot_area_ha")
    p.add_argument(
        "--equation",
        default="species",
        help="allometric equation for all trees (default: species defaults)",
    )
    p.add_argument("--chave-e", type=float, default=None, help="E index for Chave 2014 eq. 7")
    p.add_argument("--draws", type=int, default=1000, help="Monte Carlo draws (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument(
        "--hd-model",
        default="best",
        choices=["best", "loglog", "log2", "michaelis", "weibull"],
        help="height-diameter model for trees without height (default: lowest RSE)",
    )
    p.add_argument("--list-equations", action="store_true", help="print the equation registry")
    p.add_argument("--out", type=Path, help="output folder")
    p.set_defaults(func=main)


def _read_table(path: Path) -> object:
    import geopandas as gpd
    import pandas as pd

    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    if path.suffix.lower() in (".gpkg", ".geojson", ".shp"):
        return gpd.read_file(path)
    return pd.read_csv(path)


def main(args: argparse.Namespace) -> int:
    from models.allometry import list_equations
    from pipeline.config import PlotsParams
    from pipeline.contracts import PLOT_BIOMASS_RELPATH, PLOTS_QA_RELPATH
    from pipeline.stages.plots import plots

    if args.list_equations:
        for row in list_equations().itertuples():
            print(
                f"{row.name} [{row.status}] {row.component}, {row.output_unit}; form {row.form}; "
                f"coefficients {row.coefficients}; domain {row.domain or 'n/a'}; "
                f"rse_log {row.rse_log}"
            )
            print(f"    {row.citation}")
        return 0
    if args.trees is None or args.out is None:
        raise ConfigError("plots: give TREES and --out DIR (or --list-equations)")
    try:
        params = PlotsParams(
            equation=args.equation,
            chave_e=args.chave_e,
            mc_draws=args.draws,
            seed=args.seed,
            hd_model=args.hd_model,
        )
    except ValueError as err:
        raise ConfigError(f"plots: {err}") from None
    trees = _read_table(args.trees)
    locations = _read_table(args.plots) if args.plots else None
    outputs = plots(params, trees=trees, plot_locations=locations)
    args.out.mkdir(parents=True, exist_ok=True)
    for rel, df in outputs.items():
        path = args.out / Path(rel).name
        tmp = path.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(path)
    summary = outputs[PLOT_BIOMASS_RELPATH]
    print(
        f"{len(summary)} plot-epochs, {len(outputs[PLOTS_QA_RELPATH])} QA rows -> {args.out}",
        file=sys.stderr,
    )
    return 0
