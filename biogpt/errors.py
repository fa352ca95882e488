"""User-facing errors.

Everything a user can cause (a missing file, a config that does not match the weights, an input longer
than the model's positions, a malformed record) raises a subclass of :class:`BioMineError` with a
message that names the thing at fault and says how to fix it. The ``biomine`` CLI prints these
without a traceback; library callers can catch them by type. Programming errors stay ordinary
exceptions.
"""

from __future__ import annotations


class BioMineError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class CheckpointError(BioMineError):
    """A checkpoint is missing, unreadable, or does not match its config."""


class ConfigError(BioMineError):
    """A config or job spec has an unknown key or an invalid value."""


class InputTooLongError(BioMineError, ValueError):
    """An input is longer than the model's ``max_position_embeddings``."""


class TokenizerError(BioMineError):
    """Vocabulary files are missing or malformed."""


class TaskSettingsError(CheckpointError):
    """A converted checkpoint's ``biomine_task.json`` is missing or invalid, or is for another task."""
