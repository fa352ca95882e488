"""transformers' full tokenizer call, fenced off from :class:`biogpt.tokenizer.BioGptTokenizer`.

biomine itself never encodes text pairs, truncates or pads to a fixed length; those parts of
transformers' ``BioGptTokenizer.__call__`` live here, in a subclass with the same constructors, ids
and everything else, for code written against transformers and for the parity tests::

    from biogpt.tokenizer_compat import TransformersCompatTokenizer

    tok = TransformersCompatTokenizer.from_pretrained("models/biogpt")
    tok("COVID-19 is", "a pandemic")["input_ids"]       # [2] + A + [2] + B
    tok(texts, truncation=True, max_length=16, padding="max_length", pad_to_multiple_of=8)

What it adds, all as transformers does it (tests/test_tokenizer.py compares the ids):

* ``text_pair``: ``[2] + A + [2] + B``; with offsets, each text's spans index that text.
* ``truncation``: ``True``/'longest_first', 'only_first', 'only_second' (``truncation_side``
  'right' or 'left'), cutting to ``max_length`` including the special tokens; ``max_length`` alone
  turns on 'longest_first'; without ``max_length`` the limit is ``model_max_length``.
* ``padding='max_length'`` (to ``max_length``, default ``model_max_length``), ``pad_to_multiple_of``.
* ``return_attention_mask=False``; ``encode(text, text_pair, ...)`` with these keywords;
  ``build_inputs_with_special_tokens``; ``sep_token``/``sep_token_id``; ``model_input_names``.

:raises ValueError: unknown ``padding``/``truncation``/``padding_side``/``return_tensors``, a
    different number of texts and pairs, or unpadded rows of different lengths as tensors.
:raises TypeError: ``text`` and ``text_pair`` not both strings or both lists; a text not a str.
"""

from __future__ import annotations

from typing import Any, Sequence

from .tokenizer import EOS, BatchEncoding, BioGptTokenizer, as_texts
from .tokenizer_files import NO_LENGTH_LIMIT

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


def truncation_counts(len_a: int, len_b: int | None, excess: int, mode: str) -> tuple[int, int]:
    """How many ids to cut from the first and the second text (transformers' ``truncate_sequences``)."""
    if mode == "only_first" or (mode == "longest_first" and len_b is None):
        return excess, 0
    if mode == "only_second":
        return (0, excess) if len_b is not None else (0, 0)
    # longest_first with a pair: first even out the lengths, then cut both alternately.
    assert len_b is not None  # longest_first without a pair returned above
    first = min(abs(len_b - len_a), excess)
    second = excess - first
    if len_a > len_b:
        return first + second // 2, second - second // 2
    return second // 2, first + second - second // 2


def _texts_and_pairs(
    text: str | Sequence[str], text_pair: str | Sequence[str] | None
) -> tuple[bool, list[str], list[str] | None]:
    """``(batched, texts, pairs or None)``: both one string or both lists of the same length."""
    batched, texts = as_texts(text)
    if text_pair is None:
        return batched, texts, None
    pairs_batched, pairs = as_texts(text_pair)
    if batched != pairs_batched:
        raise TypeError("text and text_pair must both be strings or both be lists of strings")
    if len(pairs) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
    return batched, texts, pairs


class TransformersCompatTokenizer(BioGptTokenizer):
    """:class:`~biogpt.tokenizer.BioGptTokenizer` with transformers' whole ``__call__`` (see the module
    docstring); build it with the same constructors (``from_pretrained``, ``from_fairseq``, files)."""

    sep_token = EOS
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, *args: Any, truncation_side: str = "right", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.truncation_side = truncation_side

    @property
    def sep_token_id(self) -> int:
        return self.encoder[EOS]

    def build_inputs_with_special_tokens(self, ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        """``[</s>] + ids_0`` or ``[</s>] + ids_0 + [</s>] + ids_1`` (fairseq's layout)."""
        sep = [self.sep_token_id]
        return sep + ids_0 if ids_1 is None else sep + ids_0 + sep + ids_1

    # The base class takes **transformers_only only to refuse them (TypeError, pointing here); this
    # call names them, so it accepts fewer keywords than the base's signature says, not fewer calls.
    def __call__(  # type: ignore[override]
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
        torch tensors with a batch dimension ``(B, T)``.
        """
        batched, texts, pairs = _texts_and_pairs(text, text_pair)
        pad_mode, trunc_mode, limit = self._modes(padding, truncation, max_length)
        side = self._padding_side(padding_side)
        first = self._encode_texts(texts, return_offsets_mapping)
        second = self._encode_texts(pairs, return_offsets_mapping) if pairs is not None else [(None, None)] * len(first)
        rows = []
        for (ids_a, off_a), (ids_b, off_b) in zip(first, second):
            if trunc_mode != "do_not_truncate" and limit is not None:
                n_special = (1 if ids_b is None else 2) if add_special_tokens else 0
                ids_a, off_a, ids_b, off_b = self._truncate(ids_a, off_a, ids_b, off_b, limit - n_special, trunc_mode)
            rows.append(self._join(ids_a, off_a, ids_b, off_b, add_special_tokens, return_offsets_mapping))

        target = None
        if pad_mode == "longest":
            target = max(len(ids) for ids, _ in rows)
        elif pad_mode == "max_length":
            target = limit
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        return self._batch_encoding(
            rows,
            target,
            side,
            return_tensors,
            batched,
            with_offsets=return_offsets_mapping,
            attention_mask=return_attention_mask,
        )

    def _modes(self, padding: bool | str, truncation: bool | str | None, max_length: int | None):
        """``(padding mode, truncation mode, length limit or None)`` as transformers resolves them."""
        try:
            pad_mode = _PADDING[padding]
            trunc_mode = _TRUNCATION[truncation]
        except (KeyError, TypeError):
            raise ValueError(f"unknown padding={padding!r} or truncation={truncation!r}") from None
        if max_length is not None and padding is False and truncation is None:
            trunc_mode = "longest_first"  # transformers: max_length alone activates truncation
        limit = max_length
        if limit is None and (pad_mode == "max_length" or trunc_mode != "do_not_truncate"):
            limit = self.model_max_length if self.model_max_length < NO_LENGTH_LIMIT else None
            if limit is None:
                pad_mode = "do_not_pad" if pad_mode == "max_length" else pad_mode
                trunc_mode = "do_not_truncate"
        return pad_mode, trunc_mode, limit

    def _truncate(self, ids_a, off_a, ids_b, off_b, room: int, mode: str):
        """The two texts' ids (and offsets) cut to ``room`` ids together (``ids_b`` None: one text)."""
        excess = len(ids_a) + len(ids_b or ()) - room
        if excess <= 0:
            return ids_a, off_a, ids_b, off_b
        cut_a, cut_b = truncation_counts(len(ids_a), None if ids_b is None else len(ids_b), excess, mode)
        ids_a, off_a = self._cut(ids_a, off_a, cut_a)
        if ids_b is not None:
            ids_b, off_b = self._cut(ids_b, off_b, cut_b)
        return ids_a, off_a, ids_b, off_b

    def _join(self, ids_a, off_a, ids_b, off_b, add_special_tokens: bool, with_offsets: bool):
        """One row: ``[2] + A (+ [2] + B)``, or ``A (+ B)`` without special tokens, and its offsets."""
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(ids_a, ids_b)
            offs = [(0, 0)] + off_a + ([] if ids_b is None else [(0, 0)] + off_b) if with_offsets else None
        else:
            ids = ids_a + (ids_b or [])
            offs = off_a + (off_b or []) if with_offsets else None
        return ids, offs

    def _cut(self, ids: list[int], offsets, n: int):
        """``ids`` (and ``offsets``) less ``n`` ids on :attr:`truncation_side`."""
        if n <= 0:
            return ids, offsets
        if self.truncation_side == "left":
            return ids[n:], offsets[n:] if offsets is not None else None
        return ids[:-n], offsets[:-n] if offsets is not None else None

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        """Ids of one text (or pair); keyword arguments as for ``__call__`` (e.g. truncation)."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]
