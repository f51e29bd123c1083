"""Unitree Go2 sport API requests (ROS-free), and how the two real drivers carry them.

A request is an ``api_id`` plus a JSON ``parameter`` (:class:`SportRequest`): Move (1008,
``{"x": vx, "y": vy, "z": vyaw}``, held by the robot for about 1 s unless renewed), StopMove
(1003, empty parameter). Two message types carry one to the robot; the ``fill_*`` functions
write a request into either (the message class is passed in, so this module imports no
message package):

* unitree_ros2: ``unitree_api/msg/Request`` on ``/api/sport/request``; ``header.identity``
  holds the request id and api_id.
* go2_ros2_sdk: ``go2_interfaces/msg/WebRtcReq`` on ``webrtc_req``; the driver forwards
  ``api_id``, ``parameter`` and the robot-side ``topic`` (``rt/api/sport/request``) to the
  robot's data channel and assigns an id when ``id`` is 0.

:func:`decode_move` reads a Move parameter back (the simulator's side of the interface).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Tuple

SPORT_REQUEST_TOPIC = "/api/sport/request"   # unitree_ros2 (ROS topic)
WEBRTC_REQUEST_TOPIC = "webrtc_req"          # go2_ros2_sdk driver's input (ROS topic)
ROBOT_SPORT_TOPIC = "rt/api/sport/request"   # the robot-side topic inside a WebRtcReq

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

    @property
    def is_stop(self) -> bool:
        return self.api_id == API_STOP_MOVE


def move_request(vx: float, vy: float, vyaw: float) -> SportRequest:
    """Move: body-frame velocity (non-finite components become 0)."""
    vals = []
    for v in (vx, vy, vyaw):
        v = float(v)
        vals.append(v if math.isfinite(v) else 0.0)
    return SportRequest(API_MOVE, json.dumps({"x": vals[0], "y": vals[1], "z": vals[2]}))


def stop_move_request() -> SportRequest:
    return SportRequest(API_STOP_MOVE, "")


def decode_move(parameter: str) -> Tuple[float, float, float]:
    """(vx, vy, vyaw) of a Move parameter; ValueError for anything but three finite numbers."""
    try:
        data = json.loads(parameter)
        values = tuple(float(data[k]) for k in ("x", "y", "z"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad Move parameter {parameter!r}: {exc}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"bad Move parameter {parameter!r}: not finite")
    return values


def fill_unitree_request(request_type, req: SportRequest, request_id: int):
    """A ``unitree_api/msg/Request`` for ``req`` (``request_type``: that message class)."""
    msg = request_type()
    msg.header.identity.id = int(request_id)
    msg.header.identity.api_id = int(req.api_id)
    msg.parameter = req.parameter
    return msg


def fill_webrtc_request(webrtc_type, req: SportRequest):
    """A ``go2_interfaces/msg/WebRtcReq`` for ``req``; stops go out as priority requests."""
    msg = webrtc_type()
    msg.id = 0  # the driver assigns one
    msg.topic = ROBOT_SPORT_TOPIC
    msg.api_id = int(req.api_id)
    msg.parameter = req.parameter
    msg.priority = 1 if req.is_stop else 0
    return msg
