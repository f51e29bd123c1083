#!/usr/bin/env python3
"""Does a compiled decode step pay on the overhead-bound Go2 models? (issue 13, item 2)

``torch.compile(dynamic=True)`` of the language-model stack (``model.language_model``: decoder
layers and final norm; the vision tower and M-RoPE bookkeeping stay eager) of the committed Go2
target and draft, measured side by side in one process, one torch thread:

1. cloud work of one decision (image prefill + a 3-token verify) on 30 benchmark frames, eager
   and compiled taking turns frame by frame (the compiled function and the eager method are both
   kept, so the only difference is the call);
2. whole speculative decisions in process (``LocalSpeculativeDecoder``, gamma 4, early-exit hints
   from every exit layer) before and after compiling both models: time per decision, hints sent
   and hints right, and whether the tokens are the same;
3. with ``--text``: a SmolLM2-135M decode step and a 5-token verify (memory-bound; about 3 min of
   compiling), the small-batch kernel registered as a torch custom op for the compiled graph.

    python scripts/experiments/compiled_step.py [--text]

2026-12-04, 2-core Intel Xeon (AMX), torch 2.13.0+cpu: (1) eager 5.24 ms, compiled 4.05 ms
(0.773x), 9 s of compiling, logits within 2.5e-5 (a first prototype: the whole base model compiled
4.8 ms against 5.7, each decoder layer alone 5.9 ms); (2) eager 29.8-31.3 ms per decision, compiled
1211 ms on the first pass (compiling and recompiling) and 33.5 ms on the second: slower, since the
rest of a decision is the engine, the draft and the thread hand-offs, and dynamo hits its recompile
limit (8) on the engine's passes (hook sets, cache objects), after which those frames run eager
behind a guard check. Same tokens; hints 35 sent / 20 right on the first compiled pass, 37 / 21 on
the second and eager (a run with the target warmed up by hand first: 30 / 15 - the exit hooks
attached around each verification pass are traced, broken on and re-guarded, not reliably run as
eager runs them); (3) text, the small-batch kernel a custom op: decode step 52.5 -> 49.1 ms,
5-token verify 64.8 -> 56.9 ms after 95 s of compiling (a first run, compiled over a generation
loop whose shapes kept changing: 52.7 -> 53.6 and 64.9 -> 70.0 ms after 191 s; without the custom
op the graph breaks at each linear layer and a decode step went 50.9 -> 71.6 ms), so a compiled
step could take 6-12 % off the text target's passes once the engine's recompiles and hooks are
tamed - a gain about the size of this VM's drift between runs, not yet measured in section 5's
side-by-side bench. Not shipped: on the Go2 pair the cloud's forward passes get 23 % cheaper but a
whole decision does not, compiling costs seconds to minutes per process, and progressive hints would
need the graph split at every exit layer (per-layer compiling is slower than eager here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.workloads import go2_workload  # noqa: E402
from specdec.engine.local import LocalSpeculativeDecoder  # noqa: E402
from specdec.models.early_exit import EarlyExitHeads  # noqa: E402
from specdec.models.loading import load_model  # noqa: E402


def stack(adapter) -> torch.nn.Module:
    """The language-model stack: a VLM's ``language_model``, else the base model."""
    return getattr(adapter._decoder, "language_model", None) or adapter._decoder


def cloud_work(target, inputs, compiled_fn, eager_fn, rounds: int = 5) -> None:
    lm = stack(target)

    def decision(inp):
        state = target.prefill(inp)
        return target.forward(state, [inp.input_ids[-1], 20, 21], keep=3)

    times = {"eager": [], "compiled": []}
    reference, worst = {}, 0.0
    t0 = time.perf_counter()
    lm.forward = compiled_fn
    for i, inp in enumerate(inputs):  # first use: compiles
        out = decision(inp)
        lm.forward = eager_fn
        reference[i] = decision(inp)
        worst = max(worst, float((out - reference[i]).abs().max()))
        lm.forward = compiled_fn
    print(f"cloud work: first pass over {len(inputs)} frames (compiling) {time.perf_counter() - t0:.1f} s, "
          f"max |compiled - eager| logit {worst:.2e}")
    for _ in range(rounds):
        for inp in inputs:
            for name, fn in (("eager", eager_fn), ("compiled", compiled_fn)):
                lm.forward = fn
                t0 = time.perf_counter()
                decision(inp)
                times[name].append(time.perf_counter() - t0)
    lm.forward = eager_fn
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    print(f"cloud work per decision (median of {len(times['eager'])}): eager {med['eager']:.2f} ms, "
          f"compiled {med['compiled']:.2f} ms ({med['compiled'] / med['eager']:.3f}x)")


def decisions(draft, target, heads, items, tag: str):
    results, t0 = [], time.perf_counter()
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=4, max_new_tokens=4) as dec:
        for prompt, image in items:
            results.append(dec.generate(prompt, image))
    ms = (time.perf_counter() - t0) / len(results) * 1000
    hints = sum(r.stats.hints for r in results)
    right = sum(r.stats.hints_correct for r in results)
    print(f"{tag:9s} {ms:7.2f} ms per decision, hints sent {hints}, right {right}")
    return [r.tokens for r in results]


def register_small_batch_op() -> None:
    """Under compile, the small-batch kernel as a torch custom op (one graph, no break per layer)."""
    from specdec.models import kernels

    lib = kernels.small_batch_library()
    if lib is None:
        return

    @torch.library.custom_op("specdec_experiment::small_batch_linear", mutates_args=())
    def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        rows = x.numel() // weight.shape[1]
        flat = x.reshape(rows, weight.shape[1]).contiguous()
        out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32)
        lib.small_batch_linear(flat.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
                               out.data_ptr(), rows, weight.shape[1], weight.shape[0], torch.get_num_threads())
        return out

    @small_batch_linear.register_fake
    def _(x, weight, bias):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    eager = kernels.SmallBatchLinear.forward

    def forward(self, x):
        if torch.compiler.is_compiling() and x.dtype == self.weight.dtype == torch.float32:
            return small_batch_linear(x, self.weight, self.bias)
        return eager(self, x)

    kernels.SmallBatchLinear.forward = forward


def text(repeats: int = 7) -> None:
    register_small_batch_op()
    target = load_model(os.path.join(ROOT, ".cache", "models", "smollm2-135m-instruct"))
    state = target.prefill(target.encode("Explain why the sky is blue."))
    length = state.length

    def step_ms(k):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            target.forward(state, [100] * k, keep=k)
            ts.append(time.perf_counter() - t0)
            target.truncate(state, length)
        return sorted(ts)[repeats // 2] * 1000

    eager = {k: step_ms(k) for k in (1, 5)}
    lm = stack(target)
    lm.forward = torch.compile(lm.forward, dynamic=True)
    t0 = time.perf_counter()
    for k in (1, 5, 1, 5):
        step_ms(k)
    print(f"text: compiling {time.perf_counter() - t0:.0f} s")
    for k in (1, 5):
        print(f"text {k}-token pass: eager {eager[k]:.1f} ms, compiled {step_ms(k):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--text", action="store_true", help="also the SmolLM2 text target (slow to compile)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = go2_workload(args.frames, 4)
    draft, target = load_model(work.draft, name="draft"), load_model(work.target, name="target")
    heads = EarlyExitHeads.load(target.model, work.exits)
    inputs = [target.encode(p, img) for p, img in work.items]
    for tag in ("eager", "eager"):
        eager_tokens = decisions(draft, target, heads, work.items, tag)
    eager_fn = stack(target).forward
    compiled_fn = torch.compile(eager_fn, dynamic=True)
    with torch.inference_mode():
        cloud_work(target, inputs, compiled_fn, eager_fn)
    stack(target).forward = compiled_fn
    stack(draft).forward = torch.compile(stack(draft).forward, dynamic=True)
    for tag in ("compiled", "compiled"):
        compiled_tokens = decisions(draft, target, heads, work.items, tag)
    print("same tokens as eager:", compiled_tokens == eager_tokens)
    if args.text:
        text()


if __name__ == "__main__":
    main()
