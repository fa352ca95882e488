"""Entity linking: dictionaries from MeSH XML / DrugBank CSV / PubTator files, the matching rules,
and the accuracy on BC5CDR's test-set gold mentions."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest
from conftest import shared_path

from pipeline.cli import main
from pipeline.evaluation.linking import evaluate_linking
from pipeline.tasks.linking import Linker, abbreviations, normalise
from pipeline.tasks.vocabulary import dictionary_table, drugbank_rows, mesh_rows, pubtator_rows

# Fixtures in the layouts NLM and DrugBank publish (desc2025.xml, supp2025.xml, drugbank vocabulary.csv).
MESH_DESC = """<?xml version="1.0"?>
<!DOCTYPE DescriptorRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmdescriptorrecordset_20250101.dtd">
<DescriptorRecordSet LanguageCode="eng">
<DescriptorRecord DescriptorClass="1">
 <DescriptorUI>D004317</DescriptorUI><DescriptorName><String>Doxorubicin</String></DescriptorName>
 <TreeNumberList><TreeNumber>D02.455.326.146.295</TreeNumber></TreeNumberList>
 <ConceptList>
  <Concept PreferredConceptYN="Y"><ConceptUI>M0006876</ConceptUI><ConceptName><String>Doxorubicin</String></ConceptName>
   <TermList><Term ConceptPreferredTermYN="Y"><TermUI>T013198</TermUI><String>Doxorubicin</String></Term>
    <Term><TermUI>T000897</TermUI><String>Adriamycin</String></Term></TermList></Concept>
  <Concept PreferredConceptYN="N"><ConceptUI>M0028558</ConceptUI><ConceptName><String>Doxorubicin Hydrochloride</String></ConceptName>
   <TermList><Term><TermUI>T013199</TermUI><String>Doxorubicin Hydrochloride</String></Term></TermList></Concept>
 </ConceptList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass="1">
 <DescriptorUI>D006333</DescriptorUI><DescriptorName><String>Heart Failure</String></DescriptorName>
 <TreeNumberList><TreeNumber>C14.280.434</TreeNumber></TreeNumberList>
 <ConceptList><Concept PreferredConceptYN="Y"><ConceptUI>M0009779</ConceptUI><ConceptName><String>Heart Failure</String></ConceptName>
  <TermList><Term><String>Heart Failure</String></Term><Term><String>Cardiac Failure</String></Term>
   <Term><String>Heart Failure, Congestive</String></Term></TermList></Concept></ConceptList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass="1">
 <DescriptorUI>D005472</DescriptorUI><DescriptorName><String>Fluorouracil</String></DescriptorName>
 <TreeNumberList><TreeNumber>D03.383.742.680.245</TreeNumber></TreeNumberList>
 <ConceptList><Concept PreferredConceptYN="Y"><ConceptUI>M0008716</ConceptUI><ConceptName><String>Fluorouracil</String></ConceptName>
  <TermList><Term><String>Fluorouracil</String></Term><Term><String>5-Fluorouracil</String></Term></TermList></Concept></ConceptList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass="1">
 <DescriptorUI>D012640</DescriptorUI><DescriptorName><String>Seizures</String></DescriptorName>
 <TreeNumberList><TreeNumber>C10.597.742</TreeNumber><TreeNumber>C23.888.592.742</TreeNumber></TreeNumberList>
 <ConceptList><Concept PreferredConceptYN="Y"><ConceptUI>M0019481</ConceptUI><ConceptName><String>Seizures</String></ConceptName>
  <TermList><Term><String>Seizures</String></Term><Term><String>Seizure</String></Term><Term><String>Cold</String></Term></TermList></Concept></ConceptList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass="1">
 <DescriptorUI>D003080</DescriptorUI><DescriptorName><String>Common Cold</String></DescriptorName>
 <TreeNumberList><TreeNumber>C01.925.782.138</TreeNumber></TreeNumberList>
 <ConceptList><Concept PreferredConceptYN="Y"><ConceptUI>M0004786</ConceptUI><ConceptName><String>Common Cold</String></ConceptName>
  <TermList><Term><String>Common Cold</String></Term><Term><String>Cold</String></Term></TermList></Concept></ConceptList>
</DescriptorRecord>
</DescriptorRecordSet>
"""
MESH_SUPP = """<?xml version="1.0"?>
<SupplementalRecordSet LanguageCode="eng">
<SupplementalRecord SCRClass="1">
 <SupplementalRecordUI>C063008</SupplementalRecordUI><SupplementalRecordName><String>pegylated liposomal doxorubicin</String></SupplementalRecordName>
 <HeadingMappedToList><HeadingMappedTo><DescriptorReferredTo><DescriptorUI>*D004317</DescriptorUI>
  <DescriptorName><String>Doxorubicin</String></DescriptorName></DescriptorReferredTo></HeadingMappedTo></HeadingMappedToList>
 <ConceptList><Concept PreferredConceptYN="Y"><ConceptUI>M0263005</ConceptUI><ConceptName><String>pegylated liposomal doxorubicin</String></ConceptName>
  <TermList><Term><String>pegylated liposomal doxorubicin</String></Term><Term><String>Doxil</String></Term></TermList></Concept></ConceptList>
</SupplementalRecord>
</SupplementalRecordSet>
"""
DRUGBANK = (
    '"DrugBank ID","Accession Numbers","Common name","CAS","UNII","Synonyms","Standard InChI Key"\n'
    '"DB00682","APRD00112","Warfarin","81-81-2","5Q7ZVV76EI","Coumadin | Warfarina | Warfarine","PJVWKTKQMONHTI-UHFFFAOYSA-N"\n'
    '"DB00997","APRD00228","Doxorubicin","23214-92-8","80168379AG","Adriamycin | Doxorubicina","AOJJSUZBOXZQNB-TZSSRYMLSA-N"\n'
)


@pytest.fixture
def vocab_files(tmp_path):
    (tmp_path / "desc2025.xml.gz").write_bytes(gzip.compress(MESH_DESC.encode()))
    (tmp_path / "supp2025.xml").write_text(MESH_SUPP)
    (tmp_path / "drugbank vocabulary.csv").write_text(DRUGBANK)
    return tmp_path


@pytest.fixture
def linker(vocab_files):
    return Linker(
        dictionary_table(
            [
                mesh_rows(vocab_files / "desc2025.xml.gz"),
                mesh_rows(vocab_files / "supp2025.xml"),
                drugbank_rows(vocab_files / "drugbank vocabulary.csv"),
            ]
        ).to_pylist()
    )


def test_readers_type_and_mark_preferred_names(vocab_files):
    desc = {(r["name"], r["concept_id"]): r for r in mesh_rows(vocab_files / "desc2025.xml.gz")}
    assert desc[("Adriamycin", "D004317")]["type"] == "Chemical" and not desc[("Adriamycin", "D004317")]["preferred"]
    assert desc[("Doxorubicin", "D004317")]["preferred"] and desc[("Cardiac Failure", "D006333")]["type"] == "Disease"
    supp = list(mesh_rows(vocab_files / "supp2025.xml"))
    assert {r["name"] for r in supp} == {"pegylated liposomal doxorubicin", "Doxil"} and supp[0]["type"] == "Chemical"
    bank = {r["name"]: r for r in drugbank_rows(vocab_files / "drugbank vocabulary.csv")}
    assert bank["Coumadin"]["concept_id"] == "DB00682" and bank["Coumadin"]["concept_name"] == "Warfarin"


def test_matching_rules(linker):
    def link(text, type_=None, abbrev=None):
        found, status = linker.link(text, type_, abbrev)
        return (found.concept_id, found.rule) if found else status

    assert normalise("5-FLUOROURACIL") == normalise("5 fluorouracil") == "5 fluorouracil"
    assert link("5-Fluorouracil") == ("D005472", "exact")
    assert link("heart failure, congestive") == ("D006333", "exact")
    assert link("doxorubicin hydrochloride") == ("D004317", "exact")  # an entry term wins over the salt rule
    assert link("doxorubicin citrate") == ("D004317", "salt")
    assert link("anthracycline") == "unlinked"
    assert link("Seizure", "Disease") == ("D012640", "exact") and link("convulsive seizures") == "unlinked"
    assert link("Doxorubicins") == ("D004317", "plural")
    assert link("Coumadin", "Chemical") == ("DB00682", "exact")
    assert link("Coumadin", "Disease") == "unlinked"  # never a concept of another type
    # "adriamycin": a MeSH descriptor and a DrugBank drug; the descriptor wins
    assert link("Adriamycin") == ("D004317", "exact")
    # "cold": an entry term of two diseases, the preferred name of neither: no guess
    assert link("cold", "Disease") == "ambiguous"
    text = "Patients received 5-fluorouracil (5-FU) and leucovorin (LV). 5-FU was given weekly."
    assert abbreviations(text) == {"5-FU": "5-fluorouracil", "LV": "leucovorin"}
    assert link("5-FU", "Chemical", abbreviations(text)) == ("D005472", "abbreviation")
    assert link("5-fu", "Chemical", abbreviations(text)) == ("D005472", "abbreviation")  # lower-cased RE heads
    assert link("5-FU", "Chemical") == "unlinked"
    # a DrugBank drug whose common name is a MeSH concept joins it: one id space
    assert link("Doxorubicina") == ("D004317", "exact") and linker.link("Doxorubicina")[0].vocabulary == "MeSH"
    from pipeline.tasks.linking import _singulars

    assert _singulars("heart diseases") == ["heart disease", "heart diseas"]
    assert _singulars("boxes") == ["box"] and _singulars("virus") == []


def test_a_name_spelled_twice_keeps_its_preferred_mark():
    rows = [
        {
            "key": "alpha tocopherol",
            "name": n,
            "concept_id": "D024502",
            "concept_name": "alpha-Tocopherol",
            "vocabulary": "MeSH",
            "type": "Chemical",
            "preferred": n == "alpha-Tocopherol",
        }
        for n in ("alpha Tocopherol", "alpha-Tocopherol")
    ]
    (row,) = dictionary_table([rows]).to_pylist()
    assert row["preferred"] and row["name"] == "alpha-Tocopherol"


def test_vocab_build_and_eval_link_commands(vocab_files, tmp_path, capsys):
    out = tmp_path / "vocab" / "concepts.parquet"
    assert (
        main(
            [
                "vocab",
                "build",
                "--mesh",
                str(vocab_files / "desc2025.xml.gz"),
                "--mesh",
                str(vocab_files / "supp2025.xml"),
                "--drugbank",
                str(vocab_files / "drugbank vocabulary.csv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    assert table.schema.metadata[b"biomine.schema"] == b"concepts"
    assert {"D004317", "C063008", "DB00682"} <= set(table.column("concept_id").to_pylist())
    pubtator = tmp_path / "gold.txt"
    pubtator.write_text(
        "1|t|Adriamycin cardiotoxicity\n1|a|Congestive heart failure after doxorubicin (DOX); DOX "
        "and coumadin.\n1\t0\t10\tAdriamycin\tChemical\tD004317\n"
        "1\t26\t50\tCongestive heart failure\tDisease\tD006333\n"
        "1\t57\t68\tdoxorubicin\tChemical\tD004317\n1\t70\t73\tDOX\tChemical\tD004317\n"
        "1\t76\t79\tDOX\tChemical\tD004317\n1\t84\t92\tcoumadin\tChemical\tD014859\n\n"
    )
    capsys.readouterr()
    assert main(["eval", "link", "--data", str(pubtator), "--vocab", str(out), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    # congestive heart failure: no entry term of that order (only "Heart Failure, Congestive"): unlinked;
    # coumadin links to DrugBank, not the gold MeSH id: linked, wrong
    assert (report["mentions"], report["linked"], report["correct"]) == (6, 5, 4)
    assert report["by_rule"] == {"abbreviation": 2, "exact": 3}
    assert main(["vocab", "build", "--out", str(out)]) == 2
    assert "pass at least one of --mesh" in capsys.readouterr().err
    (tmp_path / "bad.xml").write_text("<PubmedArticleSet/>")
    assert main(["vocab", "build", "--mesh", str(tmp_path / "bad.xml"), "--out", str(out)]) == 2
    assert "neither MeSH DescriptorRecordSet" in capsys.readouterr().err


def test_linking_accuracy_on_the_bc5cdr_test_set():
    """The figure docs/linking.md reports: a dictionary from the development set's annotations, the
    test set's gold mentions (its offsets and types, not a model's)."""
    dev = shared_path("data", "bc5cdr", "CDR_DevelopmentSet.PubTator.txt")
    test = shared_path("data", "bc5cdr", "CDR_TestSet.PubTator.txt")
    report = evaluate_linking(test, Linker(dictionary_table([pubtator_rows(dev)]).to_pylist()))
    assert report["mentions"] == 9718 and report["linked"] == report["correct"] + (report["linked"] - report["correct"])
    assert report["precision"] > 0.97 and report["accuracy"] > 0.6  # measured: 0.9833 and 0.6665
    assert report["by_rule"]["abbreviation"] > 100


def test_a_job_names_its_vocabulary_and_run_check_checks_it(tmp_path, demo_models, vocab_files, capsys):
    from conftest import DEMO_XML

    from pipeline.run.jobspec import load_job
    from pipeline.run.plan import preflight

    vocab = tmp_path / "vocab.parquet"
    assert (
        main(["vocab", "build", "--drugbank", str(vocab_files / "drugbank vocabulary.csv"), "--out", str(vocab)]) == 0
    )
    capsys.readouterr()
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nname = "v"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\npaths = ["{DEMO_XML}"]\n'
        f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\nvocabulary = "vocab.parquet"\n'
    )
    spec = load_job(job)
    assert spec.tasks["ner"].vocabulary == str(vocab)  # relative to the job file
    plan = preflight(spec)
    settings = plan.tasks[0].options.settings()
    assert len(settings["vocabulary_sha256"]) == 64 and "vocabulary" not in settings  # content, not path
    job.write_text(job.read_text().replace("vocab.parquet", "missing.parquet"))
    assert main(["run", str(job), "--check"]) == 2
    err = capsys.readouterr().err
    assert "[tasks.ner] vocabulary = " in err and "no such file" in err and len(err.strip().splitlines()) == 1
    job.write_text(job.read_text().replace("missing.parquet", str(DEMO_XML)))
    assert main(["run", str(job), "--check"]) == 2
    assert "build one with `biomine vocab build`" in capsys.readouterr().err
