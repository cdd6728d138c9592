"""The report's words in each of its languages, from one data file (``strings.yaml``).

The template and :mod:`pipeline.report.build` take every text from :class:`Words`, so the
English and the Chinese report state the same numbers in the same places; a language is
added to ``strings.yaml`` alone. Which language a run's report is in:
``stages.report.language`` of the config, or, when it is not set, the language
``strings.yaml`` names for the region's ``country`` (``CN``: Chinese), else English.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, cast

import yaml

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = ("en", "zh")
STRINGS_FILE = "strings.yaml"


@functools.cache
def strings() -> dict[str, Any]:
    """The parsed ``strings.yaml`` (read once)."""
    text = resources.files("pipeline.report").joinpath(STRINGS_FILE).read_text(encoding="utf-8")
    return cast(dict[str, Any], yaml.safe_load(text))


def default_language(country: str | None) -> Language:
    """The report language of a region in ``country`` (ISO 3166-1 alpha-2) by default."""
    return cast(Language, strings()["default_language"].get(country, "en"))


@dataclass(frozen=True)
class Words:
    """Texts of one language: ``words("key", name=value)`` formats ``text.key``."""

    language: Language

    def __call__(self, key: str, **values: Any) -> str:
        return str(strings()["text"][key][self.language]).format(**values)

    @property
    def script(self) -> str:
        """The script the language is written in, as ``strings.yaml`` names its fonts."""
        return str(strings()["script"][self.language])

    def texts(self) -> dict[str, str]:
        """Every text of the language, unformatted (for the template)."""
        return {k: str(v[self.language]) for k, v in strings()["text"].items()}

    def column(self, name: str, **values: Any) -> str:
        """Header of a report table's column (the column name itself when not listed)."""
        entry = strings()["columns"].get(name)
        return name if entry is None else str(entry[self.language]).format(**values)

    def warning(self, message: str, coded: Mapping[str, Any] | None) -> str:
        """A stage's warning as the report says it: the language's text for its code
        (``warnings`` of ``strings.yaml``) filled with its values, else its message."""
        entry = strings()["warnings"].get(coded["code"]) if coded else None
        if coded is None or entry is None or self.language not in entry:
            return message
        return str(entry[self.language]).format(**coded["values"])

    def estimator(self, name: str) -> str:
        """A survey estimator's name; in Chinese with the name of ``totals.csv`` beside it."""
        entry = strings()["estimators"].get(name)
        if entry is None or self.language == "en":
            return name if entry is None else str(entry["en"])
        return f"{entry[self.language]}（{name}）"

    def value(self, column: str, value: Any) -> str:
        """A parcel attribute's value as shown: forest types by the dominant species'
        vernacular and Latin names, missing values as ``no_value``."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self("no_value")
        if column == "forest_type":
            entry = strings()["forest_types"].get(str(value))
            if entry is not None:
                name, latin = str(entry[self.language]), str(entry["latin"])
                return f"{name} ({latin})" if latin else name
        return str(value)
