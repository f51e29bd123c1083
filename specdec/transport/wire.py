"""Wire encoding of protocol messages for network transports.

One message per WebSocket frame, JSON text: ``{"kind": "...", "data": {...}}``, with bytes
fields (the camera image) base64-encoded. JSON keeps the protocol debuggable with ordinary
tools; the only bulky payload is the image, sent once per session.

Decoding is strict: unknown kinds, unknown or mistyped fields and a wrong protocol version
raise :class:`specdec.protocol.ProtocolError`, never a half-built message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import typing

from ..protocol import Message, ProtocolError, message_from_dict

MAX_FRAME_BYTES = 8 * 1024 * 1024  # a PNG camera frame fits with a wide margin


def _field_types(cls):
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
    return float(value) if hint is float else value


def decode(frame) -> Message:
    if isinstance(frame, (bytes, bytearray)):
        if len(frame) > MAX_FRAME_BYTES:
            raise ProtocolError("frame too large")
        try:
            frame = bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"not UTF-8: {exc}") from None
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    try:
        envelope = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != {"kind", "data"} or not isinstance(envelope["data"], dict):
        raise ProtocolError('expected {"kind": ..., "data": {...}}')
    kind, data = envelope["kind"], envelope["data"]
    from ..protocol import MESSAGE_TYPES

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
