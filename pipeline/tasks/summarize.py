"""Summarisation (or any prompted free text) of articles with a causal-LM BioGPT checkpoint.

Contract:

- :class:`SummarizeTask` is the ``summarize`` task of the job files (the contract of
  :mod:`pipeline.tasks.base`): ``dataset = "summaries"``, rows of
  :data:`schemas.summaries.SUMMARY_SCHEMA` (``pmid``, ``version``, ``prompt_id``, ``summary``,
  ``model_id``, ``decoding``), one row per article that has a prompt.
- Checkpoint: a causal LM - the pre-trained BioGPT (``biomine convert fairseq`` of
  ``Pre-trained-BioGPT``, whose ``biomine_task.json`` says ``lm``) or a model fine-tuned for free text
  with no task file. :meth:`SummarizeTask.check_model` refuses a token/sequence-classification
  checkpoint (``config.json`` ``architectures``) and a prompt-tuned task checkpoint (a
  ``biomine_task.json`` whose task is not ``lm``: its learned prompt would be missing and its output
  is a task grammar, not a summary) with :class:`~pipeline.tasks.base.WrongModelError`.
- Prompt (:meth:`SummarizeTask.prepare`): the job's template (``prompt``, default ``"{title}"``;
  only ``{title}`` and ``{abstract}``) formatted with the article's title and abstract (``""`` when
  missing), ids ``[2] + encode(prompt, add_special_tokens=False)``. When the prompt plus
  ``max_new_tokens`` exceeds ``max_position_embeddings``, the ABSTRACT is cut (whole words from its
  end) until it fits, so the template's cue after it (e.g. ``TL;DR:``) is kept; if the prompt still
  does not fit (a template without ``{abstract}``, a huge title), its first ids after ``</s>`` are
  dropped, again keeping the end. Such a row says ``input_truncated = true``. An article whose prompt is empty (e.g. ``"{title}"`` and no
  title) gets no row.
- Decoding: greedy (``<pad>`` never chosen) on :class:`biogpt.engine.Engine`, at most
  ``max_new_tokens`` new tokens (default 64, the runner's), stopping at ``</s>``; the greedy ids equal
  :func:`biogpt.generation.generate`'s. ``summary`` is the tokenizer's decode of the new ids with
  ``skip_special_tokens`` (pieces joined, Moses-detokenised and unescaped), so it may be empty.

:raises WrongModelError: a checkpoint of the wrong kind.
:raises ConfigError: a template with other fields, or ``max_new_tokens`` that leaves no room for a
    prompt in the model's positions.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from biogpt.errors import CheckpointError, ConfigError
from schemas import summaries as _summaries

from . import base
from .decoding import GreedyDecoder
from .options import SummarizeOptions, template_problem

DEFAULT_PROMPT = SummarizeOptions.prompt
DEFAULT_PROMPT_ID = SummarizeOptions.prompt_id
#: ``max_new_tokens`` when the job does not say (:class:`~pipeline.tasks.options.SummarizeOptions`).
DEFAULT_MAX_NEW_TOKENS = SummarizeOptions.max_new_tokens
_WORD = re.compile(r"\S+")


def check_template(template: Any) -> str:
    """``template`` if it is a string whose only fields are ``{title}`` and ``{abstract}``.

    :raises ConfigError: anything else (names the offending field).
    """
    problem = template_problem(template)
    if problem:
        raise ConfigError(f"summarize: {problem}")
    return template


def _budget(max_new_tokens: Any) -> int:
    return base.positive_int(max_new_tokens, "summarize: max_new_tokens")


def _room(positions: int, max_new_tokens: Any, model_dir: Any) -> int:
    """Prompt ids (the leading ``</s>`` included) that ``positions`` leave after ``max_new_tokens``.

    :raises ConfigError: fewer than 2 (``</s>`` and one token).
    """
    limit = positions - _budget(max_new_tokens)
    if limit < 2:
        raise ConfigError(
            f"summarize: max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
            f"{positions} positions of {model_dir}; ask for at most {positions - 2} new tokens"
        )
    return limit


@functools.lru_cache(maxsize=8)
def _positions(model_dir: str) -> int:
    config = SummarizeTask._checked_config(model_dir)
    return int(config.get("max_position_embeddings") or 1024)


def prompt_limit(model_dir: str | Path, max_new_tokens: int) -> int:
    """The most prompt ids (the leading ``</s>`` included) that leave room for ``max_new_tokens``.

    :raises ConfigError: fewer than 2 (``</s>`` and one token).
    """
    return _room(_positions(str(model_dir)), max_new_tokens, model_dir)


def prompt_ids(template: str, title: str, abstract: str, tokenizer, limit: int) -> list[int]:
    """The ids of :func:`fit_prompt` (without its truncation flag)."""
    return fit_prompt(template, title, abstract, tokenizer, limit)[0]


def fit_prompt(template: str, title: str, abstract: str, tokenizer, limit: int) -> tuple[list[int], bool]:
    """``[2] + encode(template.format(title=, abstract=))``, cut to ``limit`` ids as the module
    docstring says (the abstract first, from its end, then the first ids after ``</s>``), and
    whether it was cut."""

    def encode(abstract_text: str) -> list[int]:
        return [tokenizer.eos_token_id] + list(
            tokenizer.encode(template.format(title=title, abstract=abstract_text), add_special_tokens=False)
        )

    ids = encode(abstract)
    truncated = len(ids) > limit
    if truncated and abstract and "{abstract}" in template:
        ends = [m.end() for m in _WORD.finditer(abstract)]
        # Binary search for the most leading words whose prompt fits (ids grow with words; the final
        # cut below guarantees the limit even where that does not hold exactly).
        lo, hi = 0, len(ends) - 1  # keeping all words does not fit
        best = encode("")
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = encode(abstract[: ends[mid - 1]] if mid else "")
            if len(candidate) <= limit:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        ids = best
    if len(ids) > limit:
        ids = ids[:1] + ids[len(ids) - (limit - 1) :]
    return ids, truncated


class SummarizeTask(base.Task[SummarizeOptions]):
    """The ``summarize`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "summarize"
    dataset = "summaries"
    schema = _summaries.SUMMARY_SCHEMA
    prepared_schema = pa.schema(
        [
            pa.field("_input_ids", base.IDS),  # the prompt's ids, null where the prompt is empty
            pa.field("_truncated", pa.bool_()),  # whether the prompt was cut to fit
        ]
    )
    Options = SummarizeOptions
    cast_batch = staticmethod(_summaries.cast_batch)
    sort_keys: ClassVar[tuple[str, ...]] = ("prompt_id",)
    requires = (
        "a causal-LM BioGPT checkpoint (the pre-trained model converted with `biomine convert fairseq`, "
        "or one fine-tuned for free text); not a prompt-tuned task or token-classification checkpoint"
    )

    @classmethod
    def check_model(cls, options: SummarizeOptions) -> dict[str, Any]:
        """The checkpoint's config.json as a dict; cheap (config and task files only). The prompt
        template and ``max_new_tokens`` are checked too.

        :raises WrongModelError: no config.json, a classification architecture, or a prompt-tuned
            task checkpoint.
        :raises ConfigError: a bad template, or ``max_new_tokens`` that leaves no room for a prompt.
        """
        config = cls._checked_config(options.model)
        check_template(options.prompt)
        _room(int(config.get("max_position_embeddings") or 1024), options.max_new_tokens, options.model)
        return config

    @classmethod
    def _checked_config(cls, model_dir: str) -> dict[str, Any]:
        """config.json of ``model_dir`` once it is known to be a causal LM without a task prompt."""
        from biogpt.task_spec import TASK_FILE, read_task_spec

        config = base.read_config(model_dir, "summarize")
        arch = base.architecture(config)
        if arch is not None and arch != "BioGptForCausalLM":
            raise base.WrongModelError(
                f"summarize: {model_dir} is a {arch} checkpoint (a classification head, e.g. NER), not a language "
                f"model; pass {cls.requires.split(';')[0]}"
            )
        if (Path(model_dir) / TASK_FILE).exists():
            try:
                kind = read_task_spec(model_dir).get("task")
            except CheckpointError as exc:
                raise base.WrongModelError(f"summarize: {exc}") from None
            if kind != "lm":
                raise base.WrongModelError(
                    f"summarize: {model_dir} is a prompt-tuned {kind} checkpoint ({TASK_FILE}); it generates "
                    f"{kind} answers, not summaries. Pass a causal LM such as the pre-trained BioGPT "
                    "(`biomine convert fairseq Pre-trained-BioGPT/checkpoint.pt models/biogpt`)"
                )
        return config

    @classmethod
    def prepare(cls, batch: Any, options: SummarizeOptions) -> pa.Table:
        """Add ``_input_ids`` (the prompt ids per article, None where the prompt is empty) and
        ``_truncated`` (whether the prompt was cut to fit)."""
        model_dir = options.model
        template = check_template(options.prompt)
        limit = prompt_limit(model_dir, options.max_new_tokens)
        tokenizer = base.tokenizer_for(model_dir)
        inputs, truncated = [], []
        docs = base.documents(batch)
        for title, abstract in zip(docs.column("title").to_pylist(), docs.column("abstract").to_pylist()):
            title, abstract = base.text_of(title), base.text_of(abstract)
            ids, cut = None, None
            if template.format(title=title, abstract=abstract).strip():
                ids, cut = fit_prompt(template, title, abstract, tokenizer, limit)
            inputs.append(ids)
            truncated.append(cut)
        return base.prepared(docs, cls.prepared_schema, {"_input_ids": inputs, "_truncated": truncated})

    def __init__(self, options: SummarizeOptions):
        self.model_dir = options.model
        self.max_new_tokens = _budget(options.max_new_tokens)
        self.prompt = check_template(options.prompt)
        self.prompt_id = options.prompt_id
        self.check_model(options)
        self.options = options
        self.decoder = GreedyDecoder(
            self.model_dir,
            "summarize",
            dtype=options.dtype,
            device=options.device,
            max_batch=options.batch_size,
            cuda_graph=options.cuda_graph,
        )
        self.tokenizer = self.decoder.tokenizer
        self.model_id = base.model_id(self.model_dir)
        self.decoding = base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=self.max_new_tokens)

    def generate_ids(self, prompts) -> list[list[int]]:
        """Greedy new ids per prompt (including the final ``</s>`` when one was generated)."""
        return self.decoder.run(prompts, self.max_new_tokens)

    def summary_text(self, ids) -> str:
        """The summary of new ids: decoded with ``skip_special_tokens`` (Moses-detokenised)."""
        return self.decoder.text(ids, skip_special_tokens=True)

    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        batch = base.check_prepared(type(self), batch)
        pmids, versions = batch.column("pmid").to_pylist(), batch.column("version").to_pylist()
        new = self.decoder.run_prompted(batch.column("_input_ids").to_pylist(), self.max_new_tokens)
        cut = batch.column("_truncated").to_pylist()
        out: list[list[dict[str, Any]]] = []
        for i, (pmid, version) in enumerate(zip(pmids, versions)):
            if i not in new:
                out.append([])
                continue
            out.append(
                [
                    {
                        "pmid": pmid,
                        "version": version,
                        "prompt_id": self.prompt_id,
                        "summary": self.summary_text(new[i]),
                        "model_id": self.model_id,
                        "decoding": dict(self.decoding),
                        "input_truncated": bool(cut[i]),
                    }
                ]
            )
        return out
