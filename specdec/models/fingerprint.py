"""Fingerprints that let two sides check they hold matching models.

* ``tokenizer_fingerprint``: draft and target (edge and cloud) must tokenize
  identically, or speculative decoding is meaningless. Hashes the vocabulary,
  the added/special tokens and the chat template.
* ``model_fingerprint``: names one set of weights, so early-exit adapters
  trained for one target are refused on another, even of the same shape.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    payload = {
        "vocab": sorted(vocab.items(), key=lambda kv: kv[1]),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "added": sorted(str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()),
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the decoder's shape and a sample of the weights.

    Only structural facts go in (not the config dict, whose paths, dtype and library version
    change when the same weights are saved and loaded again).
    """
    from .layout import decoder_layout

    layout = decoder_layout(model)
    shape = {
        "model_type": getattr(getattr(model, "config", None), "model_type", type(model).__name__),
        "layers": len(layout.layers),
        "hidden_size": layout.hidden_size,
        "vocab_size": layout.vocab_size,
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    with torch.no_grad():
        samples = [
            layout.lm_head.weight[:16].float().flatten(),
            layout.final_norm.weight.float().flatten()[:256],
            next(layout.layers[0].parameters()).float().flatten()[:256],
        ]
        for tensor in samples:
            # hashed as bfloat16 bits, so fp32 and bf16 copies of the same weights agree
            digest.update(tensor.cpu().to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()
