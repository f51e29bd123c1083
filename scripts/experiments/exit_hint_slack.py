#!/usr/bin/env python3
"""Does an early-exit pass eat its emulated slack? One batched pass of two prompts, each with its
block 0, on an emulated cloud profile, with and without the text exit heads; prints the pass's
real / emulated time (the compute clock's worst pass). Pinned to core 1, one torch thread, like
the benchmark's cloud.

    source scripts/env.sh
    python -m bench.run --fleet-only --fleet 2 --fleet-think-s 0 --workloads text \
        --profiles paper-text-nano-a100 --fleet-verifiers batched --out /tmp/fleetcheck
    python scripts/experiments/exit_hint_slack.py /tmp/fleetcheck/emulated-paper-text-nano-a100-fleet-x*.yaml
"""
import os
import sys

import torch
from bench.workloads import text_workload
from specdec.engine.verifier import Verifier
from specdec.engine.verifier_settings import VerifierSettings
from specdec.models.compute_profile import ComputeClock, ProfilePair
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.loading import load_model
from specdec.protocol import DecodingMode, DraftBlock, SessionStart

os.sched_setaffinity(0, {1} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
torch.set_num_threads(1)
w = text_workload(2, 16)
target = load_model(w.target, name="cloud")
pair = ProfilePair.load(sys.argv[1])
for exits in (False, True, False, True):
    heads = EarlyExitHeads.load(target.model, w.exits) if exits else None
    clock = ComputeClock(pair.cloud)
    target.use_clock(clock)
    v = Verifier(target, heads, settings=VerifierSettings(max_batch=8))
    out = []
    mode = int(DecodingMode.SPECULATIVE_EARLY_EXIT if exits else DecodingMode.SPECULATIVE)
    starts = [SessionStart(session_id=f"s{i}", robot_id=f"r{i}", prompt=p, tokenizer_fingerprint=target.fingerprint,
                           max_new_tokens=16, gamma=4, mode=mode, prefill_wait_ms=5000) for i, (p, _) in enumerate(w.items)]
    for s in starts:
        v.admit(s, out.append)
    for s in starts:
        v.admit(DraftBlock(session_id=s.session_id, seq=1, round=0, position=0, tokens=[5, 6, 7, 8]), out.append)
    while v.run_next(out.append):
        pass
    wp = clock.summary()["worst_pass"]
    print(f"exits={exits} passes={clock.passes} worst: rows {wp.get('rows')} new {wp.get('new_tokens')} real {wp.get('real_ms', 0):.0f} ms "
          f"emulated {wp.get('emulated_ms', 0):.0f} ms ratio {wp.get('real_ms', 0) / max(1e-9, wp.get('emulated_ms', 1)):.2f} hints {sum(type(m).__name__ == 'EarlyExitHint' for m in out)}", flush=True)
    target.use_clock(None)
