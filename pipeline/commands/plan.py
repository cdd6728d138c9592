"""``forest-carbon plan``: how many monitoring plots a project needs, from the maps alone.

    forest-carbon plan --carbon C2019.tif C2024.tif --sd SD2019.tif SD2024.tif \\
        --strata project.gpkg --stratum-field forest_type \\
        [--target 0.10] [--confidence 0.90] [--plot-area-ha 0.0667] [--out plan.csv]

Before going to the field a project developer has the run's carbon maps (Mg C/ha at plot
support, with their calibrated SDs) and the project's strata, but no plot. For each stratum
the maps give the expected mean and SD of the plot densities
(:func:`models.survey.sample_size.prior_from_map`: the spread of the predictions plus their
mean error variance) for the stock at the last epoch and for the stock change (t CO2e/ha;
the SD of the change from the epochs' SDs and ``--correlation`` of their errors, 0 by
default, the larger SD), and CDM AR-TOOL03 with Neyman
allocation (:func:`~models.survey.sample_size.ar_tool03_sample_size`) turns them into plots
per stratum for the target precision. Each stratum needs the larger of the two allocations
(``plots``): the stock is what AR-TOOL03 sizes, the change is what is credited. Strata the
maps do not cover are refused by name. The table goes to ``--out`` (UTF-8 CSV with BOM)
and the console.

From maps alone the change plan is an upper bound: on the demo region (seed 20190701) the
maps ask for about 7,000 plots with the model card's correlation 0.83 and 17,000 with 0,
where the true plot-level spread asks for 736; the stock plan (188 plots) is near the
truth's (134). Plan the change from re-measured pilot plots when there are some.

After the plots are measured, the run's ``estimates/sample_plan.csv`` repeats the plan from
the plots' own SDs (:mod:`pipeline.stages.estimate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.commands import param_option, read_input, write_outputs
from pipeline.config import EstimateParams, StandaloneParams

COLUMNS = (
    "stratum", "area_ha", "quantity", "unit", "mean_per_ha", "sd_per_ha", "n_required",
    "plots_for_quantity", "plots",
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="monitoring plots a project needs (CDM AR-TOOL03) from the carbon maps"
    )
    p.add_argument("--carbon", type=Path, nargs=2, required=True, metavar=("START", "END"),
                   help="carbon density maps (Mg C/ha) of the first and last epoch")  # fmt: skip
    p.add_argument("--sd", type=Path, nargs=2, required=True, metavar=("START", "END"),
                   help="their standard deviation maps (Mg C/ha)")  # fmt: skip
    p.add_argument("--strata", type=Path, required=True,
                   help="the project's strata or parcels (polygons)")  # fmt: skip
    p.add_argument("--stratum-field", required=True,
                   help="the field of --strata naming each polygon's stratum")  # fmt: skip
    param_option(p, "--target", EstimateParams, "target_relative_half_width",
                 help="allowable half-width of the interval as a share of the mean")  # fmt: skip
    param_option(p, "--confidence", EstimateParams, "confidence",
                 help="two-sided confidence level")  # fmt: skip
    param_option(p, "--correlation", StandaloneParams, "epoch_error_correlation",
                 help="correlation of the two epochs' map errors (the model card's "
                 "epoch_error_correlation; 0: the conservative bound)")  # fmt: skip
    p.add_argument("--plot-area-ha", type=float, default=None,
                   help="plot size (ha), for AR-TOOL03's finite population")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the plan here (CSV)")
    p.set_defaults(func=run)


def plan_table(
    carbon: tuple[Any, Any],
    sd: tuple[Any, Any],
    strata: Any,
    *,
    field: str,
    correlation: float,
    target: float,
    confidence: float,
    plot_area_ha: float | None,
    where: str,
) -> pd.DataFrame:
    """The plan (module docstring) of ``strata`` (GeoDataFrame) on the epochs' single-band
    maps (``(y, x)`` DataArrays on one grid, NaN where unmapped)."""
    from models.allometry import co2_per_c
    from models.errors import SurveyError
    from models.survey.sample_size import ar_tool03_sample_size, prior_from_map
    from pipeline.errors import InputDataError
    from pipeline.units import M2_PER_HA
    from pipeline.zonal import coverage_cells

    if field not in strata.columns:
        raise InputDataError(
            f"{where}: no field {field!r} (--stratum-field); its fields are "
            f"{[c for c in strata.columns if c != 'geometry']}"
        )
    c0, c1, s0, s1 = (np.asarray(r.values, dtype=np.float64) for r in (*carbon, *sd))
    if len({b.shape for b in (c0, c1, s0, s1)}) != 1:
        raise InputDataError("--carbon and --sd: the four maps must share one grid")
    crs = str(carbon[0].rio.crs)
    groups = strata.to_crs(crs).dissolve(by=field).reset_index()
    covers = coverage_cells(
        groups, transform=carbon[0].rio.transform(recalc=True), shape=c0.shape, crs=crs
    )
    quantities = {
        "stock": ("Mg C/ha", c1, s1),
        "change": (
            "t CO2e/ha",
            (c1 - c0) * co2_per_c(),
            np.sqrt(np.clip(s0**2 + s1**2 - 2.0 * correlation * s0 * s1, 0.0, None)) * co2_per_c(),
        ),
    }
    names = groups[field].astype(str).tolist()
    areas = groups.geometry.area.to_numpy() / M2_PER_HA
    rows = []
    plots = np.zeros(len(names), dtype=np.intp)
    for quantity, (unit, value, error) in quantities.items():
        moments = []
        for name, cov in zip(names, covers, strict=True):
            try:
                moments.append(
                    prior_from_map(
                        value.reshape(-1)[cov.cell], error.reshape(-1)[cov.cell], cov.fraction
                    )
                )
            except SurveyError as err:
                raise InputDataError(f"{where}: stratum {name!r}: {err}") from None
        mean, spread = (np.array(v) for v in zip(*moments, strict=True))
        try:
            plan = ar_tool03_sample_size(
                areas, spread, mean, relative_error=target, confidence=confidence,
                plot_area_ha=plot_area_ha,
            )  # fmt: skip
        except SurveyError as err:
            raise InputDataError(f"{where}: the {quantity}: {err}") from None
        plots = np.maximum(plots, plan.plots)
        rows += [
            {"stratum": n, "area_ha": a, "quantity": quantity, "unit": unit, "mean_per_ha": m,
             "sd_per_ha": d, "n_required": plan.n_required, "plots_for_quantity": int(k)}
            for n, a, m, d, k in zip(names, areas, mean, spread, plan.plots, strict=True)
        ]  # fmt: skip
    table = pd.DataFrame(rows)
    table["plots"] = table["stratum"].map(dict(zip(names, plots.tolist(), strict=True)))
    return table.loc[:, list(COLUMNS)]


def run(args: argparse.Namespace) -> int:
    from pipeline.sink import as_band, named_band

    def band(path: Path, name: str) -> Any:
        return as_band(named_band(read_input(path), name, source=str(path)), name=str(path))

    c0, c1 = (band(p, "carbon") for p in args.carbon)
    s0, s1 = (band(p, "carbon_sd") for p in args.sd)
    table = plan_table(
        (c0, c1),
        (s0, s1),
        read_input(args.strata),
        field=args.stratum_field,
        correlation=args.correlation,
        target=args.target,
        confidence=args.confidence,
        plot_area_ha=args.plot_area_ha,
        where=f"{args.strata} (--strata)",
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    total = table.drop_duplicates("stratum")["plots"].sum()
    print(f"plots to measure: {total} (each stratum the larger of its stock and change plans)")
    if args.out is not None:
        write_outputs({args.out: table})
    return 0
