"""RE output grammars, evidence spans, task input formatting and task settings.

The expected values follow microsoft/BioGPT examples/RE-*/postprocess.py and rebuild_data.py and
src/language_model_prompt_dataset.py (the quirks each test pins are named in its docstring).
"""

from __future__ import annotations

import json

import pytest

from biogpt.errors import BioMineError
from biogpt.task_spec import TaskSettings, load_task_settings, task_spec
from pipeline.errors import RecordError, TaskSettingsError
from pipeline.tasks.re_format import build_source, build_target, prompt_input_ids, unify_names
from pipeline.tasks.re_grammar import (
    UNMAPPED_ID,
    Relation,
    UnknownTaskError,
    clean_generation,
    find_evidence,
    parse_generation,
    relation_rows,
    sentence_spans,
)

PROMPT = " ".join(f"learned{i}" for i in range(1, 10))


# --- grammar -------------------------------------------------------------------------------------


def test_ddi_two_relations_with_echoed_source_and_prompt():
    """The fairseq output echoes source + learned1..9; everything up to the last prompt token goes."""
    text = (
        f"cimetidine increases warfarin levels. {PROMPT} the interaction between cimetidine and warfarin "
        "is mechanism; the interaction between aspirin and warfarin is effect."
    )
    result = parse_generation(text, "ddi")
    assert result.relations == (
        Relation("cimetidine", "warfarin", "mechanism"),
        Relation("aspirin", "warfarin", "effect"),
    )
    assert result.unparsed == () and not result.failed


@pytest.mark.parametrize("phrase", ["we can conclude that", "we have that", "in conclusion,"])
def test_ddi_phrase_prefixes_are_cut_at_their_last_occurrence(phrase):
    text = f"{phrase} nothing here. {phrase} the interaction between a and b is advise."
    assert parse_generation(text, "kd-dti").relations == (Relation("a", "b", "advise"),)


def test_first_pattern_in_list_order_wins_even_when_a_later_one_follows():
    """strip_prefix breaks after the first pattern found: "we have that" survives the prompt cut."""
    text = f"{PROMPT} we have that the interaction between a and b is int."
    assert clean_generation(text, "ddi") == "we have that the interaction between a and b is int"
    result = parse_generation(text, "ddi")
    assert result.failed
    assert "does not match the ddi grammar" in result.unparsed[0].reason


def test_bc5cdr_uses_the_moses_spaced_conclusion_and_ddi_does_not():
    bc5 = parse_generation("in conclusion , the relation between x and y exists.", "bc5cdr")
    assert [(r.head, r.tail, r.relation) for r in bc5.relations] == [("x", "y", "CID")]
    ddi = parse_generation("in conclusion , the interaction between x and y is int.", "ddi")
    assert ddi.failed and ddi.unparsed[0].text.startswith("in conclusion ,")


def test_greedy_groups_take_the_last_and_and_is():
    """(.*) is greedy: "between A and B and C is D is E" gives drug "A and B", target "C is D"."""
    result = parse_generation("the interaction between a and b and c is d is e.", "ddi")
    assert result.relations == (Relation("a and b", "c is d", "e"),)


def test_match_is_anchored_at_the_start_only():
    result = parse_generation(
        "so the interaction between a and b is effect; the interaction between c and d is int", "ddi"
    )
    assert result.relations == (Relation("c", "d", "int"),)
    assert [u.text for u in result.unparsed] == ["so the interaction between a and b is effect"]


def test_ddi_splits_on_semicolon_space_and_does_not_strip_pieces():
    """ "; " is the DDI separator; a piece keeping a leading space fails re.match (no strip there)."""
    result = parse_generation(
        "the interaction between a and b is effect;  the interaction between c and d is int", "ddi"
    )
    assert result.relations == (Relation("a", "b", "effect"),)
    assert result.unparsed[0].text == " the interaction between c and d is int"


def test_bc5cdr_splits_on_bare_semicolon_strips_pieces_and_maps_mesh():
    text = "the relation between famotidine and delirium exists;the relation between famotidine and  ulcers exists ; the relation between x and delirium exists."
    result = parse_generation(
        text, "bc5cdr", chemical2id={"famotidine": "D015738"}, disease2id={"delirium": "D003693", "ulcers": "D014456"}
    )
    assert [(r.head_id, r.tail_id) for r in result.relations] == [
        ("D015738", "D003693"),
        ("D015738", "D014456"),
        (UNMAPPED_ID, "D003693"),
    ]
    assert result.relations[1].tail == "ulcers"


def test_only_one_final_dot_is_removed():
    assert parse_generation("the interaction between a and b is effect..", "ddi").relations[0].relation == "effect."


@pytest.mark.parametrize(
    "text, reason", [("", "empty generation"), (" . ", "empty generation"), ("; ;", "no relation sentence")]
)
def test_empty_outputs_are_kept_with_a_reason(text, reason):
    result = parse_generation(text, "bc5cdr" if ";" in text else "ddi")
    assert result.failed
    assert result.unparsed[0].reason == reason and result.unparsed[0].text == text


def test_unparseable_output_is_kept_whole_and_partial_failures_are_recorded():
    failed = parse_generation("aspirin is a drug.", "ddi")
    assert failed.failed and failed.raw == "aspirin is a drug."
    assert failed.unparsed[0].text == "aspirin is a drug"
    partial = parse_generation("the interaction between a and b is effect; random words", "kd-dti")
    assert partial.relations == (Relation("a", "b", "effect"),)
    assert [u.text for u in partial.unparsed] == ["random words"]


def test_unknown_task_is_a_user_error():
    with pytest.raises(UnknownTaskError, match="use one of"):
        parse_generation("x", "chemprot")
    assert issubclass(UnknownTaskError, BioMineError)


# --- evidence ------------------------------------------------------------------------------------

ABSTRACT = (
    "Warfarin is an anticoagulant. Cimetidine increases\nplasma  levels of WARFARIN. "
    "Calcium is unrelated. Aspirin was given on day 2.5 of treatment."
)


def test_sentence_spans_skip_decimals():
    assert [ABSTRACT[s:e] for s, e in sentence_spans(ABSTRACT)][-1] == "Aspirin was given on day 2.5 of treatment."


def test_evidence_smallest_sentence_with_both_case_and_whitespace_insensitive():
    ev = find_evidence(ABSTRACT, "cimetidine", "warfarin")
    assert ev.text == "Cimetidine increases\nplasma  levels of WARFARIN." and ev.match == "both"
    assert ABSTRACT[ev.start : ev.end] == ev.text
    assert find_evidence(ABSTRACT, "plasma levels", "cimetidine").match == "both"


def test_evidence_window_across_sentences_and_single_entity():
    ev = find_evidence(ABSTRACT, "aspirin", "cimetidine")
    assert ev.text.startswith("Cimetidine") and ev.text.endswith("treatment.") and ev.match == "both"
    only_tail = find_evidence(ABSTRACT, "ibuprofen", "aspirin")
    assert only_tail.match == "tail" and only_tail.text.startswith("Aspirin")
    assert find_evidence(ABSTRACT, "ibuprofen", "naproxen") is None


def test_evidence_needs_whole_words():
    """ "ca" (a real BC5CDR name) must not match inside "Calcium" or "anticoagulant"."""
    assert find_evidence(ABSTRACT, "ca", "zz") is None


def test_relation_rows_keep_unparsed_output():
    result = parse_generation("the interaction between cimetidine and warfarin is mechanism; oops", "ddi")
    rows = relation_rows(result, pmid=7, text=ABSTRACT, model_id="re-ddi", decoding={"strategy": "greedy"})
    assert [r["parse_status"] for r in rows] == ["ok", "unparsed"]
    assert rows[0]["evidence_match"] == "both" and rows[0]["head_id"] is None
    assert rows[1]["reason"].endswith("'oops'") and rows[1]["raw_generation"] == result.raw


# --- input formatting ----------------------------------------------------------------------------


def test_ddi_source_is_stripped_abstract_without_newlines_lowercased():
    record = {"title": "Ignored Title", "abstract": "  Aspirin\nand Warfarin.\n"}
    assert build_source("ddi", record) == "aspirin and warfarin."


@pytest.mark.parametrize(
    "title, joined",
    [
        ("Effects of X.", "effects of x. abc"),
        ("Is X safe?", "is x safe? abc"),
        ("Effects of X", "effects of x. abc"),
        ("", ". abc"),
    ],
)
def test_dti_and_bc5cdr_join_title_and_abstract(title, joined):
    """re.search(r"\\W$", title) picks " " or ". "; an empty title still gets ". "."""
    for task in ("kd-dti", "bc5cdr"):
        assert build_source(task, {"title": title, "abstract": "ABC"}) == joined


def test_pubmedqa_and_hoc_sources_keep_case():
    record = {"QUESTION": " Does X help? ", "CONTEXTS": [" First\ncontext. ", "Second   one."], "LONG_ANSWER": "Yes. "}
    assert build_source("pubmedqa", record) == "question: Does X help? context: First context. Second one. "
    assert build_source("pubmedqa", record, with_long_answer=True).endswith("Second one. answer: Yes.")
    assert build_source("hoc", {"sentence": "Tumour Growth\n"}) == "Tumour Growth."
    assert build_source("hoc", {"sentence": "Done."}) == "Done."


def test_missing_fields_name_the_record():
    with pytest.raises(RecordError, match="record 123 has no 'title'"):
        build_source("bc5cdr", {"abstract": "x"}, record_id="123")


def test_relis_target_sort_quirk():
    """sort_triples uses lowercased text but the original-case drug: "Warfarin" is not found (-1), sorts first."""
    record = {
        "title": "T",
        "abstract": "aspirin then cimetidine then warfarin",
        "triples": [
            {"drug": "cimetidine", "target": "X", "interaction": "Inhibitor"},
            {"drug": "Warfarin", "target": "Y", "interaction": "agonist"},
            {"drug": "aspirin", "target": "Z", "interaction": "activator"},
        ],
    }
    assert build_target("kd-dti", record) == (
        "the interaction between warfarin and y is agonist; the interaction between aspirin and z is activator; "
        "the interaction between cimetidine and x is inhibitor."
    )


def test_bc5cdr_target_uses_longest_name_and_file_order():
    record = {
        "title": "t",
        "abstract": "a",
        "relations": [{"chemical": "C2", "disease": "D1"}, {"chemical": "C1", "disease": "D1"}],
        "chemical2id": {"ab": "C1", "xy": "C1", "abc": "C2", "abcd": "C2"},
        "disease2id": {"pain": "D1", "aches": "D1"},
    }
    assert unify_names(record["chemical2id"]) == {"C1": "ab", "C2": "abcd"}  # tie: first seen
    assert build_target("bc5cdr", record) == (
        "the relation between abcd and aches exists; the relation between ab and aches exists."
    )
    with pytest.raises(RecordError, match="no relations"):
        build_target("bc5cdr", {**record, "relations": []})


def test_qa_and_hoc_targets():
    assert build_target("pubmedqa", {"final_decision": "yes"}) == "the answer to the question given the context is yes."
    assert build_target("hoc", {"labels": "a|b"}) == "the type of this document is a|b."


# --- prompt input ids and settings ---------------------------------------------------------------


class WordTokenizer:
    """One id per whitespace word: 100 + its position in a growing vocabulary."""

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [self.vocab.setdefault(w, 100 + len(self.vocab)) for w in text.split()]


def spec(task="re-ddi", sep_token_id=None):
    """biomine_task.json content exactly as the converter writes it (S = 4, N = 3)."""
    return task_spec(
        task,
        learned=["learned1", "learned2", "learned3"],
        prompt_ids=[50, 51, 52],
        sep_token_id=sep_token_id,
        max_source=4,
        max_target=16,
        truncation_id=7,
        pad_id=1,
        eos_id=2,
        data_path="data/PubMedQA/pqal_qcal_ansis-bin",
    )


@pytest.mark.parametrize(
    "words, expected",
    [
        ("a b c", [2, 100, 101, 102, 50, 51, 52]),
        ("a b c d", [2, 100, 101, 102, 103, 50, 51, 52]),  # exactly S: untouched
        ("a b c d e", [2, 100, 101, 102, 7, 50, 51, 52]),  # S+1: S-1 ids + "..."
    ],
)
def test_prompt_input_ids_truncate_like_the_prompt_dataset(words, expected):
    assert prompt_input_ids(words, WordTokenizer(), TaskSettings.from_spec(spec())) == expected


def test_prompt_input_ids_lowercase_raw_text_and_prefix_layout():
    tok = WordTokenizer()
    settings = TaskSettings.from_spec(spec())
    assert prompt_input_ids("Aspirin", tok, settings) == prompt_input_ids("aspirin", tok, settings)
    assert list(tok.vocab) == ["aspirin"]
    prefix = TaskSettings.from_spec(spec(sep_token_id=9))
    assert prompt_input_ids("a b", WordTokenizer(), prefix) == [2, 50, 51, 52, 100, 101, 9]


def test_settings_from_the_converters_task_file():
    settings = TaskSettings.from_spec(spec("re-dti"))
    assert (settings.task, settings.learned_prompt, settings.prompt_token_ids) == ("kd-dti", 3, (50, 51, 52))
    assert (settings.max_source_positions, settings.truncation_marker_id, settings.lowercase_source) == (4, 7, True)
    qa = TaskSettings.from_spec(spec("qa-pubmedqa"))
    assert (qa.task, qa.lowercase_source, qa.source_format) == ("pubmedqa", False, "qa-pubmedqa-reasoning-free")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompt_token_ids": [1, 2]}, "must be 3 non-negative integers"),
        ({"task": "ner"}, "task 'ner' is not one of"),
        ({"max_source_positions": 13}, "exceed max_target_positions"),
        ({"output_grammar": "relis-relation"}, "is not 'relis-interaction'"),
        ({"truncation_marker_id": None}, "truncation_marker_id must be an integer"),
        ({"source_format": {"name": "re-ddi"}}, "true/false lowercase"),
    ],
)
def test_settings_validation(change, message):
    with pytest.raises(TaskSettingsError, match=message):
        TaskSettings.from_spec({**spec(), **change})


def test_wrong_kind_of_checkpoint_is_refused(tmp_path):
    (tmp_path / "biomine_task.json").write_text(json.dumps(spec("re-bc5cdr")))
    assert load_task_settings(tmp_path, "bc5cdr").task == "bc5cdr"
    with pytest.raises(
        TaskSettingsError, match="is a bc5cdr checkpoint, not ddi: ask for task bc5cdr, or give a ddi model$"
    ):
        load_task_settings(tmp_path, "ddi")
    lm = task_spec(
        "lm",
        learned=[],
        prompt_ids=[],
        sep_token_id=None,
        max_source=None,
        max_target=1024,
        truncation_id=None,
        pad_id=1,
        eos_id=2,
    )
    (tmp_path / "biomine_task.json").write_text(json.dumps(lm))
    with pytest.raises(TaskSettingsError, match="pre-trained language model"):
        load_task_settings(tmp_path, "ddi")
    with pytest.raises(TaskSettingsError, match="is not a fine-tuned kd-dti checkpoint"):
        load_task_settings(tmp_path / "ner-model", "kd-dti")
