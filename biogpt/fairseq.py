"""Convert an original BioGPT fairseq checkpoint into the project's Hugging Face layout.

    from biogpt.fairseq import convert_fairseq_checkpoint
    result = convert_fairseq_checkpoint("RE-DDI-BioGPT/checkpoint_avg.pt", "models/re-ddi",
                                        dict_file="BioGPT/data/dict.txt", bpecodes_file="BioGPT/data/bpecodes")

Input: a fairseq checkpoint (``checkpoint.pt``, ``checkpoint_avg.pt``, ``checkpoint_last.pt``, or the
directory holding it), i.e. a torch pickle with ``model`` (state dict, keys ``decoder.*``) and ``cfg``
(nested dict: ``model``, ``task``, ``common`` ...; ``cfg.model`` is often an ``argparse.Namespace``) or,
in older ones, a flat ``args`` Namespace. It is the pre-trained LM (``language_modeling`` task) or a
prompt-tuned task model (``language_modeling_prompt`` + ``transformer_lm_prompt_biogpt[_large]``, from
microsoft/BioGPT ``src/``): the same network with ``learned1..N`` appended to the vocabulary, so the
embedding has V0+N rows. The vocabulary comes from ``dict.txt`` + ``bpecodes`` (next to the
checkpoint, or passed in).

Output directory:

* ``config.json`` - transformers' BioGptConfig from ``cfg.model``; vocab_size = embedding rows,
  max_position_embeddings = position rows - 2, layer_norm_eps 1e-12 as the hub configs (unused).
* ``model.safetensors`` - transformers' BioGptForCausalLM keys: ``decoder.X`` -> ``biogpt.X``,
  ``decoder.output_projection.weight`` -> ``output_projection.weight``, ``decoder.version`` dropped.
* ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json`` and, for a
  prompt model, ``added_tokens.json`` with ``learned1..N`` at ids V0..V0+N-1 (biogpt.tokenizer).
* ``biomine_task.json`` - what inference needs (see :mod:`biogpt.task_spec` and docs/convert.md): task,
  prompt ids, source/target lengths, truncation marker id, source formatting, decoding settings,
  output grammar.

Facts used (microsoft/BioGPT): ``language_modeling_prompt.py`` appends ``learned1..N`` with
``Dictionary.encode_line`` (after ``<seqsep>`` when ``prefix`` is set); ``language_model_prompt_dataset.py``
truncates a long source to S-1 tokens + ``...``; ``inference.py`` decodes greedily (beam 1) with
``max_len_b`` 1024; ``examples/*/rebuild_data.py`` build the (lower-cased) sources; the
``postprocess.py`` scripts parse the target grammars.

Trust: the pickle is loaded by torch's ``weights_only`` unpickler, which runs no code the file names;
besides tensors and plain containers it admits, by name, only what the released checkpoints hold
(``argparse.Namespace``; omegaconf's config containers, read as inert stand-ins so omegaconf need
not be installed; numpy scalars). See docs/convert.md, "Trust".

:raises CheckpointError: the checkpoint is missing, not a fairseq checkpoint, names a class or
    function that is not admitted (refused before anything runs), or its tensors disagree with its
    config or with the dictionary.
:raises TokenizerError: ``dict.txt``/``bpecodes`` missing or malformed.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import BioGptConfig
from .errors import CheckpointError, TokenizerError
from .task_spec import CHECKPOINT_TASKS, TRUNCATION_MARKER, guess_task, task_spec, write_task_spec
from .tokenizer import BioGptTokenizer
from .weights import load_torch_pickle

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint_avg.pt", "checkpoint.pt", "checkpoint_last.pt", "checkpoint_best.pt")

# fairseq architectures BioGPT used and their head counts (fairseq transformer_lm.py), for checkpoints
# whose cfg.model lacks decoder_attention_heads (it cannot be read from tensor shapes).
ARCH_HEADS = {
    "transformer_lm_prompt_biogpt": 16,
    "transformer_lm_prompt_biogpt_large": 25,
    "transformer_lm_biogpt": 16,
    "transformer_lm_biogpt_large": 25,
    "transformer_lm_gpt2_small": 16,
    "transformer_lm_gpt2_medium": 20,
    "transformer_lm_gpt2_big": 25,
}


@dataclass
class ConversionResult:
    """What :func:`convert_fairseq_checkpoint` wrote and found."""

    dst: Path
    checkpoint: Path
    task: str
    vocab_size: int
    learned_prompt: int
    prompt_token_ids: list[int]
    tied_embeddings_equal: bool | None
    warnings: list[str] = field(default_factory=list)


# --- reading the checkpoint ---------------------------------------------------------------------------
def find_checkpoint(src: str | Path) -> Path:
    """The checkpoint file: ``src`` itself, or the preferred ``checkpoint*.pt`` in directory ``src``."""
    src = Path(src)
    if src.is_file():
        return src
    if not src.is_dir():
        raise CheckpointError(
            f"{src} does not exist; pass a fairseq checkpoint file (checkpoint.pt, "
            "checkpoint_avg.pt) or the directory holding it"
        )
    if (src / "config.json").exists():
        raise CheckpointError(
            f"{src} holds config.json: it is already in the Hugging Face layout and needs no conversion"
        )
    for name in CHECKPOINT_NAMES:
        if (src / name).is_file():
            return src / name
    found = sorted(p.name for p in src.glob("*.pt"))
    if len(found) == 1:
        return src / found[0]
    raise CheckpointError(
        f"no checkpoint in {src}: expected one of {', '.join(CHECKPOINT_NAMES)}"
        + (f"; found several: {', '.join(found[:10])} - pass the file" if found else "")
    )


# --- loading without running code ---------------------------------------------------------------------
class PickledObject:
    """An object of an admitted class (omegaconf's config nodes), kept as the data it was pickled with.

    A pickle names classes and functions that the loader calls; a checkpoint built to run code names
    ``os.system``, ``builtins.exec`` or a class of its own. The loader is torch's ``weights_only``
    unpickler, which calls nothing that is not allowlisted; the classes a released checkpoint needs
    besides tensors and plain containers are admitted by name, and omegaconf's are these stand-ins,
    so that none of omegaconf's (or anyone's) code runs and omegaconf need not be installed.
    """

    pickled_name = "?"
    args: tuple[Any, ...]  # what REDUCE passed to the class
    state: Any  # what BUILD passed to __setstate__: the pickled data, whatever its shape

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class: keep nothing but data
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(name: str) -> type[PickledObject]:
    return type(name.rsplit(".", 1)[1], (PickledObject,), {"pickled_name": name, "__module__": __name__})


def _plain_dict(*_args: Any) -> dict:
    """``collections.defaultdict(factory)`` read as a plain dict (omegaconf's resolver cache)."""
    return {}


_OMEGACONF = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
)
_STAND_INS = {name: _stand_in(name) for name in _OMEGACONF}


def _admitted_globals() -> list[Any]:
    """What a released BioGPT checkpoint's pickle may name, beyond what ``weights_only`` admits (tensors,
    storages, dtypes, OrderedDict): fairseq's ``argparse.Namespace`` configs, omegaconf's containers and
    their metadata (stand-ins), the types those name, and numpy scalars in training bookkeeping."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    admitted: list[Any] = [
        argparse.Namespace,
        (int, "builtins.int"),
        (dict, "builtins.dict"),
        (list, "builtins.list"),
        (object, "builtins.object"),
        (_plain_dict, "collections.defaultdict"),
        (_stand_in("typing.Any"), "typing.Any"),
        (numpy.dtype, "numpy.dtype"),
    ]
    admitted += [(cls, name) for name, cls in _STAND_INS.items()]
    # numpy scalars (float64 losses in extra_state): numpy 1 pickles name numpy.core, numpy 2 numpy._core
    admitted += [(core.multiarray.scalar, f"{m}.multiarray.scalar") for m in ("numpy.core", "numpy._core")]
    admitted += [
        (type(numpy.dtype(t)), f"numpy.dtypes.{type(numpy.dtype(t)).__name__}")
        for t in ("f8", "f4", "f2", "i8", "i4", "?")
    ]
    return admitted


def _plain(obj: Any) -> Any:
    """``obj`` with omegaconf stand-ins turned into the dicts, lists and values they held."""
    if isinstance(obj, PickledObject):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.pickled_name.endswith(("DictConfig", "ListConfig")):
            return _plain(state.get("_content"))  # None (a None config), "???" or "${...}" stay as they are
        if obj.pickled_name.startswith("omegaconf.nodes."):
            return _plain(state.get("_val"))
        return None  # metadata and typing.Any: nothing a converter reads
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: _plain(v) for k, v in vars(obj).items()})
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _resolve(root: Any) -> Any:
    """Resolve omegaconf's whole-value interpolations (``${task.max_target_positions}``, how fairseq's
    dataclasses share a value) against the config's root; anything else stays as it is."""

    def lookup(dotted: str, seen: frozenset[str]) -> Any:
        node = root
        for part in dotted.split("."):
            node = (
                vars(node).get(part)
                if isinstance(node, argparse.Namespace)
                else node.get(part)
                if isinstance(node, dict)
                else None
            )
        return walk(node, seen | {dotted})

    def walk(obj: Any, seen: frozenset[str] = frozenset()) -> Any:
        if isinstance(obj, str) and (m := _INTERPOLATION.match(obj)) and m.group(1) not in seen:
            return lookup(m.group(1), seen)
        if isinstance(obj, argparse.Namespace):
            return argparse.Namespace(**{k: walk(v, seen) for k, v in vars(obj).items()})
        if isinstance(obj, dict):
            return type(obj)((k, walk(v, seen)) for k, v in obj.items())
        if isinstance(obj, list):
            return [walk(v, seen) for v in obj]
        return obj

    return walk(root)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's pickle on CPU, loaded without running any code it names.

    torch's ``weights_only`` unpickler admits tensors and plain containers; :func:`_admitted_globals`
    adds what released BioGPT checkpoints need (``argparse.Namespace``, omegaconf's config containers
    as inert stand-ins, numpy scalars). Anything else (``os.system``, ``builtins.exec``, a fairseq or
    user class) is refused before it is called, with one line naming it.

    :raises CheckpointError: not a torch file, not a fairseq checkpoint, or a global that is not admitted.
    """
    ckpt = load_torch_pickle(
        path,
        _admitted_globals(),
        admits="argparse.Namespace, omegaconf configs, numpy scalars",
        hint="if you trust the file, re-save its 'cfg' and 'model' as plain data where "
        "fairseq is installed (docs/convert.md, 'Trust')",
    )
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a fairseq checkpoint: expected a dict with 'model' (state dict) "
            f"and 'cfg', found {keys}. A Hugging Face state dict needs no conversion"
        )
    for key in ("cfg", "args"):
        if key in ckpt:
            ckpt[key] = _resolve(_plain(ckpt[key]))
    return ckpt


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "items"):
        return dict(obj.items())
    raise CheckpointError(f"unexpected config object of type {type(obj).__name__} in the checkpoint")


def checkpoint_configs(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model cfg, task cfg) as plain dicts from ``cfg`` (fairseq >= 0.10) or the flat ``args`` (older)."""
    cfg = _as_dict(ckpt.get("cfg"))
    args = _as_dict(ckpt.get("args"))
    model = _as_dict(cfg.get("model")) or args
    task = _as_dict(cfg.get("task")) or args
    if not model:
        raise CheckpointError("the checkpoint has neither cfg.model nor args: cannot tell the model size")
    if "_name" not in task and "task" in args:
        task = {**task, "_name": args["task"]}
    return model, task


# --- conversion ---------------------------------------------------------------------------------------
def _config_from_cfg(model_cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> BioGptConfig:
    """transformers' BioGptConfig from cfg.model, with sizes checked against the tensors."""

    def need(key):
        if key not in state:
            raise CheckpointError(f"the checkpoint has no {key}: not a BioGPT (fairseq transformer_lm) model")
        return state[key]

    embed = need("decoder.embed_tokens.weight")
    positions = need("decoder.embed_positions.weight")
    vocab, hidden = embed.shape
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
    if model_cfg.get("decoder_learned_pos") is False:
        raise CheckpointError(
            "the checkpoint uses sinusoidal positions (decoder_learned_pos False); BioGPT uses learned positions"
        )
    activation = model_cfg.get("activation_fn", "gelu")
    if activation != "gelu":
        raise CheckpointError(f"activation_fn {activation!r} is not BioGPT's exact GELU ('gelu')")
    arch = model_cfg.get("arch") or model_cfg.get("_name")
    heads = model_cfg.get("decoder_attention_heads") or (ARCH_HEADS.get(arch) if arch is not None else None)
    if not heads:
        raise CheckpointError(f"cfg.model has no decoder_attention_heads and the architecture {arch!r} is unknown")
    checks = {
        "decoder_embed_dim": hidden,
        "decoder_layers": len(layer_ids),
        "decoder_ffn_embed_dim": need("decoder.layers.0.fc1.weight").shape[0],
    }
    for key, actual in checks.items():
        if model_cfg.get(key) is not None and model_cfg[key] != actual:
            raise CheckpointError(
                f"shape mismatch: cfg.model.{key} is {model_cfg[key]} but the weights have "
                f"{actual}; the checkpoint is inconsistent"
            )
    return BioGptConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layer_ids),
        num_attention_heads=int(heads),
        intermediate_size=checks["decoder_ffn_embed_dim"],
        hidden_act="gelu",
        hidden_dropout_prob=float(model_cfg.get("dropout", 0.1)),
        attention_probs_dropout_prob=float(model_cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(model_cfg.get("activation_dropout", model_cfg.get("relu_dropout", 0.0)) or 0.0),
        max_position_embeddings=positions.shape[0] - 2,  # fairseq LearnedPositionalEmbedding: P + pad + 1
        layerdrop=float(model_cfg.get("decoder_layerdrop", 0.0) or 0.0),
        scale_embedding=not model_cfg.get("no_scale_embedding", False),
        tie_word_embeddings=bool(model_cfg.get("share_decoder_input_output_embed", True)),
        torch_dtype=str(embed.dtype).replace("torch.", ""),
        extra={"architectures": ["BioGptForCausalLM"]},
    )


def _expected_shapes(config: BioGptConfig) -> dict[str, tuple[int, ...]]:
    H, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {
        "biogpt.embed_tokens.weight": (V, H),
        "biogpt.embed_positions.weight": (config.max_position_embeddings + 2, H),
        "biogpt.layer_norm.weight": (H,),
        "biogpt.layer_norm.bias": (H,),
        "output_projection.weight": (V, H),
    }
    for i in range(config.num_hidden_layers):
        p = f"biogpt.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"], shapes[f"{p}self_attn.{proj}.bias"] = (H, H), (H,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"], shapes[f"{p}{norm}.bias"] = (H,), (H,)
        shapes[f"{p}fc1.weight"], shapes[f"{p}fc1.bias"] = (I, H), (I,)
        shapes[f"{p}fc2.weight"], shapes[f"{p}fc2.bias"] = (H, I), (H,)
    return shapes


def convert_state_dict(
    state: dict[str, torch.Tensor], config: BioGptConfig, warnings: list[str]
) -> tuple[dict[str, torch.Tensor], bool | None]:
    """fairseq ``decoder.*`` keys -> transformers BioGptForCausalLM keys, audited against ``config``.

    Returns the new state dict and whether the tied output projection equals embed_tokens (None when
    the checkpoint does not tie them).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key == "decoder.version":  # fairseq bookkeeping, not a weight
            continue
        if key == "decoder.output_projection.weight":
            out["output_projection.weight"] = tensor
        elif key.startswith("decoder."):
            out["biogpt." + key[len("decoder.") :]] = tensor
        else:
            unknown.append(key)
    expected = _expected_shapes(config)
    unknown += [k for k in out if k not in expected]
    if unknown:
        raise CheckpointError(
            f"keys that are not part of BioGPT: {', '.join(sorted(unknown)[:12])} (a layernorm_embedding, "
            "adaptive softmax or another architecture?)"
        )
    if "output_projection.weight" not in out and config.tie_word_embeddings:
        out["output_projection.weight"] = out["biogpt.embed_tokens.weight"]
    missing = sorted(set(expected) - set(out))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} BioGPT tensors: {', '.join(missing[:12])}")
    bad = [f"{k}: {tuple(t.shape)}, expected {expected[k]}" for k, t in out.items() if tuple(t.shape) != expected[k]]
    if bad:
        raise CheckpointError("shape mismatch between the weights and cfg.model:\n  " + "\n  ".join(bad[:12]))

    tied_equal = None
    if config.tie_word_embeddings:
        emb, proj = out["biogpt.embed_tokens.weight"], out["output_projection.weight"]
        tied_equal = bool(torch.equal(emb, proj))
        if not tied_equal:
            diff = (emb.float() - proj.float()).abs().max().item()
            # fairseq ties the two parameters, and loading its state dict copies output_projection
            # (the later module) into the shared tensor last: that is what the fairseq model ran with.
            warnings.append(
                f"decoder.output_projection.weight differs from decoder.embed_tokens.weight "
                f"(max abs diff {diff:.3g}) although the checkpoint ties them; using "
                "output_projection for both, as fairseq's loader does"
            )
            out["biogpt.embed_tokens.weight"] = proj
    # safetensors refuses tensors that share memory (fairseq saves the tied pair as one storage).
    out["output_projection.weight"] = out["output_projection.weight"].clone()
    return {k: v.contiguous() for k, v in out.items()}, tied_equal


def convert_fairseq_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    dict_file: str | Path | None = None,
    bpecodes_file: str | Path | None = None,
    task: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert the fairseq checkpoint ``src`` (file or directory) into directory ``dst``.

    ``dict_file``/``bpecodes_file`` default to ``dict.txt``/``bpecodes`` next to the checkpoint;
    ``task`` overrides the guess from the checkpoint's data path and file path (one of
    :data:`biogpt.task_spec.CHECKPOINT_TASKS`); ``dtype`` ('float32', 'float16', 'bfloat16') casts the weights (default: as stored).
    """
    checkpoint = find_checkpoint(src)
    here = checkpoint.parent
    dict_path = Path(dict_file) if dict_file else here / "dict.txt"
    codes_path = Path(bpecodes_file) if bpecodes_file else here / "bpecodes"
    for path, setting, what in ((dict_path, "dict_file", "dict.txt"), (codes_path, "bpecodes_file", "bpecodes")):
        if not path.is_file():
            raise TokenizerError(
                f"no {what} at {path}: give the {what} the model was trained with (BioGPT's data/{what}; for "
                f"BioGPT-Large data/BioGPT-Large/{what})",
                setting=setting,
            )
    if task is not None and task not in CHECKPOINT_TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {', '.join(CHECKPOINT_TASKS)}", setting="task")
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file: name a directory for the converted model")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{dst} exists and is not empty; choose another directory, or overwrite it", setting="overwrite"
        )

    ckpt = load_checkpoint(checkpoint)
    model_cfg, task_cfg = checkpoint_configs(ckpt)
    warnings: list[str] = []
    config = _config_from_cfg(model_cfg, ckpt["model"])

    # Vocabulary: the dictionary, plus the prompt symbols the task appended (language_modeling_prompt.py).
    tokenizer = BioGptTokenizer.from_fairseq(dict_path, codes_path)
    fairseq_task = str(task_cfg.get("_name") or "")
    n_prompt = int(task_cfg.get("learned_prompt") or 0)
    if task_cfg.get("manual_prompt"):
        raise CheckpointError(
            "the checkpoint uses a manual prompt (cfg.task.manual_prompt); only learned "
            "prompts (BioGPT's released models) are supported"
        )
    pattern = str(task_cfg.get("learned_prompt_pattern") or "learned")
    learned = [f"{pattern}{i}" for i in range(1, n_prompt + 1)]
    prefix = bool(task_cfg.get("prefix", False))
    new_symbols = ([str(task_cfg.get("sep_token") or "<seqsep>")] if prefix and n_prompt else []) + learned
    # A task dictionary saved after training already lists them (as word-final symbols).
    missing = [s for s in new_symbols if s + "</w>" not in tokenizer.encoder]
    tokenizer.add_tokens(missing)
    if len(tokenizer) != config.vocab_size:
        what = f" + {len(missing)} prompt tokens" if missing else ""
        raise CheckpointError(
            f"shape mismatch: the checkpoint's embedding has {config.vocab_size} rows but {dict_path} gives "
            f"{tokenizer.vocab_size} ids{what} = {len(tokenizer)}. Use the dict.txt the model was trained with "
            "(BioGPT-Large has its own, 57,717 ids)"
        )

    def symbol_id(symbol: str) -> int:
        return tokenizer.convert_tokens_to_ids(symbol if symbol in tokenizer.added_tokens_encoder else symbol + "</w>")

    prompt_ids = [symbol_id(s) for s in learned]
    sep_id = symbol_id(new_symbols[0]) if prefix and n_prompt else None

    data_path = str(task_cfg.get("data") or "")
    if task is None:
        task = (
            "lm"
            if n_prompt == 0 and fairseq_task != "language_modeling_prompt"
            else guess_task([data_path, str(checkpoint.resolve())])
        )
        if task is None:
            raise CheckpointError(
                f"cannot tell which task {checkpoint} was fine-tuned for (data path "
                f"{data_path or 'unknown'}); name its task (one of {', '.join(CHECKPOINT_TASKS)})",
                setting="task",
            )
    max_target = int(
        task_cfg.get("max_target_positions") or model_cfg.get("max_target_positions") or config.max_position_embeddings
    )
    if max_target > config.max_position_embeddings:
        warnings.append(
            f"cfg max_target_positions {max_target} exceeds the {config.max_position_embeddings} "
            "positions of the weights; using the latter"
        )
        max_target = config.max_position_embeddings
    max_source = task_cfg.get("max_source_positions")
    if max_source is None and task != "lm":
        max_source = 384  # LanguageModelingPromptConfig's default (microsoft/BioGPT src/language_modeling_prompt.py)
        warnings.append("cfg.task has no max_source_positions; assuming fairseq's default 384")
    truncation_id = tokenizer.convert_tokens_to_ids(TRUNCATION_MARKER + "</w>")
    if task != "lm" and truncation_id == tokenizer.unk_token_id:
        warnings.append(f"{dict_path} has no '{TRUNCATION_MARKER}'; fairseq would truncate with <unk>")
    spec = task_spec(
        task,
        learned=learned,
        prompt_ids=prompt_ids,
        sep_token_id=sep_id,
        max_source=int(max_source) if max_source is not None and task != "lm" else None,
        max_target=max_target,
        truncation_id=truncation_id if task != "lm" else None,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        data_path=data_path,
    )
    spec["converted_from"] = {
        "checkpoint": str(checkpoint),
        "fairseq_task": fairseq_task or None,
        "arch": model_cfg.get("arch") or model_cfg.get("_name"),
        "data": data_path or None,
    }

    state, tied_equal = convert_state_dict(ckpt["model"], config, warnings)
    if dtype:
        from .weights import resolve_dtype

        target = resolve_dtype(dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        config.torch_dtype = str(target).replace("torch.", "")

    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dst)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(dst)
    write_task_spec(spec, dst)
    for message in warnings:
        log.warning("%s: %s", checkpoint, message)
    return ConversionResult(
        dst=dst,
        checkpoint=checkpoint,
        task=task,
        vocab_size=config.vocab_size,
        learned_prompt=n_prompt,
        prompt_token_ids=prompt_ids,
        tied_embeddings_equal=tied_equal,
        warnings=warnings,
    )
