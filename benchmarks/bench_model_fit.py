"""Benchmark: a biomass model's fit on a plot-sized training set, with the OpenMP threads
scikit-learn's gradient boosting starts by default against one thread.

The model stage fits each candidate once per spatial-CV fold and once on all plots, on a
few hundred plot-epochs; ``models.biomass.candidates.SklearnModel.fit`` limits the fit to one
OpenMP thread. This prints both CPU and wall times of the same fits in the same run and their
ratios (the machine's load moves the absolute figures). Run:
``.venv/bin/python benchmarks/bench_model_fit.py`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from models.biomass import ModelSettings, SklearnModel, make_model

#: plot-epochs and predictors of the demo region's satellite model
ROWS, FEATURES, FITS = 160, 24, 5


def _times(fit: Callable[[], None], *, threads: int | None) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(FITS):
        if threads is None:
            fit()
        else:
            with threadpool_limits(limits=threads, user_api="openmp"):
                fit()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES))
    y = 100 + 30 * x[:, 0] + 10 * rng.normal(size=ROWS)
    settings = ModelSettings()
    names = [f"f{i}" for i in range(FEATURES)]
    model = make_model("gradient_boosting", names, settings=settings, seed=1)
    assert isinstance(model, SklearnModel)
    est = model.estimator  # the bare scikit-learn estimator, without the fit's thread limit

    def fit() -> None:
        est.fit(x, y)

    default_cpu, default_wall = _times(fit, threads=None)
    one_cpu, one_wall = _times(fit, threads=1)
    print(f"== {FITS} gradient-boosting fits on {ROWS} rows x {FEATURES} predictors")
    print(f"  default OpenMP threads: CPU {default_cpu:6.2f} s, wall {default_wall:6.2f} s")
    print(f"  one thread:             CPU {one_cpu:6.2f} s, wall {one_wall:6.2f} s")
    print(
        f"  ratio default / one thread: CPU {default_cpu / one_cpu:.1f}x, "
        f"wall {default_wall / one_wall:.1f}x"
    )


if __name__ == "__main__":
    main()
