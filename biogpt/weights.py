"""Checkpoint I/O in the Hugging Face layout, with loud key and shape checks.

Reads a model directory as published for ``microsoft/biogpt`` and ``microsoft/BioGPT-Large``:
``config.json`` plus ``model.safetensors``, ``model.safetensors.index.json`` (shards),
``pytorch_model.bin`` or ``pytorch_model.bin.index.json``. Writes ``config.json`` and safetensors
(sharded past ``max_shard_size``), storing tied weights once as transformers does, so either
library loads the other's output bit for bit.

Loading builds the model on the meta device (no memory), reads each tensor once (safetensors are
memory-mapped), casts it to the requested dtype and assigns it: peak memory is one copy of the
weights. Key audit, after stripping/adding the ``biogpt.`` prefix so backbone-only and head
checkpoints load into any class:

* every backbone tensor must be present with the shape config.json implies; otherwise
  :class:`CheckpointError` names the keys and shapes;
* ``output_projection.weight`` may be absent (tied to ``embed_tokens``);
* a head the checkpoint lacks (``classifier``/``score`` when starting fine-tuning from a base LM) is
  freshly initialised and logged; another class's head in the checkpoint is ignored and logged;
* any other key is unknown: :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .config import BioGptConfig
from .errors import CheckpointError

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
HEAD_KEYS = {"output_projection.weight", "classifier.weight", "classifier.bias", "score.weight"}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16") from None


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory, in load order."""
    for index_name in (SAFE_INDEX, TORCH_INDEX):
        index = path / index_name
        if index.exists():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (path / f).exists()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are not in {path}: {', '.join(missing)}")
            return [path / f for f in files]
    for name in (SAFE_WEIGHTS, TORCH_WEIGHTS):
        if (path / name).exists():
            return [path / name]
    raise CheckpointError(
        f"no weights in {path}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}. "
        "For an original fairseq checkpoint.pt run `biomine convert fairseq SRC DST` first."
    )


def check_weights(path: str | Path) -> int:
    """Check a model directory's weight files without loading them: every shard present, each
    safetensors header readable and covering its file exactly, each ``pytorch_model.bin`` a whole
    zip archive. Cheap (headers only), so a job's ``run --check`` finds damaged weights before any
    work starts. Returns the number of tensors the headers list.

    :raises CheckpointError: naming the file that is missing, truncated or not a weights file.
    """
    import zipfile

    from safetensors import SafetensorError, safe_open

    tensors = 0
    for file in _weight_files(Path(path)):
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    tensors += len(list(f.keys()))
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(
                    f"{file} is damaged or incomplete ({exc}): download, convert or save the model again"
                ) from None
        else:
            try:
                with zipfile.ZipFile(file) as archive:
                    tensors += sum(1 for n in archive.namelist() if "/data/" in n)
            except (zipfile.BadZipFile, OSError) as exc:
                raise CheckpointError(
                    f"{file} is damaged or incomplete ({exc}): download, convert or save the model again"
                ) from None
    return tensors


def _iter_tensors(files: list[Path]):
    """Yield (key, tensor) from each file; safetensors are memory-mapped, one tensor at a time."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for key in f.keys():
                        yield key, f.get_tensor(key)
            except SafetensorError as exc:  # truncated download, or not a safetensors file at all
                raise CheckpointError(
                    f"cannot read {file}: {exc}; the file is damaged or incomplete: "
                    "download, convert or save the model again"
                ) from None
        else:
            state = load_torch_pickle(file)
            if "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            yield from state.items()


def load_torch_pickle(
    path: Path,
    admitted: list[Any] | None = None,
    *,
    admits: str = "",
    hint: str = "save the model with safetensors (save_pretrained) instead",
) -> Any:
    """``torch.load`` of ``path`` on CPU that runs no code the file names.

    torch's ``weights_only`` unpickler calls nothing but tensor rebuilds and plain containers, plus
    ``admitted`` (objects, or ``(object, "pickled.name")`` pairs: what a caller's format needs, by
    name; ``admits`` says what they are in words). Anything else a pickle names (``os.system``, ``builtins.exec``, a class of the writer's) is
    refused before it is called. Memory-mapped where the file format allows.

    :raises CheckpointError: one line naming the refused globals, or saying the file is not a torch file.
    """
    import pickle

    def _load(mmap: bool) -> Any:
        with torch.serialization.safe_globals(list(admitted or [])):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return _load(mmap=True)  # keeps optimizer state and unused tensors out of RAM
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return _load(mmap=False)  # legacy (pre-zip) torch format
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if not re.search(r"GLOBAL |unrecognized function|Can only (create|build)", text):
            detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
            raise CheckpointError(
                f"{path} is not a torch checkpoint ({detail.group(1).strip() if detail else text[:200]}); "
                "the file is damaged or not a checkpoint"
            ) from None
        allowed = "tensors and plain containers" + (f", {admits}" if admits else "")
        raise CheckpointError(
            f"{path} refused: its pickle names {_refused_globals(path, text, pickled_names(admitted or []))}, which "
            f"biomine does not load from a model file (loading it could run code; admitted: {allowed}); "
            f"{hint}"
        ) from None
    except (RuntimeError, EOFError, ValueError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {first}); the "
            "file is damaged or incomplete: download or save it again"
        ) from None


def pickled_names(admitted: list[Any]) -> set[str]:
    """The names under which ``admitted`` (see :func:`load_torch_pickle`) may appear in a pickle."""
    return {item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}" for item in admitted}


def _refused_globals(path: Path, message: str, admitted: set[str]) -> str:
    """The globals of ``path`` that are not admitted, as the pickle spells them."""
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in admitted]
    except Exception:  # a legacy (non-zip) file: take the name from torch's message
        names = []
    if names:
        return ", ".join(sorted(names)[:5])
    found = re.search(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|but got (<[^>]+>)", message)
    return next((g for g in found.groups() if g), "?") if found else message.splitlines()[0][:160]


def _target_key(key: str, prefix: str) -> str:
    """Map a checkpoint key onto this class's naming (prefix ``biogpt.`` or none)."""
    key = re.sub(r"^(model\.|decoder\.)", "", key)  # tolerate common wrappers
    bare = key[len("biogpt.") :] if key.startswith("biogpt.") else key
    if bare in HEAD_KEYS:
        return bare
    return f"{prefix}.{bare}" if prefix else bare


def load_pretrained(cls, path, dtype=None, device=None, **config_overrides):
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; pass the model directory (with config.json) instead")
    config = BioGptConfig.from_pretrained(path)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise CheckpointError(f"unknown config override {key!r}")
        setattr(config, key, value)
    if config_overrides.get("id2label"):
        config.__post_init__()
    dtype = resolve_dtype(dtype) or resolve_dtype(config.torch_dtype) or torch.float32
    files = _weight_files(path)

    with torch.device("meta"):
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = cls.base_model_prefix
    tied = bool(config.tie_word_embeddings) and "output_projection.weight" in expected
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    foreign_heads: list[str] = []
    bad_shapes: list[str] = []
    for key, tensor in _iter_tensors(files):
        if key.endswith("version") and key.startswith("decoder"):  # fairseq bookkeeping tensor
            continue
        target = _target_key(key, prefix)
        if target not in expected:
            (foreign_heads if target in HEAD_KEYS else unknown).append(key)
            continue
        if tuple(tensor.shape) != expected[target]:
            bad_shapes.append(f"{key}: checkpoint {tuple(tensor.shape)} vs config {expected[target]}")
            continue
        state[target] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if bad_shapes:
        raise CheckpointError(
            f"{path}: {len(bad_shapes)} tensors do not match config.json (is config.json from another "
            "model size, or vocab_size missing the learned prompt tokens?):\n  " + "\n  ".join(bad_shapes[:20])
        )
    if unknown:
        raise CheckpointError(f"{path}: unknown keys, not part of BioGPT: {', '.join(sorted(unknown)[:20])}")
    if tied and "output_projection.weight" in state:
        emb = state[f"{prefix}.embed_tokens.weight" if prefix else "embed_tokens.weight"]
        if not torch.equal(state["output_projection.weight"], emb):
            log.warning(
                "%s: output_projection differs from embed_tokens although tie_word_embeddings is "
                "set; using embed_tokens for both (as transformers does)",
                path,
            )
        del state["output_projection.weight"]
    missing = sorted(set(expected) - set(state) - ({"output_projection.weight"} if tied else set()))
    missing_heads = [k for k in missing if k in HEAD_KEYS]
    missing_body = [k for k in missing if k not in HEAD_KEYS]
    if missing_body:
        raise CheckpointError(f"{path}: checkpoint lacks {len(missing_body)} tensors: {', '.join(missing_body[:20])}")
    if foreign_heads:
        log.info("%s: ignoring weights of another head: %s", path, ", ".join(foreign_heads))
    for key in missing_heads:  # a new task head on a pre-trained body
        log.warning("%s: %s is not in the checkpoint and is freshly initialised: train it before use", path, key)
        shape = expected[key]
        t = (
            torch.zeros(shape, dtype=dtype)
            if key.endswith("bias")
            else torch.empty(shape, dtype=dtype).normal_(0.0, config.initializer_range)
        )
        state[key] = t
    model.load_state_dict(state, strict=not tied, assign=True)
    model.tie_weights()
    model.config.torch_dtype = str(dtype).replace("torch.", "")
    if device is not None:
        model.to(device)
    return model.eval()


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?)?\s*", str(size), re.I)
    if not m:
        raise ValueError(f"cannot parse shard size {size!r}; use e.g. '2GB' or a byte count")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[unit]


def save_pretrained(model, path, max_shard_size=None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("output_projection.weight", None)  # stored once, as transformers does
    state = {k: v.detach().contiguous() for k, v in state.items()}
    model.config.save_pretrained(path)
    for stale in (SAFE_WEIGHTS, SAFE_INDEX):
        (path / stale).unlink(missing_ok=True)
    limit = _parse_size(max_shard_size) if max_shard_size else None
    total = sum(t.numel() * t.element_size() for t in state.values())
    if limit is None or total <= limit:
        save_file(state, str(path / SAFE_WEIGHTS), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (path / SAFE_INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
