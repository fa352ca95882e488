"""Decoding against transformers' ``generate`` (the oracle), and the engine against ``generate``.

Random tiny models (built with transformers, saved, loaded here, as in test_model_parity.py), CPU,
float32. Greedy, beam search and sampling ids must equal transformers' on ragged left-padded batches;
EOS is chosen among tokens the model actually produces, so rows stop at different steps. The engine
(static cache, continuous batching with fewer slots than prompts, per-prompt budgets, small KV
buckets so the attention window moves) must equal ``generate`` prompt by prompt. The CUDA-graph
engine is checked against eager decoding by a ``gpu`` test (skipped without CUDA).
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e '.[test]'")

import biogpt  # noqa: E402
from biogpt import InputTooLongError  # noqa: E402
from biogpt.engine import Engine  # noqa: E402
from biogpt.generation import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAD = 1
# Untied head and a wide init give varied greedy continuations (a tiny tied model mostly repeats its
# last token); the tied config is BioGPT's layout.
CONFIGS = {
    "untied": dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=0.1,
        tie_word_embeddings=False,
    ),
    "tied": dict(
        vocab_size=67,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=48,
        initializer_range=0.3,
    ),
}
_PAIRS: dict = {}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    def get(name):
        if name not in _PAIRS:
            torch.manual_seed(0)
            ref = transformers.BioGptForCausalLM(transformers.BioGptConfig(**CONFIGS[name])).eval()
            path = tmp_path_factory.mktemp(name)
            ref.save_pretrained(path)
            _PAIRS[name] = ref, biogpt.BioGptForCausalLM.from_pretrained(path).eval()
        return _PAIRS[name]

    return get


def ragged(name, lengths=(9, 3, 6, 12), seed=7):
    """Rows starting with </s>, LEFT-padded: (rows, ids (B, T), mask (B, T))."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        r = torch.randint(4, CONFIGS[name]["vocab_size"], (n,), generator=g)
        r[0] = 2
        rows.append(r.tolist())
    T = max(lengths)
    ids = torch.tensor([[PAD] * (T - len(r)) + r for r in rows])
    return rows, ids, (ids != PAD).long()


def hf_generate(ref, ids, mask, **kw):
    kw.setdefault("do_sample", False)
    return ref.generate(ids, attention_mask=mask, **kw)


def greedy_tokens(ours, ids, mask, n=12):
    return generate(ours, ids, mask, max_new_tokens=n, eos_token_id=[])[:, ids.shape[1] :]


# ------------------------------------------------------------------------------------------------
# generate == transformers
# ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=12),
        dict(),  # transformers' default: 20 new tokens, capped at max_position_embeddings
        dict(max_length=19),  # total length, prompt (12, padded) included
        dict(max_new_tokens=10, suppress_tokens=[5, 9, 33]),
    ],
    ids=["max_new", "default", "max_length", "suppress"],
)
def test_greedy_matches_transformers(pairs, name, kw):
    ref, ours = pairs(name)
    _, ids, mask = ragged(name)
    ours_ids = generate(ours, ids, mask, **kw)
    assert torch.equal(ours_ids, hf_generate(ref, ids, mask, **kw))
    assert ours_ids.shape[1] > ids.shape[1]


def test_greedy_eos_stops_rows_mid_batch(pairs):
    ref, ours = pairs("untied")
    _, ids, mask = ragged("untied")
    T = ids.shape[1]
    free = greedy_tokens(ours, ids, mask, 16)
    eos = int(free[0, 2])  # row 0 produces it at step 2, so it stops there
    out = generate(ours, ids, mask, max_new_tokens=16, eos_token_id=eos)
    assert torch.equal(out, hf_generate(ref, ids, mask, max_new_tokens=16, eos_token_id=eos))
    new = out[:, T:]
    first_eos = [(r == eos).nonzero()[0].item() if (r == eos).any() else None for r in new]
    assert first_eos[0] is not None and first_eos[0] <= 2
    assert (new[0, first_eos[0] + 1 :] == PAD).all()  # a finished row continues as padding
    assert any(e is None for e in first_eos)  # while another row runs to the length cap
    # The model's own entry point and an inferred mask (pad != eos) give the same ids.
    assert torch.equal(ours.generate(ids, max_new_tokens=16, eos_token_id=eos), out)


def test_min_new_tokens_holds_eos_back(pairs):
    ref, ours = pairs("untied")
    _, ids, mask = ragged("untied")
    eos = int(greedy_tokens(ours, ids, mask)[0, 1])
    kw = dict(max_new_tokens=12, eos_token_id=eos)
    early = generate(ours, ids, mask, **kw)
    held = generate(ours, ids, mask, min_new_tokens=6, **kw)
    assert torch.equal(held, hf_generate(ref, ids, mask, min_new_tokens=6, **kw))
    assert not torch.equal(early, held)
    assert not (held[:, ids.shape[1] : ids.shape[1] + 6] == eos).any()


@pytest.fixture(scope="module")
def beam_case(pairs):
    """The untied model, a ragged batch and an EOS it emits often, so beams finish at various steps."""
    ref, ours = pairs("untied")
    _, ids, mask = ragged("untied")
    counts = collections.Counter(greedy_tokens(ours, ids, mask).flatten().tolist())
    return ref, ours, ids, mask, counts.most_common(2)[1][0]


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("num_beams", [3, 5])
def test_beam_search_matches_transformers(beam_case, num_beams, length_penalty, early_stopping):
    ref, ours, ids, mask, eos = beam_case
    kw = dict(
        max_new_tokens=12,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
    )
    a = generate(ours, ids, mask, return_dict=True, **kw)
    b = hf_generate(ref, ids, mask, return_dict_in_generate=True, output_scores=True, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.sequences_scores, b.sequences_scores, rtol=0, atol=1e-5)
    assert (a.sequences[:, ids.shape[1] :] == eos).any(), "no beam finished: EOS choice does not exercise it"


def test_beam_search_returns_several_sequences(beam_case):
    ref, ours, ids, mask, eos = beam_case
    kw = dict(max_new_tokens=10, num_beams=4, num_return_sequences=3, eos_token_id=eos, min_new_tokens=2)
    a = generate(ours, ids, mask, return_dict=True, **kw)
    b = hf_generate(ref, ids, mask, return_dict_in_generate=True, output_scores=True, **kw)
    assert a.sequences.shape[0] == 3 * ids.shape[0]
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.sequences_scores, b.sequences_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(temperature=0.7, top_k=20, top_p=0.9),
        dict(top_p=0.5, num_return_sequences=2),
        dict(num_beams=3, top_k=10),
    ],
    ids=["plain", "temp-topk-topp", "topp-n2", "beam-sample"],
)
def test_sampling_is_seeded_and_matches_transformers(beam_case, kw):
    ref, ours, ids, mask, eos = beam_case

    def ours_with(seed):
        return generate(
            ours,
            ids,
            mask,
            max_new_tokens=12,
            do_sample=True,
            eos_token_id=eos,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )

    first = ours_with(3)
    assert torch.equal(first, ours_with(3))
    assert not torch.equal(first, ours_with(4))
    # Same processors in the same order and the same draws: transformers under the same global seed
    # (its top_k defaults to 50, so say "no top-k" explicitly) gives the same ids.
    torch.manual_seed(3)
    theirs = hf_generate(ref, ids, mask, max_new_tokens=12, do_sample=True, eos_token_id=eos, **{"top_k": 0, **kw})
    assert torch.equal(first, theirs)


def test_too_long_raises_before_any_compute(pairs):
    _, ours = pairs("untied")  # max_position_embeddings = 64
    calls = []
    hook = ours.biogpt.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        ids = torch.tensor([[PAD] * 4 + [2] + [7] * 55])  # 56 real tokens behind 4 pads
        with pytest.raises(InputTooLongError, match="max_position_embeddings=64"):
            generate(ours, ids, max_new_tokens=9)
        with pytest.raises(InputTooLongError, match="prompt 1"):
            Engine(ours, max_batch=2).run([[2, 5], [2] + [7] * 60], 4)
        with pytest.raises(InputTooLongError, match="max_seq_len=32"):
            Engine(ours, max_batch=2, max_seq_len=32).run([[2] * 30], 3)
        assert not calls
    finally:
        hook.remove()
    # Exactly filling the positions is fine: the padding does not count, only real tokens.
    assert generate(ours, ids, max_new_tokens=8, eos_token_id=[]).shape == (1, 68)


# ------------------------------------------------------------------------------------------------
# Engine == generate
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workload(pairs):
    """Ragged prompts with ragged budgets, and an EOS that some of them emit."""
    _, ours = pairs("untied")
    rng = random.Random(0)
    prompts = [[2] + [rng.randrange(4, 101) for _ in range(rng.randrange(1, 15))] for _ in range(9)]
    budgets = [rng.randrange(1, 20) for _ in prompts]
    return ours, prompts, budgets, 8


def generate_alone(model, prompt, budget, eos, **kw):
    """``generate`` on one unpadded prompt: its new ids up to and including EOS."""
    new = generate(model, torch.tensor([prompt]), max_new_tokens=budget, eos_token_id=eos, **kw)[0, len(prompt) :]
    new = new.tolist()
    return new[: new.index(eos) + 1] if eos in new else new


@pytest.mark.parametrize("max_batch,kv_bucket,sync_every", [(3, 8, 1), (3, 4, 3), (4, 16, 4), (16, 128, 2)])
def test_engine_greedy_matches_generate(workload, max_batch, kv_bucket, sync_every):
    ours, prompts, budgets, eos = workload
    expected = [generate_alone(ours, p, n, eos) for p, n in zip(prompts, budgets)]
    assert any(out[-1] == eos for out in expected) and any(eos not in out for out in expected)
    engine = Engine(ours, max_batch=max_batch, max_seq_len=40, kv_bucket=kv_bucket, sync_every=sync_every)
    assert engine.run(prompts, budgets, eos_token_id=eos) == expected
    # A batched, left-padded generate gives the same rows (up to each row's own budget).
    T = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (T - len(p)) + p for p in prompts])
    batch = generate(ours, ids, (ids != PAD).long(), max_new_tokens=max(budgets), eos_token_id=eos)[:, T:].tolist()
    for row, out, n in zip(batch, expected, budgets):
        assert row[: len(out)] == out and (len(out) == n or out[-1] == eos)


def test_engine_logprobs_equal_a_teacher_forced_pass(workload):
    ours, prompts, budgets, eos = workload
    engine = Engine(ours, max_batch=3, max_seq_len=40, kv_bucket=8, sync_every=3)
    kw = dict(eos_token_id=eos, suppress_tokens=[15])  # suppression changes the choice, not the score
    ids, logprobs = engine.run(prompts, budgets, logprobs=True, **kw)
    assert ids == engine.run(prompts, budgets, **kw)
    for prompt, new, lps in zip(prompts, ids, logprobs):
        assert len(lps) == len(new)
        with torch.no_grad():
            logp = ours(torch.tensor([prompt + new])).logits[0].float().log_softmax(-1)
        expected = [logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(new)]
        assert lps == pytest.approx(expected, abs=1e-5)


def test_engine_plain_runs_compute_no_logprobs(workload, monkeypatch):
    """The plain path is the base: a run without ``logprobs`` never calls a log-softmax (a scored
    run does, in the same decode step) and returns the scored run's ids."""
    ours, prompts, budgets, eos = workload
    engine = Engine(ours, max_batch=3, max_seq_len=40, kv_bucket=8, sync_every=3)
    ids, _ = engine.run(prompts, budgets, logprobs=True, eos_token_id=eos)

    def refuse(*args, **kwargs):
        raise AssertionError("log-softmax on the plain path")

    for owner in (torch, torch.nn.functional, torch.Tensor):
        monkeypatch.setattr(owner, "log_softmax", refuse)
    assert engine.run(prompts, budgets, eos_token_id=eos) == ids
    with pytest.raises(AssertionError, match="plain path"):
        engine.run(prompts, budgets, logprobs=True, eos_token_id=eos)
    assert engine.run(prompts, budgets, eos_token_id=eos) == ids  # each run sets the flag afresh


def test_engine_processors_and_single_budget(workload):
    ours, prompts, _, eos = workload
    kw = dict(min_new_tokens=3, suppress_tokens=[15, 52])
    expected = [generate_alone(ours, p, 7, eos, **kw) for p in prompts]
    assert Engine(ours, max_batch=4, max_seq_len=40, kv_bucket=8).run(prompts, 7, eos_token_id=eos, **kw) == expected
    assert all(len(out) >= 3 and not {15, 52} & set(out) for out in expected)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("num_beams", [3, 5])
def test_engine_beam_search_matches_generate(workload, num_beams, early_stopping):
    ours, prompts, _, eos = workload
    T = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (T - len(p)) + p for p in prompts])
    kw = dict(num_beams=num_beams, early_stopping=early_stopping, eos_token_id=eos, length_penalty=0.8)
    rows = generate(ours, ids, (ids != PAD).long(), max_new_tokens=12, **kw)[:, T:].tolist()
    expected = [r[: r.index(eos) + 1] if eos in r else r for r in rows]
    # 16 slots hold 3 prompts of 5 beams (or 5 of 3): several chunks, the window moves (bucket 8).
    engine = Engine(ours, max_batch=16, max_seq_len=40, kv_bucket=8)
    assert engine.beam_search(prompts, 12, **kw) == expected


def test_engine_sampling_is_seeded(workload):
    ours, prompts, budgets, eos = workload
    engine = Engine(ours, max_batch=4, max_seq_len=40, kv_bucket=8)

    def run(seed):
        return engine.run(
            prompts,
            budgets,
            eos_token_id=eos,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            generator=torch.Generator().manual_seed(seed),
        )

    first = run(0)
    assert first == run(0) and first != run(1)
    assert [len(o) <= n for o, n in zip(first, budgets)] == [True] * len(prompts)


@pytest.mark.slow
def test_compiled_engine_traces_whole_and_matches_eager(workload):
    """compile=True (the GPU fast path's torch.compile half) on CPU: one graph per step, no breaks
    (a break inside a CUDA-graph capture would sync), same greedy and beam ids as eager."""
    import torch._dynamo

    ours, prompts, budgets, eos = workload
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    kw = dict(max_batch=4, max_seq_len=40, kv_bucket=16)
    compiled = Engine(ours, compile=True, **kw)
    eager = Engine(ours, **kw)
    assert compiled.run(prompts, budgets, eos_token_id=eos) == eager.run(prompts, budgets, eos_token_id=eos)
    assert compiled.beam_search(prompts[:2], 6, num_beams=2, eos_token_id=eos) == eager.beam_search(
        prompts[:2], 6, num_beams=2, eos_token_id=eos
    )
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_engine_matches_eager_on_cuda(pairs, dtype):
    _, cpu_model = pairs("untied")
    model = biogpt.BioGptForCausalLM(cpu_model.config)
    model.load_state_dict(cpu_model.state_dict())
    model = model.to("cuda", dtype).eval()
    rng = random.Random(1)
    prompts = [[2] + [rng.randrange(4, 101) for _ in range(rng.randrange(1, 30))] for _ in range(40)]
    budgets = [rng.randrange(1, 30) for _ in prompts]
    kw = dict(max_seq_len=64, kv_bucket=16, dtype=dtype)
    eager = Engine(model, max_batch=8, cuda_graph=False, **kw).run(prompts, budgets, eos_token_id=8)
    graph = Engine(model, max_batch=8, **kw).run(prompts, budgets, eos_token_id=8)
    assert graph == eager
    if dtype == torch.float32:
        assert eager == [generate_alone(model, p, n, 8) for p, n in zip(prompts, budgets)]
    beams = Engine(model, max_batch=16, **kw)
    eager_beams = Engine(model, max_batch=16, cuda_graph=False, **kw)
    assert beams.beam_search(prompts[:6], 10, num_beams=4, eos_token_id=8) == eager_beams.beam_search(
        prompts[:6], 10, num_beams=4, eos_token_id=8
    )


def test_benchmark_quick_smoke_run():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_generation.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for case in ("prefill", "greedy b=1", "beam-5", "ragged RE"):
        assert case in proc.stdout, proc.stdout
