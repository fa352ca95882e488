"""The fast decoding path: static KV cache, per-slot state, continuous batching, CUDA graphs.

    engine = Engine(model, max_batch=128, max_seq_len=1024)       # bf16 + CUDA graphs on a GPU
    outs = engine.run(prompts, max_new_tokens=[300, 12, ...])      # list[list[int]], input order
    best = engine.beam_search(prompts, max_new_tokens=64, num_beams=5)

Contract:

* Prompts are lists of token ids (no padding; the engine knows nothing of tokenization). ``run``
  returns, per prompt and in input order, the new ids up to and including the first EOS, or
  ``max_new_tokens`` of them. Greedy results equal :func:`biogpt.generation.generate` greedy (the
  tests check it on CPU in float32, ragged prompts, per-prompt budgets, more prompts than slots).
  With ``logprobs=True`` it also returns, per new id, its log-probability under the model's own
  distribution at that step (``log_softmax`` of the raw float32 logits, before suppressed tokens,
  temperature or top-k/p), computed inside the decode step (no second pass): their sum over a span
  equals a teacher-forced forward pass over prompt + generated ids (tests check it).
  ``min_new_tokens``, ``suppress_tokens`` and sampling (temperature -> top_k -> top_p, as there)
  are supported; sampling is reproducible for a given ``generator`` (on the engine's device) but
  draws differently from ``generate`` (an exponential race, which a CUDA graph can hold).
* Plain runs are the base, scored runs add to them: without ``logprobs`` a step computes no
  log-probability (no log-softmax, no gather, no per-step tensor kept, no list of scores); with it,
  the same step also writes ``log p(chosen)`` into a per-slot buffer that the host collects at each
  sync. The choice of each id never depends on the flag (same ids either way; tests check it), and
  the flag is part of a captured CUDA graph's key, so each kind of run replays its own graph.
* Continuous batching: ``max_batch`` slots. A row that emits EOS or exhausts its budget frees its
  slot, and the next waiting prompt is prefilled into it while the other rows keep decoding, so
  outputs of very different lengths do not idle the device.
* ``beam_search`` is transformers' beam search (:func:`biogpt.generation.beam_search`, same
  semantics and scores as ``generate(num_beams=...)``) over the static cache, ``max_batch //
  num_beams`` prompts at a time.
* Every prompt is checked before any compute: prompt + budget longer than ``max_seq_len`` or than
  ``max_position_embeddings`` raises :class:`InputTooLongError` naming the prompt.
* The engine moves and casts ``model`` in place (``dtype`` defaults to bfloat16 on CUDA, the
  model's dtype elsewhere) and holds per-run state: one run at a time.

How (after pytorch-labs/gpt-fast and nanochat's engine): slot r of the cache holds one sequence,
its token k at slot k, which is also its position (BioGPT's mask-derived position of real token k),
so no padding ever enters the cache. Per-slot state lives in device tensors (next token, length,
tokens generated, budget, active flag). A decode step reads and updates only those tensors and
writes the cache in place: it has fixed shapes and no host sync, so on CUDA it is captured once
per (rows, slots) bucket in a ``torch.cuda.CUDAGraph`` and replayed; ``compile=True`` also runs it
through ``torch.compile`` (inductor fusions) inside the graph. Buckets keep work proportional to
what is live: ``rows`` covers the highest busy slot (powers of two up to 16, then multiples of
16; new prompts take the lowest free slots), ``slots`` is the next multiple of ``kv_bucket`` above
the longest live sequence, so attention reads the cache prefix in use, not all ``max_seq_len``. Prefill runs eagerly (SDPA; causal flash kernels when a group
of prompts has one length), writes K/V straight into the admitted rows, and computes logits only
at each prompt's last token. The host syncs once per ``sync_every`` decode steps to collect tokens
and admit prompts; finished rows stop advancing on the device meanwhile, so over-stepping is safe.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Sequence

import torch

from .errors import InputTooLongError
from .generation import DecodeConfig, beam_search, check_fits, special_ids, token_mask
from .model import StaticKVCache


class _Window(StaticKVCache):
    """The first ``rows`` rows and ``slots`` slots of a cache: one token per row is written at its
    slot, attention reads the (rows, H, slots, D) prefix. It shares the cache's buffers (nothing is
    allocated) and is a StaticKVCache so the model takes the caller-owns-positions path."""

    def __init__(self, cache: StaticKVCache, row_ids: torch.Tensor, slots: int):
        self.full, self.row_ids, self.max_length = cache, row_ids, slots  # row_ids: arange(rows)

    def update(self, layer_idx, k, v, cache_position):
        # index_put_ on the whole buffer, not scatter_ into a slice of it: torch.compile turns a
        # write through a view into a copy of the entire view, and back, every step.
        slot = cache_position[:, 0]  # (rows,): one new token per row
        keys, values = self.full.keys[layer_idx], self.full.values[layer_idx]
        keys[self.row_ids, :, slot] = k[:, :, 0]  # k: (rows, H, 1, D)
        values[self.row_ids, :, slot] = v[:, :, 0]
        rows = self.row_ids.shape[0]
        return keys[:rows, :, : self.max_length], values[:rows, :, : self.max_length]


class _PrefillWriter:
    """Cache seen by a prefill of fresh prompts: stores their K/V in engine ``rows`` (slots 0..T-1)
    and lets them attend to themselves only, so the forward keeps SDPA's causal fast path."""

    def __init__(self, cache: StaticKVCache, rows: torch.Tensor):
        self.cache, self.rows = cache, rows

    def update(self, layer_idx, k, v, cache_position=None):
        T = k.shape[2]
        self.cache.keys[layer_idx][self.rows, :, :T] = k  # k: (n, H, T, D)
        self.cache.values[layer_idx][self.rows, :, :T] = v
        return k, v

    def get_seq_length(self) -> int:
        return 0


class Engine:
    """See the module docstring. ``cuda_graph`` defaults to True on CUDA (it needs CUDA)."""

    def __init__(
        self,
        model,
        max_batch: int = 64,
        max_seq_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        cuda_graph: bool | None = None,
        compile: bool = False,
        kv_bucket: int = 128,
        sync_every: int = 4,
        prefill_tokens: int = 32768,
    ):
        device = torch.device(device) if device is not None else model.device
        on_cuda = device.type == "cuda"
        dtype = dtype or (torch.bfloat16 if on_cuda else model.dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        config = model.config
        max_seq_len = max_seq_len or config.max_position_embeddings
        if max_seq_len > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len={max_seq_len} exceeds the model's max_position_embeddings="
                f"{config.max_position_embeddings}"
            )
        self.cuda_graph = on_cuda if cuda_graph is None else cuda_graph
        if self.cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs a CUDA device")
        if max_batch < 1 or kv_bucket < 1 or sync_every < 1 or prefill_tokens < 1:
            raise ValueError("max_batch, kv_bucket, sync_every and prefill_tokens must be >= 1")
        self.device, self.dtype = device, dtype
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.kv_bucket, self.sync_every, self.prefill_tokens = kv_bucket, sync_every, prefill_tokens
        self.vocab_size = config.vocab_size
        self.cache = StaticKVCache(config, max_batch, max_seq_len, device, dtype)

        # Per-slot state, (max_batch,) each; a decode step reads and updates only these and the cache.
        def zeros(dtype_):
            return torch.zeros(max_batch, dtype=dtype_, device=device)

        self.tokens = zeros(torch.long)  # the token each slot feeds next
        self.lengths = zeros(torch.long)  # tokens in the cache = slot (and position) of that token
        self.n_new = zeros(torch.long)  # tokens generated so far
        self.budget = zeros(torch.long)  # max_new_tokens of the slot's prompt
        self.active = zeros(torch.bool)  # still generating
        self.emitted = zeros(torch.long)  # 1 where the last decode step produced a real token
        self.logprob = zeros(torch.float32)  # log p(token) of the token the last step chose
        self.logits = torch.zeros(max_batch, self.vocab_size, dtype=torch.float32, device=device)  # beam steps
        self._slot_ids = torch.arange(max_seq_len, device=device)
        self._row_ids = torch.arange(max_batch, device=device)
        # Run settings that captured graphs read: buffers are filled in place, never replaced.
        self._eos_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        self._ban_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        self._pad = torch.zeros((), dtype=torch.long, device=device)
        self._noise = torch.ones(max_batch, self.vocab_size, device=device)  # Exp(1) draws when sampling
        self._has_ban = False
        self._want_logprobs = False  # a run that asked for them; part of a captured graph's key
        self.decode = DecodeConfig()

        self._fns = {"decode": self._decode_step, "beam": self._beam_step}
        self._prefill_fn = self._prefill_group
        if compile:
            # Dynamic shapes: one compiled graph serves every prompt shape and every (rows, slots)
            # bucket (then captured per bucket), instead of one compilation per bucket.
            self._prefill_fn = torch.compile(self._prefill_group, dynamic=True)
            self._fns = {k: torch.compile(f, dynamic=True) for k, f in self._fns.items()}
        self._graphs: dict = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None

    # --------------------------------------------------------------------------------------------
    # Public API
    # --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        *,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        min_new_tokens: int = 0,
        suppress_tokens: Sequence[int] | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        logprobs: bool = False,
    ):
        """New token ids per prompt, in input order (greedy unless ``do_sample``); with ``logprobs``
        a pair ``(ids, logprobs)``: per prompt the model log-probability of each new id, computed
        only then (the same ids as without it).

        :raises InputTooLongError: a prompt plus its budget exceeds ``max_seq_len`` or the model's
            ``max_position_embeddings`` (names the prompt; checked before any compute).
        :raises ValueError: a prompt is empty, a budget is below 1, or the budgets are not one per prompt.
        """
        prompt_lists = [list(p) for p in prompts]
        budgets = [max_new_tokens] * len(prompt_lists) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != len(prompt_lists):
            raise ValueError(f"{len(budgets)} max_new_tokens for {len(prompt_lists)} prompts")
        if min(budgets, default=1) < 1:
            raise ValueError(f"every max_new_tokens must be >= 1, got {min(budgets)}")
        self._check(prompt_lists, budgets)
        self._configure(
            DecodeConfig(min_new_tokens, do_sample, float(temperature), top_k, top_p),
            eos_token_id,
            pad_token_id,
            suppress_tokens,
            logprobs=logprobs,
        )
        self.active.zero_()

        outputs: list[list[int]] = [[] for _ in prompt_lists]
        scores: list[list[float]] | None = [[] for _ in prompt_lists] if logprobs else None  # only when asked
        waiting = deque(range(len(prompt_lists)))
        free = list(range(self.max_batch))  # a heap: lowest slots first keeps the live rows packed
        owner: dict[int, int] = {}  # slot -> prompt index
        length: dict[int, int] = {}  # slot -> tokens in its cache (exact after each sync)
        left: dict[int, int] = {}  # slot -> tokens it may still generate
        while waiting or owner:
            if waiting and free:
                batch = [(heapq.heappop(free), waiting.popleft()) for _ in range(min(len(free), len(waiting)))]
                new_slots = [s for s, _ in batch]
                first, alive, first_lp = self._admit(
                    new_slots, [prompt_lists[i] for _, i in batch], [budgets[i] for _, i in batch], generator
                )
                for k, ((slot, i), tok, ok) in enumerate(zip(batch, first, alive)):
                    outputs[i].append(tok)
                    if scores is not None:
                        scores[i].append(first_lp[k])
                    if ok:
                        owner[slot], length[slot], left[slot] = i, len(prompt_lists[i]), budgets[i] - 1
                    else:
                        heapq.heappush(free, slot)
                continue
            live = sorted(owner)
            steps = min(self.sync_every, max(left[s] for s in live))
            rows = self._rows_bucket(live[-1] + 1)
            slots = self._slots_bucket(max(length[s] + min(steps, left[s]) for s in live))
            history, lp_history = [], []
            for _ in range(steps):
                if do_sample:
                    self._noise[:rows].exponential_(generator=generator)
                self._run("decode", rows, slots)
                history.append(torch.stack([self.tokens[:rows], self.emitted[:rows]]))  # (2, rows)
                if scores is not None:
                    lp_history.append(self.logprob[:rows].clone())  # (rows,)
            flat = torch.cat([torch.stack(history).view(-1), self.active[:rows].long()]).tolist()
            lps = torch.stack(lp_history).tolist() if scores is not None else None  # (steps, rows); after the sync
            still = flat[steps * 2 * rows :]
            for slot in live:
                kept = [j for j in range(steps) if flat[(j * 2 + 1) * rows + slot]]
                made = [flat[(j * 2) * rows + slot] for j in kept]
                outputs[owner[slot]].extend(made)
                if scores is not None and lps is not None:  # both or neither: a scored run
                    scores[owner[slot]].extend(lps[j][slot] for j in kept)
                length[slot] += len(made)
                left[slot] -= len(made)
                if not still[slot]:
                    del owner[slot], length[slot], left[slot]
                    heapq.heappush(free, slot)
        return (outputs, scores) if logprobs else outputs

    @torch.no_grad()
    def beam_search(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        num_beams: int = 5,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        min_new_tokens: int = 0,
        suppress_tokens: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """The best beam's new ids per prompt (up to and including EOS), as ``generate(num_beams=...)``."""
        prompt_lists = [list(p) for p in prompts]
        per_chunk = self.max_batch // num_beams
        if num_beams < 2 or per_chunk < 1 or max_new_tokens < 1:
            raise ValueError(
                f"need 2 <= num_beams <= max_batch={self.max_batch} and max_new_tokens >= 1, "
                f"got {num_beams} and {max_new_tokens}"
            )
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        self._check(prompt_lists, [max_new_tokens] * len(prompt_lists))
        eos, pad = self._configure(DecodeConfig(min_new_tokens), eos_token_id, pad_token_id, suppress_tokens)
        results = []
        for start in range(0, len(prompt_lists), per_chunk):
            chunk = prompt_lists[start : start + per_chunk]
            T = max(map(len, chunk))
            ids = torch.tensor([[pad] * (T - len(p)) + p for p in chunk], device=self.device)  # (B, T) left-padded
            sequences, _ = beam_search(
                _EngineBeams(self, chunk, num_beams),
                ids,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                decode=self.decode,
                eos=eos,
                pad=pad,
                eos_mask=self._eos_mask,
                ban_mask=self._ban_mask if self._has_ban else None,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
            )
            for row in sequences[:, T:].tolist():
                end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
                results.append(row[:end])
        return results

    # --------------------------------------------------------------------------------------------
    # Set-up and admission
    # --------------------------------------------------------------------------------------------
    def _check(self, prompts: list[list[int]], budgets: list[int]) -> None:
        """Every prompt non-empty and, with its budget of new tokens, within the positions and slots."""
        max_pos = self.model.config.max_position_embeddings
        for i, (p, n) in enumerate(zip(prompts, budgets)):
            if not p or n < 0:
                raise ValueError(f"prompt {i}: needs at least one token and max_new_tokens >= 1 (got {len(p)}, {n})")
            check_fits(len(p), n, max_pos, f"prompt {i}")
            if len(p) + n > self.max_seq_len:
                raise InputTooLongError(
                    f"prompt {i} has {len(p)} tokens and max_new_tokens={n}, more than this engine's "
                    f"max_seq_len={self.max_seq_len}; build the Engine with a larger max_seq_len"
                )

    def _configure(self, decode: DecodeConfig, eos_token_id, pad_token_id, suppress_tokens, *, logprobs=False):
        eos, pad = special_ids(self.model.config, eos_token_id, pad_token_id)
        self.decode = decode
        self._want_logprobs = bool(logprobs)  # a scored run (beam search never is)
        self._eos_mask.copy_(token_mask(eos, self.vocab_size, self.device))
        self._ban_mask.copy_(token_mask(suppress_tokens or (), self.vocab_size, self.device))
        self._has_ban = bool(suppress_tokens)
        self._pad.fill_(pad)
        return eos, pad

    def _rows_bucket(self, n: int) -> int:
        # Powers of two up to 16, then multiples of 16: few graphs, at most ~15% idle rows above 16.
        rows = 1 << (n - 1).bit_length() if n <= 16 else -(-n // 16) * 16
        return min(rows, self.max_batch)

    def _slots_bucket(self, n: int) -> int:
        return min(-(-n // self.kv_bucket) * self.kv_bucket, self.max_seq_len)

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]], slots: Sequence[int] | None = None) -> torch.Tensor:
        """Write the prompts' K/V into cache rows ``slots`` (default 0..n-1); float32 logits (n, V)
        at their last tokens. Slot state is left alone (``run`` and ``beam_search`` set it).

        Prompts are run shortest first in groups of at most ``prefill_tokens`` (padded) tokens,
        right-padded within a group, so a prompt's token k sits at slot k with position k.
        """
        prompt_lists = [list(p) for p in prompts]
        n = len(prompt_lists)
        slots = list(range(n)) if slots is None else list(slots)
        if n > self.max_batch or len(slots) != n:
            raise ValueError(f"{n} prompts for {len(slots)} slots (max_batch={self.max_batch})")
        self._check(prompt_lists, [0] * n)
        logits = torch.empty(n, self.vocab_size, dtype=torch.float32, device=self.device)
        order = sorted(range(n), key=lambda i: len(prompt_lists[i]))
        while order:
            group = [order.pop(0)]
            while order and (len(group) + 1) * len(prompt_lists[order[0]]) <= self.prefill_tokens:
                group.append(order.pop(0))
            lens = [len(prompt_lists[i]) for i in group]
            L = lens[-1]
            ids = torch.tensor([prompt_lists[i] + [0] * (L - len(prompt_lists[i])) for i in group], device=self.device)
            mask = None
            if lens[0] != L:  # ragged group: right padding; equal lengths keep SDPA's is_causal path
                mask = (torch.arange(L)[None] < torch.tensor(lens)[:, None]).long().to(self.device)  # (g, L)
            rows = torch.tensor([slots[i] for i in group], device=self.device)
            last = torch.tensor(lens, device=self.device) - 1
            logits[torch.tensor(group, device=self.device)] = self._prefill_fn(ids, mask, rows, last)
        return logits

    def _prefill_group(self, ids, mask, rows, last) -> torch.Tensor:
        """ids (g, L) right-padded (mask (g, L) or None when unpadded) into cache rows (g,);
        float32 logits (g, V) at positions ``last`` (g,)."""
        h = self.model.biogpt(
            ids, attention_mask=mask, past_key_values=_PrefillWriter(self.cache, rows), use_cache=True
        ).last_hidden_state  # (g, L, C)
        h = h[torch.arange(ids.shape[0], device=ids.device), last]  # (g, C)
        return self.model.output_projection(h).float()

    def _admit(self, slots: list[int], prompts: list[list[int]], budgets: list[int], generator):
        """Prefill prompts into free slots and choose their first tokens: (tokens, still-active,
        their log-probabilities, or None when the run is not scored: then none is computed)."""
        n = len(slots)
        logits = self.prefill(prompts, slots)  # (n, V) float32
        scores = self.decode.process(logits, 0, self._eos_mask, self._ban_mask if self._has_ban else None)
        noise = None
        if self.decode.do_sample:
            noise = torch.empty_like(scores).exponential_(generator=generator)
        first = self._choose(scores, noise)  # (n,)
        rows = torch.tensor(slots, device=self.device)
        budget = torch.tensor(budgets, device=self.device)
        alive = ~(self._eos_mask[first] | (budget <= 1))
        self.tokens[rows] = first
        self.lengths[rows] = torch.tensor([len(p) for p in prompts], device=self.device)
        self.n_new[rows] = 1
        self.budget[rows] = budget
        self.active[rows] = alive
        out = torch.cat([first, alive.long()]).tolist()
        if not self._want_logprobs:
            return out[:n], [bool(a) for a in out[n:]], None  # a plain run: nothing computed
        lp = torch.log_softmax(logits, dim=-1).gather(-1, first[:, None])[:, 0]  # (n,)
        return out[:n], [bool(a) for a in out[n:]], lp.tolist()

    # --------------------------------------------------------------------------------------------
    # The fixed-shape steps (captured in CUDA graphs)
    # --------------------------------------------------------------------------------------------
    def _choose(self, scores: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return scores.argmax(dim=-1)
        # argmax p_i / E_i with E_i ~ Exp(1) picks i with probability p_i (an exponential race):
        # a sample with no host sync, unlike torch.multinomial.
        return (torch.softmax(scores, dim=-1) / noise).argmax(dim=-1)

    def _forward(self, rows: int, slots: int) -> torch.Tensor:
        """Feed each of the first ``rows`` slots its next token; float32 logits (rows, V)."""
        active = self.active[:rows]
        slot = torch.where(active, self.lengths[:rows], 0)[:, None]  # (rows, 1); idle rows scribble on slot 0
        mask = (self._slot_ids[:slots] <= slot)[:, None, None, :]  # (rows, 1, 1, slots)
        out = self.model(
            self.tokens[:rows, None],
            attention_mask=mask,
            position_ids=slot,
            past_key_values=_Window(self.cache, self._row_ids[:rows], slots),
            cache_position=slot,
            use_cache=True,
        )
        return out.logits[:, -1].float()

    def _decode_step(self, rows: int, slots: int) -> None:
        logits = self._forward(rows, slots)  # (rows, V) float32
        scores = self.decode.process(
            logits, self.n_new[:rows], self._eos_mask, self._ban_mask if self._has_ban else None
        )
        nxt = self._choose(scores, self._noise[:rows] if self.decode.do_sample else None)  # (rows,)
        if self._want_logprobs:  # log p(chosen) under the model itself (raw logits): no second pass
            self.logprob[:rows].copy_(torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None])[:, 0])
        active = self.active[:rows]
        step = active.long()
        nxt = torch.where(active, nxt, self._pad)
        self.emitted[:rows].copy_(step)
        self.tokens[:rows].copy_(nxt)
        self.lengths[:rows].add_(step)
        self.n_new[:rows].add_(step)
        done = self._eos_mask[nxt] | (self.n_new[:rows] >= self.budget[:rows])
        self.active[:rows].logical_and_(~done)

    def _beam_step(self, rows: int, slots: int) -> None:
        self.logits[:rows].copy_(self._forward(rows, slots))
        self.lengths[:rows].add_(self.active[:rows].long())

    def _run(self, kind: str, rows: int, slots: int) -> None:
        fn = self._fns[kind]
        if not self.cuda_graph:
            fn(rows, slots)
            return
        key = (kind, rows, slots, self.decode, self._has_ban, self._want_logprobs)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._capture(fn, rows, slots)
        graph.replay()

    def _capture(self, fn, rows: int, slots: int):
        """Warm ``fn`` up on a side stream (restoring the slot state it advances), then capture it."""
        state = [self.tokens, self.lengths, self.n_new, self.active, self.emitted, self.logprob]
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazy CUDA/cuBLAS initialisation and, with compile, compilation
                fn(rows, slots)
                for t, s in zip(state, saved):
                    t.copy_(s)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):  # records only: the state is not advanced
            fn(rows, slots)
        return graph


class _EngineBeams:
    """:class:`biogpt.generation.Stepper` over the engine's cache: beam j of prompt b in row b*K+j."""

    def __init__(self, engine: Engine, prompts: list[list[int]], num_beams: int):
        self.e, self.prompts, self.K = engine, prompts, num_beams
        self.N = len(prompts) * num_beams
        self.rows = engine._rows_bucket(self.N)
        lens = [len(p) for p in prompts]
        # Slots below lo hold prompt tokens in every row (equal across a prompt's beams); [lo, hi)
        # is the only region a beam reorder has to move.
        self.lo, self.hi = min(lens), max(lens)
        self.lens = torch.tensor(lens, device=engine.device)

    def start(self) -> torch.Tensor:
        e, K, N = self.e, self.K, self.N
        e.active.zero_()
        heads = list(range(0, N, K))
        logits = e.prefill(self.prompts, heads)  # (B, V)
        src = torch.arange(N, device=e.device) // K * K  # (N,) each row copies its prompt's head row
        for cache in (e.cache.keys, e.cache.values):
            for t in cache:
                t[:N, :, : self.hi] = t[src, :, : self.hi]
        e.lengths[:N] = self.lens.repeat_interleave(K)
        e.active[:N] = True
        return logits.repeat_interleave(K, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.e.tokens[: self.N] = tokens
        self.e._run("beam", self.rows, self.e._slots_bucket(self.hi + 1))
        self.hi += 1
        return self.e.logits[: self.N]

    def reorder(self, index: torch.Tensor) -> None:
        for cache in (self.e.cache.keys, self.e.cache.values):
            for t in cache:
                region = t[: self.N, :, self.lo : self.hi]  # (N, H, hi-lo, D)
                region.copy_(region.index_select(0, index))
