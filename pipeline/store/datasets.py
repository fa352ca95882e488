"""Task output datasets (``OUT/entities``, ``OUT/relations``, ``OUT/summaries``): immutable data files
and one commit record per input shard, so that a re-run can verify before it trusts anything.

Layout of a dataset folder::

    <shard>-<sha16>.parquet        the rows computed from document shard <shard>; the name carries the
                                   first 16 hex digits of the file's sha256, so a file is never
                                   overwritten with other content (a recomputation that gives the same
                                   rows writes the same name and bytes)
    _commits/<shard>.json          the commit of that shard: written by the driver, last, as one object

A shard's output counts as done only when its commit record exists and says so. The record holds the
output's **fingerprint** - the input shard (name, rows, size, sha256) and the task's full effective
settings (task, model checksum, prompt, prompt id, decoding, max_new_tokens, dtype, output schema
version; :meth:`pipeline.tasks.options.TaskOptions.settings`) - and the data file's name, size, rows
and sha256, plus the documents that failed. :meth:`TaskDataset.check` says why a shard must be
computed again: no record, another fingerprint (settings or input changed: it names what changed),
a data file that is missing, of another size or another checksum (damaged, truncated, emptied, or
another file copied over it), or failed documents. This works on object stores, which have neither
rename nor locks: a single PUT of one object is atomic, and one run at a time holds the job
(:mod:`pipeline.store.lease`).

Files that no record names (left by a run killed between writing a data file and committing it, or
superseded by a recomputation) are removed by :meth:`TaskDataset.collect_garbage` at the start of
the next run, which holds the lease; readers never see them because they read only committed files
(:meth:`TaskDataset.committed_files`). Plain ``pd.read_parquet(folder)`` reads the same files after
a finished run (pyarrow skips ``_``-prefixed names).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from pipeline.store.storage import FileInfo, Location

log = logging.getLogger(__name__)

FORMAT = "biomine-task-output"
FORMAT_VERSION = 1
COMMITS = "_commits"
_THREADS = 16  # object-store reads are latency bound: overlap them


def data_file_name(shard: str, sha256: str) -> str:
    return f"{shard}-{sha256[:16]}.parquet"


def fingerprint(input_shard: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of what a shard's output depends on."""
    blob = json.dumps({"input": input_shard, "settings": settings}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class ShardOutput:
    """What a worker wrote for one input shard (before the driver commits it)."""

    shard: str
    file: FileInfo
    documents: int
    failures: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class TaskDataset:
    """One task's output folder (see the module docstring)."""

    def __init__(self, loc: Location):
        self.loc = loc
        self.commits = loc / COMMITS
        # Every record, read once (on first need) and then kept current by this object's own commits
        # and retirements: the run that uses it holds the job's lease, so nobody else writes them.
        # Planning, garbage collection, retiring and the manifest then share one listing of the
        # folder instead of reading every record four or five times per stage.
        self._all: dict[str, dict[str, Any]] | None = None

    # --- reading records ---------------------------------------------------------------------------
    def record(self, shard: str) -> dict[str, Any] | None:
        """The commit record of ``shard``; None when there is none or it is unreadable (a damaged
        record is as good as none: the shard is redone and the record rewritten)."""
        if self._all is not None:
            return self._all.get(shard)
        return self._read(shard)

    def _read(self, shard: str) -> dict[str, Any] | None:
        path = self.commits / f"{shard}.json"
        try:
            record = path.read_json()
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:  # a damaged record (other storage errors propagate)
            log.warning("%s is unreadable (%s): its shard is redone", path, exc)
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT or "file" not in record:
            log.warning("%s is not a biomine commit record: its shard is redone", path)
            return None
        return record

    def records(self, shards: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Commit records by shard (of ``shards``, default every record in the folder)."""
        if self._all is None:
            names = [n[: -len(".json")] for n in self.commits.files(".json")]
            with ThreadPoolExecutor(_THREADS) as pool:
                found = dict(zip(names, pool.map(self._read, names)))
            self._all = {k: v for k, v in found.items() if v is not None}
        if shards is None:
            return dict(self._all)
        return {s: self._all[s] for s in shards if s in self._all}

    # --- verifying -----------------------------------------------------------------------------
    def check(
        self,
        shard: str,
        expected: str,
        input_shard: Mapping[str, Any],
        settings: Mapping[str, Any],
        record: Mapping[str, Any] | None,
    ) -> tuple[str, str] | None:
        """``(kind, why)`` when ``shard`` must be computed (again), None when its committed output is
        valid for fingerprint ``expected`` and its data file is intact (size and sha256 read back).
        Kinds: ``not computed``, ``settings changed``, ``input changed``, ``missing``, ``damaged``,
        ``failed documents``."""
        if record is None:
            return "not computed", "not computed yet"
        if record.get("fingerprint") != expected:
            what = _changed(record.get("settings", {}), settings)
            if what:
                return "settings changed", "settings changed (" + ", ".join(what) + ")"
            return "input changed", "its document shard changed"
        meta = record["file"]
        data = self.loc / meta["name"]
        size = data.size()
        if size is None:
            return "missing", f"output file {meta['name']} is missing"
        if size != meta["size"]:
            return "damaged", f"output file {meta['name']} is damaged ({size} bytes, {meta['size']} committed)"
        if data.sha256() != meta["sha256"]:
            return "damaged", f"output file {meta['name']} is damaged or was replaced (checksum differs)"
        if record.get("failures"):
            return "failed documents", f"{len(record['failures'])} of its documents failed last time"
        return None

    def plan(
        self, wanted: Mapping[str, tuple[str, Mapping[str, Any]]], settings: Mapping[str, Any]
    ) -> dict[str, tuple[str, str]]:
        """``{shard: (kind, why)}`` for each shard of ``wanted`` (``shard -> (fingerprint, input info)``)
        that must be computed; the others are verified done. Checksums are read in parallel."""
        records = self.records(wanted)

        def one(shard: str) -> tuple[str, tuple[str, str] | None]:
            fp, info = wanted[shard]
            return shard, self.check(shard, fp, info, settings, records.get(shard))

        with ThreadPoolExecutor(_THREADS) as pool:
            return {s: r for s, r in pool.map(one, list(wanted)) if r is not None}

    # --- committing ----------------------------------------------------------------------------
    def commit(
        self,
        output: ShardOutput,
        *,
        task: str,
        expected: str,
        input_shard: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Write the commit record of ``output`` (the data file is written already). The record
        replaces an older one in one PUT; the older data file, if another, is removed after."""
        previous = self.record(output.shard)
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": task,
            "shard": output.shard,
            "fingerprint": expected,
            "input": dict(input_shard),
            "settings": dict(settings),
            "file": asdict(output.file),
            "documents": output.documents,
            "failures": output.failures,
            "committed_at": _now(),
        }
        (self.commits / f"{output.shard}.json").write_json(record)
        if self._all is not None:
            self._all[output.shard] = record
        if previous and previous["file"]["name"] != output.file.name:
            (self.loc / previous["file"]["name"]).delete()
        return record

    def retire(self, shard: str) -> None:
        """Remove ``shard``'s output (its document shard is gone): the record first, then the file."""
        record = self.record(shard)
        (self.commits / f"{shard}.json").delete()
        if self._all is not None:
            self._all.pop(shard, None)
        if record:
            (self.loc / record["file"]["name"]).delete()

    def clear(self) -> int:
        """Remove every record and data file (a non-incremental job starts from nothing)."""
        shards = list(self.records())
        for shard in shards:
            self.retire(shard)
        self.collect_garbage()
        return len(shards)

    def collect_garbage(self) -> list[str]:
        """Remove data files that no commit record names (a killed run's, or superseded ones)."""
        named = {r["file"]["name"] for r in self.records().values()}
        stray = [n for n in self.loc.files(".parquet") if n not in named]
        for name in stray:
            log.info("removing %s: no commit record names it (left by an interrupted run)", self.loc / name)
            (self.loc / name).delete()
        return stray

    # --- readers -------------------------------------------------------------------------------
    def committed_files(self, live: Iterable[str] | None = None) -> list[Location]:
        """The committed data files (of the shards in ``live``, default all), in shard order."""
        records = self.records(live)
        return [self.loc / records[s]["file"]["name"] for s in sorted(records)]

    def failures(self, live: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every failed document recorded in the commits (of the shards in ``live``)."""
        out: list[dict[str, Any]] = []
        for _, record in sorted(self.records(live).items()):
            out += record.get("failures", [])
        return out
