"""Hardware-profile emulation: run the real model, take the time another device would take.

A :class:`ComputeProfile` says how long one forward pass of a named model takes on a named
device, as a function of its shape: new tokens, tokens already cached, image tokens, batch rows.
Attached to an adapter (:meth:`ModelAdapter.use_clock`), a :class:`ComputeClock` starts each
forward pass's emulated duration when the pass starts; the real model still runs and produces the
real tokens, hints and acceptance, and the caller *settles* (waits until the emulated duration
has passed) at the point where the pass's result leaves it: a verification result is sent, a
draft token is chosen, a prefill ends. An early-exit hint is sent when its layer's share of the
pass has elapsed (:meth:`ComputeClock.time_at`), so hints leave when they would on the emulated
device, while the real compute runs on (holding it there would eat the pass's slack).

When the real compute takes longer than the profile allows, the clock counts an *overrun*: the
emulation cannot show that device's speed on this machine, and a benchmark must mark the setting
invalid (:attr:`ComputeClock.valid`).

Profiles live in YAML files with their sources written in them (``profiles/``); the numbers come
from published measurements, never fitted to a result of ours.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional


class ProfileError(ValueError):
    """A profile file that cannot be used."""


@dataclass
class ForwardCost:
    """Milliseconds of one forward pass: ``fixed_ms + per_token_ms * new_tokens +
    per_cached_token_ms * cached_tokens + per_image_token_ms * image_tokens``, and for a batch of
    ``rows`` sequences ``+ per_extra_row_ms * (rows - 1)`` (batched decoding on a GPU costs little
    per extra sequence). Image tokens are new tokens too: ``per_image_token_ms`` is their extra
    cost (the vision tower) on top of ``per_token_ms``. In a batch the token counts are totals over
    its rows: a batched prefill pays for every row's tokens and shares only the fixed cost. With
    ``knee_tokens``, new tokens past the knee cost ``per_token_after_knee_ms`` each instead (a
    roofline: a few tokens ride on the weight reads, many are compute-bound - a GPU's knee is far
    out, a CPU's close)."""

    fixed_ms: float
    per_token_ms: float = 0.0
    per_cached_token_ms: float = 0.0
    per_image_token_ms: float = 0.0
    per_extra_row_ms: float = 0.0
    knee_tokens: float = 0.0  # 0: no knee
    per_token_after_knee_ms: float = 0.0

    def ms(self, new_tokens: int, cached_tokens: int = 0, image_tokens: int = 0, rows: int = 1) -> float:
        before, after = new_tokens, 0.0
        if self.knee_tokens > 0 and new_tokens > self.knee_tokens:
            before, after = self.knee_tokens, new_tokens - self.knee_tokens
        return (self.fixed_ms + self.per_token_ms * before + self.per_token_after_knee_ms * after
                + self.per_cached_token_ms * cached_tokens + self.per_image_token_ms * image_tokens
                + self.per_extra_row_ms * max(0, rows - 1))


@dataclass
class ComputeProfile:
    """One device running one model (a side of a :class:`ProfilePair`)."""

    device: str
    model: str
    forward: ForwardCost
    sources: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ComputeProfile":
        try:
            forward = ForwardCost(**{k: float(v) for k, v in data["forward"].items()})
            return cls(str(data["device"]), str(data["model"]), forward, [str(s) for s in data.get("sources", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: needs device, model and forward {{fixed_ms, per_token_ms, ...}} "
                               f"({type(exc).__name__}: {exc})") from None


@dataclass
class ProfilePair:
    """A profile file: the edge and the cloud of one deployment, plus its link and GPU price."""

    name: str
    title: str
    edge: ComputeProfile
    cloud: ComputeProfile
    link: Dict[str, float] = field(default_factory=dict)  # rtt_ms, bandwidth_mbps, jitter_ms, loss
    gpu_hour_usd: Optional[float] = None
    sources: Dict[str, str] = field(default_factory=dict)  # id -> citation
    path: str = ""

    @classmethod
    def load(cls, path: str) -> "ProfilePair":
        import yaml

        if not os.path.isfile(path):
            raise ProfileError(f"profile file not found: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ProfileError(f"{path}: not YAML ({exc})") from None
        if not isinstance(data, dict) or "edge" not in data or "cloud" not in data:
            raise ProfileError(f"{path}: a profile needs 'edge' and 'cloud' sections")
        sources = {str(k): str(v) for k, v in (data.get("sources") or {}).items()}
        pair = cls(str(data.get("name") or os.path.splitext(os.path.basename(path))[0]), str(data.get("title", "")),
                   ComputeProfile.from_dict(data["edge"], f"{path}: edge"),
                   ComputeProfile.from_dict(data["cloud"], f"{path}: cloud"),
                   {k: float(v) for k, v in (data.get("link") or {}).items()},
                   float(data["gpu_hour_usd"]) if data.get("gpu_hour_usd") is not None else None, sources, path)
        missing = [s for side in (pair.edge, pair.cloud) for s in side.sources if s not in sources]
        if missing:
            raise ProfileError(f"{path}: sources {missing} are cited but not listed under 'sources'")
        return pair


class ComputeClock:
    """Emulated compute time of one adapter's forward passes (one pass at a time per thread)."""

    def __init__(self, profile: ComputeProfile, tolerance: float = 0.05):
        self.profile = profile
        self.tolerance = tolerance  # an overrun is real compute > emulated * (1 + tolerance)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.passes = 0
        self.overruns = 0
        self.overruns_by_kind: Dict[str, int] = {}  # "prefill" (an empty cache) | "step"
        self.worst_ratio = 0.0  # max real / emulated
        self.worst_pass: Dict[str, float] = {}  # that pass's shape and times: what an overrun was
        self.emulated_ms = 0.0
        self.real_ms = 0.0

    def begin(self, new_tokens: int, cached_tokens: int = 0, image_tokens: int = 0, rows: int = 1) -> None:
        """A forward pass of this shape starts now."""
        duration = self.profile.forward.ms(new_tokens, cached_tokens, image_tokens, rows) / 1000
        start = time.perf_counter()
        self._local.span = (start, start + duration)
        self._local.kind = "prefill" if cached_tokens == 0 else "step"
        self._local.shape = {"new_tokens": new_tokens, "cached_tokens": cached_tokens, "image_tokens": image_tokens,
                             "rows": rows}
        with self._lock:
            self.passes += 1
            self.emulated_ms += duration * 1000

    def time_at(self, fraction: float) -> Optional[float]:
        """When (``time.perf_counter``) ``fraction`` of the current pass's emulated time has passed
        (an exit layer's output); None outside a pass."""
        span = getattr(self._local, "span", None)
        if span is None:
            return None
        return span[0] + (span[1] - span[0]) * min(max(fraction, 0.0), 1.0)

    def settle(self) -> None:
        """The pass's result leaves now: wait out the rest of its emulated time (once)."""
        span = getattr(self._local, "span", None)
        if span is None:
            return
        self._local.span = None
        start, end = span
        now = time.perf_counter()
        emulated = end - start
        with self._lock:
            self.real_ms += (now - start) * 1000
            if emulated > 0 and (now - start) / emulated > self.worst_ratio:
                self.worst_ratio = (now - start) / emulated
                self.worst_pass = dict(getattr(self._local, "shape", {}), real_ms=(now - start) * 1000,
                                       emulated_ms=emulated * 1000)
            if now - start > emulated * (1 + self.tolerance):
                self.overruns += 1
                kind = getattr(self._local, "kind", "step")
                self.overruns_by_kind[kind] = self.overruns_by_kind.get(kind, 0) + 1
        _sleep_until(end)

    @property
    def valid(self) -> bool:
        """Every pass finished its real compute within the emulated time (the run shows the device)."""
        return self.overruns == 0

    def summary(self) -> Dict[str, float]:
        return {"passes": self.passes, "overruns": self.overruns, "overruns_by_kind": dict(self.overruns_by_kind),
                "worst_real_over_emulated": self.worst_ratio, "worst_pass": dict(self.worst_pass),
                "emulated_ms": self.emulated_ms, "real_ms": self.real_ms}


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left if left > 0.002 else 0)
