"""BioGPT configuration, read and written as the Hugging Face ``config.json``.

Field names and defaults are those of transformers' ``BioGptConfig`` (the published
``microsoft/biogpt`` config.json loads unchanged), so a directory saved here loads in transformers
and vice versa. Unknown keys are kept (in :attr:`BioGptConfig.extra`) and written back, because
hub configs carry bookkeeping such as ``architectures`` and ``transformers_version``.

Note ``layer_norm_eps``: the hub configs say 1e-12 but no module uses it; every LayerNorm in both
reference implementations is built with PyTorch's default eps 1e-5 (see
transformers/models/biogpt/modeling_biogpt.py, and fairseq's LayerNorm). We keep the field for
round-tripping and use 1e-5, like the references.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
LAYER_NORM_EPS = 1e-5  # what the reference modules actually use (not config.layer_norm_eps)


@dataclass
class BioGptConfig:
    vocab_size: int = 42384
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    activation_dropout: float = 0.0
    max_position_embeddings: int = 1024
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    scale_embedding: bool = True
    use_cache: bool = True
    layerdrop: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    tie_word_embeddings: bool = True
    # heads
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    classifier_dropout: float | None = None
    problem_type: str | None = None
    torch_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.layerdrop) <= 1.0:
            raise ConfigError(
                f"layerdrop {self.layerdrop} must be a probability between 0 and 1 "
                "(the chance that training skips a layer; 0 = never)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; fix config.json"
            )
        if self.hidden_act not in ("gelu",):
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (BioGPT uses 'gelu')")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def label2id(self) -> dict[str, int]:
        labels = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return {v: k for k, v in labels.items()}

    # --- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BioGptConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "label2id"}
        if "num_labels" not in known and "id2label" in known and known["id2label"]:
            known["num_labels"] = len(known["id2label"])
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        out.pop("num_labels")
        labels = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        out["id2label"] = {str(k): v for k, v in labels.items()}
        out["label2id"] = {v: k for k, v in labels.items()}
        for key in ("classifier_dropout", "problem_type", "torch_dtype"):
            if out[key] is None:
                out.pop(key)
        out.setdefault("model_type", "biogpt")
        return {**self.extra, **out, "model_type": "biogpt"}

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "BioGptConfig":
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.exists():
            raise CheckpointError(
                f"no {CONFIG_NAME} in {path}: point at a model directory in the Hugging Face layout "
                "(config.json + model.safetensors), or convert a fairseq checkpoint with "
                "`biomine convert fairseq SRC DST`"
            )
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file} is not valid JSON ({exc}); re-save the model") from None
        model_type = data.get("model_type", "biogpt")
        if model_type != "biogpt":
            raise CheckpointError(f"{file} describes a {model_type!r} model, not BioGPT")
        return cls.from_dict(data)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# Published sizes (see biogpt-reference-spec: microsoft/biogpt and microsoft/BioGPT-Large).
BIOGPT_BASE = dict(
    vocab_size=42384,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=1024,
)
BIOGPT_LARGE = dict(
    vocab_size=57717,
    hidden_size=1600,
    num_hidden_layers=48,
    num_attention_heads=25,
    intermediate_size=6400,
    max_position_embeddings=2048,
)
