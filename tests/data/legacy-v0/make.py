"""How ``out/`` here was made: the demo job, then a daily update, by biomine's pre-Delta release.

Run from a checkout of the commit before the Delta Lake tables (git log: "Run spine: ..."), with its
venv: ``python tests/data/legacy-v0/make.py``. It writes ``out/`` (the job output in the old layout:
documents manifest, deletion vectors, per-shard commit records, kb.parquet) and ``expected/`` (what
that release's readers returned for each dataset: the live rows). tests/test_upgrade.py upgrades a
copy of ``out/`` and compares every table with ``expected/``. The tiny models are not kept.
"""

import html
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for fake_eutils
from fake_eutils import article_xml, pubmed_document  # noqa: E402

work = Path("/tmp/biomine-legacy-v0")
shutil.rmtree(work, ignore_errors=True)
biomine = [sys.executable, "-m", "pipeline.cli"]
subprocess.run([*biomine, "demo", str(work)], check=True)
job = work / "demo.toml"
job.write_text(job.read_text().replace('paths = ["data/demo_pubmed.xml"]', 'paths = ["data"]'))
shutil.rmtree(work / "out")
subprocess.run([*biomine, "run", str(job), "--no-progress"], check=True)
# The update: 90000001 revised (version 2), 90000002 re-issued at the same version with new text,
# 90000003 deleted; 90000005 new.
update = pubmed_document(
    [
        article_xml(
            90000001,
            title=html.escape("Warfarin and aspirin co-therapy: revised bleeding estimates."),
            abstract=html.escape("Aspirin potentiates warfarin. Fluconazole raises warfarin levels."),
            version=2,
        ),
        article_xml(
            90000002,
            title=html.escape("Cisplatin nephrotoxicity and magnesium, corrected."),
            abstract=html.escape("Magnesium reduced cisplatin nephrotoxicity."),
        ),
        article_xml(
            90000005,
            title=html.escape("Ketoconazole and midazolam in children."),
            abstract=html.escape("Ketoconazole increased midazolam exposure in children."),
        ),
    ],
    deletions=[90000003],
)
(work / "data" / "pubmed26n0002.xml").write_text(update)
subprocess.run([*biomine, "run", str(job), "--no-progress"], check=True)
subprocess.run(
    [
        *biomine,
        "kb",
        "build",
        "--relations",
        str(work / "out" / "relations"),
        "--out",
        str(work / "out" / "kb.parquet"),
    ],
    check=True,
)

out, expected = HERE / "out", HERE / "expected"
shutil.rmtree(out, ignore_errors=True)
shutil.rmtree(expected, ignore_errors=True)
shutil.copytree(work / "out", out, ignore=shutil.ignore_patterns("_lock", "_lease.json"))
expected.mkdir()
import pyarrow.parquet as pq  # noqa: E402

from pipeline.outputs.query import read_dataset  # noqa: E402

for name in ("documents", "entities", "relations", "summaries", "kb"):
    pq.write_table(read_dataset(out, name), expected / f"{name}.parquet")
print("written", out, expected)
