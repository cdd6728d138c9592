"""The exception hierarchy of the science in :mod:`models`.

One base, :class:`ModelsError`, with a subclass per kind of problem, so that a caller
can tell a bad option from bad data by the class and never by the message text. The
pipeline's stages turn them into its own errors (:mod:`pipeline.errors`), which the CLI
reports in one line with exit code 2; ``models`` imports nothing from ``pipeline``.
They subclass :class:`ValueError`: each says that a value handed to the science is
unusable.
"""

from __future__ import annotations


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


class ModelsWarning(UserWarning):
    """Something about the science's inputs or results the user should know, that does not
    stop it (e.g. a fallback taken). The pipeline's runner records these as the project's own
    warnings (with :class:`pipeline.errors.PipelineWarning`), never as library noise."""
