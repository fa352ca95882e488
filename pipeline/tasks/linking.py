"""Entity linking: a mention's text to a concept identifier (MeSH, DrugBank) through a dictionary.

Contract (the matching rules, in the order they are tried; the first that finds a concept wins):

1. ``exact``: the mention's key (:func:`normalise`: Unicode NFKC, case folded, Greek letters
   spelled out, every run of characters other than letters and digits one space) equals a
   dictionary name's key. "5-Fluorouracil", "5 fluorouracil" and "5-FLUOROURACIL" are one key.
2. ``abbreviation``: the mention is a short form defined in the same abstract as
   ``long form (SF)`` (Schwartz & Hearst 2003, :func:`abbreviations`) and its long form links
   by rules 1, 3 or 4; "5-FU" after "5-fluorouracil (5-FU)" links to fluorouracil.
3. ``salt``: without a trailing salt or form word (hydrochloride, sodium, sulfate, mesylate ...,
   :data:`SALT_WORDS`): "doxorubicin hydrochloride" to doxorubicin when the salt is not a
   concept of its own.
4. ``plural``: the last word made singular (``-ies`` to ``-y``; ``-es`` off after x, ch, sh, ss;
   ``-s`` off, and for ``-ses`` then ``-es``): "anthracyclines", "seizures", "diseases".

Candidates must have the mention's type when both are known (a Chemical mention never links to a
disease). Several concepts for one key: those whose preferred name it is win; then MeSH descriptors
over supplementary records (ids ``D`` before ``C``), then one vocabulary's concept over others only
if it is the only one left. Still more than one: the mention stays unlinked (``ambiguous``), never a
guess; so does a mention no rule finds (``unlinked``).

:raises SchemaMismatchError: from :class:`Linker` when the dictionary file is not one.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

_GREEK = {
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "κ": "kappa",
    "λ": "lambda",
    "μ": "mu",
    "ω": "omega",
    "τ": "tau",
}
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
#: Trailing words that name a salt or a dosage form rather than another substance.
SALT_WORDS = frozenset(
    """hydrochloride hydrobromide hcl sodium potassium calcium magnesium sulfate sulphate mesylate
maleate citrate tartrate acetate phosphate succinate fumarate besylate bitartrate dihydrate monohydrate
trihydrate hydrate anhydrous disodium bromide nitrate lactate gluconate""".split()
)


def normalise(text: str) -> str:
    """The matching key of a name (rule 1 of the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(_GREEK.get(c, c) for c in text)
    return _NON_ALNUM.sub(" ", text).strip()


def _singulars(key: str) -> list[str]:
    """Singular forms to try for the last word: -ies -> -y; -es off for -xes/-ches/-shes/-sses;
    otherwise a final -s off (not after s, u, i), and for -ses also -es off ("diseases" -> "disease",
    then "analyses" -> "analys" is simply not found)."""
    words = key.split(" ")
    last, stem = words[-1], " ".join(words[:-1] + [""])
    if len(last) > 4 and last.endswith("ies"):
        return [stem + last[:-3] + "y"]
    if len(last) > 4 and last.endswith(("xes", "ches", "shes", "sses")):
        return [stem + last[:-2]]
    if len(last) > 4 and last.endswith("ses"):
        return [stem + last[:-1], stem + last[:-2]]
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        return [stem + last[:-1]]
    return []


def _without_salt(key: str) -> str | None:
    words = key.split(" ")
    while len(words) > 1 and words[-1] in SALT_WORDS:
        words.pop()
    stripped = " ".join(words)
    return stripped if stripped != key else None


# --- abbreviations (Schwartz & Hearst, PSB 2003) -------------------------------------------------

_PAREN = re.compile(r"\(([^()]{1,12})\)")


def _long_form(short: str, before: str) -> str | None:
    """The shortest end of ``before`` whose characters hold ``short``'s, right to left, the first
    one starting a word (the paper's ``findBestLongForm``)."""
    s, l_idx = len(short) - 1, len(before) - 1
    while s >= 0:
        c = short[s].lower()
        if not c.isalnum():
            s -= 1
            continue
        while l_idx >= 0 and (before[l_idx].lower() != c or (s == 0 and l_idx > 0 and before[l_idx - 1].isalnum())):
            l_idx -= 1
        if l_idx < 0:
            return None
        l_idx -= 1
        s -= 1
    start = before.rfind(" ", 0, l_idx + 1) + 1
    return before[start:].strip()


def abbreviations(text: str) -> dict[str, str]:
    """``{short form: long form}`` defined in ``text`` as ``long form (SF)``: SF of 2-10 characters
    with a letter and a first alphanumeric character; the long form at most ``min(|SF| + 5, 2|SF|)``
    words, found by :func:`_long_form`. The first definition of a short form counts."""
    found: dict[str, str] = {}
    for m in _PAREN.finditer(text):
        short = m.group(1).strip()
        if not (2 <= len(short) <= 10) or not any(c.isalpha() for c in short) or not short[0].isalnum():
            continue
        if len(short.split()) > 2 or short in found:
            continue
        words = text[: m.start()].rstrip().split()
        limit = min(len(short) + 5, 2 * len(short))
        before = " ".join(words[-limit:])
        long = _long_form(short, before)
        if long and len(long) > len(short) and short.lower() not in long.lower().split():
            found[short] = long
    return found


# --- the dictionary and the linker --------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    concept_id: str
    concept_name: str | None
    vocabulary: str
    type: str | None
    name: str  # the dictionary name that matched
    preferred: bool


@dataclass(frozen=True)
class Link:
    """What a mention linked to: ``rule`` says which of the module's rules found it."""

    concept_id: str
    concept_name: str | None
    vocabulary: str
    matched_by: str  # the dictionary name the mention matched (after the rule's rewriting)
    rule: str  # exact | abbreviation | salt | plural


class Linker:
    """Links mention texts with a concept dictionary (:data:`schemas.concepts.CONCEPT_SCHEMA` rows or
    a file of them); see the module docstring for the rules."""

    def __init__(self, entries: Iterable[Mapping] | str):
        if isinstance(entries, str) or hasattr(entries, "__fspath__"):
            entries = read_dictionary(entries)
        self._by_key: dict[str, list[Concept]] = {}
        for e in entries:
            self._by_key.setdefault(e["key"], []).append(
                Concept(
                    e["concept_id"],
                    e.get("concept_name"),
                    e["vocabulary"],
                    e.get("type"),
                    e["name"],
                    bool(e.get("preferred")),
                )
            )

    def __len__(self) -> int:
        return len(self._by_key)

    def _choose(self, key: str, type_: str | None) -> tuple[Concept | None, bool]:
        """(the concept of ``key``, whether candidates existed)."""
        candidates = self._by_key.get(key, [])
        if type_ is not None:
            candidates = [c for c in candidates if c.type is None or c.type == type_]
        if not candidates:
            return None, False
        ids = {c.concept_id for c in candidates}
        if len(ids) > 1:
            preferred = [c for c in candidates if c.preferred]
            if preferred and len({c.concept_id for c in preferred}) < len(ids):
                candidates = preferred
                ids = {c.concept_id for c in candidates}
        if len(ids) > 1:
            descriptors = [c for c in candidates if c.vocabulary == "MeSH" and c.concept_id.startswith("D")]
            if descriptors and len({c.concept_id for c in descriptors}) == 1:
                candidates, ids = descriptors, {descriptors[0].concept_id}
        if len(ids) > 1:
            return None, True
        return candidates[0], True

    def _rules(self, text: str, type_: str | None):
        key = normalise(text)
        if not key:
            return None, False
        ambiguous = False
        tries = [("exact", key), ("salt", _without_salt(key))] + [("plural", s) for s in _singulars(key)]
        for rule, candidate in tries:
            if candidate is None:
                continue
            concept, seen = self._choose(candidate, type_)
            if concept is not None:
                return Link(concept.concept_id, concept.concept_name, concept.vocabulary, concept.name, rule), False
            ambiguous = ambiguous or seen
        return None, ambiguous

    def link(
        self, text: str, type_: str | None = None, abbreviations: Mapping[str, str] | None = None
    ) -> tuple[Link | None, str]:
        """``(link, status)``: status ``linked``, ``ambiguous`` or ``unlinked``. ``abbreviations``
        (:func:`abbreviations` of the same abstract) let a short form link through its long form."""
        found, ambiguous = self._rules(text, type_)
        if found is None and abbreviations:
            short = text.strip()
            long = abbreviations.get(short)
            if long is None:  # RE heads/tails are lower-cased: "5-fu" for the defined "5-FU"
                same = [lf for sf, lf in abbreviations.items() if sf.lower() == short.lower()]
                long = same[0] if len(same) == 1 else None
            if long:
                via, amb = self._rules(long, type_)
                if via is not None:
                    found = Link(via.concept_id, via.concept_name, via.vocabulary, via.matched_by, "abbreviation")
                ambiguous = ambiguous or amb
        if found is not None:
            return found, "linked"
        return None, "ambiguous" if ambiguous else "unlinked"

    def link_all(self, text: str, mentions: Sequence[tuple[str, str | None]]) -> list[tuple[Link | None, str]]:
        """:meth:`link` for each ``(mention text, type)`` of one abstract ``text``."""
        abbrev = abbreviations(text)
        return [self.link(m, t, abbrev) for m, t in mentions]


def read_dictionary(path) -> list[dict]:
    """The rows of a concept dictionary file.

    :raises SchemaMismatchError: not a concept dictionary.
    """
    import pyarrow.parquet as pq

    from schemas.concepts import check_schema

    table = pq.read_table(path)
    check_schema(table.schema, str(path))
    return table.to_pylist()


@functools.lru_cache(maxsize=4)
def load_linker(path: str) -> Linker:
    """The :class:`Linker` of a dictionary file, loaded once per process (an actor links many shards)."""
    return Linker(read_dictionary(path))


def link_columns(link: Link | None) -> dict:
    """The entity columns of a link (schemas/entities.py), all null when unlinked."""
    if link is None:
        return {
            "concept_id": None,
            "concept_name": None,
            "concept_vocabulary": None,
            "matched_by": None,
            "link_rule": None,
        }
    return {
        "concept_id": link.concept_id,
        "concept_name": link.concept_name,
        "concept_vocabulary": link.vocabulary,
        "matched_by": link.matched_by,
        "link_rule": link.rule,
    }
