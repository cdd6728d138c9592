"""The final maps' errors at the project's monitoring plots, which never trained them.

The model stage leaves the plots of a carbon project's monitoring sample (``sample ==
"project"`` of the plot layer) out of every model, so ``plot - map at the plot`` there is
an out-of-sample error of the final map, at each epoch and for the change, grouped by the
parcel the plot lies in. This script measures, per epoch and for the change (AGB and
carbon), the standardised error

    z = (plot value - map at the plot square) / support SD at the plot

(:func:`pipeline.map_errors.plot_errors`, which the parcels stage uses too: the map's value
at a plot is its mean over the plot square by exact cell coverage, as the estimate stage
takes it; the SD is the maps' window-support SD, band ``*_sd_support``, averaged the same
way; the change's SD is ``sqrt(s1^2 + s2^2 - 2 rho s1 s2)`` with the model card's
epoch error correlation ``rho``), and compares it with what the pipeline assumes:

- mean z^2 overall, by model source and per bin of the satellite calibration's bins
  (the model card's ``bin_edges_mg_ha``), against 1; ``k_needed = k_sd sqrt(mean z^2)``
  is the SD factor those plots would have given the bin;
- the one-way random-effects split of z by parcel (:mod:`models.variance_components`):
  the between-parcel share and the uncentred share, against the LiDAR correlogram's
  ``shared`` (``parcels/error_correlogram.json``) and its mean value at the distances of
  the plot pairs within a parcel.

It reads the run folder and the config's plot layer and parcels; ``truth/`` only with
``--truth`` on a simulated region, for a diagnosis printed under its own heading: each
plot's residual split into the plot's own departure from the true carbon over its square
(``plot - truth``: tree-level granularity, the pixels the square cuts, allometry) and the
map's error (``truth - map``), each with its mean z^2 and its uncentred covariance ``C``
between two plots of one parcel (what the parcels' shared part is solved from). The
monitoring plots sample the project area only; the figures describe the maps there.

Usage (from the repo whose config paths are relative to it):
``python benchmarks/independent_errors.py --config configs/regions/nanping.yaml
--run outputs/nanping``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from models.biomass.mapping import SOURCE_LIDAR, SOURCE_NAMES
from models.spatial_error import Correlogram
from models.variance_components import one_way_components
from pipeline.config import load_config
from pipeline.contracts import (
    ERROR_CORRELOGRAM_RELPATH,
    MODEL_CARD_RELPATH,
    PLOT_BIOMASS_RELPATH,
    map_relpath,
    open_raster,
)
from pipeline.map_errors import plot_errors
from pipeline.samples import monitoring_plots
from pipeline.sink import as_band, named_band


def compared_plots(cfg: Any) -> gpd.GeoDataFrame:
    """The monitoring plots the pipeline compares with the maps: those whose square lies
    wholly inside its stratum's frame (:func:`pipeline.samples.monitoring_plots`)."""
    plots = gpd.read_file(cfg.sources.plot_locations)
    design = gpd.read_file(cfg.sources.plot_design) if cfg.sources.plot_design else None
    monitoring, compared = monitoring_plots(plots, design)
    print(
        f"monitoring plots: {int(compared.sum())} whole in their frames, "
        f"{int((monitoring & ~compared).sum())} straddling left out"
    )
    return plots[compared].reset_index(drop=True)


def errors(cfg: Any, plots: gpd.GeoDataFrame, run: Path, rho: float) -> pd.DataFrame:
    """:func:`pipeline.map_errors.plot_errors` of AGB and carbon at the monitoring plots
    (columns ``z_agb``, ``z_carbon``, ``agb_map``) with the model source at each plot's
    centre cell (``source``, of the last epoch for the change)."""
    epochs = [e.name for e in cfg.epochs]
    parcels = gpd.read_file(cfg.sources.parcels)
    biomass = pd.read_csv(run / PLOT_BIOMASS_RELPATH, dtype={"epoch": str})
    out = None
    for q in ("agb", "carbon"):
        maps = {
            e: (
                as_band(open_raster(run / map_relpath(q, e)), name=q),
                named_band(
                    open_raster(run / map_relpath(f"{q}_sd", e)), f"{q}_sd_support", source=q
                ),
            )
            for e in epochs
        }
        t = plot_errors(
            plots, biomass, value=f"{q}_mg_ha", maps=maps, parcels=parcels,
            first=epochs[0], last=epochs[-1], rho=rho,
        ).rename(columns={"z": f"z_{q}", "map": f"{q}_map"})  # fmt: skip
        keys = ["plot_id", "epoch"]
        out = t if out is None else out.merge(t[[*keys, f"z_{q}"]], on=keys, how="outer")
    assert out is not None
    source = {}
    for e in epochs:
        with rasterio.open(run / map_relpath("quality", e)) as src:
            source[e] = pd.Series(
                [int(v[0]) for v in src.sample(zip(out["x_m"], out["y_m"], strict=True))],
                index=out.index,
            )
    out["source"] = np.where(out["epoch"] == epochs[0], source[epochs[0]], source[epochs[-1]])
    return out


def _mean_z2(z: pd.Series) -> str:
    z = z[np.isfinite(z)]
    return f"n {z.size:4d}  mean z {z.mean():+.2f}  mean z^2 {np.mean(z**2):.2f}"


def report(z: pd.DataFrame, card: dict[str, Any], correlogram: dict[str, Any] | None) -> None:
    """Print the figures of the module docstring."""
    unc = card["satellite_model"]["uncertainty"]
    # a model card of before the per-bin calibration has one bin and a scalar k_sd
    edges = np.asarray(unc.get("bin_edges_mg_ha", []))
    k_sd = np.atleast_1d(np.asarray(unc["k_sd"]))
    model = None
    if correlogram and "shared" in correlogram:
        # the LiDAR cover's fit (``shared_lidar`` once the monitoring plots replaced it)
        shared = correlogram.get("shared_lidar", correlogram["shared"])
        model = Correlogram(
            nugget=correlogram["nugget"], shared=shared, range_m=correlogram["range_m"]
        )
        print(
            f"LiDAR correlogram (within parcel): nugget {model.nugget:.2f} shared "
            f"{model.shared:.2f} range {model.range_m:.0f} m ({correlogram['n_parcels']} parcels)"
        )
    for epoch, g in z.groupby("epoch", sort=False):
        print(f"\n== {epoch}")
        for q in ("agb", "carbon"):
            print(f"  {q:6s} all: {_mean_z2(g[f'z_{q}'])}")
        for s, gs in g.groupby("source"):
            print(
                f"  agb    source {s} {SOURCE_NAMES.get(s, '?')[:28]:28s}: {_mean_z2(gs['z_agb'])}"
            )
        # the calibration's bins are of the stock map's AGB: stocks only
        sat = g[(g["source"] != SOURCE_LIDAR) & (epoch != "change")]
        bins = np.digitize(np.nan_to_num(sat["agb_map"]), edges)
        for b in range(edges.size + 1):
            zb = sat["z_agb"][bins == b]
            zb = zb[np.isfinite(zb)]
            if zb.size:
                need = k_sd[b] * np.sqrt(np.mean(zb**2))
                print(
                    f"  agb    satellite bin {b} (k_sd {k_sd[b]:.2f}, k_needed {need:.2f}): "
                    f"{_mean_z2(zb)}"
                )
        for q in ("agb", "carbon"):
            ok = g[np.isfinite(g[f"z_{q}"]) & (g["parcel"] > 0)]
            comp = one_way_components(ok[f"z_{q}"], ok["parcel"])
            print(
                f"  {q:6s} by parcel ({comp.groups} parcels, n0 {comp.n0:.1f}): between "
                f"{comp.between:.2f} within {comp.within:.2f} share {comp.between_share:.2f}"
                f" uncentred {comp.uncentred_share:.2f}"
            )
        if model is not None:
            ok = g[g["parcel"] > 0]
            rhos = []
            for _, p in ok.groupby("parcel"):
                xy = p[["x_m", "y_m"]].to_numpy()
                d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
                rhos.extend(model(d[np.triu_indices(len(p), 1)]).tolist())
            print(
                f"  LiDAR correlogram at the {len(rhos)} within-parcel plot pairs: "
                f"mean rho {np.mean(rhos):.2f}"
            )


def truth_split(cfg: Any, plots: gpd.GeoDataFrame, run: Path, truth: Path, rho: float) -> None:
    """The diagnosis of the module docstring (``--truth``): ``plot - map``, ``plot - truth``
    and ``truth - map`` at the monitoring plots, standardised by the carbon map's support
    SD, per epoch and for the change."""
    epochs = [e.name for e in cfg.epochs]
    parcels = gpd.read_file(cfg.sources.parcels)
    biomass = pd.read_csv(run / PLOT_BIOMASS_RELPATH, dtype={"epoch": str})
    mapped, true, sd = {}, {}, {}
    for e in epochs:
        mapped[e] = as_band(open_raster(run / map_relpath("carbon", e)), name="carbon")
        sd[e] = named_band(
            open_raster(run / map_relpath("carbon_sd", e)), "carbon_sd_support", source="carbon"
        )
        true[e] = as_band(
            open_raster(truth / f"carbon_{e}.tif"), name="carbon"
        ).rio.reproject_match(mapped[e])
    kw = {"parcels": parcels, "first": epochs[0], "last": epochs[-1], "rho": rho}

    def split(observed: pd.DataFrame, grids: dict[str, Any]) -> pd.DataFrame:
        maps = {e: (grids[e], sd[e]) for e in epochs}
        return plot_errors(plots, observed, value="carbon_mg_ha", maps=maps, **kw)

    plot_truth = split(biomass, true)
    at_plots = plot_truth[plot_truth["epoch"] != "change"][["plot_id", "epoch", "map"]]
    rows = {
        "plot - map": split(biomass, mapped),
        "plot - truth (plot noise)": plot_truth,
        "truth - map (map error)": split(at_plots.rename(columns={"map": "carbon_mg_ha"}), mapped),
    }
    print("\n== DIAGNOSIS with the truth (carbon, z in the map's support SDs)")
    for name, z in rows.items():
        for epoch, g in z[z["parcel"] > 0].groupby("epoch", sort=False):
            comp = one_way_components(g["z"], g["parcel"])
            print(
                f"  {name:26s} {epoch:7s} mean z^2 {np.mean(g['z'] ** 2):.3f}  "
                f"C {comp.uncentred_between:.3f}  within {comp.within:.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the run's region config")
    ap.add_argument("--run", type=Path, required=True, help="the run folder")
    ap.add_argument("--truth", type=Path, help="a simulated region's truth/ folder (diagnosis)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    epochs = [e.name for e in cfg.epochs]
    card = json.loads((args.run / MODEL_CARD_RELPATH).read_text())
    rho = float(card["epoch_error_correlation"][f"{epochs[0]}/{epochs[-1]}"]["rho"])
    plots = compared_plots(cfg)
    z = errors(cfg, plots, args.run, rho)
    path = args.run / ERROR_CORRELOGRAM_RELPATH
    correlogram = json.loads(path.read_text()) if path.exists() else None
    print(f"{args.run}: {z['plot_id'].nunique()} monitoring plots mapped, rho {rho:.2f}")
    report(z, card, correlogram)
    if args.truth is not None:
        truth_split(cfg, plots, args.run, args.truth, rho)


if __name__ == "__main__":
    main()
