"""Pipeline throughput: abstracts/s per task end to end on Ray, against the task's own model speed.

For each task (NER, RE, summaries) on the same synthetic abstracts and the same random weights:

  engine     the task class in this process: ``prepare`` once (untimed), then ``__call__`` on each
             shard, as the pipeline's actor calls it (timed; the model alone, what the GPU can do)
  pipeline   :func:`pipeline.run.stages.run_task_stage` on a local Ray: read the document shards,
             ``prepare`` in CPU tasks, the model in a one-GPU actor, write one Parquet file per shard
             (timed from the call to the last file; the actor's start and model load included, as
             in a real run)
  steady     the marginal rate of the pipeline: it runs once over half the shards and once over all
             of them; (all - half documents) / (all - half seconds) cancels what a job pays once

and reports abstracts/s of each, the ratios to the engine (the issue's target: >= 0.8) and, on a
GPU, its busy fraction during the pipeline run (``nvidia-smi`` utilisation sampled every 100 ms).
Random weights never emit EOS, so RE and summaries generate exactly ``--re-new`` / ``--sum-new``
tokens per abstract: set them to the output lengths you expect (BioGPT's RE outputs on DDI are
~20-60 tokens). Models are BioGPT-base sized (24 x 1024, vocabulary padded to 42,384) unless
``--quick``.

    python benchmarks/bench_pipeline.py                  # GPU: 2,048 abstracts, bf16
    python benchmarks/bench_pipeline.py --quick          # tiny models on CPU: a smoke run (~1 min)
    python benchmarks/bench_pipeline.py --tasks re --docs 4096 --batch-size 128 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBMED_ABSTRACTS = 36_000_000
WORDS = (
    "warfarin aspirin ketoconazole midazolam fluconazole cyp3a4 cyp2c9 plasma concentration increased "
    "decreased patients bleeding risk clearance inhibitor inducer interaction dose adjustment trial "
    "randomized placebo renal hepatic toxicity nephrotoxicity cisplatin magnesium exposure pharmacokinetics "
    "significantly administration combined therapy effect receptor binding affinity outcome cohort"
).split()


def synthetic_abstract(rng: random.Random, n_words: int) -> str:
    sentences, words = [], []
    for _ in range(n_words):
        words.append(rng.choice(WORDS))
        if len(words) >= rng.randint(12, 24):
            sentences.append(" ".join(words).capitalize() + ".")
            words = []
    if words:
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_shards(root: Path, docs: int, shard_size: int, words: tuple[int, int], seed: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, docs, shard_size):
        rows = [
            dict(
                pmid=10_000_000 + i,
                version=1,
                title=synthetic_abstract(rng, rng.randint(8, 20)),
                abstract=synthetic_abstract(rng, rng.randint(*words)),
            )
            for i in range(start, min(docs, start + shard_size))
        ]
        path = root / f"part-{len(shards):06d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        shards.append(path)
    return shards


def build_models(root: Path, texts: list[str], sizes: dict) -> dict[str, Path]:
    from biogpt.model import BioGptForTokenClassification
    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.tasks.ner_spans import label_list

    corpus = texts + [t.lower() for t in texts]
    labels = label_list(["Chemical", "Disease", "Gene"], "BIO")
    return {
        "ner": make_tiny_checkpoint(
            root / "ner", corpus, model_cls=BioGptForTokenClassification, id2label=dict(enumerate(labels)), **sizes
        ),
        "re": make_tiny_task_checkpoint(root / "re-ddi", corpus, task="re-ddi", **sizes),
        "summarize": make_tiny_checkpoint(root / "lm", corpus, **sizes),
    }


class GpuSampler:
    """``nvidia-smi`` utilisation.gpu every 100 ms in a background thread (None without a GPU)."""

    def __init__(self):
        self.samples: list[float] = []
        self._proc = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                    "-i",
                    "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    @property
    def busy(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


def engine_speed(cls, options, shards: list[Path], sync) -> tuple[float, int]:
    """Seconds for the model alone and the rows it produced: ``__call__`` on each prepared shard, as
    the pipeline's actor calls it (the task batches a shard by ``batch_size`` itself)."""
    import pyarrow.parquet as pq

    from pipeline.run.stages import COLUMNS

    prepared = []
    for shard in shards:
        table = pq.read_table(shard, columns=COLUMNS)
        prepared.append(cls.prepare(table, options))
    task = cls(options)
    task(prepared[0].slice(0, options.batch_size))  # warm-up: kernels, graphs, allocator
    sync()
    start = time.perf_counter()
    rows = sum(len(r) for docs in prepared for r in task(docs))
    sync()
    seconds = time.perf_counter() - start
    del task
    return seconds, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, 48 abstracts: a CPU smoke run")
    p.add_argument("--tasks", default="ner,re,summarize", help="comma-separated subset")
    p.add_argument("--docs", type=int, help="abstracts (default 2048, --quick 48)")
    p.add_argument("--shard-size", type=int, help="abstracts per document shard (default 256, --quick 12)")
    p.add_argument("--batch-size", type=int, help="documents per model batch (default 64, --quick 8)")
    p.add_argument("--words", default="150,300", help="abstract length range in words (default 150,300)")
    p.add_argument("--re-new", type=int, help="RE tokens generated per abstract (default 48, --quick 8)")
    p.add_argument("--sum-new", type=int, help="summary tokens per abstract (default 48, --quick 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results as JSON")
    args = p.parse_args(argv)

    import torch

    from biogpt.config import BIOGPT_BASE
    from pipeline.run.cluster import Placement, init_ray
    from pipeline.run.plan import PlannedTask
    from pipeline.run.stages import run_task_stage
    from pipeline.store.datasets import TaskDataset
    from pipeline.store.storage import location
    from pipeline.tasks.registry import task_class

    quick = args.quick
    docs = args.docs or (48 if quick else 2048)
    shard_size = args.shard_size or (12 if quick else 256)
    batch_size = args.batch_size or (8 if quick else 64)
    re_new, sum_new = args.re_new or (8 if quick else 48), args.sum_new or (8 if quick else 48)
    words = tuple(int(x) for x in args.words.split(","))
    if quick:
        words = (30, 60) if args.words == "150,300" else words
        sizes = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=256,
        )
    else:
        sizes = {k: v for k, v in BIOGPT_BASE.items()}
    on_gpu = torch.cuda.is_available()

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp / "documents", docs, shard_size, words, args.seed)
        import pyarrow.parquet as pq

        texts = [t for s in shards[:2] for r in pq.read_table(s).to_pylist() for t in (r["title"], r["abstract"])]
        t0 = time.perf_counter()
        models = build_models(tmp / "models", texts, sizes)
        print(f"models written in {time.perf_counter() - t0:.0f} s ({sizes})", file=sys.stderr)
        init_ray(num_cpus=None)
        for name in args.tasks.split(","):
            cls = task_class(name)
            extra = {
                "re": dict(task="ddi", max_new_tokens=re_new),
                "summarize": dict(prompt="{title} {abstract} In summary,", prompt_id="bench", max_new_tokens=sum_new),
            }.get(name, {})
            options = cls.Options(model=str(models[name]), dtype="auto", batch_size=batch_size, **extra)
            eng_s, eng_rows = engine_speed(cls, options, shards, sync)
            if on_gpu:
                torch.cuda.empty_cache()
            # Twice: over half the shards, then over all of them (fresh outputs). The difference is the
            # marginal (steady-state) rate, free of what a job pays once: actor start, model load,
            # Ray Data start-up, the first CUDA-graph captures.
            half = shards[: max(1, len(shards) // 2)]
            half_docs = sum(pq.read_metadata(s_).num_rows for s_ in half)
            runs = {}
            with GpuSampler() as gpu:
                for label, subset in (("half", half), ("all", shards)):
                    start = time.perf_counter()
                    result = run_task_stage(
                        PlannedTask(cls.name, cls, options),
                        subset,
                        TaskDataset(location(tmp / "out" / f"{name}-{label}")),
                        placement=Placement(1, 1.0 if on_gpu else 0.0),
                        progress=False,
                    )
                    runs[label] = time.perf_counter() - start
            pipe_s = runs["all"]
            steady = (
                (docs - half_docs) / (runs["all"] - runs["half"])
                if runs["all"] > runs["half"] and len(half) < len(shards)
                else None
            )
            assert result.documents == docs and not result.failures, (result.documents, result.failures[:3])
            row = {
                "task": name,
                "docs": docs,
                "engine_abstracts_per_s": docs / eng_s,
                "pipeline_abstracts_per_s": docs / pipe_s,
                "ratio": eng_s / pipe_s,
                "gpu_busy": gpu.busy,
                "steady_abstracts_per_s": steady,
                "steady_ratio": steady * eng_s / docs if steady else None,
                "pipeline_seconds": pipe_s,
                "engine_seconds": eng_s,
                "engine_rows": eng_rows,
                "pipeline_rows": result.rows,
                "gpu_hours_36M": PUBMED_ABSTRACTS / (steady or docs / pipe_s) / 3600,
            }
            rows_out.append(row)
            print(
                f"{name}: engine {row['engine_abstracts_per_s']:.1f}/s, pipeline {row['pipeline_abstracts_per_s']:.1f}/s",
                file=sys.stderr,
            )

    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    print(
        f"\n{device}, torch {torch.__version__}, {datetime.date.today()}, {docs} abstracts of {words[0]}-{words[1]} "
        f"words, batch {batch_size}, RE {re_new} / summary {sum_new} new tokens, {'tiny' if quick else 'BioGPT-base'} sizes"
    )
    header = (
        f"{'task':<10} {'engine abs/s':>12} {'pipeline abs/s':>14} {'ratio':>6} {'steady abs/s':>12} "
        f"{'ratio':>6} {'GPU busy':>8} {'device-h 36M':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows_out:
        busy = f"{r['gpu_busy']:.0%}" if r["gpu_busy"] is not None else "n/a"
        steady = (
            f"{r['steady_abstracts_per_s']:>12.1f} {r['steady_ratio']:>6.2f}"
            if r["steady_abstracts_per_s"]
            else f"{'n/a':>12} {'':>6}"
        )
        print(
            f"{r['task']:<10} {r['engine_abstracts_per_s']:>12.1f} {r['pipeline_abstracts_per_s']:>14.1f} "
            f"{r['ratio']:>6.2f} {steady} {busy:>8} {r['gpu_hours_36M']:>12.0f}"
        )
    print(
        "ratio = pipeline / engine abstracts/s (target >= 0.8); steady = marginal rate between a run over half "
        "the shards and one over all (start-up excluded); device-h 36M from the steady rate"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": device, "torch": torch.__version__, "rows": rows_out}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
