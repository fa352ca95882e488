"""The tokenizer's files: reading and writing BioGPT vocabularies in the transformers and fairseq layouts.

:class:`biogpt.tokenizer.BioGptTokenizer` calls these; they know file formats, not tokenization.

* transformers layout: ``vocab.json`` (piece -> id; a word-internal piece is bare, ``lear``, a
  word-final piece ends in ``</w>``, ``ned</w>``) and ``merges.txt`` (``left right`` per line, in
  rank order), plus the optional ``tokenizer_config.json`` (``model_max_length``, ``padding_side``),
  ``special_tokens_map.json`` and ``added_tokens.json`` (token -> id, right after the vocabulary).
* fairseq layout: ``dict.txt`` (``symbol count``; line k is id k+3 after ``<s>`` ``<pad>`` ``</s>``
  ``<unk>``; ``xx@@`` / ``yy`` map to the pieces ``xx`` / ``yy</w>``, as transformers' conversion
  script does) and ``bpecodes`` (``left right count`` per line).

Writing produces what transformers writes (``vocab.json`` and ``merges.txt`` byte for byte), so
transformers' ``BioGptTokenizer.from_pretrained`` loads a saved directory.

:raises TokenizerError: for a missing directory or file, an unreadable or malformed file, or a
    directory with neither vocabulary layout; the message names the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

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
NO_LENGTH_LIMIT = int(1e20)  # transformers' "no limit" model_max_length is 1e30; anything above this is "none"

Layout = Literal["transformers", "fairseq"]


# --- reading -----------------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; ``what`` names the file in the error ("vocabulary", ...)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {what} {path}: {exc}; re-create it with save_pretrained") from None


def read_vocab_json(path: str | Path) -> dict[str, int]:
    """transformers' ``vocab.json``: piece -> id."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"vocabulary file {path} does not exist; pass a BioGPT vocab.json")
    encoder = read_json(path, "vocabulary")
    if not isinstance(encoder, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in encoder.items()):
        raise TokenizerError(f"{path} must map token strings to integer ids")
    return encoder


def read_merges(path: str | Path, *, hf_format: bool) -> list[tuple[str, str]]:
    """Merge pairs in rank order from ``merges.txt`` (``hf_format``: ``a b``) or ``bpecodes`` (``a b count``)."""
    path = Path(path)
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


def fairseq_to_piece(symbol: str) -> str:
    """fairseq dict symbol -> transformers vocab key: ``xx@@`` -> ``xx``; ``yy`` -> ``yy</w>``."""
    if symbol in SPECIAL_TOKENS:
        return symbol
    return symbol[:-2] if symbol.endswith("@@") else symbol + END_OF_WORD


def read_fairseq_vocab(dict_file: str | Path) -> dict[str, int]:
    """The vocabulary (piece -> id, in transformers' form) of a fairseq ``dict.txt``: the four
    specials at ids 0-3, then line k at id k+3."""
    encoder = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in read_fairseq_dict(dict_file):
        piece = fairseq_to_piece(symbol)
        if piece in encoder:  # e.g. "x</w>@@" and "x" both become "x</w>"
            raise TokenizerError(
                f"{dict_file}: symbols {symbol!r} and another map to the same vocabulary entry {piece!r}"
            )
        encoder[piece] = len(encoder)
    return encoder


def check_directory(directory: Path) -> None:
    """Raise unless ``directory`` is an existing directory."""
    if not directory.is_dir():
        raise TokenizerError(
            f"tokenizer directory {directory} does not exist (or is a file); pass the model "
            f"directory holding {VOCAB_FILE} + {MERGES_FILE} or {DICT_FILE} + {BPECODES_FILE}"
        )


def read_tokenizer_config(directory: Path) -> dict[str, Any]:
    """Constructor keywords from ``tokenizer_config.json`` when present: ``model_max_length``
    (anything above :data:`NO_LENGTH_LIMIT` becomes it) and ``padding_side`` ('left' or 'right')."""
    config_file = directory / TOKENIZER_CONFIG_FILE
    settings: dict[str, Any] = {}
    if not config_file.exists():
        return settings
    config = read_json(config_file, "tokenizer config")
    config = config if isinstance(config, dict) else {}
    max_len = config.get("model_max_length")
    if isinstance(max_len, (int, float)):
        settings["model_max_length"] = int(max_len) if max_len < NO_LENGTH_LIMIT else NO_LENGTH_LIMIT
    if config.get("padding_side") in ("left", "right"):
        settings["padding_side"] = config["padding_side"]
    return settings


def find_vocabulary(directory: Path) -> tuple[Layout, Path, Path]:
    """``("transformers", vocab.json, merges.txt)`` when both exist, else ``("fairseq", dict.txt, bpecodes)``."""
    if (directory / VOCAB_FILE).exists() and (directory / MERGES_FILE).exists():
        return "transformers", directory / VOCAB_FILE, directory / MERGES_FILE
    if (directory / DICT_FILE).exists() and (directory / BPECODES_FILE).exists():
        return "fairseq", directory / DICT_FILE, directory / BPECODES_FILE
    present = sorted(p.name for p in directory.iterdir())[:12]
    raise TokenizerError(
        f"no tokenizer files in {directory}: expected {VOCAB_FILE} + {MERGES_FILE} (transformers layout) or "
        f"{DICT_FILE} + {BPECODES_FILE} (fairseq layout); found {present or 'nothing'}. For an original "
        "BioGPT checkpoint run `biomine convert fairseq SRC DST`, or copy BioGPT's data/dict.txt and "
        "data/bpecodes next to it"
    )


def read_added_tokens(file: Path) -> list[tuple[str, int]]:
    """``(token, id)`` pairs of ``added_tokens.json``, by id (checking the ids is the tokenizer's job)."""
    added = read_json(file, "added tokens")
    if not isinstance(added, dict):
        raise TokenizerError(f"{file} must map token strings to ids")
    return sorted(added.items(), key=lambda kv: kv[1])


# --- writing -----------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_vocabulary(
    directory: str | Path,
    encoder: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    filename_prefix: str | None = None,
) -> tuple[str, str]:
    """Write ``vocab.json`` and ``merges.txt`` as transformers does; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"{filename_prefix}-" if filename_prefix else ""
    vocab_file, merges_file = directory / f"{prefix}{VOCAB_FILE}", directory / f"{prefix}{MERGES_FILE}"
    _write_json(vocab_file, encoder)
    merges_file.write_text("".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return str(vocab_file), str(merges_file)


def write_tokenizer_config(
    directory: str | Path,
    *,
    encoder: Mapping[str, int],
    added_tokens: Mapping[int, str],
    model_max_length: int,
    padding_side: str,
) -> list[str]:
    """Write ``tokenizer_config.json``, ``special_tokens_map.json`` and, when ``added_tokens`` (id ->
    token) is not empty, ``added_tokens.json`` (a stale one is removed otherwise); returns their paths."""
    directory = Path(directory)
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    decoder_entries = {str(encoder[token]): dict(content=token, **entry, special=True) for token in SPECIAL_TOKENS}
    for idx, token in added_tokens.items():
        decoder_entries[str(idx)] = dict(content=token, **entry, special=False)
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "sep_token": EOS, "unk_token": UNK}
    config = {
        "added_tokens_decoder": decoder_entries,
        **special_map,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": padding_side,
        "tokenizer_class": "BioGptTokenizer",
    }
    files: dict[str, Any] = {TOKENIZER_CONFIG_FILE: config, SPECIAL_TOKENS_MAP_FILE: special_map}
    if added_tokens:
        files[ADDED_TOKENS_FILE] = {token: idx for idx, token in added_tokens.items()}
    else:
        (directory / ADDED_TOKENS_FILE).unlink(missing_ok=True)  # stale from an earlier save
    written = []
    for name, data in files.items():
        _write_json(directory / name, data)
        written.append(str(directory / name))
    return written
