"""Errors that visiondojo raises for problems the user can fix.

Every message says what is wrong, where (file, index, field) and how to fix it. The CLI
prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VisionDojoError(ValueError):
    """Base class: a problem with the user's input, config or environment."""


class DataError(VisionDojoError):
    """The data cannot be used as given (empty, bad labels, bad pixels, unreadable files)."""


class ConfigError(VisionDojoError):
    """A config file or override names an unknown key or a value outside the allowed ones."""


class ModelError(VisionDojoError):
    """The model cannot be built or does not fit the data."""


class RunExistsError(VisionDojoError):
    """The output folder already holds a run; visiondojo never overwrites one silently."""
