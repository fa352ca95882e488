"""PubMed-scale ingest and updates on the Delta tables: parallel parsing, what a daily update rewrites
and recomputes, driver memory, and the pipeline's CPU cost per document outside the model.

On a generated corpus (a "baseline" of ``--files`` x ``--articles`` realistic MEDLINE records, the
generator of ``bench_parse.py``, plus ``--updates`` update files per mix), in one run:

1. **ingest**: ``biomine ingest`` of the baseline into a fresh output with 1 worker and with
   ``--workers`` (each in its own process, so its peak RSS is the driver's own): articles/s and the
   ratio, the commits, the data files and the size of the documents table's ``_delta_log``. With more
   than one worker the driver only applies and commits; its peak RSS is the bookkeeping, which must
   not grow with the corpus.
2. **updates**: a task stage (:func:`pipeline.run.stages.run_task_stage`, on a local Ray, exactly as
   ``biomine run`` calls it) over the baseline, then each update file ingested through Ray tasks
   (:class:`pipeline.run.cluster.RayPool`, as a job does) followed by the stage again. Per update:
   the documents data files it rewrote copy-on-write (count, bytes, and their share of the live
   files and of the table's bytes), the rows it removed, the articles the stage computed (the goal:
   exactly the update's revised and new articles) and the articles and output rows it copied
   ("derived") from the outputs of the rewritten files, the seconds of each and their share of the
   baseline's, the live files and the ``_delta_log`` size after it.
3. **new baseline**: NCBI's yearly baseline re-issues every citation. On its own copy of the
   ingested baseline, the stage runs over it, then a "new baseline" (``pubmed27n*``: every article of
   the baseline again, the same records, with ``--baseline-changed`` (0.03) of them given a changed
   abstract, or title where a record has no abstract, and ``--baseline-dropped`` (0.01) of them no
   longer in it) is ingested through Ray tasks as a whole new baseline (``new_baseline=True``) and
   the stage runs again. The goal: it computes exactly the changed articles and copies the rows of
   the others (``documents_reused``: their title and abstract, ``content_sha256``, are unchanged);
   the articles it no longer holds are dropped (``dropped``) and their output rows are gone
   (``dropped_output_rows``: before, after).
4. **overhead**: per document, the CPU time of each step the pipeline adds around the model, in one
   process (so per core): read the data file (checked against its checksum, as the stage does),
   tokenise and window it (the real NER ``prepare`` with the real BioGPT vocabulary from
   ``../shared`` when present), pass it to the actor and back as Arrow IPC, sort and cast the rows, serialise
   and write the output file, and commit it (one Delta commit of the task table per file). The model
   is a stand-in that spins ``--token-cost-us`` per token (reported apart): the figure does not
   measure any model. The cores needed to feed one GPU are ``GPU documents/s x overhead``; the table
   shows it for a few GPU rates (assumptions, not measurements: ``bench_ner.py`` on the GPU measures
   the real one).

The update mix (``--mix``, a comma list; each mix gets its own update files, generated from the same
live corpus, and runs on its own copy of the ingested baseline: the 2-worker output, then the
1-worker one, which hold the same bytes):

- ``realistic`` (default): PubMed's daily files mostly revise recent citations (in-process records
  completed, indexing added) with a tail of corrections across the whole range, and delete a few.
  Of each update's revisions and deletions, ``--recent-share`` (0.85) fall among the newest
  ``--recent-range`` (0.10) of the live PMIDs; the rest are drawn from the whole range (which
  includes the newest). Deletions follow the same mix.
- ``uniform``: every revision and deletion drawn uniformly over the whole range (the previous
  version of this benchmark).

Sizes, shares of the baseline's article count, per update: ``--revise`` (0.01) revised,
``--delete`` (0.002) deleted, ``--new`` (0.003) new articles (PMIDs above every earlier one; a
daily file's new citations). The stage must compute exactly ``revised + new`` articles per update
(``changed`` in the JSON).

    python benchmarks/bench_scale.py                         # 40 x 2,500 articles + 5 updates
    python benchmarks/bench_scale.py --mix realistic,uniform --json benchmarks/results/bench_scale.json
    python benchmarks/bench_scale.py --files 4 --articles 500 --updates 2 --overhead-docs 500   # smoke run

Results go to stdout and, with ``--json``, to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_parse import DOCTYPE, generate_article  # noqa: E402

SHARED_VOCAB = REPO.parent / "shared" / "data" / "biogpt-vocab" / "base"
FIRST_PMID = 30_000_000
MIXES = ("realistic", "uniform")


# --- the corpus ---------------------------------------------------------------------------------------
def write_file(path: Path, pmids: list[int], seed: int, deletions: list[int] = ()) -> None:
    rng = random.Random(seed)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(DOCTYPE + "<PubmedArticleSet>\n")
        for pmid in pmids:
            f.write(generate_article(pmid, rng))
        if deletions:
            f.write(
                "<DeleteCitation>" + "".join(f'<PMID Version="1">{p}</PMID>' for p in deletions) + "</DeleteCitation>\n"
            )
        f.write("</PubmedArticleSet>\n")


def choose(rng: random.Random, alive: list[int], k: int, mix: str, recent_share: float, recent_range: float) -> list:
    """``k`` distinct PMIDs of the sorted live ``alive``, in random order: ``uniform`` over the whole
    range, or ``realistic``: ``recent_share`` of them among the newest ``recent_range`` of ``alive``,
    the rest over the whole range."""
    k = min(k, len(alive))
    if mix == "uniform":
        return rng.sample(alive, k)
    newest = alive[len(alive) - max(1, math.ceil(len(alive) * recent_range)) :]
    chosen = rng.sample(newest, min(len(newest), round(k * recent_share)))
    taken = set(chosen)
    chosen += rng.sample([p for p in alive if p not in taken], k - len(chosen))
    rng.shuffle(chosen)
    return chosen


def generate_updates(
    folder: Path, mix: str, first: int, total: int, updates: int, shares: dict, seed: int
) -> list[dict]:
    """``updates`` update files of ``mix`` into ``folder`` (numbered from ``first``) over a baseline of
    ``total`` articles; returns what each holds."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    alive = list(range(FIRST_PMID, FIRST_PMID + total))
    next_pmid = FIRST_PMID + total
    n_rev, n_del, n_new = (int(total * shares[k]) for k in ("revise", "delete", "new"))
    plan = []
    for u in range(updates):
        newest_from = alive[len(alive) - max(1, math.ceil(len(alive) * shares["recent_range"]))]
        chosen = choose(rng, alive, n_rev + n_del, mix, shares["recent_share"], shares["recent_range"])
        revised, deleted = sorted(chosen[:n_rev]), sorted(chosen[n_rev:])
        new = list(range(next_pmid, next_pmid + n_new))
        next_pmid += n_new
        gone = set(deleted)
        alive = [p for p in alive if p not in gone] + new
        name = f"pubmed26n{first + u:04d}.xml.gz"
        write_file(folder / name, revised + new, seed=seed * 1000 + u, deletions=deleted)
        plan.append(
            {
                "file": name,
                "revised": len(revised),
                "new": len(new),
                "deleted": len(deleted),
                "recent": sum(p >= newest_from for p in chosen),
                "recent_from": newest_from,
            }
        )
    return plan


def revise_text(record: str) -> str:
    """``record`` (a generated ``<PubmedArticle>``) with its model input changed: a sentence added to its
    last abstract section, or to its title when it has no abstract."""
    tag = "</AbstractText>" if "</AbstractText>" in record else "</ArticleTitle>"
    at = record.rindex(tag)
    return record[:at] + " Revised in the new baseline." + record[at:]


def write_new_baseline(
    folder: Path, files: int, articles: int, changed: float, dropped: float, seed: int
) -> tuple[int, list[int]]:
    """A new yearly baseline (``pubmed27n*``) into ``folder``: every article of the baseline written by
    :func:`generate` again (the same records: the same seeds), ``changed`` of them with a revised
    abstract, ``dropped`` of them (others) left out. Returns how many were changed, and the PMIDs left
    out."""
    folder.mkdir(parents=True)
    total = files * articles
    rng = random.Random(seed)
    pmids = range(FIRST_PMID, FIRST_PMID + total)
    revised = set(rng.sample(pmids, round(total * changed)))
    gone = set(rng.sample([p for p in pmids if p not in revised], round(total * dropped)))
    for i in range(files):
        article_rng = random.Random(i)  # the seed generate() wrote this file's articles with
        with gzip.open(folder / f"pubmed27n{i + 1:04d}.xml.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            f.write(DOCTYPE + "<PubmedArticleSet>\n")
            for pmid in range(FIRST_PMID + i * articles, FIRST_PMID + (i + 1) * articles):
                record = generate_article(pmid, article_rng)  # (drawn even when left out: the same records)
                if pmid not in gone:
                    f.write(revise_text(record) if pmid in revised else record)
            f.write("</PubmedArticleSet>\n")
    return len(revised), sorted(gone)


def generate(root: Path, files: int, articles: int, updates: int, mixes: list[str], shares: dict) -> dict:
    base = root / "baseline"
    base.mkdir(parents=True)
    total = files * articles
    for i in range(files):
        write_file(
            base / f"pubmed26n{i + 1:04d}.xml.gz",
            list(range(FIRST_PMID + i * articles, FIRST_PMID + (i + 1) * articles)),
            seed=i,
        )
    plans = {
        mix: generate_updates(
            root / f"updates-{mix}", mix, files + 1, total, updates, shares, seed=7 + MIXES.index(mix)
        )
        for mix in mixes
    }
    return {"baseline": base, "updates": {m: root / f"updates-{m}" for m in mixes}, "articles": total, "plans": plans}


def log_bytes(table: Path) -> int:
    """Bytes of a table's ``_delta_log`` folder (commits, checkpoints)."""
    return sum(f.stat().st_size for f in (table / "_delta_log").rglob("*") if f.is_file())


# --- 1. ingest (each measurement in its own process) -------------------------------------------------
def ingest_worker(src: str, out: str, workers: int, shard_rows: int) -> None:
    from pipeline.pubmed.ingest import ingest_files
    from pipeline.store.documents import Documents

    t = time.perf_counter()
    s = ingest_files([src], out, shard_rows=shard_rows, workers=workers, progress=False)
    seconds = time.perf_counter() - t
    files = Documents(Path(out) / "documents", create=False).files()
    print(
        json.dumps(
            {
                "workers": workers,
                "seconds": seconds,
                "records": s.records,
                "articles_per_s": s.records / seconds,
                "commits": s.commits,
                "files": len(files),
                "table_bytes": sum(f.size for f in files.values()),
                "log_bytes": log_bytes(Path(out) / "documents"),
                "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def measure_ingest(src: Path, out: Path, workers: int, shard_rows: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "_ingest", str(src), str(out), str(workers), str(shard_rows)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"ingest with {workers} workers failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the stand-in model -------------------------------------------------------------------------------
def stand_in_class(token_cost_us: float, tokenize: bool):
    """An NER task whose model spins ``token_cost_us`` per token and tags one mention per 40 tokens;
    ``prepare`` is the real NER prepare (tokenise, window) unless ``tokenize`` is False."""
    from pipeline.tasks.ner import NerTask

    class StandInNer(NerTask):
        name = "ner"

        @classmethod
        def prepare(cls, batch, options):
            if tokenize:
                return NerTask.prepare(batch, options)
            from pipeline.tasks.base import documents, prepared

            docs = documents(batch)
            n = docs.num_rows
            columns = {"_text": [""] * n, "_ids": [[0] * 200] * n, "_offsets": [[]] * n, "_windows": [[]] * n}
            return prepared(docs, cls.prepared_schema, columns)

        def __init__(self, options):
            self.model_id = "stand-in"

        def __call__(self, batch):
            out = []
            ids, versions = batch["_ids"].to_pylist(), batch["version"].to_pylist()
            for i, pmid in enumerate(batch["pmid"].to_pylist()):
                tokens = len(ids[i])
                spin(tokens * token_cost_us * 1e-6)
                out.append(
                    [
                        {
                            "pmid": int(pmid),
                            "version": int(versions[i]),
                            "start": 40 * k,
                            "end": 40 * k + 8,
                            "text": "warfarin",
                            "label": "Chemical",
                            "score": 0.9,
                            "model_id": self.model_id,
                        }
                        for k in range(tokens // 40)
                    ]
                )
            return out

    return StandInNer


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def model_dir(root: Path) -> tuple[Path, str]:
    """A directory with a tokenizer and a 1,024-position config (the stand-in loads no weights)."""
    from biogpt.tokenizer import BioGptTokenizer

    path = root / "stand-in"
    path.mkdir()
    if (SHARED_VOCAB / "dict.txt").exists():
        BioGptTokenizer.from_fairseq(SHARED_VOCAB / "dict.txt", SHARED_VOCAB / "bpecodes").save_pretrained(path)
        vocab = "real BioGPT vocabulary (../shared)"
    else:
        from biogpt.tiny import write_vocab

        write_vocab(path, ["warfarin increases the effect of aspirin in patients"] * 4, 50)
        vocab = "a tiny generated vocabulary (../shared absent: tokenisation is cheaper than real)"
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "biogpt",
                "max_position_embeddings": 1024,
                "architectures": ["BioGptForTokenClassification"],
                "id2label": {"0": "O", "1": "B-Chemical", "2": "I-Chemical"},
            }
        )
    )
    return path, vocab


# --- 2. updates through the stage ---------------------------------------------------------------------
def share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def timed_stage(cls, options, output, dataset) -> tuple[dict, object, float]:
    """One run of the stand-in stage over ``output``'s live documents on this process's Ray: the
    documents files it saw, its result and its seconds."""
    from pipeline.run.cluster import Placement
    from pipeline.run.plan import PlannedTask
    from pipeline.run.stages import run_task_stage
    from pipeline.store.documents import Documents

    docs = Documents(output.documents).files()
    t = time.perf_counter()
    r = run_task_stage(
        PlannedTask(cls.name, cls, options), docs, output.documents, dataset, placement=Placement(1, 0), progress=False
    )
    return docs, r, time.perf_counter() - t


def measure_updates(
    plan: list[dict], updates: Path, out: Path, model: Path, shard_rows: int, workers: int, baseline_ingest_s: float
) -> list[dict]:
    """The stage over the baseline in output ``out``, then each update of ``plan`` (files in
    ``updates``) ingested through Ray tasks and the stage again; one row per step."""
    from pipeline.pubmed.ingest import ingest_files
    from pipeline.run.cluster import RayPool
    from pipeline.run.stages import stage_settings
    from pipeline.store.documents import Documents
    from pipeline.store.output import JobOutput
    from pipeline.tasks.options import NerOptions

    cls = stand_in_class(0.0, tokenize=False)  # the counts do not depend on the model's cost
    options = NerOptions(model=str(model), model_sha256="stand-in")
    settings = stage_settings(cls, options)
    output = JobOutput(out)
    dataset = output.dataset(cls.dataset, cls.schema)
    docs_path = out / "documents"
    rows: list[dict] = []
    base_s: list[float] = []  # the baseline's ingest + stage seconds: what "all of it" costs

    def stage(row: dict) -> None:
        docs = Documents(output.documents).files()
        planned = dataset.plan(docs, settings)
        articles_derived = sum(docs[p].rows for p in planned.derive)
        docs, r, stage_s = timed_stage(cls, options, output, dataset)
        live = sum(f.rows for f in docs.values())
        if not base_s:
            base_s.append(baseline_ingest_s + stage_s)
        row.update(
            {
                "documents_computed": r.documents,
                "documents_computed_share": share(r.documents, live),
                "shards_computed": r.shards_done,
                "shards_kept": r.shards_skipped,
                "shards_derived": r.derived,
                "articles_derived": articles_derived,
                "rows_derived": r.derived_rows,
                "stage_commits": r.commits,
                "stage_s": round(stage_s, 2),
                "seconds_share": share((row["ingest_s"] or 0) + stage_s, base_s[0]) if row["ingest_s"] else None,
                "live_articles": live,
                "live_files": len(docs),
                "table_bytes": sum(f.size for f in docs.values()),
                "log_bytes": log_bytes(docs_path),
                "output_log_bytes": log_bytes(out / cls.dataset),
            }
        )
        rows.append(row)

    docs = Documents(output.documents)
    stage({"step": "baseline", "ingest_s": None, "baseline_ingest_s": round(baseline_ingest_s, 2)})
    for p in plan:
        before = docs.table.refresh().files()
        log_before = log_bytes(docs_path)
        t = time.perf_counter()
        s = ingest_files([updates / p["file"]], out, shard_rows=shard_rows, progress=False, pool=RayPool(workers))
        ingest_s = time.perf_counter() - t
        after = docs.table.refresh().files()
        bases = {f.base for f in before.values()}
        replaced = [f for path, f in before.items() if path not in after]  # rewritten, or emptied and dropped
        added = [f for path, f in after.items() if path not in before]
        rewrites = [f for f in added if f.base in bases]
        fresh = [f for f in added if f.base not in bases]
        table_before = sum(f.size for f in before.values())
        assert len(rewrites) == s.rewritten and sum(f.size for f in rewrites) == s.rewritten_bytes, (s, rewrites)
        stage(
            {
                "step": p["file"],
                **{k: p[k] for k in ("revised", "new", "deleted", "recent")},
                "changed": p["revised"] + p["new"],
                "removed": s.tombstoned,
                "ingest_s": round(ingest_s, 2),
                "ingest_commits": s.commits,
                "files_before": len(before),
                "files_rewritten": len(replaced),
                "files_rewritten_share": share(len(replaced), len(before)),
                # of those, files that hold no PMID of the newest range: rewritten for the tail alone
                "files_rewritten_old": sum(f.max_pmid is not None and f.max_pmid < p["recent_from"] for f in replaced),
                "bytes_rewritten": s.rewritten_bytes,
                "bytes_replaced": sum(f.size for f in replaced),
                "bytes_rewritten_share": share(s.rewritten_bytes, table_before),
                "files_added": len(fresh),
                "bytes_added": sum(f.size for f in fresh),
                "log_bytes_added": log_bytes(docs_path) - log_before,
            }
        )
    return rows


def measure_new_baseline(
    src: Path, out: Path, model: Path, shard_rows: int, workers: int, changed: int, dropped: list[int]
) -> dict:
    """The stage over the ingested baseline in ``out``, then the new baseline ``src`` ingested through
    Ray tasks and the stage again: what the new baseline made it compute, copy and drop."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from pipeline.pubmed.ingest import ingest_files
    from pipeline.run.cluster import RayPool
    from pipeline.store.output import JobOutput
    from pipeline.tasks.options import NerOptions

    cls = stand_in_class(0.0, tokenize=False)  # the counts do not depend on the model's cost
    options = NerOptions(model=str(model), model_sha256="stand-in")
    output = JobOutput(out)
    dataset = output.dataset(cls.dataset, cls.schema)

    def stage():
        docs, r, seconds = timed_stage(cls, options, output, dataset)
        return r, seconds, sum(f.rows for f in docs.values())

    def output_rows_of_dropped() -> int:
        pmids = DeltaTable(str(dataset.loc.path)).to_pyarrow_table(columns=["pmid"]).column("pmid")
        return pc.sum(pc.is_in(pmids, value_set=pa.array(dropped, pa.int64()))).as_py() or 0

    first, first_s, _ = stage()
    rows_before = output_rows_of_dropped()
    t = time.perf_counter()
    s = ingest_files([src], out, shard_rows=shard_rows, progress=False, pool=RayPool(workers), new_baseline=True)
    ingest_s = time.perf_counter() - t
    second, stage_s, live = stage()
    return {
        "articles": live,
        "changed": changed,
        "replaced": s.replaced,
        "left_out": len(dropped),
        "dropped": s.dropped,
        "dropped_output_rows": [rows_before, output_rows_of_dropped()],
        "baseline_documents_computed": first.documents,
        "baseline_stage_s": round(first_s, 2),
        "ingest_s": round(ingest_s, 2),
        "documents_computed": second.documents,
        "documents_computed_share": share(second.documents, live),
        "documents_reused": second.reused,
        "shards_computed": second.shards_done,
        "shards_derived": second.derived,
        "stage_s": round(stage_s, 2),
        "stage_s_share": share(stage_s, first_s),
    }


# --- 4. overhead per document, per core ----------------------------------------------------------------
def measure_overhead(documents: Path, root: Path, model: Path, max_docs: int, token_cost_us: float) -> dict:

    from pipeline.run.stages import COLUMNS, _sort_key, from_ipc, read_verified, stage_settings, to_ipc
    from pipeline.store.datasets import settings_key, write_output
    from pipeline.store.documents import Documents
    from pipeline.store.output import JobOutput
    from pipeline.tasks.options import NerOptions

    cls = stand_in_class(token_cost_us, tokenize=True)
    options = NerOptions(model=str(model), model_sha256="stand-in")
    task = cls(options)
    settings = stage_settings(cls, options)
    key = settings_key(settings)
    dataset = JobOutput(root / "overhead").dataset(cls.dataset, cls.schema)
    dataset.table  # noqa: B018  (created outside the timing)
    docs = Documents(documents, create=False)
    times = {k: 0.0 for k in ("read", "tokenise", "ipc", "model", "rows", "write", "commit")}
    n = tokens = 0
    cls.prepare({c: [] for c in COLUMNS}, options)  # tokenizer load
    for path, info in sorted(docs.files().items()):
        if n >= max_docs:
            break
        c = time.process_time()
        table = read_verified(docs.loc / path, info.size, COLUMNS)
        times["read"] += time.process_time() - c
        c = time.process_time()
        prepared = cls.prepare(table, options)
        times["tokenise"] += time.process_time() - c
        c = time.process_time()
        prepared = from_ipc(to_ipc(prepared))  # what travels from a prepare task to the actor
        times["ipc"] += time.process_time() - c
        c = time.perf_counter()
        per_doc = task(prepared)
        times["model"] += time.perf_counter() - c
        c = time.process_time()
        out_rows = [r for d in per_doc for r in d]
        out_rows.sort(key=_sort_key(cls.sort_keys))
        cast = cls.cast_batch(out_rows)
        times["rows"] += time.process_time() - c
        c = time.process_time()
        written = write_output(dataset.loc, info.stem, key, cast)
        times["write"] += time.process_time() - c
        c = time.process_time()
        dataset.commit([written], [], settings=settings)
        times["commit"] += time.process_time() - c
        n += table.num_rows
        tokens += sum(len(ids) for ids in prepared["_ids"].to_pylist())
    per_doc_ms = {k: 1000 * v / n for k, v in times.items()}
    overhead = sum(v for k, v in per_doc_ms.items() if k != "model")
    return {
        "documents": n,
        "files": len(dataset.table.files()),
        "tokens_per_document": tokens / n,
        "ms_per_document": per_doc_ms,
        "overhead_ms_per_document": overhead,
        "documents_per_s_per_core": 1000 / overhead,
    }


# --- main ---------------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_updates(mix: str, rows: list[dict]) -> None:
    print(f"\nupdates, {mix} mix (stand-in NER stage on a local Ray after each)")
    print(
        f"{'step':<22} {'rev':>5} {'new':>5} {'del':>5} {'removed':>7} {'files rewritten':>16} {'MB rewritten':>14} "
        f"{'computed':>15} {'derived':>7} {'rows copied':>11} {'ingest s':>8} {'stage s':>7} {'time':>6} "
        f"{'files':>5} {'log KB':>7}"
    )
    for r in rows:
        if r["step"] == "baseline":
            files, mb, removed = "-", "-", "-"
        else:
            files = f"{r['files_rewritten']}/{r['files_before']} {pct(r['files_rewritten_share'])}"
            mb = f"{r['bytes_rewritten'] / 1e6:.1f} {pct(r['bytes_rewritten_share'])}"
            removed = r["removed"]
        computed = f"{r['documents_computed']} {pct(r['documents_computed_share'])}"
        print(
            f"{r['step']:<22} {r.get('revised', '-'):>5} {r.get('new', '-'):>5} {r.get('deleted', '-'):>5} "
            f"{removed:>7} {files:>16} {mb:>14} {computed:>15} {r['articles_derived']:>7} {r['rows_derived']:>11} "
            f"{r['ingest_s'] or r['baseline_ingest_s']:>8} {r['stage_s']:>7} {pct(r['seconds_share']):>6} "
            f"{r['live_files']:>5} {r['log_bytes'] / 1024:>7.1f}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40, help="baseline files (default 40)")
    p.add_argument("--articles", type=int, default=2500, help="articles per baseline file (default 2500)")
    p.add_argument("--updates", type=int, default=5, help="update files per mix (default 5)")
    p.add_argument(
        "--mix",
        default="realistic",
        help="update mixes, a comma list of realistic (most changes among recent PMIDs) and uniform (default realistic)",
    )
    p.add_argument("--revise", type=float, default=0.01, help="share of the baseline each update revises (0.01)")
    p.add_argument("--delete", type=float, default=0.002, help="share of the baseline each update deletes (0.002)")
    p.add_argument("--new", type=float, default=0.003, help="share of the baseline each update adds as new (0.003)")
    p.add_argument(
        "--recent-share",
        type=float,
        default=0.85,
        help="realistic mix: share of the revisions and deletions among the newest PMIDs (0.85)",
    )
    p.add_argument(
        "--recent-range",
        type=float,
        default=0.10,
        help="realistic mix: the newest PMIDs, as a share of the live PMIDs (0.10)",
    )
    p.add_argument(
        "--baseline-changed",
        type=float,
        default=0.03,
        help="new baseline: share of the articles whose abstract it changes (0.03; 0 skips the case)",
    )
    p.add_argument(
        "--baseline-dropped",
        type=float,
        default=0.01,
        help="new baseline: share of the articles it no longer holds (0.01): dropped from the corpus",
    )
    p.add_argument("--workers", type=int, default=2, help="parallel workers to compare with 1 (default 2)")
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per document data file (default 10000)")
    p.add_argument("--overhead-docs", type=int, default=5000, help="documents for the overhead figure (5000)")
    p.add_argument("--token-cost-us", type=float, default=0.0, help="the stand-in model's cost per token, in µs (0)")
    p.add_argument("--gpu-rates", default="200,1000,5000", help="GPU documents/s to size the CPU side for")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the generated corpus and outputs (path printed)")
    args = p.parse_args(argv)
    mixes = [m.strip() for m in args.mix.split(",") if m.strip()]
    if not mixes or any(m not in MIXES for m in mixes) or len(set(mixes)) != len(mixes):
        p.error(f"--mix: a comma list of distinct {', '.join(MIXES)}")
    if not (0 <= args.recent_share <= 1 and 0 < args.recent_range <= 1):
        p.error("--recent-share must be in [0, 1] and --recent-range in (0, 1]")

    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict = {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "design": "delta-copy-on-write",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        t = time.perf_counter()
        shares = {k: getattr(args, k) for k in ("revise", "delete", "new", "recent_share", "recent_range")}
        corpus = generate(root / "src", args.files, args.articles, args.updates, mixes, shares)
        if args.baseline_changed > 0:
            corpus["new_baseline_changed"], corpus["new_baseline_dropped"] = write_new_baseline(
                root / "src" / "new-baseline",
                args.files,
                args.articles,
                args.baseline_changed,
                args.baseline_dropped,
                seed=11,
            )
        size = sum(f.stat().st_size for f in (root / "src").rglob("*.gz"))
        print(
            f"generated {args.files} x {args.articles} articles + {args.updates} updates x {len(mixes)} mixes "
            f"({size / 1e6:.0f} MB gzipped) in {time.perf_counter() - t:.0f} s",
            flush=True,
        )

        outs = {w: root / f"out-{w}" for w in (1, args.workers)}
        ingest = [measure_ingest(corpus["baseline"], outs[w], w, args.shard_rows) for w in (1, args.workers)]
        results["ingest"] = ingest
        ratio = ingest[1]["articles_per_s"] / ingest[0]["articles_per_s"]
        results["ingest_ratio"] = ratio
        print("\ningest of the baseline")
        print(
            f"{'workers':>8} {'seconds':>8} {'articles/s':>11} {'commits':>8} {'files':>6} {'table MB':>9} "
            f"{'log KB':>7} {'driver peak RSS MB':>19}"
        )
        for r in ingest:
            print(
                f"{r['workers']:>8} {r['seconds']:>8.1f} {r['articles_per_s']:>11.0f} {r['commits']:>8} {r['files']:>6} "
                f"{r['table_bytes'] / 1e6:>9.1f} {r['log_bytes'] / 1024:>7.1f} {r['driver_peak_rss_mb']:>19.0f}"
            )
        print(f"ratio {args.workers} workers / 1 worker: {ratio:.2f}x", flush=True)

        import ray

        from pipeline.run.cluster import init_ray

        model, vocab = model_dir(root)
        # each mix on its own ingested baseline (the two ingests wrote the same bytes)
        targets = [outs[args.workers], outs[1]] if args.workers != 1 else [outs[1]]
        for mix in mixes[len(targets) :]:  # --workers 1: one ingested baseline, copied before any update
            targets.append(root / f"out-{mix}")
            shutil.copytree(targets[0], targets[-1])
        if args.baseline_changed > 0:  # its own copy of the ingested baseline, before any update
            shutil.copytree(targets[0], root / "out-new-baseline")
        results["updates_by_mix"] = {}
        init_ray(None, num_cpus=args.workers)
        try:
            if args.baseline_changed > 0:
                nb = measure_new_baseline(
                    root / "src" / "new-baseline",
                    root / "out-new-baseline",
                    model,
                    args.shard_rows,
                    args.workers,
                    corpus["new_baseline_changed"],
                    corpus["new_baseline_dropped"],
                )
                results["new_baseline"] = nb
                print(
                    f"\nnew baseline (every article re-issued but {nb['left_out']}, {nb['changed']} with a changed "
                    f"abstract): {nb['replaced']} replaced, {nb['dropped']} dropped (their output rows: "
                    f"{nb['dropped_output_rows'][0]} before, {nb['dropped_output_rows'][1]} after); the stage "
                    f"computed {nb['documents_computed']} of {nb['articles']} "
                    f"({pct(nb['documents_computed_share'])}) and copied {nb['documents_reused']} "
                    f"in {nb['stage_s']} s ({pct(nb['stage_s_share'])} of the baseline's {nb['baseline_stage_s']} s)",
                    flush=True,
                )
            for mix, out in zip(mixes, targets):
                rows = measure_updates(
                    corpus["plans"][mix],
                    corpus["updates"][mix],
                    out,
                    model,
                    args.shard_rows,
                    args.workers,
                    ingest[1]["seconds"],
                )
                for r in rows:
                    r["mix"] = mix
                results["updates_by_mix"][mix] = rows
                print_updates(mix, rows)
        finally:
            ray.shutdown()
        results["updates"] = results["updates_by_mix"][mixes[0]]

        overhead = measure_overhead(
            outs[args.workers] / "documents", root, model, args.overhead_docs, args.token_cost_us
        )
        overhead["vocabulary"] = vocab
        results["overhead"] = overhead
        print(
            f"\npipeline CPU per document outside the model ({overhead['documents']} documents, "
            f"{overhead['tokens_per_document']:.0f} tokens each, {vocab}), one core:"
        )
        for k, v in overhead["ms_per_document"].items():
            label = f"{k} (stand-in model, {args.token_cost_us} µs/token: not overhead)" if k == "model" else k
            print(f"  {label:<48} {v:8.3f} ms")
        print(
            f"  {'overhead':<48} {overhead['overhead_ms_per_document']:8.3f} ms  "
            f"= {overhead['documents_per_s_per_core']:.0f} documents/s per core"
        )
        sizing = {int(r): int(r) * overhead["overhead_ms_per_document"] / 1000 for r in args.gpu_rates.split(",")}
        results["cores_per_gpu"] = sizing
        print(
            "cores to feed one GPU (GPU rates assumed, not measured): "
            + ", ".join(f"{r} docs/s -> {c:.1f} cores" for r, c in sizing.items())
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
            print(f"\nwrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_ingest":
        ingest_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
