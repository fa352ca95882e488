"""The head-independent part of fine-tuning: its settings and the optimisation loop.

Contract:

- :class:`TrainingSettings` is a frozen dataclass of what every fine-tuning run is given; a head's
  settings (e.g. :class:`pipeline.training.ner.NerTrainingSettings`) extend it. Values are checked
  by the head's training function, where the error names the head.
- :func:`fit` trains a loaded model in place on ``examples``: AdamW (``lr``, ``weight_decay``) over the
  trainable parameters (only the head with ``freeze_body``), ``warmup`` (a fraction of the steps) of
  linear warm-up then linear decay to 0, gradient clipping at 1.0, bfloat16 autocast on CUDA, the
  examples shuffled each epoch by a generator seeded with ``seed`` (independent of other RNG use),
  ``batch_size`` examples per step. ``collate`` turns a list of examples into the model's keyword
  arguments (tensors on the device, ``labels`` included); the model returns an output with ``.loss``.
  Deterministic for a seed on one device.
- :func:`check_settings` is what every head checks before it reads data (a base model directory, the
  output-directory rule of :func:`check_out_dir`: a directory, empty unless ``overwrite``; positive
  epochs, batch size and learning rate), raising the head's error class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """What every fine-tuning run is given (the ``biomine train`` flags in brackets)."""

    #: The training data (``--data``).
    data: str | Path
    #: The checkpoint to start from: a model directory (``--base``).
    base: str | Path
    #: The output model directory (``--out``): created; must be empty unless ``overwrite``.
    out: str | Path
    _: KW_ONLY
    #: Passes over the data (``--epochs``).
    epochs: int = 5
    #: Peak AdamW learning rate (``--lr``).
    lr: float = 5e-5
    #: Examples per optimiser step (``--batch-size``).
    batch_size: int = 8
    #: Train only the head (``--freeze-body``).
    freeze_body: bool = False
    #: Seeds the new head, dropout and shuffling (``--seed``).
    seed: int = 0
    #: ``cuda``, ``cpu`` ...; None: CUDA when available (``--device``).
    device: str | None = None
    weight_decay: float = 0.01
    #: The fraction of the steps with a rising learning rate.
    warmup: float = 0.1
    #: Write into a non-empty ``out`` (``--force``).
    overwrite: bool = False
    #: A progress bar (``--progress``).
    progress: bool = True
    #: Log the loss every N steps (0: never).
    log_every: int = 50


def check_settings(settings: TrainingSettings, error: type[Exception]) -> tuple[Path, Path, Path]:
    """The checks every head runs before it reads data: ``base`` is a model directory, ``out`` passes
    :func:`check_out_dir`, and epochs, batch size and learning rate are positive. Returns
    ``(data, base, out)`` as paths.

    :raises error: naming the setting and the fix.
    """
    data, base, out = Path(settings.data), Path(settings.base), Path(settings.out)
    if not (base / "config.json").is_file():
        raise error(
            f"base model {base} has no config.json: pass a BioGPT model directory "
            "(e.g. one written by `biomine convert fairseq`)"
        )
    check_out_dir(out, settings.overwrite, error)
    epochs, batch_size, lr = settings.epochs, settings.batch_size, settings.lr
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise error(f"epochs ({epochs}) and batch size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    return data, base, out


def check_out_dir(out: Path, overwrite: bool, error: type[Exception]) -> None:
    """Refuse an output path that is a file, or a non-empty directory without ``overwrite``.

    :raises error: naming the path and the fix (``--force``).
    """
    if out.exists() and not out.is_dir():
        raise error(f"output {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(
            f"output directory {out} is not empty: choose a new one, or pass --force (overwrite=True) to write into it"
        )


def fit(
    model,
    examples: Sequence[Any],
    collate: Callable[[Sequence[Any]], dict[str, Any]],
    settings: TrainingSettings,
    device,
    *,
    desc: str,
) -> tuple[int, float]:
    """Train ``model`` (on ``device``, in float32) on ``examples`` as the module docstring says and
    return ``(optimiser steps, mean loss of the last epoch)``. The model is left in train mode."""
    import torch
    from tqdm.auto import tqdm

    if settings.freeze_body:
        for p in model.biogpt.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    epochs, batch_size = settings.epochs, settings.batch_size
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    warm = int(total * settings.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    )
    generator = torch.Generator().manual_seed(settings.seed)  # shuffling, independent of other RNG use

    bar = tqdm(total=total, desc=desc, unit="step", disable=not settings.progress)
    model.train()
    step, epoch_loss = 0, float("nan")
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            losses = []
            for b in range(0, len(order), batch_size):
                batch = collate([examples[i] for i in order[b : b + batch_size]])
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
                if settings.log_every and step % settings.log_every == 0:
                    log.info("step %d/%d epoch %d loss %.4f", step, total, epoch + 1, losses[-1])
            epoch_loss = sum(losses) / len(losses)
            log.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, epoch_loss)
    finally:
        bar.close()
    return step, epoch_loss


def save_fitted(model, tokenizer, out: Path, architecture: str) -> None:
    """Write a fine-tuned model into ``out`` as what it now is: float32 on the CPU, its config naming
    ``architecture`` (the config came from the base), so that the task's ``check_model`` and
    transformers' Auto classes read it as that head."""
    model.eval().to("cpu")
    model.config.extra["architectures"] = [architecture]
    model.config.torch_dtype = "float32"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
