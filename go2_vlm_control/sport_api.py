"""Unitree Go2 native sport API requests (``unitree_api/msg/Request`` on /api/sport/request).

The request builders are ROS-free (api_id + JSON parameter). :func:`load_request_type` imports
the ``unitree_api`` message package if it is installed and returns None otherwise, so callers
can skip the native path cleanly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

SPORT_REQUEST_TOPIC = "/api/sport/request"

API_DAMP = 1001
API_BALANCE_STAND = 1002
API_STOP_MOVE = 1003
API_STAND_UP = 1004
API_STAND_DOWN = 1005
API_RECOVERY_STAND = 1006
API_MOVE = 1008


@dataclass(frozen=True)
class SportRequest:
    api_id: int
    parameter: str = ""


def move_request(vx: float, vy: float, vyaw: float) -> SportRequest:
    """Move: body-frame velocity, held by the robot for ~1 s unless renewed or stopped."""
    vals = []
    for v in (vx, vy, vyaw):
        v = float(v)
        vals.append(v if math.isfinite(v) else 0.0)
    return SportRequest(API_MOVE, json.dumps({"x": vals[0], "y": vals[1], "z": vals[2]}))


def stop_move_request() -> SportRequest:
    return SportRequest(API_STOP_MOVE, "")


def load_request_type():
    """The ``unitree_api.msg.Request`` class, or None when unitree_api is not installed."""
    try:
        from unitree_api.msg import Request  # type: ignore
    except Exception:  # ImportError, or a broken typesupport
        return None
    return Request


def to_ros(req: SportRequest, request_type, request_id: int = 0):
    """Fill a ``unitree_api/msg/Request`` (header.identity.id/api_id, parameter)."""
    msg = request_type()
    msg.header.identity.id = int(request_id)
    msg.header.identity.api_id = int(req.api_id)
    msg.parameter = req.parameter
    return msg


def is_stop_request(msg_or_req) -> bool:
    """True for a StopMove request (SportRequest or unitree_api Request)."""
    api_id: Optional[int] = getattr(msg_or_req, "api_id", None)
    if api_id is None:
        api_id = msg_or_req.header.identity.api_id
    return int(api_id) == API_STOP_MOVE
