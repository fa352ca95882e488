"""``biomine`` subcommands: one module each, exposing ``register(subparsers)``.

A module's ``register`` adds its parser and sets ``func`` to a handler taking the parsed ``args``
and returning an exit code. Heavy imports (torch, ray, pyarrow) happen inside the handler so that
``biomine --help`` stays instant.
"""

import re
from typing import Any


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: reST roles (``:mod:`x```) and double-backtick
    literals become plain text with single backticks, as the examples of every help page write them."""
    text = re.sub(r":(?:mod|func|class|meth|attr|data|exc|obj):`~?([^`]+)`", r"`\1`", doc or "")
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def require_positive(args: Any, *flags: str, allow_zero: bool = False) -> None:
    """Refuse, as one ``biomine: error:`` line, a numeric option below 1 (below 0 with ``allow_zero``).

    :raises JobConfigError: naming the flag and its value.
    """
    from pipeline.errors import JobConfigError

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and (value < 0 if allow_zero else value < 1):
            raise JobConfigError(f"{flag} {value}: must be {'0 or more' if allow_zero else 'at least 1'}")
