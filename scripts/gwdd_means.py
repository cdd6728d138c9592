"""Write models/data/wood_density_gwdd.csv: genus and family mean wood densities of the
Global Wood Density Database (Zanne et al. 2009, doi:10.5061/dryad.234), by the rule of the
R package BIOMASS ``getWoodDensity`` (region "World", its default): species mean = mean of
the species' records, genus mean = mean of its species means, family mean = mean of its
genus means. Binomials are cut to genus and epithet, as BIOMASS data-raw/globalwd.R does.

Input: the database as shipped with BIOMASS, data-raw/wdData.csv of
github.com/umr-amap/BIOMASS at commit 4a574a9d10c7754a784778ce696b29c17e0ea22e, e.g.
    git show 4a574a9d10c7754a784778ce696b29c17e0ea22e:data-raw/wdData.csv > wdData.csv
    python scripts/gwdd_means.py wdData.csv models/data/wood_density_gwdd.csv
"""

import sys

import pandas as pd

SOURCE = (
    "GWDD (Zanne et al. 2009 doi:10.5061/dryad.234) via BIOMASS wdData.csv 4a574a9d; "
    "scripts/gwdd_means.py"
)


def main(src: str, dst: str) -> None:
    wd = pd.read_csv(src)
    wd = wd.rename(
        columns={"Wood density (g/cm^3), oven dry mass/fresh volume": "wd", "Family": "family"}
    )
    wd = wd[wd["wd"].notna()]
    parts = wd["Binomial"].str.split(" ", expand=True)
    wd["genus"], wd["epithet"] = parts[0].str.strip(), parts[1].str.strip()
    # a genus filed under two families in the database takes its most frequent one
    family_of = wd.groupby("genus")["family"].agg(lambda f: f.value_counts().index[0])
    wd["family"] = wd["genus"].map(family_of)
    sp = wd.groupby(["family", "genus", "epithet"])["wd"].agg(["mean", "size"]).reset_index()
    gen = sp.groupby(["family", "genus"]).agg(
        wd=("mean", "mean"), n_taxa=("mean", "size"), n_records=("size", "sum")
    )
    gen = gen.reset_index()
    fam = gen.groupby("family").agg(
        wd=("wd", "mean"), n_taxa=("wd", "size"), n_records=("n_records", "sum")
    )
    fam = fam.reset_index()
    rows = pd.concat(
        [
            pd.DataFrame(
                {
                    "level": "genus",
                    "taxon": gen["genus"],
                    "family": gen["family"],
                    "wood_density_g_cm3": gen["wd"].round(4),
                    "n_taxa": gen["n_taxa"],
                    "n_records": gen["n_records"],
                }
            ),
            pd.DataFrame(
                {
                    "level": "family",
                    "taxon": fam["family"],
                    "family": fam["family"],
                    "wood_density_g_cm3": fam["wd"].round(4),
                    "n_taxa": fam["n_taxa"],
                    "n_records": fam["n_records"],
                }
            ),
        ]
    )
    rows["source"] = SOURCE
    rows["verified"] = True
    rows.to_csv(dst, index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
