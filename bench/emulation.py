"""Benchmarks in a hardware profile's regime: which profiles, how much time dilation, which cells count.

A profile file (``profiles/*.yaml``, read by :class:`~specdec.models.compute_profile.ProfilePair`)
names an edge device running a draft, a cloud device running a target, the link between them and
the GPU's hourly price, with a source for every number. The benchmark runs the project's real
model pair in its place: the cloud is ``verifier_server --compute-profile``, the edge is the
benchmark process with a :class:`~specdec.models.compute_profile.ComputeClock` on its draft, the
link is the link emulator at the profile's RTT, jitter, bandwidth and loss. Three keys of the
file are for the benchmark alone: ``workload`` (the pair that stands in for the profile's models:
``go2`` or ``text``), ``paper`` (the paper's claims for that setting, shown next to ours) and
``image_tokens_per_frame`` (how many image tokens the profile's model makes of the frame its
figures describe). The stand-in pair turns a camera frame into far fewer image tokens than a
Qwen2-VL-2B/7B, so its image tokens are rescaled (:func:`effective`) to keep a frame's prefill
(language model and vision tower) at the device's per-frame cost; text and draft-block tokens map
one to one.

Time dilation
-------------
The emulation can only slow this machine down to a device, never speed it up: a pass whose real
compute takes longer than the profile allows *overruns*, and a cell with an overrun shows this
machine, not the device (it is marked INVALID everywhere). On two CPU cores the SmolLM2 target's
forward (~65-120 ms) is slower than an A100's 7B step (~25 ms), so text would be all overruns.
The benchmark therefore runs a profile *k times slower* - every forward duration and every link
delay multiplied by k, the bandwidth divided by k - and divides every measured time by k. Ratios
between modes are unchanged by construction; what shrinks by k is everything the profile does
not model: Python overheads of the engine, the transport and the link emulator, and scheduling
noise. k is chosen from the cpu-self calibration (:mod:`bench.calibrate`): the smallest value
(in steps of 0.5) that leaves every measured shape of the passes a decision repeats (decode steps,
draft steps, verification blocks) ``DILATION_MARGIN`` times inside the dilated profile and makes
no emulated pass shorter than ``MIN_PASS_MS`` (on a shared machine the scheduler can hold a
process for several milliseconds: a shorter pass would overrun on noise alone); 1 when none is
needed. Every table says the k it ran with.

A prefill runs once per decision, and a GPU prefills a long prompt far faster, relative to its
decode step, than a CPU does, so k covers prefills too (:func:`prefill_dilation`), with a smaller
margin on the edge (``PREFILL_MARGIN``: one long pass, little scheduling noise) and the repeated
passes' on the cloud (its server prefills slower than the calibrating process does). A fleet of K
robots needs more (:func:`fleet_dilation`): here their drafts take turns on one core, and K prefills
batched in one pass cost this CPU all their tokens, where the device shares its fixed cost. Where a
prefill still overruns, its cell is INVALID like any other, and :func:`prefill_excess_ms` bounds
what it adds to a decision (from the calibration), printed next to the cell.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import yaml

from specdec.models.compute_profile import ComputeProfile, ForwardCost, ProfilePair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES_DIR = os.path.join(ROOT, "profiles")
CPU_SELF_PREFIX = "cpu-self"  # measured from this machine: validation, not a device to emulate
STAND_INS = {"tiny": "go2"}  # the tiny random Qwen2-VL pair may stand in for the Go2 pair (plumbing checks)
DILATION_MARGIN = 1.5  # real compute may take this much longer than calibrated (a loaded machine) before overrunning
MIN_PASS_MS = 15.0  # no emulated pass shorter than this (scheduling noise on a shared machine)
# the same for prefills, per side: one long pass per decision, calibrated on its own prompts. The edge
# prefills in the process that calibrated it; the cloud in the verifier server, where the slowest
# 110-token text prefill of a run took up to 1.48x the calibrated time (hinted text cells INVALID in 2
# of 3 full runs at margin 1.2) before its heap settings were fixed (2026-12-05) and still 1.06-1.27x
# after: it gets the repeated passes' margin
PREFILL_MARGIN = {"edge": 1.2, "cloud": DILATION_MARGIN}
# a batched prefill of K prompts, estimated from the single-prompt fit: at margin 1.2 (k = 21) one batch of 8
# text prompts per cell still overran (2026-12-02 full run): the estimate gets more room than a measured pass
FLEET_PREFILL_MARGIN = 2.0


@dataclass
class BenchProfile:
    """A profile file as the benchmark uses it."""

    pair: ProfilePair
    workload: str  # the model pair standing in for the profile's models
    paper: Dict[str, float] = field(default_factory=dict)  # the paper's claims for this setting
    image_tokens_per_frame: Optional[int] = None  # the profile's model's image tokens for one frame

    @property
    def name(self) -> str:
        return self.pair.name

    @property
    def rtt_ms(self) -> float:
        return float(self.pair.link.get("rtt_ms", 0.0))

    def applies_to(self, workload: str) -> bool:
        return self.workload == workload or STAND_INS.get(workload) == self.workload


def load(path: str) -> BenchProfile:
    pair = ProfilePair.load(path)
    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    workload = doc.get("workload")
    if workload not in ("go2", "text"):
        raise ValueError(f"{path}: 'workload' must name the pair that stands in for its models: go2 or text")
    frame = doc.get("image_tokens_per_frame")
    return BenchProfile(pair, workload, {k: float(v) for k, v in (doc.get("paper") or {}).items()},
                        int(frame) if frame else None)


def device_profiles(names: Optional[Iterable[str]] = None, directory: str = PROFILES_DIR) -> List[BenchProfile]:
    """The device profiles in ``directory`` (cpu-self files excluded), or the ``names`` asked for."""
    paths = sorted(glob.glob(os.path.join(directory, "*.yaml")))
    found = {os.path.splitext(os.path.basename(p))[0]: p for p in paths
             if not os.path.basename(p).startswith(CPU_SELF_PREFIX)}
    if names is None:
        return [load(p) for p in found.values()]
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no profile {missing} in {directory} (there: {', '.join(found) or 'none'})")
    return [load(found[n]) for n in names]


def to_doc(pair: ProfilePair) -> dict:
    """A ProfilePair as the YAML document :meth:`ProfilePair.load` reads."""
    return {"name": pair.name, "title": pair.title, "sources": dict(pair.sources),
            "edge": asdict(pair.edge), "cloud": asdict(pair.cloud), "link": dict(pair.link),
            "gpu_hour_usd": pair.gpu_hour_usd}


def effective(pair: ProfilePair, k: float = 1.0, image_scale: Optional[Dict[str, float]] = None) -> ProfilePair:
    """``pair`` as the stand-in models run it: k times slower (every forward cost and link delay
    times k, bandwidth over k) and, per side, a frame's image tokens costing what the profile's
    model's do: an image token is a new token too (``per_token_ms``, the language model's share)
    plus ``per_image_token_ms`` (the vision tower's), and the stand-in has ``image_scale[side]``
    times fewer of them per frame, so each of its image tokens costs that many times the whole."""
    image_scale = image_scale or {}

    def side(name: str) -> ComputeProfile:
        profile = getattr(pair, name)
        costs = asdict(profile.forward)
        scale = image_scale.get(name, 1.0)
        whole = costs["per_token_ms"] + costs["per_image_token_ms"]
        costs["per_image_token_ms"] = whole * scale - costs["per_token_ms"]
        return ComputeProfile(profile.device, profile.model, ForwardCost(**{n: v * k for n, v in costs.items()}),
                              list(profile.sources))

    out = copy.copy(pair)
    out.edge, out.cloud = side("edge"), side("cloud")
    out.link = {name: (value / k if name == "bandwidth_mbps" else value if name == "loss" else value * k)
                for name, value in pair.link.items()}
    if k != 1:
        out.title = f"{pair.title} (time dilation x{k:g})"
    return out


def scaled_edge(pair: ProfilePair, factor: float) -> ProfilePair:
    """``pair`` with an edge device ``factor`` times slower (0.25: four times faster)."""
    out = copy.copy(pair)
    edge = pair.edge
    out.edge = ComputeProfile(edge.device, edge.model,
                              ForwardCost(**{n: v * factor for n, v in asdict(edge.forward).items()}),
                              list(edge.sources))
    return out


def image_scale(profile: BenchProfile, stand_in_image_tokens: Dict[str, int]) -> Dict[str, float]:
    """Per side: the profile's image tokens per frame over the stand-in model's (1 when unknown)."""
    if not profile.image_tokens_per_frame:
        return {}
    return {name: profile.image_tokens_per_frame / count for name, count in stand_in_image_tokens.items() if count}


def write(pair: ProfilePair, path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(to_doc(pair), handle, sort_keys=False)
    return path


def dilation(pair: ProfilePair, shapes: Dict[str, Sequence[tuple]],
             margin: float = DILATION_MARGIN, min_pass_ms: float = MIN_PASS_MS) -> float:
    """The time dilation k for emulating ``pair`` here: each kind of repeated pass measured by the
    calibration (``shapes[side]``: (new, cached, image, measured ms, kind)) must take at most
    1/margin of its dilated time - judged by the kind's median over its shapes, so one pass the
    scheduler held up does not set k - and none less than ``min_pass_ms``."""
    need = 1.0
    for side in ("edge", "cloud"):
        theirs = getattr(pair, side).forward
        ratios: Dict[str, List[float]] = {}
        for new, cached, image, measured_ms, kind in shapes.get(side, ()):
            emulated = max(theirs.ms(new, cached, image), 1e-9)
            ratios.setdefault(kind, []).append(measured_ms / emulated)
            need = max(need, min_pass_ms / emulated)
        for values in ratios.values():
            need = max(need, margin * statistics.median(values))
    return math.ceil(2 * need - 1e-9) / 2


def prefill_dilation(pair: ProfilePair, prefills: Dict[str, Sequence[tuple]]) -> float:
    """The time dilation that keeps every calibrated prefill (``prefills[side]``: (new, cached,
    image, measured ms, kind)) ``PREFILL_MARGIN[side]`` times inside the dilated profile: a
    decision has one prefill, and each prompt's must fit."""
    need = 1.0
    for side, shapes in prefills.items():
        theirs = getattr(pair, side).forward
        for new, cached, image, ms, _ in shapes:
            need = max(need, PREFILL_MARGIN[side] * ms / max(theirs.ms(new, cached, image), 1e-9))
    return math.ceil(2 * need - 1e-9) / 2


def fleet_dilation(pair: ProfilePair, here: ProfilePair, shapes: Dict[str, Dict[str, Sequence[tuple]]],
                   robots: int, mixed: bool = False, prompt_tokens: Optional[int] = None) -> float:
    """The dilation for ``robots`` robots deciding at once (``shapes[side][kind]`` as calibrated,
    ``here`` the cpu-self fit). In the emulation each robot has its own edge device; here their drafts
    take turns on one core, so a draft or prefill pass may wait behind ``robots - 1`` others: the
    edge's calibrated times count ``robots`` times. The cloud's repeated passes run in the verifier
    one (batched) pass at a time; a batched prefill of ``robots`` copies of a calibrated prompt costs
    this CPU what the cpu-self fit says for all their tokens, kept ``FLEET_PREFILL_MARGIN`` inside;
    ``mixed`` (a verifier with ``mix_prefills``): so does one prompt mixed into ``robots - 1``
    others' steps (every row padded to the prompt), which the device is charged far less for.
    ``prompt_tokens``: the one prompt every robot sends (text fleets), instead of every calibrated one.
    (Prompts of different lengths would cost more here: the batch pads every row to the longest,
    while the device is charged the rows' own tokens - the text fleet gives every robot one prompt.)"""
    crowded = {side: [(n, c, i, ms * (robots if side == "edge" else 1), kind) for n, c, i, ms, kind in kinds["repeated"]]
               for side, kinds in shapes.items()}
    need = dilation(pair, crowded)
    edge_prefills = [(n, c, i, ms * robots, kind) for n, c, i, ms, kind in shapes.get("edge", {}).get("prefill", ())]
    need = max(need, prefill_dilation(pair, {"edge": edge_prefills}))
    cloud = shapes.get("cloud", {}).get("prefill", ())
    if prompt_tokens:  # every robot sends this prompt (with block 0): the calibration's other prompts do not occur
        cloud = [(prompt_tokens, 0, 0, None, "prefill")]
    for new, cached, image, _, _ in cloud:
        real = here.cloud.forward.ms(robots * new, robots * cached, robots * image)
        device = pair.cloud.forward.ms(robots * new, robots * cached, robots * image, rows=robots)
        if mixed and robots > 1:
            # a prompt mixed into the others' steps (mix_prefills): here every row is padded to the
            # prompt's length, while the device is charged the prompt and one token per other row
            device = min(device, pair.cloud.forward.ms(new + robots - 1, robots * (cached + new), image, rows=robots))
        need = max(need, math.ceil(2 * FLEET_PREFILL_MARGIN * real / max(device, 1e-9) - 1e-9) / 2)
    return need


def prefill_excess_ms(pair: ProfilePair, prefills: Dict[str, Sequence[tuple]], k: float) -> float:
    """Per decision, in the device's milliseconds: how much longer the prefills took here (as
    calibrated: (new, cached, image, measured ms, kind)) than k times the device's (mean over the
    prompts, both sides; 0 when they fit)."""
    total = 0.0
    for side, shapes in prefills.items():
        theirs = getattr(pair, side).forward
        if shapes:
            total += sum(max(0.0, ms - k * theirs.ms(n, c, i)) for n, c, i, ms, _ in shapes) / len(shapes) / k
    return total


@dataclass
class Validity:
    """Overruns of the edge's and the cloud's compute clocks during one benchmark cell."""

    edge_passes: int = 0
    edge_overruns: int = 0
    cloud_passes: int = 0
    cloud_overruns: int = 0

    @property
    def valid(self) -> bool:
        return self.edge_overruns == 0 and self.cloud_overruns == 0

    @property
    def overrun_fraction(self) -> float:
        passes = self.edge_passes + self.cloud_passes
        return (self.edge_overruns + self.cloud_overruns) / passes if passes else 0.0


class ClockWatch:
    """Per-cell overrun counts: the edge clock in this process, the cloud clock through the
    server's stats snapshots (:meth:`bench.cluster.Cloud.snapshot`)."""

    def __init__(self, edge_clock, cloud):
        self.edge_clock = edge_clock
        self.cloud = cloud
        self._start = self._now()

    def _now(self):
        edge = self.edge_clock.summary() if self.edge_clock is not None else {"passes": 0, "overruns": 0}
        cloud = (self.cloud.snapshot().get("clock") or {}) if self.cloud is not None and self.cloud.profile else {}
        return (edge.get("passes", 0), edge.get("overruns", 0), cloud.get("passes", 0), cloud.get("overruns", 0))

    def lap(self) -> Validity:
        """Overruns since the previous lap (or since the watch started)."""
        now = self._now()
        delta = Validity(*(a - b for a, b in zip(now, self._start)))
        self._start = now
        return delta
