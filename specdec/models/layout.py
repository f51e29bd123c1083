"""Where the decoder stack, final norm and LM head live in each supported HF model.

Text LMs (Llama, Qwen2, SmolLM2) keep them at ``model.model.layers`` /
``model.model.norm``; VLM wrappers nest a language model inside
(``language_model`` for Qwen2-VL and LLaVA, ``text_model`` for Idefics3/SmolVLM).
One function answers the question for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class DecoderLayout:
    layers: nn.ModuleList  # decoder layers, input to output
    final_norm: nn.Module  # norm applied before the LM head
    lm_head: nn.Module  # hidden -> vocabulary logits
    hidden_size: int
    vocab_size: int


_LANGUAGE_MODEL_ATTRS = ("language_model", "text_model")


def text_decoder(model: nn.Module) -> nn.Module:
    """Return the module that owns ``layers`` and ``norm``."""
    candidates = [getattr(model, "model", None), model]
    for root in list(candidates):
        if root is None:
            continue
        for attr in _LANGUAGE_MODEL_ATTRS:
            inner = getattr(root, attr, None)
            if inner is not None:
                candidates.insert(0, getattr(inner, "model", inner))
    for cand in candidates:
        if cand is not None and isinstance(getattr(cand, "layers", None), nn.ModuleList) and hasattr(cand, "norm"):
            return cand
    raise TypeError(f"unsupported model class {type(model).__name__}: cannot find its decoder layers and final norm")


def decoder_layout(model: nn.Module) -> DecoderLayout:
    decoder = text_decoder(model)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        raise TypeError(f"{type(model).__name__} has no LM head")
    hidden_size, = lm_head.weight.shape[1:]
    return DecoderLayout(
        layers=decoder.layers,
        final_norm=decoder.norm,
        lm_head=lm_head,
        hidden_size=int(hidden_size),
        vocab_size=int(lm_head.weight.shape[0]),
    )
