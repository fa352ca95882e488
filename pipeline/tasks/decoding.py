"""Greedy decoding of a causal BioGPT on the engine, shared by relation extraction and summaries.

:class:`GreedyDecoder` loads a checkpoint, its tokenizer and a :class:`biogpt.engine.Engine` once
(per actor) and decodes as BioGPT's ``inference.py``: beam 1, ``<pad>`` never chosen, stop at
``</s>``, each prompt limited to the positions that remain (so none can overflow).

Contract:

* Two layers over one decoding. The plain calls, :meth:`~GreedyDecoder.run` (a list of prompts)
  and :meth:`~GreedyDecoder.run_prompted` (inputs where ``None`` means no prompt), return new ids
  only. They are the base: the engine is asked for ids alone, so no log-probability is computed
  (no log-softmax, no gather, no per-step tensor kept). Summaries use them.
* The scored calls, :meth:`~GreedyDecoder.run_scored` and :meth:`~GreedyDecoder.run_prompted_scored`,
  are the same calls with the engine's ``logprobs=True``: each new id comes with its model
  log-probability from the decode step itself (no second pass; it equals a teacher-forced pass).
  Relation extraction uses them, for the confidence of each relation.
* Both layers share the budgets, the engine call and the results' order, and asking for
  log-probabilities never changes a choice: a scored call returns exactly the plain call's ids.
* Budgets: each prompt may generate ``min(max_new_tokens, max_seq_len - len(prompt))`` new ids
  (:meth:`~GreedyDecoder.budgets`); a prompt without room gets ``[]`` (and ``[]`` log-probabilities)
  instead of an error, where fairseq forces ``</s>``.

:raises ValueError: from the decode calls, for an empty prompt (the engine needs one token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import base


class GreedyDecoder:
    """A causal LM, its tokenizer and a :class:`biogpt.engine.Engine`, loaded once (per actor).

    Greedy decoding as BioGPT's ``inference.py``: beam 1, ``<pad>`` never chosen
    (``suppress_tokens``), stop at ``</s>``. ``max_seq_len`` caps the positions (and the engine's
    cache); ``cuda_graph`` defaults to the engine's choice (on for CUDA). Plain calls (ids) are the
    base, scored calls (ids and log-probabilities) the same decoding with ``logprobs=True`` (see the
    module docstring).

    :raises ConfigError: ``max_batch`` is not a positive integer (named ``{what}: batch_size``).
    :raises WrongModelError: ``model_dir`` cannot be loaded as a causal BioGPT (names ``what``).
    :raises TokenizerError: the directory's vocabulary files are missing or malformed.
    :raises ValueError: ``cuda_graph=True`` on a device that is not CUDA.
    """

    def __init__(
        self,
        model_dir: str | Path,
        what: str,
        *,
        dtype: str | None = "auto",
        device: str | None = None,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        cuda_graph: bool | None = None,
    ):
        from biogpt.engine import Engine
        from biogpt.model import BioGptForCausalLM

        base.positive_int(max_batch, f"{what}: batch_size")
        self.model_dir = str(model_dir)
        self.model = base.load_model(BioGptForCausalLM, self.model_dir, dtype, device, what)
        self.tokenizer = base.tokenizer_for(self.model_dir)
        positions = self.model.config.max_position_embeddings
        self.max_seq_len = min(max_seq_len or positions, positions)
        self.engine = Engine(
            self.model,
            max_batch=max_batch,
            max_seq_len=self.max_seq_len,
            dtype=self.model.dtype,
            device=self.model.device,
            cuda_graph=cuda_graph,
        )
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id
        self.bos = self.tokenizer.bos_token_id

    @classmethod
    def for_task(cls, model_dir: str | Path, what: str, options, max_seq_len: int | None) -> GreedyDecoder:
        """The decoder of a prompt task's actor (``re``, ``qa``, ``classify``): slots (``batch_size``),
        dtype, device and CUDA graphs from the task's options, ``max_seq_len`` from its checkpoint."""
        return cls(
            model_dir,
            what,
            dtype=options.dtype,
            device=options.device,
            max_batch=options.batch_size,
            max_seq_len=max_seq_len,
            cuda_graph=options.cuda_graph,
        )

    def budgets(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[int]:
        """New tokens each prompt may generate: ``min(max_new_tokens, max_seq_len - len(prompt))``."""
        return [min(max_new_tokens, self.max_seq_len - len(p)) for p in prompts]

    def run(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """New ids per prompt as the engine returns them (up to and including ``</s>``, or the
        budget); a prompt without room to generate gets ``[]`` (fairseq forces ``</s>`` there).
        No log-probability is computed (see :meth:`run_scored`).

        :raises ValueError: a prompt is empty.
        """
        ids, _ = self._decode(prompts, max_new_tokens, logprobs=False)
        return ids

    def run_scored(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[tuple[list[int], list[float]]]:
        """:meth:`run`'s ids, each with its model log-probability (the engine's, no second pass):
        ``(ids, logprobs)`` per prompt, ``([], [])`` for a prompt without room.

        :raises ValueError: a prompt is empty.
        """
        ids, lps = self._decode(prompts, max_new_tokens, logprobs=True)
        assert lps is not None  # asked for
        return list(zip(ids, lps))

    def run_prompted(self, inputs: Sequence[Sequence[int] | None], max_new_tokens: int) -> dict[int, list[int]]:
        """:meth:`run` by input index, for the inputs that are prompts (``None`` = no prompt, skipped)."""
        todo, prompts = _prompted(inputs)
        return dict(zip(todo, self.run(prompts, max_new_tokens)))

    def run_prompted_scored(
        self, inputs: Sequence[Sequence[int] | None], max_new_tokens: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        """:meth:`run_scored` by input index: :meth:`run_prompted` with the log-probability of every new id."""
        todo, prompts = _prompted(inputs)
        return dict(zip(todo, self.run_scored(prompts, max_new_tokens)))

    def _decode(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, logprobs: bool
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """New ids per prompt, in input order, and, only when ``logprobs``, their log-probabilities
        (else None: the engine computes none). Prompts without room are not sent to the engine."""
        prompts = [list(p) for p in prompts]
        budgets = self.budgets(prompts, max_new_tokens)
        todo = [i for i, b in enumerate(budgets) if b >= 1]
        ids: list[list[int]] = [[] for _ in prompts]
        scores: list[list[float]] | None = [[] for _ in prompts] if logprobs else None
        if not todo:
            return ids, scores
        result = self.engine.run(
            [prompts[i] for i in todo],
            [budgets[i] for i in todo],
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            suppress_tokens=[self.pad],
            logprobs=logprobs,
        )
        new, lps = result if logprobs else (result, None)
        for k, i in enumerate(todo):
            ids[i] = list(new[k])
            if scores is not None and lps is not None:  # both or neither: a scored run
                scores[i] = list(lps[k])
        return ids, scores

    def text(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Decoded, detokenised text of new ids without ``<s>``/``</s>`` (fairseq's
        ``Dictionary.string`` drops them and keeps ``<unk>``); ``skip_special_tokens`` drops every
        special id (``<unk>`` too)."""
        kept = [int(i) for i in ids if int(i) not in (self.eos, self.bos)]
        return self.tokenizer.decode(kept, skip_special_tokens=skip_special_tokens)


def _prompted(inputs: Sequence[Sequence[int] | None]) -> tuple[list[int], list[Sequence[int]]]:
    """Indices of the inputs that are prompts (not ``None``), in order, and those prompts."""
    todo = [i for i, ids in enumerate(inputs) if ids is not None]
    return todo, [ids for ids in inputs if ids is not None]
