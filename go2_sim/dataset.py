"""(image, instruction, ground-truth action) samples from the simulated Go2 (ROS-free).

Episodes are rolled out with the expert (:func:`go2_sim.expert.expert_action`); at each decision
the camera image, the instruction ("go to the red ball") and the expert's action are recorded.
With ``perturb_prob`` the executed action is a random one instead (the label stays the
expert's), so the data also covers recovering from off-path states. Everything is
deterministic from ``seed``.

CLI: ``python -m go2_sim.dataset --out data/go2_nav --episodes 50 --seed 0 [--format npz]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import cv2
import numpy as np

from go2_vlm_control.action_language import format_action, parse_action, try_parse_action
from go2_vlm_control.motion import ActionExecutor, MotionLimits

from .camera import CameraConfig
from .closed_loop import execute_action
from .episode import Go2Episode
from .expert import ExpertConfig, _blocker, expert_action, expert_policy, free_ahead  # noqa: F401  (re-exported)
from .world import WorldConfig

BUMP_AHEAD_M = 1.0  # bump_prob: obstacles closer than this ahead are walked into by this far

__all__ = ["Sample", "generate_samples", "generate_dataset", "save_dataset", "load_dataset",
           "expert_action", "expert_policy"]


@dataclass
class Sample:
    image: np.ndarray        # (H, W, 3) uint8, BGR
    instruction: str
    action: str              # ground truth, in the action language
    meta: dict = field(default_factory=dict)


def _random_action(rng: np.random.Generator) -> str:
    verb = ["forward", "left", "right", "strafe_left", "strafe_right", "backward"][
        int(rng.integers(6))]
    if verb in ("left", "right"):
        return format_action(verb, float(rng.integers(10, 61)))
    if verb == "forward":
        return format_action(verb, float(rng.integers(2, 9)) / 10.0)
    return format_action(verb, float(rng.integers(1, 4)) / 10.0)


def blocked_start(env, rng: np.random.Generator, tries: int = 30) -> bool:
    """Move the robot behind another object on its way to the target, roughly facing the target.

    Expert rollouts rarely get there (the expert plans around objects early), yet it is where a
    learned policy that drifted ends up: pushing forward into an object it cannot pass. Training
    on these starts teaches the way out (strafe / walk around). Returns False, leaving the pose
    as it was, when no object of the room offers such a start.
    """
    w, tgt = env.world, env.target
    robot_r = w.cfg.robot_radius
    others = [o for o in w.objects if o is not tgt]
    saved = w.pose
    for _ in range(tries):
        if not others:
            break
        b = others[int(rng.integers(len(others)))]
        dx, dy = tgt.x - b.x, tgt.y - b.y
        d = math.hypot(dx, dy)
        ux, uy = dx / d, dy / d
        back = b.radius + robot_r + float(rng.uniform(0.05, 0.6))
        side = float(rng.uniform(-0.8, 0.8)) * (b.radius + robot_r)
        x, y = b.x - ux * back - uy * side, b.y - uy * back + ux * side
        if w.collides(x, y, margin=0.05):
            continue
        yaw = math.atan2(tgt.y - y, tgt.x - x) + math.radians(float(rng.normal(0.0, 8.0)))
        w.x, w.y, w.yaw = x, y, yaw
        if env.surface_distance() >= 0.8 and _blocker(env, robot_r, 0.0) is not None:
            return True
        w.x, w.y, w.yaw = saved
    w.x, w.y, w.yaw = saved
    return False


def near_object_start(env, rng: np.random.Generator, same_colour_prob: float = 0.5, tries: int = 30) -> bool:
    """Move the robot close to an object (body 0.05-0.9 m from its surface, roughly facing it): the
    instructed one, or, often, one of the instructed colour and the other shape.

    Expert rollouts reach such close-up views only of the instructed object; a learned policy
    also reaches them for the wrong one and must not say ``done`` there. Labelled for every
    object of the room (same image, other instruction), these frames teach the shape word.
    Returns False, leaving the pose as it was, when no free pose was found.
    """
    w, tgt = env.world, env.target
    robot_r = w.cfg.robot_radius
    twins = [o for o in w.objects if o is not tgt and o.color == tgt.color]
    saved = w.pose
    for _ in range(tries):
        pool = twins if twins and rng.random() < same_colour_prob else w.objects
        obj = pool[int(rng.integers(len(pool)))]
        theta = float(rng.uniform(-math.pi, math.pi))
        r = obj.radius + robot_r + float(rng.uniform(0.05, 0.9))
        x, y = obj.x + r * math.cos(theta), obj.y + r * math.sin(theta)
        if w.collides(x, y, margin=0.02):
            continue
        w.x, w.y = x, y
        w.yaw = math.atan2(obj.y - y, obj.x - x) + math.radians(float(rng.normal(0.0, 12.0)))
        return True
    w.x, w.y, w.yaw = saved
    return False


def rollouts(num_episodes: int, seed: int = 0, max_decisions: int = 30, perturb_prob: float = 0.15,
             camera_config: Optional[CameraConfig] = None, world_config: Optional[WorldConfig] = None,
             expert_config: Optional[ExpertConfig] = None, motion_limits: Optional[MotionLimits] = None,
             blocked_prob: float = 0.0, near_prob: float = 0.0, policy=None, with_info: bool = False,
             bump_prob: float = 0.0):
    """Expert-labelled rollouts: yields ``(env, episode, episode_seed, step, image, info, label)``
    for every decision (``info``: the camera's RenderInfo with ``with_info``, else None).

    Episode seeds derive from ``seed``. A ``perturb_prob`` share of the executed actions are
    random (the label stays the expert's). A ``blocked_prob`` share of the episodes start behind
    another object (:func:`blocked_start`), a ``near_prob`` share close to an object
    (:func:`near_object_start`). A ``bump_prob`` share of the decisions taken with a wall or an
    object less than a full forward step ahead walk into it (``forward`` by the limit): what a
    policy does that cannot see the obstacle; the next frame starts with ``env.last_move_blocked``
    set when the controller stopped that move as stalled. With ``policy`` (``env -> action text``)
    the robot executes the policy's actions instead of the expert's (DAgger: the states a learned
    policy visits); an action that does not parse, a ``stop`` or a ``done`` is replaced by the
    expert's.
    """
    env = Go2Episode(world_config, camera_config)
    executor = ActionExecutor(motion_limits or MotionLimits())
    master = np.random.default_rng([seed, 0xDA7A])
    for ep in range(num_episodes):
        ep_seed = int(master.integers(0, 2 ** 31))
        env.reset(ep_seed)
        rng = np.random.default_rng([ep_seed, 0xBEEF])
        if blocked_prob > 0.0 or near_prob > 0.0:
            start_rng = np.random.default_rng([ep_seed, 0xB10C])
            u = start_rng.random()
            if u < blocked_prob:
                blocked_start(env, start_rng)
            elif u < blocked_prob + near_prob:
                near_object_start(env, start_rng)
        for step in range(max_decisions):
            label = expert_action(env, expert_config)
            image, info = env.render(with_info=True) if with_info else (env.render(), None)
            yield env, ep, ep_seed, step, image, info, label
            if label == "done":
                break
            executed = label
            if policy is not None:
                executed = policy(env)
                action, _ = try_parse_action(executed)
                if action is None or action.verb in ("done", "stop"):
                    executed = label
            if perturb_prob > 0.0 and rng.random() < perturb_prob:
                executed = _random_action(rng)
            if bump_prob > 0.0 and free_ahead(env) < BUMP_AHEAD_M and rng.random() < bump_prob:
                executed = format_action("forward", BUMP_AHEAD_M)
            execute_action(env, parse_action(executed), executor)


def generate_samples(num_episodes: int, seed: int = 0, max_decisions: int = 30,
                     perturb_prob: float = 0.15, camera_config: Optional[CameraConfig] = None,
                     world_config: Optional[WorldConfig] = None,
                     expert_config: Optional[ExpertConfig] = None,
                     motion_limits: Optional[MotionLimits] = None) -> Iterator[Sample]:
    """Yield samples from ``num_episodes`` expert rollouts (episode seeds derived from ``seed``)."""
    for env, ep, ep_seed, step, image, _info, label in rollouts(
            num_episodes, seed, max_decisions, perturb_prob, camera_config, world_config, expert_config,
            motion_limits):
        yield Sample(image=image, instruction=env.instruction, action=label, meta={
            "episode": ep, "episode_seed": ep_seed, "step": step,
            "pose": [round(v, 4) for v in env.world.pose], "target": env.target.name,
            "distance": round(env.surface_distance(), 4),
            "bearing_deg": round(float(np.degrees(env.bearing())), 2),
            "objects": [o.name for o in env.world.objects],
        })


def generate_dataset(num_episodes: int, seed: int = 0, **kwargs) -> List[Sample]:
    return list(generate_samples(num_episodes, seed=seed, **kwargs))


def save_dataset(samples, out_dir: str, fmt: str = "png") -> str:
    """Write ``samples`` under ``out_dir``: ``png`` -> images/NNNNNN.png + samples.jsonl;
    ``npz`` -> dataset.npz (images, instructions, actions, meta JSON). Returns the main file."""
    os.makedirs(out_dir, exist_ok=True)
    samples = list(samples)
    if fmt == "npz":
        path = os.path.join(out_dir, "dataset.npz")
        images = (np.stack([s.image for s in samples]) if samples
                  else np.zeros((0, 0, 0, 3), np.uint8))
        np.savez_compressed(path, images=images,
                            instructions=np.array([s.instruction for s in samples]),
                            actions=np.array([s.action for s in samples]),
                            meta=np.array([json.dumps(s.meta) for s in samples]))
        return path
    if fmt != "png":
        raise ValueError("fmt must be 'png' or 'npz'")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "samples.jsonl")
    with open(path, "w") as f:
        for i, s in enumerate(samples):
            rel = os.path.join("images", f"{i:06d}.png")
            cv2.imwrite(os.path.join(out_dir, rel), s.image)
            f.write(json.dumps({"image": rel, "instruction": s.instruction, "action": s.action,
                                "meta": s.meta}) + "\n")
    return path


def load_dataset(path: str) -> List[Sample]:
    """Read a dataset written by :func:`save_dataset` (its directory or main file)."""
    if os.path.isdir(path):
        npz = os.path.join(path, "dataset.npz")
        path = npz if os.path.exists(npz) else os.path.join(path, "samples.jsonl")
    if path.endswith(".npz"):
        data = np.load(path)
        return [Sample(img, str(ins), str(act), json.loads(str(m))) for img, ins, act, m in
                zip(data["images"], data["instructions"], data["actions"], data["meta"])]
    root = os.path.dirname(path)
    out = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            out.append(Sample(cv2.imread(os.path.join(root, rec["image"]), cv2.IMREAD_COLOR),
                              rec["instruction"], rec["action"], rec.get("meta", {})))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("png", "npz"), default="png")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--perturb", type=float, default=0.15)
    args = ap.parse_args(argv)
    cam = CameraConfig(width=args.width, height=args.height)
    samples = generate_dataset(args.episodes, seed=args.seed, camera_config=cam,
                               perturb_prob=args.perturb)
    path = save_dataset(samples, args.out, args.format)
    counts = {}
    for s in samples:
        verb = s.action.split(" ")[0]
        counts[verb] = counts.get(verb, 0) + 1
    print(json.dumps({"samples": len(samples), "path": path, "verbs": counts}))


if __name__ == "__main__":
    main()
