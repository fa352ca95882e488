"""Parsers for the output grammars of BioGPT's fine-tuned relation-extraction checkpoints.

Contract:

- :func:`parse_generation` turns one generated text into a :class:`ParseResult`: the relations it
  states plus an :class:`Unparsed` record (text + reason) for everything that did not parse. Nothing
  is dropped: a generation with no parseable sentence yields no relations and at least one
  ``Unparsed`` record. The relations are exactly those of the original post-processing scripts
  (``examples/RE-DDI/postprocess.py``, ``examples/RE-DTI/postprocess.py``,
  ``examples/RE-BC5CDR/postprocess.py`` in microsoft/BioGPT), so evaluating them reproduces the
  original numbers; the ``Unparsed`` records are what those scripts printed and threw away.
- The grammars (:data:`GRAMMARS`; which task uses which is in :mod:`biogpt.task_spec`):

  ========  ==================================================  =============  =================
  task      sentence (anchored at the start, greedy groups)      separator      relation
  ========  ==================================================  =============  =================
  ddi       ``the interaction between A and B is R``             ``"; "``       R (head A, tail B)
  kd-dti    ``the interaction between A and B is R``             ``"; "``       R (drug A, target B)
  bc5cdr    ``the relation between C and D exists``              ``";"``        ``CID`` (C, D)
  ========  ==================================================  =============  =================

  Before splitting, the text is stripped, ONE final ``.`` is removed, and the first prefix pattern of
  the task's list that occurs anywhere in the text cuts the text: only what follows its LAST
  occurrence is kept (``(learned[0-9]+ )+`` - the echoed prompt tokens -, ``we can conclude that``,
  ``we have that``, ``in conclusion,``; BC5CDR tries ``in conclusion ,`` second instead).
  :func:`clean_line` is that cleaning alone, with any prefix list (:data:`PROMPT_PREFIXES` by default,
  also the list of the PubMedQA and HoC scripts: :mod:`pipeline.evaluation.generated`).
- BC5CDR names are mapped to MeSH ids with the document's ``chemical2id`` / ``disease2id`` (exact,
  case-sensitive lookup of the stripped name, ``"-1"`` when absent - as the original, which used the
  split-level ``test.entities.json``; see :func:`pipeline.evaluation.re_data.split_entity_map`).
- :func:`find_evidence` locates head and tail in the source text (case-insensitive, whitespace
  tolerant, whole words) and returns the smallest sentence window containing both, or the smallest
  sentence containing the one that was found, or ``None``.
- :func:`relation_rows` builds rows of :data:`schemas.relations.RELATION_SCHEMA` (one per relation,
  one ``parse_status='unparsed'`` row per unparsed record), evidence offsets indexing the article
  text ``title + " " + abstract`` like entity offsets.

:raises UnknownTaskError: a task name that has no grammar.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from biogpt.task_spec import BY_NAME, RE_TASKS
from pipeline.errors import UnknownTaskError

#: The MeSH id the original BC5CDR post-processing writes for a name it cannot map.
UNMAPPED_ID = "-1"


@dataclass(frozen=True)
class Grammar:
    """One released output grammar (see the module table)."""

    #: The ``output_grammar`` name of ``biomine_task.json`` (:data:`biogpt.task_spec.FINE_TUNED_TASKS`).
    name: str
    #: Prefix patterns in the order the original ``strip_prefix`` tries them.
    prefixes: tuple[str, ...]
    separator: str
    #: BC5CDR strips each piece before matching; DDI/DTI match the raw piece (so ``"a;  b"`` fails there).
    strip_pieces: bool
    pattern: re.Pattern
    #: Human-readable form of ``pattern`` for reasons.
    template: str
    #: Relation type of every match when the grammar has no relation group (BC5CDR).
    fixed_relation: str | None = None


#: The ``strip_prefix`` patterns of examples/RE-DDI, RE-DTI, QA-PubMedQA and DC-HoC/postprocess.py, in
#: the order they are tried (the echoed prompt tokens first).
PROMPT_PREFIXES = ("(learned[0-9]+ )+", "we can conclude that", "we have that", "in conclusion,")
# examples/RE-DDI/postprocess.py and examples/RE-DTI/postprocess.py (identical): prefix list order,
# split on "; ", re.match (anchored at the start only) with greedy groups; groups are (drug, target,
# interaction) and are stripped.
_DDI_PREFIXES = PROMPT_PREFIXES
_INTERACTION = re.compile(r"the interaction between (.*) and (.*) is (.*)")
# examples/RE-BC5CDR/postprocess.py: "in conclusion ," (Moses-spaced comma) is tried second, the
# split is on ";" without the space, and each piece is stripped before the anchored match.
_BC5CDR_PREFIXES = ("(learned[0-9]+ )+", "in conclusion ,", "we can conclude that", "we have that")
_CID = re.compile(r"the relation between (.*) and (.*) exists")

#: By grammar name; a task's grammar is named in :data:`biogpt.task_spec.FINE_TUNED_TASKS`.
GRAMMARS: dict[str, Grammar] = {
    g.name: g
    for g in (
        Grammar("relis-interaction", _DDI_PREFIXES, "; ", False, _INTERACTION, "the interaction between A and B is R"),
        Grammar("relis-relation", _BC5CDR_PREFIXES, ";", True, _CID, "the relation between C and D exists", "CID"),
    )
}


def get_grammar(task: str) -> Grammar:
    """The grammar of relation-extraction task ``task`` (``ddi``, ``kd-dti`` or ``bc5cdr``).

    :raises UnknownTaskError: any other name.
    """
    fine_tuned = BY_NAME.get(task)
    if fine_tuned is None or fine_tuned.grammar not in GRAMMARS:
        raise UnknownTaskError(
            f"no relation-extraction grammar for task {task!r}; use one of {', '.join(sorted(RE_TASKS))}"
        )
    return GRAMMARS[fine_tuned.grammar]


@dataclass(frozen=True)
class Relation:
    """One parsed relation. ``head_id``/``tail_id`` are MeSH ids for BC5CDR (``"-1"`` when unmapped)."""

    head: str
    tail: str
    relation: str
    head_id: str | None = None
    tail_id: str | None = None
    #: index of the piece (of the cleaned text split at the separator) that states it; where in
    #: the text, not what is stated, so equality ignores it
    piece: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Unparsed:
    """Text that did not parse (a piece of the generation, or all of it) and why."""

    text: str
    reason: str
    #: index of the piece, as :attr:`Relation.piece`; None for the whole generation
    piece: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ParseResult:
    """What one generation says: parsed relations plus unparsed records; ``raw`` is the input text."""

    task: str
    raw: str
    relations: tuple[Relation, ...]
    unparsed: tuple[Unparsed, ...]
    #: how many pieces the cleaned text split into (the LAST pieces of the raw generation: the
    #: prefix cut and the final "." remove only text at its ends)
    pieces: int = 0

    @property
    def failed(self) -> bool:
        """True when nothing parsed: the original scripts' "Failed" line (an empty prediction)."""
        return not self.relations


def clean_generation(text: str, task: str) -> str:
    """The text the original splits: stripped, one final ``.`` removed, prompt/prefix phrases cut.

    :raises UnknownTaskError: unknown task.
    """
    return clean_line(text, get_grammar(task).prefixes)


def clean_line(text: str, prefixes: Sequence[str] = PROMPT_PREFIXES) -> str:
    """One line as every original ``postprocess.py`` cleans it before matching its grammar: stripped,
    ONE final ``.`` removed, then the first of ``prefixes`` (in order) found anywhere cuts the line,
    keeping only the stripped text after that pattern's LAST occurrence."""
    line = text.strip()
    # All postprocess.py read the line stripped and drop ONE trailing "." (BC5CDR's check is unguarded
    # and crashes on an empty line; an empty line simply stays empty here).
    if line.endswith("."):
        line = line[:-1]
    # strip_prefix: the first pattern (in list order) found anywhere wins; the text after its last
    # occurrence is kept. re.split puts captured groups between the pieces, but the last element is
    # always the text after the final match.
    for prefix in prefixes:
        if re.search(prefix, line) is not None:
            line = re.split(prefix, line)[-1].strip()
            break
    return line


def parse_generation(
    text: str,
    task: str,
    *,
    chemical2id: Mapping[str, str] | None = None,
    disease2id: Mapping[str, str] | None = None,
) -> ParseResult:
    """Parse one generated text of ``task`` (see the module docstring for the rules).

    ``chemical2id``/``disease2id`` (BC5CDR only) map lower-cased names to MeSH ids; absent names (or
    absent maps) give :data:`UNMAPPED_ID`.

    :raises UnknownTaskError: unknown task.
    """
    grammar = get_grammar(task)
    line = clean_generation(text, task)
    relations: list[Relation] = []
    unparsed: list[Unparsed] = []
    pieces = line.split(grammar.separator)
    for index, piece in enumerate(pieces):
        candidate = piece.strip() if grammar.strip_pieces else piece
        match = grammar.pattern.match(candidate)
        if match is None:
            # Empty pieces (e.g. after a trailing separator) carry nothing to keep.
            if piece.strip():
                unparsed.append(Unparsed(piece, f"does not match the {task} grammar '{grammar.template}'", index))
            continue
        groups = [g.strip() for g in match.groups()]
        if grammar.fixed_relation is None:
            head, tail, relation = groups
            relations.append(Relation(head=head, tail=tail, relation=relation, piece=index))
        else:
            head, tail = groups
            relations.append(
                Relation(
                    head=head,
                    tail=tail,
                    relation=grammar.fixed_relation,
                    head_id=(chemical2id or {}).get(head, UNMAPPED_ID),
                    tail_id=(disease2id or {}).get(tail, UNMAPPED_ID),
                    piece=index,
                )
            )
    if not relations and not unparsed:
        unparsed.append(Unparsed(text, "empty generation" if not line.strip() else "no relation sentence"))
    return ParseResult(task=task, raw=text, relations=tuple(relations), unparsed=tuple(unparsed), pieces=len(pieces))


# --- evidence ------------------------------------------------------------------------------------

# A sentence ends at a run of . ! ? followed by whitespace or the end of the text; decimals ("2.5")
# and inner dots ("i.v.)") do not end one. Abbreviations ("e.g. x") do: evidence is then one window
# wider than needed, never wrong.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class Evidence:
    """A character span of the source text; ``match`` says which entity strings it contains."""

    start: int
    end: int
    text: str
    match: str  # "both" | "head" | "tail"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, surrounding whitespace excluded, in order."""
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    trimmed = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            trimmed.append((s, e))
    return trimmed


def _name_pattern(name: str) -> re.Pattern | None:
    words = name.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    # Whole words only where the name starts/ends with a word character ("ca" must not hit "cause");
    # any run of whitespace matches a space, since generation normalises newlines and double spaces.
    left = r"(?<!\w)" if _WORD_CHAR.match(words[0][0]) else ""
    right = r"(?!\w)" if _WORD_CHAR.match(words[-1][-1]) else ""
    return re.compile(left + body + right, re.IGNORECASE)


def _occurrences(text: str, name: str) -> list[tuple[int, int]]:
    pattern = _name_pattern(name)
    return [] if pattern is None else [m.span() for m in pattern.finditer(text)]


def find_evidence(text: str, head: str, tail: str) -> Evidence | None:
    """The smallest sentence window of ``text`` that contains ``head`` and ``tail``.

    Matching is case-insensitive (RE inputs are lower-cased, so pass the original-case source to get
    offsets into it). When only one of the two occurs, the smallest sentence containing it is returned
    (``match`` says which); ``None`` when neither occurs. Ties go to the earliest window.
    """
    sentences = sentence_spans(text)
    if not sentences:
        return None
    starts = [s for s, _ in sentences]

    def sentence_of(pos: int) -> int:
        return max(bisect.bisect_right(starts, pos) - 1, 0)

    def window(first: tuple[int, int], second: tuple[int, int]) -> tuple[int, int]:
        lo = sentence_of(min(first[0], second[0]))
        hi = sentence_of(max(first[1], second[1]) - 1)
        return sentences[lo][0], sentences[hi][1]

    heads, tails = _occurrences(text, head), _occurrences(text, tail)
    if heads and tails:
        span = min((window(h, t) for h in heads for t in tails), key=lambda w: (w[1] - w[0], w[0]))
        kind = "both"
    elif heads or tails:
        span = min((window(o, o) for o in heads or tails), key=lambda w: (w[1] - w[0], w[0]))
        kind = "head" if heads else "tail"
    else:
        return None
    return Evidence(span[0], span[1], text[span[0] : span[1]], kind)


# --- rows ----------------------------------------------------------------------------------------


def relation_rows(
    result: ParseResult,
    *,
    pmid: int,
    text: str,
    model_id: str,
    version: int = 1,
    decoding: Mapping[str, Any] | None = None,
    input_truncated: bool | None = None,
    piece_logprobs: Sequence[tuple[float, int] | None] | None = None,
    generation_logprob: tuple[float, int] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :data:`schemas.relations.RELATION_SCHEMA` for one parsed generation.

    One ``parse_status='ok'`` row per relation, its evidence searched in ``text`` (the article text
    ``title + " " + abstract`` in its original case, so the offsets match the entity rows'), then one
    ``parse_status='unparsed'`` row per :class:`Unparsed` record, its reason naming the piece.
    ``piece_logprobs`` (per piece of the cleaned text: summed log-probability, token count) and
    ``generation_logprob`` (the whole generation's, for a whole-text unparsed record) fill
    ``logprob`` / ``logprob_tokens``; without them those stay null.
    """

    def scored(piece: int | None) -> dict[str, Any]:
        found = (
            generation_logprob
            if piece is None
            else (piece_logprobs[piece] if piece_logprobs is not None and piece < len(piece_logprobs) else None)
        )
        return {"logprob": found[0], "logprob_tokens": found[1]} if found else {}

    common = {
        "pmid": pmid,
        "version": version,
        "task": result.task,
        "raw_generation": result.raw,
        "model_id": model_id,
        "decoding": dict(decoding) if decoding is not None else None,
        "input_truncated": input_truncated,
    }
    rows = []
    for rel in result.relations:
        evidence = find_evidence(text, rel.head, rel.tail)
        rows.append(
            {
                **common,
                "head": rel.head,
                "head_id": rel.head_id,
                "tail": rel.tail,
                "tail_id": rel.tail_id,
                "relation": rel.relation,
                "evidence_start": evidence.start if evidence else None,
                "evidence_end": evidence.end if evidence else None,
                "evidence_text": evidence.text if evidence else None,
                "evidence_match": evidence.match if evidence else None,
                "parse_status": "ok",
                "reason": None,
                **scored(rel.piece),
            }
        )
    for item in result.unparsed:
        reason = item.reason if item.text == result.raw else f"{item.reason}: {item.text!r}"
        rows.append({**common, "parse_status": "unparsed", "reason": reason, **scored(item.piece)})
    return rows
