"""ROS-free closed loop: policy -> action text -> parser -> motion executor -> simulated Go2.

The loop mirrors the real stack: every decision is parsed by the controller's strict parser
(invalid -> stop), motions run through :class:`~go2_vlm_control.motion.ActionExecutor` at the
control rate with odometry feedback, and every action ends with an explicit stop (the driver
drops zero Twists). An episode succeeds when the policy says ``done`` while
``Go2Episode.success()`` holds.

``policy(env) -> str``: the expert is :func:`go2_sim.expert.expert_policy`; a VLM policy would
be ``lambda env: vlm(env.render(), env.instruction)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

from go2_vlm_control.action_language import ActionLimits, try_parse_action
from go2_vlm_control.motion import ActionExecutor, MotionLimits, Pose2D
from specdec.models.prompting import turned_after

from .episode import Go2Episode

Policy = Callable[[Go2Episode], str]


@dataclass
class EpisodeResult:
    seed: int
    success: bool            # said done while at the target
    reached: bool            # at the target at the end, whatever the policy said
    said_done: bool
    decisions: int
    invalid: int
    sim_time: float
    final_distance: float
    final_bearing_deg: float
    actions: List[str] = field(default_factory=list)
    blocked_decisions: int = 0  # decisions taken right after a motion that stalled


def execute_action(env: Go2Episode, action, executor: ActionExecutor, use_odom: bool = True,
                   settle_time: float = 0.2) -> bool:
    """Run one parsed motion to completion on ``env``; returns False when it stalled (and sets
    ``env.last_move_blocked`` to that, and counts it into ``env.turned_deg``)."""
    dt = executor.limits.dt
    pose = (lambda: Pose2D(*env.world.pose)) if use_odom else (lambda: None)
    executor.start(action, pose())
    for _ in range(100000):
        r = executor.step(pose())
        if r.done:
            break
        env.step(r.velocity, dt)
    env.stop()
    t = 0.0
    while t < settle_time - 1e-9:
        env.step(None, dt)
        t += dt
    env.last_move_blocked = bool(executor.timed_out)
    env.turned_deg = turned_after(env.turned_deg, action.verb, action.value)
    return not executor.timed_out


def run_episode(env: Go2Episode, policy: Policy, seed: int, max_decisions: int = 40,
                motion_limits: Optional[MotionLimits] = None,
                action_limits: Optional[ActionLimits] = None, use_odom: bool = True,
                on_decision: Optional[Callable[[Go2Episode, str], None]] = None) -> EpisodeResult:
    env.reset(seed)
    executor = ActionExecutor(motion_limits or MotionLimits())
    actions: List[str] = []
    invalid = 0
    said_done = False
    blocked = 0
    for _ in range(max_decisions):
        blocked += env.last_move_blocked
        text = policy(env)
        if on_decision is not None:
            on_decision(env, text)
        actions.append(text)
        action, _reason = try_parse_action(text, action_limits)
        if action is None:
            invalid += 1
            env.stop()
            env.last_move_blocked = False
            continue
        if action.verb == "done":
            said_done = True
            break
        if action.verb == "stop":
            env.stop()
            env.last_move_blocked = False
            continue
        execute_action(env, action, executor, use_odom)
    reached = env.success()
    return EpisodeResult(seed=seed, success=said_done and reached, reached=reached,
                         said_done=said_done, decisions=len(actions), invalid=invalid,
                         sim_time=env.world.t, final_distance=env.surface_distance(),
                         final_bearing_deg=math.degrees(env.bearing()), actions=actions,
                         blocked_decisions=blocked)


def evaluate(policy: Policy, seeds: Iterable[int], env: Optional[Go2Episode] = None,
             **kwargs) -> dict:
    """Run ``policy`` on each seed; returns success_rate, mean decisions and the results."""
    env = env or Go2Episode()
    t0 = time.perf_counter()
    results = [run_episode(env, policy, int(s), **kwargs) for s in seeds]
    n = max(1, len(results))
    return {
        "episodes": len(results),
        "success_rate": sum(r.success for r in results) / n,
        "reached_rate": sum(r.reached for r in results) / n,
        "mean_decisions": sum(r.decisions for r in results) / n,
        "wall_s": time.perf_counter() - t0,
        "results": results,
    }
