"""Carbon credit arithmetic: net removals, uncertainty deduction, non-permanence buffer.

The science of a credit is bookkeeping with rules, and the rules belong to a methodology
(``configs/methodology/*.yaml``), never to this code. For one accounting unit (a parcel or
the whole project area) over one monitoring period:

1. project removals ``P`` (t CO2e) = the project's stock change over the period, with its
   standard error ``sd_P`` and degrees of freedom: a survey estimate from the project's
   monitoring plots (:mod:`models.survey`), or, without plots, the map's sum with its
   fully correlated SD bound (normal quantile);
2. baseline removals ``B`` (t CO2e) = stated baseline rate (t CO2e/ha/yr) x area x period,
   taken as exact (it is a stated, validated value of the project design);
3. leakage ``L`` = leakage fraction x max(P - B, 0);
4. net removals ``N = P - B - L``, with ``sd_N = sd_P x (1 - leakage fraction)``;
5. uncertainty ``U`` = half-width of the two-sided confidence interval at the
   methodology's level (Student-t quantile with the estimate's degrees of freedom,
   AR-TOOL14) divided by ``N``;
6. uncertainty deduction, by the methodology's rule:

   - ``discount_table`` (CDM AR-TOOL14 v04.2 Appendix 2): deduction = share(U) x half-width,
     the share read from the table band that contains U;
   - ``excess_over_threshold`` (VM0047 v1.0 section 8.4 as encoded in the methodology file):
     deduction = max(0, U - threshold) x N;

   and, when the run asks for it (``at_most_lower_bound``, the pipeline's default), at
   least the whole half-width: the credits never exceed the lower end of the net
   removals' interval. A discount table deducts only a share of the half-width below
   U = 30 % (none below 10 %), so credits from a precise sample would exceed the true net
   removals in far more than the interval's lower tail of the samples (measured in
   ``benchmarks/estimator_sampling.py``); a project may always claim less than its
   methodology allows, never more;

7. buffer = buffer fraction x (N - deduction) (the non-permanence risk withholding);
8. credits = N - deduction - buffer.

When ``N <= 0`` there is nothing to credit: deduction, buffer and credits are zero, and
the shortfall ``-N`` is reported as ``reversal_tco2e`` (net emissions against the
baseline are shown, not hidden; how they are compensated, e.g. from a buffer pool, is
the registry's business).

Which land a methodology credits at all is data of its file too: an ``eligibility`` rule
on the land's history (:class:`LandEligibility`, afforestation: not forest before the
start) and an ``applies_to`` rule on the forest type (:class:`ForestTypeRule`, bamboo
management: bamboo only). This module parses them; the credits stage checks them on the
run's data (:mod:`pipeline.eligibility`).

This module imports nothing from :mod:`pipeline` so it can be used on its own; it raises
``ValueError`` for malformed methodology data and the pipeline turns that into a
``ConfigError`` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from models.survey.design import t_quantile
from models.survey.totals import ESTIMATORS, MOST_PRECISE


@dataclass(frozen=True)
class DiscountBand:
    """One band of a discount table: applies while ``U <= max_uncertainty``."""

    #: upper bound of the relative uncertainty U (fraction); ``None`` = no upper bound
    max_uncertainty: float | None
    #: share of the absolute confidence-interval half-width that is deducted
    share_of_half_width: float


@dataclass(frozen=True)
class UncertaintyRule:
    """How a methodology turns the relative uncertainty U into a deduction."""

    kind: Literal["discount_table", "excess_over_threshold"]
    bands: tuple[DiscountBand, ...] = ()
    threshold: float | None = None
    source: str = ""


#: the land-history rules the pipeline can check on the data (``eligibility.rule``)
LAND_RULES = ("not_forest_before_start",)


@dataclass(frozen=True)
class LandEligibility:
    """A rule on the land's history: ``not_forest_before_start`` = the parcel was not
    forest at the run's epochs up to the project start (the methodology's period, when
    its clause was not read, is not invented: every earlier epoch of the run counts)."""

    rule: Literal["not_forest_before_start"]
    clause: str
    source: str
    verified: bool


@dataclass(frozen=True)
class ForestTypeRule:
    """The forest types (the parcel layer's ``forest_type``) a methodology credits."""

    forest_types: tuple[str, ...]
    clause: str
    source: str
    verified: bool


@dataclass(frozen=True)
class Methodology:
    """The parameters of a crediting methodology, each with its source."""

    id: str
    name: str
    confidence_level: float
    uncertainty_rule: UncertaintyRule
    #: None where the file makes it project specific (``project_specific: true``, no
    #: value): the project's own assessment must be given (:meth:`with_overrides`)
    leakage_fraction: float | None
    buffer_fraction: float | None
    baseline_column: str
    #: the survey estimator of the project's stock change (a name of
    #: :data:`models.survey.totals.ESTIMATORS`, or ``most_precise``)
    estimator: str
    #: parameter name -> (source, verified)
    provenance: tuple[tuple[str, str, bool], ...] = ()
    #: deduct at least the whole half-width, so credits never exceed the lower end of the
    #: net removals' interval (a run policy: ``stages.credits.at_most_lower_bound``)
    at_most_lower_bound: bool = False
    #: the land-history rule checked on the data, if the file declares one
    eligibility: LandEligibility | None = None
    #: the forest types credited, if the file restricts them
    applies_to: ForestTypeRule | None = None

    def with_overrides(
        self,
        *,
        leakage_fraction: float | None = None,
        buffer_fraction: float | None = None,
        at_most_lower_bound: bool | None = None,
    ) -> Methodology:
        """A copy with the run config's overrides of leakage, buffer and the floor applied."""
        prov = list(self.provenance)
        floor = self.at_most_lower_bound if at_most_lower_bound is None else at_most_lower_bound
        lf, bf = self.leakage_fraction, self.buffer_fraction
        if leakage_fraction is not None:
            lf = leakage_fraction
            prov = [p for p in prov if p[0] != "leakage_fraction"]
            prov.append(("leakage_fraction", "run config stages.credits.leakage_fraction", True))
        if buffer_fraction is not None:
            bf = buffer_fraction
            prov = [p for p in prov if p[0] != "buffer_fraction"]
            prov.append(("buffer_fraction", "run config stages.credits.buffer_fraction", True))
        return replace(
            self,
            leakage_fraction=lf,
            buffer_fraction=bf,
            provenance=tuple(prov),
            at_most_lower_bound=floor,
        )

    def unset(self) -> list[str]:
        """The project-specific parameters still without a value."""
        return [k for k in ("leakage_fraction", "buffer_fraction") if getattr(self, k) is None]


def _param(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: '{key}' must be a mapping with 'value' and 'source'")
    if "source" not in value:
        raise ValueError(f"{source}: '{key}' has no 'source'; every parameter must cite one")
    return value


def _fraction(entry: Mapping[str, Any], key: str, source: str) -> float:
    value = entry.get("value")
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{source}: '{key}.value' must be a number in [0, 1], got {value!r}")
    return float(value)


def _project_fraction(entry: Mapping[str, Any], key: str, source: str) -> float | None:
    """A fraction, or None where the methodology leaves it to the project
    (``value: null`` with ``project_specific: true``)."""
    if entry.get("value") is None and entry.get("project_specific") is True:
        return None
    return _fraction(entry, key, source)


def _clause(data: Mapping[str, Any], key: str, source: str) -> tuple[str, str, bool]:
    """``clause``, ``source`` and ``verified`` of a land rule (all required)."""
    entry = data[key]
    for field in ("clause", "source"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise ValueError(f"{source}: '{key}.{field}' must be a non-empty string")
    if not isinstance(entry.get("verified"), bool):
        raise ValueError(f"{source}: '{key}.verified' must be true or false")
    return str(entry["clause"]), str(entry["source"]), bool(entry["verified"])


def land_rules(
    data: Mapping[str, Any], *, source: str
) -> tuple[LandEligibility | None, ForestTypeRule | None]:
    """The optional ``eligibility`` and ``applies_to`` rules of a methodology file."""
    eligibility = applies_to = None
    if data.get("eligibility") is not None:
        if not isinstance(data["eligibility"], Mapping):
            raise ValueError(f"{source}: 'eligibility' must be a mapping")
        rule = data["eligibility"].get("rule")
        if rule not in LAND_RULES:
            raise ValueError(
                f"{source}: 'eligibility.rule' must be one of {LAND_RULES}, got {rule!r}"
            )
        eligibility = LandEligibility(rule, *_clause(data, "eligibility", source))
    if data.get("applies_to") is not None:
        if not isinstance(data["applies_to"], Mapping):
            raise ValueError(f"{source}: 'applies_to' must be a mapping")
        types = data["applies_to"].get("forest_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{source}: 'applies_to.forest_types' must be a list of names")
        applies_to = ForestTypeRule(tuple(types), *_clause(data, "applies_to", source))
    return eligibility, applies_to


def methodology_from_mapping(data: Mapping[str, Any], *, source: str) -> Methodology:
    """Validate a parsed methodology file (see ``configs/methodology/ccer.yaml``)."""
    for key in ("id", "name"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"{source}: '{key}' must be a string")
    prov: list[tuple[str, str, bool]] = []
    entries = {}
    for key in ("leakage_fraction", "buffer_fraction", "confidence_level", "baseline", "estimator"):
        entries[key] = _param(data, key, source)
        prov.append((key, str(entries[key]["source"]), bool(entries[key].get("verified", False))))
    confidence = _fraction(entries["confidence_level"], "confidence_level", source)
    if not 0 < confidence < 1:
        raise ValueError(f"{source}: 'confidence_level.value' must lie strictly between 0 and 1")
    column = entries["baseline"].get("column")
    if entries["baseline"].get("kind") != "stated_per_parcel" or not isinstance(column, str):
        raise ValueError(
            f"{source}: 'baseline' must have kind 'stated_per_parcel' and a 'column' name"
        )

    estimator = entries["estimator"].get("value")
    if estimator not in (*ESTIMATORS, MOST_PRECISE):
        raise ValueError(
            f"{source}: 'estimator.value' must be one of {[*ESTIMATORS, MOST_PRECISE]}, "
            f"got {estimator!r}"
        )

    rule_data = _param(data, "uncertainty_rule", source)
    kind = rule_data.get("kind")
    prov.append(
        ("uncertainty_rule", str(rule_data["source"]), bool(rule_data.get("verified", False)))
    )
    if kind == "discount_table":
        raw = rule_data.get("bands")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{source}: 'uncertainty_rule.bands' must be a non-empty list")
        bands = []
        last = -math.inf
        for i, band in enumerate(raw):
            upper = band.get("max_uncertainty")
            share = band.get("share_of_half_width")
            if not isinstance(share, int | float) or not 0 <= share <= 1:
                raise ValueError(
                    f"{source}: uncertainty_rule.bands[{i}].share_of_half_width must be in [0, 1]"
                )
            if upper is None and i != len(raw) - 1:
                raise ValueError(f"{source}: only the last band may have max_uncertainty null")
            if upper is not None and upper <= last:
                raise ValueError(f"{source}: uncertainty_rule.bands must be in increasing order")
            last = math.inf if upper is None else float(upper)
            bands.append(DiscountBand(None if upper is None else float(upper), float(share)))
        if bands[-1].max_uncertainty is not None:
            raise ValueError(
                f"{source}: the last uncertainty band must have max_uncertainty null (no bound)"
            )
        rule = UncertaintyRule("discount_table", bands=tuple(bands), source=rule_data["source"])
    elif kind == "excess_over_threshold":
        thr = rule_data.get("threshold")
        if not isinstance(thr, int | float) or not 0 <= thr < 1:
            raise ValueError(f"{source}: 'uncertainty_rule.threshold' must be in [0, 1)")
        rule = UncertaintyRule(
            "excess_over_threshold", threshold=float(thr), source=rule_data["source"]
        )
    else:
        raise ValueError(
            f"{source}: uncertainty_rule.kind must be 'discount_table' or "
            f"'excess_over_threshold', got {kind!r}"
        )
    eligibility, applies_to = land_rules(data, source=source)
    for key, land_rule in (("eligibility", eligibility), ("applies_to", applies_to)):
        if land_rule is not None:
            prov.append((key, f"{land_rule.clause} ({land_rule.source})", land_rule.verified))
    return Methodology(
        id=str(data["id"]),
        name=str(data["name"]),
        confidence_level=confidence,
        uncertainty_rule=rule,
        leakage_fraction=_project_fraction(entries["leakage_fraction"], "leakage_fraction", source),
        buffer_fraction=_project_fraction(entries["buffer_fraction"], "buffer_fraction", source),
        baseline_column=column,
        estimator=str(estimator),
        provenance=tuple(prov),
        eligibility=eligibility,
        applies_to=applies_to,
    )


def load_methodology(path: Path) -> Methodology:
    """Read and validate a methodology YAML file."""
    if not path.is_file():
        raise ValueError(f"{path}: methodology file not found (see configs/methodology/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of keys")
    return methodology_from_mapping(data, source=str(path))


def uncertainty_deduction_tco2e(
    net_tco2e: float, half_width_tco2e: float, rule: UncertaintyRule
) -> tuple[float, float]:
    """The deduction (t CO2e) and the factor applied, for positive net removals.

    Returns ``(deduction, factor)``: for a discount table the factor is the share of the
    half-width, for a threshold rule it is the share of the net removals.
    """
    if net_tco2e <= 0:
        return 0.0, 0.0
    u = half_width_tco2e / net_tco2e
    if rule.kind == "discount_table":
        for band in rule.bands:
            if band.max_uncertainty is None or u <= band.max_uncertainty:
                share = band.share_of_half_width
                # AR-TOOL14: never deduct more than the whole estimate
                return min(share * half_width_tco2e, net_tco2e), share
        raise ValueError("discount table has no open-ended last band")  # validated on load
    threshold = rule.threshold if rule.threshold is not None else 0.0
    factor = min(max(0.0, u - threshold), 1.0)
    return factor * net_tco2e, factor


@dataclass(frozen=True)
class CreditSteps:
    """Every intermediate value of one credit calculation (t CO2e unless stated)."""

    area_ha: float
    period_yr: float
    project_tco2e: float
    project_sd_tco2e: float
    #: half-width of the project estimate's interval (t_value x project SD)
    project_half_width_tco2e: float
    baseline_rate_tco2e_ha_yr: float
    baseline_tco2e: float
    leakage_fraction: float
    leakage_tco2e: float
    net_tco2e: float
    net_sd_tco2e: float
    #: two-sided Student-t quantile of the interval (normal where ``df`` is infinite)
    t_value: float
    df: float
    estimator: str
    half_width_tco2e: float
    uncertainty_pct: float
    uncertainty_factor: float
    #: the methodology's own deduction (its rule alone)
    rule_deduction_tco2e: float
    #: the deduction applied: the rule's, or the whole half-width when the run keeps credits
    #: at most the interval's lower end and that is more
    uncertainty_deduction_tco2e: float
    after_uncertainty_tco2e: float
    buffer_fraction: float
    buffer_tco2e: float
    credits_tco2e: float
    reversal_tco2e: float


def credit_steps(
    *,
    area_ha: float,
    period_yr: float,
    project_tco2e: float,
    project_sd_tco2e: float,
    baseline_rate_tco2e_ha_yr: float,
    methodology: Methodology,
    df: float,
    estimator: str,
) -> CreditSteps:
    """Run the credit calculation for one accounting unit (see the module docstring).

    ``project_sd_tco2e`` is the standard error of ``project_tco2e`` by ``estimator`` with
    ``df`` degrees of freedom: the interval's half-width is the two-sided Student-t
    quantile at the methodology's confidence level times the SD (AR-TOOL14), the normal
    quantile where ``df`` is infinite (a map-based SD).
    """
    if period_yr <= 0:
        raise ValueError(f"the monitoring period must be positive, got {period_yr} years")
    if project_sd_tco2e < 0:
        raise ValueError(f"a standard deviation cannot be negative, got {project_sd_tco2e}")
    lf, bf = methodology.leakage_fraction, methodology.buffer_fraction
    if lf is None or bf is None:
        raise ValueError(
            f"methodology {methodology.id!r}: {', '.join(methodology.unset())} is project "
            "specific and has no value"
        )
    baseline = baseline_rate_tco2e_ha_yr * area_ha * period_yr
    leakage = lf * max(project_tco2e - baseline, 0.0)
    net = project_tco2e - baseline - leakage
    net_sd = project_sd_tco2e * (1.0 - lf)
    t_value = t_quantile(methodology.confidence_level, df)
    half_width = t_value * net_sd
    u_pct = 100.0 * half_width / net if net > 0 else math.nan
    rule_deduction, factor = uncertainty_deduction_tco2e(
        net, half_width, methodology.uncertainty_rule
    )
    deduction = rule_deduction
    if methodology.at_most_lower_bound and net > 0:
        deduction = max(rule_deduction, min(half_width, net))
    after = net - deduction
    buffer = bf * after if after > 0 else 0.0
    return CreditSteps(
        area_ha=area_ha,
        period_yr=period_yr,
        project_tco2e=project_tco2e,
        project_sd_tco2e=project_sd_tco2e,
        project_half_width_tco2e=t_value * project_sd_tco2e,
        baseline_rate_tco2e_ha_yr=baseline_rate_tco2e_ha_yr,
        baseline_tco2e=baseline,
        leakage_fraction=lf,
        leakage_tco2e=leakage,
        net_tco2e=net,
        net_sd_tco2e=net_sd,
        t_value=t_value,
        df=df,
        estimator=estimator,
        half_width_tco2e=half_width,
        uncertainty_pct=u_pct,
        uncertainty_factor=factor,
        rule_deduction_tco2e=rule_deduction,
        uncertainty_deduction_tco2e=deduction,
        after_uncertainty_tco2e=after,
        buffer_fraction=bf,
        buffer_tco2e=buffer,
        credits_tco2e=max(after - buffer, 0.0),
        reversal_tco2e=max(-net, 0.0),
    )
