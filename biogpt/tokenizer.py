"""BioGPT tokenizer: Moses (sacremoses) then BPE (fastBPE), id-for-id equal to transformers' BioGptTokenizer.

Pipeline (transformers/models/biogpt/tokenization_biogpt.py, and fairseq's moses + fastbpe encoders):

1. sacremoses ``MosesTokenizer(lang="en").tokenize(text, aggressive_dash_splits=True, escape=True)``:
   punctuation split off, ``a-b`` -> ``a @-@ b``, XML escapes (``&`` -> ``&amp;``, ``'`` -> ``&apos;``,
   ``[`` -> ``&#91;`` ...), because the model was trained on escaped text. No lowercasing.
2. BPE of each Moses token with the merges (subword-nmt algorithm, run by fastBPE's C++ code). The
   merges are NOT restricted by the vocabulary (transformers does not restrict; fastBPE would if given
   a vocab file, which changes e.g. ``gt;`` and ``evertheless``), so a piece missing from the
   vocabulary becomes ``<unk>`` (3), exactly as in transformers.
3. Ids: one leading ``</s>`` (2) - fairseq's start symbol, not ``<s>`` - so a text is ``[2] + X``.
   ``"COVID-19 is"`` -> ``[2, 4805, 9, 656, 21]``.

Calling the tokenizer takes what biomine uses: one text or a list, ``add_special_tokens``, ``padding``
(``True``/'longest'), ``padding_side``, ``return_tensors='pt'`` and ``return_offsets_mapping``. The rest
of transformers' call (``text_pair``, ``truncation``, ``max_length``, ``padding='max_length'``,
``pad_to_multiple_of``, ``return_attention_mask``) is fenced off in :mod:`biogpt.tokenizer_compat`
(:class:`~biogpt.tokenizer_compat.TransformersCompatTokenizer`, a subclass with the same constructors).

Files. ``from_pretrained(dir)`` reads the transformers layout (``vocab.json`` + ``merges.txt``,
optional ``added_tokens.json`` and ``tokenizer_config.json``) or, failing that, the fairseq layout
(``dict.txt`` + ``bpecodes``); ``save_pretrained`` writes a directory that transformers'
``BioGptTokenizer.from_pretrained`` loads. The formats are read and written by
:mod:`biogpt.tokenizer_files`.

Added tokens (``add_tokens``, ``added_tokens.json``) get ids after the vocabulary: the learned prompt
tokens ``learned1..N`` of BioGPT's fine-tuned checkpoints sit at ids V0..V0+N-1. As in fairseq, they
are injected as ids and never matched in text: ``"learned1"`` typed in text is BPE'd like any word.

Deliberate differences from transformers 5 (each one follows fairseq, which trained the models):

* special or added token strings inside text (``"</s>"``, ``"learned1"``) are ordinary text, not
  control ids (transformers turns them into ids 2 / V0, so text could inject control tokens);
* ``decode`` puts an added token between spaces (``"learned1 learned2 the"``); transformers 5 glues
  it to its neighbours (``"learned1learned2the"``). Everything else in decode is identical.

Offsets. ``return_offsets_mapping=True`` gives each id its ``(start, end)`` span in the ORIGINAL text:
Moses tokens are aligned back onto the input (escapes mapped back: ``&amp;`` covers the one ``&``,
``@-@`` the ``-``); a piece that starts inside an escape gets an empty span so that concatenating a
word's spans reproduces its characters once. Special and padding ids get ``(0, 0)``.

Speed. Per Moses token the pieces and ids are cached, fastBPE runs once per batch on the new tokens
only, and sacremoses' English tokenizer is sped up by replacing its per-call rebuilding of large
character sets with frozensets (same results; see :class:`_FastMosesTokenizer`).

Pickling (Ray ships tokenizers to actors) keeps the vocabulary and merges and drops the fastBPE and
sacremoses objects and the cache; they are rebuilt on first use.

:raises TokenizerError: for missing or malformed vocabulary files (the message names the file and
    the fix).
:raises ValueError: for an unknown ``padding``/``padding_side``/``return_tensors``, or unpadded rows
    of different lengths with ``return_tensors='pt'``.
:raises TypeError: for a text that is not a str, or a transformers-only call option (the message
    points to :mod:`biogpt.tokenizer_compat`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, cast, overload

from sacremoses import MosesDetokenizer, MosesTokenizer

from . import tokenizer_files as files
from .errors import TokenizerError
from .tokenizer_files import (
    BOS,
    DEFAULT_MODEL_MAX_LENGTH,
    END_OF_WORD,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    read_fairseq_dict,
)

__all__ = [
    "BOS",
    "DEFAULT_MODEL_MAX_LENGTH",
    "END_OF_WORD",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "BatchEncoding",
    "BioGptTokenizer",
    "read_fairseq_dict",
]

# Moses' XML escapes (sacremoses MosesTokenizer.MOSES_ESCAPE_XML_REGEXES) and what they stand for.
_ESCAPES = {
    "&amp;": "&",
    "&#124;": "|",
    "&lt;": "<",
    "&gt;": ">",
    "&apos;": "'",
    "&quot;": '"',
    "&#91;": "[",
    "&#93;": "]",
}
_ESCAPE_RE = re.compile("|".join(re.escape(e) for e in _ESCAPES))
_DASH_SPLIT = "@-@"  # aggressive_dash_splits turns the "-" of "a-b" into this token

_PADDING = {False: False, "do_not_pad": False, True: True, "longest": True}
_COMPAT = "biogpt.tokenizer_compat.TransformersCompatTokenizer"

Row = tuple[list[int], list[tuple[int, int]] | None]  # one text's ids and (when asked) their offsets
Table = Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]]  # Moses token -> (BPE pieces, ids)


class _FastMosesTokenizer(MosesTokenizer):
    """sacremoses' tokenizer with its hot helpers made O(1) per call; results are unchanged.

    sacremoses (0.1/0.2) rebuilds ``set(self.IsLower)`` / ``set(self.IsAlpha)`` (thousands of
    characters) on every ``islower``/``isanyalpha`` call, once per token ending in ``.``, and scans the
    non-breaking prefix list linearly: about 70% of its time on PubMed abstracts. These overrides
    keep the exact logic of ``MosesTokenizer.islower``, ``isanyalpha`` and
    ``handles_nonbreaking_prefixes`` (sacremoses/tokenize.py) with precomputed frozensets. The
    tokenizer tests compare the ids with transformers (which uses stock sacremoses) on 1,000 abstracts.
    """

    _LOWER = frozenset(MosesTokenizer.IsLower)
    _ALPHA = frozenset(MosesTokenizer.IsAlpha)

    def __init__(self) -> None:
        super().__init__(lang="en")
        self._nonbreaking = frozenset(self.NONBREAKING_PREFIXES)
        self._numeric_only = frozenset(self.NUMERIC_ONLY_PREFIXES)

    def islower(self, text: str) -> bool:
        return self._LOWER.issuperset(text)

    def isanyalpha(self, text: str) -> bool:
        return not self._ALPHA.isdisjoint(text)

    def handles_nonbreaking_prefixes(self, text: str) -> str:
        tokens = text.split()
        last = len(tokens) - 1
        for i, token in enumerate(tokens):
            # sacremoses tests re.search(r"^(\S+)\.$", token); split() tokens hold no whitespace.
            if len(token) < 2 or token[-1] != ".":
                continue
            prefix = token[:-1]
            if (
                ("." in prefix and self.isanyalpha(prefix))
                or (prefix in self._nonbreaking and prefix not in self._numeric_only)
                or (i != last and self.islower(tokens[i + 1][0]))
            ):
                continue
            if prefix in self._numeric_only and i < last and "0" <= tokens[i + 1][0] <= "9":
                continue
            tokens[i] = prefix + " ."
        return " ".join(tokens)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence fastBPE's C++ progress lines ("Loading codes from ...") written straight to fd 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class BatchEncoding(dict):
    """The tokenizer's output: a dict (``input_ids``, ``attention_mask``, maybe ``offset_mapping``)
    that also allows attribute access and ``.to(device)`` for tensors, like transformers'."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> "BatchEncoding":
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


# --- offsets ---------------------------------------------------------------------------------------
def _unescape_units(word: str) -> list[tuple[int, str]]:
    """(escaped length, original text) units of a Moses token, e.g. ``AT&amp;T`` -> A, T, &amp;->&, T."""
    if word == _DASH_SPLIT:
        return [(len(word), "-")]
    if "&" not in word:
        return [(1, c) for c in word]
    units: list[tuple[int, str]] = []
    i = 0
    for m in _ESCAPE_RE.finditer(word):
        units.extend((1, c) for c in word[i : m.start()])
        units.append((m.end() - m.start(), _ESCAPES[m.group()]))
        i = m.end()
    units.extend((1, c) for c in word[i:])
    return units


def _piece_spans(text: str, words: Sequence[str], table: Table) -> list[tuple[int, int]]:
    """Character span in ``text`` of every BPE piece of its Moses tokens ``words`` (pieces from ``table``)."""
    spans: list[tuple[int, int]] = []
    pos, n = 0, len(text)
    for word in words:
        raw_units = _unescape_units(word)
        raw = "".join(r for _, r in raw_units)
        while pos < n and (text[pos].isspace() or text[pos] < " "):  # separators Moses dropped
            pos += 1
        start = pos if text.startswith(raw, pos) else text.find(raw, pos)
        pieces = table[word][0]
        if start < 0:  # cannot happen for text Moses only split (e.g. control chars inside a word)
            spans.extend((pos, pos) for _ in pieces)
            continue
        # bounds[e]: original offset at escaped position e; a position inside an escape maps to
        # the escape's end, so only the piece holding its first character covers the character.
        bounds = [0] * (len(word) + 1)
        e, o = 0, start
        for esc_len, raw_unit in raw_units:
            bounds[e] = o
            for k in range(1, esc_len):
                bounds[e + k] = o + len(raw_unit)
            e += esc_len
            o += len(raw_unit)
        bounds[e] = o
        e = 0
        last = len(pieces) - 1
        for j, piece in enumerate(pieces):
            length = len(piece) - (len(END_OF_WORD) if j == last else 0)
            spans.append((bounds[e], bounds[e + length]))
            e += length
        pos = o
    return spans


def _as_tensors(out: dict[str, list], return_tensors: str) -> BatchEncoding:
    """``out``'s lists of rows as ``torch.long`` tensors of shape ``(B, T)`` (``(B, T, 2)`` for offsets)."""
    if return_tensors != "pt":
        raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
    if len({len(r) for r in out["input_ids"]}) > 1:
        raise ValueError("texts have different lengths: pass padding=True to build tensors")
    import torch

    return BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})


def as_texts(text: str | Sequence[str]) -> tuple[bool, list[str]]:
    """``(batched, texts)``: a list or tuple is a batch of texts, anything else is one text."""
    if isinstance(text, (list, tuple)):
        return True, list(text)
    # Typed as a str: anything else is refused (TypeError) where the texts are encoded.
    return False, [cast(str, text)]


class BioGptTokenizer:
    """Moses + BPE tokenizer of BioGPT with transformers' ``BioGptTokenizer`` ids and its common API.

    Build it with :meth:`from_pretrained` (a directory), ``BioGptTokenizer(vocab_file=..., merges_file=...)``
    or :meth:`from_fairseq`. Calling it encodes text(s)::

        tok = BioGptTokenizer.from_pretrained("models/biogpt")
        tok("COVID-19 is")["input_ids"]                     # [2, 4805, 9, 656, 21]
        tok(["a", "b c"], padding=True, return_tensors="pt")
        tok.decode([2, 4805, 9, 656, 21], skip_special_tokens=True)   # 'COVID-19 is'

    Pairs, truncation and fixed-length padding: :class:`biogpt.tokenizer_compat.TransformersCompatTokenizer`.
    """

    bos_token, pad_token, eos_token, unk_token = BOS, PAD, EOS, UNK
    #: Moses tokens whose BPE is cached; past this the cache is emptied (bounds memory on huge corpora).
    cache_size = 500_000

    def __init__(
        self,
        vocab_file: str | Path | None = None,
        merges_file: str | Path | None = None,
        *,
        added_tokens: Sequence[str] = (),
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        padding_side: str = "right",
        _encoder: dict[str, int] | None = None,
        _merges: list[tuple[str, str]] | None = None,
        _source: str | None = None,
    ) -> None:
        """From transformers' ``vocab.json`` and ``merges.txt`` (the ``_`` arguments are for the
        other constructors). ``model_max_length`` is only stored and saved (1024, as published).

        :raises TokenizerError: a file is missing or malformed, or the vocabulary lacks a special token.
        """
        if _encoder is None:
            if vocab_file is None or merges_file is None:
                raise TokenizerError(
                    "BioGptTokenizer needs vocab_file and merges_file (or use "
                    "BioGptTokenizer.from_pretrained(dir) / from_fairseq(dict.txt, bpecodes))"
                )
            _encoder = files.read_vocab_json(vocab_file)
            _merges = files.read_merges(merges_file, hf_format=True)
            _source = str(Path(vocab_file).parent)
        self.encoder: dict[str, int] = dict(_encoder)
        self.merges: list[tuple[str, str]] = list(_merges or [])
        self.source = _source
        missing = [t for t in SPECIAL_TOKENS if t not in self.encoder]
        if missing:
            raise TokenizerError(
                f"vocabulary of {_source} lacks the special tokens {missing}; a BioGPT "
                "vocabulary starts with <s> <pad> </s> <unk> (ids 0-3)"
            )
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        if len(self.decoder) != len(self.encoder):
            raise TokenizerError(f"vocabulary of {_source} maps several tokens to one id")
        self.added_tokens_encoder: dict[str, int] = {}
        self.added_tokens_decoder: dict[int, str] = {}
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self._next_id = max(self.decoder) + 1
        self._init_runtime()
        self.add_tokens(list(added_tokens))

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_fairseq(cls, dict_file: str | Path, bpecodes_file: str | Path, **kwargs) -> BioGptTokenizer:
        """From the original fairseq files: ``dict.txt`` (ids 4..) and ``bpecodes`` (merges).

        :raises TokenizerError: a file is missing or malformed.
        """
        encoder = files.read_fairseq_vocab(dict_file)
        merges = files.read_merges(bpecodes_file, hf_format=False)
        return cls(_encoder=encoder, _merges=merges, _source=str(Path(dict_file).parent), **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, revision: str | None = None, **kwargs) -> BioGptTokenizer:
        """From a directory with ``vocab.json`` + ``merges.txt`` (preferred) or ``dict.txt`` + ``bpecodes``;
        ``path`` may also be a Hub id or a pulled release (:mod:`biogpt.hub`, ``revision`` as there).

        ``added_tokens.json`` (token -> id, ids right after the vocabulary) and ``model_max_length``
        / ``padding_side`` from ``tokenizer_config.json`` are read when present; keyword arguments
        (e.g. ``padding_side="left"``) override them.

        :raises TokenizerError: no such directory, neither file layout in it, or a malformed file.
        """
        from .hub import resolve

        path = resolve(path, revision).path
        files.check_directory(path)
        kwargs = {**files.read_tokenizer_config(path), **kwargs}
        layout, first, second = files.find_vocabulary(path)
        tok = cls(first, second, **kwargs) if layout == "transformers" else cls.from_fairseq(first, second, **kwargs)
        added_file = path / files.ADDED_TOKENS_FILE
        if added_file.exists():
            tok._load_added_tokens(added_file)
        return tok

    def _load_added_tokens(self, file: Path) -> None:
        for token, idx in files.read_added_tokens(file):
            if token in self.added_tokens_encoder and self.added_tokens_encoder[token] == idx:
                continue
            if idx != self._next_id or token in self.encoder:
                raise TokenizerError(
                    f"{file}: {token!r} has id {idx} but the next free id is {self._next_id}; added tokens "
                    "must follow the vocabulary without gaps (learned prompt tokens sit at V0, V0+1, ...)"
                )
            self.add_tokens([token])

    def _init_runtime(self) -> None:
        """State that is rebuilt after unpickling rather than shipped."""
        self._moses_tokenizer: _FastMosesTokenizer | None = None
        self._moses_detokenizer: MosesDetokenizer | None = None
        self._fastbpe = None
        self._cache: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        self._ranks: dict[tuple[str, str], int] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_moses_tokenizer", "_moses_detokenizer", "_fastbpe", "_cache", "_ranks"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # --- vocabulary --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens), as in transformers."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder) + len(self.added_tokens_encoder)

    def __repr__(self) -> str:
        return (
            f"BioGptTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
            f"added_tokens={len(self.added_tokens_encoder)}, model_max_length={self.model_max_length})"
        )

    @property
    def bos_token_id(self) -> int:
        return self.encoder[BOS]

    @property
    def pad_token_id(self) -> int:
        return self.encoder[PAD]

    @property
    def eos_token_id(self) -> int:
        return self.encoder[EOS]

    @property
    def unk_token_id(self) -> int:
        return self.encoder[UNK]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.encoder[t] for t in SPECIAL_TOKENS]

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self.added_tokens_encoder}

    def add_tokens(self, tokens: str | Iterable[str]) -> int:
        """Append tokens after the vocabulary (ids len(self), len(self)+1, ...); returns how many were new.

        They are never produced from text (see the module docstring); insert their ids yourself, e.g.
        the learned prompt ``[2] + source_ids + tok.convert_tokens_to_ids(["learned1", ...])``.
        """
        if isinstance(tokens, str):
            tokens = [tokens]
        added = 0
        for token in tokens:
            if not isinstance(token, str) or not token or any(c.isspace() for c in token):
                raise ValueError(f"added tokens must be non-empty strings without spaces, got {token!r}")
            if token in self.encoder or token in self.added_tokens_encoder:
                continue
            self.added_tokens_encoder[token] = self._next_id
            self.added_tokens_decoder[self._next_id] = token
            self._next_id += 1
            added += 1
        return added

    # A str is also a Sequence[str]: the str overload, listed first, is the one a str call gets.
    @overload
    def convert_tokens_to_ids(self, tokens: str) -> int: ...  # type: ignore[overload-overlap]
    @overload
    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]: ...
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        idx = self.added_tokens_encoder.get(token)
        if idx is None:
            idx = self.encoder.get(token, self.encoder[UNK])
        return idx

    @overload
    def convert_ids_to_tokens(self, ids: int, skip_special_tokens: bool = False) -> str: ...
    @overload
    def convert_ids_to_tokens(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list[str]: ...
    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def _id_to_token(self, idx: int) -> str:
        token = self.added_tokens_decoder.get(idx)
        return token if token is not None else self.decoder.get(idx, UNK)

    # --- Moses and BPE -----------------------------------------------------------------------------
    @property
    def _moses(self) -> _FastMosesTokenizer:
        if self._moses_tokenizer is None:
            self._moses_tokenizer = _FastMosesTokenizer()
        return self._moses_tokenizer

    @property
    def _detok(self) -> MosesDetokenizer:
        if self._moses_detokenizer is None:
            self._moses_detokenizer = MosesDetokenizer(lang="en")
        return self._moses_detokenizer

    @property
    def _bpe(self):
        if self._fastbpe is None:
            import fastBPE

            # fastBPE reads "left right count" lines from a file (and exits the process if it cannot
            # open it), so write the merges we parsed - in rank order - to a private temp file.
            fd, codes = tempfile.mkstemp(prefix="biogpt-bpecodes-", suffix=".txt")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.writelines(f"{a} {b} {rank}\n" for rank, (a, b) in enumerate(self.merges))
                with _quiet_stderr():
                    self._fastbpe = fastBPE.fastBPE(codes)  # no vocab file: transformers does not restrict
            finally:
                os.unlink(codes)
        return self._fastbpe

    def moses_tokenize(self, text: str) -> list[str]:
        """Moses tokens of ``text`` (escaped, dash-split), exactly as transformers computes them."""
        return self._moses.tokenize(text, aggressive_dash_splits=True, return_str=False, escape=True)

    def _lookup(self, words: Iterable[str]) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
        """(pieces, ids) of each distinct word; BPE (one fastBPE call) runs only on words not cached.

        The result is a private table, so a cache reset by another thread cannot break the caller.
        """
        cache = self._cache
        unique = set(words)
        missing = [w for w in unique if w not in cache]
        if missing:
            if len(cache) + len(missing) > self.cache_size:
                cache.clear()
                missing = list(unique)
            try:
                outputs = self._bpe.apply(missing)
            except UnicodeEncodeError:  # a lone surrogate somewhere: fastBPE needs UTF-8, go word by word
                outputs = [self._apply_one(w) for w in missing]
            encoder, unk = self.encoder, self.encoder[UNK]
            for word, out in zip(missing, outputs):
                if out is None:
                    pieces = self._python_bpe(word)
                else:
                    # fastBPE marks every piece but the last with "@@"; the last is the word-final piece.
                    parts = out.split(" ")
                    pieces = tuple(p[:-2] for p in parts[:-1]) + (parts[-1] + END_OF_WORD,)
                cache[word] = (pieces, tuple(encoder.get(p, unk) for p in pieces))
        table = {}
        for w in unique:
            entry = cache.get(w)
            table[w] = entry if entry is not None else self._lookup([w])[w]  # evicted meanwhile: redo it
        return table

    def _apply_one(self, word: str) -> str | None:
        try:
            return self._bpe.apply([word])[0]
        except UnicodeEncodeError:
            return None

    def _python_bpe(self, word: str) -> tuple[str, ...]:
        """subword-nmt BPE in Python, for the rare word fastBPE cannot take (not UTF-8 encodable)."""
        if self._ranks is None:
            self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        ranks = self._ranks
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, len(ranks)))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def tokenize(self, text: str) -> list[str]:
        """BPE pieces in transformers' form (``lear``, ``ned</w>``), without special tokens."""
        words = self.moses_tokenize(text)
        table = self._lookup(words)
        return [p for w in words for p in table[w][0]]

    # --- encoding ----------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str],
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        **transformers_only: Any,
    ) -> BatchEncoding:
        """Encode one text (flat lists in the result) or a list of texts (lists of lists).

        Returns ``input_ids``, ``attention_mask`` and, when asked, ``offset_mapping`` (see the module
        docstring); each row is ``[2] + ids`` (just ``ids`` without ``add_special_tokens``).
        ``padding=True`` (or 'longest') pads every row to the longest with id 1 and mask 0, on
        ``padding_side`` (default :attr:`padding_side`, 'right'; use 'left' for batched generation).
        ``return_tensors='pt'`` gives ``torch.long`` tensors of shape ``(B, T)`` (one text: ``B = 1``).

        :raises ValueError: unknown ``padding``/``padding_side``/``return_tensors``; rows of different
            lengths with ``return_tensors='pt'`` (pass ``padding=True``).
        :raises TypeError: a text is not a str; a transformers-only option (``text_pair``,
            ``truncation``, ``max_length`` ...), which :mod:`biogpt.tokenizer_compat` provides.
        """
        if transformers_only:
            raise TypeError(
                f"BioGptTokenizer() takes no {', '.join(sorted(transformers_only))}: use {_COMPAT} for "
                "transformers' full call (pairs, truncation, max_length padding)"
            )
        pad = self._pad_mode(padding)
        side = self._padding_side(padding_side)
        batched, texts = as_texts(text)
        rows = self._encode_texts(texts, return_offsets_mapping)
        if add_special_tokens:
            rows = [self._add_start(ids, offsets) for ids, offsets in rows]
        target = max(len(ids) for ids, _ in rows) if pad else None
        return self._batch_encoding(rows, target, side, return_tensors, batched, with_offsets=return_offsets_mapping)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of one text: ``[2] + ids`` (just ``ids`` without ``add_special_tokens``)."""
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    @staticmethod
    def _pad_mode(padding: bool | str) -> bool:
        try:
            return _PADDING[padding]
        except (KeyError, TypeError):
            if padding == "max_length":
                raise ValueError(f"padding='max_length' is transformers' fixed-length padding: use {_COMPAT}") from None
            raise ValueError(f"unknown padding={padding!r}; use True ('longest') or False") from None

    def _padding_side(self, padding_side: str | None) -> str:
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        return side

    def _encode_texts(self, texts: Sequence[str], with_offsets: bool) -> list[Row]:
        """Ids (and offsets) of each text, without special tokens; one fastBPE call for the batch."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text must be a str or a list of str, got {type(t).__name__}")
        all_words = [self.moses_tokenize(t) for t in texts]
        table = self._lookup(itertools.chain.from_iterable(all_words))
        out = []
        for text, words in zip(texts, all_words):
            ids: list[int] = []
            extend = ids.extend
            for w in words:
                extend(table[w][1])
            out.append((ids, _piece_spans(text, words, table) if with_offsets else None))
        return out

    def _add_start(self, ids: list[int], offsets: list[tuple[int, int]] | None) -> Row:
        """``[</s>] + ids``: fairseq's start symbol (its offset is ``(0, 0)``)."""
        return [self.eos_token_id] + ids, None if offsets is None else [(0, 0)] + offsets

    def _batch_encoding(
        self,
        rows: Sequence[Row],
        target: int | None,
        side: str,
        return_tensors: str | None,
        batched: bool,
        *,
        with_offsets: bool,
        attention_mask: bool = True,
    ) -> BatchEncoding:
        """The result of a call: ``rows`` padded to ``target`` ids (if not None) on ``side``, with
        their attention masks, as lists (one row unwrapped unless ``batched``) or torch tensors."""
        padded = [self._pad_row(ids, offsets, target, side) for ids, offsets in rows]
        out = {"input_ids": [ids for ids, _, _ in padded]}
        if attention_mask:
            out["attention_mask"] = [mask for _, mask, _ in padded]
        if with_offsets:
            out["offset_mapping"] = [offsets for _, _, offsets in padded]
        if return_tensors is not None:
            return _as_tensors(out, return_tensors)
        if not batched:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    def _pad_row(self, ids: list[int], offsets: list[tuple[int, int]] | None, target: int | None, side: str):
        """``(ids, attention mask, offsets)`` of one row padded to ``target`` ids (None: as is) on ``side``."""
        mask = [1] * len(ids)
        n_pad = max(0, target - len(ids)) if target is not None else 0
        if not n_pad:
            return ids, mask, offsets
        pad_ids, pad_mask, pad_offs = [self.pad_token_id] * n_pad, [0] * n_pad, [(0, 0)] * n_pad
        if side == "right":
            return ids + pad_ids, mask + pad_mask, None if offsets is None else offsets + pad_offs
        return pad_ids + ids, pad_mask + mask, None if offsets is None else pad_offs + offsets

    # --- decoding ----------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``: pieces joined, ``</w>`` -> space, Moses-detokenized (unescaping ``&amp;`` ...)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        special = set(self.all_special_ids) if skip_special_tokens else ()
        parts = []
        for idx in ids:
            if idx in special:
                continue
            added = self.added_tokens_decoder.get(idx)
            if added is not None:
                parts.append(f" {added} ")  # a whole word, as fairseq's Dictionary.string writes it
            else:
                parts.append(self.decoder.get(idx, UNK).replace(END_OF_WORD, " "))
        words = "".join(parts).split()
        return self._detok.detokenize(words) if words else ""

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    # --- saving ------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write ``vocab.json`` and ``merges.txt`` as transformers does; returns their paths."""
        return files.write_vocabulary(save_directory, self.encoder, self.merges, filename_prefix)

    def save_pretrained(self, save_directory: str | Path) -> tuple[str, ...]:
        """Write a tokenizer directory that both this class and transformers load; returns the paths.

        Files: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``
        and, when there are added tokens, ``added_tokens.json``.
        """
        written = list(self.save_vocabulary(save_directory))
        written += files.write_tokenizer_config(
            save_directory,
            encoder=self.encoder,
            added_tokens=self.added_tokens_decoder,
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
        )
        return tuple(written)
