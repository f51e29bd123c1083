"""Edge and cloud in one process: speculative decoding through the in-process transport.

    from specdec.engine.local import speculative_generate
    result = speculative_generate(draft, target, "go to the door", max_new_tokens=32)
    result.tokens, result.text, result.stats.acceptance_rate

``draft``/``target`` are :class:`~specdec.models.adapters.ModelAdapter` objects, or
``(hf_model, tokenizer_or_processor)`` tuples, or HF models with ``tokenizer=``.
For many prompts keep one :class:`LocalSpeculativeDecoder` open (one verifier
thread, adapters wrapped once).
"""

from __future__ import annotations

from typing import Optional

from ..models.adapters import ModelAdapter, check_pair, wrap_model
from ..models.images import ImageLike
from ..protocol import DecodingMode
from ..transport.inprocess import InProcessTransport
from .drafter import DecodeResult, EdgeDecoder
from .verifier import Verifier


class LocalSpeculativeDecoder:
    """A draft (edge) and a target (cloud verifier thread) joined by an in-process link."""

    def __init__(self, draft, target, *, exit_heads=None, exit_layer: Optional[int] = None, tokenizer=None,
                 latency_s: float = 0.0, verifier_kwargs: Optional[dict] = None, **decode_config):
        self.draft: ModelAdapter = wrap_model(draft, tokenizer)
        self.target: ModelAdapter = wrap_model(target, tokenizer)
        check_pair(self.draft, self.target)
        self.verifier = Verifier(self.target, exit_heads, exit_layer=exit_layer, **(verifier_kwargs or {}))
        self.transport = InProcessTransport(self.verifier, latency_s=latency_s)
        # stop where the target's own generate() stops (its eos ids), unless told otherwise
        decode_config.setdefault("stop_token_ids", list(self.target.eos_token_ids))
        self.edge = EdgeDecoder(self.draft, self.transport, **decode_config)

    def generate(self, prompt: str, image: ImageLike = None,
                 mode: DecodingMode = DecodingMode.SPECULATIVE_EARLY_EXIT, **overrides) -> DecodeResult:
        """Decode one prompt; ``overrides``: gamma, max_new_tokens, do_sample, temperature, top_k, seed, ..."""
        return self.edge.decode(prompt, image, mode, **overrides)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def speculative_generate(
    draft,
    target,
    prompt: str,
    image: ImageLike = None,
    *,
    mode: DecodingMode = DecodingMode.SPECULATIVE_EARLY_EXIT,
    gamma: int = 4,
    max_new_tokens: int = 32,
    exit_heads=None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    **kwargs,
) -> DecodeResult:
    """One speculative decode, edge and cloud in-process. ``kwargs``: ``tokenizer``,
    ``exit_layer``, ``latency_s``, ``stop_token_ids``, ``draft_top_k``, ``timeout_s``, ..."""
    with LocalSpeculativeDecoder(draft, target, exit_heads=exit_heads, gamma=gamma, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, temperature=temperature, top_k=top_k, seed=seed,
                                 **kwargs) as runner:
        return runner.generate(prompt, image, mode)
