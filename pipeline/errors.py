"""The project's exception hierarchy.

One base error with a subclass per kind of problem. The CLI turns every
:class:`ForestCarbonError` into one clear line on stderr and exit code 2; anything
else is an internal error (exit 1).
"""

from __future__ import annotations

from models.errors import CodedWarning


class ForestCarbonError(Exception):
    """Base of every error the user can fix by changing an input, a file or a setting."""


class ConfigError(ForestCarbonError):
    """A configuration file is missing, malformed or has a value out of its allowed range."""


class InputDataError(ForestCarbonError):
    """An input file (raster, point cloud, table, vector) is missing, corrupt or inconsistent."""


class CatalogError(ForestCarbonError):
    """A STAC search failed or found nothing usable."""


class ScienceDomainError(ForestCarbonError):
    """Inputs fall outside the domain in which a method or equation is valid."""


class RunFolderError(ForestCarbonError):
    """The output folder cannot be used: another run holds it, it is not a run folder, it
    lies in a system folder, or its disk is full (see :mod:`pipeline.run_folder`)."""


class PipelineWarning(CodedWarning):
    """Something the user should know about a run's inputs or results that does not stop it.

    The runner records every warning of this kind, and of :class:`models.errors.ModelsWarning`
    (the science's, as :mod:`models` imports nothing from here), under its stage in the
    manifest (``stages.<stage>.warnings``), prints it also under ``--quiet``, and the report
    lists it; warnings of other kinds (from libraries) go to
    ``stages.<stage>.library_warnings``. Its ``code`` and ``values`` (of
    :class:`~models.errors.CodedWarning`, the base of both) go to
    ``stages.<stage>.warning_codes``.
    """
