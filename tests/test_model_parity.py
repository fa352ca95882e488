"""The BioGPT core against transformers' BioGPT (the numerical reference) on random weights.

Each config builds a random transformers model, saves it, loads it here, and compares every class's
outputs in float32 (max abs diff <= 1e-5): full forward, incremental decoding with a KV cache,
left/right-padded batches, losses, both classification heads, and checkpoint round trips.
"""

from __future__ import annotations

import inspect
import zlib

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e '.[test]'")

import biogpt  # noqa: E402
from biogpt import CheckpointError, InputTooLongError  # noqa: E402

ATOL = 1e-5
CONFIGS = {
    "tiny": dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    ),
    "wide-heads": dict(
        vocab_size=67,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=40,
    ),
    "unscaled-untied": dict(
        vocab_size=80,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        intermediate_size=128,
        max_position_embeddings=32,
        scale_embedding=False,
        tie_word_embeddings=False,
    ),
}
PAD = 1


def hf_cache_kw() -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; use whichever this version takes."""
    params = inspect.signature(transformers.BioGptForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def hf_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def make_pair(tmp_path, name, hf_cls="BioGptForCausalLM", our_cls=None, **extra):
    # crc32, not hash(): str hashes are salted per process, so a failure would not reproduce.
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)
    cfg = transformers.BioGptConfig(**CONFIGS[name], **extra)
    ref = getattr(transformers, hf_cls)(cfg).eval()
    with torch.no_grad():  # make LayerNorm/bias parameters non-trivial too
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ref.save_pretrained(tmp_path / name)
    ours = getattr(biogpt, our_cls or hf_cls).from_pretrained(tmp_path / name)
    return ref, ours


def random_ids(batch, length, vocab, generator=None):
    ids = torch.randint(4, vocab, (batch, length), generator=generator)
    ids[:, 0] = 2  # BioGPT sequences start with </s>
    return ids


def assert_close(a, b, where=""):
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"{where}: max abs diff {diff:.3e} > {ATOL}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_full_forward_and_backbone(tmp_path, name):
    ref, ours = make_pair(tmp_path, name)
    ids = random_ids(3, 17, CONFIGS[name]["vocab_size"])
    with torch.no_grad():
        assert_close(ours(ids).logits, ref(ids).logits, "logits")
        assert_close(ours.biogpt(ids).last_hidden_state, ref.biogpt(ids).last_hidden_state, "hidden")
    # The bare backbone class loads a causal-LM checkpoint (head ignored) and agrees as well.
    body = biogpt.BioGptModel.from_pretrained(tmp_path / name)
    with torch.no_grad():
        assert_close(body(ids).last_hidden_state, ref.biogpt(ids).last_hidden_state, "BioGptModel")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_incremental_decoding_matches_full_and_reference(tmp_path, name):
    ref, ours = make_pair(tmp_path, name)
    ids = random_ids(2, 12, CONFIGS[name]["vocab_size"])
    with torch.no_grad():
        full = ref(ids).logits
        out = ours(ids[:, :5], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        for t in range(5, 12):
            out = ours(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        assert_close(torch.cat(steps, 1), full, "cached vs full")
        # And step for step against the reference's own cache, chunk sizes 5 then 4 then 3.
        kw = hf_cache_kw()
        r = ref(ids[:, :5], use_cache=True)
        o = ours(ids[:, :5], use_cache=True)
        for a, b in ((5, 9), (9, 12)):
            r = ref(ids[:, a:b], use_cache=True, **{kw: hf_cache(r)})
            o = ours(ids[:, a:b], use_cache=True, past_key_values=o.past_key_values)
            assert_close(o.logits, r.logits, f"chunk {a}:{b}")
        # Legacy tuple caches are accepted and give the same result.
        legacy = ours(ids[:, :5], use_cache=True).past_key_values.to_legacy()
        assert_close(ours(ids[:, 5:6], past_key_values=legacy).logits, full[:, 5:6], "legacy cache")


def padded_batch(vocab, side):
    g = torch.Generator().manual_seed(7)
    lengths = [9, 5, 7]
    rows = [random_ids(1, n, vocab, g)[0] for n in lengths]
    T = max(lengths)
    ids = torch.full((3, T), PAD)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return rows, ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["tiny", "wide-heads"])
def test_padded_batches(tmp_path, name, side):
    ref, ours = make_pair(tmp_path, name)
    rows, ids, mask = padded_batch(CONFIGS[name]["vocab_size"], side)
    # BioGPT positions count real tokens only (cumsum of the mask); give the reference the same ids,
    # since transformers 5 uses arange positions unless told otherwise.
    pos = (torch.cumsum(mask, 1) * mask - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = ref(ids, attention_mask=mask, position_ids=pos).logits
        real = mask.bool()
        assert_close(a[real], b[real], f"{side}-padded")
        # Each padded row equals the same row run alone.
        for i, r in enumerate(rows):
            alone = ours(r[None]).logits[0]
            assert_close(a[i][real[i]], alone, f"row {i} padded vs alone")


def test_left_padded_incremental_decoding(tmp_path):
    ref, ours = make_pair(tmp_path, "tiny")
    rows, ids, mask = padded_batch(CONFIGS["tiny"]["vocab_size"], "left")
    nxt = torch.randint(4, 100, (3, 1))
    with torch.no_grad():
        o = ours(ids, attention_mask=mask, use_cache=True)
        mask2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        step = ours(nxt, attention_mask=mask2, past_key_values=o.past_key_values).logits[:, -1]
        for i, r in enumerate(rows):
            alone = ours(torch.cat([r, nxt[i]])[None]).logits[0, -1]
            assert_close(step[i], alone, f"row {i}")


def test_causal_lm_loss(tmp_path):
    ref, ours = make_pair(tmp_path, "tiny")
    ids = random_ids(2, 11, 101)
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        a, b = ours(ids, labels=labels).loss, ref(ids, labels=labels).loss
    assert abs(a.item() - b.item()) <= ATOL


def test_token_classification(tmp_path):
    ref, ours = make_pair(tmp_path, "tiny", "BioGptForTokenClassification", num_labels=5)
    _, ids, mask = padded_batch(101, "right")
    labels = torch.randint(0, 5, ids.shape)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = ref(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert_close(a.logits[real], b.logits[real], "token logits")
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_sequence_classification(tmp_path, problem):
    num_labels = 1 if problem == "regression" else 3
    ref, ours = make_pair(
        tmp_path, "tiny", "BioGptForSequenceClassification", num_labels=num_labels, problem_type=problem
    )
    _, ids, mask = padded_batch(101, "right")
    if problem == "single_label_classification":
        labels = torch.tensor([0, 2, 1])
    elif problem == "regression":
        labels = torch.tensor([0.5, -1.0, 2.0])
    else:
        labels = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = ref(ids, attention_mask=mask, labels=labels)
    assert a.logits.shape == (3, num_labels)
    assert_close(a.logits, b.logits, "pooled logits")
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


def test_sequence_head_pools_last_real_token_with_left_padding(tmp_path):
    _, ours = make_pair(tmp_path, "tiny", "BioGptForSequenceClassification", num_labels=2)
    rows, left, lmask = padded_batch(101, "left")
    _, right, rmask = padded_batch(101, "right")
    with torch.no_grad():
        assert_close(ours(left, attention_mask=lmask).logits, ours(right, attention_mask=rmask).logits, "pool")


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


def test_checkpoints_round_trip_bit_for_bit(tmp_path):
    ref, ours = make_pair(tmp_path, "tiny")
    ref_state = ref.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BioGptForCausalLM.from_pretrained(tmp_path / "ours")
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    # Sharded safetensors (index file) written by transformers and by us both load.
    ref.save_pretrained(tmp_path / "hf-sharded", max_shard_size="20KB")
    assert (tmp_path / "hf-sharded" / "model.safetensors.index.json").exists()
    sharded = biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "hf-sharded")
    ours.save_pretrained(tmp_path / "ours-sharded", max_shard_size=20_000)
    assert (tmp_path / "ours-sharded" / "model.safetensors.index.json").exists()
    back2 = transformers.BioGptForCausalLM.from_pretrained(tmp_path / "ours-sharded")
    for k, v in ref_state.items():
        assert torch.equal(sharded.state_dict()[k], v), k
        assert torch.equal(back2.state_dict()[k], v), k
    # A pytorch_model.bin directory (older hub layout) loads too.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "tiny" / "config.json").rename(bin_dir / "config.json")
    torch.save(ref_state, bin_dir / "pytorch_model.bin")
    from_bin = biogpt.BioGptForCausalLM.from_pretrained(bin_dir)
    for k, v in ref_state.items():
        assert torch.equal(from_bin.state_dict()[k], v), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loads_in_requested_dtype(tmp_path, dtype):
    ref, _ = make_pair(tmp_path, "tiny")
    m = biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "tiny", dtype=dtype)
    assert {p.dtype for p in m.parameters()} == {dtype}
    assert not any(p.is_meta for p in m.parameters())
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # still tied, not a copy
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v.to(dtype)), k


def test_new_head_on_pretrained_body(tmp_path):
    ref, _ = make_pair(tmp_path, "tiny")
    m = biogpt.BioGptForTokenClassification.from_pretrained(tmp_path / "tiny", id2label={0: "O", 1: "B-Chemical"})
    assert m.classifier.weight.shape == (2, 32)
    assert torch.equal(m.biogpt.embed_tokens.weight, ref.biogpt.embed_tokens.weight)


def test_clear_errors(tmp_path):
    ref, ours = make_pair(tmp_path, "tiny")
    with pytest.raises(CheckpointError, match="does not exist"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        biogpt.BioGptForCausalLM.from_pretrained(empty)
    (empty / "config.json").write_text((tmp_path / "tiny" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights"):
        biogpt.BioGptForCausalLM.from_pretrained(empty)
    # A config that does not match the weights names the offending tensors.
    import json

    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"fc1\.weight: checkpoint \(37, 32\) vs config \(40, 32\)"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "tiny")
    # Unknown keys are named.
    from safetensors.torch import save_file

    cfg["intermediate_size"] = 37
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "output_projection.weight"}
    state["biogpt.layers.0.rotary.inv_freq"] = torch.ones(4)
    save_file(state, str(tmp_path / "tiny" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="rotary.inv_freq"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "tiny")
    # A truncated download names the file, not safetensors' internals.
    weights = tmp_path / "tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors: .*damaged or incomplete"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "tiny")
    # Over-long input: a clear error, not an index error from inside torch.
    with pytest.raises(InputTooLongError, match="max_position_embeddings=64"):
        ours(random_ids(1, 65, 101))
    with pytest.raises(ValueError, match="attention_mask covers"):
        out = ours(random_ids(1, 4, 101), use_cache=True)
        ours(random_ids(1, 1, 101), attention_mask=torch.ones(1, 3), past_key_values=out.past_key_values)


def test_layerdrop_skips_the_layers_transformers_skips(tmp_path):
    """LayerDrop in training: with the same seed both models skip the same layers (one draw per layer);
    in eval mode nothing is skipped; 1.0 skips every layer; a KV cache is refused while it is on."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, activation_dropout=0.0)
    ref, ours = make_pair(tmp_path, "wide-heads", layerdrop=0.5, **no_dropout)
    ids = random_ids(2, 11, CONFIGS["wide-heads"]["vocab_size"])
    ref.train(), ours.train()
    skipped_patterns = set()
    for seed in range(6):
        torch.manual_seed(seed)
        expected = ref(ids, use_cache=False).logits
        torch.manual_seed(seed)
        got = ours(ids).logits
        assert_close(got, expected, f"layerdrop seed {seed}")
        torch.manual_seed(seed)
        skipped_patterns.add(tuple(bool(torch.rand([]) < 0.5) for _ in range(3)))
    assert len(skipped_patterns) > 1, "every seed skipped the same layers: the test proves nothing"
    with torch.no_grad():
        eval_out = ours.eval()(ids).logits
        full = ours.train()
        full.config.layerdrop = 0.0
        assert_close(eval_out, full(ids).logits, "eval mode ignores layerdrop")
        full.config.layerdrop = 1.0
        body = full.biogpt(ids).last_hidden_state
        embed = full.biogpt.embed_tokens(ids) * full.biogpt.embed_scale
        positions = torch.arange(ids.shape[1])[None].expand_as(ids) + 2
        assert_close(body, full.biogpt.layer_norm(embed + full.biogpt.embed_positions(positions)), "all skipped")
        with pytest.raises(ValueError, match="layerdrop"):
            full(ids, past_key_values=biogpt.KVCache(3))
    with pytest.raises(biogpt.ConfigError, match="layerdrop 1.5 must be a probability"):
        biogpt.BioGptConfig(layerdrop=1.5)
