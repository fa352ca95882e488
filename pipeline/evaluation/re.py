"""Relation-extraction benchmark evaluation (``biomine eval re``): :func:`evaluate_re`, :func:`format_re_report`.

Contract:

- :func:`evaluate_re` runs a checkpoint over a BioGPT benchmark file (``{split}.json`` of DDI, KD-DTI
  or BC5CDR, :func:`pipeline.evaluation.re_data.read_re_json`) through the decoding of the ``re`` task
  (:class:`pipeline.tasks.re.RelationTask`) and scores it with
  :func:`pipeline.evaluation.re_scoring.score_generations`; :func:`format_re_report` prints the
  result. ``biomine eval re`` calls both.
- :func:`has_gold`: which benchmark records the original protocol scores.

:raises BioMineError: from :func:`evaluate_re` for unreadable data (``DataFormatError``), an unknown
    task or a bad ``limit`` (``ConfigError``), nothing to score (``EvaluationError``), a checkpoint of
    another kind (``RelationModelError``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from biogpt.errors import ConfigError
from biogpt.task_spec import RE_TASKS
from pipeline.errors import EvaluationError
from pipeline.tasks import base
from pipeline.tasks.options import RelationOptions
from pipeline.tasks.re import RelationTask
from pipeline.tasks.re_format import build_source, prompt_input

from .re_data import read_re_json, split_entity_map
from .re_scoring import CIDReport, score_generations

log = logging.getLogger(__name__)


def has_gold(task: str, record: Mapping[str, Any]) -> bool:
    """Whether a benchmark record has gold relations (the original data preparation drops those
    that have none: ``../shared/docs/biogpt-reference-spec.md``, fine-tuning data)."""
    return bool(record.get("relations") if task == "bc5cdr" else record.get("triples"))


def evaluate_re(
    task: str,
    data: str | Path,
    model_dir: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = "float32",
    limit: int | None = None,
    predictions_out: str | Path | None = None,
    include_empty: bool = False,
) -> dict[str, Any]:
    """Generate with ``model_dir`` for every record of the benchmark file ``data`` and score it.

    The defaults are the original protocol (BioGPT's ``inference.py`` and data preparation):
    greedy decoding up to the position limit (``max_new_tokens`` None: each prompt may generate
    until ``L - prompt length``; a cap such as 256 is faster and loses the longest targets), in
    float32 (``dtype``; ``auto`` takes bfloat16 on a GPU), and records without gold relations left
    out (``include_empty`` scores them too). The report's ``protocol`` says which ran.

    ``data`` is a BioGPT ``{split}.json`` of ``task`` (``re_data.read_re_json``); each record's input
    is built exactly as the fine-tuning data (``re_format.build_source``, then the prompt) and decoded
    as :class:`RelationTask` decodes. ``limit`` keeps the first N records (gold included: the others
    are not scored, and the run is not the original protocol; BC5CDR names still map through the
    whole split's name map). ``predictions_out``
    gets one JSON line per record: ``id``, ``generation`` (the generated text) and ``relations``
    (``[head, tail, relation]``, BC5CDR with ``head_id``, ``tail_id``).

    Returns a JSON-serialisable dict: ``task``, ``data``, ``model``, ``model_id``, ``documents``,
    ``headline`` (``metric``, ``precision``, ``recall``, ``f1``: the ontology-level triples of
    ``hard_match`` for DDI/KD-DTI, the CID pairs for BC5CDR), ``scores`` (the whole
    ``re_scoring`` report), ``failed_generations`` (records with no parsed relation), ``unparsed_pieces``,
    ``truncated_sources``, ``generated_tokens``, ``decoding``, ``seconds``.

    :raises ConfigError: unknown task or a ``limit`` below 1.
    :raises DataFormatError: ``data`` is not a readable file of the task's layout.
    :raises RelationModelError: ``model_dir`` is not a checkpoint of ``task``.
    :raises EvaluationError: nothing to score.
    """
    if task not in RE_TASKS:
        raise ConfigError(f"unknown relation-extraction task {task!r}; use one of {', '.join(RE_TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or max_new_tokens < 1):
        raise ConfigError(f"max_new_tokens must be at least 1 (or None: to the position limit), got {max_new_tokens!r}")
    options = RelationOptions(
        model=str(model_dir),
        task=task,
        dtype=dtype or "auto",
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or 1,
        device=device,
    )
    settings = RelationTask.check_model(options)  # before reading a large file or loading weights
    if max_new_tokens is None:  # the original: to the position limit (the engine caps each prompt at L - its length)
        positions = base.read_config(model_dir, "re").get("max_position_embeddings", settings.max_target_positions)
        options = dataclasses.replace(options, max_new_tokens=min(settings.max_target_positions, int(positions)))
    split = read_re_json(data, task)
    # BC5CDR names map to MeSH ids through the whole split's map (the released test.entities.json),
    # whichever records are scored.
    split_map = split_entity_map(split) if task == "bc5cdr" else None
    records = dict(split)
    if limit is not None:
        records = dict(itertools.islice(records.items(), limit))
    without_gold = [doc_id for doc_id, record in records.items() if not has_gold(task, record)]
    if not include_empty:
        records = {doc_id: record for doc_id, record in records.items() if has_gold(task, record)}
    if not records:
        raise EvaluationError(f"{data} holds no records to evaluate")

    start = time.perf_counter()
    runner = RelationTask(options)
    doc_ids = list(records)
    prompts, truncated = [], 0
    for doc_id in doc_ids:
        source = build_source(task, records[doc_id], record_id=doc_id)
        ids, cut = prompt_input(source, runner.tokenizer, runner.settings)
        prompts.append(ids)
        truncated += cut
    log.info("re eval: %d %s records from %s, generating with %s", len(prompts), task, data, model_dir)
    new_ids = runner.generate_ids(prompts)
    generations = {doc_id: runner.generation_text(ids) for doc_id, ids in zip(doc_ids, new_ids)}
    scores = score_generations(
        task, {d: runner.grammar_input(g) for d, g in generations.items()}, records, split_map=split_map
    )

    maps = split_map or {}
    failed = unparsed = 0
    lines = []
    for doc_id, generation in generations.items():
        result = runner.parse(generation, **maps)
        failed += result.failed
        unparsed += len(result.unparsed)
        rels: list[list[str | None]] = [
            [r.head, r.tail, r.relation, *([r.head_id, r.tail_id] if task == "bc5cdr" else [])]
            for r in result.relations
        ]
        lines.append(json.dumps({"id": doc_id, "generation": generation, "relations": rels}, ensure_ascii=False))
    if predictions_out is not None:
        path = Path(predictions_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    report = json.loads(json.dumps(dataclasses.asdict(scores)))  # tuples -> lists: plain JSON values
    if isinstance(scores, CIDReport):  # bc5cdr
        headline = {
            "metric": "CID pairs (document level)",
            "precision": scores.precision,
            "recall": scores.recall,
            "f1": scores.f1,
        }
    else:
        headline = {
            "metric": "ontology-level triples (hard_match onto)",
            "precision": scores.onto.precision,
            "recall": scores.onto.recall,
            "f1": scores.onto.f1,
        }
    return {
        "task": task,
        "data": str(data),
        "model": str(model_dir),
        "model_id": runner.model_id,
        "documents": len(doc_ids),
        "headline": headline,
        "scores": report,
        "failed_generations": failed,
        "unparsed_pieces": unparsed,
        "truncated_sources": truncated,
        "generated_tokens": sum(len(ids) for ids in new_ids),
        "decoding": runner.decoding,
        "predictions": str(predictions_out) if predictions_out is not None else None,
        "seconds": round(time.perf_counter() - start, 3),
        "protocol": {
            "name": "original"
            if (max_new_tokens is None and options.dtype == "float32" and not include_empty and limit is None)
            else "custom",
            "records": "all" if limit is None else f"the first {limit}",
            "max_new_tokens": "position limit" if max_new_tokens is None else max_new_tokens,
            "dtype": options.dtype,
            "records_without_gold": "scored" if include_empty else f"left out ({len(without_gold)})",
        },
    }


def format_re_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate_re` report."""
    s = report["scores"]
    h = report["headline"]
    p = report["protocol"]
    lines = [
        f"relation extraction: {report['task']} on {report['data']}",
        f"model {report['model_id']} ({report['model']}), {report['documents']} documents, "
        f"greedy, max_new_tokens {report['decoding']['max_new_tokens']}, {report['seconds']} s",
        f"protocol: {p['name']} (generation to the {p['max_new_tokens'] if p['max_new_tokens'] == 'position limit' else str(p['max_new_tokens']) + '-token cap'}, "
        f"{p['dtype']}, records without gold relations {p['records_without_gold']})"
        + ("" if p["name"] == "original" else "; the original protocol is the default of `biomine eval re`"),
        "",
    ]

    def row(name: str, p: float, r: float, f: float) -> str:
        return f"{name:<34}{p:>10.4f}{r:>10.4f}{f:>10.4f}"

    lines.append(f"{'':<34}{'precision':>10}{'recall':>10}{'f1':>10}")
    lines.append(row(f"{h['metric']} *", h["precision"], h["recall"], h["f1"]))
    if report["task"] == "bc5cdr":
        lines.append("")
        lines.append(f"TP {s['tp']}  FP {s['fp']}  FN {s['fn']}")
    else:
        for name in ("drug", "target", "interaction"):
            f = s["onto_fields"][name]
            lines.append(row(f"  ontology {name}", f["precision"], f["recall"], f["f1"]))
        lines.append(
            row("sample (mean per document)", s["sample"]["precision"], s["sample"]["recall"], s["sample"]["f1"])
        )
        lines.append(f"{'sample macro f1':<34}{'':>20}{s['sample_macro_f1']:>10.4f}")
        acc = s["sample_accuracy"]
        lines.append("")
        lines.append("sample accuracy: " + ", ".join(f"{k} {acc[k]:.4f}" for k in ("drug", "target", "interaction")))
        lines.append(
            f"gold triples {s['num_gold']}, predicted triples {s['num_pred']}, scored documents "
            f"{s['num_samples']}, gold without prediction {s['gold_without_prediction']}"
        )
    lines.append(
        f"failed generations (no relation parsed) {report['failed_generations']} of {report['documents']}, "
        f"unparsed pieces {report['unparsed_pieces']}, truncated sources {report['truncated_sources']}, "
        f"generated tokens {report['generated_tokens']}"
    )
    lines.append("* headline metric")
    return "\n".join(lines)
