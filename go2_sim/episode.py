"""ROS-free episode API over the simulated Go2: reset(seed) -> step(twist, dt) -> success().

An episode picks a target object (its colour+shape is unique in the room) and the rest are
distractors; the instruction is "go to the <colour> <shape>". Success: the robot is within
``success_distance`` of the target's surface (measured from the body centre) and facing it
(bearing within ``success_angle_deg``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from specdec.models.prompting import apply_prompt_template

from .camera import Camera, CameraConfig
from .world import SceneObject, World, WorldConfig, wrap_angle


@dataclass
class EpisodeConfig:
    success_distance: float = 0.5
    success_angle_deg: float = 20.0
    min_start_distance: float = 1.2   # target surface at least this far from the start pose
    render_noise: bool = True


def instruction_for(obj: SceneObject) -> str:
    return f"go to the {obj.color} {obj.shape}"


class Go2Episode:
    def __init__(self, world_config: Optional[WorldConfig] = None,
                 camera_config: Optional[CameraConfig] = None,
                 config: Optional[EpisodeConfig] = None):
        self.cfg = config or EpisodeConfig()
        self.world = World(world_config, seed=None)
        self.camera = Camera(camera_config)
        self.target: Optional[SceneObject] = None
        self.seed: Optional[int] = None
        # Whether the last motion was cut short as stalled (the controller's ``stall`` stop): all a
        # front camera cannot show about an obstacle beside or below it (set by closed_loop).
        self.last_move_blocked = False
        # Degrees turned in place since the last translation (prompting.turned_after; set by closed_loop).
        self.turned_deg = 0.0
        self._rng = np.random.default_rng(0)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, seed: int) -> dict:
        """New room, target and start pose from ``seed``; returns :meth:`observation`."""
        rng = np.random.default_rng([seed, 0x60D2])
        for attempt in range(100):
            self.world.reset(int(rng.integers(0, 2 ** 31)))
            target = self.world.objects[int(rng.integers(len(self.world.objects)))]
            if self.surface_distance(target) >= self.cfg.min_start_distance:
                break
        self.target = target
        self.seed = seed
        self.last_move_blocked = False
        self.turned_deg = 0.0
        self._rng = np.random.default_rng([seed, 0xCA3])
        return self.observation(render=False)

    @property
    def instruction(self) -> str:
        return instruction_for(self.target)

    def prompt(self, template: str, instruction: Optional[str] = None, turned_deg: Optional[float] = None) -> str:
        """What a model trained on ``template`` is asked now: ``instruction`` (default: this
        episode's) in the template, ``{last_move}`` from how the last motion ended, ``{turned}``
        from the turning since the last translation (``turned_deg``: another count instead)."""
        return apply_prompt_template(template, self.instruction if instruction is None else instruction,
                                     self.last_move_blocked, self.turned_deg if turned_deg is None else turned_deg)

    @property
    def distractors(self) -> List[SceneObject]:
        return [o for o in self.world.objects if o is not self.target]

    def step(self, twist, dt: float) -> tuple:
        """Send ``twist`` (Velocity, (vx, vy, wz) or a geometry_msgs Twist) as cmd_vel and
        advance ``dt``; ``None`` sends nothing. Returns the pose. Like the real driver, an
        all-zero twist is dropped: use :meth:`stop`."""
        if twist is not None:
            if hasattr(twist, "linear"):
                vals = (twist.linear.x, twist.linear.y, twist.angular.z)
            elif hasattr(twist, "as_tuple"):
                vals = twist.as_tuple()
            else:
                vals = tuple(twist)
            self.world.set_cmd(*vals)
        self.world.step(dt)
        return self.world.pose

    def stop(self) -> None:
        self.world.stop()

    def render(self, with_info: bool = False):
        return self.camera.render(self.world, rng=self._rng if self.cfg.render_noise else None,
                                  with_info=with_info)

    def observation(self, render: bool = True) -> dict:
        return {"image": self.render() if render else None, "instruction": self.instruction,
                "pose": self.world.pose, "target": self.target.name}

    # -- geometry ---------------------------------------------------------------------------
    def surface_distance(self, obj: Optional[SceneObject] = None) -> float:
        obj = obj or self.target
        return math.hypot(obj.x - self.world.x, obj.y - self.world.y) - obj.radius

    def bearing(self, obj: Optional[SceneObject] = None) -> float:
        """Angle (rad) from the robot's heading to ``obj`` (left positive)."""
        obj = obj or self.target
        return wrap_angle(math.atan2(obj.y - self.world.y, obj.x - self.world.x) - self.world.yaw)

    def success(self) -> bool:
        return (self.surface_distance() <= self.cfg.success_distance
                and abs(math.degrees(self.bearing())) <= self.cfg.success_angle_deg)

    def info(self) -> dict:
        return {"seed": self.seed, "instruction": self.instruction, "target": self.target.to_dict(),
                "distance": self.surface_distance(), "bearing_deg": math.degrees(self.bearing()),
                "success": self.success(), "world": self.world.to_dict()}
