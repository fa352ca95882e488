"""``biomine eval qa|hoc``: PubMedQA and HoC scored from generated lines, as microsoft/BioGPT's examples do.

Contract:

- :func:`evaluate_generated` scores one of the two generative benchmarks exactly as
  ``examples/QA-PubMedQA`` and ``examples/DC-HoC`` (``infer.sh`` -> ``postprocess.py`` ->
  ``hard_match_evaluation.py``): one generated line per gold record, in the data's order; each line
  cleaned and matched (:func:`pipeline.evaluation.qa.extract_answer`,
  :func:`pipeline.evaluation.hoc.extract_labels`), ``failed`` where the answer sentence is absent;
  accuracy for PubMedQA (``task="pubmedqa"``), micro-F1 over the 11 HoC classes, ``empty`` included,
  for HoC (``task="hoc"``). The lines come either from a file (``generations``: the ``infer.sh``
  output, echoed source and ``learnedN`` tokens included, or any file of one line per record) or
  from a model (``model_dir``: :func:`generate_lines`).
- :func:`read_generations` reads such a file as the original scripts do (text mode, UTF-8: ``\\n``,
  ``\\r`` and ``\\r\\n`` end a line; an empty line is a record that failed) and insists on one line
  per record, as ``hard_match_evaluation.py`` asserts.
- :func:`generate_lines` generates as the original ``inference.py``: the checkpoint's prompt input
  (``[2] + source + learned1..N``, the source cut to S-1 ids + ``...`` past ``max_source_positions``:
  :func:`pipeline.tasks.re_format.prompt_input`), greedy decoding to the position limit on the
  engine (:class:`pipeline.tasks.decoding.GreedyDecoder`, as ``biomine eval re``), each line
  ``learned1 .. learnedN generation`` (:func:`pipeline.tasks.re_format.echo_prompt`), which the
  post-processing reads as it read the original's source-echoing lines.
- :func:`text_lines` reads a gold TSV's non-blank lines with their numbers.
- :func:`format_generated_report` prints a report.

:raises BioMineError: from :func:`evaluate_generated`: ``DataFormatError`` (gold data),
    ``EvaluationError`` (a generations file of another length, unreadable, or none of both inputs),
    ``WrongModelError`` (a checkpoint that is not a fine-tuned prompt model of the task),
    ``RecordError`` (a record without the input the checkpoint needs), ``ConfigError`` (``limit``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from biogpt.errors import ConfigError
from biogpt.task_spec import BY_NAME, TaskSettings
from pipeline.errors import DataFormatError, EvaluationError

log = logging.getLogger(__name__)

#: How many failed lines the report quotes (all are counted and numbered).
FAILED_EXAMPLES = 10
#: How many distinct extracted strings the report counts (an untrained model says anything).
PREDICTED_KEPT = 20
#: The benchmarks and their original scripts.
PROTOCOLS: dict[str, dict[str, str]] = {
    "pubmedqa": {
        "metric": "accuracy",
        "postprocess": "examples/QA-PubMedQA/postprocess.py",
        "evaluation": "examples/QA-PubMedQA/hard_match_evaluation.py (sklearn accuracy_score)",
    },
    "hoc": {
        "metric": "micro-F1 (11 classes, empty included)",
        "postprocess": "examples/DC-HoC/postprocess.py",
        "evaluation": "examples/DC-HoC/hard_match_evaluation.py (MultiLabelBinarizer, f1_score average='micro')",
    },
}


def text_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-blank lines of a text file, read as the
    original scripts read theirs (text mode: ``\\n``, ``\\r`` and ``\\r\\n`` end a line).

    :raises DataFormatError: a missing or unreadable file, or one that is not UTF-8.
    """
    try:
        with open(path, encoding="utf-8") as reader:
            return [(n, line.strip()) for n, line in enumerate(reader, 1) if line.strip()]
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path} is not a readable UTF-8 text file: {exc}") from None


def read_generations(path: str | Path, records: int, data: str | Path) -> list[str]:
    """Every line of a generations file (empty ones included), which must hold ``records`` lines.

    :raises EvaluationError: a missing or unreadable file, or another number of lines than records
        of ``data`` (the original's ``assert len(preds) == len(golden)``).
    """
    try:
        with open(path, encoding="utf-8") as reader:
            lines = [line.rstrip("\r\n") for line in reader]
    except FileNotFoundError:
        raise EvaluationError(f"generations file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"generations file {path} is not a readable UTF-8 text file: {exc}") from None
    if len(lines) != records:
        raise EvaluationError(
            f"generations file {path} has {len(lines)} lines but {data} has {records} records; give one "
            "generated line per record, in the data's order (the original's hard_match_evaluation.py "
            "asserts the same)"
        )
    return lines


# --- generating ----------------------------------------------------------------------------------


def checked_settings(model_dir: str | Path, task: str) -> TaskSettings:
    """The :class:`TaskSettings` of ``model_dir`` after checking it is a fine-tuned prompt checkpoint
    of ``task`` (``pubmedqa`` or ``hoc``); reads only config.json and biomine_task.json.

    :raises WrongModelError: no config.json, a classification head, no or an invalid
        biomine_task.json (a base BioGPT), a checkpoint of another task, or prompt ids outside the
        vocabulary.
    """
    from pipeline.tasks import base

    what = f"eval {'qa' if task == 'pubmedqa' else task}"
    release = "qa-pubmedqa" if task == "pubmedqa" else "dc-hoc"
    needs = (
        f"give the fine-tuned {task} prompt checkpoint (`biomine models pull {release}`, then --model biogpt:{release})"
    )
    return base.prompt_settings(model_dir, what, needs, task)


def generate_lines(
    model_dir: str | Path,
    task: str,
    sources: Sequence[str],
    *,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = "float32",
    settings: TaskSettings | None = None,
) -> dict[str, Any]:
    """Greedy generations of a ``task`` checkpoint for source texts (module docstring).

    Returns ``lines`` (one per source: ``learned1 .. learnedN generation``, or ``""`` where nothing
    was generated; line breaks inside a generation become spaces, so the lines can be written one
    per line and read back), ``truncated_sources``, ``generated_tokens``, ``decoding`` and
    ``model_id``.

    :raises WrongModelError: see :func:`checked_settings`.
    """
    from pipeline.tasks import base
    from pipeline.tasks.decoding import GreedyDecoder
    from pipeline.tasks.re_format import echo_prompt, prompt_input, prompt_tokens

    settings = settings or checked_settings(model_dir, task)
    decoder = GreedyDecoder(
        model_dir,
        f"eval {task}",
        dtype=dtype,
        device=device,
        max_batch=batch_size,
        max_seq_len=settings.max_target_positions,
    )
    prompts, truncated = [], 0
    for source in sources:
        ids, cut = prompt_input(source, decoder.tokenizer, settings)
        prompts.append(ids)
        truncated += cut
    # The original: generation to the position limit (fairseq's 1,023 steps count the prompt);
    # the decoder gives each prompt max_seq_len - its length.
    max_new = decoder.max_seq_len
    new_ids = decoder.run(prompts, max_new)
    tokens = prompt_tokens(decoder.tokenizer, settings)
    lines = [echo_prompt(tokens, decoder.text(ids).replace("\r", " ").replace("\n", " ")) for ids in new_ids]
    return {
        "lines": lines,
        "truncated_sources": truncated,
        "generated_tokens": sum(len(ids) for ids in new_ids),
        "decoding": base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=max_new),
        "model_id": base.model_id(model_dir),
    }


# --- scoring -------------------------------------------------------------------------------------


def postprocess(lines: Sequence[str], extract: Callable[[str], str | None]) -> tuple[list[str], list[int]]:
    """``postprocess.py``: the extracted text per line (``failed`` where nothing was extracted) and
    the 1-based numbers of the failed lines."""
    hypotheses, failed = [], []
    for number, line in enumerate(lines, 1):
        found = extract(line)
        if found is None:
            failed.append(number)
        hypotheses.append("failed" if found is None else found)
    return hypotheses, failed


def evaluate_generated(
    task: str,
    data: str | Path,
    *,
    generations: str | Path | None = None,
    model_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = "float32",
    limit: int | None = None,
    predictions_out: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``task`` (``pubmedqa`` or ``hoc``) on the gold file ``data`` from a generations file or a
    model (exactly one of ``generations`` and ``model_dir``); module docstring.

    With a model, ``limit`` keeps the first N records and ``predictions_out`` gets the generated
    lines, one per record, in the layout ``generations`` reads (so they can be scored again).
    The protocol is ``original`` unless a model decoded in another dtype than float32 or ``limit``
    cut the data.

    Returns a JSON-serialisable dict: ``task``, ``metric``, ``score``, ``failed``, ``total``,
    ``protocol``, ``data``, ``generations``, ``model``, ``model_id``, ``failed_lines`` (numbers),
    ``failed_examples`` (the first :data:`FAILED_EXAMPLES` lines as read), ``predicted`` (how often
    each extracted answer/label string occurs: the :data:`PREDICTED_KEPT` most frequent, the rest as
    ``(others)``), ``seconds``; PubMedQA adds ``correct``, HoC
    ``precision``, ``recall``, ``tp``, ``fp``, ``fn``; a model run adds ``truncated_sources``,
    ``generated_tokens``, ``decoding``.

    :raises EvaluationError: not exactly one of ``generations`` and ``model_dir``; see also
        :func:`read_generations`.
    :raises ConfigError: an unknown task, a ``limit`` below 1 or with ``generations``.
    """
    from . import hoc, qa

    if task not in PROTOCOLS:
        raise ConfigError(f"unknown generative benchmark {task!r}; use pubmedqa or hoc")
    if (generations is None) == (model_dir is None):
        raise EvaluationError("score either a generations file or a model: give exactly one of the two")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if limit is not None and generations is not None:
        raise ConfigError("a limit applies to a model run only: a generations file has one line per record")
    start = time.perf_counter()
    settings = checked_settings(model_dir, task) if model_dir is not None else None  # before reading the data

    records: Sequence[Any]
    if task == "pubmedqa":
        records = qa.read_pubmedqa(data)
        extract = qa.extract_answer
    else:
        records = hoc.read_hoc(data)
        extract = hoc.extract_labels
    if limit is not None:
        records = records[:limit]
    report: dict[str, Any] = {
        "task": task,
        "data": str(data),
        "generations": str(generations) if generations is not None else None,
        "model": str(model_dir) if model_dir is not None else None,
        "model_id": None,
    }
    if generations is not None:
        lines = read_generations(generations, len(records), data)
    else:
        assert settings is not None and model_dir is not None
        source_format = settings.source_format
        sources = [qa.qa_source(r, source_format) if isinstance(r, qa.QARecord) else hoc.hoc_source(r) for r in records]
        log.info("eval %s: %d records from %s, generating with %s", task, len(sources), data, model_dir)
        run = generate_lines(
            model_dir, task, sources, batch_size=batch_size, device=device, dtype=dtype, settings=settings
        )
        lines = run.pop("lines")
        report.update(run)
        if predictions_out is not None:
            path = Path(predictions_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    hypotheses, failed = postprocess(lines, extract)
    gold = [r.gold for r in records]
    if task == "pubmedqa":
        score, correct = qa.accuracy(hypotheses, gold)
        report["correct"] = correct
    else:
        micro = hoc.micro_f1(hypotheses, gold)
        score = micro.f1
        report.update(precision=micro.precision, recall=micro.recall, tp=micro.tp, fp=micro.fp, fn=micro.fn)
    original = model_dir is None or ((dtype or "auto") == "float32" and limit is None)
    report.update(
        metric=PROTOCOLS[task]["metric"],
        score=score,
        failed=len(failed),
        total=len(records),
        failed_lines=failed,
        failed_examples=[{"line": n, "text": lines[n - 1]} for n in failed[:FAILED_EXAMPLES]],
        predicted=_top(Counter(hypotheses)),
        seconds=round(time.perf_counter() - start, 3),
        protocol={
            "name": "original" if original else "custom",
            "postprocess": PROTOCOLS[task]["postprocess"],
            "evaluation": PROTOCOLS[task]["evaluation"],
            "predictions": "generations file"
            if model_dir is None
            else f"greedy generation to the position limit, {dtype}",
            "records": "all" if limit is None else f"the first {limit}",
            "target": BY_NAME[task].target,
        },
    )
    return report


def _top(counts: Counter) -> dict[str, int]:
    """The :data:`PREDICTED_KEPT` most frequent strings, the rest summed under ``(others)``."""
    top = dict(counts.most_common(PREDICTED_KEPT))
    rest = sum(counts.values()) - sum(top.values())
    return {**top, "(others)": rest} if rest else top


def format_generated_report(report: Mapping[str, Any]) -> str:
    """A plain-text summary of an :func:`evaluate_generated` report."""
    p = report["protocol"]
    source = (
        f"generations {report['generations']}"
        if report["generations"] is not None
        else f"model {report['model_id']} ({report['model']}), {p['predictions']}"
    )
    lines = [
        f"{report['task']} on {report['data']}: {report['total']} records, {source}, {report['seconds']} s",
        f"protocol: {p['name']} ({p['postprocess']} + {p['evaluation']}; records: {p['records']})",
        "",
        f"{report['metric']}: {report['score']:.4f}",
    ]
    if report["task"] == "pubmedqa":
        lines.append(f"correct {report['correct']} of {report['total']}")
    else:
        lines.append(
            f"precision {report['precision']:.4f}  recall {report['recall']:.4f}  "
            f"TP {report['tp']}  FP {report['fp']}  FN {report['fn']}"
        )
    lines.append(f"failed = {report['failed']}, total = {report['total']}")
    for example in report["failed_examples"]:
        text = example["text"]
        lines.append(f"  failed line {example['line']}: {text[:120] + ' ...' if len(text) > 120 else text}")
    if report["failed"] > len(report["failed_examples"]):
        lines.append(
            f"  ... and {report['failed'] - len(report['failed_examples'])} more (failed_lines in the JSON report)"
        )
    if "truncated_sources" in report:
        lines.append(f"truncated sources {report['truncated_sources']}, generated tokens {report['generated_tokens']}")
    return "\n".join(lines)
