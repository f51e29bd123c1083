"""Simulated Go2 world (ROS-free): a walled room, coloured objects, a kinematic robot.

The robot integrates body-frame velocity commands like the Go2 behind the go2_ros2_sdk
driver: commands are clamped to the real robot's limits, a command older than
``cmd_timeout`` (twist_mux's 0.5 s) is dropped, an all-zero command is ignored when
``drop_zero_twist`` is set (the driver does that, so stopping needs :meth:`World.stop`), and
the body follows the command with a first-order lag ``response_tau``. Walls and objects block
the robot (a circle of ``robot_radius``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

# name -> BGR base colour
COLORS = {
    "red": (40, 40, 210),
    "green": (50, 170, 40),
    "blue": (200, 90, 30),
    "yellow": (30, 210, 225),
}
SHAPES = ("ball", "box")

GO2_VX_MIN, GO2_VX_MAX = -2.5, 3.8
GO2_VY_MAX = 1.0
GO2_WZ_MAX = 4.0


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@dataclass
class SceneObject:
    color: str
    shape: str          # "ball" or "box"
    x: float
    y: float
    size: float         # ball: radius; box: half side (a cube resting on the floor)
    yaw: float = 0.0    # box orientation

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        """Footprint radius used for collisions and distances."""
        return self.size if self.shape == "ball" else self.size * math.sqrt(2.0)

    @property
    def height(self) -> float:
        return 2.0 * self.size

    def to_dict(self) -> dict:
        return {"name": self.name, "color": self.color, "shape": self.shape, "x": self.x,
                "y": self.y, "size": self.size, "yaw": self.yaw}


@dataclass
class WorldConfig:
    room_size: float = 6.0          # square room, walls at +-room_size/2
    wall_height: float = 1.0
    min_objects: int = 3
    max_objects: int = 6
    ball_radius: Tuple[float, float] = (0.12, 0.2)
    box_half: Tuple[float, float] = (0.1, 0.18)
    robot_radius: float = 0.3
    wall_margin: float = 0.5        # objects keep this far from the walls
    object_spacing: float = 0.5     # free space between object footprints
    cmd_timeout: float = 0.5        # s (twist_mux timeout in go2_ros2_sdk)
    response_tau: float = 0.1       # s first-order lag of the body velocity
    drop_zero_twist: bool = True    # the go2_ros2_sdk driver ignores all-zero Twists
    vx_limits: Tuple[float, float] = (GO2_VX_MIN, GO2_VX_MAX)
    vy_max: float = GO2_VY_MAX
    wz_max: float = GO2_WZ_MAX


class World:
    def __init__(self, config: Optional[WorldConfig] = None, seed: Optional[int] = 0):
        self.cfg = config or WorldConfig()
        self.objects: List[SceneObject] = []
        self.t = 0.0
        self.x = self.y = self.yaw = 0.0
        self.v = np.zeros(3)       # actual body velocity (vx, vy, wz)
        self.cmd = np.zeros(3)     # commanded body velocity
        self.cmd_time = -math.inf
        self.stops = 0
        self.collided = False
        if seed is not None:
            self.reset(seed)

    # -- scene ------------------------------------------------------------------------------
    @property
    def half(self) -> float:
        return self.cfg.room_size / 2.0

    def reset(self, seed: int, objects: Optional[List[SceneObject]] = None,
              pose: Optional[Tuple[float, float, float]] = None) -> None:
        """Place objects (distinct colour+shape) and the robot from ``seed``."""
        rng = np.random.default_rng(seed)
        self.t = 0.0
        self.v[:] = 0.0
        self.cmd[:] = 0.0
        self.cmd_time = -math.inf
        self.collided = False
        if objects is None:
            objects = self._place_objects(rng)
        self.objects = list(objects)
        if pose is None:
            pose = self._free_pose(rng)
        self.x, self.y, self.yaw = float(pose[0]), float(pose[1]), wrap_angle(float(pose[2]))

    def _place_objects(self, rng) -> List[SceneObject]:
        cfg = self.cfg
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        combos = [(c, s) for c in COLORS for s in SHAPES]
        picks = rng.permutation(len(combos))[:n]
        out: List[SceneObject] = []
        lim = self.half - cfg.wall_margin
        for k in picks:
            color, shape = combos[int(k)]
            lo, hi = cfg.ball_radius if shape == "ball" else cfg.box_half
            for _ in range(200):
                obj = SceneObject(color, shape, float(rng.uniform(-lim, lim)),
                                  float(rng.uniform(-lim, lim)), float(rng.uniform(lo, hi)),
                                  float(rng.uniform(-math.pi / 4, math.pi / 4)))
                if all(math.hypot(obj.x - o.x, obj.y - o.y) > obj.radius + o.radius
                       + cfg.object_spacing for o in out):
                    out.append(obj)
                    break
        return out

    def _free_pose(self, rng) -> Tuple[float, float, float]:
        lim = self.half - self.cfg.robot_radius - 0.2
        for _ in range(500):
            x, y = rng.uniform(-lim, lim, size=2)
            if not self.collides(x, y, margin=0.3):
                return float(x), float(y), float(rng.uniform(-math.pi, math.pi))
        raise RuntimeError("no free pose for the robot")

    def collides(self, x: float, y: float, margin: float = 0.0) -> bool:
        r = self.cfg.robot_radius + margin
        if abs(x) > self.half - r or abs(y) > self.half - r:
            return True
        return any(math.hypot(x - o.x, y - o.y) < r + o.radius for o in self.objects)

    def find(self, name: str) -> Optional[SceneObject]:
        for o in self.objects:
            if o.name == name:
                return o
        return None

    # -- robot ------------------------------------------------------------------------------
    @property
    def pose(self) -> Tuple[float, float, float]:
        return (self.x, self.y, self.yaw)

    def set_cmd(self, vx: float, vy: float, wz: float) -> bool:
        """A cmd_vel Twist; returns False when it was dropped (non-finite, or all zero)."""
        vals = [float(vx), float(vy), float(wz)]
        if not all(math.isfinite(v) for v in vals):
            return False
        if self.cfg.drop_zero_twist and all(v == 0.0 for v in vals):
            return False
        lo, hi = self.cfg.vx_limits
        self.cmd[:] = (min(hi, max(lo, vals[0])),
                       min(self.cfg.vy_max, max(-self.cfg.vy_max, vals[1])),
                       min(self.cfg.wz_max, max(-self.cfg.wz_max, vals[2])))
        self.cmd_time = self.t
        return True

    def stop(self) -> None:
        """Explicit stop (StopMove / stop topic): the command becomes zero at once."""
        self.cmd[:] = 0.0
        self.cmd_time = -math.inf
        self.stops += 1

    def step(self, dt: float) -> None:
        """Advance the robot by ``dt`` seconds."""
        if dt <= 0.0:
            return
        target = self.cmd if self.t - self.cmd_time <= self.cfg.cmd_timeout else np.zeros(3)
        tau = self.cfg.response_tau
        alpha = 1.0 if tau <= 0.0 else 1.0 - math.exp(-dt / tau)
        self.v += alpha * (target - self.v)
        self.v[np.abs(self.v) < 1e-6] = 0.0
        vx, vy, wz = self.v
        mid = self.yaw + 0.5 * wz * dt
        dx = (vx * math.cos(mid) - vy * math.sin(mid)) * dt
        dy = (vx * math.sin(mid) + vy * math.cos(mid)) * dt
        self.collided = False
        nx, ny = self.x + dx, self.y + dy
        if not self.collides(nx, ny):
            self.x, self.y = nx, ny
        elif not self.collides(nx, self.y):  # slide along the obstacle
            self.x = nx
            self.collided = True
        elif not self.collides(self.x, ny):
            self.y = ny
            self.collided = True
        else:
            self.collided = True
        self.yaw = wrap_angle(self.yaw + wz * dt)
        self.t += dt

    def world_velocity(self) -> Tuple[float, float]:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return (self.v[0] * c - self.v[1] * s, self.v[0] * s + self.v[1] * c)

    def to_dict(self) -> dict:
        return {"t": self.t, "pose": list(self.pose),
                "objects": [o.to_dict() for o in self.objects], "room_size": self.cfg.room_size}
