"""``forest-carbon plots TREES.csv [--plots PLOTS.gpkg] [--equation NAME] --out DIR``.

Runs the ``plots`` stage on explicit files: writes DIR/trees.csv, DIR/plot_biomass.csv and
DIR/qa.csv. ``--list-equations`` prints the allometric registry with citations and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands import make_params, param_option, read_input, write_outputs
from pipeline.config import PlotsParams, StandaloneParams
from pipeline.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plots",
        help="plot biomass and carbon from field tree lists",
        description="Plot biomass and carbon from a field tree list. Tree-list columns: "
        "plot_id, tree_id, species (Latin binomial), dbh_cm (required); epoch (optional: "
        "without it the list is one census, named by --epoch), height_m, "
        "wood_density_g_cm3, age_yr (bamboo culm age), plot_area_ha (unless --plots gives "
        "areas). One row with plot_id, epoch and neither species nor dbh_cm records a plot "
        "measured with no trees.",
    )
    p.add_argument("trees", type=Path, nargs="?", help="tree list (CSV, XLSX or GeoPackage)")
    p.add_argument("--sheet", help="sheet of an XLSX tree list (default: the first)")
    p.add_argument("--plots", type=Path, help="plot layer with plot_id and plot_area_ha")
    param_option(
        p,
        "--equation",
        PlotsParams,
        "equation",
        help="allometric equation for all trees ('species': the species defaults)",
    )
    param_option(
        p, "--chave-e", PlotsParams, "chave_e", type=float, help="E index for Chave 2014 eq. 7"
    )
    param_option(p, "--draws", PlotsParams, "mc_draws", help="Monte Carlo draws")
    param_option(p, "--seed", StandaloneParams, "seed", help="Monte Carlo seed")
    param_option(
        p,
        "--epoch",
        PlotsParams,
        "tree_epoch",
        help="epoch of a tree list without an epoch column (not given: 'single')",
    )
    param_option(
        p,
        "--hd-model",
        PlotsParams,
        "hd_model",
        help="height-diameter model for trees without height ('best': lowest RSE)",
    )
    p.add_argument("--list-equations", action="store_true", help="print the equation registry")
    p.add_argument("--out", type=Path, help="output folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from models.allometry import list_equations
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
    params = make_params(
        PlotsParams,
        command="plots",
        equation=args.equation,
        chave_e=args.chave_e,
        mc_draws=args.draws,
        seed=args.seed,
        hd_model=args.hd_model,
        tree_epoch=args.epoch,
    )
    outputs = plots(
        params,
        trees=read_input(args.trees, sheet=args.sheet),
        plot_locations=read_input(args.plots) if args.plots else None,
    )
    write_outputs({args.out / Path(rel).name: df for rel, df in outputs.items()})
    summary = outputs[PLOT_BIOMASS_RELPATH]
    print(
        f"{len(summary)} plot-epochs, {len(outputs[PLOTS_QA_RELPATH])} QA rows -> {args.out}",
        file=sys.stderr,
    )
    return 0
