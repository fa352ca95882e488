"""HoC (Hallmarks of Cancer) labels as the released ``dc-hoc`` checkpoint writes them: the one home of
the 11 classes and the answer parsing, shared by the ``classify`` job task and ``biomine eval hoc``.

Contract:

- :data:`HOC_CLASSES` are the classes of microsoft/BioGPT ``examples/DC-HoC/hard_match_evaluation.py``,
  in its order (``empty``: no hallmark).
- :data:`LABELS` is the answer sentence of ``postprocess.py`` (``re.search``, not anchored);
  :func:`extract_labels` is that script on one generated line: cleaned as every ``postprocess.py``
  (:func:`pipeline.tasks.re_grammar.clean_line`), then the text after the sentence, stripped, or
  ``None`` (the script's ``failed``).
- :func:`label_set` is the binarised row of a label string (its ``|`` pieces, stripped, that are
  classes), as ``hard_match_evaluation.py`` binarises.
- :func:`parse_labels` is the job task's reading of one line: the same extraction, then every piece
  accounted for (:class:`LabelParse`): ``ok`` with the classes it names (``empty`` included, duplicates
  once) when every non-empty piece is a class; ``unparsed`` with a reason otherwise (no answer
  sentence, nothing after it, or pieces that are no class - the known ones are still returned), so
  the task keeps what the evaluation would silently drop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .re_grammar import clean_line

#: The classes of hard_match_evaluation.py, in its order (``empty``: no hallmark).
HOC_CLASSES = (
    "tumor promoting inflammation",
    "inducing angiogenesis",
    "evading growth suppressors",
    "resisting cell death",
    "cellular energetics",
    "empty",
    "genomic instability and mutation",
    "sustaining proliferative signaling",
    "avoiding immune destruction",
    "activating invasion and metastasis",
    "enabling replicative immortality",
)
#: The class that means "no hallmark".
EMPTY = "empty"
#: The target sentence of examples/DC-HoC (``the type of this document is a|b.``).
LABELS = re.compile(r"the type of this document is(.*)")
#: What separates labels in a target.
SEPARATOR = "|"


def extract_labels(line: str) -> str | None:
    """The label string ``postprocess.py`` extracts from one generated line, None for its ``failed``."""
    match = LABELS.search(clean_line(line))
    return match.group(1).strip() if match is not None else None


def label_set(labels: str) -> frozenset[str]:
    """The binarised row of a label string: its ``|`` pieces, stripped, that are HoC classes."""
    return frozenset(piece.strip() for piece in labels.strip().split(SEPARATOR)) & frozenset(HOC_CLASSES)


@dataclass(frozen=True)
class LabelParse:
    """One generated line read as labels: ``status`` ``ok`` | ``unparsed``, the classes it names (in
    the order generated, each once), the pieces in generation order (for aligning scores), and why
    it did not parse (None for ``ok``)."""

    status: str
    labels: tuple[str, ...]
    pieces: tuple[str, ...]
    reason: str | None = None


def parse_labels(line: str) -> LabelParse:
    """The labels of one generated line (module docstring)."""
    if not line.strip():
        return LabelParse("unparsed", (), (), "empty generation")
    found = extract_labels(line)
    if found is None:
        return LabelParse("unparsed", (), (), "no answer sentence ('the type of this document is ...')")
    if not found:
        return LabelParse("unparsed", (), (), "no label after the answer sentence")
    pieces = tuple(piece.strip() for piece in found.split(SEPARATOR))
    labels = tuple(dict.fromkeys(p for p in pieces if p in HOC_CLASSES))
    unknown = [p for p in pieces if p not in HOC_CLASSES]
    if unknown:
        named = ", ".join(repr(u) for u in unknown)
        return LabelParse("unparsed", labels, pieces, f"not a HoC class: {named}")
    return LabelParse("ok", labels, pieces)
