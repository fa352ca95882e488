"""``biomine compact OUT``: keep an output's Delta tables small to read and cheap to store.

For every table of the output, under its lease:

1. **optimize**: tables whose files nothing refers to by name (``runs``, ``kb``) have their small
   files merged (delta-rs ``optimize.compact``). The ``documents`` and task tables are not merged:
   each task output file is the output of one documents file (its name says which,
   :mod:`pipeline.store.datasets`), which is what lets an update copy the outputs of unchanged
   articles instead of computing them; copy-on-write only ever shrinks a file, and a daily update
   adds files of the update's size.
2. **checkpoint** the log (readers then start from one Parquet file instead of every commit) and
   drop log entries older than the table's log retention;
3. **vacuum**: delete data files that no table version within ``retention_hours`` (default 168: 7
   days) refers to, and files no version ever referred to (left by a killed run). Time travel
   (``biomine query --as-of``, ``kb diff --since``) works within the retention; older versions
   can no longer be read.

:raises StoreError: the output is in use by another run, or a table is damaged.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pipeline.errors import StorageError
from pipeline.store.output import KB, RUNS, JobOutput
from pipeline.store.storage import error_line
from pipeline.store.tables import Table, TableError, delta_call

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 168
#: Tables whose data file names carry no meaning (safe to merge).
MERGEABLE = (KB, RUNS)


def compact(
    output: JobOutput, *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False
) -> dict[str, Any]:
    """Optimize, checkpoint and vacuum every table of ``output`` (see the module docstring); returns
    per table what was (or, with ``dry_run``, would be) merged and deleted."""
    report: dict[str, Any] = {}
    for name, loc in output.tables().items():
        table = Table(loc)
        entry: dict[str, Any] = {"version": table.version, "files": len(table.files())}
        try:
            # Each step is safe to try again after a transient failure: a second optimize or vacuum
            # finds less to do, a checkpoint of the same version is the same file.
            dt, what = table.dt, str(loc)
            if name in MERGEABLE and not dry_run and len(table.files()) > 1:
                metrics = delta_call(dt.optimize.compact, f"{what} (optimize)", refresh=dt.update_incremental)
                entry["merged"] = {k: metrics.get(k) for k in ("numFilesAdded", "numFilesRemoved")}
                table.refresh()
            vacuum = functools.partial(
                dt.vacuum,
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,
                full=True,
            )
            deleted = delta_call(vacuum, f"{what} (vacuum)")
            entry["vacuumed"] = len(deleted)
            if not dry_run:
                delta_call(dt.create_checkpoint, f"{what} (checkpoint)")
                delta_call(dt.cleanup_metadata, f"{what} (log cleanup)")
        except (TableError, StorageError):
            raise
        except Exception as exc:
            raise TableError(f"{loc}: compaction failed ({error_line(exc)})") from None
        report[name] = entry
    return report
