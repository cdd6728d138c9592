"""Benchmark of the plots stage's height-model assignment at 10^4, 10^5 and 10^6 trees.

``models.plot_biomass.assign_height_models`` once compared every tree with every other
(100,000 trees took 357 s and 1.9 GB; issue 18 item 12). It groups trees by scope now, so
its time should grow like the tree count. Each size is timed against a yardstick measured
in the same run on the same table: a pandas merge of the trees with a per-plot table (one
hash join, linear in the rows); a ratio that stays flat from size to size means linear
growth. Peak memory is traced by ``tracemalloc`` (numpy and pandas allocations) in a second
call, so the tracing does not slow the timed one.

The tree list is seeded and synthetic: plots of 40 trees of three species (two species
groups), heights on a Michaelis-Menten curve measured for every tree in one plot out of
ten (which get their own H-D models) and for a fifth of the trees elsewhere (too few for
a plot model: their trees take the epoch's).

Figures of 1 December 2026 (shared 2-core machine, best of 3): 0.04 s, 0.21 s and 1.6 s
for 10^4, 10^5 and 10^6 trees (ratio to the merge 12, 33 and 30), peaks 1.2, 11 and
120 MB; the tree-by-tree version took 83 s for 10^4 trees (ratio 5270).

Run: ``.venv/bin/python benchmarks/bench_plots.py [--sizes 10000 100000 1000000]``
(``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from models.plot_biomass import assign_height_models

SEED = 20261201
TREES_PER_PLOT = 40
SPECIES = ("Cunninghamia lanceolata", "Pinus massoniana", "Schima superba")


def tree_table(n: int, *, seed: int = SEED) -> pd.DataFrame:
    """A checked tree table (the columns :func:`assign_height_models` reads) of ``n`` trees."""
    rng = np.random.default_rng(seed)
    plot = np.arange(n) // TREES_PER_PLOT
    species = np.asarray(SPECIES, dtype=object)[rng.integers(0, len(SPECIES), n)]
    d = rng.uniform(5.0, 45.0, n)
    h = 28.0 * d / (14.0 + d) * np.exp(rng.normal(0.0, 0.08, n))
    # every tree measured in one plot out of ten (own plot models), else a fifth
    measured = (plot % 10 == 0) | (rng.uniform(size=n) < 0.2)
    return pd.DataFrame(
        {
            "plot_id": [f"P{p:06d}" for p in plot],
            "epoch": np.where(plot % 5 == 0, "2014", "2019"),
            "species": species,
            "dbh_cm": d,
            "height_m": np.where(measured, h, np.nan),
            "usable": True,
        }
    )


def _timed(func: Callable[[], Any], *, repeat: int = 3) -> tuple[float, float]:
    """Best wall seconds of ``repeat`` calls (robust to other jobs on a shared machine),
    and the traced peak (MB) of one more call."""
    seconds = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        seconds = min(seconds, time.perf_counter() - t0)
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    sizes = parser.parse_args().sizes
    rows = []
    for n in sizes:
        t = tree_table(n)
        per_plot = t[["plot_id", "epoch"]].drop_duplicates().assign(area_ha=0.0667)
        base_s, base_mb = _timed(lambda t=t, p=per_plot: t.merge(p, on=["plot_id", "epoch"]))
        s, mb = _timed(lambda t=t: assign_height_models(t, "best"))
        rows.append(
            {
                "trees": n,
                "assign_s": round(s, 3),
                "merge_s": round(base_s, 4),
                "ratio_to_merge": round(s / base_s, 1),
                "assign_peak_mb": round(mb, 1),
                "merge_peak_mb": round(base_mb, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    for a, b in itertools.pairwise(rows):
        print(
            f"{a['trees']} -> {b['trees']} trees: time x{b['assign_s'] / a['assign_s']:.1f}, "
            f"ratio to the merge x{b['ratio_to_merge'] / a['ratio_to_merge']:.2f} "
            f"(linear: about 1; quadratic: about x{b['trees'] / a['trees']:.0f})"
        )


if __name__ == "__main__":
    main()
