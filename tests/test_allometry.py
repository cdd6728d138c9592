"""Tests of the allometric registry and the tree-level functions (models.allometry).

Reference values are computed by hand (plain ``math``) from the published coefficients,
independently of the registry code:

* Chave et al. 2014 eq. 4, AGB = 0.0673 (rho D^2 H)^0.976 (Global Change Biology 20,
  3177-3190, doi:10.1111/gcb.12629). Example trees: the example of BIOMASS's
  ``computeAGB()`` documentation (``D <- 10:99; H <- D^(2/3)``, umr-amap/BIOMASS
  R/computeAGB.R), with wood density fixed at 0.6 g/cm3 instead of the doc's random draw.
* Chave et al. 2014 eq. 7 coefficients as quoted in BIOMASS ``AGBmonteCarlo()``.
* Chinese fir: LY/T 2264-2014 coefficients were not available (see allometry.yaml), so the
  species default is Chave eq. 4 with the table wood density; the test recomputes that.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import allometry
from models.allometry import (
    AllometryError,
    carbon_fraction,
    get_equation,
    list_equations,
    registry,
    tree_agb_kg,
    tree_bgb_kg,
    tree_equations,
    wood_density,
)

DEMO_SPECIES = [
    "Cunninghamia lanceolata",
    "Pinus massoniana",
    "Phyllostachys edulis",
    "Schima superba",
    "Castanopsis carlesii",
    "Cinnamomum camphora",
    "Liquidambar formosana",
]


def _chave4_by_hand(rho: float, d: float, h: float) -> float:
    return 0.0673 * math.pow(rho * d * d * h, 0.976)


def test_chave_eq4_matches_hand_computation_on_biomass_doc_example() -> None:
    d = np.arange(10, 100, dtype=float)
    h = d ** (2.0 / 3.0)
    rho = 0.6
    got = get_equation("chave2014_eq4").evaluate(
        dbh_cm=d, height_m=h, wood_density_g_cm3=np.full_like(d, rho)
    )
    expected = np.array([_chave4_by_hand(rho, di, hi) for di, hi in zip(d, h, strict=True)])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0)
    # BIOMASS computeAGB returns Mg; D = 10 cm, H = 10^(2/3) m, rho = 0.6 -> 0.0235 Mg
    assert got[0] / 1000 == pytest.approx(0.0673 * (0.6 * 100 * 10 ** (2 / 3)) ** 0.976 / 1000)


def test_chave_eq7_matches_hand_computation() -> None:
    d, rho, e = 35.0, 0.55, 0.1
    ln_d = math.log(d)
    expected = math.exp(
        -1.803 - 0.976 * e + 0.976 * math.log(rho) + 2.673 * ln_d - 0.0299 * ln_d**2
    )
    got = get_equation("chave2014_eq7").evaluate(
        dbh_cm=np.array([d]), wood_density_g_cm3=np.array([rho]), e_index=np.array([e])
    )
    assert got[0] == pytest.approx(expected, rel=1e-9)
    rse = get_equation("chave2014_eq4").rse_log
    assert rse == 0.357


def test_chave_eq7_without_e_is_refused() -> None:
    with pytest.raises(AllometryError, match="e_index"):
        tree_agb_kg(["Schima superba"], [20.0], equation="chave2014_eq7")


def test_chinese_fir_default_matches_zhou2018_jiangxi_by_hand() -> None:
    # Zhou et al. (2018) Jiangxi Chinese fir, W = a (D^2 H)^b per component (stem,
    # branches, foliage; root), coefficients as transcribed in BiomassChina R/newValue.R
    d, h = 20.0, 15.0
    d2h = d * d * h
    stem = 0.0500 * d2h**0.8886
    branches = 0.0002 * d2h**1.3056
    foliage = 0.0138 * d2h**0.8107
    root = 0.0362 * d2h**0.7883
    got = tree_agb_kg(["Cunninghamia lanceolata"], [d], [h])
    assert got[0] == pytest.approx(stem + branches + foliage, rel=1e-9)
    assert tree_bgb_kg(["Cunninghamia lanceolata"], [d], [h])[0] == pytest.approx(root, rel=1e-9)
    # without height: W = a D^b
    agb_d = 0.2206 * d**2.0335 + 0.0035 * d**2.8231 + 0.0449 * d**1.9430
    got_d = tree_agb_kg(["Cunninghamia lanceolata"], [d])
    assert got_d[0] == pytest.approx(agb_d, rel=1e-9)
    assert tree_bgb_kg(["Cunninghamia lanceolata"], [d])[0] == pytest.approx(
        0.1358 * d**1.8017, rel=1e-9
    )
    # a 20 cm, 15 m Chinese fir weighs on the order of a hundred kilograms dry
    assert 80 < got[0] < 200


def test_species_without_verified_equation_falls_back_to_chave() -> None:
    rho = float(wood_density(["Castanopsis carlesii"])[0][0])
    got = tree_agb_kg(["Castanopsis carlesii"], [20.0], [15.0])
    assert got[0] == pytest.approx(_chave4_by_hand(rho, 20.0, 15.0), rel=1e-9)


def test_demo_species_all_evaluate_with_and_without_height() -> None:
    n = len(DEMO_SPECIES)
    d = np.linspace(8, 30, n)
    h = np.linspace(8, 20, n)
    age = np.full(n, np.nan)
    age[2] = 3.0
    with_h = tree_agb_kg(DEMO_SPECIES, d, h, age)
    no_h = tree_agb_kg(DEMO_SPECIES, d, None, age)
    assert np.all(np.isfinite(with_h)) and np.all(with_h > 0)
    assert np.all(np.isfinite(no_h)) and np.all(no_h > 0)
    bgb = tree_bgb_kg(DEMO_SPECIES, d, h, age)
    assert np.all(np.isfinite(bgb)) and np.all((bgb > 0.05 * with_h) & (bgb < 0.6 * with_h))
    # bamboo and Castanopsis carlesii have no verified equation: Zeng (2018) without height
    rho = wood_density(DEMO_SPECIES)[0]
    for i in (2, 4):
        assert no_h[i] == pytest.approx(0.3 * rho[i] * d[i] ** (7 / 3), rel=1e-12)
        assert tree_equations(DEMO_SPECIES, h)[i] == "chave2014_eq4"


def test_bgb_is_agb_times_ipcc_ratio_by_stand_class() -> None:
    sp = ["Castanopsis carlesii", "Phyllostachys edulis"]  # no root equation
    agb = tree_agb_kg(sp, [25.0, 30.0], [17.0, 18.0])
    low = tree_bgb_kg(sp, [25.0, 30.0], [17.0, 18.0], stand_agb_mg_ha=80.0)
    high = tree_bgb_kg(sp, [25.0, 30.0], [17.0, 18.0], stand_agb_mg_ha=200.0)
    np.testing.assert_allclose(low, agb * 0.20)
    np.testing.assert_allclose(high, agb * 0.24)


def test_carbon_fraction_is_ipcc_default() -> None:
    np.testing.assert_allclose(carbon_fraction(DEMO_SPECIES), 0.47)


def test_wood_density_fallback_levels() -> None:
    wd, level = wood_density(
        ["Castanopsis carlesii", "Castanopsis fargesii", "Quercus glauca", "Foo bar"]
    )
    assert list(level) == ["species", "genus", "family", "none"]
    assert wd[1] == wd[0]  # genus mean of the one Castanopsis in the table
    assert np.isnan(wd[3])
    # unknown taxa get the mean of the other trees in the call (BIOMASS "dataset" level)
    agb = tree_agb_kg(["Castanopsis carlesii", "Foo bar"], [20.0, 20.0], [15.0, 15.0])
    assert agb[0] == pytest.approx(agb[1])


def test_user_wood_density_overrides_table() -> None:
    got = tree_agb_kg(["Castanopsis carlesii"], [20.0], [15.0], wood_density_g_cm3=[0.7])
    assert got[0] == pytest.approx(_chave4_by_hand(0.7, 20.0, 15.0), rel=1e-9)


def test_species_names_are_normalised() -> None:
    a = tree_agb_kg(["pinus  MASSONIANA"], [20.0], [15.0])
    b = tree_agb_kg(["Pinus massoniana"], [20.0], [15.0])
    assert a[0] == b[0]


def test_registry_lists_every_equation_with_citation() -> None:
    table = list_equations()
    assert set(table["name"]) == set(registry())
    assert {"chave2014_eq4", "chave2014_eq7"} <= set(table["name"])
    assert table["citation"].str.len().min() > 30
    assert (table.loc[table["name"] == "chave2014_eq4", "citation"].iloc[0]).find("Chave") >= 0


def test_unverified_or_unavailable_equations_are_never_defaults() -> None:
    species = pd.read_csv(allometry.resources.files("models").joinpath("data", "species.csv"))
    defaults = set(species["agb_equation"]) | set(species["agb_equation_no_height"])
    for name in defaults:
        assert registry()[name].status == "verified", name


def test_unavailable_equation_says_so() -> None:
    with pytest.raises(AllometryError, match="no coefficients"):
        tree_agb_kg(
            ["Cunninghamia lanceolata"], [20.0], [15.0], equation="lyt2264_2014_chinese_fir"
        )


def test_unknown_equation_lists_registered_names() -> None:
    with pytest.raises(AllometryError, match="chave2014_eq4"):
        get_equation("nope")


def test_bamboo_zhou_form_matches_hand_computation() -> None:
    eq = get_equation("zhou2004_moso")
    d, a = 10.0, 2.0
    expected = 747.787 * d**2.771 * (0.148 * a / (0.028 + a)) ** 5.555 + 3.772
    got = eq.evaluate(dbh_cm=np.array([d]), age_du=np.array([a]))
    assert got[0] == pytest.approx(expected, rel=1e-12)
    assert allometry.culm_age_du(np.array([1.0, 2.0, 3.0, 4.0]))[2] == 2.0


def test_domain_check() -> None:
    eq = get_equation("chave2014_eq4")
    ok = eq.in_domain(dbh_cm=np.array([4.0, 20.0, 300.0]), height_m=np.array([10.0, 10.0, 10.0]))
    assert list(ok) == [False, True, False]
