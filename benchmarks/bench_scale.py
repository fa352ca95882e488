"""PubMed-scale ingest and updates: parallel parsing, what a daily update recomputes, driver memory,
and the pipeline's CPU cost per document outside the model.

On a generated corpus (a "baseline" of ``--files`` x ``--articles`` realistic MEDLINE records, the
generator of ``bench_parse.py``, plus ``--updates`` update files that each revise ``--revise`` of all
articles, spread over the whole PMID range, and delete ``--delete``), in one run:

1. **ingest**: ``biomine ingest`` of the baseline into a fresh directory with 1 worker and with
   ``--workers`` (each in its own process, so its peak RSS is the driver's own): articles/s and the
   ratio. With more than one worker the driver only applies and commits; its peak RSS is the
   bookkeeping, which must not grow with the corpus.
2. **updates**: a task stage (:func:`pipeline.run.stages.run_task_stage`, on a local Ray, exactly as
   ``biomine run`` calls it) over the baseline, then each update file ingested through Ray tasks
   (:class:`pipeline.run.cluster.RayPool`) followed by the stage again: the documents each update makes
   the stage compute (the goal: the revised articles, not the corpus), and the rows tombstoned.
3. **overhead**: per document, the CPU time of each step the pipeline adds around the model, in one
   process (so per core): read the shard, tokenise and window it (the real NER ``prepare`` with the
   real BioGPT vocabulary from ``../shared`` when present), pickle it to the actor and back, sort and
   cast the rows, serialise and write the Parquet file, and commit it. The model is a stand-in that
   spins ``--token-cost-us`` per token (reported apart): the figure does not measure any model. The
   cores needed to feed one GPU are ``GPU documents/s x overhead``; the table shows it for a few GPU
   rates (assumptions, not measurements: ``bench_ner.py`` on the GPU measures the real one).

    python benchmarks/bench_scale.py                         # 40 x 2,500 articles + 5 updates (~10 min, 2 cores)
    python benchmarks/bench_scale.py --files 4 --articles 500 --updates 2 --overhead-docs 500   # smoke run
    python benchmarks/bench_scale.py --json benchmarks/results/bench_scale.json

Results go to stdout and, with ``--json``, to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import pickle
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


def generate(root: Path, files: int, articles: int, updates: int, revise: float, delete: float) -> dict:
    base, upd = root / "baseline", root / "updates"
    base.mkdir(parents=True)
    upd.mkdir()
    total = files * articles
    for i in range(files):
        write_file(
            base / f"pubmed26n{i + 1:04d}.xml.gz",
            list(range(FIRST_PMID + i * articles, FIRST_PMID + (i + 1) * articles)),
            seed=i,
        )
    rng = random.Random(7)
    alive = list(range(FIRST_PMID, FIRST_PMID + total))
    plan = []
    for u in range(updates):
        chosen = rng.sample(alive, int(total * revise) + int(total * delete))
        revised, deleted = sorted(chosen[: int(total * revise)]), sorted(chosen[int(total * revise) :])
        alive = sorted(set(alive) - set(deleted))
        write_file(upd / f"pubmed26n{files + u + 1:04d}.xml.gz", revised, seed=1000 + u, deletions=deleted)
        plan.append({"file": f"pubmed26n{files + u + 1:04d}.xml.gz", "revised": len(revised), "deleted": len(deleted)})
    return {"baseline": base, "updates": upd, "articles": total, "plan": plan}


# --- 1. ingest (each measurement in its own process) -------------------------------------------------
def ingest_worker(src: str, out: str, workers: int, shard_rows: int) -> None:
    from pipeline.pubmed.ingest import ingest_files

    t = time.perf_counter()
    s = ingest_files([src], out, shard_rows=shard_rows, workers=workers, progress=False)
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {
                "workers": workers,
                "seconds": seconds,
                "records": s.records,
                "articles_per_s": s.records / seconds,
                "commits": s.commits,
                "manifest_bytes_written": s.manifest_bytes,
                "manifest_bytes": os.path.getsize(os.path.join(out, "_manifest.json")),
                "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def measure_ingest(src: Path, out: Path, workers: int, shard_rows: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "_ingest", str(src), str(out), str(workers), str(shard_rows)],
        capture_output=True,
        text=True,
        check=True,
    )
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
            return dict(batch, _ner=[{"ids": [0] * 200} for _ in batch["pmid"]])

        def __init__(self, options):
            self.model_id = "stand-in"

        def __call__(self, batch):
            out = []
            for i, pmid in enumerate(batch["pmid"]):
                tokens = len(batch["_ner"][i]["ids"])
                spin(tokens * token_cost_us * 1e-6)
                out.append(
                    [
                        {
                            "pmid": int(pmid),
                            "version": int(batch["version"][i]),
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
def measure_updates(corpus: dict, docs: Path, root: Path, model: Path, shard_rows: int, workers: int) -> list[dict]:
    import ray

    from pipeline.pubmed.ingest import ingest_files
    from pipeline.run.cluster import Placement, RayPool, init_ray
    from pipeline.run.plan import PlannedTask
    from pipeline.run.stages import run_task_stage
    from pipeline.store.datasets import TaskDataset
    from pipeline.store.shards import committed_shards
    from pipeline.store.storage import location
    from pipeline.tasks.options import NerOptions

    init_ray(None, num_cpus=workers)
    cls = stand_in_class(0.0, tokenize=False)  # the count does not depend on the model's cost
    options = NerOptions(model=str(model), model_sha256="stand-in")
    out = root / "entities"
    rows = []

    def stage(label: str, ingest_s: float | None, plan: dict | None, tombstoned: int | None) -> None:
        shards = committed_shards(docs)
        t = time.perf_counter()
        r = run_task_stage(
            PlannedTask(cls.name, cls, options),
            [docs / s.name for s in shards],
            TaskDataset(location(out)),
            placement=Placement(1, 0),
            inputs={s.stem: s.identity() for s in shards},
            progress=False,
        )
        rows.append(
            {
                "step": label,
                "ingest_s": ingest_s,
                "revised": plan and plan["revised"],
                "deleted": plan and plan["deleted"],
                "tombstoned": tombstoned,
                "documents_computed": r.documents,
                "shards_computed": r.shards_done,
                "shards_kept": r.shards_skipped,
                "stage_s": round(time.perf_counter() - t, 2),
                "live_articles": sum(s.live for s in shards),
            }
        )

    stage("baseline", None, None, None)
    for plan in corpus["plan"]:
        t = time.perf_counter()
        s = ingest_files(
            [corpus["updates"] / plan["file"]], docs, shard_rows=shard_rows, progress=False, pool=RayPool(workers)
        )
        stage(plan["file"], round(time.perf_counter() - t, 2), plan, s.tombstoned)
    ray.shutdown()
    return rows


# --- 3. overhead per document, per core ----------------------------------------------------------------
def measure_overhead(docs: Path, root: Path, model: Path, max_docs: int, token_cost_us: float) -> dict:
    import pyarrow as pa

    from pipeline.run.stages import COLUMNS, _sort_key, write_shard_output
    from pipeline.store.datasets import ShardOutput, TaskDataset, fingerprint
    from pipeline.store.shards import committed_shards
    from pipeline.store.storage import location
    from pipeline.tasks.options import NerOptions

    cls = stand_in_class(token_cost_us, tokenize=True)
    options = NerOptions(model=str(model), model_sha256="stand-in")
    task = cls(options)
    dataset = TaskDataset(location(root / "overhead"))
    times = {k: 0.0 for k in ("read", "tokenise", "pickle", "model", "rows", "write", "commit")}
    n = tokens = 0
    cls.prepare({c: pa.array([]).to_numpy(zero_copy_only=False) for c in COLUMNS}, options)  # tokenizer load
    for shard in committed_shards(docs):
        if n >= max_docs:
            break
        loc = location(docs) / shard.name
        c = time.process_time()
        table = loc.read_table(COLUMNS)
        batch = {col: table.column(col).to_numpy(zero_copy_only=False) for col in COLUMNS}
        times["read"] += time.process_time() - c
        c = time.process_time()
        prepared = cls.prepare(batch, options)
        times["tokenise"] += time.process_time() - c
        c = time.process_time()
        prepared = pickle.loads(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
        times["pickle"] += time.process_time() - c
        c = time.perf_counter()
        per_doc = task(prepared)
        times["model"] += time.perf_counter() - c
        c = time.process_time()
        out_rows = [r for d in per_doc for r in d]
        out_rows.sort(key=_sort_key(cls.sort_keys))
        cast = cls.cast_batch(out_rows)
        times["rows"] += time.process_time() - c
        c = time.process_time()
        written = write_shard_output(dataset.loc, shard.stem, cast)
        times["write"] += time.process_time() - c
        c = time.process_time()
        settings = {"task": "ner", **options.settings()}
        dataset.commit(
            ShardOutput(shard.stem, written, table.num_rows),
            task="ner",
            expected=fingerprint(shard.identity(), settings),
            input_shard=shard.identity(),
            settings=settings,
        )
        times["commit"] += time.process_time() - c
        n += table.num_rows
        tokens += sum(len(d["ids"]) for d in prepared["_ner"])
    per_doc_ms = {k: 1000 * v / n for k, v in times.items()}
    overhead = sum(v for k, v in per_doc_ms.items() if k != "model")
    return {
        "documents": n,
        "tokens_per_document": tokens / n,
        "ms_per_document": per_doc_ms,
        "overhead_ms_per_document": overhead,
        "documents_per_s_per_core": 1000 / overhead,
    }


# --- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40, help="baseline files (default 40)")
    p.add_argument("--articles", type=int, default=2500, help="articles per baseline file (default 2500)")
    p.add_argument("--updates", type=int, default=5, help="update files (default 5)")
    p.add_argument("--revise", type=float, default=0.01, help="share of all articles each update revises (0.01)")
    p.add_argument("--delete", type=float, default=0.002, help="share of all articles each update deletes (0.002)")
    p.add_argument("--workers", type=int, default=2, help="parallel workers to compare with 1 (default 2)")
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per document shard (default 10000)")
    p.add_argument("--overhead-docs", type=int, default=5000, help="documents for the overhead figure (5000)")
    p.add_argument("--token-cost-us", type=float, default=0.0, help="the stand-in model's cost per token, in µs (0)")
    p.add_argument("--gpu-rates", default="200,1000,5000", help="GPU documents/s to size the CPU side for")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the generated corpus and outputs (path printed)")
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict = {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        t = time.perf_counter()
        corpus = generate(root / "src", args.files, args.articles, args.updates, args.revise, args.delete)
        size = sum(f.stat().st_size for f in (root / "src").rglob("*.gz"))
        print(
            f"generated {args.files} x {args.articles} articles + {args.updates} updates "
            f"({size / 1e6:.0f} MB gzipped) in {time.perf_counter() - t:.0f} s",
            flush=True,
        )

        ingest = [measure_ingest(corpus["baseline"], root / f"docs-{w}", w, args.shard_rows) for w in (1, args.workers)]
        results["ingest"] = ingest
        ratio = ingest[1]["articles_per_s"] / ingest[0]["articles_per_s"]
        results["ingest_ratio"] = ratio
        print("\ningest of the baseline")
        print(
            f"{'workers':>8} {'seconds':>8} {'articles/s':>11} {'commits':>8} {'manifest KB':>12} {'driver peak RSS MB':>19}"
        )
        for r in ingest:
            print(
                f"{r['workers']:>8} {r['seconds']:>8.1f} {r['articles_per_s']:>11.0f} {r['commits']:>8} "
                f"{r['manifest_bytes'] / 1024:>12.1f} {r['driver_peak_rss_mb']:>19.0f}"
            )
        print(f"ratio {args.workers} workers / 1 worker: {ratio:.2f}x", flush=True)

        model, vocab = model_dir(root)
        docs = root / f"docs-{args.workers}"
        updates = measure_updates(corpus, docs, root, model, args.shard_rows, args.workers)
        results["updates"] = updates
        print("\nupdates (stand-in NER stage on a local Ray after each)")
        print(
            f"{'step':<22} {'revised':>8} {'deleted':>8} {'tombstoned':>11} {'ingest s':>9} {'computed docs':>14} "
            f"{'shards computed':>16} {'kept':>5} {'stage s':>8}"
        )
        for r in updates:
            print(
                f"{r['step']:<22} {r['revised'] or '-':>8} {r['deleted'] or '-':>8} {r['tombstoned'] or '-':>11} "
                f"{r['ingest_s'] or '-':>9} {r['documents_computed']:>14} {r['shards_computed']:>16} "
                f"{r['shards_kept']:>5} {r['stage_s']:>8}"
            )

        overhead = measure_overhead(docs, root, model, args.overhead_docs, args.token_cost_us)
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
