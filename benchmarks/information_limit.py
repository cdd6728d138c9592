"""How well could *any* satellite model read parcel carbon on a simulated region?

An oracle that no real project has: a gradient-boosting model trained on the region's
true 10 m AGB at about 300,000 cells of a random half of the forest parcels (instead of
80 field plots), applied to the other half's cells, summed per parcel and compared with
the true parcel totals. Run twice: on the run's composites (what the pipeline sees) and
on the noise-free clear-sky reflectance of the truth. The parcel RMSE it prints is a
floor for the pipeline's satellite maps: what the optical signal of the region holds,
whatever the model, with unlimited training data. Only this script and
``accuracy_demo.py`` read ``truth/``.

Usage: ``python benchmarks/information_limit.py [--region nanping] [--run DIR] [--epoch E]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray
from sklearn.ensemble import HistGradientBoostingRegressor

from pipeline.config import load_config, region_config_path
from pipeline.contracts import TERRAIN_RELPATH, composite_relpath
from pipeline.features import parcel_index

N_TRAIN = 300_000


def oracle(
    reflectance: Path, terrain: Path, truth_agb: Path, parcels: gpd.GeoDataFrame, seed: int
) -> tuple[float, float, int]:
    """(cell RMSE Mg/ha, parcel-total relative RMSE, parcels scored) of the oracle."""
    refl = rioxarray.open_rasterio(reflectance)
    bands = np.asarray(refl.values, dtype=np.float32)
    terr = np.asarray(rioxarray.open_rasterio(terrain).values, dtype=np.float32)
    agb = np.asarray(rioxarray.open_rasterio(truth_agb).values[0], dtype=np.float64)
    idx = parcel_index(parcels, refl).ravel()
    forest = np.r_[False, parcels["land_class"].to_numpy() == "forest"]
    cells = np.flatnonzero(forest[idx])
    row = idx[cells] - 1
    kind = pd.Categorical(parcels["forest_type"]).codes[row]
    x = np.column_stack(
        [
            bands.reshape(len(bands), -1)[:, cells].T,
            terr.reshape(len(terr), -1)[:, cells].T,
            kind,
        ]
    )
    y = agb.ravel()[cells]
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
    x, y, row = x[ok], y[ok], row[ok]
    rng = np.random.default_rng(seed)
    train_parcel = rng.random(len(parcels)) < 0.5
    train = train_parcel[row]
    pick = rng.choice(np.flatnonzero(train), min(N_TRAIN, int(train.sum())), replace=False)
    model = HistGradientBoostingRegressor(max_iter=300, random_state=seed).fit(x[pick], y[pick])
    test = ~train
    pred = model.predict(x[test])
    n = len(parcels)
    est = np.bincount(row[test], pred, minlength=n)
    true = np.bincount(row[test], y[test], minlength=n)
    scored = np.bincount(row[test], minlength=n) > 0
    cell_rmse = float(np.sqrt(np.mean((pred - y[test]) ** 2)))
    rel = float(np.sqrt(np.mean((est[scored] - true[scored]) ** 2)) / true[scored].mean())
    return cell_rmse, rel, int(scored.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="nanping")
    ap.add_argument("--run", type=Path)
    ap.add_argument("--epoch", help="default: the first epoch")
    ap.add_argument("--splits", type=int, default=3, help="random halvings (default 3)")
    args = ap.parse_args()
    cfg = load_config(region_config_path(args.region))
    run = args.run or cfg.output_dir
    epoch = args.epoch or cfg.epochs[0].name
    truth = Path(cfg.data_dir) / "truth"
    if cfg.sources.parcels is None:
        raise SystemExit(f"{args.region}: no sources.parcels in the config; nothing to score")
    parcels = gpd.read_file(cfg.sources.parcels)
    terrain = run / TERRAIN_RELPATH
    print(f"== information limit, epoch {epoch}: oracle trained on true cell AGB of half the")
    print("   forest parcels, scored on the other half's parcel totals, per random halving")
    for name, refl in (
        ("run composite", run / composite_relpath(epoch)),
        ("noise-free truth reflectance", truth / f"reflectance_{epoch}.tif"),
    ):
        runs = [
            oracle(refl, terrain, truth / f"agb_{epoch}.tif", parcels, cfg.seed + k)
            for k in range(args.splits)
        ]
        cells = ", ".join(f"{r[0]:.1f}" for r in runs)
        rels = ", ".join(f"{r[1]:.1%}" for r in runs)
        print(f"  {name}: cell RMSE {cells} Mg/ha; parcel AGB RMSE {rels} (per split)")


if __name__ == "__main__":
    main()
