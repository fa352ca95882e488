"""Benchmark: PubMed XML parse throughput of pipeline.pubmed.parser against Bio.Entrez, in articles/s per core.

Usage::

    python benchmarks/bench_parse.py                  # generate 30,000 articles, run everything
    python benchmarks/bench_parse.py --articles 5000 --repeat 1
    python benchmarks/bench_parse.py --file pubmed25n0001.xml.gz   # a real baseline file instead

What it does: writes a generated, realistic baseline-like file (structured abstracts with inline
markup, authors with affiliations, MeSH headings with qualifiers, keywords, article ids, a
reference list; deterministic), then times, each in a fresh subprocess so that peak memory is its
own:

- ``biomine``: ``pipeline.pubmed.parser.iter_records`` over the file (rows as dicts), and
- ``biomine+arrow``: the same plus conversion to Arrow as ingest does it (``RowBuffer``: every 1,000
  rows, shards of 10,000, the garbage collector paused and run once per shard),
- ``arrow-10k-dicts``: the conversion as ingest did it before, 10,000 row dicts buffered per table,
  and ``arrow-10k-dicts-gc-off``: the same with Python's garbage collector off (the cost of the
  collector walking the buffered dicts; the printed ratios compare the three),
- ``Bio.Entrez.parse``: refuses a PubmedArticleSet (reported, not timed),
- ``Bio.Entrez.read``: parses the whole document into memory.

Throughput is articles per CPU-second of the (single-threaded) process, i.e. per core, imports
excluded; wall time and the growth of resident memory during the parse are reported too. Results are printed and written to
``benchmarks/results/bench_parse.json`` (``--save`` to choose another path, ``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_parse.json"
DOCTYPE = (
    '<?xml version="1.0" ?>\n<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n'
)
WORDS = (
    "warfarin aspirin interaction plasma concentration patients randomized trial bleeding risk dose "
    "cytochrome metabolism inhibitor clearance cohort hazard ratio adverse events significant "
    "β-blocker Zürich naïve α-tocopherol outcome therapy genotype"
).split()
SECTIONS = [
    ("BACKGROUND", "BACKGROUND"),
    ("METHODS", "METHODS"),
    ("RESULTS", "RESULTS"),
    ("CONCLUSIONS", "CONCLUSIONS"),
]
MESH = [
    ("Warfarin", "D014859"),
    ("Aspirin", "D001241"),
    ("Humans", "D006801"),
    ("Drug Interactions", "D004347"),
    ("Hemorrhage", "D006470"),
    ("Anticoagulants", "D000925"),
    ("Aged", "D000368"),
    ("Female", "D005260"),
    ("Male", "D008297"),
    ("Cytochrome P-450 CYP2C9", "D000072471"),
]
QUALIFIERS = [("adverse effects", "Q000009"), ("pharmacokinetics", "Q000493"), ("therapeutic use", "Q000627")]


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    words[rng.randrange(n)] = f"<i>{rng.choice(WORDS)}</i>"
    return " ".join(words).capitalize() + f" (p<sub>trend</sub>=0.0{rng.randint(1, 9)})."


def generate_article(pmid: int, rng: random.Random) -> str:
    """One realistic PubmedArticle (~7 KB: a MEDLINE citation with a structured abstract and references)."""
    abstract = "".join(
        f'<AbstractText Label="{label}" NlmCategory="{cat}">{_sentence(rng, 25)} {_sentence(rng, 20)}</AbstractText>'
        for label, cat in SECTIONS
    )
    authors = "".join(
        f'<Author ValidYN="Y"><LastName>Author{rng.randint(1, 999)}</LastName><ForeName>Anna Maria</ForeName>'
        f"<Initials>AM</Initials><AffiliationInfo><Affiliation>Department of Clinical Pharmacology, University "
        f"Hospital {rng.randint(1, 99)}, Zürich, Switzerland.</Affiliation></AffiliationInfo></Author>"
        for _ in range(rng.randint(2, 7))
    )
    mesh = "".join(
        f'<MeshHeading><DescriptorName UI="{ui}" MajorTopicYN="{rng.choice("YN")}">{name}</DescriptorName>'
        + "".join(
            f'<QualifierName UI="{qui}" MajorTopicYN="N">{q}</QualifierName>'
            for q, qui in rng.sample(QUALIFIERS, rng.randint(0, 2))
        )
        + "</MeshHeading>"
        for name, ui in rng.sample(MESH, 8)
    )
    refs = "".join(
        f"<Reference><Citation>Ref {i}. J Clin Pharmacol. 2010;50:1-9.</Citation><ArticleIdList>"
        f'<ArticleId IdType="pubmed">{pmid - i - 1}</ArticleId></ArticleIdList></Reference>'
        for i in range(6)
    )
    year = rng.randint(1990, 2024)
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">{pmid}</PMID>'
        f"<DateCompleted><Year>{year}</Year><Month>05</Month><Day>02</Day></DateCompleted>"
        f'<Article PubModel="Print-Electronic"><Journal><ISSN IssnType="Electronic">1552-4604</ISSN>'
        f'<JournalIssue CitedMedium="Internet"><Volume>{rng.randint(1, 60)}</Volume><Issue>4</Issue><PubDate>'
        f"<Year>{year}</Year><Month>Apr</Month></PubDate></JournalIssue><Title>Journal of clinical pharmacology"
        f"</Title><ISOAbbreviation>J Clin Pharmacol</ISOAbbreviation></Journal>"
        f"<ArticleTitle>{_sentence(rng, 12)}</ArticleTitle><Pagination><MedlinePgn>100-9</MedlinePgn></Pagination>"
        f'<ELocationID EIdType="doi" ValidYN="Y">10.1002/jcph.{pmid}</ELocationID>'
        f"<Abstract>{abstract}<CopyrightInformation>© {year} The Authors.</CopyrightInformation></Abstract>"
        f'<AuthorList CompleteYN="Y">{authors}</AuthorList><Language>eng</Language>'
        f'<PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType>'
        f'<PublicationType UI="D016449">Randomized Controlled Trial</PublicationType></PublicationTypeList>'
        f"</Article><MedlineJournalInfo><Country>England</Country><MedlineTA>J Clin Pharmacol</MedlineTA>"
        f"<NlmUniqueID>0366372</NlmUniqueID><ISSNLinking>0091-2700</ISSNLinking></MedlineJournalInfo>"
        f"<CitationSubset>IM</CitationSubset><MeshHeadingList>{mesh}</MeshHeadingList>"
        f'<KeywordList Owner="NOTNLM"><Keyword MajorTopicYN="N">drug interaction</Keyword>'
        f'<Keyword MajorTopicYN="N">anticoagulation</Keyword></KeywordList></MedlineCitation>'
        f'<PubmedData><History><PubMedPubDate PubStatus="pubmed"><Year>{year}</Year><Month>4</Month><Day>1</Day>'
        f"</PubMedPubDate></History><PublicationStatus>ppublish</PublicationStatus><ArticleIdList>"
        f'<ArticleId IdType="pubmed">{pmid}</ArticleId><ArticleId IdType="doi">10.1002/jcph.{pmid}</ArticleId>'
        f"</ArticleIdList><ReferenceList>{refs}</ReferenceList></PubmedData></PubmedArticle>\n"
    )


def generate_file(path: Path, articles: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(DOCTYPE + "<PubmedArticleSet>\n")
        for i in range(articles):
            f.write(generate_article(30_000_000 + i, rng))
        f.write("</PubmedArticleSet>\n")


# --- workers (each runs in its own process) ----------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _work(method: str, path: str) -> dict:
    sys.path.insert(0, str(REPO))
    opener = gzip.open if path.endswith(".gz") else open
    # Imports happen before the clock starts; "rss_growth_mb" is the memory the parse itself added.
    from Bio import Entrez

    from pipeline.pubmed.parser import Deletion, iter_records
    from schemas.articles import to_table

    baseline_mb = _rss_mb()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if method == "biomine":
        count = sum(1 for _ in iter_records(path))
    elif method == "biomine+arrow":  # what ingest's parse_input does: RowBuffer, collector paused
        import gc

        from pipeline.pubmed.ingest import RowBuffer, collector_paused

        count, buffer = 0, RowBuffer()
        with collector_paused():
            for record in iter_records(path):
                if isinstance(record, Deletion):
                    continue
                buffer.append(record)
                if len(buffer) == 10_000:
                    count += buffer.take().num_rows
                    gc.collect()
            count += buffer.take().num_rows
    elif method in ("arrow-10k-dicts", "arrow-10k-dicts-gc-off"):  # before: a shard's rows as dicts
        if method.endswith("gc-off"):
            import gc

            gc.disable()
        count, batch = 0, []
        for record in iter_records(path):
            if isinstance(record, Deletion):
                continue
            batch.append(record)
            if len(batch) == 10_000:
                count += to_table(batch).num_rows
                batch = []
        count += to_table(batch).num_rows if batch else 0
    elif method == "Bio.Entrez.parse":
        try:
            with opener(path, "rb") as handle:
                count = sum(1 for _ in Entrez.parse(handle))
        except Exception as exc:  # noqa: BLE001 - the refusal is the result being reported
            return {"method": method, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    elif method == "Bio.Entrez.read":
        with opener(path, "rb") as handle:
            count = len(Entrez.read(handle)["PubmedArticle"])
    else:
        raise SystemExit(f"unknown method {method}")
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method,
        "articles": count,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "articles_per_s_per_core": round(count / cpu),
        "rss_growth_mb": round(peak_mb - baseline_mb),
    }


def run_worker(method: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=30_000, help="articles to generate (default 30000)")
    parser.add_argument("--file", type=Path, help="benchmark this PubMed XML file instead of generating one")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest counts (default 3)")
    parser.add_argument("--gzip", action="store_true", help="generate .xml.gz (as NLM ships) instead of .xml")
    parser.add_argument("--save", type=Path, default=RESULTS, help=f"where to write results (default {RESULTS})")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_work(*args.worker)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / ("bench.xml.gz" if args.gzip else "bench.xml")
            t0 = time.perf_counter()
            generate_file(path, args.articles)
            print(
                f"generated {args.articles} articles, {path.stat().st_size / 1e6:.1f} MB, "
                f"in {time.perf_counter() - t0:.1f} s"
            )
        results = []
        for method in (
            "biomine",
            "biomine+arrow",
            "arrow-10k-dicts",
            "arrow-10k-dicts-gc-off",
            "Bio.Entrez.parse",
            "Bio.Entrez.read",
        ):
            runs = [run_worker(method, path) for _ in range(1 if method == "Bio.Entrez.parse" else args.repeat)]
            best = min(runs, key=lambda r: r.get("cpu_s", 0))
            results.append(best)
            if "error" in best:
                print(f"{method:>16}: refuses the file ({best['error']})")
            else:
                print(
                    f"{method:>16}: {best['articles_per_s_per_core']:>7,} articles/s per core "
                    f"(cpu {best['cpu_s']:.2f} s, wall {best['wall_s']:.2f} s, memory +{best['rss_growth_mb']} MB)"
                )
        by = {r["method"]: r for r in results}
        fixed, before, gc_off = by["biomine+arrow"], by["arrow-10k-dicts"], by["arrow-10k-dicts-gc-off"]
        print(
            f"Arrow step: as ingest does it vs 10,000 buffered dicts: "
            f"{fixed['articles_per_s_per_core'] / before['articles_per_s_per_core']:.2f}x the throughput; "
            f"10,000 dicts with the garbage collector off: "
            f"{gc_off['articles_per_s_per_core'] / before['articles_per_s_per_core']:.2f}x"
        )
        ours = next(r for r in results if r["method"] == "biomine")
        theirs = next(r for r in results if r["method"] == "Bio.Entrez.read")
        print(
            f"biomine vs Bio.Entrez.read: {ours['articles_per_s_per_core'] / theirs['articles_per_s_per_core']:.1f}x "
            f"the throughput; memory +{ours['rss_growth_mb']} MB vs +{theirs['rss_growth_mb']} MB"
        )
        report = {
            "benchmark": "bench_parse",
            "date": time.strftime("%Y-%m-%d"),
            "file": str(args.file) if args.file else f"generated {args.articles} articles",
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "repeat": args.repeat,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "results": results,
        }
    if not args.no_save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(report, indent=1) + "\n")
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
