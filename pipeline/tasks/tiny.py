"""Tiny task models fitted to a handful of abstracts, for the tests and ``biomine demo``.

The checkpoints of :mod:`biogpt.tiny` are random; :func:`fit_prompt_model` teaches one the gold
targets of a few records so a test or the demo can show real relations end to end. It is not a
recipe for fine-tuning a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from biogpt.task_spec import load_task_settings

from . import base
from .re_format import build_source, build_target, prompt_input_ids


def fit_prompt_model(
    model_dir: str | Path,
    task: str,
    records: Sequence[Mapping[str, Any]],
    *,
    steps: int = 400,
    lr: float = 3e-3,
    stop_loss: float = 0.01,
    seed: int = 0,
) -> float:
    """Teacher-force the prompt checkpoint in ``model_dir`` on the records' gold targets, in place,
    and return the final loss. For tiny models in tests and the demo, which memorise a few abstracts;
    not a recipe for real fine-tuning (one example per step, no schedule, no validation).

    Each example is BioGPT's RE fine-tuning layout: ``[2] + source + learned1..N + target + </s>``
    (:func:`~pipeline.tasks.re_format.prompt_input_ids`, :func:`~pipeline.tasks.re_format.build_target`),
    the loss on the target and its ``</s>``; a record without gold (RE ``triples``/``relations``,
    PubMedQA ``final_decision``, HoC ``labels``) is taught ``</s>`` alone.
    """
    import torch

    from biogpt import BioGptForCausalLM

    settings = load_task_settings(model_dir, task)
    tok = base.tokenizer_for(str(model_dir))
    model = BioGptForCausalLM.from_pretrained(model_dir).train()
    examples = []
    for record in records:
        prompt = prompt_input_ids(build_source(task, record), tok, settings)
        has_gold = any(record.get(key) for key in ("triples", "relations", "final_decision", "labels"))
        target = tok.encode(build_target(task, record), add_special_tokens=False) if has_gold else []
        ids = torch.tensor([prompt + target + [tok.eos_token_id]])
        labels = torch.full_like(ids, -100)
        labels[0, len(prompt) :] = ids[0, len(prompt) :]
        examples.append((ids, labels))
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(model(ids, labels=labels).loss for ids, labels in examples)
        loss.backward()
        opt.step()
        if loss.item() < stop_loss:
            break
    model.eval().save_pretrained(model_dir)
    return float(loss.item())
