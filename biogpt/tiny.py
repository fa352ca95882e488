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


def write_vocab(out_dir: str | Path, texts: Iterable[str], num_merges: int = 300) -> int:
    """Write vocab.json + merges.txt learned from ``texts``; returns the vocabulary size."""
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
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (out_dir / "merges.txt").write_text("".join(f"{a} {b} {i}\n" for i, (a, b) in enumerate(merges)))
    return len(vocab)


def make_tiny_checkpoint(out_dir: str | Path, texts: Iterable[str], *, hidden_size: int = 32,
                         num_hidden_layers: int = 2, num_attention_heads: int = 4, intermediate_size: int = 64,
                         max_position_embeddings: int = 256, num_merges: int = 300, seed: int = 0,
                         model_cls=BioGptForCausalLM, **config_kwargs) -> Path:
    """Write a random BioGPT of the given size with a vocabulary learned from ``texts``."""
    out_dir = Path(out_dir)
    vocab_size = write_vocab(out_dir, list(texts), num_merges)
    config = BioGptConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                          max_position_embeddings=max_position_embeddings,
                          extra={"architectures": [model_cls.__name__]}, **config_kwargs)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(out_dir)
    return out_dir
