"""``biomine upgrade OUT``: an output written before biomine's tables were Delta tables, converted in place.

The old layout kept its own run state: ``documents/_manifest.json`` (shards, inputs applied, counters)
with per-shard deletion vectors (``documents/_deleted/``), one commit record per task output
(``<dataset>/_commits/<shard>.json``, with the settings fingerprint), ``kb.parquet`` and the run's
``_manifest.json``. Upgrading, under the output's lease:

1. ``documents``: each shard's live rows (its deletion vector applied; the current article schema)
   become one data file of the new Delta table, in one commit that also records every input file
   the old manifest lists as applied (the app transactions a re-run checks), so nothing is
   ingested or fetched again;
2. each task dataset: each committed output file, without the rows of articles its shard had
   tombstoned, becomes the output of the shard's new data file under the settings its commit
   record names, so a re-run with the same models keeps it (nothing recomputed); outputs with
   failed documents stay marked so the next run redoes them;
3. ``kb.parquet`` becomes the ``kb`` table; the run manifest becomes a ``finished`` row of ``runs``;
4. only then are the old files removed (the old manifest last), so an interrupted upgrade is run
   again and finishes: each step that already committed is skipped.

Nothing is lost: every table reads, with any Delta reader, exactly the rows the old release's
readers returned (tested on an output made by that release: tests/data/legacy-v0).

:raises StoreError: the output is not a legacy output, or one of its files is unreadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StoreError
from pipeline.store.datasets import TaskTable, settings_key, write_output
from pipeline.store.documents import (
    DATASET as DOCUMENTS,
)
from pipeline.store.documents import (
    FETCH_APP,
    INPUTS_APP,
    Documents,
    input_app,
    input_name_app,
    write_shard,
)
from pipeline.store.lease import Lease
from pipeline.store.output import LEGACY_MANIFEST, JobOutput
from pipeline.store.tables import DataFile, Table
from schemas.articles import conform

log = logging.getLogger(__name__)

LEGACY_COMMITS = "_commits"
LEGACY_DELETED = "_deleted"
LEGACY_KB = "kb.parquet"
UPGRADED = "upgraded_from"


def upgrade(output: JobOutput, *, lease: Lease | None = None) -> dict[str, Any]:
    """Convert the legacy output ``output`` (see the module docstring); returns what was converted.

    :raises StoreError: it is not a legacy output, or a file of it cannot be read.
    """
    if not output.is_legacy():
        raise StoreError(f"{output.root} is not an output of an older biomine (no documents/{LEGACY_MANIFEST})")
    if lease is None:
        with output.lease(f"biomine upgrade {output.root}") as own:
            return _upgrade(output, own)
    return _upgrade(output, lease)


def _upgrade(output: JobOutput, lease: Lease) -> dict[str, Any]:
    docs_loc = output.documents
    manifest = (docs_loc / LEGACY_MANIFEST).read_json()
    if manifest.get("format") != "biomine-article-shards":
        raise StoreError(f"{docs_loc / LEGACY_MANIFEST} is not a biomine shard manifest")
    report: dict[str, Any] = {"documents": 0, "datasets": {}}
    # 1. documents: old shard stem -> its new data file (None: no live row left)
    shards = manifest["shards"]
    dead = {s["name"]: _deletions(output, s) for s in shards}
    new_files: dict[str, DataFile | None] = {}
    docs = Documents(docs_loc)
    done = any(e.get(UPGRADED) for e in docs.table.commit_metadata(limit=20))
    for shard in shards:
        table = (docs_loc / shard["name"]).read_table()
        if dead[shard["name"]]:
            table = table.filter(
                pc.invert(pc.is_in(table.column("pmid"), value_set=pa.array(dead[shard["name"]], pa.int64())))
            )
        stem = shard["name"][: -len(".parquet")]
        new_files[stem] = write_shard(docs_loc, stem, conform(table)) if table.num_rows else None
    if not done:
        lease.check()
        apps: dict[str, int] = {}
        inputs = sorted(manifest.get("inputs", {}).items())
        for position, (name, record) in enumerate(inputs, 1):
            if record.get("sha256"):
                apps[input_app(record["sha256"])] = 1
            apps[input_name_app(name)] = position
        if inputs:
            apps[INPUTS_APP] = len(inputs)
        if manifest.get("next_seq"):
            apps[FETCH_APP] = int(manifest["next_seq"])
        docs.table.commit(
            [f for f in new_files.values() if f is not None],
            apps=apps,
            metadata={
                UPGRADED: "biomine-article-shards",
                "inputs": [{"name": n, **r} for n, r in inputs],
                "notes": manifest.get("notes") or {},
            },
        )
    report["documents"] = docs.count()
    live_pmids = {stem: _pmids(output, f) for stem, f in new_files.items() if f is not None}

    # 2. task datasets
    for name in output.root.listdir():
        folder = output.root / name
        if not (folder / LEGACY_COMMITS).is_dir():
            continue
        report["datasets"][name] = _upgrade_dataset(output, name, new_files, live_pmids, lease)

    # 3. the KB and the run record
    if (output.root / LEGACY_KB).is_file():
        from schemas.kb import KB_SCHEMA
        from schemas.kb import SCHEMA_VERSION as KB_VERSION
        from schemas.kb import cast_batch as cast_kb

        kb = Table.open_or_create(output.kb, KB_SCHEMA, "kb", KB_VERSION)
        if not kb.files():
            table = cast_kb((output.root / LEGACY_KB).read_table())
            from pipeline.store.tables import write_data_file

            lease.check()
            kb.commit([write_data_file(output.kb, "kb-upgraded", table)], metadata={UPGRADED: LEGACY_KB})
        report["kb"] = sum(f.rows for f in kb.files().values())
    old_run = output.root / LEGACY_MANIFEST
    if old_run.is_file() and not output.run_events():
        record = old_run.read_json()
        output.record_run(
            record.get("run_id") or uuid.uuid4().hex,
            (record.get("job") or {}).get("name") or "biomine",
            "finished",
            {**record, UPGRADED: LEGACY_MANIFEST},
            seconds=record.get("seconds"),
            versions=output.versions(),
        )

    # 4. the old files, the shard manifest last
    lease.check()
    for folder in [output.root / n for n in output.root.listdir()]:
        commits = folder / LEGACY_COMMITS
        if commits.is_dir():
            for record_name in commits.files(".json"):
                try:
                    record = (commits / record_name).read_json()
                    (folder / record["file"]["name"]).delete()
                except (ValueError, KeyError):
                    pass
                (commits / record_name).delete()
            commits.remove_dir()
    for shard in shards:
        (docs_loc / shard["name"]).delete()
        if shard.get("deletions"):
            (docs_loc / shard["deletions"]).delete()
    (docs_loc / "_lock").delete()
    (docs_loc / LEGACY_DELETED).remove_dir()
    (output.root / LEGACY_KB).delete()
    old_run.delete()
    (docs_loc / LEGACY_MANIFEST).delete()
    log.info("upgraded %s: %s", output.root, json.dumps(report))
    return report


def _deletions(output: JobOutput, shard: dict[str, Any]) -> list[int]:
    if not shard.get("deletions"):
        return []
    return (output.documents / shard["deletions"]).read_table(["pmid"]).column("pmid").to_pylist()


def _pmids(output: JobOutput, info: DataFile) -> pa.Array:
    return (output.documents / info.path).read_table(["pmid"]).column("pmid").combine_chunks()


def _upgrade_dataset(
    output: JobOutput,
    name: str,
    new_files: dict[str, DataFile | None],
    live_pmids: dict[str, pa.Array],
    lease: Lease,
) -> dict[str, Any]:
    """One task dataset's committed outputs as the outputs of the new document files."""
    folder = output.root / name
    commits = folder / LEGACY_COMMITS
    records = []
    for record_name in commits.files(".json"):
        try:
            record = (commits / record_name).read_json()
        except ValueError:
            log.warning("%s is unreadable: its shard is computed again by the next run", commits / record_name)
            continue
        if isinstance(record, dict) and record.get("format") == "biomine-task-output" and "file" in record:
            records.append(record)
    schema = _schema_of(name)
    table = TaskTable(folder, name, schema, int((schema.metadata or {}).get(b"biomine.schema_version", b"1")))
    if any(e.get(UPGRADED) for e in table.table.commit_metadata(limit=20)):
        return {"outputs": len(table.table.files()), "skipped": "already upgraded"}
    adds: list[DataFile] = []
    failures: dict[str, list[dict[str, Any]]] = {}
    settings: dict[str, Any] = {}
    for record in sorted(records, key=lambda r: r["shard"]):
        doc = new_files.get(record["shard"])
        data = folder / record["file"]["name"]
        if doc is None or data.size() != record["file"]["size"]:
            continue  # no live document left, or a damaged output: the next run computes what is needed
        rows = data.read_table()
        if hashlib.sha256(data.read_bytes()).hexdigest() != record["file"]["sha256"]:
            continue
        rows = rows.filter(pc.is_in(rows.column("pmid"), value_set=live_pmids[record["shard"]]))
        rows = _to_schema(rows, schema)
        settings = record.get("settings") or {}
        key = settings_key(settings)
        written = write_output(folder, doc.stem, key, rows, bool(record.get("failures")))
        adds.append(written)
        if record.get("failures"):
            failures[written.path] = record["failures"]
    lease.check()
    table.commit(adds, [], settings=settings, failures=failures)
    table.table.commit([], metadata={UPGRADED: "biomine-task-output"})
    return {"outputs": len(adds), "rows": sum(f.rows for f in adds)}


def _schema_of(dataset: str) -> pa.Schema:
    from schemas.entities import ENTITY_SCHEMA
    from schemas.relations import RELATION_SCHEMA
    from schemas.summaries import SUMMARY_SCHEMA

    schemas = {"entities": ENTITY_SCHEMA, "relations": RELATION_SCHEMA, "summaries": SUMMARY_SCHEMA}
    if dataset not in schemas:
        raise StoreError(f"cannot upgrade dataset {dataset!r}: this biomine knows {', '.join(schemas)}")
    return schemas[dataset]


def _to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``: columns an older version lacks become null."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


__all__ = ["DOCUMENTS", "upgrade"]
