"""Tiny random BioGPT checkpoints in the Hugging Face layout, for tests, demos and smoke runs.

The real weights cannot be downloaded here, so everything downstream of the core (tasks, pipeline,
demo) is exercised on a tiny model whose files have exactly the published layout: ``config.json``,
``model.safetensors``, ``vocab.json`` and ``merges.txt``. The vocabulary is learned from the texts
you pass, with the same pre-tokenisation as BioGPT (Moses, English, aggressive dash splits, XML
escaping) and the subword-nmt BPE algorithm, so the tokenizer code path is the real one.

    from biogpt.tiny import make_tiny_checkpoint
    make_tiny_checkpoint("models/tiny", texts=["Aspirin inhibits COX-1.", ...])
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable

import torch

from .config import BioGptConfig
from .model import BioGptForCausalLM

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _moses_words(texts: Iterable[str]) -> collections.Counter:
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang="en")
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(moses.tokenize(text, aggressive_dash_splits=True, return_str=False, escape=True))
    return counts


def learn_bpe(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """subword-nmt BPE: repeatedly merge the most frequent adjacent pair (ties: first seen)."""
    vocab = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in word_counts.items() if w}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for symbols, count in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=pairs.__getitem__)
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        new_vocab = {}
        for symbols, count in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_vocab[tuple(out)] = count
        vocab = new_vocab
    return merges


def write_vocab(out_dir: str | Path, texts: Iterable[str], num_merges: int = 300, pad_to: int | None = None) -> int:
    """Write vocab.json + merges.txt learned from ``texts``; returns the vocabulary size.

    ``pad_to`` appends unused symbols (``<unused_N>``, never produced by BPE) up to that size, so a
    benchmark model has the embedding and output projection of a real vocabulary (42,384 for BioGPT).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = _moses_words(texts)
    merges = learn_bpe(counts, num_merges)
    symbols: list[str] = []
    chars = sorted({c for w in counts for c in w})
    # Every character both as a word-internal piece and as a word-final piece, then merge results.
    for c in chars:
        symbols += [c, c + "</w>"]
    symbols += [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for s in SPECIALS + symbols:
        vocab.setdefault(s, len(vocab))
    if pad_to is not None and pad_to < len(vocab):
        raise ValueError(f"pad_to={pad_to} is smaller than the learned vocabulary ({len(vocab)})")
    while pad_to is not None and len(vocab) < pad_to:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (out_dir / "merges.txt").write_text("".join(f"{a} {b} {i}\n" for i, (a, b) in enumerate(merges)))
    return len(vocab)


def make_tiny_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    num_merges: int = 300,
    seed: int = 0,
    model_cls=BioGptForCausalLM,
    vocab_size: int | None = None,
    **config_kwargs,
) -> Path:
    """Write a random BioGPT of the given size with a vocabulary learned from ``texts`` (padded with
    unused symbols to ``vocab_size`` when given, e.g. 42,384 for a BioGPT-base sized benchmark)."""
    out_dir = Path(out_dir)
    vocab_size = write_vocab(out_dir, list(texts), num_merges, pad_to=vocab_size)
    config = BioGptConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        extra={"architectures": [model_cls.__name__]},
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(out_dir)
    return out_dir


def make_tiny_task_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    task: str = "re-ddi",
    learned_prompt: int = 9,
    max_source_positions: int | None = None,
    **kwargs,
) -> Path:
    """Write a tiny random prompt-tuned task checkpoint in the layout ``biomine convert fairseq`` writes.

    Like :func:`make_tiny_checkpoint` (same keyword arguments and defaults: ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``max_position_embeddings``,
    ``num_merges``, ``seed``, other keys go to the config), plus what a converted fine-tuned
    checkpoint has (biogpt/fairseq.py):

    - the learned prompt tokens ``learned1..N`` (``N = learned_prompt``) as tokenizer added tokens
      right after the vocabulary (``added_tokens.json``), with ``vocab_size`` counting them;
    - the truncation marker ``...`` as a vocabulary piece (``...</w>``), so sources longer than
      ``max_source_positions`` are cut as the fine-tuning data was;
    - ``biomine_task.json`` from :func:`biogpt.task_spec.task_spec` for ``task`` (``re-ddi``, ``re-dti``,
      ``re-bc5cdr``, ``qa-pubmedqa``, ``dc-hoc``; ``lm`` writes the pre-trained LM's file and no
      prompt tokens), ``max_target_positions`` = ``max_position_embeddings`` and
      ``max_source_positions`` by default 5/8 of it (640 of 1024 as the released RE models),
      capped so that source + prompt + ``</s>`` leave at least one position to generate.

    The result passes :func:`pipeline.tasks.re_format.load_task_settings` for its task.
    """
    from .task_spec import CHECKPOINT_TASKS, TRUNCATION_MARKER, task_spec, write_task_spec
    from .tokenizer import BioGptTokenizer

    if task not in CHECKPOINT_TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(CHECKPOINT_TASKS)}")
    n_prompt = 0 if task == "lm" else learned_prompt
    if task != "lm" and n_prompt < 1:
        raise ValueError(f"a prompt-tuned task checkpoint needs learned_prompt >= 1, got {learned_prompt}")
    sizes = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=256
    )
    sizes.update({k: kwargs.pop(k) for k in list(kwargs) if k in sizes})
    num_merges, seed = kwargs.pop("num_merges", 300), kwargs.pop("seed", 0)
    vocab_size = kwargs.pop("vocab_size", None)  # total, learned prompt tokens included
    max_target = sizes["max_position_embeddings"]
    if task != "lm":
        room = max_target - n_prompt - 2  # </s> + source + prompt, and one position to generate
        if room < 1:
            raise ValueError(
                f"max_position_embeddings={max_target} leaves no room for a source with {n_prompt} prompt tokens"
            )
        if max_source_positions is None:
            max_source_positions = min(max_target * 5 // 8, room)
        if not 1 <= max_source_positions <= room:
            raise ValueError(
                f"max_source_positions must be in 1..{room} for max_position_embeddings="
                f"{max_target} and {n_prompt} prompt tokens, got {max_source_positions}"
            )

    out_dir = Path(out_dir)
    write_vocab(out_dir, list(texts), num_merges)
    vocab_file = out_dir / "vocab.json"
    vocab = json.loads(vocab_file.read_text())
    marker = TRUNCATION_MARKER + "</w>"
    if marker not in vocab:  # a vocabulary piece, as "..." is in BioGPT's dict.txt (id 11475)
        vocab[marker] = len(vocab)
    if vocab_size is not None and vocab_size < len(vocab) + n_prompt:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the learned vocabulary + prompt tokens")
    while vocab_size is not None and len(vocab) < vocab_size - n_prompt:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    tokenizer = BioGptTokenizer.from_pretrained(out_dir)
    learned = [f"learned{i}" for i in range(1, n_prompt + 1)]
    tokenizer.add_tokens(learned)  # as the converter does: ids V0..V0+N-1 after the vocabulary
    tokenizer.save_pretrained(out_dir)

    config = BioGptConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        intermediate_size=sizes["intermediate_size"],
        max_position_embeddings=sizes["max_position_embeddings"],
        extra={"architectures": ["BioGptForCausalLM"]},
        **kwargs,
    )
    torch.manual_seed(seed)
    BioGptForCausalLM(config).save_pretrained(out_dir)
    spec = task_spec(
        task,
        learned=learned,
        prompt_ids=tokenizer.convert_tokens_to_ids(learned),
        sep_token_id=None,
        max_source=max_source_positions if task != "lm" else None,
        max_target=max_target,
        truncation_id=tokenizer.convert_tokens_to_ids(marker) if task != "lm" else None,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    spec["converted_from"] = {
        "checkpoint": None,
        "fairseq_task": None,
        "arch": "tiny random (biogpt.tiny)",
        "data": None,
    }
    write_task_spec(spec, out_dir)
    return out_dir
