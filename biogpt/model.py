"""BioGPT in plain PyTorch: the decoder, its KV caches, and the three heads.

This file tells the whole forward pass. It computes what transformers' ``modeling_biogpt.py`` computes
(the numerical reference; see ``tests/test_model_parity.py``) and keeps the Hugging Face parameter
names, so loading a published checkpoint is a prefix strip plus an audit (``biogpt/weights.py``).

    ids ─ embed_tokens·sqrt(H) ─┐
                                + ─ [x + Attn(LN(x)); x + FFN(LN(x))] × L ─ layer_norm ─ heads
    positions ─ embed_positions ┘   (pre-LN blocks, eps 1e-5)

Quirks reproduced on purpose, with their source:

* Learned absolute positions are offset by 2 (fairseq's ``LearnedPositionalEmbedding`` reserved rows
  for padding_idx=1 and below): the table has ``max_position_embeddings + 2`` rows and position p
  reads row p + 2. Positions come from the attention mask (cumsum(mask)·mask − 1), so a left-padded
  row sees the same positions as the same row unpadded.
* Token embeddings are scaled by sqrt(hidden) (``scale_embedding``); inputs_embeds are taken as given.
* Every LayerNorm uses eps 1e-5 whatever ``config.layer_norm_eps`` says (see ``biogpt/config.py``).
* The LM head ``output_projection`` is tied to ``embed_tokens`` and has no bias.
* ``BioGptForSequenceClassification`` pools the rightmost non-pad token of each row (transformers 5).

Caches hold projected keys/values as (B, H, T, D). :class:`KVCache` grows by concatenation (HF's
dynamic cache); :class:`StaticKVCache` is preallocated and written in place at per-row slots, so the
generation engine can capture decode steps in a CUDA graph. Attention masks are boolean
(True = may attend); a query may always attend to its own slot, so padding rows never see an empty
softmax (NaN) and real rows never look at padding.

:raises InputTooLongError: when an input reaches past ``max_position_embeddings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import LAYER_NORM_EPS, BioGptConfig
from .errors import InputTooLongError

POSITION_OFFSET = 2  # fairseq legacy: rows 0 and 1 of embed_positions are never used by real tokens


# ------------------------------------------------------------------------------------------------
# KV caches
# ------------------------------------------------------------------------------------------------
class KVCache:
    """Growing per-layer cache of projected keys and values, each (B, H, T, D)."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, cache_position=None):
        past_k, past_v = self.keys[layer_idx], self.values[layer_idx]
        if past_k is not None and past_v is not None:  # a layer's keys and values are set together
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def get_seq_length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row ``index[i]``."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None and v is not None:
                self.keys[i], self.values[i] = k.index_select(0, index), v.index_select(0, index)

    def to_legacy(self) -> tuple[tuple[torch.Tensor | None, torch.Tensor | None], ...]:
        return tuple((k, v) for k, v in zip(self.keys, self.values))

    @classmethod
    def from_legacy(cls, past) -> "KVCache":
        cache = cls(len(past))
        for i, (k, v) in enumerate(past):
            cache.keys[i], cache.values[i] = k, v
        return cache

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.to_legacy())

    def __getitem__(self, i):
        return self.keys[i], self.values[i]


class StaticKVCache:
    """Preallocated key/value buffers, ``(B, H, max_length, D)`` per layer, for the generation engine.

    The engine owns the bookkeeping (which slots of which row are valid) and hands the model views
    of these buffers that write in place (``biogpt.engine``: ``_Window`` for decode steps,
    ``_PrefillWriter`` for prefills). A cache of this class tells the model that the caller owns the
    positions: it must pass ``position_ids`` and the matching 4-D boolean attention mask. Nothing is
    allocated after construction, so a decode step over it can be captured in a CUDA graph.
    """

    def __init__(
        self,
        config: BioGptConfig,
        batch_size: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, config.num_attention_heads, max_length, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.keys)


# ------------------------------------------------------------------------------------------------
# Outputs (attribute access like transformers' ModelOutput)
# ------------------------------------------------------------------------------------------------
@dataclass
class BaseModelOutput:
    last_hidden_state: torch.Tensor
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------------
# Masks and positions
# ------------------------------------------------------------------------------------------------
def positions_from_mask(attention_mask: torch.Tensor, past_length: int, seq_length: int) -> torch.Tensor:
    """Position ids (B, T) of the last T columns: real token k (0-based, pads skipped) gets k.

    Padding gets -1 (table row 1, never a real position), as transformers' BioGPT does.
    """
    mask = attention_mask.long()
    pos = torch.cumsum(mask, dim=1) * mask - 1
    return pos[:, past_length : past_length + seq_length]


def build_attention_mask(
    attention_mask: torch.Tensor | None, batch: int, seq_length: int, past_length: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask from a 2-D padding mask (B, S = past + T); None means plain causal.

    Query i sits at slot past + i and may attend slots j <= past + i that are not padding, and
    always its own slot (so a padding query never has an empty softmax).
    """
    total = past_length + seq_length
    if attention_mask is None:
        if past_length == 0:
            return None  # pure causal: lets SDPA use is_causal (flash kernels on CUDA)
        attention_mask = torch.ones(batch, total, device=device, dtype=torch.bool)
    if attention_mask.shape[1] != total:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} positions but the cache holds {past_length} "
            f"and the input adds {seq_length}: pass a mask of length past + new = {total}"
        )
    q = torch.arange(past_length, total, device=device)[:, None]  # (T, 1)
    k = torch.arange(total, device=device)[None, :]  # (1, S)
    causal = k <= q  # (T, S)
    allowed = causal[None] & attention_mask.bool()[:, None, :]  # (B, T, S)
    allowed = allowed | (k == q)[None]
    return allowed[:, None]  # (B, 1, T, S)


# ------------------------------------------------------------------------------------------------
# The decoder
# ------------------------------------------------------------------------------------------------
class BioGptAttention(nn.Module):
    def __init__(self, config: BioGptConfig, layer_idx: int):
        super().__init__()
        H = config.hidden_size
        self.num_heads, self.head_dim, self.layer_idx = config.num_attention_heads, config.head_dim, layer_idx
        self.scaling = self.head_dim**-0.5  # 0.125 for BioGPT's 64-dim heads: exact in any dtype
        self.dropout = config.attention_probs_dropout_prob
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)
        self.q_proj = nn.Linear(H, H)
        self.out_proj = nn.Linear(H, H)

    def forward(self, x, mask, cache=None, cache_position=None):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, cache_position)  # (B, H, S, D)
        causal = False
        if mask is None and T > 1:  # a branch, not an expression: T may be symbolic under torch.compile
            causal = True
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scaling,
        )  # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class BioGptDecoderLayer(nn.Module):
    def __init__(self, config: BioGptConfig, layer_idx: int):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.self_attn = BioGptAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(H, I)
        self.fc2 = nn.Linear(I, H)
        self.final_layer_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)  # the FFN's pre-norm, despite its name
        self.dropout = config.hidden_dropout_prob
        self.activation_dropout = config.activation_dropout

    def mlp(self, x):
        x = F.dropout(F.gelu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(x)

    def forward(self, x, mask, cache=None, cache_position=None):
        x = x + F.dropout(
            self.self_attn(self.self_attn_layer_norm(x), mask, cache, cache_position), self.dropout, self.training
        )
        x = x + F.dropout(self.mlp(self.final_layer_norm(x)), self.dropout, self.training)
        return x


class BioGptPreTrainedModel(nn.Module):
    """Shared loading/saving (``biogpt/weights.py``) and weight initialisation."""

    base_model_prefix = "biogpt"

    def __init__(self, config: BioGptConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """transformers' initialisation: N(0, initializer_range), zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        pass

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        *,
        revision: str | None = None,
        **config_overrides,
    ):
        """Load a Hugging Face-layout model (config.json + safetensors/bin, sharded or not): a local
        directory, a Hub id such as ``microsoft/biogpt`` (``revision``: a branch, tag or commit;
        or ``microsoft/biogpt@v1``) or a pulled release such as ``biogpt:re-ddi`` (:mod:`biogpt.hub`).

        :raises CheckpointError: an unknown name, missing files, unknown or missing keys, shapes that
            disagree with config.json (each named).
        """
        from .hub import resolve
        from .weights import load_pretrained

        return load_pretrained(cls, resolve(path, revision).path, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, path: str | Path, max_shard_size: int | str | None = None) -> None:
        """Write config.json and safetensors weights (tied weights stored once, as transformers does)."""
        from .weights import save_pretrained

        save_pretrained(self, path, max_shard_size=max_shard_size)


class BioGptModel(BioGptPreTrainedModel):
    base_model_prefix = ""

    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        H = config.hidden_size
        self.embed_scale = math.sqrt(H) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, H)
        self.layers = nn.ModuleList(BioGptDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)
        self.dropout = config.hidden_dropout_prob
        if not self.embed_tokens.weight.is_meta:
            self.init_weights()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        cache_position=None,
        output_hidden_states=False,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale  # (B, T, C)
        B, T, _ = inputs_embeds.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache

        cache = past_key_values
        if isinstance(cache, (tuple, list)):
            cache = KVCache.from_legacy(cache)
        if self.training and self.config.layerdrop > 0.0 and cache is not None:
            raise ValueError(
                "layerdrop skips layers at random in training, so a skipped layer would have no "
                "keys/values: train without past_key_values (or set layerdrop to 0)"
            )
        if cache is None and use_cache and not (self.training and self.config.layerdrop > 0.0):
            cache = KVCache(self.config.num_hidden_layers)
        static = isinstance(cache, StaticKVCache)
        past = 0 if (cache is None or static) else cache.get_seq_length()

        if static or (attention_mask is not None and attention_mask.dim() == 4):
            # The caller (generation engine) owns slots: it passes positions and a 4-D bool mask.
            if position_ids is None or attention_mask is None:
                raise ValueError("a StaticKVCache or 4-D attention_mask needs explicit position_ids and mask")
            mask = attention_mask
        else:
            mask = build_attention_mask(attention_mask, B, T, past, inputs_embeds.device)
            if position_ids is None:
                if attention_mask is None:
                    position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None].expand(B, T)
                else:
                    position_ids = positions_from_mask(attention_mask, past, T)
        max_pos = self.config.max_position_embeddings
        # Reading the max back is a device sync, which a CUDA-graph capture or torch.compile cannot
        # contain; the generation engine validates every prompt + budget up front instead.
        capturing = torch.compiler.is_compiling() or (position_ids.is_cuda and torch.cuda.is_current_stream_capturing())
        if not capturing and position_ids.numel() and int(position_ids.max()) >= max_pos:
            raise InputTooLongError(
                f"input reaches position {int(position_ids.max())} but this model has "
                f"max_position_embeddings={max_pos}: truncate or window the text to at most {max_pos} "
                "tokens (prompt plus generated tokens)"
            )

        x = inputs_embeds + self.embed_positions(position_ids + POSITION_OFFSET)  # (B, T, C)
        x = F.dropout(x, self.dropout, self.training)
        hidden_states: list[torch.Tensor] | None = [x] if output_hidden_states else None
        layerdrop = self.config.layerdrop if self.training else 0.0
        for layer in self.layers:
            # LayerDrop (Fan et al., 2019), as fairseq and transformers' BioGPT: in training, each layer
            # is skipped with probability `layerdrop` (one torch.rand([]) draw per layer, in layer order,
            # so a seeded run skips the same layers as transformers'). Its output is then the input.
            if layerdrop > 0.0 and torch.rand([]) < layerdrop:
                if hidden_states is not None:
                    hidden_states.append(x)
                continue
            x = layer(x, mask, cache, cache_position)
            if hidden_states is not None:
                hidden_states.append(x)
        x = self.layer_norm(x)
        return BaseModelOutput(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(hidden_states) if hidden_states else None,
        )


class BioGptForCausalLM(BioGptPreTrainedModel):
    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.biogpt = BioGptModel(config)
        self.output_projection = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.output_projection.weight = self.biogpt.embed_tokens.weight

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        cache_position=None,
        output_hidden_states=False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        out = self.biogpt(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache,
            cache_position,
            output_hidden_states,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.output_projection(h)  # (B, T, V)
        loss = None
        if labels is not None:
            # Next-token loss: position t predicts labels[t + 1]; -100 is ignored (HF convention).
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutput(
            logits=logits, loss=loss, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Batched greedy / beam / sampled generation; see :func:`biogpt.generation.generate`."""
        from .generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


class BioGptForTokenClassification(BioGptPreTrainedModel):
    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.biogpt = BioGptModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        if not self.classifier.weight.is_meta:
            nn.init.normal_(self.classifier.weight, 0.0, config.initializer_range)
            nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=False,
        output_hidden_states=False,
        token_type_ids=None,
    ) -> TokenClassifierOutput:
        out = self.biogpt(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache,
            None,
            output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if attention_mask is not None:  # padding never counts, whatever its label says
                labels = labels.masked_fill(attention_mask.to(logits.device) == 0, -100)
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)
        return TokenClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class BioGptForSequenceClassification(BioGptPreTrainedModel):
    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.biogpt = BioGptModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        if not self.score.weight.is_meta:
            nn.init.normal_(self.score.weight, 0.0, config.initializer_range)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=False,
    ) -> SequenceClassifierOutput:
        out = self.biogpt(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache,
            None,
            output_hidden_states,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B, T = logits.shape[:2]
        if input_ids is not None and self.config.pad_token_id is not None:
            # Rightmost non-pad token, so left and right padding both pool the last real token.
            not_pad = (input_ids != self.config.pad_token_id).to(logits.device, torch.int32)
            last = (torch.arange(T, device=logits.device, dtype=torch.int32) * not_pad).argmax(-1)
        else:
            last = torch.full((B,), T - 1, device=logits.device)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self._loss(pooled, labels.to(logits.device))
        return SequenceClassifierOutput(
            logits=pooled, loss=loss, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )

    def _loss(self, pooled, labels):
        kind = self.config.problem_type
        if kind is None:
            if self.num_labels == 1:
                kind = "regression"
            elif labels.dtype in (torch.long, torch.int):
                kind = "single_label_classification"
            else:
                kind = "multi_label_classification"
        if kind == "regression":
            return (
                F.mse_loss(pooled.squeeze(-1), labels.squeeze(-1).to(pooled.dtype))
                if self.num_labels == 1
                else F.mse_loss(pooled, labels.to(pooled.dtype))
            )
        if kind == "single_label_classification":
            return F.cross_entropy(pooled.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))
