"""Progress of long work: a bar on a terminal, log lines everywhere else.

A corpus-wide fetch or ingest runs for hours, mostly where nobody watches a terminal (cron, CI, a
Ray worker's log). :class:`Progress` shows a tqdm bar when stderr is a terminal (or when asked) and
otherwise logs one INFO line every ``every`` seconds and one at the end, with the count, the total,
the rate and what is left, so a log says how far a run got and when it will end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


class Progress:
    """``update(n)`` as work is done; use as a context manager (the last line is logged on exit).

    ``bar``: True a tqdm bar, False log lines, None a bar only when stderr is a terminal.
    """

    def __init__(
        self,
        total: int | None,
        *,
        unit: str,
        desc: str,
        bar: bool | None = None,
        logger: logging.Logger | None = None,
        every: float = 30.0,
        initial: int = 0,
    ):
        self.total, self.unit, self.desc = total, unit, desc
        self.count = initial
        self.start_count = initial
        self.every = every
        self.log = logger or logging.getLogger("pipeline")
        self.postfix: dict[str, Any] = {}
        self._t0 = self._last = time.monotonic()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        self._closed = False
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.count > self.start_count:
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        self._last = now = time.monotonic()
        done = self.count - self.start_count
        rate = done / max(now - self._t0, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        left = ""
        if not final and self.total is not None and rate > 0 and self.count < self.total:
            left = f", about {duration((self.total - self.count) / rate)} left"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        self.log.info(
            "%s: %d%s %s%s (%.1f %s/s%s)%s",
            self.desc,
            self.count,
            of,
            self.unit + "s",
            " done" if final else "",
            rate,
            self.unit,
            left,
            extra,
        )


def duration(seconds: float) -> str:
    """A duration for people: "42 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
