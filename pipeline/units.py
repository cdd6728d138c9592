"""Unit definitions shared across the pipeline.

Only definitions of units live here; science constants with a source (the CO2/C ratio,
carbon fractions, ...) live in ``models/data/`` with their citations.
"""

from __future__ import annotations

#: square metres in a hectare
M2_PER_HA = 10_000.0
