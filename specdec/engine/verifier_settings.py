"""What one verifier grants and how it schedules work, as one table of settings.

Kept apart from the verifier (no torch here) so the ROS bridge and ``verifier_server`` can build
their parameters and command-line flags from it without loading a model stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import check_positive, setting as _setting


@dataclass
class VerifierSettings:
    """What one verifier grants and how it schedules work; ``verifier_server --<name-with-dashes>``
    and the bridge node's parameters set each (one table, :func:`dataclasses.fields`). Per-robot
    session caps and byte / pixel caps of what arrives over the network are the server's
    (``specdec.transport.websocket.ServerLimits``): they guard the link before anything is decoded."""

    session_timeout_s: float = _setting(60.0, "a session idle this long is closed (duplicates are not activity)")
    linger_s: float = _setting(30.0, "a closed session still answers duplicate blocks this long")
    max_sessions: int = _setting(64, "open sessions, all robots")
    max_gamma: int = _setting(64, "longest draft block accepted")
    max_branches: int = _setting(16, "a greedy block's alternatives verified as branches of its pass, at most "
                                     "(the draft's likeliest; 0: none; only when the block's pass is its own)")
    max_new_tokens_limit: int = _setting(4096, "largest max_new_tokens accepted")
    max_prompt_tokens: int = _setting(8192, "longest encoded prompt (image tokens included)")
    max_prefill_wait_ms: float = _setting(1000.0, "longest a prefill waits for block 0 (merge_first_block)")
    decode_chunk: int = _setting(8, "cloud-only tokens per turn when a session is alone (batched: "
                                   "until another robot's message waits)")
    prefill_chunk: int = _setting(0, "prompt tokens per prefill pass, one pass per turn (0: the whole prompt)")
    max_batch: int = _setting(8, "sessions verified (or decoded) in one batched forward pass; 1 = serialized")
    batch_window_ms: float = _setting(0.0, "a batch that is not full waits this long for more blocks (0: none)")
    max_prefill_batch: int = _setting(0, "whole prefills of several robots in one pass, at most this many "
                                         "(0: max_batch; 1: each prefill alone)")
    mix_prefills: int = _setting(1, "whole prefills ride in the batched pass of other robots' rounds and steps (1) "
                                    "or run in passes of their own (0)")

    @property
    def prefill_batch_limit(self) -> int:
        return min(self.max_batch, self.max_prefill_batch or self.max_batch)

    def check(self) -> "VerifierSettings":
        return check_positive(self, "verifier setting",
                              may_be_zero=("max_branches", "batch_window_ms", "prefill_chunk", "max_prefill_batch", "mix_prefills"))
