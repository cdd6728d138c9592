"""Accuracy of a run on a simulated region against the region's truth.

Prints the figures the issues ask for, stage by stage: composite reflectance error and
cloud residue, DTM/CHM error under canopy, plot AGB bias and Monte Carlo coverage,
pixel and parcel AGB/carbon error and interval coverage, the spatial-CV estimate next to
the true error, and the per-parcel sink against truth. Only tests and this script read
``truth/``.

Usage: ``python benchmarks/accuracy_demo.py [--region nanping | --config FILE]
[--run outputs/nanping]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import from_bounds
from scipy.ndimage import uniform_filter

from models.allometry import co2_per_c
from models.survey.totals import change_quantity, stock_quantity
from pipeline.config import load_config, region_config_path
from pipeline.contracts import (
    CREDITS_RELPATH,
    DECLARED_ID,
    ESTIMATES_RELPATH,
    LIDAR_CHM_RELPATH,
    LIDAR_DTM_RELPATH,
    MODEL_CARD_RELPATH,
    PARCEL_SINK_CSV_RELPATH,
    PLOT_BIOMASS_RELPATH,
    PROJECT_SAMPLE,
    TOTAL_ID,
    composite_relpath,
    credits_job,
    domain_sample,
    items_relpath,
    lidar_repeat_relpath,
    map_relpath,
    with_project_sample,
)
from pipeline.units import M2_PER_HA
from pipeline.zonal import coverage_cells, weighted_sum


def read_on(path: Path, ref: Path, band: int = 1) -> np.ndarray:
    """Band of ``path`` on the window of ``ref``'s bounds (same resolution and alignment)."""
    with rasterio.open(ref) as r:
        bounds = r.bounds
        shape = (r.height, r.width)
    with rasterio.open(path) as src:
        win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(band, window=win, boundless=True, fill_value=np.nan, out_dtype="float64")
    return data[: shape[0], : shape[1]]


def read(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band, out_dtype="float64", masked=True).filled(np.nan)


def band_index(path: Path, name: str) -> int:
    with rasterio.open(path) as src:
        return src.descriptions.index(name) + 1


def composites(run: Path, truth: Path, epochs: list[str]) -> None:
    print("== composite: median |composite - clear-sky truth| per band")
    for e in epochs:
        comp, ref = run / composite_relpath(e), truth / f"reflectance_{e}.tif"
        with rasterio.open(ref) as r:
            names = r.descriptions
        errs = []
        for i, name in enumerate(names, start=1):
            d = read(comp, band_index(comp, name)) - read(ref, i)
            errs.append(f"{name} {np.nanmedian(np.abs(d)):.4f}")
        # a cloud left in the composite is bright in blue; count pixels whose blue exceeds
        # the clear-sky truth by 0.05 where some scene of the epoch was clear
        items = json.loads((run / items_relpath(e)).read_text())["features"]
        clear_any = None
        for it in items:
            p = truth / "clear" / f"{it['id']}.tif"
            if p.is_file() and it["collection"] == "sentinel-2-l2a":
                c = read(p) == 1
                clear_any = c if clear_any is None else clear_any | c
        blue = read(comp, band_index(comp, "blue")) - read(ref, 1)
        residue = np.mean(blue[clear_any] > 0.05) if clear_any is not None else float("nan")
        missing = np.mean(np.isnan(blue[clear_any])) if clear_any is not None else float("nan")
        print(f"  {e}: " + ", ".join(errs))
        print(f"  {e}: cloud residue where a scene was clear {residue:.4%}, no value {missing:.4%}")


def lidar(run: Path, truth: Path, epoch: str, repeats: list[str]) -> None:
    print("== lidar: DTM and CHM against truth at the LiDAR resolution")
    ref = truth / "dem_lidar.tif"
    dem = read(ref)
    dtm = read_on(run / LIDAR_DTM_RELPATH, ref)
    chm_true = read_on(truth / f"chm_lidar_{epoch}.tif", ref)
    chm = read_on(run / LIDAR_CHM_RELPATH, ref)
    under = chm_true > 2
    d = dtm - dem
    ok = np.isfinite(d)
    print(
        f"  DTM RMSE {np.sqrt(np.nanmean(d[ok] ** 2)):.3f} m (all), under canopy "
        f"{np.sqrt(np.nanmean(d[ok & under] ** 2)):.3f} m, bias {np.nanmean(d[ok]):+.3f} m"
    )
    flights = [(epoch, chm, chm_true)] + [
        (
            e,
            read_on(run / lidar_repeat_relpath("chm", e), ref),
            read_on(truth / f"chm_lidar_{e}.tif", ref),
        )
        for e in repeats
    ]
    for e, est, true in flights:
        c = est - true
        ok = np.isfinite(c)
        print(
            f"  CHM {e} RMSE {np.sqrt(np.mean(c[ok] ** 2)):.3f} m, bias {np.mean(c[ok]):+.3f} m "
            f"({ok.sum()} cells)"
        )
    for e, est, true in flights[1:]:
        grew, grew_true = est - chm, true - chm_true
        ok = np.isfinite(grew) & np.isfinite(grew_true)
        print(
            f"  height growth {epoch}->{e} (CHM difference, {ok.sum()} cells flown twice): "
            f"mean {np.mean(grew[ok]):+.2f} m vs truth {np.mean(grew_true[ok]):+.2f} m, "
            f"RMSE {np.sqrt(np.mean((grew[ok] - grew_true[ok]) ** 2)):.2f} m"
        )


def plots(run: Path, truth: Path) -> None:
    print("== plots: plot AGB against the error-free trees")
    est = pd.read_csv(run / PLOT_BIOMASS_RELPATH)
    tru = pd.read_csv(truth / "plots.csv")
    m = est.merge(tru, on=["plot_id", "epoch"], suffixes=("", "_true"))
    bias = m["agb_mg_ha"].sum() / m["agb_mg_ha_true"].sum() - 1
    truth = m["agb_mg_ha_true"]
    inside = (m["agb_p05_mg_ha"] <= truth) & (truth <= m["agb_p95_mg_ha"])
    rmse = np.sqrt(np.mean((m["agb_mg_ha"] - m["agb_mg_ha_true"]) ** 2))
    print(
        f"  {len(m)} plot-epochs: bias {bias:+.2%}, RMSE {rmse:.1f} Mg/ha, "
        f"90% MC interval covers truth in {inside.mean():.1%}"
    )


def maps(run: Path, truth: Path, epochs: list[str], window_px: int) -> None:
    print("== maps: AGB and carbon against truth (the maps cover forest land only)")
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())
    sat = card["satellite_model"]
    cv = sat["candidates"][sat["chosen"]]
    true_sq: list[np.ndarray] = []
    for e in epochs:
        agb = read(run / map_relpath("agb", e))
        true = read(truth / f"agb_{e}.tif")
        ok = np.isfinite(agb) & np.isfinite(true)
        d = agb - true
        true_w = uniform_filter(np.nan_to_num(true), size=window_px, mode="nearest")
        dw = agb - true_w
        # bands 1-2: the cell's own interval; 3-4: the window estimate's (the maps' support)
        iv = run / map_relpath("agb_interval", e)
        lo, hi, lo_w, hi_w = (read(iv, b) for b in (1, 2, 3, 4))
        cov = np.mean((lo[ok] <= true[ok]) & (true[ok] <= hi[ok]))
        cov_w = np.mean((lo_w[ok] <= true_w[ok]) & (true_w[ok] <= hi_w[ok]))
        print(
            f"  {e}: pixel AGB RMSE {np.sqrt(np.mean(d[ok] ** 2)):.1f} Mg/ha, bias "
            f"{np.mean(d[ok]):+.1f}; against the {window_px}x{window_px}-cell truth mean "
            f"(the maps' support) RMSE {np.sqrt(np.mean(dw[ok] ** 2)):.1f}, bias "
            f"{np.mean(dw[ok]):+.1f}; 90% interval coverage {cov:.1%} (pixel), {cov_w:.1%} "
            "(window)"
        )
        satellite = read(run / map_relpath("quality", e), 1) >= 2  # satellite-model cells
        true_sq.append(dw[ok & satellite] ** 2)
        carbon = read(run / map_relpath("carbon", e))
        carbon_true = read(truth / f"carbon_{e}.tif")
        cell_ha = 0.01
        mapped = np.isfinite(carbon)
        tot = np.nansum(carbon) * cell_ha
        tot_forest = np.nansum(carbon_true[mapped]) * cell_ha
        tot_true = np.nansum(carbon_true) * cell_ha
        # the maps cover forest land (the parcel layer's land classes) only: compare them
        # with the truth on the same cells; the rest of the AOI's truth is shown apart
        print(
            f"  {e}: AOI forest-land carbon {tot:,.0f} Mg C vs truth on the same cells "
            f"{tot_forest:,.0f} ({tot / tot_forest - 1:+.2%}); truth outside forest land "
            f"{tot_true - tot_forest:,.0f} Mg C ({(tot_true - tot_forest) / tot_true:.1%} of "
            f"the AOI's {tot_true:,.0f}; map vs the whole AOI {tot / tot_true - 1:+.2%})"
        )
    change_by_lidar_cover(run, truth, epochs)
    true_rmse = float(np.sqrt(np.mean(np.concatenate(true_sq))))
    blocked, naive = cv["spatial_cv"]["rmse_mg_ha"], cv["random_cv"]["rmse_mg_ha"]
    print(
        f"  satellite model ({sat['training']['source']}): true RMSE at its cells (map "
        f"support) {true_rmse:.1f} Mg/ha; spatial CV {blocked:.1f} (ratio "
        f"{blocked / true_rmse:.2f}), random CV {naive:.1f} (ratio {naive / true_rmse:.2f})"
    )


def change_by_lidar_cover(run: Path, truth: Path, epochs: list[str]) -> None:
    """The map's carbon change against the truth's where the LiDAR model mapped both
    epochs, one of them, or neither (``model_source`` 1 of the quality rasters)."""
    first, last = epochs[0], epochs[-1]
    lidar = {e: read(run / map_relpath("quality", e), 1) == 1 for e in (first, last)}
    change = read(run / map_relpath("carbon", last)) - read(run / map_relpath("carbon", first))
    true = read(truth / f"carbon_{last}.tif") - read(truth / f"carbon_{first}.tif")
    ok = np.isfinite(change) & np.isfinite(true)
    kinds = {
        "LiDAR at both epochs": lidar[first] & lidar[last],
        f"LiDAR at {first} only": lidar[first] & ~lidar[last],
        f"LiDAR at {last} only": ~lidar[first] & lidar[last],
        "satellite at both": ~lidar[first] & ~lidar[last],
    }
    for name, cells in kinds.items():
        cells = cells & ok
        if cells.any():
            print(
                f"  carbon change {first}->{last}, {name} ({cells.sum()} cells): map "
                f"{np.mean(change[cells]):+.2f} Mg C/ha vs truth {np.mean(true[cells]):+.2f}"
            )


def model_card(run: Path) -> None:
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())
    print("== model card: spatially blocked CV vs random split (chosen models)")
    for key in ("lidar_model", "satellite_model"):
        m = card.get(key, {})
        if "chosen" not in m:
            print(f"  {key}: {m}")
            continue
        chosen = m["chosen"]
        cand = m.get("candidates", {}).get(chosen, {})
        print(f"  {key}: chosen {chosen}; {json.dumps(cand, sort_keys=True)[:400]}")
    print(f"  final at plots: {card.get('final_at_plots')}")


def _unvalued(values: pd.Series) -> str:
    """How many parcels have no value (no mapped forest land: RMSE leaves them out, the
    coverage counts them as misses)."""
    n = int(values.isna().sum())
    return f"; {n} without a value (counted as misses, not in the RMSE)" if n else ""


def parcels(run: Path, truth: Path, epochs: list[str]) -> None:
    print("== parcels: carbon stock and sink against truth")
    est = pd.read_csv(run / PARCEL_SINK_CSV_RELPATH)
    tru = pd.read_csv(truth / "parcels.csv")
    m = est.merge(tru, on="parcel_id", suffixes=("", "_true"))
    forest = m[m["land_class"] == "forest"]
    for e in epochs:
        c, t = forest[f"carbon_{e}_mg_c"], forest[f"carbon_{e}_mg"]
        rmse = np.sqrt(np.mean((c - t) ** 2))
        inside = (forest[f"carbon_{e}_lo_mg_c"] <= t) & (t <= forest[f"carbon_{e}_hi_mg_c"])
        print(
            f"  {e}: {len(forest)} forest parcels, carbon RMSE {rmse:,.0f} Mg C "
            f"({rmse / t.mean():.1%} of the mean parcel stock), 90% interval coverage "
            f"{inside.mean():.1%}{_unvalued(c)}"
        )
    s, t = forest["sink_tco2e_yr"], forest["sink_tco2e_yr_true"]
    rmse = np.sqrt(np.mean((s - t) ** 2))
    inside = (forest["sink_lo_tco2e_yr"] <= t) & (t <= forest["sink_hi_tco2e_yr"])
    calm = (forest["disturbance"] == "none").to_numpy()
    print(
        f"  sink: RMSE {rmse:,.1f} t CO2e/yr ({rmse / t.abs().mean():.1%} of the mean |sink|), "
        f"bias {np.mean(s - t):+.1f}, 90% interval coverage {inside.mean():.1%} (undisturbed "
        f"parcels {inside[calm].mean():.1%}){_unvalued(s)}"
    )
    cut = forest[forest["disturbance"] == "clearcut"]
    sig = (cut["sink_hi_tco2e_yr"] < 0).mean() if len(cut) else float("nan")
    print(
        f"  clear-cut parcels: {len(cut)}, estimated sink {cut['sink_tco2e_yr'].sum():,.0f} vs "
        f"truth {cut['sink_tco2e_yr_true'].sum():,.0f} t CO2e/yr; upper 90% bound below zero "
        f"in {sig:.0%}"
    )


def totals(
    run: Path,
    truth: Path,
    design_path: Path | None,
    epochs: list[str],
    domains: dict[str, tuple[str, ...]],
) -> None:
    """The chosen survey estimates of each sample's totals against the truth over its frames,
    and the project's credits against its true net removals."""
    print("== totals: chosen survey estimates against the truth over each sample's population")
    est_path = run / ESTIMATES_RELPATH
    if design_path is None or not est_path.is_file():
        print("  no plot design or no estimates: nothing to compare")
        return
    design = gpd.read_file(design_path)
    est = pd.read_csv(est_path)
    true: dict[tuple[str, str], float] = {}
    # each methodology's domain of the project sample: the strata of its forest types
    samples = {str(k): v for k, v in design.groupby("sample")}
    if PROJECT_SAMPLE in samples:
        frames = samples[PROJECT_SAMPLE]
        for method_id, types in domains.items():
            samples[domain_sample(method_id)] = frames[frames["stratum"].isin(types)]
        # each other sample's estimate outside the project plus the project's: their union
        for name in [str(s) for s in design["sample"].unique() if s != PROJECT_SAMPLE]:
            both = pd.concat([samples[name], frames])
            samples[with_project_sample(name)] = both.dissolve().reset_index(drop=True)
    for sample, frames in samples.items():
        if frames.empty:
            continue
        for e in epochs:
            with rasterio.open(truth / f"carbon_{e}.tif") as src:
                values = src.read(1).astype(np.float64)
                covs = coverage_cells(
                    frames, transform=src.transform, shape=values.shape, crs=str(src.crs)
                )
                px_ha = abs(src.transform.a * src.transform.e) / M2_PER_HA
            true[(str(sample), stock_quantity(e))] = (
                sum(weighted_sum(c, values) for c in covs) * px_ha
            )
        change = change_quantity(epochs[0], epochs[-1])
        true[(str(sample), change)] = (
            true[(str(sample), stock_quantity(epochs[-1]))]
            - true[(str(sample), stock_quantity(epochs[0]))]
        ) * co2_per_c()
    for r in est[est["chosen"].astype(bool)].itertuples():
        t = true[(r.sample, r.quantity)]
        hit = "covers" if r.lower <= t <= r.upper else "MISSES"
        print(
            f"  {r.sample:<9} {r.quantity:<17} {r.estimator:<10} {r.total:>12,.0f} "
            f"± {r.half_width:>10,.0f} {r.unit:<6} truth {t:>12,.0f} ({r.total / t - 1:+.1%}); "
            f"interval {hit} the truth; map sum {r.map_total:,.0f} ({r.map_total / t - 1:+.1%})"
        )
    credits = pd.read_csv(run / CREDITS_RELPATH)
    total = credits[credits["parcel_id"] == TOTAL_ID].iloc[0]
    # the sample's check is on the row of the estimate over the declared project area
    # (DECLARED when only some parcels are credited, else TOTAL)
    rows = credits[credits["parcel_id"].isin([DECLARED_ID, TOTAL_ID])]
    flags = {
        c: next((v for v in rows[c] if pd.notna(v)), "not recorded")
        for c in ("sample_meets_target", "change_meets_target")
    }
    change = change_quantity(epochs[0], epochs[-1])
    # the credited TOTAL is the project sample's estimate, or that of the strata of the
    # eligible parcels (the estimator names the sample)
    credited = next(
        (d for d in map(domain_sample, domains) if f"of {d})" in str(total["estimator"])),
        PROJECT_SAMPLE,
    )
    if (credited, change) in true:
        net = true[(credited, change)] - total["baseline_tco2e"]
        print(
            f"  credits {total['credits_tco2e']:,.0f} t CO2e ({total['estimator']}; U "
            f"{total['uncertainty_pct']:.1f} %) against true net removals {net:,.0f} t CO2e "
            f"(estimated {total['net_tco2e']:,.0f}); sample meets its target for the stock: "
            f"{flags['sample_meets_target']}, for the change: {flags['change_meets_target']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--region", default="nanping", help="configs/regions/NAME.yaml")
    which.add_argument("--config", type=Path, help="a region config file (e.g. another seed's)")
    ap.add_argument("--run", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.config or region_config_path(args.region))
    run = args.run or cfg.output_dir
    truth = Path(cfg.data_dir) / "truth"
    epochs = [e.name for e in cfg.epochs]
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())
    composites(run, truth, epochs)
    lidar(run, truth, card.get("lidar_epoch", epochs[0]), card.get("lidar_repeat_epochs", []))
    plots(run, truth)
    model_card(run)
    maps(run, truth, epochs, int(card.get("support_window_px", 1)))
    parcels(run, truth, epochs)
    domains = {}
    if cfg.sources.project_area is not None:
        domains = {
            m.id: tuple(m.applies_to.forest_types)
            for m, _ in credits_job(cfg).methodologies
            if m.applies_to is not None
        }
    totals(run, truth, cfg.sources.plot_design, epochs, domains)


if __name__ == "__main__":
    main()
