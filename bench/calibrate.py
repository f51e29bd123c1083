"""cpu-self: a compute profile measured from this machine's own forward passes.

    python -m bench.calibrate --workload go2            # -> profiles/cpu-self-go2.yaml

Emulating a profile is only trustworthy if emulating *this* machine reproduces what this
machine really does; this module makes that profile. It times the real draft and target forward
passes of a workload by shape, through the same hooks the emulation uses (a recording clock on
the adapter: a pass starts where :class:`~specdec.models.compute_profile.ComputeClock` starts it
and ends where the engine settles it, LM head and token choice included): each prompt's prefill
(its text and image tokens), then passes of 1 .. gamma+1 new tokens after it, in this process,
one torch thread. The medians are fitted to the profile's cost form
(:class:`~specdec.models.compute_profile.ForwardCost`: linear in new, cached and image tokens,
with a knee where new tokens change rate when that fits clearly better) by least squares on the
*relative* error, non-negative terms only, each kind of pass weighted by how often a decision runs
it (one prefill; many one-token passes; a block pass per round).

The file records how well that form fits each kind of pass (``fit_error``): on this CPU a pass
of k tokens costs far less than k one-token passes while a long prefill costs about a millisecond
per token, which one straight line cannot both follow (the knee is there for that).
bench/run.py emulates this profile next to the real run and reports the difference.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from specdec.models.compute_profile import ForwardCost  # noqa: E402

TERMS = ("fixed_ms", "per_token_ms", "per_cached_token_ms", "per_image_token_ms")


@dataclass
class Pass:
    """One timed forward pass: its shape as the compute clock sees it, and its real duration."""

    kind: str  # "prefill" or "k=<new tokens>"
    new_tokens: int
    cached_tokens: int
    image_tokens: int
    ms: float


class RecordingClock:
    """The ComputeClock interface, recording real durations instead of emulating a device."""

    def __init__(self):
        self.passes: List[Tuple[int, int, int, float]] = []
        self._open = None

    def begin(self, new_tokens: int, cached_tokens: int = 0, image_tokens: int = 0, rows: int = 1) -> None:
        self._open = (new_tokens, cached_tokens, image_tokens, time.perf_counter())

    def hold(self, fraction: float) -> None:
        pass

    def settle(self) -> None:
        if self._open is not None:
            new, cached, image, t0 = self._open
            self.passes.append((new, cached, image, (time.perf_counter() - t0) * 1000))
            self._open = None


def processor_name() -> str:
    """The CPU's model name (for "measured on <cpu>" labels)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_passes(adapter, items, gamma: int, steps: int, repeats: int = 3, exit_heads=None) -> List[Pass]:
    """Time ``adapter``'s passes: per item, the prefill (``repeats`` times), then ``steps`` rounds of
    one pass per block size 1 .. gamma+1 (the cache grows as in a decision). With ``exit_heads``,
    each round adds a verification block with every exit head scoring a row as the pass reaches
    its layer (kind "k=<n>+exits": what a hinted verification costs; not fitted, see calibrate)."""
    import torch

    clock = RecordingClock()
    previous = adapter.clock
    adapter.use_clock(clock)
    out: List[Pass] = []
    try:
        with torch.inference_mode():
            for prompt, image in items:
                inputs = adapter.encode(prompt, image)
                for _ in range(repeats):
                    state = adapter.prefill(inputs)
                    adapter.settle()
                new, cached, img, ms = clock.passes[-1]
                out.extend(Pass("prefill", new, cached, img, p[3]) for p in clock.passes[-repeats:])
                filler = inputs.input_ids[-1]
                for _ in range(steps):
                    for k in range(1, gamma + 2):
                        hidden = adapter.forward_hidden(state, [filler] * k, keep=1)
                        int(torch.argmax(adapter.head_logits(hidden)[0]))
                        adapter.settle()
                        new, cached, img, ms = clock.passes[-1]
                        out.append(Pass(f"k={k}", new, cached, img, ms))
                    if exit_heads is not None:
                        k = gamma + 1
                        # as the verifier's hint: the block's rows, after the cache (an exit that attends reads it)
                        hooks = exit_heads.attach(lambda layer, h: int(torch.argmax(exit_heads.exit_logits(
                            layer, h[0], exit_heads.past(state.cache, layer), k)[0])), hidden=True)
                        try:
                            hidden = adapter.forward_hidden(state, [filler] * k, keep=1)
                            int(torch.argmax(adapter.head_logits(hidden)[0]))
                            adapter.settle()
                        finally:
                            hooks.remove()
                        new, cached, img, ms = clock.passes[-1]
                        out.append(Pass(f"k={k}+exits", new, cached, img, ms))
    finally:
        adapter.use_clock(previous)
    return out


def measured_shapes(passes: Sequence[Pass]) -> Dict[str, List[tuple]]:
    """"prefill", or "repeated" (the passes a decision runs again and again) -> the median
    (new, cached, image, ms, pass kind) of each measured pass kind and shape."""
    groups: Dict[Tuple[str, int, int, int], List[float]] = {}
    for p in passes:
        groups.setdefault((p.kind, p.new_tokens, p.cached_tokens, p.image_tokens), []).append(p.ms)
    return {group: sorted((n, c, i, statistics.median(ms), kind) for (kind, n, c, i), ms in groups.items()
                          if (kind == "prefill") == (group == "prefill"))
            for group in ("prefill", "repeated")}


def kind_weights(gamma: int, new_tokens: int) -> Dict[str, float]:
    """How often a decision of ``new_tokens`` tokens runs each kind of pass, per prefill: one-token
    passes (drafting, cloud-only decoding) one per token, verification blocks about one per two
    tokens; other block sizes are rarer."""
    weights = {"prefill": 1.0, "k=1": float(new_tokens), f"k={gamma + 1}": new_tokens / 2}
    for k in range(2, gamma + 1):
        weights.setdefault(f"k={k}", 1.0)
    return weights


def fit(passes: Sequence[Pass], weights: Dict[str, float]) -> Tuple[ForwardCost, Dict[str, float]]:
    """The ForwardCost minimising the weighted relative error over the median of each distinct
    shape (non-negative terms: every subset of terms is tried), and the mean relative error of
    each kind of pass under it. A knee (new tokens past it cost another rate: the profile's
    roofline form) is tried at each measured block size and kept only where it cuts the error by
    more than a fifth: on a CPU a long prefill costs per token what a short block does not."""
    groups: Dict[Tuple[str, int, int, int], List[float]] = {}
    for p in passes:
        groups.setdefault((p.kind, p.new_tokens, p.cached_tokens, p.image_tokens), []).append(p.ms)
    shapes = list(groups)
    y = np.array([statistics.median(groups[s]) for s in shapes])
    count = {kind: sum(1 for s in shapes if s[0] == kind) for kind in {s[0] for s in shapes}}
    w = np.sqrt(np.array([weights.get(s[0], 1.0) / count[s[0]] for s in shapes])) / y
    new = sorted({n for _, n, _, _ in shapes})
    linear = best = _fit_terms(shapes, y, w, 0)
    for knee in new[:-1]:
        candidate = _fit_terms(shapes, y, w, knee)
        if linear[1] > 1e-9 and candidate[1] < 0.8 * linear[1] and candidate[1] < best[1]:
            best = candidate
    cost = best[0]
    errors: Dict[str, List[float]] = {}
    for (kind, n, c, i), measured in zip(shapes, y):
        errors.setdefault(kind, []).append((cost.ms(n, c, i) - measured) / measured)
    return cost, {kind: round(float(np.mean(v)), 3) for kind, v in sorted(errors.items())}


def _fit_terms(shapes, y, w, knee: int) -> Tuple[ForwardCost, float]:
    """Least squares over every subset of non-negative terms, with a knee at ``knee`` new tokens
    (0: none): the best cost and its weighted squared error."""
    x = np.array([[1.0, min(n, knee) if knee else n, c, i, max(0, n - knee) if knee else 0.0]
                  for _, n, c, i in shapes])
    columns = range(5 if knee else 4)
    best, best_err = np.zeros(5), np.inf
    for size in range(1, len(columns) + 1):
        for cols in itertools.combinations(columns, size):
            sol, *_ = np.linalg.lstsq(x[:, cols] * w[:, None], y * w, rcond=None)
            if (sol < 0).any():
                continue
            coef = np.zeros(5)
            coef[list(cols)] = sol
            err = float(np.sum(((x @ coef - y) * w) ** 2))
            if err < best_err:
                best, best_err = coef, err
    terms = {name: round(float(v), 4) for name, v in zip(TERMS + ("per_token_after_knee_ms",), best)}
    if knee:
        terms["knee_tokens"] = float(knee)
    return ForwardCost(**terms), best_err


def calibrate(workload, gamma: int = 4, steps: int = 6, repeats: int = 3, log=print, cores=None):
    """The cpu-self profile of ``workload``'s pair on this machine, as a profile-file dict, and the
    passes it was measured on (:func:`measured_shapes`, per side). ``cores``: side -> the CPU cores
    that side runs on in the benchmark (this process moves there while it times that side's model)."""
    import torch

    from specdec.models.loading import load_model

    cpu = processor_name()
    threads = torch.get_num_threads()
    doc = {"name": f"cpu-self-{workload.name}",
           "title": f"this CPU, measured: {cpu}, {threads} torch thread(s), fp32",
           "workload": workload.name,
           "measured_on": cpu,
           "sources": {"self": f"bench/calibrate.py on {cpu}, {datetime.date.today().isoformat()}: medians of the "
                               f"real forward passes of the {workload.name} pair, {repeats} prefills and {steps} "
                               f"rounds of 1..{gamma + 1}-token passes per input"},
           "link": {"rtt_ms": 0.0},
           "gpu_hour_usd": None,
           "fit_error": {}}
    weights = kind_weights(gamma, workload.max_new_tokens)
    shapes = {}
    home = os.sched_getaffinity(0)
    for side, path in (("edge", workload.draft), ("cloud", workload.target)):
        t0 = time.perf_counter()
        if cores and cores.get(side):
            os.sched_setaffinity(0, cores[side])
        adapter = load_model(path, name=side)
        heads = None
        if side == "cloud" and workload.exits:
            from specdec.models.early_exit import EarlyExitHeads

            heads = EarlyExitHeads.load(adapter.model, workload.exits)
        passes = time_passes(adapter, workload.items, gamma, steps, repeats, heads)
        os.sched_setaffinity(0, home)
        shapes[side] = measured_shapes(passes)
        # the profile form has no term for exit heads: fitted without them (the emulated verifier
        # sends hints at their layer's share of the pass); the dilation sees their real cost
        cost, errors = fit([p for p in passes if "+exits" not in p.kind], weights)
        doc[side] = {"device": f"this CPU ({threads} torch thread)", "model": os.path.basename(path.rstrip("/")),
                     "sources": ["self"], "forward": {k: v for k, v in vars(cost).items() if v}}
        if not doc[side]["forward"]:
            doc[side]["forward"] = {"fixed_ms": 0.0}
        doc["fit_error"][side] = errors
        log(f"  calibrated {side} ({doc[side]['model']}) in {time.perf_counter() - t0:.1f} s: {doc[side]['forward']}; "
            f"relative fit error by pass kind {errors}")
    return doc, shapes


def write(doc: dict, path: str) -> str:
    import yaml

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("# Measured by bench/calibrate.py (a cpu-self profile: this machine, not a device to emulate).\n")
        yaml.safe_dump(doc, handle, sort_keys=False, width=110)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["text", "go2", "tiny"], default="go2")
    parser.add_argument("--items", type=int, default=3, help="inputs of the workload to time")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--out", help="default: profiles/cpu-self-<workload>.yaml")
    args = parser.parse_args(argv)
    import torch

    from bench import workloads

    torch.set_num_threads(1)
    workload = workloads.build(args.workload, args.items, 8)
    missing = workload.missing()
    if missing:
        print(f"calibrate: models not available ({missing}); run 'make models' first", file=sys.stderr)
        return 2
    doc, _ = calibrate(workload, gamma=args.gamma)
    print(write(doc, args.out or os.path.join(ROOT, "profiles", f"cpu-self-{args.workload}.yaml")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
