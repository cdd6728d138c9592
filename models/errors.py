"""The exception hierarchy of the science in :mod:`models`.

One base, :class:`ModelsError`, with a subclass per kind of problem, so that a caller
can tell a bad option from bad data by the class and never by the message text. The
pipeline's stages turn them into its own errors (:mod:`pipeline.errors`), which the CLI
reports in one line with exit code 2; ``models`` imports nothing from ``pipeline``.
They subclass :class:`ValueError`: each says that a value handed to the science is
unusable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ModelsError(ValueError):
    """Base of every error raised by the science in :mod:`models`."""


class AllometryError(ModelsError):
    """An equation cannot be evaluated (unknown name, missing input or coefficients)."""


class HDFitError(ModelsError):
    """An H-D model cannot be fitted (too few heights, non-convergence)."""


class ImplausibleHDError(HDFitError):
    """Every H-D fit converged to a curve that is not a plausible height-diameter model
    (a parameter outside its domain, or heights out of range over the diameters)."""


class PlotDataError(ModelsError):
    """The tree list cannot give a plot estimate (missing columns, plot without trees)."""


class PlotOptionsError(ModelsError):
    """An option of the plot biomass computation is unusable (an unknown equation name,
    or an equation that needs Chave's E without one)."""


class ModelDomainError(ModelsError):
    """Training data do not allow a model or a validation scheme (too few plots, blocks...)."""


class SurveyError(ModelsError):
    """A plot sample, its design or its auxiliary data cannot give a survey estimate."""


class CodedWarning(UserWarning):
    """Base of the project's own warnings (:class:`ModelsWarning` here,
    :class:`pipeline.errors.PipelineWarning` in the pipeline), which may carry a ``code``
    and the ``values`` their message states (numbers, names, paths).

    The pipeline's runner records the code and values beside the message, and a report in
    another language says the warning with its own text for the code, filled with the
    values (``docs/warnings.md``). The message stays the English text, as printed on the
    console.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        values: Mapping[str, str | int | float] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.values = dict(values or {})

    def coded(self) -> dict[str, Any] | None:
        """``{"code": ..., "values": {...}}`` as the manifest records it, or None."""
        if self.code is None:
            return None
        return {"code": self.code, "values": self.values}


class ModelsWarning(CodedWarning):
    """Something about the science's inputs or results the user should know, that does not
    stop it (e.g. a fallback taken). The pipeline's runner records these as the project's own
    warnings (with :class:`pipeline.errors.PipelineWarning`), never as library noise."""
