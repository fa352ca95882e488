"""Ingest PubMed baseline and update files into a current-corpus directory of article shards.

Contract (what ``biomine ingest`` promises):

- Inputs are PubMed XML files (``pubmedYYnNNNN.xml.gz`` or any ``.xml``/``.xml.gz``), given as files,
  directories (a directory contributes its ``*.xml`` and ``*.xml.gz`` files, not recursively) or
  glob patterns, each a local path or a storage URI (:mod:`pipeline.store.storage`); the output too.
  They are processed in file-name order, which for NLM's files is publication order: the baseline,
  then the daily updates.
- The output is the **current corpus**: each PMID at most once, in the version that the latest
  file gives it, except that a higher ``PMID Version`` is never replaced by a lower one (for
  versioned journals, where NLM keeps several versions of one PMID). A ``DeleteCitation`` removes
  the PMID, including any record of it earlier in the same file (the DTD puts deletions last).
  Within one file a later record of the same PMID and version wins.
- Each file is one transaction (:class:`pipeline.store.shards.Transaction`): its new shards, the rewritten
  older shards that held records it replaces or deletes, and the note that the file is done become
  visible together. A crash therefore loses at most the file in progress, and re-running the same
  command finishes the job with exactly the output an uninterrupted run gives (apart from
  ``fetched_at``). Files already recorded are skipped, so a re-run is a no-op.
- Memory is bounded by one shard of rows plus the PMIDs of one file: files are streamed.

:raises IngestError: an input is missing, unreadable or malformed (the message names the file, the
    position and the last good PMID), a recorded file has changed since it was ingested, or a new
    file sorts before one already ingested (applying it now would let old records override newer ones).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import fnmatch
import glob
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import IngestError
from pipeline.pubmed.parser import Deletion, iter_records
from pipeline.store.shards import DEFAULT_SHARD_ROWS, ShardStore, Transaction
from pipeline.store.storage import Location, location

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".xml", ".xml.gz")


@dataclass
class IngestSummary:
    """Counts over the files ingested by one call (``skipped``: files already done)."""

    files: int = 0
    skipped: int = 0
    records: int = 0
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    rows: int = 0


def discover_inputs(paths: Iterable[str | os.PathLike]) -> list[Location]:
    """The input files, in processing (file-name) order. Each item is a local path, a storage URI
    (``s3://bucket/pubmed/baseline/``), a folder of either kind, or a glob pattern (``*`` etc. in the
    last part of the name).

    :raises IngestError: a path does not exist, a pattern or directory matches no PubMed XML, or two
        inputs share a file name (their order would be ambiguous).
    """
    files: list[Location] = []
    for item in paths:
        loc = location(item)
        if not loc.exists() and glob.has_magic(str(item)):
            # A quoted glob (job specs list them): expand it here, as a shell would; on object storage
            # the pattern may be in the last part of the name only.
            if loc.is_local:
                matches = [location(p) for p in sorted(glob.glob(loc.path))]
            else:
                matches = [loc.parent / n for n in loc.parent.listdir() if fnmatch.fnmatchcase(n, loc.name)]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise IngestError(f"input pattern {item} matches no files")
            files.extend(matches)
            continue
        if loc.is_dir():
            found = [loc / n for n in loc.files() if n.endswith(INPUT_SUFFIXES) and not n.startswith(".")]
            if not found:
                raise IngestError(f"{loc} holds no .xml or .xml.gz files; pass PubMed XML files or their directory")
            files.extend(found)
        elif loc.is_file():
            files.append(loc)
        else:
            raise IngestError(f"input {loc} does not exist")
    by_name: dict[str, Location] = {}
    def same(a: Location, b: Location) -> bool:
        return a == b or (a.is_local and b.is_local and os.path.realpath(a.path) == os.path.realpath(b.path))

    for loc in files:
        other = by_name.setdefault(loc.name, loc)
        if not same(other, loc):
            raise IngestError(f"two inputs are named {loc.name} ({other} and {loc}); their order is ambiguous")
    return sorted(by_name.values(), key=lambda p: p.name)


def ingest_files(paths: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                 shard_rows: int = DEFAULT_SHARD_ROWS, progress: bool | None = None,
                 now: Callable[[], _dt.datetime] | None = None, lock: bool = True) -> IngestSummary:
    """Ingest PubMed XML files into the current-corpus directory ``out`` (see the module docstring).

    ``progress`` None shows a bar on a terminal only. ``lock=False``: the caller holds a lease that
    covers ``out`` already (a job run), so the store takes none of its own.

    :raises IngestError: see the module docstring.
    :raises ShardStateError: ``out`` is another kind of output or in use.
    """
    from tqdm import tqdm

    now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
    files = discover_inputs(paths)
    summary = IngestSummary()
    with ShardStore(out, "ingest", shard_rows=shard_rows, lock=lock) as store:
        todo = []
        for path in files:
            record = store.inputs.get(path.name)
            size = path.size()
            if record is None:
                todo.append(path)
            elif record["size"] != size:
                raise IngestError(
                    f"{path} is {size} bytes but was ingested as {record['size']} bytes: the file changed; "
                    f"ingest into a new --out directory"
                )
            else:
                summary.skipped += 1
        if todo and store.inputs:
            last = max(store.inputs)
            early = [p.name for p in todo if p.name < last]
            if early:
                raise IngestError(
                    f"{early[0]} sorts before {last}, which is already ingested into {out}; applying it now "
                    f"would let older records override newer ones. Ingest all files into a new --out directory"
                )
        with tqdm(todo, unit="file", desc="ingest", disable=(not progress) if progress is not None else None) as bar:
            for path in bar:
                counts = _ingest_file(store, path, now())
                for key in ("records", "added", "replaced", "deleted"):
                    setattr(summary, key, getattr(summary, key) + counts[key])
                summary.files += 1
                bar.set_postfix(articles=summary.records)
        summary.rows = store.row_count()
    return summary


def iter_file_records(path: Location, stack: contextlib.ExitStack) -> Iterator[dict[str, Any] | Deletion]:
    """The records of one input file wherever it is: a local file by path (the parser reads it with
    its own buffering), anything else as a stream that ``stack`` closes."""
    source = path.local_path() if path.is_local else stack.enter_context(path.open_input())
    return iter_records(source, path.name)


@dataclass
class _Existing:
    shard: str
    row: int
    version: int


def _ingest_file(store: ShardStore, path: Location, fetched_at: _dt.datetime) -> dict[str, Any]:
    """One file in one transaction: stream its records into new shards, then settle conflicts."""
    name = path.name
    best: dict[int, tuple[int, int]] = {}  # pmid -> (version, position) of the file's winning record
    deleted: set[int] = set()
    new_shards: list[tuple[str, list[int]]] = []  # shard name -> positions of its rows
    buffer: list[dict[str, Any]] = []
    positions: list[int] = []
    records = 0
    with store.transaction() as txn, contextlib.ExitStack() as stack:

        def flush() -> None:
            info = txn.write(buffer)
            if info is not None:
                new_shards.append((info.name, list(positions)))
            buffer.clear()
            positions.clear()

        for position, record in enumerate(iter_file_records(path, stack)):
            if isinstance(record, Deletion):
                deleted.add(record.pmid)
                continue
            records += 1
            record["source"] = name
            record["fetched_at"] = fetched_at
            key = (record["version"], position)
            if record["pmid"] not in best or key > best[record["pmid"]]:
                best[record["pmid"]] = key
            buffer.append(record)
            positions.append(position)
            if len(buffer) >= store.shard_rows:
                flush()
        flush()

        existing = _locate(store, sorted(set(best) | deleted))
        keep_positions: set[int] = set()
        drop_rows: dict[str, set[int]] = {}
        counts = {"records": records, "added": 0, "replaced": 0, "deleted": 0}
        for pmid in set(best) | deleted:
            old = existing.get(pmid)
            if pmid in deleted:
                if old is not None:
                    drop_rows.setdefault(old.shard, set()).add(old.row)
                    counts["deleted"] += 1
                else:
                    log.debug("%s: DeleteCitation of PMID %d, which is not in the corpus", name, pmid)
                continue
            version, position = best[pmid]
            if old is not None and old.version > version:
                log.info("%s: PMID %d version %d kept over this file's version %d", name, pmid, old.version, version)
                continue
            keep_positions.add(position)
            if old is not None:
                drop_rows.setdefault(old.shard, set()).add(old.row)
                counts["replaced"] += 1
            else:
                counts["added"] += 1
        _rewrite(txn, store, drop_rows, new_shards, keep_positions)
        txn.commit(inputs={name: {"size": path.size(), "records": records, "deletions": len(deleted),
                                  "ingested_at": fetched_at.isoformat(timespec="seconds")}})
    log.info("%s: %d records (%d new, %d replaced, %d deleted)", name, records, counts["added"],
             counts["replaced"], counts["deleted"])
    return counts


def _locate(store: ShardStore, pmids: list[int]) -> dict[int, _Existing]:
    """Where the committed corpus holds these (sorted) PMIDs; shards whose PMID range misses them all are not read."""
    found: dict[int, _Existing] = {}
    if not pmids:
        return found
    wanted = pa.array(pmids, pa.int64())
    for shard in store.shards:
        first = bisect.bisect_left(pmids, shard.min_pmid)
        if first == len(pmids) or pmids[first] > shard.max_pmid:
            continue
        table = store.read_shard(shard.name, ["pmid", "version"])
        hits = pc.indices_nonzero(pc.is_in(table.column("pmid"), value_set=wanted)).to_pylist()
        if not hits:
            continue
        shard_pmids = table.column("pmid").take(hits).to_pylist()
        versions = table.column("version").take(hits).to_pylist()
        for row, pmid, version in zip(hits, shard_pmids, versions):
            found[pmid] = _Existing(shard.name, row, version)
    return found


def _rewrite(txn: Transaction, store: ShardStore, drop_rows: dict[str, set[int]],
             new_shards: list[tuple[str, list[int]]], keep_positions: set[int]) -> None:
    """Replace the committed shards that lose rows, and this file's shards holding losing records."""
    rows_of = {s.name: s.rows for s in store.shards}
    for shard, rows in sorted(drop_rows.items()):
        txn.replace(shard, [i not in rows for i in range(rows_of[shard])])
    for shard, shard_positions in new_shards:
        keep = [p in keep_positions for p in shard_positions]
        if not all(keep):
            txn.replace(shard, keep)
