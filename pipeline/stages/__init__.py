"""The pipeline's stages, in the order they run (DESIGN §1).

Each entry binds a pure stage function to the part of the config it takes and to the
files it reads. Stage modules hold the functions; this registry is the only place that
knows the run-folder paths connecting one stage's outputs to the next one's inputs.
"""

from __future__ import annotations

from pipeline.stage import Stage

STAGES: tuple[Stage, ...] = ()
