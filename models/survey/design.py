"""A stratified plot sample as data, the estimate it yields, and the pieces all estimators share.

The design is stratified simple random sampling of plots (systematic grids are analysed as
random samples, the usual and slightly conservative practice). Stratum ``h`` has area
``A_h`` (ha) and, optionally, ``N_h`` population units (possible plot positions, e.g.
``A_h / plot area``). From these follow the stratum weights ``W_h = A_h / A`` and, when
``N_h`` is known, the inclusion probabilities ``pi_k = n_h / N_h`` and the finite
population corrections ``1 - f_h = 1 - n_h / N_h`` (Cochran 1977 §5.2; Särndal, Swensson &
Wretman 1992 §3.7). Without ``N_h`` the population is treated as infinite (an area frame),
which is what CDM AR-TOOL14 does.

Every estimator in :mod:`models.survey` reduces to per-stratum means and variances of the
mean combined with the weights ``W_h`` (:func:`combine_strata`), and reports an
:class:`Estimate` with a two-sided Student-t interval (:func:`estimate_from_mean`).

References
----------
Cochran, W.G. (1977) Sampling Techniques, 3rd ed. Wiley.
Särndal, C.-E., Swensson, B., Wretman, J. (1992) Model Assisted Survey Sampling. Springer.
    https://doi.org/10.1007/978-1-4612-4378-6
Satterthwaite, F.E. (1946) Biometrics Bulletin 2:110-114. https://doi.org/10.2307/3002019
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import t as student_t

from models.errors import SurveyError

#: what an estimate is of: a stock at one epoch, or a change between two epochs
Quantity = Literal["stock", "change"]


@dataclass(frozen=True, eq=False)
class StratifiedDesign:
    """A stratified random sample of plots.

    Build it with :meth:`from_labels`; the constructor takes the resolved arrays.

    Parameters
    ----------
    stratum_names
        One name per stratum, in the order of the arrays below.
    plot_stratum
        For each plot, the index of its stratum in ``stratum_names``.
    stratum_area_ha
        Area of each stratum (ha); totals are area times mean density.
    stratum_units
        Number of population units ``N_h`` of each stratum (possible plots), or ``None``
        for an infinite population (no finite population correction).
    """

    stratum_names: tuple[str, ...]
    plot_stratum: NDArray[np.intp]
    stratum_area_ha: NDArray[np.float64]
    stratum_units: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n_strata = len(self.stratum_names)
        plot_stratum = np.asarray(self.plot_stratum, dtype=np.intp)
        area = np.asarray(self.stratum_area_ha, dtype=np.float64)
        if plot_stratum.ndim != 1 or area.shape != (n_strata,):
            raise SurveyError(
                f"plot_stratum must be 1-D and stratum_area_ha must have one value per "
                f"stratum ({n_strata}); got shapes {plot_stratum.shape} and {area.shape}"
            )
        if plot_stratum.size and (plot_stratum.min() < 0 or plot_stratum.max() >= n_strata):
            raise SurveyError(f"plot_stratum holds indices outside 0..{n_strata - 1}")
        for name, a in zip(self.stratum_names, area, strict=True):
            if not (math.isfinite(a) and a > 0):
                raise SurveyError(f"stratum {name!r} has area {a} ha; it must be positive")
        n_h = np.bincount(plot_stratum, minlength=n_strata)
        for name, n in zip(self.stratum_names, n_h, strict=True):
            if n < 2:
                raise SurveyError(
                    f"stratum {name!r} has {n} plot(s); the stratified variance needs at least "
                    "2 plots per stratum (add plots or merge the stratum with a neighbour)"
                )
        object.__setattr__(self, "plot_stratum", plot_stratum)
        object.__setattr__(self, "stratum_area_ha", area)
        if self.stratum_units is not None:
            units = np.asarray(self.stratum_units, dtype=np.float64)
            if units.shape != (n_strata,):
                raise SurveyError("stratum_units must have one value per stratum")
            for name, n, big_n in zip(self.stratum_names, n_h, units, strict=True):
                if not big_n >= n:
                    raise SurveyError(
                        f"stratum {name!r} has {n} plots but only {big_n} population units"
                    )
            object.__setattr__(self, "stratum_units", units)

    @classmethod
    def from_labels(
        cls,
        plot_strata: Sequence[str],
        area_ha: Mapping[str, float],
        *,
        units: Mapping[str, float] | None = None,
    ) -> StratifiedDesign:
        """Design from each plot's stratum label and each stratum's area (and units).

        Strata are ordered as in ``area_ha``; every plot label must be a key of it.
        """
        names = tuple(area_ha)
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(plot_strata) - set(index))
        if unknown:
            raise SurveyError(f"plots in strata {unknown} that have no area in area_ha")
        return cls(
            stratum_names=names,
            plot_stratum=np.array([index[s] for s in plot_strata], dtype=np.intp),
            stratum_area_ha=np.array([area_ha[s] for s in names], dtype=np.float64),
            stratum_units=None if units is None else np.array([units[s] for s in names]),
        )

    @property
    def n_plots(self) -> int:
        return int(self.plot_stratum.size)

    @property
    def n_strata(self) -> int:
        return len(self.stratum_names)

    @property
    def plots_per_stratum(self) -> NDArray[np.intp]:
        """``n_h``, the number of plots in each stratum."""
        return np.bincount(self.plot_stratum, minlength=self.n_strata)

    @property
    def area_ha(self) -> float:
        """``A``, the total area of the population (ha)."""
        return float(self.stratum_area_ha.sum())

    @property
    def weights(self) -> NDArray[np.float64]:
        """``W_h = A_h / A``, the stratum weights."""
        return self.stratum_area_ha / self.area_ha

    @property
    def sampling_fraction(self) -> NDArray[np.float64]:
        """``f_h = n_h / N_h`` (zero for an infinite population)."""
        if self.stratum_units is None:
            return np.zeros(self.n_strata)
        return self.plots_per_stratum / self.stratum_units

    @property
    def inclusion_probability(self) -> NDArray[np.float64] | None:
        """``pi_k = n_h / N_h`` of each plot, or ``None`` for an infinite population."""
        if self.stratum_units is None:
            return None
        return self.sampling_fraction[self.plot_stratum]

    def subset(self, keep: ArrayLike) -> StratifiedDesign:
        """The design restricted to the plots where ``keep`` is true (e.g. re-measured plots).

        Stratum areas and units are unchanged: the kept plots are taken as a random
        subsample of their stratum.
        """
        mask = np.asarray(keep, dtype=bool)
        if mask.shape != self.plot_stratum.shape:
            raise SurveyError(f"keep must have one flag per plot ({self.n_plots})")
        return StratifiedDesign(
            self.stratum_names, self.plot_stratum[mask], self.stratum_area_ha, self.stratum_units
        )

    def plot_values(self, values: ArrayLike, name: str) -> NDArray[np.float64]:
        """``values`` as a float array with one finite value per plot, or a clear error."""
        array = np.asarray(values, dtype=np.float64)
        if array.shape != self.plot_stratum.shape:
            raise SurveyError(
                f"{name} must have one value per plot ({self.n_plots}), got {array.shape}"
            )
        if not np.isfinite(array).all():
            bad = np.flatnonzero(~np.isfinite(array))[:5].tolist()
            raise SurveyError(f"{name} has non-finite values at plots {bad}")
        return array


@dataclass(frozen=True)
class Estimate:
    """A survey estimate of a mean density and the total over the population.

    ``se``, ``half_width``, ``lower`` and ``upper`` refer to the total; divide by the area
    for the per-hectare figures.
    """

    #: which estimator produced it (e.g. ``"stratified"``, ``"difference"``, ``"greg_linear"``)
    estimator: str
    quantity: Quantity
    #: estimated mean density over the population (unit of the plot values per ha)
    mean_per_ha: float
    #: area x mean density
    total: float
    #: standard error of the total
    se: float
    #: degrees of freedom of the Student-t quantile (``inf`` = normal)
    df: float
    #: number of plots used
    n: int
    #: two-sided confidence level of the interval
    confidence: float
    #: t quantile x se
    half_width: float
    lower: float
    upper: float


def t_quantile(confidence: float, df: float) -> float:
    """Two-sided Student-t quantile for ``confidence`` (e.g. 1.645 at 0.90, df = inf)."""
    if not 0.0 < confidence < 1.0:
        raise SurveyError(f"confidence must be in (0, 1), got {confidence}")
    if not df > 0:
        raise SurveyError(f"degrees of freedom must be positive, got {df}")
    return float(student_t.ppf(0.5 + confidence / 2.0, df))


def estimate_from_mean(
    estimator: str,
    quantity: Quantity,
    *,
    mean_per_ha: float,
    var_mean: float,
    area_ha: float,
    df: float,
    n: int,
    confidence: float,
) -> Estimate:
    """Estimate of the total ``area_ha x mean_per_ha`` with its Student-t interval."""
    se = area_ha * math.sqrt(max(var_mean, 0.0))
    total = area_ha * mean_per_ha
    half_width = t_quantile(confidence, df) * se
    return Estimate(
        estimator=estimator,
        quantity=quantity,
        mean_per_ha=float(mean_per_ha),
        total=float(total),
        se=float(se),
        df=float(df),
        n=n,
        confidence=confidence,
        half_width=float(half_width),
        lower=float(total - half_width),
        upper=float(total + half_width),
    )


def stratum_moments(
    design: StratifiedDesign, values: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-stratum sample mean and sample variance (divisor ``n_h - 1``) of plot values.

    AR-TOOL14 v04.2 eqs. (16)-(17) (Cochran 1977 eq. 5.2 and §5.3).
    """
    n_h = design.plots_per_stratum
    means = np.bincount(design.plot_stratum, weights=values, minlength=design.n_strata) / n_h
    squares = (values - means[design.plot_stratum]) ** 2
    variances = np.bincount(design.plot_stratum, weights=squares, minlength=design.n_strata)
    return means, variances / (n_h - 1)


def combine_strata(
    design: StratifiedDesign,
    stratum_means: NDArray[np.float64],
    stratum_variances: NDArray[np.float64],
) -> tuple[float, float, NDArray[np.float64]]:
    """Stratified mean ``sum W_h m_h`` and its variance ``sum W_h^2 (1 - f_h) s_h^2 / n_h``.

    ``stratum_variances`` are the per-plot variances ``s_h^2`` of whatever is being
    averaged (plot values, residuals, g-weighted residuals). Returns the mean, its
    variance, and the per-stratum variance contributions (for effective degrees of
    freedom). Cochran (1977) eqs. 5.1 and 5.6; Särndal et al. (1992) §3.7.
    """
    w = design.weights
    contributions = w**2 * (1.0 - design.sampling_fraction) * stratum_variances
    contributions = contributions / design.plots_per_stratum
    return float(w @ stratum_means), float(contributions.sum()), contributions


def satterthwaite_df(
    contributions: NDArray[np.float64], component_df: NDArray[np.float64]
) -> float:
    """Effective degrees of freedom of a sum of independent variance components.

    ``df = (sum v_h)^2 / sum(v_h^2 / df_h)`` (Satterthwaite 1946; Cochran 1977 §5.4 for
    the stratified mean, with ``v_h`` the stratum contributions and ``df_h = n_h - 1``).
    It lies between ``min(df_h)`` and ``sum(df_h)``; a zero total variance gives ``inf``.
    """
    total = float(contributions.sum())
    denominator = float((contributions**2 / component_df).sum())
    if denominator == 0.0:
        return math.inf
    return total**2 / denominator


@dataclass(frozen=True)
class Combined:
    """An estimate's interval with a systematic error added to its sampling error."""

    #: SD of the systematic (shared) error of the total
    systematic_sd: float
    #: ``sqrt(se^2 + systematic_sd^2)``: the two errors are independent
    sd: float
    #: the sampling estimate's Student-t quantile x ``sd``
    half_width: float
    lower: float
    upper: float


def combine_systematic(estimate: Estimate, systematic_sd: float) -> Combined:
    """The estimate's interval with an independent systematic SD added in quadrature.

    IPCC 2006 Guidelines Vol. 1 Ch. 3, Approach 1 (eq. 3.1): independent components of
    one quantity add as variances. The interval keeps the sampling estimate's Student-t
    quantile (``estimate.df``): Satterthwaite's degrees of freedom of the sum would be
    larger (the systematic part, from a Monte Carlo of published factor distributions, has
    no sampling error of its own) and could make the combined interval narrower than the
    sampling one; keeping ``df`` is the conservative choice.
    """
    if not systematic_sd >= 0:
        raise SurveyError(f"systematic SD must be a non-negative number, got {systematic_sd}")
    sd = math.hypot(estimate.se, systematic_sd)
    half_width = t_quantile(estimate.confidence, estimate.df) * sd
    return Combined(
        systematic_sd=float(systematic_sd),
        sd=sd,
        half_width=half_width,
        lower=estimate.total - half_width,
        upper=estimate.total + half_width,
    )


def relative_half_width(estimate: Estimate) -> float:
    """``U = half_width / |total|``: the relative uncertainty of an estimate.

    The input of the AR-TOOL14 v04.2 Appendix 2 discount (and of the CCER/VM0047 rules in
    :mod:`models.credits`). A zero total has unbounded relative uncertainty (``inf``).
    """
    if estimate.total == 0.0:
        return math.inf
    return estimate.half_width / abs(estimate.total)


def relative_efficiency(plot_only: Estimate, assisted: Estimate) -> float:
    """``var(plot-only) / var(assisted)``: how many times more plots the plot-only
    estimator would need for the precision of the assisted one (McRoberts et al. 2013).
    """
    if assisted.se == 0.0:
        return math.inf
    return (plot_only.se / assisted.se) ** 2
