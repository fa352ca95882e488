"""User-facing errors.

Everything a user can cause (a missing file, a config that does not match the weights, an input longer
than the model's positions, a malformed record) raises a subclass of :class:`BioMineError` with a
message that names the thing at fault and says how to fix it. The ``biomine`` CLI prints these
without a traceback; library callers can catch them by type. Programming errors stay ordinary
exceptions.
"""

from __future__ import annotations

from typing import Mapping


class BioMineError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback.

    ``setting`` names what the user set that the message is about (or what the fix changes), in the
    raising module's own terms: its parameter name (``"output"``, ``"email"``, ``"task"``; a tuple
    when several). The message names the value and the fix in those terms too, never a command-line
    flag or a job-file key: only a caller that knows how the user spelled the setting (a command's
    flag, a job file's key) adds that, with :meth:`spell`; ``str()`` then ends with it in parentheses.
    """

    setting: str | tuple[str, ...] | None = None
    #: How the user spelled :attr:`setting` (``"--out"``, ``"[job] output"``), once a caller said so.
    spelling: str | None = None

    def __init__(self, *args, setting: str | tuple[str, ...] | None = None):
        super().__init__(*args)
        self.setting = setting

    @property
    def settings(self) -> tuple[str, ...]:
        """:attr:`setting` as a tuple (empty when the message is about no setting)."""
        if not self.setting:
            return ()
        return (self.setting,) if isinstance(self.setting, str) else tuple(self.setting)

    def spell(self, names: Mapping[str, str]) -> BioMineError:
        """Name the settings as the user gave them (``names``: setting -> flag or job key), once: the
        innermost caller that knows them wins. Returns the error, for ``raise exc.spell(...)``."""
        if self.spelling is None:
            found = [names[s] for s in self.settings if s in names]
            if found:
                self.spelling = ", ".join(dict.fromkeys(found))
        return self

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.spelling})" if self.spelling else text


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
