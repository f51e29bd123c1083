"""A shared cloud: K robots deciding against one emulated GPU, cloud-only vs speculative.

Each robot is a thread of this process with its own WebSocket connection (its own robot id and
token) through the link emulator to ONE ``verifier_server`` that emulates the profile's GPU. The
robots share the draft model's weights and the edge compute clock (each thread's passes take the
edge device's time: every robot has its own Jetson). A Go2 robot decides, then moves: it waits
the Go2's mean motion time per decision (from the closed loop, :mod:`bench.time_to_goal`) before
its next decision, and the robots start at random offsets within one such period, so the GPU sees
the arrivals a fleet would make. Text robots decide back to back (the verifier's capacity).

Verifiers, each a set of server flags (:data:`VERIFIERS`), and every row says which it
measured: *serialized* (``--max-batch 1``: one forward pass at a time, the GPU's time is split,
never shared) and *batched* (issue 18: blocks and cloud-only steps of several robots that are
ready within the window go through ONE forward pass, and a new session's whole prompt rides in
that pass too; a batch pays every row's tokens, shares the fixed cost, and each extra row adds the
profile's ``per_extra_row_ms``); *batched-unmixed* batches prompts only with each other
(``--mix-prefills 0``), *batched-steps-only* runs each prefill alone (``--max-prefill-batch 1``),
*batched-chunked* prefills a prompt 32 tokens per pass, alone, with the others' passes between
(``--prefill-chunk 32``): to measure what mixing, batching and chunking the prefills do.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Dict, List

# verifier label -> verifier_server settings (specdec.engine.verifier_settings.VerifierSettings)
VERIFIERS: Dict[str, Dict[str, float]] = {
    "serialized": {"max_batch": 1},
    "batched": {"max_batch": 16, "batch_window_ms": 3.0},
    # prompts batched with each other only, never with the others' rounds and steps (before mix_prefills: an A/B)
    "batched-unmixed": {"max_batch": 16, "batch_window_ms": 3.0, "mix_prefills": 0},
    # rounds and steps batched, each prefill alone (what batching was before prefills batched: an A/B)
    "batched-steps-only": {"max_batch": 16, "batch_window_ms": 3.0, "max_prefill_batch": 1},
    # a prompt longer than 32 tokens is prefilled 32 tokens per pass, alone, other robots' passes between
    # (chunked against mixed: issue 18 asks which schedules prefills better)
    "batched-chunked": {"max_batch": 16, "batch_window_ms": 3.0, "prefill_chunk": 32},
}
DEFAULT_VERIFIERS = ("serialized", "batched")  # make bench; --fleet-verifiers picks others


def mixes(settings: Dict[str, float]) -> bool:
    """Whether a verifier with these flags feeds new prompts in the same pass as other robots' steps
    (read through the verifier's own settings table, defaults included)."""
    from specdec.engine.verifier_settings import VerifierSettings

    verifier = VerifierSettings(**settings)
    return verifier.max_batch > 1 and bool(verifier.mix_prefills) and verifier.prefill_batch_limit > 1


def verifier_flags(settings: Dict[str, float], dilation: float = 1.0) -> List[str]:
    """``settings`` as verifier_server flags; waits (the batch window, the idle-session timeout) are
    dilated too: a robot queued behind a dilated fleet is not idle."""
    from specdec.engine.verifier_settings import VerifierSettings

    settings = dict(settings)
    settings.setdefault("session_timeout_s", VerifierSettings().session_timeout_s)
    flags = []
    for name, value in settings.items():
        waits = name.endswith("_ms") or name == "session_timeout_s"
        flags += ["--" + name.replace("_", "-"), str(value * dilation if waits else value)]
    return flags


def warm_up(decoders, workload) -> None:
    """One untimed decision per robot, all at once (connections open, first-block timing learnt)."""
    from specdec.protocol import DecodingMode

    threads = [threading.Thread(target=d.decode, args=workload.items[0],
                                kwargs={"mode": DecodingMode.SPECULATIVE, "max_new_tokens": 4}, daemon=True)
               for d in decoders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_fleet(decoders, workload, mode: str, decisions: int, think_s: float, gamma: int, seed: int = 0,
              **settings) -> dict:
    """Every robot (one EdgeDecoder each) makes ``decisions`` decisions of ``mode`` on the
    workload's inputs (robot r starts at input r), waiting ``think_s`` after each; returns the
    results in order of completion, the wall time, and any robot's error."""
    from .cells import MODES

    protocol_mode, overrides = MODES[mode]
    rng = random.Random(seed)
    offsets = [rng.uniform(0, think_s) for _ in decoders]
    results, errors = [], []
    lock = threading.Lock()
    items = workload.items

    def robot(index: int, decoder) -> None:
        time.sleep(offsets[index])
        try:
            for d in range(decisions):
                prompt, image = items[(index + d) % len(items)]
                result = decoder.decode(prompt, image, protocol_mode, gamma=gamma,
                                        max_new_tokens=workload.max_new_tokens, **{**settings, **overrides})
                with lock:
                    results.append(result)
                if d + 1 < decisions:
                    time.sleep(think_s)
        except Exception as exc:  # reported, never silent: the row shows it
            with lock:
                errors.append(f"robot {decoder.robot_id}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=robot, args=(i, d), name=f"robot-{i}", daemon=True)
               for i, d in enumerate(decoders)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results, "wall_s": time.perf_counter() - t0, "errors": errors}


def capacity(rows: List[dict], bar_ms: float) -> Dict[str, int]:
    """Per mode: the most robots of the sweep served with a p90 decision latency within ``bar_ms``
    by a valid cell, every smaller fleet of the sweep too (0 when even one robot misses it)."""
    out: Dict[str, int] = {}
    for mode in dict.fromkeys(row["mode"] for row in rows):
        out[mode] = 0
        for row in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["robots"]):
            if not row.get("valid", True) or row.get("errors") or row["latency_ms_p90"] > bar_ms:
                break
            out[mode] = row["robots"]
    return out
