"""Peak memory of the conversion factors' shared draws at 1x and 4x the demo's trees.

:func:`models.shared_errors.shared_factor_shifts` once made float64 arrays of every tree
times every draw (the demo: 107,281 trees x 200 draws, 172 MB each, 613 MB at its peak in
the estimate stage; issue #19). It now adds blocks of trees to per-plot-epoch sums, so its
memory should follow the block, the plot-epochs times the draws (its result) and a few
values a tree, not the trees times the draws. This measures the traced peak (tracemalloc:
numpy and pandas allocations) of one call on a tree table of the demo's size and on four
copies of it with new plot ids, at the demo's 200 draws, and prints the ratio beside the
ratio of the trees (4) and the size of one trees x draws array.

The tree table is seeded and synthetic, shaped as the demo's ``plots/trees.csv``: 782 plots
at two epochs, about 69 trees a plot-epoch, the demo's five species in its shares (BGB from
the IPCC ratio for Castanopsis and Moso bamboo, from a root equation for the others).
``--trees`` takes a run's ``plots/trees.csv`` instead.

Figures of 1 December 2026 (shared 2-core machine): 107,731 synthetic trees 19 MB (0.5 s),
four copies 60 MB (1.5 s), x3.2; the demo run's own ``plots/trees.csv`` 26 and 68 MB, x2.6;
one trees x draws array is 172 and 690 MB. What grows is a few values a tree (group codes,
float64 terms; the stage's tree table itself is larger) and the result, plot-epochs x
draws, which four copies also multiply by four; the block does not grow.

Run: ``.venv/bin/python benchmarks/bench_shared_errors.py [--trees plots/trees.csv]``
(``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from models.shared_errors import TREE_COLUMNS, SharedDraws, shared_factor_shifts

SEED = 20190701
DRAWS = 200
PLOTS = 782
EPOCHS = ("2019", "2024")
TREES_PER_PLOT_EPOCH = 69
AREA_HA = 0.0667
#: the demo's species and their shares of its trees; True: BGB from the IPCC ratio
SPECIES = {
    "Cunninghamia lanceolata": (0.45, False),
    "Pinus massoniana": (0.20, False),
    "Phyllostachys edulis": (0.14, True),
    "Castanopsis carlesii": (0.105, True),
    "Schima superba": (0.105, False),
}


def tree_table(*, seed: int = SEED) -> pd.DataFrame:
    """A tree table of the demo's size (the columns :func:`shared_factor_shifts` reads)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(TREES_PER_PLOT_EPOCH, PLOTS * len(EPOCHS)).clip(1)
    n = int(counts.sum())
    plot = np.repeat(np.arange(PLOTS * len(EPOCHS)) // len(EPOCHS), counts)
    epoch = np.repeat(np.tile(np.asarray(EPOCHS, dtype=object), PLOTS), counts)
    names = list(SPECIES)
    species = rng.choice(len(names), n, p=[share for share, _ in SPECIES.values()])
    by_ratio = np.asarray([ratio for _, ratio in SPECIES.values()])[species]
    agb = rng.lognormal(np.log(150.0), 1.0, n)
    return pd.DataFrame(
        {
            "plot_id": [f"P{p:04d}" for p in plot],
            "epoch": epoch,
            "species": np.asarray(names, dtype=object)[species],
            "usable": True,
            "plot_area_ha": AREA_HA,
            "agb_kg": agb,
            "bgb_kg": agb * np.where(by_ratio, 0.24, 0.22),
            "root_shoot_ratio": np.where(by_ratio, 0.24, np.nan),
        }
    )


def copies(trees: pd.DataFrame, k: int) -> pd.DataFrame:
    """``k`` copies of ``trees``, each with its own plot ids."""
    return pd.concat(
        [trees.assign(plot_id=trees["plot_id"].astype(str) + f"#{i}") for i in range(k)],
        ignore_index=True,
    )


def measure(trees: pd.DataFrame, draws: SharedDraws) -> dict[str, float]:
    """Wall seconds of one call, and the traced peak (MB) of another."""
    t0 = time.perf_counter()
    shifts = shared_factor_shifts(trees, draws)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    shared_factor_shifts(trees, draws)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return {
        "trees": len(trees),
        "plot_epochs": len(shifts),
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_mb, 1),
        "trees_x_draws_array_mb": round(len(trees) * draws.n_draws * 8 / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", type=Path, help="a run's plots/trees.csv (default: synthetic)")
    args = parser.parse_args()
    trees = (
        tree_table() if args.trees is None else pd.read_csv(args.trees, usecols=list(TREE_COLUMNS))
    )
    draws = SharedDraws.draw(DRAWS, SEED)
    one, four = (measure(copies(trees, k), draws) for k in (1, 4))
    print(json.dumps(one), flush=True)
    print(json.dumps(four), flush=True)
    print(
        f"1x -> 4x trees: peak x{four['peak_mb'] / one['peak_mb']:.2f} (the trees x4; one "
        f"trees x draws array {one['trees_x_draws_array_mb']:.0f} -> "
        f"{four['trees_x_draws_array_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
