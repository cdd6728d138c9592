"""Shared test helpers: a raster operation gives the same result on numpy and on Dask.

Every raster operation must return the same values whether its inputs hold numpy arrays
or the same values as Dask arrays cut into chunks smaller than the raster, so that its
kernels cross chunk edges, and on Dask it must stay lazy. xarray-spatial tests each of
its operations this way on both backends; :func:`assert_numpy_equals_dask` is our
version, :func:`dask_chunked` makes the Dask-backed inputs and
:func:`assert_same_result` compares two results of any shape the operations return.

:func:`assert_workbook_matches_csvs` checks an XLSX workbook cell by cell against CSVs;
:data:`CHROMIUM_FLAGS` run the headless browser the report tests (and its benchmark) open
the report in. :func:`subprocess_env` is the environment of the processes tests start;
:func:`write_tiny_config` the tiny region's config for a test's own folder.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.config import region_config_path

Chunks = int | tuple[int, int]

TESTS = Path(__file__).parent


def write_tiny_config(tiny_data: Path, folder: Path) -> Path:
    """The pinned tiny config, reading ``tiny_data`` and writing into ``folder/run``."""
    text = region_config_path("tiny").read_text()
    text = text.replace("data/tiny", str(tiny_data)).replace("outputs/tiny", str(folder / "run"))
    cfg = folder / "tiny.yaml"
    cfg.write_text(text)
    return cfg


def subprocess_env() -> dict[str, str]:
    """This process's environment with ``tests/`` importable (the toy stages), for the
    runs and Dask workers that tests start as processes."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


#: headless Chromium (``scripts/install-report-deps.sh``) without network, sync or updates
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def _yx(chunks: Chunks) -> tuple[int, int]:
    return (chunks, chunks) if isinstance(chunks, int) else chunks


def dask_chunked(value: Any, chunks: Chunks) -> Any:
    """``value`` with every numpy-backed array in it Dask-backed in chunks of ``chunks`` px.

    DataArrays and Datasets are chunked ``(y, x)`` along ``y`` and ``x`` (one chunk per
    ``band``); plain numpy arrays along their last two axes (or their only axis). Lists,
    tuples and dicts are walked; anything else is returned unchanged.
    """
    cy, cx = _yx(chunks)
    if isinstance(value, xr.DataArray | xr.Dataset):
        sizes = {"y": cy, "x": cx, "band": 1}
        return value.chunk({d: sizes.get(str(d), cy) for d in value.dims})
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value
        lead = (1,) * max(value.ndim - 2, 0)
        return da.from_array(value, chunks=(*lead, cy, cx)[-value.ndim :])
    if isinstance(value, dict):
        return {k: dask_chunked(v, chunks) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(dask_chunked(v, chunks) for v in value)
    return value


def _backing(value: Any) -> Any:
    """The array behind a DataArray (else ``value`` itself)."""
    return value.data if isinstance(value, xr.DataArray) else value


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, xr.Dataset):
        return [value[name] for name in value.data_vars]
    return [value]


def assert_same_result(got: Any, want: Any, *, rtol: float = 0.0, atol: float = 0.0) -> None:
    """``got`` equals ``want``: arrays by value and dtype (NaNs equal), exactly by default.

    Handles DataArrays and Datasets (also coordinates, dims and attributes), numpy and Dask
    arrays, (Geo)DataFrames, dataclasses, dicts, lists and tuples of them, and plain values.
    """
    exact = rtol == 0.0 and atol == 0.0
    if isinstance(want, xr.DataArray | xr.Dataset):
        assert type(got) is type(want)
        got = got.compute()
        if exact:
            xr.testing.assert_identical(got, want)
        else:
            xr.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
            assert got.attrs == want.attrs
        for g, w in zip(_leaves(got), _leaves(want), strict=True):
            assert g.dtype == w.dtype, (g.name, g.dtype, w.dtype)
    elif isinstance(want, np.ndarray | da.Array):
        g, w = np.asarray(got), np.asarray(want)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if exact:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    elif isinstance(want, pd.DataFrame):
        assert type(got) is type(want)
        pd.testing.assert_frame_equal(got, want, check_exact=exact, rtol=rtol, atol=atol)
    elif dataclasses.is_dataclass(want) and not isinstance(want, type):
        assert type(got) is type(want)
        for f in dataclasses.fields(want):
            assert_same_result(getattr(got, f.name), getattr(want, f.name), rtol=rtol, atol=atol)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for k in want:
            assert_same_result(got[k], want[k], rtol=rtol, atol=atol)
    elif isinstance(want, list | tuple):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same_result(g, w, rtol=rtol, atol=atol)
    else:
        assert got == want, (got, want)


def assert_numpy_equals_dask(
    func: Callable[..., Any],
    *args: Any,
    chunks: Chunks = 4,
    rtol: float = 0.0,
    atol: float = 0.0,
    **kwargs: Any,
) -> Any:
    """``func`` on numpy-backed inputs equals ``func`` on Dask-backed, multi-chunk copies.

    Every numpy-backed array among ``args`` and ``kwargs`` (DataArrays, Datasets and
    numpy arrays, also inside lists, tuples and dicts) is given to the second call as a
    Dask array in chunks of ``chunks`` px (see :func:`dask_chunked`; pick chunks smaller
    than the raster). The Dask result must be lazy wherever it holds arrays, and equal
    the numpy result (:func:`assert_same_result`, exact unless ``rtol``/``atol``).

    Returns the numpy result, for checks against a reference.
    """
    want = func(*args, **kwargs)
    lazy_args, lazy_kwargs = dask_chunked(args, chunks), dask_chunked(kwargs, chunks)
    assert any(
        isinstance(_backing(leaf), da.Array) for leaf in _leaves([lazy_args, lazy_kwargs])
    ), "no numpy-backed array among the inputs to run on Dask"
    got = func(*lazy_args, **lazy_kwargs)
    for leaf in _leaves(got):
        if isinstance(leaf, np.ndarray | da.Array | xr.DataArray):
            assert isinstance(_backing(leaf), da.Array), "the Dask result was computed"
    assert_same_result(got, want, rtol=rtol, atol=atol)
    return want


def assert_workbook_matches_csvs(xlsx: Path, csvs: Mapping[str, Path]) -> None:
    """Each sheet of ``xlsx`` (in order) holds its CSV's header and rows, number for number
    (to the 16 significant digits a workbook holds).

    The workbook is read with openpyxl and the CSVs with the csv module as Excel decodes
    them (``utf-8-sig``), so neither side goes through the pipeline's pandas readers.
    """
    from openpyxl import load_workbook

    wb = load_workbook(xlsx, read_only=True, data_only=True)
    assert wb.sheetnames == list(csvs)
    for sheet, path in csvs.items():
        got = list(wb[sheet].iter_rows(values_only=True))
        with path.open(encoding="utf-8-sig", newline="") as f:
            want = list(csv.reader(f))
        assert list(got[0]) == want[0], sheet
        assert len(got) == len(want) > 1, sheet
        for i, (got_row, want_row) in enumerate(zip(got[1:], want[1:], strict=True)):
            for name, cell, text in zip(want[0], got_row, want_row, strict=True):
                where = (sheet, i, name)
                if text == "":
                    assert cell is None, where
                elif isinstance(cell, bool):
                    assert str(cell) == text, where
                elif isinstance(cell, int | float):
                    # openpyxl writes 16 significant digits ("%.16g"; Excel shows 15)
                    assert math.isclose(cell, float(text), rel_tol=1e-15, abs_tol=0.0), where
                else:
                    assert cell == text, where  # text, and inf written as "inf"
