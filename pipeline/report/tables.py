"""The run's tables as one XLSX workbook (``report/tables.xlsx``), one sheet per table.

A forestry bureau's staff open tables in Excel; the CSVs of the run folder open there too
(UTF-8 with a byte-order mark, :data:`pipeline.io.CSV_ENCODING`), and this workbook holds
the same rows in one file: the parcel table (``parcels/parcel_sink.gpkg`` without its
geometry: the rows and columns of ``parcels/parcel_sink.csv``), the credit
calculation (``credits/credits.csv``), the survey totals (``estimates/totals.csv``) and the
sample plan (``estimates/sample_plan.csv``). Column names are those of the CSVs, so the
units are in the headers (``area_ha``, ``area_mu``, ``sink_tco2e_yr`` ...). Values are
written as numbers to 16 significant digits (openpyxl; Excel itself shows 15), flags as
TRUE/FALSE, infinite degrees of freedom as the text ``inf``; missing values are empty
cells.

The XLSX container stamps the time of writing (its zip entries and document properties),
so two writes of the same tables differ in bytes; the manifest's content checksum of a
workbook is therefore taken over its sheets' rows (:func:`pipeline.io.content_checksum`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pandas as pd

#: the workbook's sheets in order, by the report stage's input names
SHEETS = {
    "parcel_sink": "parcels",
    "credits": "credits",
    "estimates": "estimates",
    "sample_plan": "sample_plan",
}


def tables_workbook(tables: Mapping[str, pd.DataFrame]) -> bytes:
    """The XLSX bytes of ``{sheet name: table}`` (geometry columns are left out).

    Written with pandas' openpyxl engine; the header row is frozen so it stays in view.
    """
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        for name, table in tables.items():
            geometry = getattr(table, "geometry", None)
            frame = table.drop(columns=geometry.name) if geometry is not None else table
            # nullable booleans as TRUE/FALSE/empty cells (pandas would write 1.0/0.0)
            flags = [c for c in frame.columns if isinstance(frame[c].dtype, pd.BooleanDtype)]
            frame = frame.astype(dict.fromkeys(flags, object))
            pd.DataFrame(frame).to_excel(writer, sheet_name=name, index=False)
            writer.sheets[name].freeze_panes = "A2"
    return buf.getvalue()
