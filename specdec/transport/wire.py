"""Wire encoding of protocol messages for network transports.

One message per WebSocket frame, JSON text: ``{"kind": "...", "data": {...}}``, with bytes
fields (the camera image) base64-encoded. JSON keeps the protocol debuggable with ordinary
tools; the only bulky payload is the image, sent once per session.

Decoding is strict and total: whatever the frame holds, :func:`decode` returns a message or
raises :class:`WireError` (a :class:`specdec.protocol.ProtocolError`) - never another exception,
never a half-built message. It refuses unknown kinds, unknown or mistyped fields, NaN/Infinity
and numbers that overflow to them, integers outside int64 (checked on their digit count before
Python converts them), nesting deeper than a message ever has, and a wrong protocol version.
A :class:`WireError` names the session of the frame when it can be read, and the
:class:`~specdec.protocol.EndReason` to answer with, so the sender's session fails at once
instead of timing out (a newer peer's message gets ``PROTOCOL_VERSION_MISMATCH``, whatever
its fields).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import re
import typing

from ..protocol import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    EndReason,
    Message,
    ProtocolError,
    message_from_dict,
)

MAX_FRAME_BYTES = 8 * 1024 * 1024  # a PNG camera frame fits with a wide margin
MAX_DEPTH = 8  # a message nests 3 levels (envelope, data, list); anything deeper is garbage
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_MAX_INT_CHARS = 20  # "-9223372036854775808": longer digit strings are out of range anyway
_MAX_SESSION_ID_CHARS = 256  # longer ids are not quoted back in refusals


class WireError(ProtocolError):
    """A frame that cannot become a message; ``reason`` is the EndReason to answer with."""

    def __init__(self, detail: str, session_id: str = "", reason: EndReason = EndReason.BAD_REQUEST):
        super().__init__(detail)
        self.session_id = session_id
        self.reason = reason


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> typing.Dict[str, typing.Any]:
    # get_type_hints re-evaluates every annotation: about 6x the cost of the rest of decode.
    return typing.get_type_hints(cls)


def encode(message: Message) -> str:
    data = {}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        data[field.name] = base64.b64encode(value).decode("ascii") if isinstance(value, (bytes, bytearray)) else value
    return json.dumps({"kind": message.KIND, "data": data}, separators=(",", ":"), allow_nan=False)


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _check_type(name: str, value, hint):
    """Reject values whose JSON type does not match the dataclass field."""
    origin = typing.get_origin(hint)
    if origin in (list, typing.List):
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ProtocolError(f"field {name}: expected a list, got {type(value).__name__}")
        for item in value:
            _check_type(name, item, item_type)
        return value
    if hint is bytes:
        if not isinstance(value, str):
            raise ProtocolError(f"field {name}: expected base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ProtocolError(f"field {name}: bad base64 ({exc})") from None
    allowed = _SCALARS.get(hint)
    if allowed is None:
        return value
    # bool is an int in Python: do not let True pass as a token id, or 1 as a flag.
    if isinstance(value, bool) and hint is not bool or not isinstance(value, allowed):
        raise ProtocolError(f"field {name}: expected {hint.__name__}, got {type(value).__name__}")
    if hint is int and not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"field {name}: integer outside int64")
    return float(value) if hint is float else value


# -- strict JSON ---------------------------------------------------------------------------
def _refuse_constant(name: str):
    raise ProtocolError(f"{name} is not a number JSON allows")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:32]!r} overflows a float")
    return value


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise ProtocolError(f"integer of {len(text)} digits is outside int64")
    return int(text)


def _depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, refusing anything deeper than ``limit``."""
    if limit < 0:
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _loads(frame: str):
    try:
        envelope = json.loads(frame, parse_constant=_refuse_constant, parse_float=_parse_float, parse_int=_parse_int)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError included
        raise ProtocolError(f"not JSON: {exc}") from None
    _depth(envelope, MAX_DEPTH)
    return envelope


_SESSION_ID_TEXT = re.compile(r'"session_id"\s*:\s*"([^"\\]{1,%d})"' % _MAX_SESSION_ID_CHARS)


def _session_of(data) -> str:
    session_id = data.get("session_id") if isinstance(data, dict) else None
    return session_id if isinstance(session_id, str) and len(session_id) <= _MAX_SESSION_ID_CHARS else ""


def _session_in_text(frame: str) -> str:
    """The session id of a frame JSON could not parse (e.g. a 5000-digit number), if it is legible."""
    match = _SESSION_ID_TEXT.search(frame)
    return match.group(1) if match else ""


def decode(frame) -> Message:
    """The message in ``frame`` (text or UTF-8 bytes); :class:`WireError` for anything else."""
    session_id = ""
    try:
        if isinstance(frame, (bytes, bytearray)):
            if len(frame) > MAX_FRAME_BYTES:
                raise ProtocolError("frame too large")
            try:
                frame = bytes(frame).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"not UTF-8: {exc}") from None
        if not isinstance(frame, str):
            raise ProtocolError(f"expected a text frame, got {type(frame).__name__}")
        if len(frame) > MAX_FRAME_BYTES:
            raise ProtocolError("frame too large")
        try:
            envelope = _loads(frame)
        except ProtocolError:
            session_id = _session_in_text(frame)
            raise
        if (not isinstance(envelope, dict) or set(envelope) != {"kind", "data"}
                or not isinstance(envelope["data"], dict)):
            raise ProtocolError('expected {"kind": ..., "data": {...}}')
        kind, data = envelope["kind"], envelope["data"]
        session_id = _session_of(data)
        version = data.get("protocol_version", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:  # before the fields: a newer peer may have other ones
            raise WireError(f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})",
                            session_id, EndReason.PROTOCOL_VERSION_MISMATCH)
        cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ProtocolError(f"unknown message kind {kind!r}")
        hints = _field_types(cls)
        checked = {}
        for name, value in data.items():
            if name not in hints or name == "KIND":
                raise ProtocolError(f"{cls.__name__}: unknown field {name!r}")
            checked[name] = _check_type(name, value, hints[name])
        return message_from_dict(kind, checked)
    except WireError:
        raise
    except ProtocolError as exc:
        raise WireError(str(exc), session_id) from None
    except Exception as exc:  # total: a decoder bug must not take a connection down either
        raise WireError(f"undecodable frame ({type(exc).__name__}: {exc})", session_id) from None
