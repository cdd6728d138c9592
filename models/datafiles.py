"""Reading the science data files shipped in ``models/data`` (YAML and CSV with sources).

Coefficients, ratios and thresholds live in those files with their citations or reasons;
the code reads them here, once per process.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

#: the C YAML parser when libyaml is available (the registry is parsed once per process)
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def data_text(name: str) -> str:
    """The text of ``models/data/<name>``."""
    return resources.files("models").joinpath("data", name).read_text(encoding="utf-8")


def data_csv(name: str) -> pd.DataFrame:
    """``models/data/<name>`` as a table (empty cells are missing, ``NA`` is text)."""
    with resources.as_file(resources.files("models").joinpath("data", name)) as path:
        # utf-8-sig: a file saved from Excel starts with a byte-order mark
        return pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False, na_values=[""])


@cache
def data_yaml(name: str) -> dict[str, Any]:
    """``models/data/<name>`` parsed (cached: treat the result as read-only)."""
    return dict(yaml.load(data_text(name), Loader=YAML_LOADER))
