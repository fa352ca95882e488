"""BioGPT tokenizer: Moses (sacremoses) then BPE (fastBPE), id-for-id equal to transformers' BioGptTokenizer.

Pipeline (transformers/models/biogpt/tokenization_biogpt.py, and fairseq's moses + fastbpe encoders):

1. sacremoses ``MosesTokenizer(lang="en").tokenize(text, aggressive_dash_splits=True, escape=True)``:
   punctuation split off, ``a-b`` -> ``a @-@ b``, XML escapes (``&`` -> ``&amp;``, ``'`` -> ``&apos;``,
   ``[`` -> ``&#91;`` ...), because the model was trained on escaped text. No lowercasing.
2. BPE of each Moses token with the merges (subword-nmt algorithm, run by fastBPE's C++ code). The
   merges are NOT restricted by the vocabulary (transformers does not restrict; fastBPE would if given
   a vocab file, which changes e.g. ``gt;`` and ``evertheless``), so a piece missing from the
   vocabulary becomes ``<unk>`` (3), exactly as in transformers.
3. Ids: one leading ``</s>`` (2) - fairseq's start symbol, not ``<s>`` - so a single text is
   ``[2] + X`` and a pair ``[2] + A + [2] + B``. ``"COVID-19 is"`` -> ``[2, 4805, 9, 656, 21]``.

Files. ``from_pretrained(dir)`` reads the transformers layout (``vocab.json`` + ``merges.txt``,
optional ``added_tokens.json`` and ``tokenizer_config.json``) or, failing that, the fairseq layout
(``dict.txt`` + ``bpecodes``). vocab.json keys are pieces in transformers' form: a word-internal piece
is bare (``lear``), a word-final piece ends in ``</w>`` (``ned</w>``); ``dict.txt`` line k (``token
count``) is id k+3 after ``<s>`` ``<pad>`` ``</s>`` ``<unk>``, and its ``xx@@`` / ``yy`` symbols map to
``xx`` / ``yy</w>`` (the rewrite of transformers' conversion script). ``save_pretrained`` writes a
directory that transformers' ``BioGptTokenizer.from_pretrained`` loads.

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
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from sacremoses import MosesDetokenizer, MosesTokenizer

from .errors import TokenizerError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
DICT_FILE = "dict.txt"
BPECODES_FILE = "bpecodes"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)  # fairseq Dictionary order: ids 0, 1, 2, 3
END_OF_WORD = "</w>"
DEFAULT_MODEL_MAX_LENGTH = 1024  # tokenizer_config.json of every published BioGPT repo

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

_PADDING = {
    False: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    None: "do_not_truncate",
    False: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
_HUGE = int(1e20)  # transformers' "no limit" model_max_length is 1e30; anything above this is "none"


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


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {what} {path}: {exc}; re-create it with save_pretrained") from None


def _fairseq_to_piece(symbol: str) -> str:
    """fairseq dict symbol -> transformers vocab key: ``xx@@`` -> ``xx``; ``yy`` -> ``yy</w>``."""
    if symbol in SPECIAL_TOKENS:
        return symbol
    return symbol[:-2] if symbol.endswith("@@") else symbol + END_OF_WORD


def read_fairseq_dict(path: str | Path) -> list[str]:
    """The symbols of a fairseq ``dict.txt`` in id order, WITHOUT the four specials (ids 0-3).

    Lines are ``<symbol> <count>`` split on the last space (fairseq ``Dictionary.add_from_file``);
    blank lines are skipped. A duplicate symbol is an error, as in fairseq.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenizerError(
            f"fairseq dictionary {path} does not exist; pass the dict.txt shipped with "
            "the checkpoint (BioGPT's data/dict.txt)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read fairseq dictionary {path}: {exc}") from None
    symbols: list[str] = []
    seen = set(SPECIAL_TOKENS)
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip()
        if not line:
            continue
        symbol, _, count = line.rpartition(" ")
        if not symbol or not count.lstrip("-").isdigit():
            raise TokenizerError(
                f"{path}:{lineno}: expected '<token> <count>', got {line[:80]!r}; is this a fairseq dict.txt?"
            )
        if symbol in seen:
            raise TokenizerError(
                f"{path}:{lineno}: duplicate token {symbol!r}; a fairseq dict.txt lists each token once"
            )
        seen.add(symbol)
        symbols.append(symbol)
    if not symbols:
        raise TokenizerError(f"fairseq dictionary {path} is empty")
    return symbols


def _read_merges(path: Path, *, hf_format: bool) -> list[tuple[str, str]]:
    """Merge pairs in rank order from ``merges.txt`` (``a b``) or ``bpecodes`` (``a b count``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"BPE merges file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read BPE merges file {path}: {exc}") from None
    # transformers reads merges.txt as text.split("\n")[:-1]: the last line is dropped even when it
    # does not end in a newline. Do the same so the ranks (and ids) match it exactly.
    lines = text.split("\n")[:-1] if hf_format else text.splitlines()
    ranks: dict[tuple[str, str], int] = {}
    for rank, line in enumerate(lines):
        fields = line.split()
        if len(fields) >= 2:
            # A repeated pair keeps its LAST rank, like transformers' dict(zip(merges, range(...))).
            ranks[(fields[0], fields[1])] = rank
    if not ranks:
        raise TokenizerError(f"BPE merges file {path} holds no merges; expected lines 'left right [count]'")
    return sorted(ranks, key=ranks.__getitem__)


class BioGptTokenizer:
    """Moses + BPE tokenizer of BioGPT with transformers' ``BioGptTokenizer`` API and ids.

    Build it with :meth:`from_pretrained` (a directory), ``BioGptTokenizer(vocab_file=..., merges_file=...)``
    or :meth:`from_fairseq`. Calling it encodes text(s)::

        tok = BioGptTokenizer.from_pretrained("models/biogpt")
        tok("COVID-19 is")["input_ids"]                     # [2, 4805, 9, 656, 21]
        tok(["a", "b c"], padding=True, return_tensors="pt")
        tok.decode([2, 4805, 9, 656, 21], skip_special_tokens=True)   # 'COVID-19 is'
    """

    bos_token, pad_token, eos_token, sep_token, unk_token = BOS, PAD, EOS, EOS, UNK
    model_input_names = ["input_ids", "attention_mask"]
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
        truncation_side: str = "right",
        _encoder: dict[str, int] | None = None,
        _merges: list[tuple[str, str]] | None = None,
        _source: str | None = None,
    ) -> None:
        if _encoder is None:
            if vocab_file is None or merges_file is None:
                raise TokenizerError(
                    "BioGptTokenizer needs vocab_file and merges_file (or use "
                    "BioGptTokenizer.from_pretrained(dir) / from_fairseq(dict.txt, bpecodes))"
                )
            vocab_path, merges_path = Path(vocab_file), Path(merges_file)
            if not vocab_path.is_file():
                raise TokenizerError(f"vocabulary file {vocab_path} does not exist; pass a BioGPT vocab.json")
            _encoder = _read_json(vocab_path, "vocabulary")
            if not isinstance(_encoder, dict) or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in _encoder.items()
            ):
                raise TokenizerError(f"{vocab_path} must map token strings to integer ids")
            _merges = _read_merges(merges_path, hf_format=True)
            _source = str(vocab_path.parent)
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
        self.truncation_side = truncation_side
        self._next_id = max(self.decoder) + 1
        self._init_runtime()
        self.add_tokens(list(added_tokens))

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_fairseq(cls, dict_file: str | Path, bpecodes_file: str | Path, **kwargs) -> "BioGptTokenizer":
        """From the original fairseq files: ``dict.txt`` (ids 4..) and ``bpecodes`` (merges)."""
        symbols = read_fairseq_dict(dict_file)
        encoder = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for symbol in symbols:
            piece = _fairseq_to_piece(symbol)
            if piece in encoder:  # e.g. "x</w>@@" and "x" both become "x</w>"
                raise TokenizerError(
                    f"{dict_file}: symbols {symbol!r} and another map to the same vocabulary entry {piece!r}"
                )
            encoder[piece] = len(encoder)
        merges = _read_merges(Path(bpecodes_file), hf_format=False)
        return cls(_encoder=encoder, _merges=merges, _source=str(Path(dict_file).parent), **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, revision: str | None = None, **kwargs) -> "BioGptTokenizer":
        """From a directory with ``vocab.json`` + ``merges.txt`` (preferred) or ``dict.txt`` + ``bpecodes``;
        ``path`` may also be a Hub id or a pulled release (:mod:`biogpt.hub`, ``revision`` as there).

        ``added_tokens.json`` (token -> id, ids right after the vocabulary) and ``model_max_length``
        / ``padding_side`` from ``tokenizer_config.json`` are read when present; keyword arguments
        (e.g. ``padding_side="left"``) override them.
        """
        from .hub import resolve

        path = resolve(path, revision).path
        if not path.is_dir():
            raise TokenizerError(
                f"tokenizer directory {path} does not exist (or is a file); pass the model "
                f"directory holding {VOCAB_FILE} + {MERGES_FILE} or {DICT_FILE} + {BPECODES_FILE}"
            )
        config_file = path / TOKENIZER_CONFIG_FILE
        if config_file.exists():
            config = _read_json(config_file, "tokenizer config")
            config = config if isinstance(config, dict) else {}
            max_len = config.get("model_max_length")
            if isinstance(max_len, (int, float)) and "model_max_length" not in kwargs:
                kwargs["model_max_length"] = int(max_len) if max_len < _HUGE else _HUGE
            if config.get("padding_side") in ("left", "right") and "padding_side" not in kwargs:
                kwargs["padding_side"] = config["padding_side"]
        if (path / VOCAB_FILE).exists() and (path / MERGES_FILE).exists():
            tok = cls(path / VOCAB_FILE, path / MERGES_FILE, **kwargs)
        elif (path / DICT_FILE).exists() and (path / BPECODES_FILE).exists():
            tok = cls.from_fairseq(path / DICT_FILE, path / BPECODES_FILE, **kwargs)
        else:
            present = sorted(p.name for p in path.iterdir())[:12]
            raise TokenizerError(
                f"no tokenizer files in {path}: expected {VOCAB_FILE} + {MERGES_FILE} (transformers layout) or "
                f"{DICT_FILE} + {BPECODES_FILE} (fairseq layout); found {present or 'nothing'}. For an original "
                "BioGPT checkpoint run `biomine convert fairseq SRC DST`, or copy BioGPT's data/dict.txt and "
                "data/bpecodes next to it"
            )
        added_file = path / ADDED_TOKENS_FILE
        if added_file.exists():
            tok._load_added_tokens(added_file)
        return tok

    def _load_added_tokens(self, file: Path) -> None:
        added = _read_json(file, "added tokens")
        if not isinstance(added, dict):
            raise TokenizerError(f"{file} must map token strings to ids")
        for token, idx in sorted(added.items(), key=lambda kv: kv[1]):
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
    def sep_token_id(self) -> int:
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

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        idx = self.added_tokens_encoder.get(token)
        if idx is None:
            idx = self.encoder.get(token, self.encoder[UNK])
        return idx

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def _id_to_token(self, idx: int) -> str:
        token = self.added_tokens_decoder.get(idx)
        return token if token is not None else self.decoder.get(idx, UNK)

    def build_inputs_with_special_tokens(self, ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        """``[</s>] + ids_0`` or ``[</s>] + ids_0 + [</s>] + ids_1`` (fairseq's layout)."""
        sep = [self.sep_token_id]
        return sep + ids_0 if ids_1 is None else sep + ids_0 + sep + ids_1

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

    def _encode_texts(self, texts: Sequence[str], with_offsets: bool):
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
            out.append((ids, self._offsets(text, words, table) if with_offsets else None))
        return out

    def _offsets(self, text: str, words: list[str], table) -> list[tuple[int, int]]:
        """Character span in ``text`` of every BPE piece of the Moses tokens ``words``."""
        spans: list[tuple[int, int]] = []
        pos, n = 0, len(text)
        for word in words:
            raw_units = self._unescape_units(word)
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

    @staticmethod
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

    # --- encoding ----------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Encode one text (lists in the result) or a list of texts (lists of lists), as transformers.

        ``padding``: False, True/'longest', 'max_length'; ``truncation``: True/'longest_first',
        'only_first', 'only_second' (``max_length`` alone turns on 'longest_first', as in
        transformers; without ``max_length`` the limit is ``model_max_length``). Pads use id 1 and
        attention mask 0, on ``padding_side`` ('right' unless set). ``return_tensors='pt'`` gives
        torch tensors with a batch dimension.
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            if batched != isinstance(text_pair, (list, tuple)):
                raise TypeError("text and text_pair must both be strings or both be lists of strings")
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        try:
            pad_mode = _PADDING[padding]
            trunc_mode = _TRUNCATION[truncation]
        except (KeyError, TypeError):
            raise ValueError(f"unknown padding={padding!r} or truncation={truncation!r}") from None
        if max_length is not None and padding is False and truncation is None:
            trunc_mode = "longest_first"  # transformers: max_length alone activates truncation
        padding_side = padding_side or self.padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        limit = max_length
        if limit is None and (pad_mode == "max_length" or trunc_mode != "do_not_truncate"):
            limit = self.model_max_length if self.model_max_length < _HUGE else None
            if limit is None:
                pad_mode = "do_not_pad" if pad_mode == "max_length" else pad_mode
                trunc_mode = "do_not_truncate"

        first = self._encode_texts(texts, return_offsets_mapping)
        second = self._encode_texts(pairs, return_offsets_mapping) if pairs is not None else None
        rows_ids, rows_offsets = [], []
        for i, (ids_a, off_a) in enumerate(first):
            ids_b, off_b = second[i] if second is not None else (None, None)
            if trunc_mode != "do_not_truncate" and limit is not None:
                n_special = (1 if ids_b is None else 2) if add_special_tokens else 0
                excess = len(ids_a) + len(ids_b or ()) + n_special - limit
                if excess > 0:
                    cut_a, cut_b = self._truncation_counts(
                        len(ids_a), None if ids_b is None else len(ids_b), excess, trunc_mode
                    )
                    ids_a, off_a = self._cut(ids_a, off_a, cut_a)
                    if ids_b is not None:
                        ids_b, off_b = self._cut(ids_b, off_b, cut_b)
            if add_special_tokens:
                ids = self.build_inputs_with_special_tokens(ids_a, ids_b)
                if return_offsets_mapping:
                    offs = [(0, 0)] + off_a + ([] if ids_b is None else [(0, 0)] + off_b)
            else:
                ids = ids_a + (ids_b or [])
                offs = off_a + (off_b or []) if return_offsets_mapping else None
            rows_ids.append(ids)
            rows_offsets.append(offs if return_offsets_mapping else None)

        target = None
        if pad_mode == "longest":
            target = max(len(r) for r in rows_ids)
        elif pad_mode == "max_length":
            target = limit
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        masks = []
        for i, ids in enumerate(rows_ids):
            n_pad = max(0, target - len(ids)) if target is not None else 0
            mask = [1] * len(ids)
            if n_pad:
                pad_ids, pad_mask, pad_offs = [self.pad_token_id] * n_pad, [0] * n_pad, [(0, 0)] * n_pad
                if padding_side == "right":
                    rows_ids[i] = ids + pad_ids
                    mask = mask + pad_mask
                    if return_offsets_mapping:
                        rows_offsets[i] = rows_offsets[i] + pad_offs
                else:
                    rows_ids[i] = pad_ids + ids
                    mask = pad_mask + mask
                    if return_offsets_mapping:
                        rows_offsets[i] = pad_offs + rows_offsets[i]
            masks.append(mask)

        out = {"input_ids": rows_ids}
        if return_attention_mask:
            out["attention_mask"] = masks
        if return_offsets_mapping:
            out["offset_mapping"] = rows_offsets
        if return_tensors is not None:
            if return_tensors != "pt":
                raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
            if len({len(r) for r in rows_ids}) > 1:
                raise ValueError("texts have different lengths: pass padding=True (or 'max_length') to build tensors")
            import torch

            return BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})
        if not batched:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    def _truncation_counts(self, len_a: int, len_b: int | None, excess: int, mode: str) -> tuple[int, int]:
        """How many ids to cut from each text (transformers' truncate_sequences)."""
        if mode == "only_first" or (mode == "longest_first" and len_b is None):
            return excess, 0
        if mode == "only_second":
            return (0, excess) if len_b is not None else (0, 0)
        # longest_first with a pair: first even out the lengths, then cut both alternately.
        first = min(abs(len_b - len_a), excess)
        second = excess - first
        if len_a > len_b:
            return first + second // 2, second - second // 2
        return second // 2, first + second - second // 2

    def _cut(self, ids: list[int], offsets, n: int):
        if n <= 0:
            return ids, offsets
        if self.truncation_side == "left":
            return ids[n:], offsets[n:] if offsets is not None else None
        return ids[:-n], offsets[:-n] if offsets is not None else None

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        """Ids of one text (or pair); keyword arguments as for ``__call__`` (e.g. truncation)."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

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
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_file, merges_file = directory / f"{prefix}{VOCAB_FILE}", directory / f"{prefix}{MERGES_FILE}"
        vocab_file.write_text(
            json.dumps(self.encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        merges_file.write_text("".join(f"{a} {b}\n" for a, b in self.merges), encoding="utf-8")
        return str(vocab_file), str(merges_file)

    def save_pretrained(self, save_directory: str | Path) -> tuple[str, ...]:
        """Write a tokenizer directory that both this class and transformers load.

        Files: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``
        and, when there are added tokens, ``added_tokens.json``.
        """
        directory = Path(save_directory)
        written = list(self.save_vocabulary(directory))
        decoder_entries = {}
        for token in SPECIAL_TOKENS:
            decoder_entries[str(self.encoder[token])] = dict(
                content=token, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True
            )
        for idx, token in self.added_tokens_decoder.items():
            decoder_entries[str(idx)] = dict(
                content=token, lstrip=False, normalized=False, rstrip=False, single_word=False, special=False
            )
        special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "sep_token": EOS, "unk_token": UNK}
        config = {
            "added_tokens_decoder": decoder_entries,
            **special_map,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "tokenizer_class": "BioGptTokenizer",
        }
        files = {TOKENIZER_CONFIG_FILE: config, SPECIAL_TOKENS_MAP_FILE: special_map}
        if self.added_tokens_encoder:
            files[ADDED_TOKENS_FILE] = self.added_tokens_encoder
        else:
            (directory / ADDED_TOKENS_FILE).unlink(missing_ok=True)  # stale from an earlier save
        for name, data in files.items():
            (directory / name).write_text(
                json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            written.append(str(directory / name))
        return tuple(written)
