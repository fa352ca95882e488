"""docs/analysts.md runs: every ```python block of the page is executed against a real output, and
what each leaves behind is checked against biomine's own views (and the readers against each other).

The output is built the way a job builds it, without Ray or models: two "runs" of a files job. Run 1
ingests the demo sample (as pubmed26n0001.xml) into OUT/documents, writes entity and relation rows
for each documents data file into OUT/entities and OUT/relations (one output file per documents file,
committed as the stages commit them; one article "fails" in relation extraction and is recorded as a
failure), rebuilds OUT/kb and records a finished run in OUT/runs. Run 2
ingests an update file (pubmed26n0002.xml: a retraction, a new article, a DeleteCitation), plans each
task table as the stages do (outputs of rewritten files derived, new files computed, outputs of
files that left retired; the failed article computed again), rebuilds the KB and records a second
run. Building it takes 1.1 s here (2 cores).

Blocks that cannot run here (DuckDB's delta extension downloads itself; Spark needs a JVM and
delta-spark) are ```sql/```text blocks, which this test does not run. The ``biomine ...`` lines of
```bash blocks that name the output are run through the CLI.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.outputs.kb import update_kb
from pipeline.outputs.query import query
from pipeline.store.datasets import settings_key, write_output
from pipeline.store.documents import Documents
from pipeline.store.output import JobOutput
from schemas import entities as entity_schema
from schemas import relations as relation_schema

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "analysts.md"
DEMO_XML = ROOT / "pipeline" / "commands" / "demo_files" / "data" / "demo_pubmed.xml"
#: The output path every snippet of the page names (the test puts its own output there).
PLACEHOLDER = "out/ddi-kb"

UPDATE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<PubmedArticleSet>
<PubmedArticle>
  <MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">90000003</PMID>
    <Article PubModel="Print">
      <Journal><JournalIssue CitedMedium="Internet"><PubDate><Year>2022</Year></PubDate></JournalIssue>
        <Title>Demo Clinical Pharmacology</Title><ISOAbbreviation>Demo Clin Pharmacol</ISOAbbreviation></Journal>
      <ArticleTitle>Ketoconazole raises midazolam exposure through CYP3A4 inhibition.</ArticleTitle>
      <Abstract><AbstractText>Ketoconazole, a strong CYP3A4 inhibitor, increased the area under the curve of oral \
midazolam fifteen-fold. Rifampicin induced CYP3A4 and lowered midazolam exposure. Dose adjustment of midazolam is \
advised when it is combined with ketoconazole.</AbstractText></Abstract>
      <Language>eng</Language>
      <PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType>\
<PublicationType UI="D016441">Retracted Publication</PublicationType></PublicationTypeList>
    </Article>
    <CommentsCorrectionsList><CommentsCorrections RefType="RetractionIn"><RefSource>Demo Clin Pharmacol. 2026</RefSource>\
<PMID Version="1">90000099</PMID></CommentsCorrections></CommentsCorrectionsList>
  </MedlineCitation>
  <PubmedData><ArticleIdList><ArticleId IdType="pubmed">90000003</ArticleId></ArticleIdList></PubmedData>
</PubmedArticle>
<PubmedArticle>
  <MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">90000005</PMID>
    <Article PubModel="Print">
      <Journal><JournalIssue CitedMedium="Internet"><PubDate><Year>2023</Year><Month>Jun</Month></PubDate></JournalIssue>
        <Title>Journal of Demo Pharmacology</Title><ISOAbbreviation>J Demo Pharmacol</ISOAbbreviation></Journal>
      <ArticleTitle>Fluconazole and warfarin: a case series.</ArticleTitle>
      <Abstract><AbstractText>Fluconazole inhibits CYP2C9 and raises the plasma concentration of warfarin. \
Three patients had an INR above 6 within a week.</AbstractText></Abstract>
      <Language>eng</Language>
      <PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType></PublicationTypeList>
    </Article>
  </MedlineCitation>
  <PubmedData><ArticleIdList><ArticleId IdType="pubmed">90000005</ArticleId></ArticleIdList></PubmedData>
</PubmedArticle>
<DeleteCitation><PMID Version="1">90000004</PMID></DeleteCitation>
</PubmedArticleSet>
"""

#: The "NER model": every mention of these words is a Chemical.
DRUGS = (
    "warfarin",
    "aspirin",
    "fluconazole",
    "cisplatin",
    "magnesium",
    "ketoconazole",
    "midazolam",
    "rifampicin",
    "simvastatin",
    "clarithromycin",
)
#: The "RE model": (head, tail, relation, the sentence that states it) per PMID; the others get an unparsed row.
STATEMENTS = {
    90000001: [
        ("aspirin", "warfarin", "effect", "Co-administration of aspirin with warfarin increased major bleeding"),
        ("fluconazole", "warfarin", "mechanism", "Fluconazole inhibits CYP2C9"),
    ],
    90000003: [
        ("ketoconazole", "midazolam", "mechanism", "Ketoconazole, a strong CYP3A4 inhibitor"),
        ("rifampicin", "midazolam", "mechanism", "Rifampicin induced CYP3A4 and lowered midazolam exposure."),
    ],
    90000005: [("fluconazole", "warfarin", "mechanism", "Fluconazole inhibits CYP2C9")],
}


def entity_rows(article: dict) -> list[dict]:
    text = f"{article['title']} {article['abstract'] or ''}"
    rows = []
    for drug in DRUGS:
        for m in re.finditer(drug, text, flags=re.IGNORECASE):
            rows.append(
                dict(
                    pmid=article["pmid"],
                    version=article["version"],
                    start=m.start(),
                    end=m.end(),
                    label="Chemical",
                    text=m.group(0),
                    score=0.9,
                    model_id="ner-demo",
                )
            )
    return sorted(rows, key=lambda r: (r["pmid"], r["start"]))


def relation_rows(article: dict) -> list[dict]:
    text = f"{article['title']} {article['abstract'] or ''}"
    key = dict(pmid=article["pmid"], version=article["version"], task="ddi", model_id="re-ddi-demo")
    statements = STATEMENTS.get(article["pmid"])
    if statements is None:
        raw = "the interaction between cisplatin and"
        return [dict(key, parse_status="unparsed", reason="no sentence matched the grammar", raw_generation=raw)]
    rows = []
    for head, tail, relation, evidence in statements:
        start = text.index(evidence)
        rows.append(
            dict(
                key,
                head=head,
                tail=tail,
                relation=relation,
                evidence_start=start,
                evidence_end=start + len(evidence),
                evidence_text=evidence,
                evidence_match="both",
                parse_status="ok",
                raw_generation=f"the interaction between {head} and {tail} is {relation}",
                logprob=-0.25,
                logprob_tokens=9,
            )
        )
    return rows


#: dataset -> (task name, schema, cast, rows of one article)
TASKS = {
    "entities": ("ner", entity_schema.ENTITY_SCHEMA, entity_schema.cast_batch, entity_rows),
    "relations": ("re", relation_schema.RELATION_SCHEMA, relation_schema.cast_batch, relation_rows),
}


#: The error the "RE model" fails 90000002 with in run 1 (a transient one: run 2 computes it).
ERROR = "CUDA out of memory"


def run_tasks(output: JobOutput, run_id: str, fail: dict[str, set[int]]) -> list[dict]:
    """What a job's task stages do, with the two "models" above: for each live documents file, keep,
    derive or compute its output (documents in ``fail[task]`` fail: no rows, the output file named
    incomplete, the failures in the commit info), retire the rest, in one commit per table. Returns
    the failed documents of the live outputs, as the runner records them."""
    docs = Documents(output.documents)
    files = docs.files()
    failures = []
    for name, (task, schema, cast, compute) in TASKS.items():
        table = output.dataset(name, schema)
        settings = {"task": task, "model": f"{task}-demo"}
        key = settings_key(settings)
        plan = table.plan(files, settings)
        add, failed = [], {}
        for path, source in plan.derive.items():
            articles = docs.read(["pmid", "version"], files=[path])
            add.append(table.derive(source, files[path].stem, articles, key))
        for path in plan.compute:
            computed, errors = [], []
            for article in docs.read(files=[path]).to_pylist():
                if article["pmid"] in fail.get(task, ()):
                    errors.append({"task": task, "pmid": article["pmid"], "shard": path, "error": ERROR})
                else:
                    computed += compute(article)
            written = write_output(table.loc, files[path].stem, key, cast(computed), failed=bool(errors))
            add.append(written)
            if errors:
                failed[written.path] = errors
        if add or plan.retire:
            table.commit(add, plan.retire, settings=settings, failures=failed, run=run_id)
        failures += table.failures([p for p, (n, _) in table.outputs().items() if n.failed])
    return failures


def job_run(output: JobOutput, run_id: str, inputs: list[Path], fail: dict[str, set[int]]) -> None:
    """One run of a files job: ingest, tasks, KB, run record (under the output's lease, as a job)."""
    from pipeline.pubmed.ingest import ingest_files

    with output.lease(f"test run {run_id}") as lease:
        output.check_owner({"name": "ddi-kb", "source": {"kind": "files"}}, claim=True)
        ingest_files(inputs, output, lease=lease)
        failures = run_tasks(output, run_id, fail)
        kb = update_kb(output)
        versions = output.versions()
        record = {"run_id": run_id, "job": {"name": "ddi-kb"}, "stages": {"kb": kb}, "failures": failures}
        failures = [{k: f.get(k) for k in ("task", "pmid", "version", "error")} for f in failures]
        output.record_run(run_id, "ddi-kb", "finished", record, seconds=1.0, versions=versions, failures=failures)


def build_output(base: Path) -> Path:
    """Two runs of a files job over the folder ``base/pubmed`` into ``base/out/ddi-kb``."""
    inputs = base / "pubmed"
    inputs.mkdir()
    shutil.copy(DEMO_XML, inputs / "pubmed26n0001.xml")
    root = base / "out" / "ddi-kb"
    output = JobOutput(root)
    job_run(output, "run-1", [inputs], fail={"re": {90000002}})
    (inputs / "pubmed26n0002.xml").write_text(UPDATE_XML, encoding="utf-8")
    job_run(output, "run-2", [inputs], fail={})  # the job lists the folder: the new file is the one applied
    return root


@pytest.fixture
def out(tmp_path) -> Path:
    return build_output(tmp_path)


# --- the page ---------------------------------------------------------------------------------------
def blocks(language: str) -> list[str]:
    """The fenced blocks of the page in ``language``, in page order."""
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


_OUT_LINE = re.compile(r'^OUT = "([^"]*)"$', re.MULTILINE)


def with_output(code: str, out: str) -> str:
    """The snippet with its ``OUT = "..."`` line pointing at ``out``."""
    assert len(_OUT_LINE.findall(code)) == 1, f"a snippet must set OUT once:\n{code}"
    return _OUT_LINE.sub(f"OUT = {out!r}", code)


def run_snippet(code: str) -> dict:
    namespace: dict = {"__name__": "__analysts_snippet__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace


def rows(frame, columns) -> list[tuple]:
    """The rows of a pandas or polars frame, or an Arrow table, as sorted tuples of ``columns``."""
    if hasattr(frame, "to_pandas") and not isinstance(frame, pd.DataFrame):
        frame = frame.to_pandas()
    return sorted(tuple(None if pd.isna(v) else v for v in r) for r in frame[list(columns)].itertuples(index=False))


def view(out: Path, sql: str, columns, as_of=None) -> list[tuple]:
    """What biomine's own views give (the reference every reader is compared with)."""
    return rows(query(out, sql, as_of=as_of), columns)


ENTITY = ["pmid", "version", "start", "end", "label", "text"]
EDGE = ["drug_a", "drug_b", "relation", "n_abstracts"]
MENTIONS_SQL = """
    SELECT d.pub_year, lower(e.text) AS drug, count(*) AS mentions
    FROM entities e JOIN documents d USING (pmid, version)
    GROUP BY ALL ORDER BY d.pub_year, mentions DESC, drug
"""


def check_entities(value, out):
    assert rows(value, ENTITY) == view(out, "SELECT * FROM entities", ENTITY)
    assert set(value.pmid) == {90000001, 90000002, 90000003, 90000005}  # 90000004 was deleted


def check_chemicals(value, out):
    columns = ["pmid", "version", "start", "end", "text"]
    expected = view(out, "SELECT * FROM entities WHERE label = 'Chemical' AND score >= 0.5", columns)
    assert expected and rows(value, columns) == expected


def check_relations(value, out):
    columns = ["pmid", "version", "head", "tail", "relation", "parse_status"]
    assert rows(value, columns) == view(out, "SELECT * FROM relations", columns)


def check_pairs(value, out):
    assert value.row(0) == ("fluconazole", "warfarin", "mechanism", 2)
    expected = view(
        out,
        "SELECT head, tail, relation, count(DISTINCT pmid) AS abstracts FROM relations "
        "WHERE parse_status = 'ok' GROUP BY ALL",
        ["head", "tail", "relation", "abstracts"],
    )
    assert rows(value, ["head", "tail", "relation", "abstracts"]) == expected


def check_mentions(value, out):
    columns = ["pub_year", "drug", "mentions"]
    assert rows(value, columns) == view(out, MENTIONS_SQL, columns)
    assert ("simvastatin" not in set(value.drug)) and ("warfarin" in set(value.drug))


def check_per_year(value, out):
    assert rows(value, ["pub_year", "relations"]) == [(2021, 2), (2022, 2), (2023, 1)]


def check_relations_first_run(value, out):
    columns = ["pmid", "head", "tail", "article_retracted"]
    # 90000002 failed in run 1; 90000004 (deleted since) was there; nothing was retracted yet
    assert {r[0] for r in rows(value, columns)} == {90000001, 90000003, 90000004}
    assert not any(r[3] for r in rows(value, columns))
    assert rows(value, columns) == view(out, "SELECT * FROM relations", columns, as_of=1)


def check_mentions_with_article(value, out):
    assert len(value) == len(view(out, "SELECT * FROM entities", ENTITY))
    assert rows(value, ["pmid", "title"]) == view(
        out, "SELECT pmid, title FROM entities JOIN documents USING (pmid, version)", ["pmid", "title"]
    )


def check_relations_flagged(value, out):
    columns = ["pmid", "version", "head", "tail", "article_retracted"]
    assert rows(value, columns) == view(out, "SELECT * FROM relations", columns)


def check_retracted_evidence(value, out):
    assert sorted(value["pmid"].to_list()) == [90000003, 90000003]


def check_warfarin(value, out):
    expected = [("fluconazole", "warfarin", "mechanism", 2), ("aspirin", "warfarin", "effect", 1)]
    assert [tuple(r) for r in value[EDGE].itertuples(index=False)] == expected
    assert rows(value, EDGE) == view(out, "SELECT * FROM kb WHERE 'warfarin' IN (drug_a, drug_b)", EDGE)


def check_supported(value, out):
    assert list(value.drug_a) == ["fluconazole", "aspirin"] and list(value.n_abstracts) == [2, 1]


def check_first(value, out):
    assert value == JobOutput(out).run_events()[0]["versions"]
    assert set(value) == {"documents", "entities", "relations", "kb"}


def check_documents_then(value, out):
    assert sorted(value.pmid) == [90000001, 90000002, 90000003, 90000004]


def check_kb_then(value, out):
    assert rows(value, EDGE) == view(out, "SELECT * FROM kb", EDGE, as_of=1)
    assert ("fluconazole", "warfarin", "mechanism", 1) in rows(value, EDGE)


def check_failed(value, out):
    assert value == [("run-1", "re", 90000002, ERROR)]


def check_stages(value, out):
    assert value["kb"]["edges"] == 4


def check_applied(value, out):
    assert [a[1:] for a in value] == [("pubmed26n0002.xml", 1, 1, 1), ("pubmed26n0001.xml", 4, 0, 0)]


def check_relation_failures(value, out):
    assert [f[1:] for f in value] == [(90000002, ERROR)]


#: What the snippets leave behind, by name: each checked against the views (or known facts).
CHECKS = {
    "entities": check_entities,
    "chemicals": check_chemicals,
    "relations": check_relations,
    "pairs": check_pairs,
    "mentions": check_mentions,
    "per_year": check_per_year,
    "relations_first_run": check_relations_first_run,
    "mentions_with_article": check_mentions_with_article,
    "relations_flagged": check_relations_flagged,
    "retracted_evidence": check_retracted_evidence,
    "warfarin": check_warfarin,
    "supported": check_supported,
    "first": check_first,
    "documents_then": check_documents_then,
    "kb_then": check_kb_then,
    "failed": check_failed,
    "stages": check_stages,
    "kb_at_first_run": check_kb_then,
    "applied": check_applied,
    "relation_failures": check_relation_failures,
}


def check_kb_s3(value, out):
    assert rows(value, EDGE) == view(out, "SELECT * FROM kb", EDGE)


S3_CHECKS = {"entities_s3": check_entities, "kb_s3": check_kb_s3}


def test_every_python_snippet_runs_and_agrees_with_the_views(out):
    snippets = [code for code in blocks("python") if _OUT_LINE.search(code).group(1) == PLACEHOLDER]
    assert len(snippets) >= 9
    checked = set()
    for code in snippets:
        namespace = run_snippet(with_output(code, str(out)))
        names = [name for name in CHECKS if name in namespace]
        assert names, f"this snippet leaves nothing the test checks:\n{code}"
        for name in names:
            CHECKS[name](namespace[name], out)
        checked.update(names)
    assert checked == set(CHECKS), f"checks without a snippet: {sorted(set(CHECKS) - checked)}"


def test_the_command_lines_run(out, capsys):
    """Every `biomine ...` line of the page's bash blocks that names the output exits 0 on it."""
    lines = [
        line
        for code in blocks("bash")
        for line in code.splitlines()
        if line.startswith("biomine ") and PLACEHOLDER in line
    ]
    assert len(lines) >= 9
    for line in lines:
        # The biomine command of the line: up to a pipe into another tool (`| jq ...`), which then
        # gets what biomine printed (checked below for JSON).
        lexer = shlex.shlex(line.replace(PLACEHOLDER, str(out)), posix=True, punctuation_chars="|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
        piped = "|" in tokens
        argv = tokens[: tokens.index("|")][1:] if piped else tokens[1:]
        assert main(argv) == 0, line
        printed = capsys.readouterr().out
        assert printed.strip(), line
        if piped and argv[0] == "query" and "json" in argv:
            import json

            assert isinstance(json.loads(printed), list), line  # what `jq '.[0]'` reads: one JSON array
        if argv[:2] == ["kb", "diff"] and "json" in argv:
            import json

            diff = json.loads(printed)
            # fluconazole-warfarin gained an abstract (90000005); 90000003's retraction changed the
            # retraction status of both edges it alone supports
            rescored = [
                (e["drug_a"], e["drug_b"], e["n_abstracts"], e["retracted_before"], e["retracted"])
                for e in diff["rescored"]
            ]
            assert rescored == [
                ("fluconazole", "warfarin", 2, False, False),
                ("ketoconazole", "midazolam", 1, False, True),
                ("midazolam", "rifampicin", 1, False, True),  # a KB edge orders its two drugs
            ]


def test_blocks_not_run_say_why():
    """The DuckDB delta extension and Spark are not run here: their blocks are not python blocks,
    and the page says so."""
    text = PAGE.read_text(encoding="utf-8")
    assert any("delta_scan(" in code for code in blocks("sql"))
    assert any('format("delta")' in code for code in blocks("text"))
    assert not any("delta_scan(" in code or "pyspark" in code for code in blocks("python"))
    assert "**not run here**" in text and "**Not run or tested here**" in text


@pytest.mark.slow
def test_the_s3_snippet_reads_an_output_on_s3(out, s3_server, monkeypatch):
    """The S3 snippet against a real S3-compatible server (SeaweedFS on loopback): the output is
    copied to a bucket as it is (a Delta table's log names its files relative to the table)."""
    import pyarrow.fs as pafs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    s3 = pafs.S3FileSystem(
        access_key=s3_server["AWS_ACCESS_KEY_ID"],
        secret_key=s3_server["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=s3_server["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        region="us-east-1",
    )
    pafs.copy_files(
        str(out), f"{bucket}/analysts/ddi-kb", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3
    )
    snippets = [code for code in blocks("python") if _OUT_LINE.search(code).group(1).startswith("s3://")]
    assert len(snippets) == 1
    namespace = run_snippet(with_output(snippets[0], f"s3://{bucket}/analysts/ddi-kb"))
    for name, check in S3_CHECKS.items():
        check(namespace[name], out)


def test_a_plain_parquet_read_of_a_folder_is_not_the_table(out):
    """What the page warns about: a table's folder keeps the files updates replaced (time travel), so
    reading it as plain Parquet returns rows that are no longer live; a Delta reader does not."""
    from deltalake import DeltaTable

    plain = pd.read_parquet(out / "documents", columns=["pmid"])
    live = DeltaTable(str(out / "documents")).to_pandas(columns=["pmid"])
    assert sorted(live.pmid) == [90000001, 90000002, 90000003, 90000005]
    assert sorted(plain.pmid) == [90000001, 90000001, 90000002, 90000002, 90000003, 90000003, 90000004, 90000005]
