"""The final maps' errors at the project's monitoring plots, which never trained them.

The model stage leaves the plots of a carbon project's monitoring sample (``sample ==
"project"`` of the plot layer) out of every model, so ``plot - map at the plot`` there is
an out-of-sample error of the final map, at each epoch and for the change, grouped by the
parcel the plot lies in. This script measures, per epoch and for the change (AGB and
carbon), the standardised error

    z = (plot value - map at the plot square) / support SD at the plot

(the map's value at a plot is the estimate stage's: the mean over the plot square by exact
cell coverage; the SD is the maps' window-support SD, band ``*_sd_support``, averaged the
same way; the change's SD is ``sqrt(s1^2 + s2^2 - 2 rho s1 s2)`` with the model card's
epoch error correlation ``rho``), and compares it with what the pipeline assumes:

- mean z^2 overall, by model source and per bin of the satellite calibration's bins
  (the model card's ``bin_edges_mg_ha``), against 1; ``k_needed = k_sd sqrt(mean z^2)``
  is the SD factor those plots would have given the bin;
- the one-way random-effects split of z by parcel (:mod:`models.variance_components`):
  the between-parcel share and the uncentred share, against the LiDAR correlogram's
  ``shared`` (``parcels/error_correlogram.json``) and its mean value at the distances of
  the plot pairs within a parcel.

It reads the run folder and the config's plot layer and parcels, never ``truth/``.
The monitoring plots sample the project area only; the figures describe the maps there.

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

from models.biomass.mapping import SOURCE_NAMES
from models.spatial_error import Correlogram
from models.variance_components import one_way_components
from pipeline.config import load_config
from pipeline.contracts import MODEL_CARD_RELPATH, PLOT_BIOMASS_RELPATH, PROJECT_SAMPLE, map_relpath
from pipeline.stages.estimate import _at_plots
from pipeline.zonal import coverage_cells

#: bands (1-based) of the support SD in the predict stage's SD rasters
SUPPORT_SD_BAND = 2


def _read(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band, out_dtype="float64", masked=True).filled(np.nan)


def plot_errors(cfg: Any, run: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per monitoring plot-epoch: observed and mapped AGB and carbon, their
    support SDs at the plot, the model source at the plot centre and the parcel."""
    epochs = [e.name for e in cfg.epochs]
    plots = gpd.read_file(cfg.sources.plot_locations)
    plots = plots[plots["sample"] == PROJECT_SAMPLE].reset_index(drop=True)
    parcels = gpd.read_file(cfg.sources.parcels)[["parcel_id", "geometry"]]
    centres = gpd.GeoDataFrame(plots[["plot_id"]], geometry=plots.centroid, crs=plots.crs)
    joined = gpd.sjoin(centres, parcels.to_crs(plots.crs), how="left", predicate="within")
    parcel_of = joined.drop_duplicates("plot_id").set_index("plot_id")["parcel_id"]
    card = json.loads((run / MODEL_CARD_RELPATH).read_text())
    biomass = pd.read_csv(run / PLOT_BIOMASS_RELPATH, dtype={"epoch": str})
    rows = []
    for e in epochs:
        ref = run / map_relpath("agb", e)
        with rasterio.open(ref) as src:
            transform, shape, crs = src.transform, (src.height, src.width), str(src.crs)
        cover = coverage_cells(plots, transform=transform, shape=shape, crs=crs)
        ones = [np.ones(shape)] * len(plots)
        mean = {
            "agb_map": _read(ref),
            "agb_sd": _read(run / map_relpath("agb_sd", e), SUPPORT_SD_BAND),
            "carbon_map": _read(run / map_relpath("carbon", e)),
            "carbon_sd": _read(run / map_relpath("carbon_sd", e), SUPPORT_SD_BAND),
        }
        source = _read(run / map_relpath("quality", e))
        rows_, cols_ = rasterio.transform.rowcol(transform, centres.geometry.x, centres.geometry.y)
        inside = (0 <= np.asarray(rows_)) & (np.asarray(rows_) < shape[0])
        inside &= (0 <= np.asarray(cols_)) & (np.asarray(cols_) < shape[1])
        at = np.where(
            inside, source[np.clip(rows_, 0, shape[0] - 1), np.clip(cols_, 0, shape[1] - 1)], 0
        )
        obs = biomass[biomass["epoch"] == e].set_index("plot_id")
        rows.append(
            pd.DataFrame(
                {
                    "plot_id": plots["plot_id"],
                    "parcel_id": plots["plot_id"].map(parcel_of).to_numpy(),
                    "epoch": e,
                    "source": np.nan_to_num(at).astype(int),
                    "agb_obs": obs["agb_mg_ha"].reindex(plots["plot_id"]).to_numpy(),
                    "carbon_obs": obs["carbon_mg_ha"].reindex(plots["plot_id"]).to_numpy(),
                    **{k: _at_plots(cover, ones, v) for k, v in mean.items()},
                    "x": centres.geometry.x,
                    "y": centres.geometry.y,
                }
            )
        )
    return pd.concat(rows, ignore_index=True), card


def standardised(t: pd.DataFrame, rho: float, epochs: list[str]) -> pd.DataFrame:
    """``z`` of AGB and carbon per plot-epoch, and rows ``epoch == "change"`` for the
    change from the first to the last epoch."""
    out = t.assign(
        z_agb=(t["agb_obs"] - t["agb_map"]) / t["agb_sd"],
        z_carbon=(t["carbon_obs"] - t["carbon_map"]) / t["carbon_sd"],
    )
    a = t[t["epoch"] == epochs[0]].set_index("plot_id")
    b = t[t["epoch"] == epochs[-1]].set_index("plot_id")
    change = b[["parcel_id", "source", "x", "y"]].copy()
    change["epoch"] = "change"
    for q in ("agb", "carbon"):
        sa, sb = a[f"{q}_sd"], b[f"{q}_sd"]
        sd = np.sqrt(sa**2 + sb**2 - 2.0 * rho * sa * sb)
        r = (b[f"{q}_obs"] - a[f"{q}_obs"]) - (b[f"{q}_map"] - a[f"{q}_map"])
        change[f"z_{q}"] = r / sd
        change[f"{q}_map"] = b[f"{q}_map"]
    return pd.concat([out, change.reset_index()], ignore_index=True)


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
        model = Correlogram(
            nugget=correlogram["nugget"], shared=correlogram["shared"],
            range_m=correlogram["range_m"],
        )  # fmt: skip
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
        sat = g[g["source"] != 1]
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
            ok = g[np.isfinite(g[f"z_{q}"]) & g["parcel_id"].notna()]
            comp = one_way_components(ok[f"z_{q}"], ok["parcel_id"])
            print(
                f"  {q:6s} by parcel ({comp.groups} parcels, n0 {comp.n0:.1f}): between "
                f"{comp.between:.2f} within {comp.within:.2f} share {comp.between_share:.2f}"
                f" uncentred {comp.uncentred_share:.2f}"
            )
        if model is not None:
            ok = g[g["parcel_id"].notna()]
            rhos = []
            for _, p in ok.groupby("parcel_id"):
                xy = p[["x", "y"]].to_numpy()
                d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
                rhos.extend(model(d[np.triu_indices(len(p), 1)]).tolist())
            print(
                f"  LiDAR correlogram at the {len(rhos)} within-parcel plot pairs: "
                f"mean rho {np.mean(rhos):.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the run's region config")
    ap.add_argument("--run", type=Path, required=True, help="the run folder")
    args = ap.parse_args()
    cfg = load_config(args.config)
    epochs = [e.name for e in cfg.epochs]
    t, card = plot_errors(cfg, args.run)
    rho = card["epoch_error_correlation"][f"{epochs[0]}/{epochs[-1]}"]["rho"]
    z = standardised(t, float(rho), epochs)
    path = args.run / "parcels" / "error_correlogram.json"
    correlogram = json.loads(path.read_text()) if path.exists() else None
    print(f"{args.run}: {t['plot_id'].nunique()} monitoring plots, rho {rho:.2f}")
    report(z, card, correlogram)


if __name__ == "__main__":
    main()
