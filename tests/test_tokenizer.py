"""biogpt.tokenizer against transformers' BioGptTokenizer (the reference for ids and decoding).

Real-vocabulary tests read ../shared (BioGPT's dict.txt/bpecodes and the BC5CDR abstracts) and skip
when it is absent; the toy-vocabulary tests build their files in a tmp dir and always run.
"""

from __future__ import annotations

import bisect
import json
import pickle

import pytest

from biogpt.errors import TokenizerError
from biogpt.tokenizer import BioGptTokenizer
from biogpt.tokenizer_compat import TransformersCompatTokenizer
from tests.conftest import shared_path

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e '.[test]'")
HFTokenizer = transformers.BioGptTokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


# --- helpers and fixtures --------------------------------------------------------------------------
def read_pubtator(path):
    """[(title + " " + abstract, [(start, end, mention)])] per PMID, in file order."""
    docs, titles = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "|t|" in line[:20]:
            pmid, _, title = line.split("|", 2)
            titles[pmid] = title
        elif "|a|" in line[:20]:
            pmid, _, abstract = line.split("|", 2)
            docs.append((titles.pop(pmid) + " " + abstract, []))
        elif line.count("\t") >= 4 and docs:
            _, start, end, mention = line.split("\t")[:4]
            docs[-1][1].append((int(start), int(end), mention))
    return docs


def hf_files_from_fairseq(vocab_dir, out_dir):
    """vocab.json/merges.txt written independently of biogpt, as transformers' conversion script does."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for line in (vocab_dir / "dict.txt").read_text(encoding="utf-8").splitlines():
        symbol = line.rsplit(" ", 1)[0]
        vocab[symbol[:-2] if symbol.endswith("@@") else symbol + "</w>"] = len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text((vocab_dir / "bpecodes").read_text(encoding="utf-8"), encoding="utf-8")
    return out_dir


@pytest.fixture(scope="module")
def base_dir():
    return shared_path("data", "biogpt-vocab", "base")


@pytest.fixture(scope="module")
def hf_base_dir(base_dir, tmp_path_factory):
    return hf_files_from_fairseq(base_dir, tmp_path_factory.mktemp("hf-base"))


@pytest.fixture(scope="module")
def tok(base_dir):
    return BioGptTokenizer.from_fairseq(base_dir / "dict.txt", base_dir / "bpecodes")


@pytest.fixture(scope="module")
def compat(base_dir):
    """transformers' full call (pairs, truncation, max_length padding), fenced off in biogpt.tokenizer_compat."""
    return TransformersCompatTokenizer.from_fairseq(base_dir / "dict.txt", base_dir / "bpecodes")


@pytest.fixture(scope="module")
def hf(hf_base_dir):
    return HFTokenizer(str(hf_base_dir / "vocab.json"), str(hf_base_dir / "merges.txt"))


@pytest.fixture(scope="module")
def docs():
    files = [
        shared_path("data", "bc5cdr", name) for name in ("CDR_TestSet.PubTator.txt", "CDR_DevelopmentSet.PubTator.txt")
    ]
    return [doc for f in files for doc in read_pubtator(f)]


@pytest.fixture(scope="module")
def texts(docs):
    return [text for text, _ in docs]


@pytest.fixture(scope="module")
def hf_ids(hf, texts):
    return [hf(t)["input_ids"] for t in texts]


# Toy vocabulary (transformers' own unit-test merges "l o", "lo w", "e r</w>" plus a few), in both layouts.
TOY_PIECES = [
    "l",
    "o",
    "w",
    "e",
    "r",
    "s",
    "t",
    "i",
    "d",
    "n",
    "lo",
    "low",
    "ne",
    "new",
    "w</w>",
    "r</w>",
    "t</w>",
    "s</w>",
    "a</w>",
    "er</w>",
    "low</w>",
    "newer</w>",
    ".</w>",
    "@-@</w>",
    "&amp;</w>",
    "b</w>",
    "learned1</w>",
]
TOY_MERGES = [("l", "o"), ("lo", "w"), ("e", "r</w>"), ("n", "e"), ("ne", "w"), ("new", "er</w>")]


@pytest.fixture
def toy_hf_dir(tmp_path):
    vocab = {t: i for i, t in enumerate(SPECIALS + TOY_PIECES)}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in TOY_MERGES))
    return tmp_path


@pytest.fixture
def toy_fairseq_dir(tmp_path):
    d = tmp_path / "fairseq"
    d.mkdir()
    symbols = [p[:-4] if p.endswith("</w>") else p + "@@" for p in TOY_PIECES]
    (d / "dict.txt").write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(symbols)))
    (d / "bpecodes").write_text("".join(f"{a} {b} {1000 - i}\n" for i, (a, b) in enumerate(TOY_MERGES)))
    return d


# --- ids against transformers ----------------------------------------------------------------------
def test_covid_example(tok, hf_base_dir):
    assert tok("COVID-19 is")["input_ids"] == [2, 4805, 9, 656, 21]
    assert tok.encode("COVID-19 is") == [2, 4805, 9, 656, 21]
    assert tok.tokenize("COVID-19 is") == ["COVID</w>", "@-@</w>", "19</w>", "is</w>"]
    assert BioGptTokenizer.from_pretrained(hf_base_dir).encode("COVID-19 is") == [2, 4805, 9, 656, 21]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == tok.vocab_size == 42384


def test_worked_examples_from_the_reference(tok):
    """biogpt-reference-spec 8.2: a lower-cased RE target and "learned1" typed as text."""
    text = "the interaction between aspirin and warfarin is mechanism ."
    assert tok.encode(text, add_special_tokens=False) == [6, 639, 45, 5062, 8, 8257, 21, 442, 4]
    assert tok.encode("learned1", add_special_tokens=False) == [17807, 2467, 18802]
    assert tok.convert_tokens_to_ids("...</w>") == 11475  # the truncation marker of the task models


def test_ids_equal_transformers_on_every_bc5cdr_abstract(tok, texts, hf_ids, hf, hf_base_dir):
    assert len(texts) == 1000
    ours = tok(texts)["input_ids"]  # one batch: one fastBPE call
    mismatches = [i for i, (a, b) in enumerate(zip(ours, hf_ids)) if a != b]
    assert not mismatches, f"{len(mismatches)} abstracts differ, first: {texts[mismatches[0]][:200]!r}"
    # one text at a time (cache warm) and from the transformers files give the same ids
    assert [tok.encode(t) for t in texts[:50]] == hf_ids[:50]
    assert BioGptTokenizer.from_pretrained(hf_base_dir)(texts[:200])["input_ids"] == hf_ids[:200]
    assert tok.tokenize(texts[0]) == hf.tokenize(texts[0])


def test_ids_equal_transformers_large_vocabulary(texts, tmp_path):
    large = shared_path("data", "biogpt-vocab", "large")
    ours = BioGptTokenizer.from_fairseq(large / "dict.txt", large / "bpecodes")
    hf_dir = hf_files_from_fairseq(large, tmp_path)
    ref = HFTokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
    assert len(ours) == 57717
    subset = texts[::8]
    assert ours(subset)["input_ids"] == [ref(t)["input_ids"] for t in subset]


def test_tricky_text_equals_transformers(tok, hf):
    cases = [
        "Mr. Smith saw Dr. Jones in Washington D.C. on Jan. 5 (e.g. at 3 p.m.) ... then left.",
        "No. 1 vs No. 2; the p.o. dose was 5 mg/kg/day.",
        "AT&T's [x] a-b |z| <5> \"quoted\" 'single' don't 50% $3",
        "tumour-necrosis-factor-alpha (TNF-α) and β2-microglobulin, 1,000,000 cells",
        "",
        "   ",
        "tabs\tand\nnewlines\n\nhere",
        "evertheless gt; lt;",
        "surrogate ab\ud800cd survives",  # fastBPE needs UTF-8; the Python fallback handles it
    ]
    for text in cases:
        assert tok(text)["input_ids"] == hf(text)["input_ids"], text


# --- decoding ----------------------------------------------------------------------------------------
def test_decode_equals_transformers(tok, hf, texts, hf_ids):
    assert tok.decode([2, 4805, 9, 656, 21]) == hf.decode([2, 4805, 9, 656, 21]) == "</s>COVID-19 is"
    for ids in hf_ids[:100]:
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    odd = [2, 0, 1, 3, 999999, 5, 6, 7]  # specials, an out-of-range id -> <unk>
    for skip in (False, True):
        assert tok.decode(odd, skip_special_tokens=skip) == hf.decode(odd, skip_special_tokens=skip)
    assert tok.batch_decode(hf_ids[:3], skip_special_tokens=True) == hf.batch_decode(
        hf_ids[:3], skip_special_tokens=True
    )
    # round trip: abstracts come back in Moses-detokenised form, as with transformers
    for text in texts[:20]:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == hf.decode(
            hf.encode(text), skip_special_tokens=True
        )
    assert tok.decode(tok.encode("COVID-19 is"), skip_special_tokens=True) == "COVID-19 is"


# --- pairs, padding, truncation, tensors ------------------------------------------------------------
def test_pair_encoding(tok, compat, hf, texts):
    a, b = "COVID-19 is", "a global pandemic"
    ids = compat(a, b)["input_ids"]
    assert ids == [2, 4805, 9, 656, 21, 2] + tok.encode(b, add_special_tokens=False)
    assert ids == hf(a, b)["input_ids"]
    batch = compat(texts[:4], texts[4:8])
    assert batch["input_ids"] == hf(texts[:4], texts[4:8])["input_ids"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_and_attention_mask(tok, compat, hf, side):
    batch = ["COVID-19 is", "Aspirin inhibits COX-1 and COX-2 in platelets .", "a"]
    for subject, kwargs in (
        (tok, {"padding": True}),
        (compat, {"padding": "max_length", "max_length": 20}),
        (compat, {"padding": True, "pad_to_multiple_of": 8}),
    ):
        ours = subject(batch, padding_side=side, **kwargs)
        ref = hf(batch, padding_side=side, **kwargs)
        assert ours["input_ids"] == ref["input_ids"], kwargs
        assert ours["attention_mask"] == ref["attention_mask"], kwargs
    out = tok(batch, padding=True, padding_side=side, return_tensors="pt")
    assert out.input_ids.shape == out["attention_mask"].shape == (3, 13)
    row, a = out.input_ids[2].tolist(), tok.convert_tokens_to_ids("a</w>")
    assert row == ([2, a] + [1] * 11 if side == "right" else [1] * 11 + [2, a])
    assert out.attention_mask.sum(1).tolist() == [5, 13, 2]
    single = tok("COVID-19 is", return_tensors="pt")
    assert single["input_ids"].tolist() == [[2, 4805, 9, 656, 21]]
    with pytest.raises(ValueError, match="padding=True"):
        tok(batch, return_tensors="pt")


def test_truncation(compat, hf, texts):
    long_text, other = texts[0], texts[1]
    for kwargs in (
        {"truncation": True, "max_length": 16},
        {"max_length": 9},
        {"truncation": "only_first", "max_length": 30},
        {"truncation": True, "max_length": 10, "padding": "max_length"},
    ):
        assert compat(long_text, **kwargs)["input_ids"] == hf(long_text, **kwargs)["input_ids"], kwargs
    for kwargs in (
        {"truncation": True, "max_length": 40},
        {"truncation": "only_second", "max_length": 50},
        {"truncation": "only_first", "max_length": 300},
    ):
        assert compat(long_text, other, **kwargs)["input_ids"] == hf(long_text, other, **kwargs)["input_ids"], kwargs
    assert compat(long_text, truncation=True, max_length=16)["input_ids"][:1] == [2]
    # without max_length the limit is model_max_length (1024 as in the published tokenizer_config.json)
    assert len(compat(" ".join(texts[:10]), truncation=True)["input_ids"]) == 1024


# --- pickling, saving, added tokens -----------------------------------------------------------------
def test_pickle_round_trip(tok, texts, hf_ids):
    tok(texts[:5])  # make sure fastBPE and the caches exist before pickling
    blob = pickle.dumps(tok)
    clone = pickle.loads(blob)
    assert clone._fastbpe is None and clone._cache == {}
    assert clone(texts[:100])["input_ids"] == hf_ids[:100]
    assert pickle.loads(pickle.dumps(clone)).decode(hf_ids[0]) == tok.decode(hf_ids[0])


def test_bounded_cache_keeps_ids_exact(tok, texts, hf_ids):
    small = pickle.loads(pickle.dumps(tok))
    small.cache_size = 300  # far fewer than the distinct words of these abstracts: forces resets
    assert [small.encode(t) for t in texts[:30]] == hf_ids[:30]
    assert small(texts[30:60])["input_ids"] == hf_ids[30:60]
    assert len(small._cache) <= max(300, len(set(w for t in texts[30:60] for w in small.moses_tokenize(t))))


def test_save_vocabulary_and_reload(tok, hf, texts, hf_ids, tmp_path):
    vocab_file, merges_file = tok.save_vocabulary(tmp_path / "ours")
    hf_vocab, hf_merges = hf.save_vocabulary(str(tmp_path))
    assert open(vocab_file, encoding="utf-8").read() == open(hf_vocab, encoding="utf-8").read()
    assert open(merges_file, encoding="utf-8").read() == open(hf_merges, encoding="utf-8").read()
    reloaded = BioGptTokenizer(vocab_file=vocab_file, merges_file=merges_file)
    assert reloaded(texts[:100])["input_ids"] == hf_ids[:100]

    tok.save_pretrained(tmp_path / "pretrained")
    theirs = HFTokenizer.from_pretrained(str(tmp_path / "pretrained"))
    assert [theirs(t)["input_ids"] for t in texts[:50]] == hf_ids[:50]
    assert theirs.model_max_length == 1024
    assert BioGptTokenizer.from_pretrained(tmp_path / "pretrained")(texts[:50])["input_ids"] == hf_ids[:50]


def test_added_learned_prompt_tokens(base_dir, hf_ids, tmp_path):
    tok = BioGptTokenizer.from_fairseq(base_dir / "dict.txt", base_dir / "bpecodes")
    names = [f"learned{i}" for i in range(1, 10)]
    assert tok.add_tokens(names) == 9
    assert tok.add_tokens(names[:2]) == 0  # already there
    assert tok.convert_tokens_to_ids(names) == list(range(42384, 42393))
    assert len(tok) == 42393 and tok.vocab_size == 42384
    assert tok.convert_ids_to_tokens([42384, 6]) == ["learned1", "the</w>"]
    # never produced from text (fairseq encodes the word with BPE), but decoded as whole words
    assert tok.encode("learned1", add_special_tokens=False) == [17807, 2467, 18802]
    ids = [2] + tok.encode("aspirin", add_special_tokens=False) + list(range(42384, 42393)) + [6, 639]
    assert tok.decode(ids, skip_special_tokens=True) == "aspirin " + " ".join(names) + " the interaction"

    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "added_tokens.json").read_text()) == dict(zip(names, range(42384, 42393)))
    reloaded = BioGptTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_tokens_to_ids(names) == list(range(42384, 42393)) and len(reloaded) == 42393
    theirs = HFTokenizer.from_pretrained(str(tmp_path))
    assert theirs.convert_tokens_to_ids(names) == list(range(42384, 42393)) and len(theirs) == 42393
    assert theirs.decode(hf_ids[0]) == reloaded.decode(hf_ids[0])

    (tmp_path / "added_tokens.json").write_text(json.dumps({"learned1": 50000}))
    with pytest.raises(TokenizerError, match="next free id is 42384"):
        BioGptTokenizer.from_pretrained(tmp_path)


# --- offsets ------------------------------------------------------------------------------------------
def test_offsets_map_back_to_original_text(tok, docs):
    texts = [text for text, _ in docs]
    enc = tok(texts, return_offsets_mapping=True)
    plain = tok(texts)["input_ids"]
    for (text, mentions), ids, offsets, ref in zip(docs, enc["input_ids"], enc["offset_mapping"], plain):
        assert ids == ref and len(offsets) == len(ids)
        assert offsets[0] == (0, 0)  # the leading </s>
        spans = offsets[1:]
        assert all(0 <= s <= e <= len(text) for s, e in spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])), "spans overlap or go backwards"
        # per whitespace-separated word of the original, its pieces' spans spell it exactly
        words, start = {}, None
        for i, ch in enumerate(text + " "):
            if ch.isspace() and start is not None:
                words[start] = text[start:i]
                start = None
            elif not ch.isspace() and start is None:
                start = i
        rebuilt: dict[int, str] = {}
        word_starts = sorted(words)
        for s, e in spans:
            if s == e:
                continue
            w = word_starts[bisect.bisect_right(word_starts, s) - 1]
            assert e <= w + len(words[w]), f"span {text[s:e]!r} crosses a word boundary"
            rebuilt[w] = rebuilt.get(w, "") + text[s:e]
        assert rebuilt == words
        # every gold mention is covered exactly by whole pieces or lies inside pieces
        for m_start, m_end, mention in mentions:
            assert text[m_start:m_end] == mention
            inside = [(s, e) for s, e in spans if s < m_end and e > m_start]
            assert inside and inside[0][0] <= m_start and inside[-1][1] >= m_end


def test_offsets_of_escapes_dashes_and_pairs(tok, compat):
    text = "AT&T's COX-2 [x]"
    enc = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    spans = dict(zip(pieces, enc["offset_mapping"]))
    assert text[slice(*spans["&amp;</w>"])] == "&"
    assert text[slice(*spans["@-@</w>"])] == "-"
    assert text[slice(*spans["&#91;</w>"])] == "["
    nonempty = [(s, e) for s, e in enc["offset_mapping"] if e > s]
    assert "".join(text[s:e] for s, e in nonempty) == text.replace(" ", "")
    pair = compat("a-b", "c d", return_offsets_mapping=True, padding="max_length", max_length=10)
    assert pair["offset_mapping"] == [(0, 0), (0, 1), (1, 2), (2, 3), (0, 0), (0, 1), (2, 3)] + [(0, 0)] * 3
    assert pair["attention_mask"] == [1] * 7 + [0] * 3


# --- toy vocabulary (no ../shared needed) -------------------------------------------------------------
def test_toy_vocabulary_both_layouts_match_transformers(toy_hf_dir, toy_fairseq_dir):
    ours = BioGptTokenizer.from_pretrained(toy_hf_dir)
    fair = BioGptTokenizer.from_pretrained(toy_fairseq_dir)
    ref = HFTokenizer(str(toy_hf_dir / "vocab.json"), str(toy_hf_dir / "merges.txt"))
    assert ours.tokenize("lower") == ["low", "er</w>"]  # transformers' own unit-test example
    for text in ["lower newer", "lowest news", "a-b & lower.", "zzz low", ""]:
        assert ours(text)["input_ids"] == fair(text)["input_ids"] == ref(text)["input_ids"], text
        assert ours.tokenize(text) == ref.tokenize(text)
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))


def test_toy_merges_without_final_newline_drop_the_last_merge_like_transformers(toy_hf_dir):
    (toy_hf_dir / "merges.txt").write_text("l o\nlo w\ne r</w>")  # transformers ignores "e r</w>"
    ours = BioGptTokenizer.from_pretrained(toy_hf_dir)
    ref = HFTokenizer(str(toy_hf_dir / "vocab.json"), str(toy_hf_dir / "merges.txt"))
    assert ours.tokenize("lower") == ref.tokenize("lower") == ["low", "e", "r</w>"]


def test_toy_offsets_of_an_escape_split_into_pieces(toy_hf_dir):
    tok = BioGptTokenizer.from_pretrained(toy_hf_dir)
    enc = tok("low&b", return_offsets_mapping=True)  # Moses: low &amp; b; no merge rebuilds "&amp;"
    assert tok.tokenize("low&b") == ["lo", "w</w>", "&", "a", "m", "p", ";</w>", "b</w>"]
    # only the piece holding the escape's first character covers the "&"; the others are empty
    assert enc["offset_mapping"] == [(0, 0), (0, 2), (2, 3), (3, 4), (4, 4), (4, 4), (4, 4), (4, 4), (4, 5)]


# --- errors --------------------------------------------------------------------------------------------
def test_missing_files_give_clear_errors(tmp_path, toy_hf_dir, toy_fairseq_dir):
    with pytest.raises(TokenizerError, match="does not exist"):
        BioGptTokenizer.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        TokenizerError, match=r"no tokenizer files in .*empty.*vocab.json \+ merges.txt.*dict.txt \+ bpecodes"
    ):
        BioGptTokenizer.from_pretrained(empty)
    with pytest.raises(TokenizerError, match="vocab_file and merges_file"):
        BioGptTokenizer()
    with pytest.raises(TokenizerError, match="nope.json does not exist"):
        BioGptTokenizer(vocab_file=tmp_path / "nope.json", merges_file=toy_hf_dir / "merges.txt")
    with pytest.raises(TokenizerError, match="missing.txt does not exist"):
        BioGptTokenizer(vocab_file=toy_hf_dir / "vocab.json", merges_file=tmp_path / "missing.txt")
    with pytest.raises(TokenizerError, match="dict.txt does not exist"):
        BioGptTokenizer.from_fairseq(tmp_path / "dict.txt", toy_fairseq_dir / "bpecodes")


def test_malformed_files_give_clear_errors(tmp_path, toy_fairseq_dir):
    bad = tmp_path / "dict.txt"
    bad.write_text("the 5\nnocount\n")
    with pytest.raises(TokenizerError, match=r"dict.txt:2: expected '<token> <count>'"):
        BioGptTokenizer.from_fairseq(bad, toy_fairseq_dir / "bpecodes")
    bad.write_text("the 5\nof 4\nthe 3\n")
    with pytest.raises(TokenizerError, match=r"dict.txt:3: duplicate token 'the'"):
        BioGptTokenizer.from_fairseq(bad, toy_fairseq_dir / "bpecodes")
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"a</w>": 0}))
    with pytest.raises(TokenizerError, match="lacks the special tokens"):
        BioGptTokenizer(vocab_file=vocab, merges_file=toy_fairseq_dir / "bpecodes")
    vocab.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read vocabulary"):
        BioGptTokenizer(vocab_file=vocab, merges_file=toy_fairseq_dir / "bpecodes")
    empty_codes = tmp_path / "bpecodes"
    empty_codes.write_text("\n")
    with pytest.raises(TokenizerError, match="holds no merges"):
        BioGptTokenizer.from_fairseq(toy_fairseq_dir / "dict.txt", empty_codes)


def test_bad_call_arguments(toy_hf_dir):
    tok = BioGptTokenizer.from_pretrained(toy_hf_dir)
    with pytest.raises(ValueError, match="padding_side"):
        tok("low", padding_side="middle")
    with pytest.raises(ValueError, match="unknown padding"):
        tok("low", padding="sideways")
    with pytest.raises(TypeError, match="str or a list of str"):
        tok([b"bytes"])
    with pytest.raises(ValueError, match="return_tensors"):
        tok("low", return_tensors="tf")


def test_transformers_only_options_are_fenced_off(toy_hf_dir):
    tok = BioGptTokenizer.from_pretrained(toy_hf_dir)
    with pytest.raises(TypeError, match="biogpt.tokenizer_compat"):
        tok("low", truncation=True, max_length=3)
    with pytest.raises(ValueError, match="biogpt.tokenizer_compat"):
        tok(["low", "lower"], padding="max_length")
    with pytest.raises(TypeError):
        tok("low", "lower")  # no text_pair
    compat = TransformersCompatTokenizer.from_pretrained(toy_hf_dir, truncation_side="left")
    assert compat("low") == tok("low") and compat.encode("lower newer") == tok.encode("lower newer")
    assert compat("lower newer", truncation=True, max_length=2)["input_ids"] == [2, compat.encode("newer")[-1]]
    low, a = tok.encode("low", add_special_tokens=False), tok.encode("a", add_special_tokens=False)
    assert pickle.loads(pickle.dumps(compat))("low", "a", return_attention_mask=False) == {
        "input_ids": [2, *low, 2, *a]
    }
