"""Carbon of a stand from its sub-compartment (小班) inventory record, by the mean tree.

A forest management inventory (二类调查, GB/T 26424-2010) records per sub-compartment
the dominant species, the quadratic mean DBH (林分平均胸径, the diameter of the tree of
mean basal area), the mean height and the stems per ha. The stand's biomass is then
estimated by the *mean-tree method*: the stems per ha times the biomass of a tree of the
quadratic mean DBH and the mean height, with the species' own allometry (the same
equations, carbon fractions and root-to-shoot rules as the plots stage,
:mod:`models.allometry`). This is the classical stand-table shortcut (e.g. Husch, Beers &
Kershaw 2003, *Forest Mensuration*, 4th ed., ch. 12 on mean-tree estimates of stand
volume); its bias is known: for an allometry ``a D^b`` with ``b > 2`` the mean tree of
the quadratic mean DBH under-reads the stand by Jensen's inequality, a few per cent for
the DBH spread of an even-aged plantation, more in uneven stands.

Moso bamboo culm equations need the culm age (Zhou & Jiang 2004); a record gives the mean
culm age of the stand, and the mean culm of that age stands for the stand. Without a
height, the species' no-height equation applies.

Pure science: no pipeline imports.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.allometry import normalise_species, tree_agb_kg, tree_bgb_kg, tree_carbon_kg

FloatArray = npt.NDArray[np.float64]

KG_PER_MG = 1000.0


def mean_tree_stand(
    species: npt.ArrayLike,
    mean_dbh_cm: npt.ArrayLike,
    mean_height_m: npt.ArrayLike,
    stems_per_ha: npt.ArrayLike,
    culm_age_yr: npt.ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Aboveground biomass (Mg/ha) and carbon (AGB + BGB, Mg C/ha) of each stand by the
    mean-tree method.

    ``species`` are any names :func:`models.allometry.normalise_species` reads (Latin,
    Chinese, pinyin); ``mean_dbh_cm`` the quadratic mean DBH; ``mean_height_m`` NaN where
    the record has none; ``culm_age_yr`` the bamboo stands' mean culm age (NaN for trees).
    NaN where DBH or stems are missing.
    """
    names = np.asarray([normalise_species(s) for s in np.atleast_1d(species)], dtype=object)
    n = names.shape[0]
    dbh = np.broadcast_to(np.asarray(mean_dbh_cm, dtype=np.float64), (n,))
    height = np.broadcast_to(np.asarray(mean_height_m, dtype=np.float64), (n,))
    stems = np.broadcast_to(np.asarray(stems_per_ha, dtype=np.float64), (n,))
    age = (
        np.full(n, np.nan)
        if culm_age_yr is None
        else np.broadcast_to(np.asarray(culm_age_yr, dtype=np.float64), (n,))
    )
    agb_tree = tree_agb_kg(names, dbh, height, age)
    agb = stems * agb_tree / KG_PER_MG
    bgb_tree = tree_bgb_kg(names, dbh, height, age, stand_agb_mg_ha=agb)
    carbon = stems * tree_carbon_kg(names, agb_tree, bgb_tree) / KG_PER_MG
    return np.asarray(agb, dtype=np.float64), np.asarray(carbon, dtype=np.float64)
