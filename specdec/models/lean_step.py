"""A lean forward pass for decode and verification steps: the same arithmetic as transformers'
decoder stack, without its per-pass bookkeeping.

A step feeds 1-16 tokens after a KV cache. On small models most of its time is not arithmetic:
transformers' decoder builds a mask object, routes keyword arguments through output-capturing
wrappers, dispatches the attention interface and calls a dozen modules per layer (the Go2 models
spend 82-92 % of a forward outside matrix products). The lean step runs the same operations in
the same order - the model's own norms, projections, rotary table, cache update and SDPA function,
and the boolean causal mask transformers would build - so its hidden states are equal bit for bit
to the model's own (``test/core/test_lean_step.py`` checks ``torch.equal`` for every supported
family, for decode steps, verification blocks, after rollbacks, under exit hooks and inside
``model.generate``). Speculative decoding stays lossless because nothing numerical changes.

:func:`install` puts the step on the model object itself, as :mod:`.kernels` does with its linear
layout, so every mode that runs the model - our verifier and draft, the target alone, transformers'
``generate`` and assisted generation - gets it and ratios stay honest. A pass takes the lean path
only when it is a plain step: inference (no gradients), one sequence, a non-empty
:class:`~transformers.DynamicCache`, token ids or embeddings, no padding, no requested attentions
or hidden states, and no hooks but plain forward hooks on decoder layers (the early-exit heads'),
which the step calls itself after each layer as ``nn.Module`` would. Everything else - prefills,
batched and masked passes, training - runs the model's own forward. Supported: Llama (SmolLM2,
Idefics3's text model), Qwen2 and Qwen2-VL / Qwen2.5-VL text stacks with full attention and SDPA.
``SPECDEC_LEAN_STEP=0`` switches it off; ``python scripts/experiments/lean_step.py`` times it.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .layout import text_decoder

# decoder layers whose forward is: x + attn(norm(x)), then x + mlp(norm(x)), with RoPE applied to
# q and k as q * cos + rotate_half(q) * sin (transformers 5.x)
SUPPORTED_LAYERS = frozenset({"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen2VLDecoderLayer",
                              "Qwen2_5_VLDecoderLayer"})
PLAIN_KWARGS = frozenset({"use_cache", "cache_position", "return_dict", "output_attentions", "output_hidden_states"})


def supported(decoder: nn.Module) -> Optional[str]:
    """None if the lean step can run ``decoder`` (a text decoder stack), else why not."""
    config = getattr(decoder, "config", None)
    layers = getattr(decoder, "layers", None)
    if config is None or layers is None or not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "embed_tokens"):
        return "not a decoder stack with embed_tokens, rotary_emb, layers and norm"
    kinds = {type(layer).__name__ for layer in layers}
    if not kinds <= SUPPORTED_LAYERS:
        return f"decoder layers {sorted(kinds - SUPPORTED_LAYERS)} are not supported"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(config, '_attn_implementation', None)!r} (the lean step uses SDPA)"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    if len(layers) != getattr(config, "num_hidden_layers", len(layers)):
        return "a decoder that runs a subset of its layers"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanStep:
    """The lean forward of one decoder stack (see the module docstring); call it as the stack."""

    def __init__(self, decoder: nn.Module):
        from transformers import DynamicCache
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self.decoder = decoder
        self.original = type(decoder).forward.__get__(decoder)  # the model's own forward
        self.mrope = hasattr(decoder.rotary_emb, "mrope_section")  # Qwen2-VL: positions [3, batch, n]
        self._cache_type = DynamicCache
        self._attention = sdpa_attention_forward
        self.lean_passes = 0  # passes that took the lean path (tests and benchmarks read it)

    def _plain(self, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, kwargs) -> bool:
        """Whether this call is a plain decode/verification step the lean path reproduces."""
        config = self.decoder.config
        if torch.is_grad_enabled() or self.decoder.training or type(past_key_values) is not self._cache_type:
            return False
        if config._attn_implementation != "sdpa" or len(self.decoder.layers) != config.num_hidden_layers:
            return False  # changed since it was installed
        if not kwargs.keys() <= PLAIN_KWARGS or kwargs.get("use_cache") is False \
                or kwargs.get("return_dict") is False:
            return False
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states") \
                or getattr(config, "output_attentions", False) or getattr(config, "output_hidden_states", False):
            return False
        rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if rows != 1 or (input_ids is None) == (inputs_embeds is None) or past_key_values.get_seq_length() == 0:
            return False
        if attention_mask is not None and (attention_mask.dim() != 2 or not bool(attention_mask.all())):
            return False
        if position_ids is not None and self.mrope and position_ids.dim() == 3 and position_ids.shape[0] == 4:
            # text positions in front of M-RoPE's three (transformers' generate): transformers builds
            # its mask from them, which is the plain causal one unless they restart (packed sequences)
            text = position_ids[0, 0]
            if text.numel() > 1 and not bool((text[1:] - text[:-1] == 1).all()):
                return False
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        return all(not layer._forward_pre_hooks and not layer._forward_hooks_with_kwargs
                   for layer in self.decoder.layers)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 inputs_embeds=None, **kwargs):
        if not self._plain(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, kwargs):
            return self.original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs)
        from transformers.modeling_outputs import BaseModelOutputWithPast

        self.lean_passes += 1
        decoder, cache = self.decoder, past_key_values
        hidden = decoder.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        count, past = hidden.shape[1], cache.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(past, past + count, device=hidden.device).view(1, -1)
        if self.mrope and position_ids.dim() == 2:  # one text position for all three parts
            position_ids = position_ids[None].expand(3, 1, -1)
        elif self.mrope and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        cos, sin = decoder.rotary_emb(hidden, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # transformers' SDPA mask: none for one query (every key is visible), else key j visible
        # to query i when j <= past + i, as a boolean [1, 1, count, past + count]
        mask = None
        if count > 1:
            keys = torch.arange(past + count, device=hidden.device)
            mask = (keys <= torch.arange(past, past + count, device=hidden.device)[:, None])[None, None]
        for layer in decoder.layers:
            attention, layer_input = layer.self_attn, hidden
            normed = layer.input_layernorm(hidden)
            shape = (1, count, -1, attention.head_dim)
            query = attention.q_proj(normed).view(shape).transpose(1, 2)
            key = attention.k_proj(normed).view(shape).transpose(1, 2)
            value = attention.v_proj(normed).view(shape).transpose(1, 2)
            query = (query * cos) + (_rotate_half(query) * sin)
            key = (key * cos) + (_rotate_half(key) * sin)
            key, value = cache.update(key, value, attention.layer_idx)
            out, _ = self._attention(attention, query, key, value, mask, dropout=0.0, scaling=attention.scaling)
            hidden = hidden + attention.o_proj(out.reshape(1, count, -1).contiguous())
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            for hook in layer._forward_hooks.values():  # as nn.Module.__call__ runs them
                result = hook(layer, (layer_input,), hidden)
                if result is not None:
                    hidden = result
        return BaseModelOutputWithPast(last_hidden_state=decoder.norm(hidden), past_key_values=cache)


def enabled() -> bool:
    return os.environ.get("SPECDEC_LEAN_STEP", "1") != "0"


def install(model: nn.Module) -> Optional[LeanStep]:
    """Give ``model``'s text decoder the lean step (see the module docstring); returns it, or None
    where the model is not supported or ``SPECDEC_LEAN_STEP=0``. Installing twice is harmless."""
    if not enabled():
        return None
    try:
        decoder = text_decoder(model)
    except TypeError:
        return None
    present = decoder.__dict__.get("forward")
    if supported(decoder) is not None:
        if isinstance(present, LeanStep):  # a copy of a model that had it, changed since
            del decoder.forward
        return None
    if isinstance(present, LeanStep) and present.decoder is decoder:
        return present
    step = LeanStep(decoder)
    decoder.forward = step  # nn.Module.__call__ calls self.forward: the instance attribute wins
    return step


def uninstall(model: nn.Module) -> None:
    """Back to the model's own forward."""
    try:
        decoder = text_decoder(model)
    except TypeError:
        return None
    if isinstance(decoder.__dict__.get("forward"), LeanStep):
        del decoder.forward
    return None
