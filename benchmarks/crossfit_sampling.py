"""Repeated sampling with the map refitted on every sample: is the cross-fitted
model-assisted estimate of a region's stock valid when its plots also trained the map?

``benchmarks/estimator_sampling.py`` keeps the maps fixed and draws fresh plots, which is
the project sample's situation (its plots never train the map). The region's inventory
plots do train it, so their map values are in-sample fits and the estimate stage
cross-fits them (:func:`models.biomass.cross_fitted_at_plots`,
:mod:`pipeline.stages.estimate`). That can only be validated by drawing a new sample *and
refitting the map on it*, every draw; this harness does, on a simulated region:

1. The population: the region's true carbon density (``truth/carbon_<epoch>.tif``) and
   the run's predictors (``composites/<epoch>.tif``, ``composites/terrain.tif``) on a
   grid coarsened ``--coarsen`` times (block means: the map is refitted and predicted
   every draw, so the grid is kept small), forest land where the run's carbon map has
   values (its share of each coarse cell).
2. One draw: the inventory design's plots (``plots/design.gpkg``, as
   ``estimator_sampling.py`` places them), each plot's true density plus the plots'
   measurement error, and its predictors averaged over the plot square (as the model
   stage extracts them).
3. The map of that draw, as the model stage makes it: the run's chosen satellite
   candidate (``model_card.json``) with the config's hyper-parameters fitted on every
   plot-epoch; its spatially blocked out-of-fold predictions (the config's blocks and
   folds) for the per-epoch offset (mean held-out residual,
   :func:`models.biomass.epoch_corrections`), and the out-of-fold predictions of the random
   split of whole plots for the cross-fitting; the map is the fit plus the offset,
   clipped at 0, over forest land.
4. Estimates by :func:`models.survey.totals.sample_totals` (what the estimate stage runs)
   three times: with the map's values at the plots in sample (what a naive analyst would
   do); cross-fitted, shifted by the out-of-fold minus the in-sample prediction at the
   plot, with the full map's stratum means (the estimate stage before the population
   correction); and cross-fitted with each stratum's map mean corrected by the fold maps'
   population means (:func:`models.survey.crossfit.fold_map_correction`, as the estimate
   stage does it): the fold models predict a systematic sample of about ``--cells`` forest
   cells per epoch (:func:`models.survey.crossfit.systematic_cells`), each cell in the
   stratum whose frame holds its centre.

What it leaves out of the pipeline's map, to stay fast: the LiDAR model inside the LiDAR
block, the common-band fallback, the parcel-class predictors, candidate selection per
draw (the run's chosen candidate is refitted) and the moving-window support (the
coarse cell is the support); and it models carbon density directly (the pipeline
models AGB and converts by a constant factor). The estimator is the same; its validity
does not depend on these.

Printed per quantity and estimator: relative bias, relative RMSE, 90 % interval coverage
with its Monte Carlo SE, the SE ratio (root mean estimated variance over the empirical
SD), the share of draws within 5 % of the truth, and for the corrected estimate the mean
population correction and its own sampling SE against the estimate's.

Usage: ``python benchmarks/crossfit_sampling.py --data data/nanping --run outputs/nanping
[--region nanping] [--draws 500] [--seed 1] [--coarsen 3] [--cells 20000] [--table T.csv]``;
runs with other ``--seed`` s on other cores, each with its ``--table``, are scored together
by the same command with ``--from-tables T1.csv T2.csv ...`` instead of drawing.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from threadpoolctl import threadpool_limits

from benchmarks.estimator_sampling import (
    ESTIMATE_COLUMNS,
    Population,
    draw_centres,
    population,
    print_scores,
    rule_rows,
    score,
    square_means,
)
from models.allometry import co2_per_c
from models.biomass import (
    CandidateName,
    ModelSettings,
    blocked_folds,
    epoch_corrections,
    fold_models,
    make_model,
    plot_random_folds,
    predict_out_of_fold,
)
from models.survey.crossfit import NO_STRATUM, fold_map_correction, systematic_cells
from models.survey.design import StratifiedDesign
from models.survey.totals import sample_totals
from pipeline.config import load_config, region_config_path
from pipeline.contracts import MODEL_CARD_RELPATH, PLOT_BIOMASS_RELPATH, map_relpath
from pipeline.model_steps import settings_from
from pipeline.zonal import Coverage, coverage_cells, weighted_sum


def _coarsen(values: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Block means of ``k`` x ``k`` cells (NaN ignored; all-NaN blocks NaN), edges cut."""
    rows, cols = (values.shape[0] // k) * k, (values.shape[1] // k) * k
    blocks = values[:rows, :cols].reshape(rows // k, k, cols // k, k)
    if not np.isnan(blocks).any():
        return blocks.mean(axis=(1, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks are NaN, as meant
        return np.nanmean(blocks, axis=(1, 3))


def _bands(path: Path, k: int) -> tuple[dict[str, NDArray[np.float64]], Affine, str]:
    """Every band of a raster, coarsened, by its description."""
    with rasterio.open(path) as src:
        out = {
            str(name): _coarsen(src.read(i + 1, out_dtype="float64", masked=True).filled(np.nan), k)
            for i, name in enumerate(src.descriptions)
        }
        return out, src.transform * Affine.scale(k), src.crs.to_string()


#: columns of the table of every draw's estimates (``--table``)
TABLE_COLUMNS = [*ESTIMATE_COLUMNS, "values", "correction", "corr_se"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="simulated region, e.g. data/nanping")
    ap.add_argument("--run", type=Path, required=True, help="pipeline run on it")
    ap.add_argument("--region", default="nanping", help="region config: epochs, model settings")
    ap.add_argument("--config", type=Path, help="config file (instead of --region)")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--coarsen", type=int, default=3, help="grid coarsening factor")
    ap.add_argument(
        "--cells", type=int, default=20000, help="forest cells per epoch for the fold maps' means"
    )
    ap.add_argument("--table", type=Path, help="also write every draw's estimates to this CSV")
    ap.add_argument(
        "--from-tables", type=Path, nargs="+",
        help="score the draws of these --table files (runs with other seeds) instead of drawing",
    )  # fmt: skip
    args = ap.parse_args()
    if args.from_tables:
        args.draws = 0  # the draws are those of the tables
    started = time.perf_counter()
    cfg = load_config(args.config or region_config_path(args.region))
    epochs = [e.name for e in cfg.epochs]
    settings = settings_from(cfg.stages.model)
    card = json.loads((args.run / MODEL_CARD_RELPATH).read_text())
    candidate = card["satellite_model"]["chosen"]
    k = args.coarsen
    truth, share, feats = {}, {}, {}
    terrain, _, _ = _bands(args.run / "composites" / "terrain.tif", k)
    for e in epochs:
        t, transform, crs = _bands(args.data / "truth" / f"carbon_{e}.tif", k)
        truth[e] = np.nan_to_num(next(iter(t.values())))
        with rasterio.open(args.run / map_relpath("carbon", e)) as src:
            mapped = np.isfinite(src.read(1, masked=True).filled(np.nan))
        # forest land: the run's mapped share of each coarse cell
        share[e] = _coarsen(mapped.astype(np.float64), k)
        bands, _, _ = _bands(args.run / "composites" / f"{e}.tif", k)
        feats[e] = {**bands, **terrain}
    names = sorted(set.intersection(*(set(f) for f in feats.values())))
    frames = gpd.read_file(args.data / "plots" / "design.gpkg", layer="strata").to_crs(crs)
    frames = frames[frames["sample"] == "inventory"].reset_index(drop=True)
    plots = gpd.read_file(args.data / "plots" / "plots.gpkg")
    n_plots = plots[plots["sample"] == "inventory"].groupby("stratum").size().to_dict()
    (plot_area_ha,) = plots["plot_area_ha"].unique()
    pb = pd.read_csv(args.run / PLOT_BIOMASS_RELPATH)
    rel_sd = float((pb["carbon_sd_mg_ha"] / pb["carbon_mg_ha"]).median())
    shape = truth[epochs[0]].shape
    zeros = {e: np.zeros(shape) for e in epochs}
    pop = population(
        frames, n_plots, truth=truth, maps=zeros, transform=transform, crs=crs,
        plot_area_ha=float(plot_area_ha),
    )  # fmt: skip
    covs = coverage_cells(frames, transform=transform, shape=shape, crs=crs)
    cell_ha = abs(transform.a * transform.e) / 1e4
    factor = co2_per_c()
    true = pop.true_totals(factor)
    print(
        f"== cross-fit sampling: {args.draws} draws, seed {args.seed}, {k}x coarser grid "
        f"({abs(transform.a):.0f} m, {shape[0]}x{shape[1]}), candidate {candidate}, "
        f"{len(names)} predictors, plots {n_plots}, measurement error {100 * rel_sd:.2f} %"
    )
    cells = {e: np.flatnonzero(share[e] > 0) for e in epochs}
    grids = {e: pd.DataFrame({n: feats[e][n].reshape(-1)[cells[e]] for n in names}) for e in epochs}
    # the fold maps' cell sample: a systematic grid over the forest cells, and the stratum
    # whose frame holds each cell's centre
    strata = rasterize(
        ((g, h) for h, g in enumerate(frames.geometry)), out_shape=shape, transform=transform,
        fill=NO_STRATUM, dtype="int32",
    )  # fmt: skip
    rows_s, cols_s, pi = systematic_cells(
        target_cells=args.cells, candidates=len(cells[epochs[0]]), seed=cfg.seed
    )
    sampled = np.zeros(shape, dtype=bool)
    sampled[rows_s, cols_s] = True
    cell_sample = {e: np.flatnonzero(sampled.reshape(-1)[cells[e]]) for e in epochs}
    cell_strata = {e: strata.reshape(-1)[cells[e][cell_sample[e]]] for e in epochs}
    print(
        f"   fold maps' cell sample: {len(cell_sample[epochs[0]])} forest cells, inclusion "
        f"probability {pi:.4g}"
    )
    rng = np.random.default_rng(args.seed)
    design = pop.design()
    rows = []
    loop_start = time.perf_counter()
    # one thread per fit: on 160 plot-epochs, OpenMP's threads in the gradient boosting
    # cost far more than they save (measured: 20x slower on a loaded 2-core machine)
    with threadpool_limits(limits=1):
        for d in range(args.draws):
            rows.extend(
                _one_draw(
                    d, pop, rng, design=design, epochs=epochs, names=names, feats=feats,
                    grids=grids, cells=cells, share=share, covs=covs, cell_ha=cell_ha,
                    cell_sample=cell_sample, cell_strata=cell_strata, pi=pi,
                    rel_sd=rel_sd, candidate=candidate, settings=settings, seed=cfg.seed,
                    factor=factor, confidence=cfg.stages.estimate.confidence,
                )
            )  # fmt: skip
            if args.table and (d + 1) % 10 == 0:  # every 10 draws: a long run can be cut short
                pd.DataFrame(rows, columns=TABLE_COLUMNS).to_csv(args.table, index=False)
    loop = time.perf_counter() - loop_start
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if args.table:
        table.to_csv(args.table, index=False)
    if args.from_tables:
        # draw numbers made unique across the runs (each run counts from 0)
        parts = [pd.read_csv(t).assign(draw=lambda t, i=i: f"{i}:" + t["draw"].astype(str))
                 for i, t in enumerate(args.from_tables)]  # fmt: skip
        table = pd.concat(parts, ignore_index=True)
        print(f"   scored from {len(args.from_tables)} tables: {table['draw'].nunique()} draws")
    corrected = table[table["values"] == "corrected"]
    print("== population correction of the corrected estimate (mean over draws)")
    for (q, r), part in corrected.groupby(["quantity", "rule"]):
        if r != "difference" or part["correction"].isna().all():
            continue  # the stock change takes the corrected means of its two epochs
        print(
            f"    {q:18s} correction {100 * part['correction'].mean() / true[q]:+6.2f} % of the "
            f"truth (SD {100 * part['correction'].std() / true[q]:.2f} %); its sampling SE "
            f"{100 * (part['corr_se'] / part['se']).mean():.2f} % of the estimate's SE"
        )
    table = table.drop(columns=["correction", "corr_se"])
    for values in ("in_sample", "cross_fitted", "corrected"):
        part = table[table["values"] == values].drop(columns="values")
        print(f"== map values at the plots: {values.replace('_', ' ')}")
        print_scores(
            score(part, true), {q: "Mg C" if q.startswith("stock") else "t CO2e" for q in true}
        )
        within = part.assign(
            err=lambda t: (t["total"] - t["quantity"].map(true)).abs() / t["quantity"].map(true)
        )
        share5 = within.groupby(["quantity", "rule"])["err"].apply(lambda s: (s <= 0.05).mean())
        print("  within 5 % of the truth (share of draws):")
        for (q, r), v in share5.items():
            print(f"    {q:18s} {r:13s} {100 * v:5.1f} %")
    print(
        f"== wall time {time.perf_counter() - started:.1f} s; draws {loop:.1f} s "
        f"({args.draws / max(loop, 1e-9):.2f} draws per second)"
    )


def _one_draw(
    d: int,
    pop: Population,
    rng: np.random.Generator,
    *,
    design: StratifiedDesign,
    epochs: list[str],
    names: list[str],
    feats: Mapping[str, Mapping[str, NDArray[np.float64]]],
    grids: Mapping[str, pd.DataFrame],
    cells: Mapping[str, NDArray[np.int64]],
    share: Mapping[str, NDArray[np.float64]],
    covs: list[Coverage],
    cell_ha: float,
    cell_sample: Mapping[str, NDArray[np.int64]],
    cell_strata: Mapping[str, NDArray[np.int32]],
    pi: float,
    rel_sd: float,
    candidate: CandidateName,
    settings: ModelSettings,
    seed: int,
    factor: float,
    confidence: float,
) -> list[tuple[Any, ...]]:
    """One sample, its refitted map and both sets of estimates (rows for the score)."""
    # plots ordered by stratum, as the design's
    per_stratum = [
        draw_centres(rng, s, s.n_plots, transform=pop.transform, half_side_m=pop.half_side_m)
        for s in pop.strata
    ]
    centres = np.concatenate(per_stratum)

    def at_plots(values: NDArray[np.float64], *, masked: bool = True) -> NDArray[np.float64]:
        """Plot means of densities as the plots see them (inside their frame, ``masked``)
        or of predictors (over the whole square, as the model stage extracts them)."""
        return np.concatenate(
            [
                square_means(
                    s.masked(values) if masked else values, c, transform=pop.transform,
                    half_side_m=pop.half_side_m,
                )
                for s, c in zip(pop.strata, per_stratum, strict=True)
            ]
        )  # fmt: skip

    y = {
        e: at_plots(pop.truth[e]) * (1.0 + rel_sd * rng.standard_normal(len(centres)))
        for e in epochs
    }
    x = pd.concat(
        [pd.DataFrame({n: at_plots(feats[e][n], masked=False) for n in names}) for e in epochs],
        ignore_index=True,
    )
    target = np.concatenate([y[e] for e in epochs])
    plot_epochs = [e for e in epochs for _ in range(len(centres))]
    xm = np.tile(centres[:, 0], len(epochs))
    ym = np.tile(centres[:, 1], len(epochs))

    def factory():
        return make_model(candidate, names, settings=settings, seed=seed)

    # the epoch offsets from the spatially blocked CV, the cross-fitting from the random
    # split of whole plots, as model selection makes them
    blocked = blocked_folds(
        xm, ym, block_m=settings.cv_block_m, n_folds=settings.cv_folds, seed=seed
    )
    oof_blocked = predict_out_of_fold(fold_models(factory, x, target, blocked), x, blocked)
    folds = plot_random_folds(xm, ym, n_folds=settings.cv_folds, seed=seed)
    by_fold = fold_models(factory, x, target, folds)
    oof = predict_out_of_fold(by_fold, x, folds)
    full = factory().fit(x, target)
    fitted = full.predict(x)
    offsets = {
        e: c.offset_mg_ha for e, c in epoch_corrections(target, oof_blocked, plot_epochs).items()
    }
    inside = at_plots(np.ones_like(pop.truth[epochs[0]]))
    in_sample, crossed, means, corrected = {}, {}, {}, {}
    corrections = {}
    n = len(centres)
    for j, e in enumerate(epochs):
        grid = np.zeros(pop.truth[e].shape)
        pred = np.clip(full.predict(grids[e]) + offsets.get(e, 0.0), 0.0, None)
        grid.reshape(-1)[cells[e]] = pred * share[e].reshape(-1)[cells[e]]
        # the fold maps minus the map at the sampled cells (forest share as in the map;
        # cells without a value are 0 in every map)
        sub = grids[e].iloc[cell_sample[e]]
        weight = share[e].reshape(-1)[cells[e][cell_sample[e]]]
        shifts = np.nan_to_num(
            np.column_stack(
                [
                    (
                        np.clip(by_fold[k].predict(sub) + offsets.get(e, 0.0), 0.0, None)
                        - pred[cell_sample[e]]
                    )
                    * weight
                    for k in sorted(by_fold)
                ]
            )
        )
        corrections[e] = fold_map_correction(
            design, folds[j * len(centres) : (j + 1) * len(centres)], cell_stratum=cell_strata[e],
            cell_shift=shifts, cell_ha=cell_ha, inclusion_probability=pi,
        )  # fmt: skip
        means[e] = (
            np.array([weighted_sum(c, grid) for c in covs]) * cell_ha / design.stratum_area_ha
        )
        in_sample[e] = at_plots(grid)
        part = slice(j * n, (j + 1) * n)
        shift = np.clip(oof[part] + offsets.get(e, 0.0), 0.0, None) - np.clip(
            fitted[part] + offsets.get(e, 0.0), 0.0, None
        )
        crossed[e] = in_sample[e] + inside * shift
        corrected[e] = means[e] + corrections[e].mean_per_ha
    rows = []
    for label, values, mean in (
        ("in_sample", in_sample, means),
        ("cross_fitted", crossed, means),
        ("corrected", crossed, corrected),
    ):
        totals = sample_totals(
            design, plot_values=y, map_at_plots=values, map_stratum_mean=mean, epochs=epochs,
            stock_unit="Mg C", change_factor=factor, change_unit="t CO2e", confidence=confidence,
        )  # fmt: skip
        for row in rule_rows(d, totals):
            quantity = row[ESTIMATE_COLUMNS.index("quantity")]
            epoch = quantity.removeprefix("stock_")
            c = corrections.get(epoch)
            if label != "corrected" or c is None:
                rows.append((*row, label, np.nan, np.nan))
                continue
            total_c = float(design.stratum_area_ha @ c.mean_per_ha)
            rows.append((*row, label, total_c, c.total_se(design)))
    return rows


if __name__ == "__main__":
    main()
