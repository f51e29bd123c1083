"""How the controller commands a Go2: one class per real driver interface (parameter ``driver``).

Each driver turns the controller's three requests into that interface's messages:

============== ============================== ========================================= ============
driver         move (every control period)    stop (every stop event)                   idle
============== ============================== ========================================= ============
go2_ros2_sdk   Twist on cmd_vel (twist_mux)   StopMove WebRtcReq on webrtc_req, and a   zero Twist
                                              zero Twist for any other cmd_vel listener (optional)
unitree_sport  Move Request on                StopMove Request on /api/sport/request    nothing
               /api/sport/request
twist_only     Twist on cmd_vel               zero Twist                                zero Twist
                                                                                        (optional)
============== ============================== ========================================= ============

Why: go2_ros2_sdk drops all-zero Twists and the robot holds its last Move for about 1 s, so a
stop has to be an explicit StopMove; unitree_ros2 has no cmd_vel at all. ``twist_only`` is for
drivers that stop on a zero Twist. A driver whose message package cannot be imported refuses
to start (:class:`DriverUnavailable`): the controller never runs without a way to stop.
"""

from __future__ import annotations

import importlib
import itertools
import time

from geometry_msgs.msg import Twist

from specdec_ros.qos import COMMAND_QOS

from . import sport_api
from .motion import Velocity

DRIVERS = ("go2_ros2_sdk", "unitree_sport", "twist_only")


class DriverUnavailable(RuntimeError):
    """The driver's message package is not installed."""


def import_message(module: str, name: str, user: str, source: str):
    """``module.name`` (a message class), or DriverUnavailable naming who needs it and where
    it comes from."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DriverUnavailable(
            f"{user} needs {module.replace('.msg', '')}/msg/{name} ({source}); source the "
            f"workspace that builds it ({type(exc).__name__}: {exc})") from None


def twist(v: Velocity) -> Twist:
    t = Twist()
    t.linear.x, t.linear.y, t.angular.z = float(v.vx), float(v.vy), float(v.wz)
    return t


class TwistOnly:
    name = "twist_only"

    def __init__(self, node, params: dict):
        self.cmd_pub = node.create_publisher(Twist, str(params["cmd_vel_topic"]), COMMAND_QOS)
        self.publish_idle_twist = bool(params["publish_idle_twist"])
        self.moves = 0
        self.stops = 0

    @property
    def stop_publisher(self):
        """The publisher a stop must reach the robot through (diagnostics check it is heard)."""
        return self.cmd_pub

    def move(self, v: Velocity) -> None:
        self.moves += 1
        self.cmd_pub.publish(twist(v))

    def idle(self) -> None:
        if self.publish_idle_twist:
            self.cmd_pub.publish(Twist())

    def stop(self) -> None:
        self.stops += 1
        self.cmd_pub.publish(Twist())


class Go2RosSdk(TwistOnly):
    name = "go2_ros2_sdk"

    def __init__(self, node, params: dict):
        super().__init__(node, params)
        self.webrtc_type = import_message("go2_interfaces.msg", "WebRtcReq",
                                          f"driver {self.name}", "go2_ros2_sdk's go2_interfaces")
        self.request_pub = node.create_publisher(
            self.webrtc_type, str(params["webrtc_request_topic"]), COMMAND_QOS)

    @property
    def stop_publisher(self):
        return self.request_pub

    def stop(self) -> None:
        super().stop()  # the driver drops it; anything else on cmd_vel stops too
        self.request_pub.publish(
            sport_api.fill_webrtc_request(self.webrtc_type, sport_api.stop_move_request()))


class UnitreeSport:
    name = "unitree_sport"

    def __init__(self, node, params: dict):
        self.request_type = import_message("unitree_api.msg", "Request", f"driver {self.name}",
                                           "unitree_ros2's unitree_api")
        self.request_pub = node.create_publisher(
            self.request_type, str(params["sport_request_topic"]), COMMAND_QOS)
        # request ids only need to be unique; start from the clock so a restart does not reuse
        self._ids = itertools.count(int(time.time() * 1000))
        self.moves = 0
        self.stops = 0

    @property
    def stop_publisher(self):
        return self.request_pub

    def _send(self, req: sport_api.SportRequest) -> None:
        self.request_pub.publish(
            sport_api.fill_unitree_request(self.request_type, req, next(self._ids)))

    def move(self, v: Velocity) -> None:
        self.moves += 1
        self._send(sport_api.move_request(v.vx, v.vy, v.wz))

    def idle(self) -> None:
        pass  # a Move(0, 0, 0) stream would keep the robot in a commanded stand

    def stop(self) -> None:
        self.stops += 1
        self._send(sport_api.stop_move_request())


_CLASSES = {cls.name: cls for cls in (Go2RosSdk, UnitreeSport, TwistOnly)}


def make_driver(node, params: dict):
    """The driver named by ``params["driver"]``; ValueError / DriverUnavailable otherwise."""
    name = str(params["driver"])
    if name not in _CLASSES:
        raise ValueError(f"parameter driver must be one of {', '.join(DRIVERS)}, not {name!r}")
    return _CLASSES[name](node, params)
