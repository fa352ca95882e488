"""`biomine kb build` (DDI edge table) and `biomine query` (DuckDB over outputs) on synthetic relations."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from biogpt.errors import BioMineError
from pipeline.cli import main
from pipeline.outputs.kb import build_kb
from pipeline.outputs.query import query
from pipeline.run.stages import write_shard_output
from pipeline.store.datasets import ShardOutput, TaskDataset
from pipeline.store.shards import ShardStore
from pipeline.store.storage import location
from schemas.relations import cast_batch


def rel(pmid, head, tail, relation, evidence=None, status="ok"):
    row = dict(
        pmid=pmid,
        version=1,
        task="ddi",
        head=head,
        tail=tail,
        relation=relation,
        parse_status=status,
        raw_generation=f"the interaction between {head} and {tail} is {relation}",
        model_id="re-ddi",
    )
    if status != "ok":
        row.update(head=None, tail=None, relation=None, reason="no sentence matched the grammar")
    if evidence:
        row.update(evidence_start=0, evidence_end=len(evidence), evidence_text=evidence, evidence_match="both")
    return row


def commit_output(folder, shard, table):
    """Write and commit one shard's output the way the pipeline's stage does."""
    dataset = TaskDataset(location(folder))
    written = write_shard_output(dataset.loc, shard, table)
    dataset.commit(ShardOutput(shard, written, 5), task="re", expected="test", input_shard={"name": shard}, settings={})


@pytest.fixture
def job_out(tmp_path):
    out = tmp_path / "out"
    commit_output(
        out / "relations",
        "part-000000",
        cast_batch(
            [
                rel(11, "Aspirin", "warfarin", "effect", "aspirin potentiates warfarin."),
                rel(12, "warfarin ", "aspirin", "effect", "warfarin with aspirin bleeds."),
                rel(12, "warfarin", "aspirin", "effect", "warfarin with aspirin bleeds."),  # same abstract twice
                rel(13, "ketoconazole", "midazolam", "mechanism"),
                rel(14, "x", "x", "int"),  # self-loop: not an edge
                rel(15, None, None, None, status="unparsed"),
            ]
        ),
    )
    with ShardStore(out / "documents", "ingest") as store:
        with store.transaction() as txn:
            txn.write(
                [
                    dict(
                        pmid=p,
                        version=1,
                        record_type="article",
                        title="t",
                        abstract="a",
                        has_abstract=True,
                        pub_year=y,
                        pub_month=m,
                    )
                    for p, y, m in [(11, 2019, 5), (12, 2021, None), (13, 2020, 2), (14, 2020, 1), (15, 2020, 1)]
                ]
            )
            txn.commit()
    return out


def test_kb_deduplicates_normalises_and_dates(job_out):
    n = build_kb(job_out / "relations", job_out / "kb.parquet")
    kb = pq.read_table(job_out / "kb.parquet").to_pylist()
    assert n == 2 and len(kb) == 2
    top = kb[0]
    assert (top["drug_a"], top["drug_b"], top["relation"]) == ("aspirin", "warfarin", "effect")
    assert top["n_abstracts"] == 2 and top["pmids"] == [11, 12]
    assert top["evidence"] == ["aspirin potentiates warfarin.", "warfarin with aspirin bleeds."]
    assert top["first_seen"] == dt.date(2019, 5, 1) and top["last_seen"] == dt.date(2021, 1, 1)
    assert kb[1]["drug_a"] == "ketoconazole" and kb[1]["evidence"] == []


def test_query_views_and_cli(job_out, capsys):
    build_kb(job_out / "relations", job_out / "kb.parquet")
    df = query(
        job_out,
        "SELECT r.pmid, d.pub_year FROM relations r JOIN documents d USING (pmid) WHERE parse_status = 'ok' ORDER BY 1",
    )
    assert df["pmid"].tolist() == [11, 12, 12, 13, 14]
    assert main(["query", str(job_out), "SELECT count(*) AS n FROM kb", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "2"]
    assert main(["query", str(job_out), "SELECT * FROM nowhere"]) == 2
    assert "views available: documents, relations, kb" in capsys.readouterr().err


def test_kb_errors(tmp_path):
    with pytest.raises(BioMineError, match="no relation files"):
        build_kb(tmp_path, tmp_path / "kb.parquet")
    with pytest.raises(BioMineError, match="not a directory"):
        query(tmp_path / "missing", "SELECT 1")


def test_kb_score_is_the_noisy_or_of_each_abstracts_most_probable_statement(tmp_path):
    import math

    out = tmp_path / "out"
    lp = math.log
    commit_output(
        out / "relations",
        "part-000000",
        cast_batch(
            [
                {**rel(11, "aspirin", "warfarin", "effect"), "logprob": lp(0.5), "logprob_tokens": 12},
                {
                    **rel(11, "warfarin", "aspirin", "effect"),
                    "logprob": lp(0.9),
                    "logprob_tokens": 12,
                },  # same abstract: max
                {**rel(12, "aspirin", "warfarin", "effect"), "logprob": lp(0.6), "logprob_tokens": 12},
                {**rel(13, "ketoconazole", "midazolam", "mechanism"), "logprob": lp(0.2), "logprob_tokens": 12},
                rel(14, "ketoconazole", "midazolam", "mechanism"),  # no logprob: adds nothing
                rel(15, "rifampicin", "midazolam", "mechanism"),  # nothing scored: null
            ]
        ),
    )
    build_kb(out / "relations", out / "kb.parquet")
    kb = {(r["drug_a"], r["drug_b"]): r for r in pq.read_table(out / "kb.parquet").to_pylist()}
    assert kb[("aspirin", "warfarin")]["score"] == pytest.approx(1 - (1 - 0.9) * (1 - 0.6))
    assert kb[("ketoconazole", "midazolam")]["score"] == pytest.approx(0.2)
    assert kb[("ketoconazole", "midazolam")]["n_abstracts"] == 2
    assert kb[("midazolam", "rifampicin")]["score"] is None


def test_kb_merges_linked_drugs_by_identifier_and_keeps_every_surface_form(tmp_path):
    out = tmp_path / "out"

    def linked(pmid, head, head_id, tail, tail_id, relation="effect"):
        return {**rel(pmid, head, tail, relation), "head_id": head_id, "tail_id": tail_id}

    commit_output(
        out / "relations",
        "part-000000",
        cast_batch(
            [
                linked(21, "warfarin", "DB00682", "aspirin", "DB00945"),
                linked(22, "Coumadin", "DB00682", "aspirin", "DB00945"),
                linked(23, "acetylsalicylic acid", "DB00945", "warfarin sodium", "DB00682"),
                linked(24, "coumadin", "DB00682", "warfarin", "DB00682"),  # one drug twice: not an edge
                rel(25, "warfarin", "novelazole", "mechanism"),  # unlinked: keyed by name
            ]
        ),
    )
    build_kb(out / "relations", out / "kb.parquet")
    kb = pq.read_table(out / "kb.parquet").to_pylist()
    assert len(kb) == 2
    edge = kb[0]
    assert (edge["drug_a_id"], edge["drug_b_id"], edge["relation"]) == ("DB00682", "DB00945", "effect")
    assert edge["pmids"] == [21, 22, 23] and edge["n_abstracts"] == 3
    assert edge["drug_a_names"] == ["Coumadin", "warfarin", "warfarin sodium"]
    assert edge["drug_b_names"] == ["acetylsalicylic acid", "aspirin"]
    assert (edge["drug_a"], edge["drug_b"]) == ("coumadin", "acetylsalicylic acid")
    assert kb[1]["drug_a_id"] is None and (kb[1]["drug_a"], kb[1]["drug_b"]) == ("novelazole", "warfarin")
