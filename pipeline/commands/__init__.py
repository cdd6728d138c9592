"""What the stand-alone stage commands share: options and file handling.

Each ``forest-carbon <stage>`` command runs one stage on explicit files. Two rules keep
it in step with ``forest-carbon run``:

- an option that sets a parameter takes its default (and the choices of a ``Literal``)
  from the parameter model of :mod:`pipeline.config` (:func:`param_option`), so ``--help``
  shows the config's defaults and there is one home for each;
- inputs are loaded by suffix and outputs written atomically by the same functions the
  runner uses (:func:`read_input`, :func:`write_outputs`, on :mod:`pipeline.io`).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from pipeline.config import DaskSettings
from pipeline.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return str(value)


def param_option(
    parser: argparse.ArgumentParser,
    flag: str,
    model: type[BaseModel],
    field: str,
    *,
    help: str,
    **kwargs: Any,
) -> None:
    """Add ``flag`` for ``model.field``: its default, choices and type come from the model.

    The help text ends with the default. A ``None`` default (the model's "not set") is
    left to ``help`` to explain; with ``action="append"`` the option starts empty and the
    model's default applies when it is not given (see :func:`make_params`).
    """
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if get_origin(info.annotation) is Literal and "choices" not in kwargs:
        kwargs["choices"] = get_args(info.annotation)
    typed = default is not None and not isinstance(default, bool | str | tuple)
    if typed and "type" not in kwargs and kwargs.get("action") is None:
        kwargs["type"] = type(default)
    if default is not None:
        help = f"{help} (default: {_shown(default)})"
    if kwargs.get("action") == "append":
        default = None
    parser.add_argument(flag, default=default, help=help, **kwargs)


def make_params(model: type[ModelT], *, command: str, **values: Any) -> ModelT:
    """``model(**values)`` with the values not given (``None``) left to the model's defaults.

    Raises
    ------
    ConfigError
        A value the model rejects, named with the command and the parameter.
    """
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else model.__name__
        raise ConfigError(f"{command}: {where}: {first['msg']}") from None


def parse_dates(texts: list[str]) -> tuple[dt.date, dt.date]:
    """``--dates START END`` as dates."""
    try:
        start, end = (dt.date.fromisoformat(t) for t in texts)
    except ValueError:
        raise ConfigError(f"--dates: {texts} are not dates (use YYYY-MM-DD)") from None
    return start, end


def read_input(path: Path, *, dask: DaskSettings | None = None, sheet: str | None = None) -> Any:
    """Load an input file by its suffix, as ``run`` does.

    Rasters come in the chunks of ``dask`` (a config's settings; default: the defaults); a
    workbook's table from ``sheet`` (default: the first).
    """
    from pipeline import io  # heavy (xarray, Dask): not needed to parse the command line

    return io.read_input(path, chunk_px=(dask or DaskSettings()).chunk_px, sheet=sheet)


def write_outputs(outputs: Mapping[Path, Any]) -> None:
    """Write outputs atomically, as ``run`` does, and print each path."""
    from pipeline import io

    io.write_outputs(outputs)
    for path in outputs:
        print(path)
