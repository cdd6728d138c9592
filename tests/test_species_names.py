"""Species by Latin, Chinese or pinyin name (``models/data/species_names.csv``, issue #17).

A tree list that names its trees as a Nanping inventory does (杉木, shanmu, 马尾松) must
give the biomass of the same list in Latin names; the QA table says which names were
translated and by which source; a name the file does not hold keeps the loud fallback
of the trees outside the species table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models import allometry
from models.datafiles import data_csv
from models.plot_biomass import SPECIES_TABLE_FIELD, PlotBiomassOptions, plot_biomass
from pipeline.config import PlotsParams
from pipeline.stages.plots import options_from_params


def _options(**changes: Any) -> PlotBiomassOptions:
    return dataclasses.replace(options_from_params(PlotsParams()), **changes)


def _inventory(names: dict[str, str], seed: int = 11) -> pd.DataFrame:
    """Two plots of Chinese fir, Masson pine and Moso bamboo (culm ages), half the trees
    with a measured height; ``names`` renames the species as the list writes them."""
    rng = np.random.default_rng(seed)
    latin = ["Cunninghamia lanceolata", "Pinus massoniana", "Phyllostachys edulis"]
    rows = []
    for p in range(2):
        for i in range(30):
            sp = latin[i % 3]
            d = float(rng.uniform(6, 30)) if i % 3 < 2 else float(rng.uniform(7, 13))
            h = 1.3 + 22 * (1 - math.exp(-d / 18)) if i % 2 else np.nan
            rows.append({"plot_id": f"P{p}", "epoch": "2020", "tree_id": i,
                         "species": names.get(sp, sp), "dbh_cm": d, "height_m": h,
                         "age_yr": 2.0 if i % 3 == 2 else np.nan,
                         "plot_area_ha": 0.0667})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "names",
    [
        {
            "Cunninghamia lanceolata": "杉木",
            "Pinus massoniana": "马尾松",
            "Phyllostachys edulis": "毛竹",
        },
        {
            "Cunninghamia lanceolata": "shanmu",
            "Pinus massoniana": "Ma Wei Song",
            "Phyllostachys edulis": "máo zhú",
        },
        {"Phyllostachys edulis": "Phyllostachys pubescens"},
    ],
    ids=["chinese", "pinyin", "latin-synonym"],
)
def test_a_list_in_other_names_gives_the_biomass_of_the_latin_list(
    names: dict[str, str],
) -> None:
    opts = _options(n_draws=50)
    latin_t, latin_plots, latin_qa = plot_biomass(_inventory({}), options=opts)
    t, plots, qa = plot_biomass(_inventory(names), options=opts)
    assert set(t["species"]) == set(latin_t["species"])
    np.testing.assert_array_equal(t["agb_kg"], latin_t["agb_kg"])
    pd.testing.assert_frame_equal(plots, latin_plots)
    assert SPECIES_TABLE_FIELD not in set(qa["field"])  # every name found its species
    translated = qa[qa["action"] == "translate"]
    assert sorted(translated["value"]) == sorted(names.values())
    assert "translate" not in set(latin_qa["action"])
    for species, written in names.items():
        reason = translated.loc[translated["value"] == written, "reason"].iloc[0]
        assert reason.startswith(f"{written} read as {species} (")
        assert "20 tree(s)" in reason and "Flora of China" in reason


def test_a_name_outside_the_file_keeps_the_loud_fallback() -> None:
    """松树 ("pine", no species) is in no flora's list: the trees are outside the table."""
    trees = _inventory({"Pinus massoniana": "松树"})
    with pytest.warns(UserWarning, match=r"not in models/data/species.csv: 松树 \(20\)"):
        _, _, qa = plot_biomass(trees, options=_options(n_draws=20))
    assert SPECIES_TABLE_FIELD in set(qa["field"])
    assert "松树" not in set(qa.loc[qa["action"] == "translate", "value"])


def test_the_names_file_is_sourced_unambiguous_and_names_table_species() -> None:
    names = data_csv("species_names.csv")
    assert set(names["language"]) <= {"zh", "pinyin", "latin synonym"}
    assert names["source"].str.contains("Flora of China").all()
    tables = set(data_csv("species.csv")["species"])
    wd = data_csv("wood_density.csv")
    tables |= set(wd.loc[wd["level"] == "species", "taxon"])
    assert set(names["species"]) <= tables
    # each name (as looked up) stands for one species, and is not itself a table species
    looked_up = [allometry.translate_species(n) for n in names["name"]]
    assert [species for species, _ in looked_up] == list(names["species"])
    assert not set(names["name"]) & tables
    # every Chinese name has its pinyin, as Flora of China gives it beside the name
    for row in names[names["language"] == "zh"].itertuples():
        pinyin = names[(names["language"] == "pinyin") & (names["species"] == row.species)]
        assert len(pinyin) == 1 and str(pinyin["name"].iloc[0]) in str(row.source)


def test_pinyin_is_matched_without_tones_case_or_spacing() -> None:
    for written in ("shan mu", "shanmu", "Shānmù", "SHAN-MU", " shan  mu "):
        assert allometry.normalise_species(written) == "Cunninghamia lanceolata"
    assert allometry.normalise_species("杉木 ") == "Cunninghamia lanceolata"
    assert allometry.normalise_species("pinus  Massoniana") == "Pinus massoniana"
    assert allometry.translate_species("Pinus massoniana")[1] is None
    assert allometry.resolve_taxon("杉木").known_species
