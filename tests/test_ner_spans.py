"""NER span logic: schemes, span <-> tag round trips (synthetic and BC5CDR), windows, strict metrics."""

from __future__ import annotations

import re

import pytest

from biogpt.errors import ConfigError
from pipeline.tasks.ner_spans import (
    IGNORE_INDEX,
    LabelSchemeError,
    Span,
    decode_tags,
    encode_spans,
    entity_rows,
    label_list,
    mention_scores,
    merge_windows,
    parse_label_list,
    plan_windows,
)
from pipeline.tasks.pubtator import read_pubtator

TEXT = "Aspirin and acetyl salicylic acid cause Reye syndrome."


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A whitespace/punctuation tokenizer's offsets, after a special token at (0, 0)."""
    return [(0, 0)] + [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


OFFSETS = word_offsets(TEXT)
GOLD = [Span(0, 7, "Chemical"), Span(12, 33, "Chemical"), Span(40, 53, "Disease")]


def test_label_lists_and_parsing():
    assert label_list(["Chemical", "Disease"]) == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    bioes = label_list(["Gene"], "BIOES")
    assert bioes == ["O", "B-Gene", "I-Gene", "E-Gene", "S-Gene"]
    assert parse_label_list(bioes) == ("BIOES", ["Gene"])
    assert parse_label_list(["B-Disease", "O", "I-Disease"]) == ("BIO", ["Disease"])


@pytest.mark.parametrize(
    "labels, message",
    [
        (["O", "B-Gene"], "missing I-Gene, extra or repeated none$"),
        (["O", "B-Gene", "I-Gene", "I-Gene"], "missing none, extra or repeated I-Gene$"),
        (["O", "X-Gene"], "is not O, B-T"),
        (["O", "B-Gene", "I-Gene", "S-Gene"], "missing E-Gene, extra or repeated none$"),
    ],
)
def test_bad_label_lists_say_what_is_wrong(labels, message):
    with pytest.raises(LabelSchemeError, match=message):
        parse_label_list(labels)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_synthetic_round_trip(scheme):
    labels = label_list(["Chemical", "Disease"], scheme)
    encoded = encode_spans(OFFSETS, GOLD, labels)
    assert encoded.tags[0] == IGNORE_INDEX and not encoded.unaligned and not encoded.conflicts
    names = [labels[t] if t != IGNORE_INDEX else None for t in encoded.tags]
    if scheme == "BIO":
        assert names[1:7] == ["B-Chemical", "O", "B-Chemical", "I-Chemical", "I-Chemical", "O"]
    else:
        assert names[1:7] == ["S-Chemical", "O", "B-Chemical", "I-Chemical", "E-Chemical", "O"]
    probs = [0.5] + [0.9] * (len(OFFSETS) - 1)
    probs[3] = 0.6  # "acetyl"
    spans = decode_tags(encoded.tags, OFFSETS, labels, TEXT, probs)
    assert [(s.start, s.end, s.label, s.text) for s in spans] == [
        (0, 7, "Chemical", "Aspirin"),
        (12, 33, "Chemical", "acetyl salicylic acid"),
        (40, 53, "Disease", "Reye syndrome"),
    ]
    assert spans[1].score == pytest.approx((0.6 + 0.9 + 0.9) / 3)


def test_lenient_decoding_of_ill_formed_sequences():
    labels = label_list(["Chemical", "Disease"], "BIOES")
    idx = {label: i for i, label in enumerate(labels)}
    # I-Disease after O starts an entity; E-Chemical after a Disease entity starts (and ends) a new one;
    # the special token in the middle ends the open entity.
    offsets = [(0, 0), (0, 4), (5, 9), (10, 14), (0, 0), (15, 19), (20, 24)]
    text = "aaaa bbbb cccc dddd eeee"
    tags = [
        IGNORE_INDEX,
        idx["I-Disease"],
        idx["E-Chemical"],
        idx["I-Chemical"],
        IGNORE_INDEX,
        idx["I-Chemical"],
        idx["O"],
    ]
    spans = decode_tags(tags, offsets, labels, text)
    assert [(s.start, s.end, s.label) for s in spans] == [
        (0, 4, "Disease"),
        (5, 9, "Chemical"),
        (10, 14, "Chemical"),
        (15, 19, "Chemical"),
    ]
    assert all(s.score is None for s in spans)


def test_unaligned_and_conflicting_spans_are_reported():
    labels = label_list(["Chemical", "Disease"])
    encoded = encode_spans(OFFSETS, [Span(1, 7, "Chemical"), Span(14, 20, "Chemical"), Span(5, 30, "Disease")], labels)
    assert encoded.unaligned == [Span(1, 7, "Chemical"), Span(14, 20, "Chemical")]
    assert encoded.conflicts == [Span(5, 30, "Disease")]
    with pytest.raises(LabelSchemeError, match="'Gene' is not one of the types"):
        encode_spans(OFFSETS, [Span(0, 7, "Gene")], labels)


@pytest.mark.parametrize("n, window, stride", [(10, 4, 3), (10, 4, 4), (3, 4, 2), (17, 5, 1), (100, 30, 20)])
def test_windows_cover_everything_within_the_limit(n, window, stride):
    windows = plan_windows(n, window, stride)
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert all(0 < end - start <= window for start, end in windows)
    assert all(b[0] <= a[1] for a, b in zip(windows, windows[1:]))  # no gaps
    assert all(b[0] - a[0] <= stride for a, b in zip(windows, windows[1:]))


@pytest.mark.parametrize("window, stride", [(0, 1), (4, 0), (4, 5)])
def test_bad_window_settings(window, stride):
    with pytest.raises(ConfigError, match="stride"):
        plan_windows(10, window, stride)


def test_merge_prefers_the_window_where_a_token_is_farthest_from_an_edge():
    windows = plan_windows(10, 6, 2)
    assert windows == [(0, 6), (2, 8), (4, 10)]
    # Each window predicts its own index as the tag and 0.1*index as the probability.
    predictions = [([k] * (e - s), [0.1 * k] * (e - s)) for k, (s, e) in enumerate(windows)]
    tags, probs = merge_windows(10, windows, predictions)
    # token 3: distances 2 (w0), 1 (w1) -> w0; token 4: 1, 2, 0 -> w1; token 5: 0, 2, 1 -> w1;
    # token 6: w1 1, w2 2 -> w2; token 7: w1 0, w2 2 -> w2. Ties go to the earlier window (token 2: w0).
    assert tags == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert probs[4] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="has 5 tags"):
        merge_windows(10, windows, [([0] * 5, [0.0] * 5)] * 3)


def test_windowed_prediction_with_bad_edges_recovers_the_spans():
    """Windows that get the 2 tokens nearest their edges wrong still merge into the gold tags."""
    text = " ".join(f"w{i}" for i in range(60))
    offsets = [m.span() for m in re.finditer(r"\S+", text)]
    gold = [Span(offsets[i][0], offsets[i + 2][1], "Gene") for i in range(0, 57, 7)]
    labels = label_list(["Gene"], "BIOES")
    tags = encode_spans(offsets, gold, labels).tags
    windows = plan_windows(len(offsets), 16, 10)
    predictions = []
    for start, end in windows:
        window_tags = tags[start:end]
        for k in (0, 1, len(window_tags) - 2, len(window_tags) - 1):
            if not (start == 0 and k < 2) and not (end == len(offsets) and k >= len(window_tags) - 2):
                window_tags[k] = labels.index("S-Gene")
        predictions.append((window_tags, [1.0] * len(window_tags)))
    merged, _ = merge_windows(len(offsets), windows, predictions)
    assert merged == tags
    decoded = decode_tags(merged, offsets, labels, text)
    assert [(s.start, s.end) for s in decoded] == [(s.start, s.end) for s in gold]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_bc5cdr_gold_mentions_round_trip(shared, scheme):
    """Every BC5CDR test mention aligned with word/punctuation tokens is recovered exactly (F1 1.0);
    the few whose edges fall inside a token ("Ca" in "Ca2", "acid" in "acidA") are exactly the ones
    reported as unaligned."""
    docs = read_pubtator(shared("data", "bc5cdr", "CDR_TestSet.PubTator.txt"))
    labels = label_list(["Chemical", "Disease"], scheme)
    gold, predicted, unaligned, expected_unaligned = [], [], [], []
    for doc in docs:
        offsets = word_offsets(doc.text)
        starts, ends = {s for s, _ in offsets[1:]}, {e for _, e in offsets[1:]}
        spans = [Span(m.start, m.end, m.type) for m in doc.mentions]
        encoded = encode_spans(offsets, spans, labels)
        assert not encoded.conflicts
        unaligned += [(doc.pmid, s.start, s.end) for s in encoded.unaligned]
        expected_unaligned += [(doc.pmid, s.start, s.end) for s in spans if s.start not in starts or s.end not in ends]
        aligned = {(s.start, s.end) for s in spans} - {(s.start, s.end) for s in encoded.unaligned}
        gold += [(doc.pmid, s.start, s.end, s.label) for s in spans if (s.start, s.end) in aligned]
        for s in decode_tags(encoded.tags, offsets, labels, doc.text):
            assert s.text == doc.text[s.start : s.end]
            if (s.start, s.end) in aligned:
                predicted.append((doc.pmid, s.start, s.end, s.label))
    assert sorted(unaligned) == sorted(expected_unaligned) and 0 < len(unaligned) < 10
    scores = mention_scores(gold, predicted)
    assert len(gold) == 9809 - len(unaligned)
    assert scores["micro"].f1 == scores["Chemical"].f1 == scores["Disease"].f1 == 1.0


def test_mention_scores_from_counts():
    gold = [("1", 0, 5, "Chemical"), ("1", 10, 15, "Disease"), ("2", 0, 5, "Chemical"), ("2", 0, 5, "Chemical")]
    predicted = [("1", 0, 5, "Chemical"), ("1", 10, 14, "Disease"), ("2", 0, 5, "Disease"), ("3", 1, 2, "Gene")]
    scores = mention_scores(gold, predicted)
    assert (scores["Chemical"].tp, scores["Chemical"].fp, scores["Chemical"].fn) == (1, 0, 1)
    assert (scores["Disease"].tp, scores["Disease"].fp, scores["Disease"].fn) == (0, 2, 1)
    assert scores["Disease"].f1 == 0.0
    assert (scores["Gene"].precision, scores["Gene"].recall) == (0.0, 0.0)
    micro = scores["micro"]
    assert (micro.tp, micro.fp, micro.fn) == (1, 3, 2)
    assert micro.f1 == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))


def test_entity_rows_carry_span_fields():
    rows = entity_rows([Span(0, 7, "Chemical", "Aspirin", 0.9)], pmid=5, model_id="ner-bc5cdr")
    assert rows == [
        {
            "pmid": 5,
            "version": 1,
            "start": 0,
            "end": 7,
            "label": "Chemical",
            "text": "Aspirin",
            "score": 0.9,
            "model_id": "ner-bc5cdr",
        }
    ]
