"""biogpt: a from-scratch PyTorch BioGPT that loads the released checkpoints and matches transformers.

    from biogpt import BioGptForCausalLM, BioGptTokenizer
    tok = BioGptTokenizer.from_pretrained("models/biogpt")
    model = BioGptForCausalLM.from_pretrained("models/biogpt", dtype="bfloat16")
    out = model.generate(**tok(["COVID-19 is"], return_tensors="pt"), max_new_tokens=32)

Names are imported lazily, so ``import biogpt.errors`` (the CLI does) does not pull in torch.
"""

from importlib import import_module

_EXPORTS = {
    "BioGptConfig": "config",
    "BioGptModel": "model",
    "BioGptForCausalLM": "model",
    "BioGptForTokenClassification": "model",
    "BioGptForSequenceClassification": "model",
    "KVCache": "model",
    "StaticKVCache": "model",
    "BioGptTokenizer": "tokenizer",
    "generate": "generation",
    "Engine": "engine",
    "BioMineError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "InputTooLongError": "errors",
    "TokenizerError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'biogpt' has no attribute {name!r}")


def __dir__():
    return __all__
