"""Coverage of the maps' per-pixel 90 % intervals against a simulated region's truth.

The maps' intervals refer to the plot-sized window around each cell (the models' support,
bands ``agb_lower_support``/``agb_upper_support`` of ``agb_interval_<epoch>.tif``), so the
truth they are compared with is the truth AGB averaged over the same window
(``coverage``; ``coverage_cell``: the single cell's interval, bands 1-2, against the
cell's truth). Per epoch and ``model_source``, and by splits that can explain a miss (the
map's AGB, the truth's AGB, inside/outside the LiDAR block, the parcel's disturbance), it
prints the share of cells whose interval covers the truth, the mean square of the
standardised error ``z = (map - truth) / SD`` (SD: ``agb_sd_support``; 1 when the SDs are
right) and the mean error, and how much of the mean square the cells with ``|z| > 3``
carry. Only tests and benchmarks read ``truth/``.

Usage: ``python benchmarks/pixel_coverage.py --data data/s20261130 --run outputs/s20261130``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.features import rasterize
from scipy.ndimage import uniform_filter

from models.biomass.mapping import SOURCE_NAMES
from pipeline.contracts import MODEL_CARD_RELPATH, map_relpath


def read(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band, out_dtype="float64", masked=True).filled(np.nan)


def burn(shapes: gpd.GeoDataFrame, values: list[int], ref: Path) -> np.ndarray:
    """``values`` of ``shapes`` on the grid of ``ref`` (0 outside every shape)."""
    with rasterio.open(ref) as r:
        pairs = zip(shapes.geometry, values, strict=True)
        return rasterize(pairs, out_shape=(r.height, r.width), transform=r.transform, fill=0)


def cells(run: Path, data: Path, epoch: str, window_px: int) -> pd.DataFrame:
    """One row per mapped cell of ``epoch``: map, SD and interval at the maps' support, the
    truth at that support, the model source and the splits."""
    truth = read(data / "truth" / f"agb_{epoch}.tif")
    truth_w = uniform_filter(np.nan_to_num(truth), size=window_px, mode="nearest")
    agb_path = run / map_relpath("agb", epoch)
    agb = read(agb_path)
    sd = read(run / map_relpath("agb_sd", epoch), 2)
    iv = run / map_relpath("agb_interval", epoch)
    lo, hi = read(iv, 3), read(iv, 4)
    lo_cell, hi_cell = read(iv, 1), read(iv, 2)
    source = read(run / map_relpath("quality", epoch), 1)
    design = gpd.read_file(data / "plots" / "design.gpkg")
    block = design[(design["sample"] == "inventory") & (design["stratum"] == "lidar_block")]
    in_block = burn(block, [1] * len(block), agb_path)
    parcels = gpd.read_file(data / "parcels" / "parcels.gpkg")
    kinds = pd.read_csv(data / "truth" / "parcels.csv")[["parcel_id", "disturbance"]]
    parcels = parcels.merge(kinds, on="parcel_id", how="left")
    codes = {k: i + 1 for i, k in enumerate(sorted(parcels["disturbance"].dropna().unique()))}
    dist = burn(parcels, [codes.get(d, 0) for d in parcels["disturbance"]], agb_path)
    ok = np.isfinite(agb) & np.isfinite(sd) & np.isfinite(truth) & (sd > 0)
    names = {0: "no parcel", **{v: k for k, v in codes.items()}}
    return pd.DataFrame(
        {
            "epoch": epoch,
            "source": source[ok].astype(int),
            "map": agb[ok],
            "truth": truth_w[ok],
            "sd": sd[ok],
            "covered": (lo[ok] <= truth_w[ok]) & (truth_w[ok] <= hi[ok]),
            "covered_cell": (lo_cell[ok] <= truth[ok]) & (truth[ok] <= hi_cell[ok]),
            "lidar_block": in_block[ok].astype(bool),
            "disturbance": pd.Series(dist[ok]).map(names).to_numpy(),
        }
    )


def summary(t: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    z = (t["map"] - t["truth"]) / t["sd"]
    return (
        t.assign(z2=z**2, err=t["map"] - t["truth"])
        .groupby(by, observed=True)
        .agg(
            cells=("covered", "size"),
            coverage=("covered", "mean"),
            coverage_cell=("covered_cell", "mean"),
            mean_z2=("z2", "mean"),
            bias_mg_ha=("err", "mean"),
        )
        .round(3)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the simulated region (has truth/)")
    ap.add_argument("--run", type=Path, required=True, help="the run folder")
    args = ap.parse_args()
    card = json.loads((args.run / MODEL_CARD_RELPATH).read_text())
    window_px = int(card.get("support_window_px", 1))
    t = pd.concat([cells(args.run, args.data, e, window_px) for e in card["epochs"]])
    t = t[t["source"] != 5]  # baseline stock (zero) of land not yet forest: no interval
    pd.set_option("display.width", 160)
    print(f"== pixel 90% intervals at the maps' support ({window_px}x{window_px} cells)")
    print("model sources: " + "; ".join(f"{k} {v}" for k, v in SOURCE_NAMES.items()))
    print(summary(t, ["epoch", "source"]).to_string())
    sat = t[t["source"] >= 2]
    print("== satellite-mapped cells (sources 2-4, 6) by the map's AGB")
    bins = pd.cut(sat["map"], [0, 50, 100, 150, 200, 300, np.inf], right=False)
    print(summary(sat.assign(map_agb=bins), ["epoch", "map_agb"]).to_string())
    print("== satellite-mapped cells by the truth's AGB (at the maps' support)")
    bins = pd.cut(sat["truth"], [-np.inf, 50, 100, 200, 300, 400, np.inf], right=False)
    print(summary(sat.assign(truth_agb=bins), ["epoch", "truth_agb"]).to_string())
    print("== the tail: satellite-mapped cells with |z| > 3 (3 SDs off; 0.3 % if normal)")
    z2 = ((sat["map"] - sat["truth"]) / sat["sd"]) ** 2
    tail = sat.assign(z2=z2, tail=z2 > 9, under=sat["map"] < sat["truth"])
    for epoch, g in tail.groupby("epoch"):
        print(
            f"  {epoch}: {g['tail'].mean():.1%} of the cells, carrying "
            f"{g.loc[g['tail'], 'z2'].sum() / g['z2'].sum():.0%} of the sum of z^2; "
            f"{g.loc[g['tail'], 'under'].mean():.0%} of them below the truth; mean z^2 of "
            f"the other cells {g.loc[~g['tail'], 'z2'].mean():.2f}"
        )
    print("== satellite-mapped cells inside / outside the LiDAR block (a sampling stratum)")
    print(summary(sat, ["epoch", "lidar_block"]).to_string())
    print("== satellite-mapped cells by the parcel's disturbance (truth)")
    print(summary(sat, ["epoch", "disturbance"]).to_string())


if __name__ == "__main__":
    main()
