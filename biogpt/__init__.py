"""biogpt: a from-scratch PyTorch BioGPT that loads the released checkpoints and matches transformers.

    from biogpt import BioGptForCausalLM, BioGptTokenizer
    tok = BioGptTokenizer.from_pretrained("models/biogpt")
    model = BioGptForCausalLM.from_pretrained("models/biogpt", dtype="bfloat16")
    out = model.generate(**tok(["COVID-19 is"], return_tensors="pt"), max_new_tokens=32)
"""

from .config import BioGptConfig
from .errors import BioMineError, CheckpointError, ConfigError, InputTooLongError, TokenizerError
from .model import (
    BioGptForCausalLM,
    BioGptForSequenceClassification,
    BioGptForTokenClassification,
    BioGptModel,
    KVCache,
    StaticKVCache,
)

__all__ = [
    "BioGptConfig", "BioGptModel", "BioGptForCausalLM", "BioGptForTokenClassification",
    "BioGptForSequenceClassification", "BioGptTokenizer", "KVCache", "StaticKVCache",
    "BioMineError", "CheckpointError", "ConfigError", "InputTooLongError", "TokenizerError",
]


def __getattr__(name):
    # The tokenizer pulls in sacremoses/fastBPE; import it only when asked for.
    if name == "BioGptTokenizer":
        from .tokenizer import BioGptTokenizer

        return BioGptTokenizer
    raise AttributeError(name)
