"""biogpt.fairseq / `biomine convert fairseq` on small fairseq-shaped checkpoints built here.

The checkpoints have exactly the released layout (``cfg`` with a Namespace ``model`` and a ``task``
dict, or an old flat ``args``; ``model`` with ``decoder.*`` keys, the tied output projection saved
as the same tensor, ``decoder.version``) at toy sizes, next to a toy dict.txt/bpecodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from biogpt.errors import CheckpointError, TokenizerError
from biogpt.fairseq import convert_fairseq_checkpoint
from biogpt.task_spec import TASK_FILE, guess_task, read_task_spec, task_spec
from biogpt.tokenizer import BioGptTokenizer
from pipeline.cli import main as cli_main
from tests.conftest import shared_path

H, LAYERS, HEADS, FFN, POSITIONS = 16, 2, 4, 24, 32
# Toy fairseq vocabulary: every letter as a word-internal ("x@@") and word-final ("x") piece, a few
# merge results, the truncation marker "..." and the dash token.
LETTERS = "abcdefghijklmnopqrstuvwxyz.-@"
MERGES = [("t", "h"), ("th", "e</w>"), ("i", "s</w>"), ("a", "n"), ("an", "d</w>"), ("@", "-"), ("@-", "@</w>")]
SYMBOLS = [s for c in LETTERS for s in (c + "@@", c)] + ["th@@", "the", "is", "an@@", "and", "@-@", "..."]
V0 = 4 + len(SYMBOLS)
TEXT = "the interaction between aspirin and warfarin is mechanism-based ."


def write_vocab(directory, symbols=SYMBOLS):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dict.txt").write_text("".join(f"{s} {1000 - i}\n" for i, s in enumerate(symbols)))
    (directory / "bpecodes").write_text("".join(f"{a} {b} {500 - i}\n" for i, (a, b) in enumerate(MERGES)))


def fairseq_state(vocab_rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    state = {
        "decoder.embed_tokens.weight": rand(vocab_rows, H),
        "decoder.embed_positions.weight": rand(POSITIONS + 2, H),
    }
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[f"{p}self_attn.{proj}.weight"], state[f"{p}self_attn.{proj}.bias"] = rand(H, H), rand(H)
        state[f"{p}self_attn_layer_norm.weight"], state[f"{p}self_attn_layer_norm.bias"] = 1 + rand(H), rand(H)
        state[f"{p}fc1.weight"], state[f"{p}fc1.bias"] = rand(FFN, H), rand(FFN)
        state[f"{p}fc2.weight"], state[f"{p}fc2.bias"] = rand(H, FFN), rand(H)
        state[f"{p}final_layer_norm.weight"], state[f"{p}final_layer_norm.bias"] = 1 + rand(H), rand(H)
    state["decoder.layer_norm.weight"], state["decoder.layer_norm.bias"] = 1 + rand(H), rand(H)
    state["decoder.output_projection.weight"] = state["decoder.embed_tokens.weight"]  # tied: one tensor
    state["decoder.version"] = torch.tensor([3.0])
    return state


def model_namespace(**over) -> argparse.Namespace:
    fields = dict(
        _name="transformer_lm_prompt",
        arch="transformer_lm_prompt_biogpt",
        decoder_embed_dim=H,
        decoder_ffn_embed_dim=FFN,
        decoder_layers=LAYERS,
        decoder_attention_heads=HEADS,
        activation_fn="gelu",
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        decoder_layerdrop=0.0,
        max_target_positions=POSITIONS,
        share_decoder_input_output_embed=True,
        no_scale_embedding=False,
        decoder_learned_pos=True,
        decoder_normalize_before=True,
    )
    return argparse.Namespace(**{**fields, **over})


def prompt_checkpoint(
    path, n_prompt=3, data="../../data/DDI/relis-bin", vocab_rows=None, prefix=False, model_over=None, state=None
):
    rows = vocab_rows if vocab_rows is not None else V0 + n_prompt + (1 if prefix else 0)
    task = {
        "_name": "language_modeling_prompt",
        "data": data,
        "learned_prompt": n_prompt,
        "learned_prompt_pattern": "learned",
        "prefix": prefix,
        "sep_token": "<seqsep>",
        "max_source_positions": 20,
        "max_target_positions": POSITIONS,
        "source_lang": "x",
        "target_lang": "y",
    }
    ckpt = {
        "cfg": {"common": {"fp16": False}, "model": model_namespace(**(model_over or {})), "task": task},
        "model": state if state is not None else fairseq_state(rows),
        "optimizer_history": [],
        "extra_state": {"epoch": 100},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture
def ddi_dir(tmp_path):
    src = tmp_path / "checkpoints" / "RE-DDI-BioGPT"
    write_vocab(src)
    ckpt = prompt_checkpoint(src / "checkpoint_avg.pt")
    return src, ckpt


# --- prompt-tuned checkpoint ---------------------------------------------------------------------------
def test_convert_prompt_checkpoint(ddi_dir, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    src, ckpt = ddi_dir
    dst = tmp_path / "models" / "re-ddi"
    result = convert_fairseq_checkpoint(src, dst)
    assert result.checkpoint == src / "checkpoint_avg.pt"
    assert (result.task, result.vocab_size, result.learned_prompt) == ("re-ddi", V0 + 3, 3)
    assert result.prompt_token_ids == [V0, V0 + 1, V0 + 2] and result.tied_embeddings_equal is True
    assert not result.warnings

    # weights: transformers' BioGptForCausalLM keys, decoder.version dropped, values unchanged
    weights = load_file(str(dst / "model.safetensors"))
    assert len(weights) == 16 * LAYERS + 5
    source = ckpt["model"]
    for key, tensor in source.items():
        if key == "decoder.version":
            continue
        new = "output_projection.weight" if key == "decoder.output_projection.weight" else "biogpt." + key[8:]
        assert torch.equal(weights[new], tensor), key
    config = json.loads((dst / "config.json").read_text())
    assert {
        k: config[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "tie_word_embeddings",
        )
    } == {
        "vocab_size": V0 + 3,
        "hidden_size": H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS,
        "tie_word_embeddings": True,
    }
    assert config["architectures"] == ["BioGptForCausalLM"] and config["model_type"] == "biogpt"

    ref = transformers.BioGptForCausalLM.from_pretrained(str(dst)).eval()
    assert torch.equal(ref.biogpt.embed_tokens.weight, source["decoder.embed_tokens.weight"])
    assert torch.equal(ref.biogpt.layers[1].fc2.weight, source["decoder.layers.1.fc2.weight"])
    assert torch.equal(ref.output_projection.weight, source["decoder.output_projection.weight"])

    # the project's own model loads it and computes the same logits
    import biogpt

    ours = biogpt.BioGptForCausalLM.from_pretrained(dst)
    tok = BioGptTokenizer.from_pretrained(dst)
    ids = torch.tensor([[2] + tok.encode("the aspirin and", add_special_tokens=False) + result.prompt_token_ids])
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, ref(ids).logits, atol=1e-5)

    # the task file
    spec = read_task_spec(dst)
    assert spec == json.loads((dst / TASK_FILE).read_text())
    assert spec["task"] == "re-ddi" and spec["learned_prompt"] == 3
    assert spec["prompt_tokens"] == ["learned1", "learned2", "learned3"]
    assert spec["prompt_token_ids"] == [V0, V0 + 1, V0 + 2] and spec["prompt_layout"] == "source_prompt"
    assert (spec["max_source_positions"], spec["max_target_positions"]) == (20, POSITIONS)
    assert spec["truncation_marker_id"] == 4 + SYMBOLS.index("...")
    assert spec["source_format"]["lowercase"] is True and spec["source_format"]["template"] == "{abstract}"
    assert spec["decoding"] == {
        "strategy": "greedy",
        "num_beams": 1,
        "do_sample": False,
        "min_len": 1,
        "max_len_b": 1024,
        "max_len": POSITIONS - 1,
        "ban_token_ids": [1],
        "eos_token_id": 2,
    }
    assert spec["output_grammar"] == "relis-interaction"
    assert spec["converted_from"]["data"] == "../../data/DDI/relis-bin"


def test_converted_tokenizer_encodes_like_the_source_dict(ddi_dir, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    src, _ = ddi_dir
    dst = tmp_path / "out"
    convert_fairseq_checkpoint(src / "checkpoint_avg.pt", dst)
    source = BioGptTokenizer.from_fairseq(src / "dict.txt", src / "bpecodes")
    converted = BioGptTokenizer.from_pretrained(dst)
    theirs = transformers.BioGptTokenizer.from_pretrained(str(dst))
    for text in (TEXT, TEXT.lower(), "and the ... is"):
        expected = source.encode(text)
        assert converted.encode(text) == expected == theirs(text)["input_ids"]
        assert source.unk_token_id not in expected  # the toy vocabulary covers these texts
    assert converted.convert_tokens_to_ids(["learned1", "learned3"]) == [V0, V0 + 2]
    assert theirs.convert_tokens_to_ids(["learned1", "learned3"]) == [V0, V0 + 2]
    assert len(converted) == len(theirs) == V0 + 3
    assert sorted(p.name for p in dst.iterdir()) == [
        "added_tokens.json",
        TASK_FILE,
        "config.json",
        "merges.txt",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_prefix_prompt_layout_puts_the_separator_first(tmp_path):
    src = tmp_path / "RE-BC5CDR-BioGPT"
    write_vocab(src)
    prompt_checkpoint(src / "checkpoint.pt", n_prompt=2, prefix=True, data="data/BC5CDR/relis-bin")
    result = convert_fairseq_checkpoint(src, tmp_path / "out")
    spec = read_task_spec(tmp_path / "out")
    # language_modeling_prompt.setup_prompt adds <seqsep> before learned1..N
    assert spec["sep_token_id"] == V0 and spec["prompt_token_ids"] == [V0 + 1, V0 + 2]
    assert spec["prompt_layout"] == "prompt_source_sep" and result.task == "re-bc5cdr"
    assert spec["output_grammar"] == "relis-relation" and "title_join" in spec["source_format"]


def test_real_base_vocabulary_gives_the_published_prompt_ids(tmp_path):
    base = shared_path("data", "biogpt-vocab", "base")
    src = tmp_path / "ckpt"
    prompt_checkpoint(src / "checkpoint_avg.pt", n_prompt=9, data="../../data/KD-DTI/relis-bin", vocab_rows=42384 + 9)
    result = convert_fairseq_checkpoint(
        src, tmp_path / "out", dict_file=base / "dict.txt", bpecodes_file=base / "bpecodes", dtype="bfloat16"
    )
    spec = read_task_spec(tmp_path / "out")
    assert result.task == "re-dti" and spec["prompt_token_ids"] == list(range(42384, 42393))
    assert spec["truncation_marker_id"] == 11475  # "..." in BioGPT's dict (biogpt-reference-spec 8.1)
    tok = BioGptTokenizer.from_pretrained(tmp_path / "out")
    assert tok.encode("COVID-19 is") == [2, 4805, 9, 656, 21] and len(tok) == 42393
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["biogpt.embed_tokens.weight"].dtype == torch.bfloat16
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# --- pre-trained checkpoint, old-style args, through the CLI -----------------------------------------
def test_cli_converts_pretrained_checkpoint_with_legacy_args(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    src = tmp_path / "Pre-trained-BioGPT"
    write_vocab(src)
    args = model_namespace(
        task="language_modeling",
        arch="transformer_lm_gpt2_small",
        tokens_per_sample=POSITIONS,
        data="data/pretrain-bin",
    )
    del args.decoder_attention_heads  # recovered from the architecture name (gpt2_small: 16 heads)
    state = fairseq_state(V0)
    torch.save({"args": args, "model": state}, src / "checkpoint.pt")
    dst = tmp_path / "biogpt"
    assert cli_main(["convert", "fairseq", str(src / "checkpoint.pt"), str(dst)]) == 0
    assert "task lm, vocab %d" % V0 in capsys.readouterr().out
    spec = read_task_spec(dst)
    assert spec["task"] == "lm" and spec["prompt_token_ids"] == [] and spec["output_grammar"] is None
    assert spec["decoding"]["num_beams"] == 5 and spec["decoding"]["min_len"] == 100
    config = json.loads((dst / "config.json").read_text())
    assert config["num_attention_heads"] == 16 and config["vocab_size"] == V0
    assert not (dst / "added_tokens.json").exists()
    ref = transformers.BioGptForCausalLM.from_pretrained(str(dst))
    assert torch.equal(ref.biogpt.embed_positions.weight, state["decoder.embed_positions.weight"])


def test_task_guessing_and_qa_source_variants():
    assert guess_task(["../../data/KD-DTI/relis-bin"]) == "re-dti"
    assert guess_task(["", "/ckpt/QA-PubMedQA-BioGPT-Large/checkpoint.pt"]) == "qa-pubmedqa"
    assert guess_task(["data/HoC/ansis-bin"]) == "dc-hoc"
    assert guess_task(["/models/checkpoint_avg.pt"]) is None
    common = dict(
        learned=["learned1"],
        prompt_ids=[5],
        sep_token_id=None,
        max_source=900,
        max_target=1024,
        truncation_id=7,
        pad_id=1,
        eos_id=2,
    )
    spec = task_spec("qa-pubmedqa", data_path="../../data/PubMedQA/pqal_qcl_ansis-bin", **common)
    assert spec["source_format"]["template"] == "question: {question} context: {context} "
    assert spec["source_format"]["lowercase"] is False and spec["decoding"]["max_len"] == 1023
    free = task_spec("qa-pubmedqa", data_path="../../data/PubMedQA/pqal_qcal_ansis-bin", **common)
    assert free["source_format"]["name"] == "qa-pubmedqa-reasoning-free"
    legacy = task_spec("qa-pubmedqa", data_path="../../data/PubMedQA/ansis-bin", **common)
    assert legacy["source_format"]["lowercase"] is True
    hoc = task_spec("dc-hoc", data_path="../../data/HoC/ansis-bin", **common)
    assert hoc["source_format"]["append_period"] is True and hoc["output_grammar"] == "hoc-type"


# --- quirks and bad inputs ------------------------------------------------------------------------------
def test_untied_values_are_reported_and_fairseq_wins(ddi_dir, tmp_path):
    src, _ = ddi_dir
    state = fairseq_state(V0 + 3)
    state["decoder.output_projection.weight"] = state["decoder.embed_tokens.weight"] + 1.0
    prompt_checkpoint(src / "checkpoint_avg.pt", state=state)
    result = convert_fairseq_checkpoint(src, tmp_path / "out")
    assert result.tied_embeddings_equal is False
    assert any("differs from decoder.embed_tokens" in w for w in result.warnings)
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(weights["biogpt.embed_tokens.weight"], state["decoder.output_projection.weight"])


def test_missing_dict_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "RE-DDI"
    prompt_checkpoint(src / "checkpoint_avg.pt")
    with pytest.raises(TokenizerError, match=r"no dict.txt at .*RE-DDI/dict.txt: give the dict.txt the model was"):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    assert cli_main(["convert", "fairseq", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: no dict.txt") and err.endswith("BioGPT-Large/dict.txt) (--dict)\n"), err
    assert not (tmp_path / "out").exists()


def test_wrong_files_are_clear_errors(tmp_path, ddi_dir):
    src, _ = ddi_dir
    text = src / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a torch checkpoint"):
        convert_fairseq_checkpoint(text, tmp_path / "a")
    plain = src / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="is not a fairseq checkpoint"):
        convert_fairseq_checkpoint(plain, tmp_path / "b")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="already in the Hugging Face layout"):
        convert_fairseq_checkpoint(tmp_path / "hf", tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_fairseq_checkpoint(tmp_path / "nowhere", tmp_path / "d")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        convert_fairseq_checkpoint(empty, tmp_path / "e")


def test_checkpoint_needing_fairseq_classes(tmp_path, ddi_dir, monkeypatch):
    src, _ = ddi_dir
    module = types.ModuleType("fake_fairseq_dataclass")

    class FairseqConfig:  # stands in for an omegaconf/fairseq object pickled inside cfg
        pass

    FairseqConfig.__module__, FairseqConfig.__qualname__ = module.__name__, "FairseqConfig"
    module.FairseqConfig = FairseqConfig
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({"cfg": FairseqConfig(), "model": fairseq_state(V0 + 3)}, src / "checkpoint_avg.pt")
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(
        CheckpointError, match="refused: its pickle names fake_fairseq_dataclass.FairseqConfig.*re-save"
    ):
        convert_fairseq_checkpoint(src, tmp_path / "out")


# --- trust: a checkpoint never runs code ------------------------------------------------------------------
class RunsCode:
    """What a hostile checkpoint pickles: an object whose unpickling calls ``builtins.exec``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class RunsCommand:
    """The other classic payload: ``os.system`` (pickled as ``posix.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path, marker, payload=RunsCode):
    """A checkpoint in the released layout whose cfg carries ``payload``: loading it unsafely writes ``marker``."""
    ckpt = prompt_checkpoint(path)
    ckpt["cfg"]["common"] = {"fp16": False, "user_dir": payload(marker)}
    torch.save(ckpt, path)


@pytest.mark.parametrize("payload,name", [(RunsCode, "builtins.exec"), (RunsCommand, "posix.system")])
def test_a_hostile_checkpoint_is_refused_before_it_runs(ddi_dir, tmp_path, capsys, payload, name):
    src, _ = ddi_dir
    marker = tmp_path / "pwned"
    hostile_checkpoint(src / "checkpoint_avg.pt", marker, payload)
    # pickle itself would run it: the payload is real
    import pickle

    pickle.loads(pickle.dumps(payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    dst = tmp_path / "out"
    assert cli_main(["convert", "fairseq", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("biomine: error: ") and f"names {name}" in err[0]
    assert "checkpoint_avg.pt refused" in err[0]
    assert not marker.exists() and not dst.exists()


def test_a_hostile_pytorch_model_bin_is_refused_by_from_pretrained(tmp_path, capsys):
    from safetensors.torch import load_file as load_safetensors

    from biogpt import BioGptForCausalLM
    from biogpt.tiny import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "m", [TEXT])
    state = load_safetensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({**state, "extra": RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin refused: its pickle names builtins.exec") as info:
        BioGptForCausalLM.from_pretrained(folder)
    assert "\n" not in str(info.value) and not marker.exists()
    assert cli_main(["generate", "--model", str(folder), "the"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names builtins.exec" in err[0] and not marker.exists()


def test_a_checkpoint_whose_cfg_is_an_omegaconf_config_converts_without_omegaconf_code(ddi_dir, tmp_path):
    """fairseq saves ``cfg`` as an omegaconf DictConfig in some versions, with interpolations
    (``II("task.max_target_positions")``) and a Namespace ``model``: read as data, never as code."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf builds the checkpoint (it is not needed to read it)")
    src, ckpt = ddi_dir
    plain = convert_fairseq_checkpoint(src, tmp_path / "plain")
    model = vars(ckpt["cfg"]["model"]) | {
        "max_target_positions": "${task.max_target_positions}",
        "decoder_layers": "${model.n_layers}",
        "n_layers": LAYERS,
    }
    cfg = omegaconf.OmegaConf.create(
        {
            "common": {"fp16": False, "seed": 1},
            "model": model,
            "task": ckpt["cfg"]["task"],
            "optimization": {"lr": [1e-4], "clip_norm": 0.0},
            "bpe": None,
        }
    )
    import numpy

    torch.save(
        {
            **ckpt,
            "cfg": cfg,
            "extra_state": {
                "epoch": 100,
                "best": numpy.float64(0.5),
                "metrics": {"loss": [(0, "loss", "AverageMeter", {})]},
            },
        },
        src / "checkpoint_avg.pt",
    )
    omegaconf_modules = {m: mod for m, mod in sys.modules.items() if m == "omegaconf" or m.startswith("omegaconf.")}
    try:
        for m in omegaconf_modules:  # reading must not import (or need) omegaconf
            sys.modules[m] = None
        converted = convert_fairseq_checkpoint(src, tmp_path / "omegaconf")
    finally:
        sys.modules.update(omegaconf_modules)
    assert (converted.task, converted.vocab_size, converted.prompt_token_ids) == (
        plain.task,
        plain.vocab_size,
        plain.prompt_token_ids,
    )
    for name in ("config.json", TASK_FILE):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("plain", "omegaconf"))
        a.get("converted_from", {}).pop("checkpoint", None), b.get("converted_from", {}).pop("checkpoint", None)
        assert a == b, name
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (
        tmp_path / "omegaconf" / "model.safetensors"
    ).read_bytes()


def test_shape_mismatches_are_clear_errors(tmp_path):
    src = tmp_path / "RE-DDI"
    write_vocab(src, SYMBOLS[:-5])  # a dictionary with fewer entries than the embedding has rows
    prompt_checkpoint(src / "checkpoint_avg.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch: the checkpoint's embedding has %d rows" % (V0 + 3)):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    write_vocab(src)
    prompt_checkpoint(src / "checkpoint_avg.pt", model_over={"decoder_ffn_embed_dim": 99})
    with pytest.raises(CheckpointError, match="cfg.model.decoder_ffn_embed_dim is 99 but the weights have 24"):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    state = fairseq_state(V0 + 3)
    state["decoder.layers.1.fc2.bias"] = torch.zeros(H + 1)
    prompt_checkpoint(src / "checkpoint_avg.pt", state=state)
    with pytest.raises(CheckpointError, match=r"layers.1.fc2.bias: \(17,\), expected \(16,\)"):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    state = fairseq_state(V0 + 3)
    state["decoder.layernorm_embedding.weight"] = torch.ones(H)
    prompt_checkpoint(src / "checkpoint_avg.pt", state=state)
    with pytest.raises(CheckpointError, match="not part of BioGPT: biogpt.layernorm_embedding.weight"):
        convert_fairseq_checkpoint(src, tmp_path / "out")


def test_unknown_task_needs_the_flag_and_dst_is_protected(tmp_path, capsys):
    src = tmp_path / "mystery"
    write_vocab(src)
    prompt_checkpoint(src / "checkpoint_avg.pt", data="/data/bin")
    with pytest.raises(CheckpointError, match=r"data path /data/bin\); name its task \(one of re-bc5cdr, re-ddi, "):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    assert cli_main(["convert", "fairseq", str(src), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith(", lm) (--task)\n")
    with pytest.raises(CheckpointError, match="unknown task 'ner'"):
        convert_fairseq_checkpoint(src, tmp_path / "out", task="ner")
    assert convert_fairseq_checkpoint(src, tmp_path / "out", task="re-ddi").task == "re-ddi"
    with pytest.raises(CheckpointError, match="exists and is not empty; choose another directory, or overwrite it$"):
        convert_fairseq_checkpoint(src, tmp_path / "out", task="re-ddi")
    assert cli_main(["convert", "fairseq", str(src), str(tmp_path / "out"), "--task", "re-ddi"]) == 2
    assert capsys.readouterr().err.endswith("is not empty; choose another directory, or overwrite it (--force)\n")
    assert convert_fairseq_checkpoint(src, tmp_path / "out", task="dc-hoc", overwrite=True).task == "dc-hoc"
    assert read_task_spec(tmp_path / "out")["task"] == "dc-hoc"
