"""Allometric equation registry and tree-level biomass and carbon.

The science of a single tree: aboveground biomass (AGB) from diameter at breast height,
height, wood density and (for bamboo) culm age through a registered allometric equation;
belowground biomass (BGB) through a root-to-shoot ratio; carbon through a carbon
fraction. Every coefficient lives in the data files of :mod:`models` (``models/data``):

``allometry.yaml``
    The equation registry: form, coefficients, input units, output unit, valid domain,
    component, residual standard error on the log scale and citation of each equation.
``species.csv`` / ``genus.csv``
    The taxonomy (species -> genus -> family -> group) and each species' default
    equations (with and without height).
``species_names.csv``
    The other names a tree list may give a species by (Chinese, pinyin, Latin
    synonyms), each with its source (Flora of China); :func:`normalise_species` reads
    them as the Latin name the tables use.
``wood_density.csv``, ``carbon_fraction.csv``, ``root_shoot.csv``
    Tables by species/genus/family/group/region with sources.
``wood_density_gwdd.csv``
    Genus and family means of the Global Wood Density Database (BIOMASS
    ``getWoodDensity`` rule, all regions), written by ``scripts/gwdd_means.py``; they
    serve trees whose species is not in ``wood_density.csv`` and give the family of a
    genus unknown to ``genus.csv``.

This module holds the functional forms only (:data:`FORMS`). Lookups follow the fallback
order species -> genus -> family -> group -> region default; which level served each tree
is reported by :func:`wood_density`.

Default equations of a species (the same rule the ``plots`` stage uses): the species'
``agb_equation`` from ``species.csv`` when height is known, its ``agb_equation_no_height``
otherwise, and for belowground biomass its ``bgb_equation`` / ``bgb_equation_no_height``
(root equations) or, where it has none, AGB x the root-to-shoot ratio of ``root_shoot.csv``
(the species' own, else IPCC's). A species not in ``species.csv`` takes its genus' group
defaults (``defaults.yaml``), and a genus unknown to ``genus.csv`` the ``broadleaf``
defaults: Chave et al. 2014 eq. 4 with the tree's wood density when height is known, Zeng
(2018) M = 0.3 rho D^(7/3) without. Only equations with ``status: verified`` (or
``checked``: cited coefficients checked against independent harvest data, see
``allometry.yaml``) are defaults. Chinese fir with height takes the national standard
LY/T 2264-2014 (AGB and root models); Moso bamboo the culm model of Zhou & Jiang (2004) by
DBH and culm age (``checked``) with its own root-to-shoot ratio; the other demo species'
defaults (and Chinese fir without height) are the provincial equations of Zhou et al.
(2018) from the provinces next to Nanping (Jiangxi, Zhejiang) where they exist, Chave eq. 4
otherwise (the LY/T 2263-2014 Masson pine coefficients could not be obtained).

From the command line: ``forest-carbon plots --list-equations`` prints the registry.

References
----------
Chave J. et al. (2014) Global Change Biology 20, 3177-3190. doi:10.1111/gcb.12629
Rejou-Mechain M. et al. (2017) Methods Ecol. Evol. 8, 1163-1167. doi:10.1111/2041-210X.12753
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.datafiles import data_csv, data_yaml
from models.errors import AllometryError

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Component = Literal["aboveground", "belowground", "stem", "branches", "foliage", "roots"]
Biomass = Literal["aboveground", "belowground"]
WoodDensityLevel = Literal["user", "species", "genus", "family", "dataset", "region"]


# --------------------------------------------------------------------------- forms
def _chave_eq4(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * (rho D^2 H)^b`` (Chave et al. 2014 eq. 4)."""
    return c["a"] * (x["wood_density_g_cm3"] * x["dbh_cm"] ** 2 * x["height_m"]) ** c["b"]


def _chave_eq7(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``exp(a + bE E + c ln(rho) + d ln(D) + e ln(D)^2)`` (Chave et al. 2014 eq. 7)."""
    ln_d = np.log(x["dbh_cm"])
    return np.exp(
        c["a"]
        + c["bE"] * x["e_index"]
        + c["c"] * np.log(x["wood_density_g_cm3"])
        + c["d"] * ln_d
        + c["e"] * ln_d**2
    )


def _power_rho_d(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * rho * D^b`` (Zeng 2018 one-variable model)."""
    return c["a"] * x["wood_density_g_cm3"] * x["dbh_cm"] ** c["b"]


def _power_dh(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * D^b * H^c`` (form of the LY/T 226x-2014 two-variable models)."""
    return c["a"] * x["dbh_cm"] ** c["b"] * x["height_m"] ** c["c"]


def _power_dh_split_d(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a D^b H^c`` for D >= ``d_split_cm``, ``a_small D^b_small H^c_small`` below it.

    The two-segment D-H model of the LY/T 226x-2014 tree biomass standards as implemented
    in the StemAnalysis R package (separate parameters for trees below 5 cm DBH).
    """
    d, h = x["dbh_cm"], x["height_m"]
    small = c["a_small"] * d ** c["b_small"] * h ** c["c_small"]
    large = c["a"] * d ** c["b"] * h ** c["c"]
    return np.where(d < c["d_split_cm"], small, large)


def _power_d(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * D^b``."""
    return c["a"] * x["dbh_cm"] ** c["b"]


def _power_d2h(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * (D^2 H)^b``."""
    return c["a"] * (x["dbh_cm"] ** 2 * x["height_m"]) ** c["b"]


def _component_pairs(c: Mapping[str, float]) -> list[tuple[float, float]]:
    """(a, b) pairs of a component-sum equation: keys ``a_<part>`` and ``b_<part>``."""
    parts = sorted(k[2:] for k in c if k.startswith("a_"))
    return [(c[f"a_{p}"], c[f"b_{p}"]) for p in parts]


def _power_sum_d(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``sum_i a_i D^b_i`` over components (stem, branches, foliage)."""
    return sum((a * x["dbh_cm"] ** b for a, b in _component_pairs(c)), np.zeros(1))


def _power_sum_d2h(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``sum_i a_i (D^2 H)^b_i`` over components (stem, branches, foliage)."""
    d2h = x["dbh_cm"] ** 2 * x["height_m"]
    return sum((a * d2h**b for a, b in _component_pairs(c)), np.zeros(1))


def _bamboo_zhou(c: Mapping[str, float], x: Mapping[str, FloatArray]) -> FloatArray:
    """``a * D^b * (c A / (d + A))^e + f`` with culm age A in du (Zhou & Jiang 2004)."""
    age = x["age_du"]
    return c["a"] * x["dbh_cm"] ** c["b"] * (c["c"] * age / (c["d"] + age)) ** c["e"] + c["f"]


#: functional forms by name, with the inputs each needs
FORMS: dict[
    str,
    tuple[Callable[[Mapping[str, float], Mapping[str, FloatArray]], FloatArray], tuple[str, ...]],
] = {
    "chave_eq4": (_chave_eq4, ("dbh_cm", "height_m", "wood_density_g_cm3")),
    "chave_eq7": (_chave_eq7, ("dbh_cm", "wood_density_g_cm3", "e_index")),
    "power_rho_d": (_power_rho_d, ("dbh_cm", "wood_density_g_cm3")),
    "power_dh": (_power_dh, ("dbh_cm", "height_m")),
    "power_dh_split_d": (_power_dh_split_d, ("dbh_cm", "height_m")),
    "power_d": (_power_d, ("dbh_cm",)),
    "power_d2h": (_power_d2h, ("dbh_cm", "height_m")),
    "power_sum_d": (_power_sum_d, ("dbh_cm",)),
    "power_sum_d2h": (_power_sum_d2h, ("dbh_cm", "height_m")),
    "bamboo_zhou": (_bamboo_zhou, ("dbh_cm", "age_du")),
}


# ------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Equation:
    """One registered allometric equation (coefficients from ``allometry.yaml``)."""

    name: str
    form: str
    coefficients: Mapping[str, float] | None
    inputs: Mapping[str, str]
    output_unit: str
    component: str
    domain: Mapping[str, tuple[float, float]]
    rse_log: float | None
    citation: str
    status: Literal["verified", "checked", "unverified", "unavailable"]
    checked_in: str = ""
    notes: str = ""
    required: tuple[str, ...] = field(default=())

    @property
    def usable(self) -> bool:
        """Whether the equation has coefficients and can be evaluated."""
        return self.coefficients is not None

    def evaluate(self, **inputs: ArrayLike | None) -> FloatArray:
        """Evaluate the equation, in its output unit (kg for the biomass equations; the
        LY/T 2264 factor functions give a ratio or Mg m-3).

        Parameters
        ----------
        **inputs
            Arrays named as in :attr:`inputs` (``dbh_cm``, ``height_m``,
            ``wood_density_g_cm3``, ``age_du``, ``e_index``); broadcast together.
        """
        if self.coefficients is None:
            raise AllometryError(
                f"equation {self.name!r} has no coefficients in models/data/allometry.yaml "
                f"({self.checked_in.strip()}); choose another equation"
            )
        func, _ = FORMS[self.form]
        missing = [k for k in self.required if inputs.get(k) is None]
        if missing:
            raise AllometryError(f"equation {self.name!r} needs input(s) {missing}")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items() if v is not None}
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(func(self.coefficients, arrays), dtype=np.float64)

    def in_domain(self, **inputs: ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each tree lies inside the equation's published domain (NaN -> False)."""
        result: npt.NDArray[np.bool_] | None = None
        for key, (lo, hi) in self.domain.items():
            value = inputs.get(key)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            ok = (arr >= lo) & (arr <= hi)
            result = ok if result is None else result & ok
        if result is None:
            first = next((v for v in inputs.values() if v is not None), 0.0)
            return np.ones(np.shape(first), dtype=bool)
        return result


@cache
def registry() -> dict[str, Equation]:
    """All registered equations by name (read once from ``models/data/allometry.yaml``)."""
    raw = data_yaml("allometry.yaml")["equations"]
    out: dict[str, Equation] = {}
    for name, e in raw.items():
        if e["form"] not in FORMS:
            raise AllometryError(f"models/data/allometry.yaml: {name}: unknown form {e['form']!r}")
        coeffs = e.get("coefficients")
        out[name] = Equation(
            name=name,
            form=e["form"],
            coefficients=None if coeffs is None else {k: float(v) for k, v in coeffs.items()},
            inputs=dict(e.get("inputs") or {}),
            output_unit=e["output_unit"],
            component=e["component"],
            domain={k: (float(v[0]), float(v[1])) for k, v in (e.get("domain") or {}).items()},
            rse_log=None if e.get("rse_log") is None else float(e["rse_log"]),
            citation=" ".join(str(e["citation"]).split()),
            status=e["status"],
            checked_in=" ".join(str(e.get("checked_in", "")).split()),
            notes=" ".join(str(e.get("notes", "")).split()),
            required=FORMS[e["form"]][1],
        )
    return out


def get_equation(name: str) -> Equation:
    """A registered equation by name.

    Raises
    ------
    AllometryError
        The name is not registered; the message lists the registered names.
    """
    reg = registry()
    if name not in reg:
        raise AllometryError(
            f"unknown allometric equation {name!r}; registered: {', '.join(sorted(reg))} "
            "(see `forest-carbon plots --list-equations`)"
        )
    return reg[name]


def agb_equation(name: str) -> Equation:
    """A registered aboveground biomass equation, for a user who forces one on all trees.

    Raises
    ------
    AllometryError
        The name is not registered, or the equation gives something else (roots, a
        conversion factor).
    """
    eq = get_equation(name)
    if eq.component != "aboveground":
        raise AllometryError(
            f"equation {name!r} gives {eq.component} ({eq.output_unit}), not aboveground "
            "biomass; choose an aboveground equation (see `forest-carbon plots --list-equations`)"
        )
    return eq


def list_equations() -> pd.DataFrame:
    """The registry as a table (one row per equation, with citation and status)."""
    rows = []
    for eq in registry().values():
        rows.append(
            {
                "name": eq.name,
                "form": eq.form,
                "component": eq.component,
                "output_unit": eq.output_unit,
                "inputs": ", ".join(f"{k} [{u}]" for k, u in eq.inputs.items()),
                "coefficients": "none"
                if eq.coefficients is None
                else ", ".join(f"{k}={v:g}" for k, v in eq.coefficients.items()),
                "domain": ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in eq.domain.items()),
                "rse_log": eq.rse_log,
                "status": eq.status,
                "citation": eq.citation,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ taxonomy
@dataclass(frozen=True)
class Taxon:
    """Resolved taxonomy of a species name."""

    species: str
    genus: str
    family: str | None
    group: str
    known_species: bool


@cache
def _species_table() -> pd.DataFrame:
    return data_csv("species.csv").set_index("species")


@cache
def _genus_table() -> pd.DataFrame:
    return data_csv("genus.csv").set_index("genus")


def co2_per_c() -> float:
    """Mass ratio of CO2 to C, t CO2 per t C (44/12; ``defaults.yaml`` gives the source)."""
    return float(data_yaml("defaults.yaml")["co2_per_c"])


SpeciesNameLanguage = Literal["zh", "pinyin", "latin synonym"]


@dataclass(frozen=True)
class SpeciesName:
    """A name of ``species_names.csv``: the Latin species it stands for, and why."""

    species: str
    language: SpeciesNameLanguage
    source: str


def _binomial(name: str) -> str:
    """``'pinus  Massoniana'`` -> ``'Pinus massoniana'`` (binomial capitalisation)."""
    parts = name.split()
    return " ".join([parts[0].capitalize(), *[p.lower() for p in parts[1:]]]) if parts else ""


def _pinyin_key(name: str) -> str:
    """``'Shān mù'``, ``'shanmu'``, ``'SHAN-MU'`` -> ``'shanmu'``: pinyin compared without
    tone marks, case, spaces or hyphens (inventories write it every way)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return "".join(c for c in plain.lower() if c.isalnum())


@cache
def _species_names() -> dict[str, SpeciesName]:
    """``species_names.csv`` keyed as :func:`translate_species` looks names up."""
    out: dict[str, SpeciesName] = {}
    for r in data_csv("species_names.csv").itertuples():
        name = str(r.name)
        key = {"zh": name.strip(), "pinyin": _pinyin_key(name)}.get(r.language, _binomial(name))
        language = cast(SpeciesNameLanguage, str(r.language))
        out[key] = SpeciesName(str(r.species), language, str(r.source))
    return out


def translate_species(name: object) -> tuple[str, SpeciesName | None]:
    """The Latin name a tree list's species name stands for, and the entry of
    ``species_names.csv`` that translated it (None: the name was taken as Latin).

    A Chinese name (``杉木``), its pinyin (``shanmu``, ``shan mu``, tone marks or not)
    and the Latin synonyms of ``species_names.csv`` give the species' name in the
    tables; any other name is a Latin binomial with its capitalisation normalised.
    """
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return "", None
    return _translate(str(name).strip())


@cache  # a tree list repeats a few names over many trees
def _translate(text: str) -> tuple[str, SpeciesName | None]:
    names = _species_names()
    for key in (text, _pinyin_key(text), _binomial(text)):
        if key and key in names:
            entry = names[key]
            return entry.species, entry
    return _binomial(text), None


def normalise_species(name: object) -> str:
    """The species name the tables use: ``'pinus  Massoniana'`` -> ``'Pinus massoniana'``,
    ``'杉木'`` or ``'shanmu'`` -> ``'Cunninghamia lanceolata'`` (:func:`translate_species`)."""
    return translate_species(name)[0]


def resolve_taxon(species: str) -> Taxon:
    """Genus, family and group of a species name (species -> genus -> default)."""
    return _resolve_taxon(normalise_species(species))


@cache
def _resolve_taxon(sp: str) -> Taxon:
    table = _species_table()
    if sp in table.index:
        row = table.loc[sp]
        return Taxon(sp, str(row["genus"]), str(row["family"]), str(row["group"]), True)
    genus = sp.split(" ")[0] if sp else ""
    gtable = _genus_table()
    if genus in gtable.index:
        g = gtable.loc[genus]
        return Taxon(sp, genus, str(g["family"]), str(g["group"]), False)
    unknown_group = str(data_yaml("defaults.yaml")["unknown_group"])
    gwdd = _gwdd_table()
    rows = gwdd[(gwdd["level"] == "genus") & (gwdd["taxon"] == genus)]
    family = str(rows["family"].iloc[0]) if len(rows) else None
    return Taxon(sp, genus, family, unknown_group, False)


def is_known_species(species: str) -> bool:
    """Whether the species is in ``species.csv`` (otherwise genus/group defaults apply)."""
    return resolve_taxon(species).known_species


def default_equation_name(species: str, *, has_height: bool) -> str:
    """The registry's default AGB equation for a species (see module docstring)."""
    tax = resolve_taxon(species)
    table = _species_table()
    column = "agb_equation" if has_height else "agb_equation_no_height"
    if tax.known_species:
        return str(table.loc[tax.species, column])
    group_defaults = data_yaml("defaults.yaml")["group_equations"]
    return str(group_defaults[tax.group][column])


# ---------------------------------------------------------------- property tables
@cache
def _wood_density_table() -> pd.DataFrame:
    return data_csv("wood_density.csv")


@cache
def _gwdd_table() -> pd.DataFrame:
    return data_csv("wood_density_gwdd.csv")


@cache
def _wd_lookup() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Species, genus and family wood densities, in the order of BIOMASS
    ``getWoodDensity``: a genus (family) takes the explicit row of ``wood_density.csv``,
    else the Global Wood Density Database mean of ``wood_density_gwdd.csv``, else the mean
    of its species in ``wood_density.csv``."""
    wd = _wood_density_table()
    sp = {
        normalise_species(r.taxon): float(r.wood_density_g_cm3)
        for r in wd.itertuples()
        if r.level == "species"
    }
    gen: dict[str, list[float]] = {}
    fam: dict[str, list[float]] = {}
    for name, value in sp.items():
        tax = resolve_taxon(name)
        gen.setdefault(tax.genus, []).append(value)
        if tax.family:
            fam.setdefault(tax.family, []).append(value)
    for table in (_gwdd_table(), wd):  # explicit rows of wood_density.csv come last, win
        for r in table.itertuples():
            if r.level == "genus":
                gen[str(r.taxon)] = [float(r.wood_density_g_cm3)]
            elif r.level == "family":
                fam[str(r.taxon)] = [float(r.wood_density_g_cm3)]
    return (
        sp,
        {k: float(np.mean(v)) for k, v in gen.items()},
        {k: float(np.mean(v)) for k, v in fam.items()},
    )


def wood_density(species: ArrayLike) -> tuple[FloatArray, npt.NDArray[np.object_]]:
    """Wood density of each tree from the tables, species -> genus -> family.

    Trees whose family is not in the tables get NaN and level ``"none"``; the plots
    stage fills those with the dataset mean (BIOMASS ``getWoodDensity`` rule).

    Returns
    -------
    wood_density_g_cm3, level
        Basic wood density (g cm-3) and the level that served it.
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    sp_t, gen_t, fam_t = _wd_lookup()
    out = np.full(names.shape, np.nan)
    level = np.full(names.shape, "none", dtype=object)
    for name in pd.unique(names):
        tax = resolve_taxon(str(name))
        mask = names == name
        if tax.species in sp_t:
            out[mask], level[mask] = sp_t[tax.species], "species"
        elif tax.genus in gen_t:
            out[mask], level[mask] = gen_t[tax.genus], "genus"
        elif tax.family is not None and tax.family in fam_t:
            out[mask], level[mask] = fam_t[tax.family], "family"
    return out, level


def fill_dataset_mean(wood_density_g_cm3: FloatArray) -> FloatArray:
    """Fill unknown wood densities with the mean of the known ones (BIOMASS "dataset" level).

    If no tree has a known value, the region default of ``defaults.yaml`` is used.
    """
    wd = np.asarray(wood_density_g_cm3, dtype=np.float64).copy()
    known = np.isfinite(wd)
    if known.all():
        return wd
    fill = (
        float(wd[known].mean())
        if known.any()
        else float(data_yaml("defaults.yaml")["region_wood_density_g_cm3"])
    )
    wd[~known] = fill
    return wd


def wood_density_sd(level: ArrayLike, known_g_cm3: ArrayLike) -> FloatArray:
    """Absolute SD (g cm-3) of each tree's wood density by the level that served it.

    The BIOMASS ``getWoodDensity`` rule (``uncertainty.yaml``, ``wood_density``): the
    mean within-taxon SD of the Global Wood Density Database at the species, genus or
    family level; 0 for a user value; for the ``"dataset"`` level the SD of the known
    densities ``known_g_cm3`` of the call's trees, or the whole database's SD where that
    is undefined or zero.
    """
    unc = data_yaml("uncertainty.yaml")["wood_density"]
    table = {k: float(v) for k, v in unc["absolute_sd_g_cm3"].items()}
    known = np.asarray(known_g_cm3, dtype=np.float64)
    known = known[np.isfinite(known)]
    spread = float(np.std(known, ddof=1)) if known.size > 1 else 0.0
    table["dataset"] = spread if spread > 0 else float(unc["dataset_fallback_sd_g_cm3"])
    levels = np.atleast_1d(np.asarray(level, dtype=object))
    unknown = sorted({str(v) for v in levels} - set(table))
    if unknown:
        raise AllometryError(
            f"models/data/uncertainty.yaml: wood_density.absolute_sd_g_cm3 has no level {unknown}"
        )
    return np.array([table[str(v)] for v in levels], dtype=np.float64)


def _lookup_by_level(table: pd.DataFrame, tax: Taxon, value: str) -> pd.Series:
    for level, key in (
        ("species", tax.species),
        ("genus", tax.genus),
        ("family", tax.family),
        ("group", tax.group),
    ):
        rows = table[(table["level"] == level) & (table["taxon"] == key)]
        if len(rows):
            return rows.iloc[0]
    rows = table[table["level"] == "region"]
    if not len(rows):
        raise AllometryError(f"models/data: no region default row for {value}")
    return rows.iloc[0]


@cache
def _cf_table() -> pd.DataFrame:
    return data_csv("carbon_fraction.csv")


@cache
def _cf_row(species: str, component: Biomass) -> tuple[float, float]:
    table = _cf_table()
    rows = table[table["component"].isin(("all", component))]
    row = _lookup_by_level(rows, resolve_taxon(species), f"{component} carbon fraction")
    return float(row["carbon_fraction"]), float(row["sd"])


def carbon_fraction(species: ArrayLike, component: Biomass = "aboveground") -> FloatArray:
    """Carbon fraction of dry biomass (kg C / kg) per tree (species -> ... -> region).

    ``component`` picks the above- or belowground fraction where ``carbon_fraction.csv``
    gives them apart (LY/T 2264-2014 for Chinese fir); rows marked ``all`` serve both.
    """
    return _cf_column(species, component, 0)


def carbon_fraction_sd(species: ArrayLike, component: Biomass = "aboveground") -> FloatArray:
    """Standard deviation of the carbon fraction per tree (same lookup as the value)."""
    return _cf_column(species, component, 1)


def _cf_column(species: ArrayLike, component: Biomass, which: int) -> FloatArray:
    names = np.atleast_1d(np.asarray(species, dtype=object))
    out = np.empty(names.shape)
    for name in pd.unique(names):
        out[names == name] = _cf_row(str(name), component)[which]
    return out


def tree_carbon_kg(species: ArrayLike, agb_kg: ArrayLike, bgb_kg: ArrayLike) -> FloatArray:
    """Carbon of each tree (kg C): AGB and BGB times their own carbon fractions."""
    return np.asarray(
        np.asarray(agb_kg, dtype=np.float64) * carbon_fraction(species, "aboveground")
        + np.asarray(bgb_kg, dtype=np.float64) * carbon_fraction(species, "belowground"),
        dtype=np.float64,
    )


@cache
def _rs_table() -> pd.DataFrame:
    t = data_csv("root_shoot.csv")
    t["agb_max_mg_ha"] = t["agb_max_mg_ha"].astype(float)
    return t


@cache
def root_shoot_classes(species: str) -> tuple[tuple[float, float, float, float, float], ...]:
    """IPCC classes of a species: (agb_min_mg_ha, agb_max_mg_ha, ratio, low, high) rows,
    from the first level (species -> genus -> family -> group -> region) that has any."""
    table = _rs_table()
    tax = resolve_taxon(species)
    for level, key in (
        ("species", tax.species),
        ("genus", tax.genus),
        ("family", tax.family),
        ("group", tax.group),
        ("region", "default"),
    ):
        sel = table[(table["level"] == level) & (table["taxon"] == key)]
        if len(sel):
            return tuple(
                (
                    float(r.agb_min_mg_ha),
                    float(r.agb_max_mg_ha),
                    float(r.root_shoot_ratio),
                    float(r.low),
                    float(r.high),
                )
                for r in sel.itertuples()
            )
    raise AllometryError("models/data/root_shoot.csv: no region default rows")


def root_shoot_ratio(species: ArrayLike, stand_agb_mg_ha: ArrayLike | None = None) -> FloatArray:
    """Root-to-shoot ratio per tree (species -> genus -> family -> group -> region).

    IPCC 2006 Table 4.4 ratios depend on the stand's aboveground biomass; pass the
    plot's AGB (Mg/ha). Without it the lowest-biomass class is used (a tree outside a
    stand context), which the plots stage never does.
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    if stand_agb_mg_ha is None:
        agb = np.zeros(names.shape)
    else:
        agb = np.broadcast_to(np.asarray(stand_agb_mg_ha, dtype=np.float64), names.shape)
    out = np.full(names.shape, np.nan)
    for name in pd.unique(names):
        mask = names == name
        for lo, hi, ratio, _, _ in root_shoot_classes(str(name)):
            out[mask & (agb >= lo) & (agb < hi)] = ratio
    return out


# ----------------------------------------------------------------- tree functions
def culm_age_du(age_yr: ArrayLike) -> FloatArray:
    """Moso bamboo culm age in "du" (1 du = 2 years; culm age 1-2 yr -> 1 du)."""
    years_per_du = float(data_yaml("defaults.yaml")["bamboo_years_per_du"])
    return np.ceil(np.asarray(age_yr, dtype=np.float64) / years_per_du)


def _as_array(values: ArrayLike | None, n: int, name: str) -> FloatArray:
    if values is None:
        return np.full(n, np.nan)
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.shape == (1,) and n != 1:
        arr = np.full(n, arr[0])
    if arr.shape != (n,):
        raise AllometryError(f"{name} has {arr.shape[0]} values but species has {n}")
    return arr


def evaluate_equations(
    eq_names: npt.NDArray[np.object_],
    *,
    dbh_cm: FloatArray,
    height_m: FloatArray,
    wood_density_g_cm3: FloatArray,
    age_yr: FloatArray,
    e_index: float | None = None,
) -> FloatArray:
    """Evaluate a (possibly different) named equation per tree; NaN where the name is None.

    Input arrays share their first axis with ``eq_names`` and may have a second axis
    (Monte Carlo draws).
    """
    out = np.full(np.shape(dbh_cm), np.nan)
    for name in pd.unique(eq_names[pd.notna(eq_names)]):
        rows = eq_names == name
        eq = get_equation(str(name))
        inputs: dict[str, ArrayLike | None] = {
            "dbh_cm": dbh_cm[rows],
            "height_m": height_m[rows],
            "wood_density_g_cm3": wood_density_g_cm3[rows],
            "age_du": culm_age_du(age_yr[rows]),
            "e_index": None if e_index is None else np.full(dbh_cm[rows].shape, e_index),
        }
        out[rows] = eq.evaluate(**{k: inputs[k] for k in eq.required})
    return out


def tree_agb_kg(
    species: ArrayLike,
    dbh_cm: ArrayLike,
    height_m: ArrayLike | None = None,
    age_yr: ArrayLike | None = None,
    *,
    wood_density_g_cm3: ArrayLike | None = None,
    equation: str | None = None,
    e_index: float | None = None,
) -> FloatArray:
    """Aboveground biomass of each tree (kg dry mass) with the registry's default equation.

    Parameters
    ----------
    species
        Latin binomials (``"Cunninghamia lanceolata"``).
    dbh_cm
        Diameter at breast height (cm).
    height_m
        Total height (m); NaN or ``None`` where not measured (then the species'
        no-height default applies).
    age_yr
        Culm age in years (bamboo equations only).
    wood_density_g_cm3
        Overrides the table value where given (not NaN); unknown taxa get the mean of
        the other trees of the call.
    equation
        A registered equation name for all trees instead of the species defaults.
    e_index
        Chave et al. 2014 environmental stress index E (eq. 7 family only).

    Returns
    -------
    numpy.ndarray
        AGB in kg per tree; NaN where the inputs cannot be evaluated (missing DBH).
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    n = names.shape[0]
    h = _as_array(height_m, n, "height_m")
    wd, _ = wood_density(names)
    if wood_density_g_cm3 is not None:
        user = _as_array(wood_density_g_cm3, n, "wood_density_g_cm3")
        wd = np.where(np.isfinite(user), user, wd)
    return evaluate_equations(
        tree_equations(names, h, equation=equation),
        dbh_cm=_as_array(dbh_cm, n, "dbh_cm"),
        height_m=h,
        wood_density_g_cm3=fill_dataset_mean(wd),
        age_yr=_as_array(age_yr, n, "age_yr"),
        e_index=e_index,
    )


def tree_equations(
    species: ArrayLike, height_m: ArrayLike | None = None, *, equation: str | None = None
) -> npt.NDArray[np.object_]:
    """Name of the AGB equation each tree gets (default rule or the forced ``equation``).

    Default rule: the species' with-height equation where every tree of the species in
    the call has a height, else its no-height equation for all of them (one equation per
    species across the call, see :func:`species_lacking_heights`).
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    n = names.shape[0]
    if equation is not None and equation != "species":
        agb_equation(equation)
        return np.full(n, equation, dtype=object)
    has_h = _heights_per_species(names, _as_array(height_m, n, "height_m"))
    out = np.empty(n, dtype=object)
    for name in pd.unique(names):
        mask = names == name
        out[mask & has_h] = default_equation_name(str(name), has_height=True)
        out[mask & ~has_h] = default_equation_name(str(name), has_height=False)
    return out


def species_lacking_heights(species: ArrayLike, height_m: ArrayLike) -> list[str]:
    """Species of which some trees have a height and others not (none where all or none do).

    The default equations give such a species its no-height equation for every tree of
    the call (see :func:`tree_equations`).
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    has_h = np.isfinite(_as_array(height_m, names.shape[0], "height_m"))
    return [
        str(name)
        for name in pd.unique(names)
        if has_h[names == name].any() and not has_h[names == name].all()
    ]


def _heights_per_species(names: npt.NDArray[np.object_], h: FloatArray) -> npt.NDArray[np.bool_]:
    """Whether each tree takes its species' with-height equation: only where every tree of
    its species in the call has a height, so that one species gets one equation.

    Pass all the epochs of a remeasured plot set in one call: an epoch measured without
    heights (and no H-D model to fill them) then moves every epoch of the species to the
    no-height equation, instead of comparing one equation's biomass with another's,
    which would show their difference as growth.
    """
    has_h = np.isfinite(h)
    for name in species_lacking_heights(names, h):
        has_h[names == name] = False
    return has_h


def tree_bgb_equations(
    species: ArrayLike, height_m: ArrayLike | None = None, *, equation: str | None = None
) -> npt.NDArray[np.object_]:
    """Name of the root equation of each tree, None where the root-to-shoot ratio applies.

    Species root equations (``species.csv``) are used only with the species' default AGB
    equations (``equation`` None or ``"species"``), so that AGB and BGB come from the
    same source; a forced AGB equation gets root-to-shoot ratios.
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    n = names.shape[0]
    out = np.full(n, None, dtype=object)
    if equation is not None and equation != "species":
        return out
    has_h = _heights_per_species(names, _as_array(height_m, n, "height_m"))
    table = _species_table()
    for name in pd.unique(names):
        tax = resolve_taxon(str(name))
        if not tax.known_species:
            continue
        mask = names == name
        for col, sel in (("bgb_equation", has_h), ("bgb_equation_no_height", ~has_h)):
            value = table.loc[tax.species, col]
            if isinstance(value, str) and value:
                out[mask & sel] = value
    return out


def tree_bgb_kg(
    species: ArrayLike,
    dbh_cm: ArrayLike,
    height_m: ArrayLike | None = None,
    age_yr: ArrayLike | None = None,
    *,
    wood_density_g_cm3: ArrayLike | None = None,
    equation: str | None = None,
    e_index: float | None = None,
    stand_agb_mg_ha: ArrayLike | None = None,
) -> FloatArray:
    """Belowground biomass of each tree (kg).

    The species' root equation where ``species.csv`` has one (see
    :func:`tree_bgb_equations`), else AGB x the IPCC 2006 Table 4.4 root-to-shoot ratio
    of the stand's AGB class (``stand_agb_mg_ha``, the plot's AGB in Mg/ha; without it
    the lowest class). Other parameters are those of :func:`tree_agb_kg`.
    """
    names = np.atleast_1d(np.asarray(species, dtype=object))
    n = names.shape[0]
    h = _as_array(height_m, n, "height_m")
    agb = tree_agb_kg(
        names,
        dbh_cm,
        h,
        age_yr,
        wood_density_g_cm3=wood_density_g_cm3,
        equation=equation,
        e_index=e_index,
    )
    ratio_bgb = agb * root_shoot_ratio(names, stand_agb_mg_ha)
    bgb_names = tree_bgb_equations(names, h, equation=equation)
    eq_bgb = evaluate_equations(
        bgb_names,
        dbh_cm=_as_array(dbh_cm, n, "dbh_cm"),
        height_m=h,
        wood_density_g_cm3=np.full(n, np.nan),
        age_yr=_as_array(age_yr, n, "age_yr"),
        e_index=e_index,
    )
    return np.where(pd.notna(bgb_names), eq_bgb, ratio_bgb)
