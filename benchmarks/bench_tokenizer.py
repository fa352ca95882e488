"""Tokenizer throughput: biogpt.BioGptTokenizer against transformers' BioGptTokenizer.

Loads the real BioGPT vocabulary (fairseq dict.txt + bpecodes; converted to vocab.json + merges.txt in
a temporary directory for transformers), tokenizes every abstract of the BC5CDR PubTator files
(title + " " + abstract per PMID) once with each tokenizer, from a cold start (fresh tokenizer, empty
caches), checks that the ids agree, and prints tokens/s for each and the ratio.

    python benchmarks/bench_tokenizer.py
    python benchmarks/bench_tokenizer.py --vocab ../shared/data/biogpt-vocab/large --repeat 3
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def read_pubtator(paths: list[str]) -> list[str]:
    """title + " " + abstract of every PMID, in file order."""
    titles: dict[str, str] = {}
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                head, sep, rest = line.rstrip("\n").partition("|")
                kind, _, body = rest.partition("|")
                if not sep or kind not in ("t", "a"):
                    continue
                if kind == "t":
                    titles[head] = body
                else:
                    texts.append(titles.pop(head, "") + " " + body)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--vocab",
        default=str(SHARED / "biogpt-vocab" / "base"),
        help="directory with dict.txt + bpecodes (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        default=sorted(glob.glob(str(SHARED / "bc5cdr" / "*.PubTator.txt"))),
        help="PubTator files (default: the BC5CDR test and development sets)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="also time N-1 further passes with warm caches (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    from transformers import BioGptTokenizer as HFTokenizer

    from biogpt.tokenizer import BioGptTokenizer

    if not args.data:
        parser.error("no PubTator files found; pass --data")
    texts = read_pubtator(args.data)
    vocab = Path(args.vocab)
    print(f"{len(texts)} abstracts from {len(args.data)} files; vocabulary {vocab}")

    ours = BioGptTokenizer.from_fairseq(vocab / "dict.txt", vocab / "bpecodes")
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_vocabulary(tmp)  # the transformers layout, written exactly as its converter would
        theirs = HFTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))

    results = {}
    for name, run in (
        ("transformers", lambda: [theirs(t)["input_ids"] for t in texts]),
        ("biomine", lambda: ours(texts)["input_ids"]),
    ):
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            ids = run()
            times.append(time.perf_counter() - start)
        n_tokens = sum(len(x) for x in ids)
        results[name] = (ids, n_tokens, times)
        warm = f", warm {n_tokens / min(times[1:]):,.0f} tokens/s" if len(times) > 1 else ""
        print(f"{name:>12}: {n_tokens:,} tokens in {times[0]:.2f} s = {n_tokens / times[0]:,.0f} tokens/s (cold){warm}")

    same = results["biomine"][0] == results["transformers"][0]
    ratio = results["transformers"][2][0] / results["biomine"][2][0]
    print(f"ids identical: {same}; biomine is {ratio:.1f}x faster (cold)")
    print(
        json.dumps(
            {
                "abstracts": len(texts),
                "tokens": results["biomine"][1],
                "transformers_s": round(results["transformers"][2][0], 3),
                "biomine_s": round(results["biomine"][2][0], 3),
                "speedup": round(ratio, 2),
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
