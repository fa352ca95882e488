"""Batched decoding for BioGPT with the semantics of transformers' ``generate`` (the reference path).

    ids = generate(model, input_ids, attention_mask, max_new_tokens=64)              # greedy
    ids = generate(model, input_ids, attention_mask, num_beams=5, early_stopping=True)
    ids = generate(model, input_ids, attention_mask, do_sample=True, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))

Contract (``tests/test_generation.py`` checks it against transformers 5.24 on random models):

* Input: ``input_ids`` (B, T), ragged prompts LEFT-padded, with ``attention_mask`` (B, T) (1 = real).
  Positions come from the mask, so real token k of a row is at position k whatever its padding
  (BioGPT's learned absolute positions need that). Without a mask, one is inferred as transformers
  does: ``input_ids != pad`` when the pad id occurs and is not an EOS id, else all ones.
* Output: ``(B * num_return_sequences, T + n)`` ids, prompt then new tokens, like transformers: a row
  that emitted EOS is padded with ``pad_token_id`` up to the longest row; ``n`` is where the last
  row stopped. ``return_dict=True`` gives :class:`GenerateOutput` (beam search adds the final,
  length-penalised score of each returned sequence, as transformers' ``sequences_scores``).
* Lengths: ``max_new_tokens`` wins over ``max_length`` (prompt T included); neither means 20 new
  tokens capped at ``max_position_embeddings`` in all (transformers' default). A real prompt plus
  ``max_new_tokens`` longer than ``max_position_embeddings`` raises :class:`InputTooLongError` before
  any compute. ``min_new_tokens`` bans EOS until that many tokens were generated.
* Greedy and beam search give transformers' token ids on the same weights (float32; a near-tie of
  logits closer than the ~1e-6 the two implementations differ by could flip one argmax). Beam
  search is transformers' vectorised algorithm step for step: ``length_penalty``,
  ``early_stopping`` True / False / "never", ``num_return_sequences`` <= ``num_beams``, beam sampling.
* Logit processing, in transformers' order: ``suppress_tokens`` and the EOS ban from
  ``min_new_tokens`` (both -inf), then, only when sampling, temperature -> top_k -> top_p. Note
  ``top_k=None`` means no top-k filter (transformers defaults to 50 when sampling: pass it).
* Sampling draws with ``torch.multinomial(..., generator=generator)``: the same seed gives the same
  ids (a generator on the model's device; ``None`` uses torch's global generator, as transformers).

This is the simple path (a growing :class:`~biogpt.model.KVCache`, one prefill, then one token per
step); ``biogpt/engine.py`` is the fast one (static cache, CUDA graphs, continuous batching) and
reuses :class:`DecodeConfig` and :func:`beam_search` from here so both decode alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch
import torch.nn.functional as F

from .errors import InputTooLongError

if TYPE_CHECKING:
    from .model import KVCache

DEFAULT_NEW_TOKENS = 20  # transformers' GenerationConfig.max_length default, counted as new tokens


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (B * num_return_sequences, T + n)
    sequences_scores: torch.Tensor | None = None  # beam search: (B * num_return_sequences,)


# ------------------------------------------------------------------------------------------------
# Logit processing, shared with the engine
# ------------------------------------------------------------------------------------------------
def token_mask(ids: Sequence[int], vocab_size: int, device) -> torch.Tensor:
    """(V,) bool, True at ``ids``: EOS and banned sets as gathers rather than ``isin`` (no sync)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if ids:
        mask[torch.tensor(list(ids), device=device)] = True
    return mask


@dataclass(frozen=True)
class DecodeConfig:
    """How next-token scores are processed and chosen; everything a CUDA graph must bake in."""

    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(
                    f"temperature must be > 0 when sampling, got {self.temperature} "
                    "(for greedy decoding pass do_sample=False)"
                )
            if self.top_k is not None and self.top_k < 0:
                raise ValueError(f"top_k must be >= 0, got {self.top_k}")
            if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
                raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")

    def process(
        self,
        scores: torch.Tensor,
        num_new: int | torch.Tensor,
        eos_mask: torch.Tensor,
        ban_mask: torch.Tensor | None,
        min_tokens_to_keep: int = 1,
    ) -> torch.Tensor:
        """Processed scores (B, V) from float32 scores (B, V); ``num_new``: tokens generated so far,
        an int for the whole batch or (B,) per row (the engine's slots)."""
        if self.min_new_tokens > 0:
            if isinstance(num_new, torch.Tensor):
                scores = scores.masked_fill((num_new < self.min_new_tokens)[:, None] & eos_mask, -math.inf)
            elif num_new < self.min_new_tokens:
                scores = scores.masked_fill(eos_mask, -math.inf)
        if ban_mask is not None:
            scores = scores.masked_fill(ban_mask, -math.inf)
        if not self.do_sample:
            return scores
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            k = min(max(self.top_k, min_tokens_to_keep), scores.shape[-1])
            scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1:], -math.inf)
        if self.top_p is not None and self.top_p < 1.0:
            # transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p.
            sorted_scores, order = torch.sort(scores, descending=False)
            tail = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
            tail[..., -min_tokens_to_keep:] = False
            scores = scores.masked_fill(tail.scatter(1, order, tail), -math.inf)
        return scores


# ------------------------------------------------------------------------------------------------
# The model behind a decoding loop
# ------------------------------------------------------------------------------------------------
class Stepper(Protocol):
    """What the decoding loops need from a model + cache (this module's and the engine's)."""

    def start(self) -> torch.Tensor:
        """Run the prompts; float32 logits (N, V) at each row's last prompt token."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (N,); float32 logits (N, V) after it."""

    def reorder(self, index: torch.Tensor) -> None:
        """Row i continues from old row ``index[i]`` (beam search)."""


class CachedModel:
    """The model over a growing KVCache, positions from a growing 2-D mask (transformers' loop)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model, self.input_ids, self.mask = model, input_ids, attention_mask
        self.cache: KVCache | None = None

    def start(self) -> torch.Tensor:
        out = self.model(self.input_ids, attention_mask=self.mask, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(tokens[:, None], attention_mask=self.mask, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        assert self.cache is not None, "reorder() after start()"
        self.cache.reorder(index)


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------
def special_ids(config, eos_token_id, pad_token_id) -> tuple[tuple[int, ...], int]:
    """EOS ids (a tuple; ``[]`` disables EOS stopping) and the pad id, config defaults as transformers."""
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos = () if eos is None else (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    return eos, int(pad)


def check_fits(real_length: int, max_new_tokens: int, max_positions: int, what: str = "the prompt") -> None:
    """Raise :class:`InputTooLongError` when ``what`` plus its new tokens cannot fit the positions."""
    if real_length + max_new_tokens > max_positions:
        raise InputTooLongError(
            f"{what} has {real_length} tokens and max_new_tokens={max_new_tokens}: {real_length + max_new_tokens} "
            f"positions in all, but this model has max_position_embeddings={max_positions}; shorten the prompt "
            f"or ask for at most {max(max_positions - real_length, 0)} new tokens"
        )


@torch.no_grad()
def generate(
    model,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    return_dict: bool = False,
):
    """Greedy, sampled or beam-search continuation of left-padded prompts; see the module docstring."""
    config = model.config
    input_ids = torch.as_tensor(input_ids, device=model.device)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    eos, pad = special_ids(config, eos_token_id, pad_token_id)
    if attention_mask is None:
        infer = pad not in eos and bool((input_ids == pad).any())
        attention_mask = (input_ids != pad).long() if infer else torch.ones_like(input_ids)
    else:
        attention_mask = torch.as_tensor(attention_mask, device=input_ids.device).reshape(input_ids.shape).long()
    B, T = input_ids.shape
    max_pos = config.max_position_embeddings
    if max_new_tokens is None:
        max_new_tokens = max_length - T if max_length is not None else min(T + DEFAULT_NEW_TOKENS, max_pos) - T
    if max_new_tokens < 1:
        raise ValueError(
            f"nothing to generate: the input has {T} tokens and max_new_tokens={max_new_tokens}; "
            "ask for at least one new token"
        )
    check_fits(int(attention_mask.sum(1).max()), max_new_tokens, max_pos, "the longest prompt")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if num_beams < 1 or num_return_sequences < 1 or (num_beams > 1 and num_return_sequences > num_beams):
        raise ValueError(
            f"need num_beams >= 1 and 1 <= num_return_sequences (<= num_beams for beam search), "
            f"got num_beams={num_beams}, num_return_sequences={num_return_sequences}"
        )
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError(
            "greedy decoding returns one sequence per prompt: use do_sample=True or num_beams > 1 "
            "for num_return_sequences > 1"
        )

    decode = DecodeConfig(min_new_tokens, do_sample, float(temperature), top_k, top_p)
    V = config.vocab_size
    eos_mask = token_mask(eos, V, input_ids.device)
    ban_mask = token_mask(suppress_tokens, V, input_ids.device) if suppress_tokens else None
    prompts = input_ids
    expand = num_beams if num_beams > 1 else num_return_sequences
    if expand > 1:  # transformers expands the prompts before the prefill (each beam row computes it)
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = attention_mask.repeat_interleave(expand, dim=0)
    stepper = CachedModel(model, input_ids, attention_mask)
    if num_beams > 1:
        sequences, scores = beam_search(
            stepper,
            prompts,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            decode=decode,
            eos=eos,
            pad=pad,
            eos_mask=eos_mask,
            ban_mask=ban_mask,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            generator=generator,
        )
        return GenerateOutput(sequences, scores) if return_dict else sequences
    sequences = sample(
        stepper,
        input_ids,
        max_new_tokens=max_new_tokens,
        decode=decode,
        eos_mask=eos_mask,
        ban_mask=ban_mask,
        has_eos=bool(eos),
        pad=pad,
        generator=generator,
    )
    return GenerateOutput(sequences) if return_dict else sequences


# ------------------------------------------------------------------------------------------------
# Greedy / sampling
# ------------------------------------------------------------------------------------------------
def sample(
    stepper: Stepper,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    decode: DecodeConfig,
    eos_mask: torch.Tensor,
    ban_mask: torch.Tensor | None,
    has_eos: bool,
    pad: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """transformers' ``_sample`` loop: (B, T + n) ids, rows finished by EOS continue as ``pad``."""
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
    ids = input_ids
    logits = stepper.start()  # (B, V)
    for step in range(max_new_tokens):
        scores = decode.process(logits, step, eos_mask, ban_mask)
        if decode.do_sample:
            nxt = torch.multinomial(F.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        else:
            nxt = scores.argmax(dim=-1)  # (B,)
        if has_eos:
            nxt = torch.where(unfinished, nxt, pad)
            unfinished &= ~eos_mask[nxt]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if step + 1 == max_new_tokens or not bool(unfinished.any()):
            break
        logits = stepper.step(nxt)
    return ids


# ------------------------------------------------------------------------------------------------
# Beam search: transformers' vectorised ``_beam_search``, same tensors, same order of operations
# ------------------------------------------------------------------------------------------------
def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) rows picked by index (B, K') along the beam axis."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_search(
    stepper: Stepper,
    input_ids: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    decode: DecodeConfig,
    eos: tuple[int, ...],
    pad: int,
    eos_mask: torch.Tensor,
    ban_mask: torch.Tensor | None,
    length_penalty: float,
    early_stopping: bool | str,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``num_return_sequences`` hypotheses (B * R, T + n) and their scores (B * R,).

    ``input_ids`` (B, T) are the prompts once each; ``stepper`` runs B * num_beams rows, beam j of
    prompt b in row b * num_beams + j. Scores are float32 sums of log-probs of the new tokens divided
    by (new length) ** length_penalty, as transformers computes them.
    """
    device = input_ids.device
    B, T = input_ids.shape
    K = num_beams
    max_length = T + max_new_tokens
    beams_to_keep = max(2, 1 + len(eos)) * K  # enough that K beams survive even if all top K end
    top_num_beam_mask = torch.cat([torch.ones(K, dtype=torch.bool), torch.zeros(beams_to_keep - K, dtype=torch.bool)])
    top_num_beam_mask = top_num_beam_mask.to(device)
    min_keep = len(eos) + 1 if eos else 2

    fill = (pad or eos[0]) if eos else -1  # transformers' output fill (its `pad or eos` precedence included)
    running_sequences = torch.full((B, K, max_length), fill, dtype=torch.long, device=device)
    running_sequences[:, :, :T] = input_ids[:, None]
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros(B, K, dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9  # only beam 0 expands at the first step (all beams are equal)
    beam_scores = torch.full((B, K), -1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)  # is_early_stop_heuristic_unsatisfied
    running_beam_indices = torch.full((B, K, max_new_tokens), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    batch_offset = torch.arange(B, device=device).view(-1, 1) * K

    cur_len = T
    logits = stepper.start()  # (B*K, V)
    while True:
        log_probs = F.log_softmax(logits, dim=-1)
        log_probs = decode.process(log_probs, cur_len - T, eos_mask, ban_mask, min_tokens_to_keep=min_keep)
        V = log_probs.shape[-1]
        log_probs = (log_probs.view(B, K, V) + running_beam_scores[:, :, None]).reshape(B, K * V)

        # Top beams_to_keep continuations over all beams of each prompt.
        if decode.do_sample:
            topk_indices = torch.multinomial(F.softmax(log_probs, dim=-1), beams_to_keep, generator=generator)
            topk_log_probs = torch.gather(log_probs, 1, topk_indices)
            topk_log_probs, order = topk_log_probs.sort(dim=-1, descending=True)
            topk_indices = topk_indices.gather(-1, order)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)  # (B, 2K)
        topk_beam = topk_indices // V
        topk_running_beam_indices = _gather_beams(running_beam_indices, topk_beam)
        topk_running_sequences = _gather_beams(running_sequences, topk_beam)
        topk_ids = topk_indices % V
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices[:, :, cur_len - T] = (topk_beam + batch_offset).to(torch.int32)

        # Which continuations end here: EOS, or the length cap (every one of them).
        hits = eos_mask[topk_ids] if cur_len + 1 < max_length else torch.ones_like(topk_ids, dtype=torch.bool)

        # The K best unfinished continuations run on.
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=K)[1]
        running_sequences = _gather_beams(topk_running_sequences, next_topk)
        running_beam_scores = _gather_beams(topk_running_log_probs, next_topk)
        running_beam_indices = _gather_beams(topk_running_beam_indices, next_topk)

        # Finished ones among the top K enter the finished pool if they beat its worst.
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1 - T) ** length_penalty)
        pool_full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += pool_full.to(torch.float32) * -1.0e9
        finished_scores += (~improvable).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((beam_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=K)[1]
        sequences = _gather_beams(torch.cat((sequences, topk_running_sequences), dim=1), best)
        beam_scores = _gather_beams(merged_scores, best)
        beam_indices = _gather_beams(torch.cat((beam_indices, topk_running_beam_indices), dim=1), best)
        is_sent_finished = _gather_beams(torch.cat((is_sent_finished, just_finished), dim=1), best)

        stepper.reorder(running_beam_indices[..., cur_len - T].reshape(-1).long())
        cur_len += 1

        # Can a running beam still beat the worst finished one? (transformers' heuristic, per prompt)
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - T
        else:
            best_length = cur_len - T
        best_possible = running_beam_scores[:, :1] / (best_length**length_penalty)
        worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        all_done = bool(torch.all(is_sent_finished)) and early_stopping is True
        if not bool(improvable.any()) or all_done or bool(hits.all()):
            break
        logits = stepper.step(running_sequences[:, :, cur_len - 1].reshape(-1))

    R = num_return_sequences
    sequences = sequences[:, :R].reshape(B * R, max_length)
    beam_scores = beam_scores[:, :R].reshape(B * R)
    beam_indices = beam_indices[:, :R].reshape(B * R, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())  # beam index -1 = no token at that step
    return sequences[:, : T + generated], beam_scores
