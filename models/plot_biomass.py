"""Plot aboveground/belowground biomass, carbon and CO2e with Monte Carlo uncertainty.

From a field tree list (plot_id, epoch, tree_id, species, dbh_cm, optional height_m,
wood_density_g_cm3, age_yr; without an ``epoch`` column the list is one census, see
:func:`with_epoch`) and plot areas, per plot and epoch:

1. **QA** (``models/data/qa_rules.yaml``): implausible rows are reported with a reason and
   an action (exclude the tree, discard the height, discard a wood density override, or
   keep with a warning); a cell that is not a number is a QA row too and counts as blank.
   A plot whose rows all lack a measurable stem (DBH blank or 0) has zero biomass; a plot
   left without a usable tree for any other reason is an error naming the plot. Species
   named in Chinese, pinyin or by a Latin synonym are read as their Latin name
   (:func:`models.allometry.translate_species`), one QA row per name translated.
2. **Heights**: trees without a (plausible) height get one from an H-D model
   (:mod:`models.hd`, BIOMASS ``modelHD`` forms) fitted per plot/epoch/species group when
   it has >= 15 measured heights, else per species group and epoch over all plots, else
   per species group; with no model the species' no-height equation is used.
3. **Tree biomass**: :func:`models.allometry.tree_agb_kg` (registry default per species,
   or the forced equation), BGB = AGB x IPCC root-to-shoot ratio of the plot's AGB class,
   carbon = (AGB + BGB) x carbon fraction, CO2e = C x 44/12.
4. **Monte Carlo** (as BIOMASS ``AGBmonteCarlo``, Rejou-Mechain et al. 2017): each draw
   perturbs DBH with the Chave et al. (2004) measurement error model (95% of trees
   sd = 0.0062 D + 0.0904 cm, 5% sd = 4.64 cm, truncated normal 0.1-500 cm), wood density
   (truncated normal, 0.08-1.39 g/cm3), predicted heights (H-D model error, re-predicted
   from the perturbed DBH), the allometric residual (log-normal with the equation's RSE),
   the root-to-shoot ratio (triangular on the IPCC range, per plot) and the carbon
   fraction (normal, per tree, as BIOMASS). Constants: ``models/data/uncertainty.yaml``.

Two deliberate differences from BIOMASS: model coefficients are fixed at their published
values (BIOMASS draws Chave eq. 4 coefficients from its MCMC posterior ``param_4``, which
is not published as a table), and the allometric error factor is mean-preserving
(exp(e - RSE^2/2)), so the Monte Carlo mean of each tree equals its equation value at the
observed inputs and the plot estimate (``agb_mg_ha``) is the deterministic sum, i.e. the
``computeAGB`` number. Standard deviations and the 5th/95th percentiles come from the draws.

Run from the command line: ``forest-carbon plots TREES.csv --plots PLOTS.gpkg --out DIR``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import ndtr, ndtri

from models import allometry
from models.datafiles import data_yaml
from models.errors import (
    AllometryError,
    HDFitError,
    ImplausibleHDError,
    ModelDomainError,
    ModelsWarning,
    PlotDataError,
    PlotOptionsError,
)
from models.hd import HDChoice, HDModel, select_hd

FloatArray = npt.NDArray[np.float64]

TREE_COLUMNS = ("plot_id", "epoch", "tree_id", "species", "dbh_cm")
#: epoch of a single-census tree list (no ``epoch`` column) when no other name is given
DEFAULT_EPOCH = "single"
OPTIONAL_COLUMNS = ("height_m", "wood_density_g_cm3", "age_yr", "plot_area_ha")
PLOT_COLUMNS = (
    "plot_id",
    "epoch",
    "n_stems",
    "basal_area_m2_ha",
    "agb_mg_ha",
    "agb_sd_mg_ha",
    "bgb_mg_ha",
    "bgb_sd_mg_ha",
    "carbon_mg_ha",
    "carbon_sd_mg_ha",
    "co2e_t_ha",
    "co2e_sd_t_ha",
    "agb_p05_mg_ha",
    "agb_p95_mg_ha",
)
#: column of the plot table with each plot's stem granularity (:func:`stem_granularity_m2`)
GRANULARITY_COLUMN = "agb_granularity_m2"
QA_COLUMNS = ("plot_id", "epoch", "tree_id", "field", "value", "reason", "action")
#: QA ``field`` of the run's summary of the trees outside the species table (one row)
SPECIES_TABLE_FIELD = "species_table"
#: where each wood density level comes from, for the summary of trees outside the table
WOOD_DENSITY_SOURCES = {
    "user": "the tree list's own values",
    "species": "species values of wood_density.csv",
    "genus": "genus means (wood_density.csv, else Global Wood Density Database)",
    "family": "family means (wood_density.csv, else Global Wood Density Database)",
    "dataset": "the mean of the run's trees with a table value (BIOMASS dataset level)",
}
KG_PER_MG = 1000.0
CM2_PER_M2 = 10000.0
M2_PER_HA = 10000.0


@dataclass(frozen=True)
class PlotBiomassOptions:
    """Options of :func:`plot_biomass`.

    They mirror ``PlotsParams`` of the pipeline config, which holds their defaults.
    """

    #: equation name for every tree, or ``species`` for the registry default per species
    equation: str
    #: Chave et al. 2014 E index (eq. 7 family only)
    chave_e: float | None
    #: Monte Carlo draws
    n_draws: int
    hd_model: HDChoice
    dbh_error: Literal["chave2004", "none"]
    seed: int
    #: lower and upper quantiles reported as agb_p05 / agb_p95
    quantiles: tuple[float, float] = (0.05, 0.95)
    #: epoch given to every tree of a list without an ``epoch`` column (a single census)
    tree_epoch: str = DEFAULT_EPOCH


def _truncnorm(
    rng: np.random.Generator, mean: FloatArray, sd: FloatArray, lower: float, upper: float
) -> FloatArray:
    """Truncated normal draws by inversion (BIOMASS ``myrtruncnorm``)."""
    sd = np.where(sd > 0, sd, np.nan)
    lo = ndtr((lower - mean) / sd)
    hi = ndtr((upper - mean) / sd)
    u = rng.uniform(size=mean.shape)
    draw = mean + sd * ndtri(lo + u * (hi - lo))
    return np.where(np.isfinite(sd), draw, mean)


# ----------------------------------------------------------------------------- QA
#: how a translation names the language of the name it translated
NAME_LANGUAGES = {"zh": "Chinese name", "pinyin": "pinyin", "latin synonym": "Latin synonym"}


def species_translations(species: pd.Series) -> dict[str, str]:
    """The names of a tree list's ``species`` column that are not the tables' Latin names
    but translate to one (``models/data/species_names.csv``), each with a line that says
    to what, how many trees carry it and the source of the translation."""
    counts = species.dropna().astype(str).value_counts(sort=False)
    out = {}
    for name, n in counts.items():
        latin, entry = allometry.translate_species(name)
        if entry is not None:
            out[str(name)] = (
                f"{str(name).strip()} read as {latin} ({NAME_LANGUAGES[entry.language]}, "
                f"{n} tree(s); source: {entry.source})"
            )
    return out


def _qa_row(r: pd.Series, field: str, value: object, reason: str, action: str) -> dict[str, Any]:
    return {
        "plot_id": r["plot_id"],
        "epoch": r["epoch"],
        "tree_id": r["tree_id"],
        "field": field,
        "value": value,
        "reason": reason,
        "action": action,
    }


#: numeric columns of a tree list and the QA action for a cell that is not a number (such a
#: cell counts as missing: a DBH excludes its tree, the others fall back as when blank)
NUMERIC_COLUMNS = {
    "dbh_cm": "exclude",
    "height_m": "drop_height",
    "wood_density_g_cm3": "drop_override",
    "age_yr": "drop_age",
}


def _not_numbers(column: pd.Series, name: str) -> tuple[pd.Series, pd.Series]:
    """The cells of ``column`` that hold something other than a number or a blank, and the
    column as numbers (NaN there and where blank).

    Raises
    ------
    PlotDataError
        No cell of the column holds a number although some hold text (decimal commas or
        units in the cells, or the wrong column): the message names the column.
    """
    values = pd.to_numeric(column, errors="coerce")
    text = column.astype("string").str.strip()
    bad = pd.Series((values.isna() & text.notna() & (text != "")).to_numpy(bool), column.index)
    if bad.any() and values.notna().sum() == 0:
        examples = ", ".join(repr(v) for v in pd.unique(column[bad])[:3])
        raise PlotDataError(
            f"column {name!r} holds no number ({examples}, ...): write plain numbers in "
            "the column's unit, with a decimal point and no unit text"
        )
    return bad, values


def require_tree_columns(trees: pd.DataFrame) -> None:
    """Refuse a tree list that lacks a required column (``epoch`` may be missing: such a
    list is one census, :func:`with_epoch`).

    Raises
    ------
    PlotDataError
        Naming the missing columns and those required and optional.
    """
    missing = [c for c in TREE_COLUMNS if c not in trees.columns and c != "epoch"]
    if missing:
        raise PlotDataError(
            f"tree list lacks column(s) {missing}; required: {list(TREE_COLUMNS)} (epoch "
            f"only for re-measured plots), optional: {list(OPTIONAL_COLUMNS)}"
        )


def check_trees(
    trees: pd.DataFrame, options: PlotBiomassOptions
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the QA rules; return (trees with a ``usable`` flag and cleaned fields, qa).

    Raises
    ------
    PlotDataError
        A required column is missing, or a numeric column holds no number at all.
    """
    require_tree_columns(trees)
    rules = data_yaml("qa_rules.yaml")
    t = trees.copy().reset_index(drop=True)
    for col in OPTIONAL_COLUMNS:
        if col not in t.columns:
            t[col] = np.nan
    qa: list[dict[str, Any]] = []
    not_number = pd.Series(False, index=t.index)
    texts: dict[str, int] = {}
    for col, action in NUMERIC_COLUMNS.items():
        bad, values = _not_numbers(t[col], col)
        qa += [_qa_row(r, col, r[col], "not a number", action) for _, r in t[bad].iterrows()]
        if bad.any():
            texts[col] = int(bad.sum())
        if col == "dbh_cm":
            not_number = bad
        t[col] = values
    if texts:
        counts = ", ".join(f"{c}: {n}" for c, n in texts.items())
        warnings.warn(
            ModelsWarning(
                f"tree list: cells that are not numbers ({counts}) were taken as blank; see "
                "the rows of plots/qa.csv with reason 'not a number'",
                code="tree_cells_not_numbers",
                values={"counts": counts},
            ),
            stacklevel=3,
        )
    # a cell that is not a number leaves its plot without an area: refused by _plot_areas
    t["plot_area_ha"] = _not_numbers(t["plot_area_ha"], "plot_area_ha")[1]
    for name, line in species_translations(t["species"]).items():
        qa.append({"plot_id": None, "epoch": None, "tree_id": None, "field": "species",
                   "value": name, "reason": line, "action": "translate"})  # fmt: skip
    t["species"] = t["species"].map(allometry.normalise_species)
    t["height_measured_m"] = t["height_m"]
    t["usable"] = ~not_number
    # no stem to measure at breast height (seedlings, a young stand): DBH blank or 0
    t["no_stem"] = (t["dbh_cm"].isna() & ~not_number) | (t["dbh_cm"] == 0)

    d_rule = rules["dbh_cm"]
    bad_d = ~(t["dbh_cm"] > d_rule["min_exclusive"]) | (t["dbh_cm"] > d_rule["max"])
    for _, r in t[bad_d & ~not_number].iterrows():
        reason = (
            "dbh missing"
            if pd.isna(r["dbh_cm"])
            else (f"dbh outside ({d_rule['min_exclusive']}, {d_rule['max']}] cm")
        )
        qa.append(_qa_row(r, "dbh_cm", r["dbh_cm"], reason, "exclude"))
    t.loc[bad_d, "usable"] = False

    h_rule = rules["height_m"]
    has_h = t["height_m"].notna()
    bad_h = has_h & ((t["height_m"] < h_rule["min"]) | (t["height_m"] > h_rule["max"]))
    for _, r in t[bad_h & t["usable"]].iterrows():
        qa.append(
            _qa_row(
                r,
                "height_m",
                r["height_m"],
                f"height outside [{h_rule['min']}, {h_rule['max']}] m",
                "drop_height",
            )
        )
    t.loc[bad_h, "height_m"] = np.nan

    w_rule = rules["wood_density_g_cm3"]
    has_w = t["wood_density_g_cm3"].notna()
    bad_w = has_w & (
        (t["wood_density_g_cm3"] < w_rule["min"]) | (t["wood_density_g_cm3"] > w_rule["max"])
    )
    for _, r in t[bad_w & t["usable"]].iterrows():
        qa.append(
            _qa_row(
                r,
                "wood_density_g_cm3",
                r["wood_density_g_cm3"],
                f"wood density outside [{w_rule['min']}, {w_rule['max']}] g/cm3",
                "drop_override",
            )
        )
    t.loc[bad_w, "wood_density_g_cm3"] = np.nan

    bad_age = t["age_yr"].notna() & (t["age_yr"] < rules["age_yr"]["min"])
    t.loc[bad_age, "age_yr"] = np.nan
    for _, r in t[bad_age].iterrows():
        qa.append(_qa_row(r, "age_yr", r["age_yr"], "negative age", "drop_age"))

    dup = t.duplicated(subset=["plot_id", "epoch", "tree_id"], keep="first") & t["tree_id"].notna()
    for _, r in t[dup].iterrows():
        qa.append(
            _qa_row(r, "tree_id", r["tree_id"], "duplicate tree_id in plot and epoch", "exclude")
        )
    t.loc[dup, "usable"] = False

    for sp in pd.unique(t["species"]):
        tax = allometry.resolve_taxon(str(sp))
        if tax.known_species:
            continue
        level = (
            f"genus {tax.genus} ({tax.group} defaults)"
            if tax.family
            else (f"regional defaults ({tax.group})")
        )
        for _, r in t[(t["species"] == sp) & t["usable"]].iterrows():
            qa.append(
                _qa_row(
                    r, "species", sp, f"species not in models/data/species.csv: {level}", "keep"
                )
            )
    return t, pd.DataFrame(qa, columns=list(QA_COLUMNS))


# ------------------------------------------------------------------------ heights
@dataclass
class HeightModels:
    """The H-D models of a tree list: the model key per tree (None where no model could be
    fitted), the fitted models by key, and the fits refused as implausible (reason by key)."""

    keys: pd.Series
    models: dict[tuple[Any, ...], HDModel]
    rejected: dict[tuple[Any, ...], str]

    def rows_by_key(self) -> dict[tuple[Any, ...], npt.NDArray[np.intp]]:
        """The positions (in ``keys``) of the trees of each model (not of the trees without
        one), in one pass."""
        codes, uniques = pd.factorize(self.keys.to_numpy(dtype=object))
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        return {uniques[i]: order[bounds[i] : bounds[i + 1]] for i in range(len(uniques))}


#: the scopes of H-D models, tried in order: their name and the columns that define them
HD_SCOPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plot", ("plot_id", "epoch", "_group")),
    ("epoch", ("epoch", "_group")),
    ("group", ("_group",)),
)


def assign_height_models(
    t: pd.DataFrame, choice: HDChoice, *, rows: pd.Series | None = None
) -> HeightModels:
    """For each usable tree without height (or each of ``rows``), the H-D model for it.

    Scopes tried in order: (plot, epoch, group), (epoch, group), (group); a scope whose
    fits are all implausible (:meth:`models.hd.HDModel.implausibility` over the scope's
    diameters, heights up to ``qa_rules.yaml`` ``height_m.max``) falls to the next. A
    model is fitted once per scope that a tree needs, from the usable trees of the scope
    (in table order); trees are matched to scopes by grouping, so the cost grows with the
    number of trees, not its square.
    """
    max_h = float(data_yaml("qa_rules.yaml")["height_m"]["max"])
    species = t["species"].astype(str)
    group_of = {s: allometry.resolve_taxon(s).group for s in pd.unique(species)}
    t = t.assign(_group=species.map(group_of))
    usable = t[t["usable"].to_numpy(dtype=bool)]
    dbh, height = usable["dbh_cm"].to_numpy(dtype=float), usable["height_m"].to_numpy(dtype=float)
    models: dict[tuple[Any, ...], HDModel] = {}
    rejected: dict[tuple[Any, ...], str] = {}
    keys = np.full(len(t), None, dtype=object)
    need = (t["usable"] & t["height_m"].isna() if rows is None else rows).to_numpy(dtype=bool)
    todo = np.flatnonzero(need)  # positions still without a model
    for scope, cols in HD_SCOPES:
        if todo.size == 0:
            break
        members = usable.groupby(list(cols), sort=False).indices
        wanted = t.iloc[todo].groupby(list(cols), sort=False).indices
        fitted = np.zeros(todo.size, bool)
        for value, at in wanted.items():
            value_t = value if isinstance(value, tuple) else (value,)
            key = (scope, *value_t)
            sub = members.get(value, np.empty(0, np.intp))
            try:
                models[key] = select_hd(dbh[sub], height[sub], choice, max_height_m=max_h)
            except ImplausibleHDError as err:
                rejected[key] = str(err)
                continue
            except HDFitError:
                continue
            holder = np.empty(1, dtype=object)
            holder[0] = key
            keys[todo[at]] = holder.repeat(at.size)
            fitted[at] = True
        todo = todo[~fitted]
    return HeightModels(pd.Series(keys, index=t.index, dtype=object), models, rejected)


def _scope_qa(key: tuple[Any, ...]) -> dict[str, Any]:
    """plot_id and epoch of a QA row about the H-D model of scope ``key``."""
    return {
        "plot_id": key[1] if key[0] == "plot" else None,
        "epoch": key[2] if key[0] == "plot" else (key[1] if key[0] == "epoch" else None),
    }


def flag_measured_heights(t: pd.DataFrame, choice: HDChoice) -> list[dict[str, Any]]:
    """Discard measured heights far off their H-D model; QA rows for them.

    No tallest-tree table by genus or region could be sourced, so the bound is the H-D
    model of the tree's scope (fitted with the tree): a measured height whose log ratio to
    the model's height exceeds ``height_m.outlier_robust_z`` robust standard deviations
    (1.4826 x the median absolute log residual of the scope's measured trees, which one
    wild height cannot inflate, at least ``height_m.outlier_min_log_sd``) is dropped and
    predicted like a missing one.
    """
    rule = data_yaml("qa_rules.yaml")["height_m"]
    z, floor = float(rule["outlier_robust_z"]), float(rule["outlier_min_log_sd"])
    measured = t["usable"] & t["height_m"].notna()
    hm = assign_height_models(t, choice, rows=measured)
    dbh, height = t["dbh_cm"].to_numpy(dtype=float), t["height_m"].to_numpy(dtype=float)
    drop = np.zeros(len(t), bool)
    qa_rows: list[dict[str, Any]] = []
    for key, at in hm.rows_by_key().items():
        res = np.log(height[at] / hm.models[key].predict(dbh[at]))
        scale = max(1.4826 * float(np.median(np.abs(res - np.median(res)))), floor)
        bad = np.abs(res - np.median(res)) > z * scale
        for pos, r in zip(at[bad], res[bad], strict=True):
            qa_rows.append(
                _qa_row(
                    t.iloc[pos],
                    "height_m",
                    height[pos],
                    f"measured height {np.exp(r):.2g} x the H-D model's "
                    f"({hm.models[key].describe()}), beyond {z:g} robust SDs of its scope",
                    "drop_height",
                )
            )
        drop[at[bad]] = True
    t.loc[drop, "height_m"] = np.nan
    return qa_rows


# ------------------------------------------------------------------- Monte Carlo
@dataclass(frozen=True)
class _TreeInputs:
    species: npt.NDArray[np.object_]
    dbh_cm: FloatArray
    height_m: FloatArray  # measured (NaN where predicted or unknown)
    hd_keys: list[Any]
    wood_density_g_cm3: FloatArray
    wd_sd: FloatArray  # absolute SD (g cm-3), BIOMASS getWoodDensity levels
    age_yr: FloatArray
    equations: npt.NDArray[np.object_]
    bgb_equations: npt.NDArray[np.object_]  # None where the root-to-shoot ratio applies
    cf_agb: FloatArray  # carbon fractions of AGB and BGB (kg C / kg) and their SDs
    cf_bgb: FloatArray
    cf_sd_agb: FloatArray
    cf_sd_bgb: FloatArray


def _draw_dbh(rng: np.random.Generator, d: FloatArray, m: int, how: str) -> FloatArray:
    n = d.size
    if how == "none":
        return np.repeat(d[:, None], m, axis=1)
    c = data_yaml("uncertainty.yaml")["dbh_error"]["chave2004"]
    sd = np.repeat((c["small_sd_slope"] * d + c["small_sd_intercept_cm"])[:, None], m, axis=1)
    k = round(n * c["large_error_share"])
    if k > 0:
        # k trees per draw get the large error (BIOMASS: sample(len, fivePercent) per draw)
        large = np.argsort(rng.uniform(size=(n, m)), axis=0)[:k]
        sd[large, np.arange(m)[None, :]] = c["large_sd_cm"]
    lo, hi = c["truncate_cm"]
    return _truncnorm(rng, np.repeat(d[:, None], m, axis=1), sd, float(lo), float(hi))


def rse_log(equation: str) -> float:
    """Residual SE (natural-log scale) of an equation; its own, else the configured
    fallback equation's (``uncertainty.yaml``: ``allometry.fallback_rse_equation``)."""
    eq = allometry.get_equation(equation)
    if eq.rse_log is not None:
        return eq.rse_log
    fallback = data_yaml("uncertainty.yaml")["allometry"]["fallback_rse_equation"]
    return float(allometry.get_equation(fallback).rse_log or 0.0)


def _lognormal_error(
    rng: np.random.Generator, names: npt.NDArray[np.object_], values: FloatArray
) -> FloatArray:
    """Multiply each tree's value by its equation's mean-preserving log-normal error."""
    out = values.copy()
    for name in pd.unique(names[pd.notna(names)]):
        rows = names == name
        sigma = rse_log(str(name))
        eps = rng.normal(0.0, sigma, size=values[rows].shape)
        out[rows] = values[rows] * np.exp(eps - 0.5 * sigma**2)
    return out


def _simulate_trees(
    rng: np.random.Generator,
    x: _TreeInputs,
    models: Mapping[Any, HDModel],
    options: PlotBiomassOptions,
) -> tuple[FloatArray, FloatArray]:
    """Matrices (trees x draws) of simulated tree AGB and root-equation BGB in kg.

    The BGB matrix is NaN for trees whose BGB comes from the root-to-shoot ratio.
    """
    m = options.n_draws
    unc = data_yaml("uncertainty.yaml")
    d_sim = _draw_dbh(rng, x.dbh_cm, m, options.dbh_error)
    wd_mean = np.repeat(x.wood_density_g_cm3[:, None], m, axis=1)
    wd_sd = np.repeat(x.wd_sd[:, None], m, axis=1)
    lo, hi = unc["wood_density"]["truncate_g_cm3"]
    wd_sim = _truncnorm(rng, wd_mean, wd_sd, float(lo), float(hi))
    h_sim = np.repeat(x.height_m[:, None], m, axis=1)
    rel_h = float(unc["height"]["measured_relative_sd"])
    measured = np.isfinite(x.height_m)
    if rel_h > 0 and measured.any():
        upper = float(np.nanmax(x.height_m)) + float(unc["height"]["upper_margin_m"])
        h_sim[measured] = _truncnorm(
            rng, h_sim[measured], h_sim[measured] * rel_h, float(unc["height"]["lower_m"]), upper
        )
    # in the keys' first order: a set's order follows the process's string hashes, and
    # each model's draws come from the one generator in turn
    for key in dict.fromkeys(k for k in x.hd_keys if k is not None):
        rows = np.array([k == key for k in x.hd_keys])
        h_sim[rows] = models[key].predict(d_sim[rows], rng)
    inputs: dict[str, Any] = {
        "dbh_cm": d_sim,
        "height_m": h_sim,
        "wood_density_g_cm3": wd_sim,
        "age_yr": np.repeat(x.age_yr[:, None], m, axis=1),
        "e_index": options.chave_e,
    }
    agb = _lognormal_error(rng, x.equations, allometry.evaluate_equations(x.equations, **inputs))
    bgb = _lognormal_error(
        rng, x.bgb_equations, allometry.evaluate_equations(x.bgb_equations, **inputs)
    )
    return agb, bgb


def _root_shoot_draws(
    rng: np.random.Generator, species: npt.NDArray[np.object_], plot_agb_draws: FloatArray
) -> FloatArray:
    """Root-to-shoot ratio per tree and draw: triangular(low, value, high) of the IPCC class
    selected by each draw's plot AGB; one draw per plot and draw (a stand-level ratio)."""
    n, m = species.size, plot_agb_draws.size
    out = np.full((n, m), np.nan)
    u = rng.uniform(size=m)
    for sp in pd.unique(species):
        rows = species == sp
        for lo, hi, c, a, b in allometry.root_shoot_classes(str(sp)):
            cls = (plot_agb_draws >= lo) & (plot_agb_draws < hi)
            # inverse CDF of the triangular distribution, same uniform for every species
            fc = (c - a) / (b - a)
            tri = np.where(
                u < fc, a + np.sqrt(u * (b - a) * (c - a)), b - np.sqrt((1 - u) * (b - a) * (b - c))
            )
            out[np.ix_(rows, cls)] = tri[cls][None, :]
    return out


# -------------------------------------------------------------------------- main
def plot_biomass(
    trees: pd.DataFrame,
    plot_area_ha: Mapping[Any, float] | pd.Series | None = None,
    *,
    options: PlotBiomassOptions,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tree-level and plot-level biomass, carbon and CO2e with Monte Carlo uncertainty.

    Parameters
    ----------
    trees
        Tree list (see module docstring for the columns).
    plot_area_ha
        Plot area (ha) by plot_id; rows' ``plot_area_ha`` column is used where absent.
    options
        Equation choice, E, number of draws, H-D model choice, DBH error model, seed.

    Returns
    -------
    trees_out, plots_out, qa
        Every input row with equation, height used, wood density (and its level),
        agb_kg, bgb_kg, carbon_kg; one row per plot and epoch (``PLOT_COLUMNS`` plus
        diagnostics); the QA table.

    Raises
    ------
    PlotOptionsError
        ``options.equation`` is not registered, or an equation needs Chave's E and
        ``options.chave_e`` is not set.
    PlotDataError
        Missing columns, a plot without area, or a plot/epoch whose trees are all unusable
        for a reason other than having no measurable stem (a plot measured with no trees,
        recorded as one row with ``plot_id`` and ``epoch`` and neither species nor DBH,
        or whose rows all have a blank DBH or DBH 0, gets zero biomass, see
        :func:`empty_plot_rows`).
    """
    trees, empty_plots = split_empty_plots(with_epoch(trees, options.tree_epoch))
    zeros = empty_plot_rows(empty_plots, plot_area_ha, options)
    if options.equation != "species":
        try:
            allometry.agb_equation(options.equation)
        except AllometryError as err:
            raise PlotOptionsError(str(err)) from None
    if trees.empty:  # every plot measured with no trees
        return trees, zeros, _empty_plot_qa(empty_plots)
    t, qa = check_trees(trees, options)
    t["plot_area_ha"] = _plot_areas(t, plot_area_ha)
    hm, qa_rows = _predict_heights(t, options.hd_model, options.equation)
    keys, models = hm.keys, hm.models
    qa_rows += _assign_equations(t, options)
    qa_rows += _exclude_trees_lacking_inputs(t, options)
    no_stems = _plots_without_stems(t)
    if not no_stems.empty:
        zeros = pd.concat([zeros, empty_plot_rows(no_stems, None, options)], ignore_index=True)
    counts = t.groupby(["plot_id", "epoch"])["usable"].sum()
    _tree_values(t, options)

    seeds = np.random.SeedSequence(options.seed)
    plot_keys = sorted(counts.index[counts > 0], key=lambda k: (str(k[0]), str(k[1])))
    children = seeds.spawn(len(plot_keys))
    t["bgb_kg"] = np.nan
    t["root_shoot_ratio"] = np.nan
    at = t.groupby(["plot_id", "epoch"], sort=False).indices  # positions, one pass
    plot_rows = [
        _plot_estimate(t, at[k], np.random.default_rng(child), keys, models, options)
        for k, child in zip(plot_keys, children, strict=True)
    ]
    t["carbon_kg"] = t["agb_kg"] * t["carbon_fraction_agb"] + t["bgb_kg"] * t["carbon_fraction_bgb"]
    t = t.drop(columns=["height_measured_m", "bgb_eq_kg", "no_stem"])
    qa_all = pd.concat(
        [
            _species_table_qa(t),
            qa,
            pd.DataFrame(qa_rows, columns=list(QA_COLUMNS)),
            _empty_plot_qa(empty_plots),
            _empty_plot_qa(no_stems),
        ],
        ignore_index=True,
    )
    plots = pd.DataFrame(plot_rows)
    if not zeros.empty:
        plots = pd.concat([plots, zeros], ignore_index=True)
        order = sorted(
            range(len(plots)), key=lambda i: (str(plots["plot_id"][i]), str(plots["epoch"][i]))
        )
        plots = plots.iloc[order].reset_index(drop=True)
    return t, plots, qa_all


def with_epoch(trees: pd.DataFrame, epoch: str) -> pd.DataFrame:
    """The tree list, with every tree in ``epoch`` if it has no ``epoch`` column.

    A single-census list needs no epoch column; a warning names the epoch its trees get.
    """
    if "epoch" in trees.columns:
        return trees
    warnings.warn(
        ModelsWarning(
            f"tree list has no 'epoch' column: all {len(trees)} rows taken as one census, "
            f"epoch {epoch!r} (name it with stages.plots.tree_epoch or --epoch; add an epoch "
            "column for re-measured plots)",
            code="no_epoch_column",
            values={"rows": len(trees), "epoch": epoch},
        ),
        stacklevel=3,
    )
    return trees.assign(epoch=epoch)


def split_empty_plots(trees: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tree rows, and the plot-epochs recorded as measured with no trees.

    A field crew that measures a plot and finds no tree (a clear-cut, land not yet
    planted) records it as a row with ``plot_id`` and ``epoch`` and neither ``species``
    nor ``dbh_cm``: such a plot has zero biomass, a legitimate value of the sample. A
    plot-epoch that has such a row and also trees is a contradiction.

    Raises
    ------
    PlotDataError
        A plot-epoch has an empty-plot row and trees.
    """
    needed = [c for c in ("plot_id", "epoch", "species", "dbh_cm") if c not in trees.columns]
    if needed:
        return trees, pd.DataFrame(columns=["plot_id", "epoch"])
    species = trees["species"].astype("string").str.strip().replace("", pd.NA)
    marker = species.isna() & pd.to_numeric(trees["dbh_cm"], errors="coerce").isna()
    if not marker.any():
        return trees, pd.DataFrame(columns=["plot_id", "epoch"])
    key = ["plot_id", "epoch"]
    cols = [*key, "plot_area_ha"] if "plot_area_ha" in trees.columns else key
    empty = trees.loc[marker, cols].drop_duplicates(key)
    clash = empty.merge(trees.loc[~marker, key].drop_duplicates(), on=key)
    if not clash.empty:
        names = ", ".join(f"{p} (epoch {e})" for p, e in clash.itertuples(index=False))
        raise PlotDataError(
            f"plot(s) {names} have both trees and a row with neither species nor DBH (the "
            "record of a plot measured with no trees): remove one or the other"
        )
    return trees.loc[~marker], empty.reset_index(drop=True)


def _plots_without_stems(t: pd.DataFrame) -> pd.DataFrame:
    """The plot-epochs left without a usable tree whose rows all lack a measurable stem
    (DBH blank or 0: seedlings below breast height, a young stand, a clear-cut), with
    ``plot_area_ha``, ``n_rows_excluded`` and the QA ``reason``; each also a warning.

    Such a plot is a legitimate zero of the sample. A plot left without a usable tree
    for any other reason (a DBH out of range or not a number, a culm age or a height its
    equation needs) is refused: a zero there would be a wrong number.

    Raises
    ------
    PlotDataError
        A plot-epoch has no usable tree and some of its rows have a stem (named).
    """
    key = ["plot_id", "epoch"]
    per_plot = (
        t.groupby(key, sort=False)
        .agg(
            n_usable=("usable", "sum"),
            all_no_stem=("no_stem", "all"),
            n_rows_excluded=("usable", "size"),
            plot_area_ha=("plot_area_ha", "first"),
        )
        .reset_index()
    )
    empty = per_plot[per_plot["n_usable"] == 0]
    refused = empty[~empty["all_no_stem"]]
    if len(refused):
        names = ", ".join(f"{p} (epoch {e})" for p, e in refused[key].itertuples(index=False))
        raise PlotDataError(
            f"plot(s) without any usable tree: {names}; see the QA reasons of its rows"
        )
    out = empty[empty["all_no_stem"]].reset_index(drop=True)
    out["reason"] = [
        f"no measurable stem: all {n} rows have a blank DBH or DBH 0 (zero biomass)"
        for n in out["n_rows_excluded"]
    ]
    for r in out.itertuples(index=False):
        warnings.warn(
            ModelsWarning(
                f"plot {r.plot_id} (epoch {r.epoch}): {r.reason}; a DBH left blank by mistake "
                "would make this zero wrong",
                code="plot_without_stems",
                values={
                    "plot": str(r.plot_id),
                    "epoch": str(r.epoch),
                    "rows": int(r.n_rows_excluded),
                },
            ),
            stacklevel=3,
        )
    return out[[*key, "plot_area_ha", "n_rows_excluded", "reason"]]


def empty_plot_rows(
    empty: pd.DataFrame,
    plot_area_ha: Mapping[Any, float] | pd.Series | None,
    options: PlotBiomassOptions,
) -> pd.DataFrame:
    """Plot rows of zero biomass (exactly, SD 0, every Monte Carlo draw 0) for plots
    measured with no trees or with no measurable stem (``empty``: plot_id, epoch, optional
    plot_area_ha and n_rows_excluded)."""
    areas = _area_lookup(empty, plot_area_ha).to_numpy()
    excluded = empty["n_rows_excluded"] if "n_rows_excluded" in empty else [0] * len(empty)
    zero_cols = [c for c in PLOT_COLUMNS if c not in ("plot_id", "epoch")]
    rows = [
        {
            "plot_id": r.plot_id,
            "epoch": r.epoch,
            **dict.fromkeys(zero_cols, 0.0),
            "n_stems": 0,
            "agb_mc_mean_mg_ha": 0.0,
            GRANULARITY_COLUMN: math.nan,  # no stem: no granularity
            "plot_area_ha": area,
            "n_rows_excluded": int(n_excluded),
            "n_heights_predicted": 0,
            "mc_draws": options.n_draws,
        }
        for r, area, n_excluded in zip(empty.itertuples(index=False), areas, excluded, strict=True)
    ]
    return pd.DataFrame(rows)


def _empty_plot_qa(empty: pd.DataFrame) -> pd.DataFrame:
    """QA rows of zero-biomass plots (their ``reason`` column, else measured with no trees)."""
    reasons = empty["reason"] if "reason" in empty else ["measured with no trees"] * len(empty)
    rows = [
        {"plot_id": r.plot_id, "epoch": r.epoch, "tree_id": None, "field": "plot",
         "value": 0.0, "reason": reason, "action": "zero_biomass"}
        for r, reason in zip(empty.itertuples(index=False), reasons, strict=True)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(QA_COLUMNS))


def _area_lookup(
    rows: pd.DataFrame, plot_area_ha: Mapping[Any, float] | pd.Series | None
) -> pd.Series:
    """Each row's plot area (ha) from ``plot_area_ha`` by ``plot_id``, else from the row's
    own ``plot_area_ha`` column (NaN where neither has one)."""
    # plot ids are matched as text: a CSV may read "101" as a number, a GeoPackage as text
    areas = {str(k): float(v) for k, v in plot_area_ha.items()} if plot_area_ha is not None else {}
    area = rows["plot_id"].astype(str).map(areas).astype(float)
    if "plot_area_ha" in rows.columns:
        area = area.fillna(rows["plot_area_ha"])
    return area


def _plot_areas(t: pd.DataFrame, plot_area_ha: Mapping[Any, float] | pd.Series | None) -> pd.Series:
    """Each tree's plot area (ha): from ``plot_area_ha``, else the row's own column.

    Raises
    ------
    PlotDataError
        A plot has no positive area (the message names it).
    """
    area = _area_lookup(t, plot_area_ha)
    no_area = sorted({str(p) for p in t.loc[~(area > 0), "plot_id"]})
    if no_area:
        raise PlotDataError(
            f"no plot area for plot(s) {', '.join(no_area)}: give plot_area_ha in the plot "
            "layer (--plots) or as a column of the tree list"
        )
    return area


def _height_matters(species: pd.Series, equation: str) -> pd.Series:
    """True for the trees whose biomass depends on a height: the AGB or root equation
    they get with a height uses it, or differs from the one they get without."""
    names = pd.unique(species.astype(str))
    with_h = allometry.tree_equations(names, np.ones(len(names)), equation=equation)
    without = allometry.tree_equations(names, np.full(len(names), np.nan), equation=equation)
    bgb_with = allometry.tree_bgb_equations(names, np.ones(len(names)), equation=equation)
    bgb_without = allometry.tree_bgb_equations(
        names, np.full(len(names), np.nan), equation=equation
    )

    def uses_height(name: object) -> bool:
        return name is not None and "height_m" in allometry.get_equation(str(name)).required

    matters = {
        str(sp): bool(a != b or c != d or uses_height(a) or uses_height(c))
        for sp, a, b, c, d in zip(names, with_h, without, bgb_with, bgb_without, strict=True)
    }
    return species.astype(str).map(matters).astype(bool)


def _predict_heights(
    t: pd.DataFrame, choice: HDChoice, equation: str
) -> tuple[HeightModels, list[dict[str, Any]]]:
    """Fill ``height_used_m`` (measured, else from an H-D model) and record each tree's
    H-D model (``hd_model``, ``hd_scope``) and ``height_source``, after discarding the
    measured heights far off their model (:func:`flag_measured_heights`); returns the
    models (:func:`assign_height_models`) and QA rows for the discarded heights and the
    refused fits (each refused fit also raised as a warning).

    Heights are predicted only for trees whose biomass depends on one (the AGB
    ``equation`` option and the species' equations, :func:`_height_matters`)."""
    qa_rows = flag_measured_heights(t, choice)
    missing = t["usable"] & t["height_m"].isna()
    hm = assign_height_models(t, choice, rows=missing & _height_matters(t["species"], equation))
    models = hm.models
    for key, why in hm.rejected.items():
        scope = "/".join(str(v) for v in key)
        text = f"H-D model of {scope} refused (next scope, else no-height equation): {why}"
        warnings.warn(
            ModelsWarning(text, code="hd_model_refused", values={"scope": scope, "why": why}),
            stacklevel=3,
        )
        qa_rows.append({**_scope_qa(key), "tree_id": None, "field": "hd_model",
                        "value": scope, "reason": text, "action": "fallback"})  # fmt: skip
    hd_model = np.full(len(t), None, dtype=object)
    hd_scope = np.full(len(t), None, dtype=object)
    pred_h = np.full(len(t), np.nan)
    dbh = t["dbh_cm"].to_numpy(dtype=float)
    for key, at in hm.rows_by_key().items():
        hd_model[at] = models[key].describe()
        hd_scope[at] = "/".join(str(v) for v in key)
        pred_h[at] = models[key].predict(dbh[at])
    t["hd_model"] = hd_model
    t["hd_scope"] = hd_scope
    t["height_source"] = np.where(
        t["height_m"].notna(), "measured", np.where(np.isfinite(pred_h), "hd_model", "none")
    )
    t["height_used_m"] = t["height_m"].fillna(pd.Series(pred_h, index=t.index))
    return hm, qa_rows


def _assign_equations(t: pd.DataFrame, opts: PlotBiomassOptions) -> list[dict[str, Any]]:
    """Each tree's wood density (``wood_density_used_g_cm3``, ``wood_density_level``, its
    SD ``wood_density_sd_g_cm3``: :func:`models.allometry.wood_density_sd`), AGB equation
    (``equation``) and root equation (``bgb_equation``, None where the root-to-shoot ratio
    applies); QA rows for the species whose usable trees not all have a height.

    Equations follow :func:`models.allometry.tree_equations` over the usable trees of all
    epochs together: a species gets one equation in every epoch (an epoch without heights
    and no H-D model to fill them moves the whole species to its no-height equation).

    Wood density: the user's value, else the table's (species, genus, family), else the
    mean of the usable trees' known values (BIOMASS "dataset" level), else the region
    default of ``defaults.yaml``.
    """
    wd, level = allometry.wood_density(t["species"].to_numpy(dtype=object))
    user = t["wood_density_g_cm3"].notna().to_numpy()
    wd = np.where(user, t["wood_density_g_cm3"].to_numpy(), wd)
    level = np.where(user, "user", level)
    known = np.isfinite(wd) & t["usable"].to_numpy()
    if np.isnan(wd).any():
        dataset_mean = (
            float(wd[known].mean())
            if known.any()
            else float(data_yaml("defaults.yaml")["region_wood_density_g_cm3"])
        )
        level = np.where(np.isnan(wd), "dataset", level)
        wd = np.where(np.isnan(wd), dataset_mean, wd)
    t["wood_density_used_g_cm3"] = wd
    t["wood_density_level"] = level
    t["wood_density_sd_g_cm3"] = allometry.wood_density_sd(level, wd[known])
    species = t["species"].to_numpy(dtype=object)
    height = t["height_used_m"].to_numpy(dtype=float)
    eq = np.empty(len(t), dtype=object)
    bgb = np.empty(len(t), dtype=object)
    qa_rows: list[dict[str, Any]] = []
    for rows in (t["usable"].to_numpy(), ~t["usable"].to_numpy()):
        eq[rows] = allometry.tree_equations(species[rows], height[rows], equation=opts.equation)
        bgb[rows] = allometry.tree_bgb_equations(
            species[rows], height[rows], equation=opts.equation
        )
    t["equation"] = eq
    t["bgb_equation"] = bgb
    if opts.equation != "species":
        return qa_rows
    u = t["usable"].to_numpy()
    for name in allometry.species_lacking_heights(species[u], height[u]):
        n_without = int((u & (species == name) & np.isnan(height)).sum())
        reason = (
            f"{n_without} of {int((u & (species == name)).sum())} usable trees of {name} have "
            "no height and no H-D model to predict one: every tree of the species, in every "
            f"epoch, takes its no-height equation {eq[u & (species == name)][0]} (one "
            "equation per species, so that a change of equation is not read as growth)"
        )
        qa_rows.append({"plot_id": None, "epoch": None, "tree_id": None, "field": "equation",
                        "value": name, "reason": reason, "action": "keep"})  # fmt: skip
    return qa_rows


def _exclude_trees_lacking_inputs(
    t: pd.DataFrame, opts: PlotBiomassOptions
) -> list[dict[str, Any]]:
    """Mark unusable the trees whose equation needs an input they lack (culm age, a
    height); QA rows for them and for trees outside their equation's published domain.

    Raises
    ------
    PlotDataError
        An equation in use has no coefficients.
    PlotOptionsError
        An equation in use needs Chave's E and ``opts.chave_e`` is not set.
    """
    qa_rows: list[dict[str, Any]] = []
    for name in pd.unique(t["equation"]):
        eq = allometry.get_equation(str(name))
        rows = (t["equation"] == name) & t["usable"]
        if not eq.usable:
            raise PlotDataError(
                f"equation {name!r} has no coefficients in models/data/allometry.yaml"
            )
        if "e_index" in eq.required and opts.chave_e is None:
            raise PlotOptionsError(
                f"equation {name!r} needs the environmental stress index E: "
                "set stages.plots.chave_e in the config"
            )
        if "age_du" in eq.required:
            no_age = rows & t["age_yr"].isna()
            for _, r in t[no_age].iterrows():
                qa_rows.append(
                    _qa_row(r, "age_yr", r["age_yr"], f"culm age required by {name}", "exclude")
                )
            t.loc[no_age, "usable"] = False
            _warn_excluded(int(no_age.sum()), name, "a culm age (age_yr)", "age_yr")
        if "height_m" in eq.required:
            no_h = rows & t["usable"] & t["height_used_m"].isna()
            for _, r in t[no_h].iterrows():
                qa_rows.append(
                    _qa_row(
                        r,
                        "height_m",
                        r["height_m"],
                        f"height required by {name} and no H-D model could be fitted "
                        "(fewer than 15 measured heights in the species group)",
                        "exclude",
                    )
                )
            t.loc[no_h, "usable"] = False
            _warn_excluded(
                int(no_h.sum()), name, "a height (height_m, or an H-D model)", "height_m"
            )
        if not eq.domain:
            continue
        inputs = {
            "dbh_cm": t.loc[rows, "dbh_cm"],
            "height_m": t.loc[rows, "height_used_m"],
            "age_du": allometry.culm_age_du(t.loc[rows, "age_yr"]),
        }
        inside = eq.in_domain(**{k: v for k, v in inputs.items() if k in eq.domain})
        for (_, r), ok in zip(t[rows].iterrows(), inside, strict=True):
            if not ok:
                qa_rows.append(
                    _qa_row(
                        r,
                        "equation",
                        name,
                        f"outside the domain of {name} {dict(eq.domain)}",
                        "keep",
                    )
                )
    return qa_rows


def _warn_excluded(n: int, equation: str, needs: str, column: str) -> None:
    """Say that ``n`` trees were left out of their plots because ``equation`` needs an input
    they lack (``needs``, of the tree list's ``column``): their plots' biomass reads low by
    what those trees carry."""
    if n:
        warnings.warn(
            ModelsWarning(
                f"{n} trees whose equation {equation} needs {needs} lack it and are left out "
                "of their plots' biomass (QA action 'exclude'), so those plots read low: "
                "record the input, or set the species' equation in models/data/species.csv",
                code="trees_lack_equation_input",
                values={"n": n, "equation": equation, "column": column},
            ),
            stacklevel=4,
        )


def _tree_values(t: pd.DataFrame, opts: PlotBiomassOptions) -> None:
    """The usable trees' deterministic AGB (``agb_kg``) and BGB by root equation
    (``bgb_eq_kg``) with the equations of :func:`_assign_equations`, and carbon fractions,
    at the observed inputs."""
    u = t["usable"].to_numpy()
    wd = t["wood_density_used_g_cm3"].to_numpy()
    agb = np.full(len(t), np.nan)
    agb[u] = allometry.evaluate_equations(
        t.loc[u, "equation"].to_numpy(dtype=object),
        dbh_cm=t.loc[u, "dbh_cm"].to_numpy(dtype=float),
        height_m=t.loc[u, "height_used_m"].to_numpy(dtype=float),
        wood_density_g_cm3=wd[u],
        age_yr=t.loc[u, "age_yr"].to_numpy(dtype=float),
        e_index=opts.chave_e,
    )
    t["agb_kg"] = agb
    bgb_names = t["bgb_equation"].to_numpy(dtype=object)
    bgb_eq = np.full(len(t), np.nan)
    bgb_eq[u] = allometry.evaluate_equations(
        bgb_names[u],
        dbh_cm=t.loc[u, "dbh_cm"].to_numpy(dtype=float),
        height_m=t.loc[u, "height_used_m"].to_numpy(dtype=float),
        wood_density_g_cm3=wd[u],
        age_yr=t.loc[u, "age_yr"].to_numpy(dtype=float),
        e_index=opts.chave_e,
    )
    t["bgb_eq_kg"] = bgb_eq
    species = t["species"].to_numpy(dtype=object)
    t["carbon_fraction_agb"] = allometry.carbon_fraction(species, "aboveground")
    t["carbon_fraction_bgb"] = allometry.carbon_fraction(species, "belowground")


def _species_table_qa(t: pd.DataFrame) -> pd.DataFrame:
    """The QA row, also raised as a warning, on the usable trees whose species is not in
    ``models/data/species.csv``: their share of trees and of AGB (the row's value), the
    equations and the wood density sources they got; none when every species is in the
    table.

    ``t`` is the tree table with ``equation``, ``wood_density_level`` and ``agb_kg``.
    """
    u = t[t["usable"]]
    known = u["species"].map(lambda s: allometry.resolve_taxon(str(s)).known_species)
    out = u[~known.astype(bool)]
    if out.empty:
        return pd.DataFrame(columns=list(QA_COLUMNS))
    agb_share = float(out["agb_kg"].sum() / u["agb_kg"].sum())

    def counts(col: pd.Series, names: Mapping[str, str] | None = None) -> str:
        parts = col.value_counts()
        return ", ".join(f"{(names or {}).get(str(k), k)} ({n})" for k, n in parts.items())

    species, equations = counts(out["species"]), counts(out["equation"])
    sources = counts(out["wood_density_level"], WOOD_DENSITY_SOURCES)
    tree_pct, agb_pct = f"{len(out) / len(u):.0%}", f"{agb_share:.0%}"
    text = (
        f"{len(out)} of {len(u)} trees ({tree_pct}) carrying {agb_pct} of the AGB have a "
        f"species not in models/data/species.csv: {species}. They got the group default "
        f"equations: {equations}; wood density from {sources}. Their biomass and its "
        "uncertainty rest on generic equations: add the species to species.csv with a "
        "regional equation"
    )
    warnings.warn(
        ModelsWarning(
            text,
            code="species_not_in_table",
            values={
                "n": len(out),
                "total": len(u),
                "tree_pct": tree_pct,
                "agb_pct": agb_pct,
                "species": species,
                "equations": equations,
                "sources": sources,
            },
        ),
        stacklevel=3,
    )
    row = {"plot_id": None, "epoch": None, "tree_id": None, "field": SPECIES_TABLE_FIELD,
           "value": round(agb_share, 4), "reason": text, "action": "keep"}  # fmt: skip
    return pd.DataFrame([row], columns=list(QA_COLUMNS))


def _plot_estimate(
    t: pd.DataFrame,
    rows: npt.NDArray[np.intp],
    rng: np.random.Generator,
    keys: pd.Series,
    models: Mapping[Any, HDModel],
    opts: PlotBiomassOptions,
) -> dict[str, Any]:
    """One plot and epoch (the positions ``rows`` of its trees in ``t``): its trees' BGB
    (``bgb_kg``, ``root_shoot_ratio`` set in ``t``) and its row of the plot table, the SDs
    and quantiles from the Monte Carlo draws."""
    sel = rows[t["usable"].to_numpy(dtype=bool)[rows]]
    sub = t.iloc[sel]
    pid, epoch = sub["plot_id"].iloc[0], sub["epoch"].iloc[0]
    area_ha = float(sub["plot_area_ha"].iloc[0])
    sp = sub["species"].to_numpy(dtype=object)
    agb_mg_ha = float(sub["agb_kg"].sum()) / KG_PER_MG / area_ha
    bgb_names = sub["bgb_equation"].to_numpy(dtype=object)
    by_ratio = pd.isna(bgb_names)
    ratio = np.where(by_ratio, allometry.root_shoot_ratio(sp, agb_mg_ha), np.nan)
    bgb_kg = np.where(by_ratio, sub["agb_kg"].to_numpy() * ratio, sub["bgb_eq_kg"].to_numpy())
    t.iloc[sel, t.columns.get_loc("bgb_kg")] = bgb_kg
    t.iloc[sel, t.columns.get_loc("root_shoot_ratio")] = ratio
    cf_agb = sub["carbon_fraction_agb"].to_numpy()
    cf_bgb = sub["carbon_fraction_bgb"].to_numpy()
    carbon_kg = sub["agb_kg"].to_numpy() * cf_agb + bgb_kg * cf_bgb
    carbon_mg_ha = float(np.sum(carbon_kg)) / KG_PER_MG / area_ha

    x = _TreeInputs(
        species=sp,
        dbh_cm=sub["dbh_cm"].to_numpy(),
        height_m=sub["height_m"].to_numpy(dtype=float),
        hd_keys=keys.iloc[sel].tolist(),
        wood_density_g_cm3=sub["wood_density_used_g_cm3"].to_numpy(),
        wd_sd=sub["wood_density_sd_g_cm3"].to_numpy(dtype=float),
        age_yr=sub["age_yr"].to_numpy(dtype=float),
        equations=sub["equation"].to_numpy(dtype=object),
        bgb_equations=bgb_names,
        cf_agb=cf_agb,
        cf_bgb=cf_bgb,
        cf_sd_agb=allometry.carbon_fraction_sd(sp, "aboveground"),
        cf_sd_bgb=allometry.carbon_fraction_sd(sp, "belowground"),
    )
    agb_sim, bgb_eq_sim = _simulate_trees(rng, x, models, opts)
    plot_agb = np.nansum(agb_sim, axis=0) / KG_PER_MG / area_ha
    r_sim = _root_shoot_draws(rng, sp, plot_agb)
    bgb_sim = np.where(by_ratio[:, None], agb_sim * r_sim, bgb_eq_sim)
    # one normal deviate per tree and draw moves both fractions (their errors taken as
    # fully correlated; with a single fraction this is BIOMASS's per-tree normal draw)
    z = rng.standard_normal((sp.size, opts.n_draws))
    cf_a_sim = x.cf_agb[:, None] + z * x.cf_sd_agb[:, None]
    cf_b_sim = x.cf_bgb[:, None] + z * x.cf_sd_bgb[:, None]
    plot_bgb = np.nansum(bgb_sim, axis=0) / KG_PER_MG / area_ha
    plot_c = np.nansum(agb_sim * cf_a_sim + bgb_sim * cf_b_sim, axis=0) / KG_PER_MG / area_ha
    q_lo, q_hi = np.quantile(plot_agb, opts.quantiles)
    co2_per_c = allometry.co2_per_c()
    basal_area_m2_ha = float(np.sum(np.pi * (sub["dbh_cm"].to_numpy() / 200.0) ** 2)) / area_ha
    return {
        "plot_id": pid,
        "epoch": epoch,
        "n_stems": len(sub),
        "basal_area_m2_ha": basal_area_m2_ha,
        "agb_mg_ha": agb_mg_ha,
        "agb_sd_mg_ha": float(np.std(plot_agb, ddof=1)),
        "bgb_mg_ha": float(bgb_kg.sum()) / KG_PER_MG / area_ha,
        "bgb_sd_mg_ha": float(np.std(plot_bgb, ddof=1)),
        "carbon_mg_ha": carbon_mg_ha,
        "carbon_sd_mg_ha": float(np.std(plot_c, ddof=1)),
        "co2e_t_ha": carbon_mg_ha * co2_per_c,
        "co2e_sd_t_ha": float(np.std(plot_c, ddof=1)) * co2_per_c,
        "agb_p05_mg_ha": float(q_lo),
        "agb_p95_mg_ha": float(q_hi),
        "agb_mc_mean_mg_ha": float(np.mean(plot_agb)),
        GRANULARITY_COLUMN: stem_granularity_m2(sub["agb_kg"].to_numpy(), area_ha),
        "plot_area_ha": area_ha,
        "n_rows_excluded": len(rows) - len(sel),
        "n_heights_predicted": int((sub["height_source"] == "hd_model").sum()),
        "mc_draws": opts.n_draws,
    }


def stem_granularity_m2(agb_kg: npt.ArrayLike, area_ha: float) -> float:
    """How grainy a plot's biomass is: ``A sum(m_i^2) / (sum m_i)^2`` (m^2), ``A`` the plot
    area and ``m_i`` its trees' AGB; NaN for a plot without biomass.

    If stems stand at random (a marked Poisson process), Campbell's theorem gives the
    variance of the AGB on an area ``B``, ``lambda |B| E[m^2]`` (Stoyan, Kendall & Mecke
    1995, *Stochastic Geometry and its Applications*, 2nd ed., Wiley, §4.2), and the plot
    estimates ``lambda E[m^2]`` by ``sum m_i^2 / A`` and the density ``lambda E[m]`` by
    ``sum m_i / A``. A cell of area ``a`` inside a window of area ``W`` then departs from the
    window's AGB density by a relative variance ``g (1 / a - 1 / W)``, ``g`` this value
    (:func:`models.biomass.granularity_cell_support`). Few large trees make it large;
    many even-sized stems small. Plantations planted on a grid are more regular than
    random (the formula overstates their cell variation), clumped natural stands less.
    """
    m = np.asarray(agb_kg, dtype=np.float64)
    total = float(np.sum(m))
    if not total > 0:
        return math.nan
    return area_ha * M2_PER_HA * float(np.sum(m * m)) / total**2


def conversion_factors(plots: pd.DataFrame, *, source: str) -> dict[str, Any]:
    """The plot table's own carbon conversion factors, as ratio estimators.

    Root-to-shoot ratio (sum of BGB over sum of AGB), carbon fraction (carbon over
    AGB + BGB) and CO2e per carbon, over every plot-epoch of ``plots`` (the table
    :func:`plot_biomass` returns) with all four values: they come from the species tables
    of :mod:`models.allometry`, so the maps convert AGB as the plots did. ``source`` names
    the table in the returned ``method`` text.

    Raises
    ------
    PlotDataError
        A column is missing.
    ModelDomainError
        Total AGB or carbon is not positive.
    """
    needed = ("agb_mg_ha", "bgb_mg_ha", "carbon_mg_ha", "co2e_t_ha")
    missing = [c for c in needed if c not in plots.columns]
    if missing:
        raise PlotDataError(
            f"column(s) {missing} missing; the carbon conversion factors are taken from the "
            "plot table (written by the plots stage)"
        )
    t = plots.loc[:, list(needed)].dropna()
    agb, bgb, c, co2 = (t[n].sum() for n in needed)
    if agb <= 0 or c <= 0:
        raise ModelDomainError("total AGB or carbon is not positive")
    return {
        "root_to_shoot": float(bgb / agb),
        "carbon_fraction": float(c / (agb + bgb)),
        "co2e_per_c": float(co2 / c),
        "method": f"ratio estimators over all plot-epochs of {source}",
        "n_plot_epochs": len(t),
    }


def carbon_per_agb(conversion: Mapping[str, Any]) -> float:
    """Mg C per Mg of aboveground biomass, from :func:`conversion_factors`' record: the
    factor that turns an AGB map (and its SDs) into a carbon map, roots included."""
    return (1.0 + float(conversion["root_to_shoot"])) * float(conversion["carbon_fraction"])
