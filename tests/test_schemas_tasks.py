"""Task output schemas: versions in metadata, row/table casting with errors naming the column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tasks.ner_spans import Span, entity_rows
from pipeline.tasks.re_grammar import parse_generation, relation_rows
from schemas import answers, entities, relations, summaries
from schemas._rows import SchemaMismatchError

MODULES = [
    (entities, entities.ENTITY_SCHEMA, "entities"),
    (relations, relations.RELATION_SCHEMA, "relations"),
    (summaries, summaries.SUMMARY_SCHEMA, "summaries"),
    (answers, answers.ANSWER_SCHEMA, "answers"),
]

ENTITY = {
    "pmid": 1,
    "version": 1,
    "start": 0,
    "end": 7,
    "label": "Chemical",
    "text": "Aspirin",
    "score": 0.5,
    "model_id": "m",
}
SUMMARY = {
    "pmid": 2,
    "version": 1,
    "prompt_id": "tldr-v1",
    "summary": "Short.",
    "model_id": "biogpt",
    "input_truncated": False,
    "decoding": {"strategy": "beam", "num_beams": 5, "min_new_tokens": 100, "length_penalty": 1.0},
}


@pytest.mark.parametrize("module, schema, name", MODULES)
def test_metadata_and_parquet_round_trip(tmp_path, module, schema, name):
    assert schema.metadata[b"biomine.schema"] == name.encode()
    assert schema.metadata[b"biomine.schema_version"] == str(module.SCHEMA_VERSION).encode()
    table = module.cast_batch([])
    pq.write_table(table, tmp_path / "x.parquet")
    assert module.check_schema(pq.read_schema(tmp_path / "x.parquet"), "x.parquet") == module.SCHEMA_VERSION
    newer = schema.with_metadata({**schema.metadata, b"biomine.schema_version": b"99"})
    with pytest.raises(SchemaMismatchError, match="version 99.*upgrade biomine"):
        module.check_schema(newer, "x.parquet")
    with pytest.raises(SchemaMismatchError, match=f"is not a {name} dataset"):
        module.check_schema(pa.schema([("a", pa.int8())]), "other.parquet")


def test_entity_rows_cast_and_table_input():
    rows = entity_rows([Span(0, 7, "Chemical", "Aspirin", 0.9)], pmid=5, model_id="ner")
    table = entities.cast_batch(rows)
    assert table.schema == entities.ENTITY_SCHEMA and table.column("score").type == pa.float32()
    # A table with int64 offsets and columns in another order casts to the schema; score may be absent.
    loose = pa.table(
        {"model_id": ["ner"], "text": ["x"], "label": ["Gene"], "end": [3], "start": [2], "version": [1], "pmid": [7]}
    )
    cast = entities.cast_batch(loose.to_batches()[0])
    assert cast.column_names == entities.ENTITY_SCHEMA.names and cast.column("score").null_count == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"label": None}, "PMID 1: column 'label' is required"),
        ({"start": "zero"}, "column 'start' expects an integer"),
        ({"start": 1.5}, "column 'start' expects an integer"),
        ({"start": True}, "column 'start' expects an integer"),
        ({"score": "high"}, "column 'score' expects float"),
        ({"colour": "red"}, "keys \\['colour'\\] that are not columns"),
        ({"start": 9}, "end must be greater than start"),
    ],
)
def test_entity_errors_name_the_column(change, message):
    with pytest.raises(SchemaMismatchError, match=message):
        entities.cast_batch([ENTITY, {**ENTITY, **change}])


def test_table_errors_name_the_column():
    with pytest.raises(SchemaMismatchError, match="column 'start' does not cast"):
        entities.cast_batch(pa.table({**{k: [v] for k, v in ENTITY.items()}, "start": ["x"]}))
    with pytest.raises(SchemaMismatchError, match="required column 'label' is missing"):
        entities.cast_batch(pa.table({k: [v] for k, v in ENTITY.items() if k != "label"}))
    with pytest.raises(SchemaMismatchError, match="'label' is required but has 1 nulls"):
        entities.cast_batch(pa.table({**{k: [v] for k, v in ENTITY.items()}, "label": pa.array([None], pa.string())}))


def test_relation_rows_from_the_grammar_cast():
    result = parse_generation("the interaction between aspirin and warfarin is effect; what", "ddi")
    rows = relation_rows(
        result,
        pmid=9,
        text="Aspirin raises warfarin levels.",
        model_id="re-ddi",
        decoding={"strategy": "greedy", "num_beams": 1},
    )
    table = relations.cast_batch(rows)
    assert table.column("parse_status").to_pylist() == ["ok", "unparsed"]
    assert table.column("evidence_text").to_pylist() == ["Aspirin raises warfarin levels.", None]
    assert table.column("decoding").to_pylist()[0]["num_beams"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"parse_status": "maybe"}, "parse_status 'maybe' is not one of"),
        ({"head": None}, "an 'ok' row needs head, tail and relation"),
        ({"parse_status": "unparsed", "reason": None}, "an 'unparsed' row needs a reason"),
        ({"task": "ner"}, "task 'ner' is not one of"),
        ({"evidence_end": None}, "go together"),
        ({"decoding": {"beams": 5}}, "column 'decoding' has unknown keys \\['beams'\\]"),
        ({"decoding": {"num_beams": 1.5}}, "column 'decoding' field 'num_beams' expects an integer"),
    ],
)
def test_relation_invariants(change, message):
    row = relation_rows(
        parse_generation("the interaction between a and b is int", "ddi"), pmid=3, text="a and b.", model_id="m"
    )[0]
    with pytest.raises(SchemaMismatchError, match=message):
        relations.cast_batch([{**row, **change}])


def test_summaries_cast_with_decoding_settings():
    table = summaries.cast_batch([SUMMARY])
    assert table.column("decoding").to_pylist()[0]["min_new_tokens"] == 100
    with pytest.raises(SchemaMismatchError, match="PMID 2: column 'summary' is required"):
        summaries.cast_batch([{**SUMMARY, "summary": None}])
