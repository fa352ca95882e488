"""NER span logic over BPE tokens: label schemes, span <-> tag conversion, windows, strict metrics.

Everything works on token character offsets: one ``(start, end)`` per token into the ORIGINAL text
(title + " " + abstract, not the Moses-escaped text), ``(0, 0)`` for special tokens such as the
leading ``</s>``. Nothing here depends on the model or the tokenizer.

Contract:

- :func:`label_list` builds the label list of a scheme (``BIO``: ``O``, then ``B-T``, ``I-T`` per type;
  ``BIOES``: ``O``, then ``B-T``, ``I-T``, ``E-T``, ``S-T``); :func:`parse_label_list` checks a
  checkpoint's ``id2label`` and returns its scheme and types.
- :func:`encode_spans` tags tokens from gold spans: a token belongs to a span when their character
  ranges overlap; specials get :data:`IGNORE_INDEX`. Spans whose edges fall inside a token are tagged
  anyway and reported as ``unaligned``; a span overlapping an already tagged one is skipped and
  reported as a ``conflict`` (BIO cannot nest).
- :func:`decode_tags` turns predicted tag ids (+ per-token probabilities of those tags) into
  :class:`Span` s: first token start to last token end, label, ``text[start:end]`` and
  score = mean token probability. Ill-formed sequences are read leniently, as conlleval does: an
  ``I-T`` (or ``E-T``) that does not continue a ``T`` entity starts one; specials end entities.
- :func:`plan_windows` covers a long token sequence with windows of at most ``window`` tokens whose
  starts are ``stride`` apart (the last one ends at the sequence end); :func:`merge_windows` takes, for
  each token, the prediction of the window in which it lies farthest from an edge (ties: the earlier
  window). For BioGPT, ``window`` = max positions - 1 (the ``</s>`` each window input starts with).
- :func:`mention_scores` is strict mention-level P/R/F1: a prediction counts only with the same
  document, start, end and label; per type and ``micro`` over all types; duplicates count once.

:raises LabelSchemeError: labels that are not a BIO/BIOES scheme.
:raises ConfigError: window settings that cannot cover a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from biogpt.errors import ConfigError
from pipeline.errors import LabelSchemeError

#: Tag of tokens that carry no label (specials); the ignore index of PyTorch's cross-entropy.
IGNORE_INDEX = -100
SCHEMES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S")}

Offsets = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Span:
    """An entity mention: ``text[start:end]`` of the original text."""

    start: int
    end: int
    label: str
    text: str | None = None
    score: float | None = None


def label_list(types: Sequence[str], scheme: str = "BIO") -> list[str]:
    """``["O", "B-T", "I-T", ...]`` for entity ``types`` in the given order.

    :raises LabelSchemeError: unknown scheme, or a type that is empty, repeated or contains whitespace.
    """
    if scheme not in SCHEMES:
        raise LabelSchemeError(f"unknown tagging scheme {scheme!r}; use one of {', '.join(sorted(SCHEMES))}")
    if len(set(types)) != len(types) or any(not t or any(c.isspace() for c in t) for t in types):
        raise LabelSchemeError(
            f"entity types must be distinct non-empty words, got {', '.join(repr(t) for t in types)}"
        )
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in SCHEMES[scheme]]


def parse_label_list(labels: Sequence[str]) -> tuple[str, list[str]]:
    """(scheme, entity types) of a label list such as a checkpoint's ``id2label`` values.

    :raises LabelSchemeError: the list is not exactly ``O`` plus every prefix of BIO or BIOES for each
        type (the message shows what is missing or extra).
    """
    types: list[str] = []
    for label in labels:
        if label != "O":
            prefix, dash, kind = label.partition("-")
            if not dash or prefix not in SCHEMES["BIOES"] or not kind:
                raise LabelSchemeError(f"label {label!r} is not O, B-T, I-T, E-T or S-T; labels: {', '.join(labels)}")
            if kind not in types:
                types.append(kind)
    prefixes = {label.partition("-")[0] for label in labels if label != "O"}
    scheme = "BIOES" if prefixes & {"E", "S"} else "BIO"
    expected = label_list(types, scheme)
    if sorted(expected) != sorted(labels):
        raise LabelSchemeError(
            f"labels {', '.join(labels)} are not a complete {scheme} scheme: missing "
            f"{', '.join(sorted(set(expected) - set(labels))) or 'none'}, extra or repeated "
            f"{', '.join(sorted(_extra(labels, expected))) or 'none'}"
        )
    return scheme, types


def _extra(labels: Sequence[str], expected: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    extra = set()
    for label in labels:
        if label in seen or label not in expected:
            extra.add(label)
        seen.add(label)
    return extra


def _is_special(offset: tuple[int, int]) -> bool:
    return offset[0] == offset[1]


# --- spans -> tags -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Per-token tag ids plus the gold spans that could not be encoded exactly."""

    tags: list[int]
    #: Spans tagged, but whose first/last token reaches outside the span (decoding widens them).
    unaligned: list[Span]
    #: Spans not tagged because they overlap an earlier span, or cover no token.
    conflicts: list[Span]


def encode_spans(offsets: Offsets, spans: Iterable[Span], labels: Sequence[str]) -> Encoded:
    """Tag ids for tokens with ``offsets`` from gold ``spans`` (see the module docstring).

    Spans are taken by start (longer first at the same start).

    :raises LabelSchemeError: ``labels`` is not a scheme, or a span label is not one of its types.
    """
    scheme, types = parse_label_list(labels)
    index = {label: i for i, label in enumerate(labels)}
    tags = [IGNORE_INDEX if _is_special(o) else index["O"] for o in offsets]
    unaligned: list[Span] = []
    conflicts: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.label not in types:
            raise LabelSchemeError(f"span label {span.label!r} is not one of the types {types}")
        covered = [i for i, (s, e) in enumerate(offsets) if not _is_special((s, e)) and s < span.end and e > span.start]
        if not covered or any(tags[i] != index["O"] for i in covered):
            conflicts.append(span)
            continue
        if offsets[covered[0]][0] != span.start or offsets[covered[-1]][1] != span.end:
            unaligned.append(span)
        if scheme == "BIOES" and len(covered) == 1:
            tags[covered[0]] = index[f"S-{span.label}"]
            continue
        for k, i in enumerate(covered):
            last = k == len(covered) - 1
            prefix = "B" if k == 0 else ("E" if last and scheme == "BIOES" else "I")
            tags[i] = index[f"{prefix}-{span.label}"]
    return Encoded(tags, unaligned, conflicts)


# --- tags -> spans -------------------------------------------------------------------------------


def decode_tags(
    tag_ids: Sequence[int],
    offsets: Offsets,
    labels: Sequence[str],
    text: str,
    probs: Sequence[float] | None = None,
) -> list[Span]:
    """Spans from predicted ``tag_ids`` (one per token; :data:`IGNORE_INDEX` allowed) and offsets.

    ``probs[i]`` is the probability of ``tag_ids[i]``; a span's score is their mean over its tokens
    (``None`` without ``probs``).

    :raises LabelSchemeError: ``labels`` is not a scheme.
    :raises ValueError: ``tag_ids``, ``offsets`` and ``probs`` differ in length, or a tag id is out of range.
    """
    parse_label_list(labels)
    if len(tag_ids) != len(offsets) or (probs is not None and len(probs) != len(tag_ids)):
        raise ValueError(f"{len(tag_ids)} tags, {len(offsets)} offsets and {len(probs or [])} probabilities differ")
    spans: list[Span] = []
    current: list[int] = []  # token indices of the open entity
    current_type: str | None = None

    def close() -> None:
        nonlocal current, current_type
        if current and current_type is not None:  # an open entity always has its type
            start, end = offsets[current[0]][0], offsets[current[-1]][1]
            score = sum(probs[i] for i in current) / len(current) if probs is not None else None
            spans.append(Span(start, end, current_type, text[start:end], score))
        current, current_type = [], None

    for i, tag in enumerate(tag_ids):
        if tag == IGNORE_INDEX or _is_special(offsets[i]):
            close()
            continue
        if not 0 <= tag < len(labels):
            raise ValueError(f"tag id {tag} at token {i} is outside the {len(labels)} labels")
        label = labels[tag]
        if label == "O":
            close()
            continue
        prefix, _, kind = label.partition("-")
        continues = current_type == kind and prefix in ("I", "E")
        if not continues:
            close()
            current_type = kind
        current.append(i)
        if prefix in ("E", "S"):
            close()
    close()
    return spans


# --- windows -------------------------------------------------------------------------------------


def tokenize(tok, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, offsets) per text, without the leading </s> (windows add their own); shared by NER and
    the windowed sequence classifier of ``classify``."""
    enc = tok(list(texts), return_offsets_mapping=True)
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        # A single text is [</s>] + pieces; everything after the first id indexes the text.
        out.append((list(ids[1:]), [tuple(o) for o in offsets[1:]]))
    return out


def plan_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token windows of at most ``window`` tokens, starts ``stride`` apart, covering all.

    :raises ConfigError: ``window`` < 1, or ``stride`` not in 1..``window`` (windows would leave gaps).
    """
    if window < 1 or not 1 <= stride <= window:
        raise ConfigError(
            f"NER windows need window >= 1 and 1 <= stride <= window (got window={window}, stride={stride}); "
            "set stride below the window to overlap"
        )
    if n_tokens <= window:
        return [(0, n_tokens)]
    spans = [(s, s + window) for s in range(0, n_tokens - window + 1, stride)]
    if spans[-1][1] < n_tokens:
        spans.append((n_tokens - window, n_tokens))
    return spans


def merge_windows(
    n_tokens: int,
    windows: Sequence[tuple[int, int]],
    predictions: Sequence[tuple[Sequence[int], Sequence[float]]],
) -> tuple[list[int], list[float]]:
    """Per-token (tag ids, probabilities) merged from per-window predictions (see module docstring).

    :raises ValueError: a window's prediction has the wrong length, or a token is in no window.
    """
    if len(windows) != len(predictions):
        raise ValueError(f"{len(windows)} windows but {len(predictions)} predictions")
    best = [(-1, 0.0, IGNORE_INDEX)] * n_tokens  # (distance to the nearest edge, prob, tag)
    for (start, end), (tags, probs) in zip(windows, predictions):
        if len(tags) != end - start or len(probs) != end - start:
            raise ValueError(f"window [{start}, {end}) has {len(tags)} tags and {len(probs)} probabilities")
        for k, i in enumerate(range(start, end)):
            distance = min(i - start, end - 1 - i)
            if distance > best[i][0]:  # strict: the earlier window keeps a tie
                best[i] = (distance, probs[k], tags[k])
    uncovered = [i for i, b in enumerate(best) if b[0] < 0]
    if uncovered:
        raise ValueError(f"tokens {uncovered[:5]}... are in no window")
    return [b[2] for b in best], [b[1] for b in best]


# --- metrics -------------------------------------------------------------------------------------

Mention = tuple[Any, int, int, str]  # (document id, start, end, label)


@dataclass(frozen=True)
class MentionScore:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


def _score(tp: int, fp: int, fn: int) -> MentionScore:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return MentionScore(tp, fp, fn, precision, recall, f1)


def mention_scores(gold: Iterable[Mention], predicted: Iterable[Mention]) -> dict[str, MentionScore]:
    """Strict mention-level scores per label, plus ``"micro"`` over all labels."""
    gold_set, pred_set = set(gold), set(predicted)
    scores = {}
    for label in sorted({m[3] for m in gold_set | pred_set}):
        g = {m for m in gold_set if m[3] == label}
        p = {m for m in pred_set if m[3] == label}
        scores[label] = _score(len(g & p), len(p - g), len(g - p))
    tp = len(gold_set & pred_set)
    scores["micro"] = _score(tp, len(pred_set) - tp, len(gold_set) - tp)
    return scores


def entity_rows(spans: Iterable[Span], *, pmid: int, model_id: str, version: int = 1) -> list[dict[str, Any]]:
    """Rows of :data:`schemas.entities.ENTITY_SCHEMA` for one article's spans."""
    return [
        {
            "pmid": pmid,
            "version": version,
            "start": s.start,
            "end": s.end,
            "label": s.label,
            "text": s.text,
            "score": s.score,
            "model_id": model_id,
        }
        for s in spans
    ]
