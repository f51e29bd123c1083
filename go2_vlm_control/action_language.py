"""The action language the VLM emits, and its strict parser (ROS-free).

One action per decision, in lowercase ASCII::

    action    := motion SP number | "stop" | "done"
    motion    := "forward" | "backward"            (metres)
               | "left" | "right"                  (turn in place, degrees)
               | "strafe_left" | "strafe_right"    (sideways, metres)
    number    := ("0" | [1-9][0-9]{0,3}) ["." [0-9]{1,3}]

Leading/trailing ASCII whitespace (space, tab, CR, LF) is ignored; everything else must match
exactly. Anything else (other words, case, unicode look-alikes, signs, exponents, NaN/inf,
several commands, trailing text) is rejected with a reason, and the robot then stops. Values
above the configured limit are clamped to it (``ParsedAction.clamped``), or rejected when
``ActionLimits.strict_range`` is set. See docs/action_language.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

# Verb -> (kind, unit). The verb names match edge_cloud_vlm_msgs/DecodedAction.action.
VERBS = {
    "forward": ("translate", "m"),
    "backward": ("translate", "m"),
    "strafe_left": ("translate", "m"),
    "strafe_right": ("translate", "m"),
    "left": ("rotate", "deg"),
    "right": ("rotate", "deg"),
    "stop": ("stop", ""),
    "done": ("done", ""),
}
MOTION_VERBS = tuple(v for v, (k, _) in VERBS.items() if k in ("translate", "rotate"))
BARE_VERBS = ("stop", "done")

MAX_TEXT_CHARS = 32  # the longest valid action is "strafe_right 9999.999" (21 chars)
_NUMBER = r"(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,3})?"
ACTION_PATTERN = (r"(?:(?:forward|backward|left|right|strafe_left|strafe_right) " + _NUMBER
                  + r"|stop|done)")
# What a grammar-constrained model may generate (engine.grammar): ACTION_PATTERN without the zero
# values parse_action rejects, so every constrained output parses.
_POSITIVE = r"(?:[1-9][0-9]{0,3}(?:\.[0-9]{1,3})?|0\.(?:[0-9]{0,2}[1-9]|[0-9]?[1-9]0|[1-9]00))"
GRAMMAR_PATTERN = (r"(?:(?:forward|backward|left|right|strafe_left|strafe_right) " + _POSITIVE
                   + r"|stop|done)")
_ACTION_RE = re.compile(r"(?P<verb>[a-z_]+)(?: (?P<num>" + _NUMBER + r"))?")
_STRIP = " \t\r\n"

# Unit axis (body frame) of each motion verb: (x, y, yaw sign).
_AXES = {
    "forward": (1.0, 0.0, 0.0),
    "backward": (-1.0, 0.0, 0.0),
    "strafe_left": (0.0, 1.0, 0.0),
    "strafe_right": (0.0, -1.0, 0.0),
    "left": (0.0, 0.0, 1.0),
    "right": (0.0, 0.0, -1.0),
}


class ActionRejected(ValueError):
    """Raised by :func:`parse_action`; ``reason`` says why (short, human readable)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ActionLimits:
    """Largest magnitude one action may ask for; larger values are clamped (or rejected)."""

    max_forward_m: float = 1.0
    max_backward_m: float = 0.5
    max_strafe_m: float = 0.5
    max_turn_deg: float = 90.0
    strict_range: bool = False  # True: reject out-of-range values instead of clamping

    def limit_for(self, verb: str) -> float:
        if verb == "forward":
            return self.max_forward_m
        if verb == "backward":
            return self.max_backward_m
        if verb in ("strafe_left", "strafe_right"):
            return self.max_strafe_m
        if verb in ("left", "right"):
            return self.max_turn_deg
        return 0.0

    def __post_init__(self):
        for name in ("max_forward_m", "max_backward_m", "max_strafe_m", "max_turn_deg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0.0):
                raise ValueError(f"ActionLimits.{name} must be a finite value >= 0, got {v!r}")


@dataclass(frozen=True)
class ParsedAction:
    """A valid action. ``value`` is metres (translate), degrees (rotate) or 0 (stop/done)."""

    verb: str
    value: float = 0.0
    clamped: bool = False
    requested: float = 0.0  # the value as written, before clamping
    text: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        """'translate', 'rotate', 'stop' or 'done'."""
        return VERBS[self.verb][0]

    @property
    def unit(self) -> str:
        return VERBS[self.verb][1]

    @property
    def is_motion(self) -> bool:
        return self.kind in ("translate", "rotate")

    @property
    def axis(self) -> Tuple[float, float, float]:
        """Body-frame unit direction (x, y, yaw) of the motion; zeros for stop/done."""
        return _AXES.get(self.verb, (0.0, 0.0, 0.0))

    @property
    def target(self) -> Tuple[float, float, float]:
        """Body-frame displacement asked for: (dx m, dy m, dyaw rad)."""
        ax, ay, aw = self.axis
        if self.kind == "rotate":
            return (0.0, 0.0, aw * math.radians(self.value))
        return (ax * self.value, ay * self.value, 0.0)

    def canonical(self) -> str:
        """The action written back in the language (clamped value)."""
        return format_action(self.verb, self.value)


def format_action(verb: str, value: float = 0.0) -> str:
    """Write an action in canonical form: 'forward 0.5', 'left 30', 'stop'."""
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r}")
    if verb in BARE_VERBS:
        return verb
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"magnitude must be finite and > 0, got {value!r}")
    if VERBS[verb][1] == "deg":
        text = f"{value:.1f}"
    else:
        text = f"{value:.3f}"
    text = text.rstrip("0").rstrip(".")
    if text in ("", "0"):
        raise ValueError(f"magnitude {value!r} rounds to 0")
    return f"{verb} {text}"


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def parse_action(text, limits: Optional[ActionLimits] = None) -> ParsedAction:
    """Parse one action strictly: a :class:`ParsedAction`, or raises :class:`ActionRejected`."""
    limits = limits or ActionLimits()
    if not isinstance(text, str):
        raise ActionRejected(f"not a string ({type(text).__name__})")
    if len(text) > 4 * MAX_TEXT_CHARS:
        raise ActionRejected(f"too long ({len(text)} chars)")
    body = text.strip(_STRIP)
    if not body:
        raise ActionRejected("empty")
    if len(body) > MAX_TEXT_CHARS:
        raise ActionRejected(f"too long ({len(body)} chars > {MAX_TEXT_CHARS})")
    for ch in body:
        if ord(ch) > 126 or (ord(ch) < 32):
            raise ActionRejected(f"non-printable or non-ASCII character {_describe(ch)}")
    m = _ACTION_RE.fullmatch(body)
    if m is None:
        first = body.split(" ", 1)[0]
        if first in VERBS and first in BARE_VERBS:
            raise ActionRejected(f"'{first}' takes no value and nothing may follow it")
        if first in VERBS:
            raise ActionRejected(f"'{first}' needs exactly one plain number "
                                 "(digits, optional '.', up to 4+3 digits) and nothing after it")
        raise ActionRejected("not an action: expected '<verb> <number>', 'stop' or 'done'")
    verb, num = m.group("verb"), m.group("num")
    if verb not in VERBS:
        raise ActionRejected(f"unknown verb '{verb}'")
    if verb in BARE_VERBS:
        if num is not None:
            raise ActionRejected(f"'{verb}' takes no value")
        return ParsedAction(verb=verb, value=0.0, text=text)
    if num is None:
        raise ActionRejected(f"'{verb}' needs a value in {VERBS[verb][1]}")
    value = float(num)
    if not math.isfinite(value):  # unreachable with the pattern, kept as a guard
        raise ActionRejected("value is not finite")
    if value <= 0.0:
        raise ActionRejected("value must be > 0 (use 'stop' to stop)")
    limit = limits.limit_for(verb)
    clamped = False
    out = value
    if value > limit:
        if limits.strict_range or limit <= 0.0:
            raise ActionRejected(f"value {num} {VERBS[verb][1]} above the limit {limit:g}")
        out, clamped = limit, True
    return ParsedAction(verb=verb, value=out, clamped=clamped, requested=value, text=text)


def try_parse_action(text, limits: Optional[ActionLimits] = None):
    """Like :func:`parse_action` but returns ``(ParsedAction, "")`` or ``(None, reason)``."""
    try:
        return parse_action(text, limits), ""
    except ActionRejected as exc:
        return None, exc.reason


def validate_fields(verb, value, limits: Optional[ActionLimits] = None) -> ParsedAction:
    """Validate an already-split (verb, value) pair, e.g. DecodedAction.action/.value.

    Same rules as the text form: the verb must be known, the value finite, > 0 for motions
    and 0 for stop/done; values above the limit are clamped (or rejected if strict).
    """
    limits = limits or ActionLimits()
    if not isinstance(verb, str) or verb not in VERBS:
        raise ActionRejected(f"unknown verb {verb!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ActionRejected(f"value {value!r} is not a number") from None
    if not math.isfinite(value):
        raise ActionRejected("value is not finite")
    if verb in BARE_VERBS:
        if value != 0.0:
            raise ActionRejected(f"'{verb}' takes no value")
        return ParsedAction(verb=verb)
    if value <= 0.0:
        raise ActionRejected("value must be > 0 (use 'stop' to stop)")
    if value > 9999.999:
        raise ActionRejected("value too large")
    limit = limits.limit_for(verb)
    if value > limit:
        if limits.strict_range or limit <= 0.0:
            raise ActionRejected(f"value {value:g} above the limit {limit:g}")
        return ParsedAction(verb=verb, value=limit, clamped=True, requested=value)
    return ParsedAction(verb=verb, value=value, requested=value)
