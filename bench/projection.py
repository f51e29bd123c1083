"""STATIC FORMULA (a cross-check, not a measurement): decision latency from a profile's costs.

The emulated runs (:mod:`bench.emulation`) are the benchmark's numbers; this closed form is kept
next to them to show what a formula sees and misses (it cannot see queueing, overheads, or what
overlaps with what beyond the terms below), and to extend the map of where each side wins along
an axis the emulation cannot vary: the draft's acceptance rate. Costs come from the profile's
ForwardCost at the stand-in's prompt shape (``prompt_tokens``, ``image_tokens``):

  t_e = edge pass of 1 token, t_c = cloud pass of 1 token, v = cloud pass of gamma + 1 tokens,
  P_e / P_c = edge / cloud prefill, N tokens per decision, R = N / tokens_per_round rounds

  cloud-only      RTT + P_c + N t_c
  edge-only       P_e + N t_e
  speculative     max(P_e + gamma t_e, P_c) + RTT + v + (R - 1)(gamma t_e + RTT + v)
  + pre-drafting  minus h min(gamma t_e, (1 - f) v + RTT / 2) for each of the R - 1 later rounds
                  (h = pre-draft hit rate, f = exit-layer depth fraction)

With acceptance a per drafted token, a block of gamma commits (1 - a^(gamma+1)) / (1 - a) tokens.
"""

from __future__ import annotations

from typing import Dict

MODES = ("cloud_only", "edge_only", "speculative", "spec_early_exit")


def tokens_per_round(acceptance: float, gamma: int) -> float:
    if acceptance >= 1.0:
        return gamma + 1.0
    return (1 - acceptance ** (gamma + 1)) / (1 - acceptance)


def latency_ms(mode: str, pair, rtt_ms: float, new_tokens: float, prompt_tokens: int, image_tokens: int, gamma: int,
               tokens_round: float, hit_rate: float = 0.0, exit_fraction: float = 0.5) -> float:
    edge, cloud = pair.edge.forward, pair.cloud.forward
    t_e, t_c = edge.ms(1, prompt_tokens), cloud.ms(1, prompt_tokens)
    verify = cloud.ms(gamma + 1, prompt_tokens)
    pre_e, pre_c = edge.ms(prompt_tokens, 0, image_tokens), cloud.ms(prompt_tokens, 0, image_tokens)
    if mode == "cloud_only":
        return rtt_ms + pre_c + new_tokens * t_c
    if mode == "edge_only":
        return pre_e + new_tokens * t_e
    rounds = max(1.0, new_tokens / max(tokens_round, 1e-6))
    later = gamma * t_e + rtt_ms + verify
    if mode == "spec_early_exit":
        later -= hit_rate * min(gamma * t_e, (1 - exit_fraction) * verify + rtt_ms / 2)
    return max(pre_e + gamma * t_e, pre_c) + rtt_ms + verify + (rounds - 1) * later


def all_modes(pair, rtt_ms: float, **shape) -> Dict[str, float]:
    return {mode: latency_ms(mode, pair, rtt_ms, **shape) for mode in MODES}
