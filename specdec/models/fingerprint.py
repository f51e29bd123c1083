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
    """sha256 over the config's shape fields and a sample of the weights."""
    from .layout import decoder_layout

    config = getattr(model, "config", None)
    shape = config.to_dict() if config is not None else {}
    keep = {k: shape[k] for k in sorted(shape) if isinstance(shape[k], (int, str, float, bool))}
    digest = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
    layout = decoder_layout(model)
    with torch.no_grad():
        samples = [
            layout.lm_head.weight[:16].float().flatten(),
            layout.final_norm.weight.float().flatten()[:256],
            next(layout.layers[0].parameters()).float().flatten()[:256],
        ]
        for tensor in samples:
            # round so the same weights in another dtype/device give the same answer
            digest.update(torch.round(tensor.cpu() * 1e4).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()
