"""Exceptions with messages meant for users: each names the cause and what to do."""

from __future__ import annotations


class ShiftlabError(Exception):
    """Base class; the CLI prints these as one paragraph without a traceback."""


class DataError(ShiftlabError):
    """A data file or folder is missing, truncated or corrupt."""


class RecipeError(ShiftlabError):
    """A recipe (YAML or ``--set`` override) is invalid."""


class TrainingError(ShiftlabError):
    """Training diverged (NaN/inf loss) or could not continue."""
