"""Greedy decoding of a causal BioGPT on the engine, shared by relation extraction and summaries.

:class:`GreedyDecoder` loads a checkpoint, its tokenizer and a :class:`biogpt.engine.Engine` once
(per actor) and decodes as BioGPT's ``inference.py``: beam 1, ``<pad>`` never chosen, stop at
``</s>``, each prompt limited to the positions that remain (so none can overflow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import base


class GreedyDecoder:
    """A causal LM, its tokenizer and a :class:`biogpt.engine.Engine`, loaded once (per actor).

    Greedy decoding as BioGPT's ``inference.py``: beam 1, ``<pad>`` never chosen
    (``suppress_tokens``), stop at ``</s>``. ``max_seq_len`` caps the positions (and the engine's
    cache); ``cuda_graph`` defaults to the engine's choice (on for CUDA).
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

    def budgets(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[int]:
        """New tokens each prompt may generate: ``min(max_new_tokens, max_seq_len - len(prompt))``."""
        return [min(max_new_tokens, self.max_seq_len - len(p)) for p in prompts]

    def run(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """New ids per prompt as the engine returns them (up to and including ``</s>``, or the
        budget); a prompt without room to generate gets ``[]`` (fairseq forces ``</s>`` there)."""
        return [ids for ids, _ in self.run_scored(prompts, max_new_tokens)]

    def run_scored(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[tuple[list[int], list[float]]]:
        """:meth:`run` with each new id's model log-probability (the engine's, no second pass)."""
        prompts = [list(p) for p in prompts]
        budgets = self.budgets(prompts, max_new_tokens)
        todo = [i for i, b in enumerate(budgets) if b >= 1]
        outputs: list[tuple[list[int], list[float]]] = [([], []) for _ in prompts]
        if todo:
            new, lps = self.engine.run(
                [prompts[i] for i in todo],
                [budgets[i] for i in todo],
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                suppress_tokens=[self.pad],
                logprobs=True,
            )
            for i, ids, lp in zip(todo, new, lps):
                outputs[i] = (list(ids), list(lp))
        return outputs

    def run_prompted(self, inputs: Sequence[Sequence[int] | None], max_new_tokens: int) -> dict[int, list[int]]:
        """New ids by input index, for the inputs that are prompts (``None`` = no prompt, skipped)."""
        return {i: ids for i, (ids, _) in self.run_prompted_scored(inputs, max_new_tokens).items()}

    def run_prompted_scored(
        self, inputs: Sequence[Sequence[int] | None], max_new_tokens: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        """:meth:`run_prompted` with the log-probability of every new id."""
        todo = [i for i, ids in enumerate(inputs) if ids is not None]
        return dict(zip(todo, self.run_scored([inputs[i] for i in todo], max_new_tokens)))

    def text(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Decoded, detokenised text of new ids without ``<s>``/``</s>`` (fairseq's
        ``Dictionary.string`` drops them and keeps ``<unk>``); ``skip_special_tokens`` drops every
        special id (``<unk>`` too)."""
        kept = [int(i) for i in ids if int(i) not in (self.eos, self.bos)]
        return self.tokenizer.decode(kept, skip_special_tokens=skip_special_tokens)
