"""Speculative decoding engine: edge drafter, cloud verifier, acceptance rules, stats."""

from .drafter import CloudError, DecodeConfig, DecodeResult, EdgeDecoder
from .local import LocalSpeculativeDecoder, speculative_generate
from .stats import DecisionStats, RoundStats, VerifierStats
from .verifier import Verifier

__all__ = [
    "CloudError",
    "DecisionStats",
    "DecodeConfig",
    "DecodeResult",
    "EdgeDecoder",
    "LocalSpeculativeDecoder",
    "RoundStats",
    "Verifier",
    "VerifierStats",
    "speculative_generate",
]
