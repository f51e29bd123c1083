"""Expert policy (privileged, ROS-free): the action a good driver would emit now.

It reads the true geometry of a :class:`~go2_sim.episode.Go2Episode` and answers in the action
language (see docs/action_language.md), first rule that applies:

1. within ``arrive_distance`` of the target's surface: ``done`` when facing it
   (``face_tol_deg``), else turn toward it (search turn if it is out of view)
2. another object blocks the straight path: when facing the target, strafe to the nearest
   sideways offset with a clear path; otherwise turn toward / walk to the next waypoint of a
   grid path around the obstacles
3. target outside the camera's view: search, ``left <search_turn_deg>`` (with ``search_walk_m``
   set: ``forward`` instead while that much floor ahead is free; with ``relocate_free_m`` set, the
   same once the robot has turned a full circle in place: :func:`search_action`)
4. bearing off by more than ``turn_threshold_deg``: ``left N`` / ``right N`` toward it
5. otherwise ``forward`` by a chunk (<= the action limit) ending ``stop_gap`` short of it
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Optional, Tuple

from go2_vlm_control.action_language import ActionLimits, format_action
from specdec.models.prompting import TURNED_AROUND_DEG

from .world import SceneObject, wrap_angle


@dataclass
class ExpertConfig:
    arrive_distance: float = 0.45    # surface distance at which to say done (< success 0.5)
    face_tol_deg: float = 12.0       # heading error allowed for done (< success 20)
    turn_threshold_deg: float = 10.0
    stop_gap: float = 0.36           # forward chunks aim to end this far from the surface
    min_forward: float = 0.1
    search_turn_deg: float = 60.0
    fov_margin_deg: float = 6.0      # the target counts as in view this far inside the edge
    clearance: float = 0.12          # extra lateral margin around obstacles
    search_walk_m: float = 0.0       # > 0: search by walking while this much floor ahead is free, else turn
    relocate_free_m: float = 0.0     # > 0: after a full circle of turning in place, walk on where this much is free
    limits: ActionLimits = ActionLimits()


def _ceil_to(x: float, step: float) -> float:
    return math.ceil(x / step - 1e-9) * step


def _round_to(x: float, step: float) -> float:
    return round(x / step) * step


def _blocker(env, robot_r: float, clearance: float, pos: Optional[Tuple[float, float]] = None
             ) -> Optional[Tuple[SceneObject, float, float]]:
    """The nearest object on the straight path from ``pos`` (default: the robot) to the
    target: (obj, along, lateral)."""
    w, tgt = env.world, env.target
    px, py = (w.x, w.y) if pos is None else pos
    dx, dy = tgt.x - px, tgt.y - py
    dist = math.hypot(dx, dy)
    ux, uy = dx / dist, dy / dist
    best = None
    for o in w.objects:
        if o is tgt:
            continue
        rx, ry = o.x - px, o.y - py
        along = rx * ux + ry * uy
        lateral = -rx * uy + ry * ux  # left positive
        if 0.0 < along < dist - tgt.radius and abs(lateral) < robot_r + o.radius + clearance:
            if best is None or along < best[1]:
                best = (o, along, lateral)
    return best


def _lateral_fix(env, robot_r: float, cfg: ExpertConfig) -> Optional[str]:
    """Strafe toward the nearest sideways offset from which the straight path is clear (None
    when there is none within 2 m)."""
    w = env.world
    lx, ly = -math.sin(w.yaw), math.cos(w.yaw)  # left unit vector
    best = None
    walled = {1.0: False, -1.0: False}
    for k in range(1, 41):  # offsets 0.05 .. 2.0 m, both sides, nearest first
        for side in (1.0, -1.0):
            if walled[side]:
                continue
            off = side * 0.05 * k
            pos = (w.x + off * lx, w.y + off * ly)
            if w.collides(pos[0], pos[1], margin=0.05):
                walled[side] = True  # the strafe itself would run into something
                continue
            further = (pos[0] + side * 0.05 * lx, pos[1] + side * 0.05 * ly)
            if (_blocker(env, robot_r, cfg.clearance, pos) is None  # clear, with a 5 cm band
                    and _blocker(env, robot_r, cfg.clearance, further) is None):
                best = off
                break
        if best is not None:
            break
    if best is None:
        return None
    mag = min(cfg.limits.max_strafe_m, abs(best))
    return format_action("strafe_left" if best > 0 else "strafe_right", mag)


def _segment_clear(env, p, q, radius: float) -> bool:
    """No object (other than the target) within ``radius`` + its own radius of segment p-q."""
    vx, vy = q[0] - p[0], q[1] - p[1]
    ll = vx * vx + vy * vy
    for o in env.world.objects:
        if o is env.target:
            continue
        t = 0.0 if ll == 0 else max(0.0, min(1.0, ((o.x - p[0]) * vx + (o.y - p[1]) * vy) / ll))
        if math.hypot(p[0] + t * vx - o.x, p[1] + t * vy - o.y) < radius + o.radius:
            return False
    return True


def plan_path(env, robot_r: float, goal_gap: float, cell: float = 0.1):
    """Shortest 8-connected grid path (list of (x, y)) from the robot to a free cell within
    ``goal_gap`` of the target's surface; None when there is none."""
    w, tgt = env.world, env.target
    half = w.half
    n = int(round(2 * half / cell))
    centre = lambda i: -half + (i + 0.5) * cell  # noqa: E731

    def free(i, j):
        return not w.collides(centre(i), centre(j), margin=0.02)

    def goal(i, j):
        return math.hypot(centre(i) - tgt.x, centre(j) - tgt.y) - tgt.radius <= goal_gap

    start = (min(n - 1, max(0, int((w.x + half) / cell))),
             min(n - 1, max(0, int((w.y + half) / cell))))
    dist = {start: 0.0}
    prev = {}
    heap = [(0.0, start)]
    steps = [(di, dj, math.hypot(di, dj)) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    found = None
    while heap:
        d, (i, j) = heapq.heappop(heap)
        if d > dist.get((i, j), math.inf):
            continue
        if (i, j) != start and goal(i, j):
            found = (i, j)
            break
        for di, dj, c in steps:
            a, b = i + di, j + dj
            if 0 <= a < n and 0 <= b < n and free(a, b):
                nd = d + c * cell
                if nd < dist.get((a, b), math.inf):
                    dist[(a, b)] = nd
                    prev[(a, b)] = (i, j)
                    heapq.heappush(heap, (nd, (a, b)))
    if found is None:
        return None
    path = [found]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return [(centre(i), centre(j)) for i, j in reversed(path)]


def search_turn(cfg: Optional[ExpertConfig] = None) -> str:
    """The search turn, ``left <search_turn_deg>`` (within the action limits)."""
    cfg = cfg or ExpertConfig()
    return format_action("left", min(cfg.search_turn_deg, cfg.limits.max_turn_deg))


def _follow_path(env, robot_r: float, cfg: ExpertConfig) -> str:
    w = env.world
    path = plan_path(env, robot_r, cfg.arrive_distance - 0.05)
    if not path:
        return search_turn(cfg)
    here = (w.x, w.y)
    way = path[min(1, len(path) - 1)]
    for p in path[1:]:  # farthest point reachable in a straight line
        if _segment_clear(env, here, p, robot_r + 0.05):
            way = p
    bearing = math.degrees(wrap_angle(math.atan2(way[1] - w.y, way[0] - w.x) - w.yaw))
    if abs(bearing) > cfg.turn_threshold_deg:
        mag = min(cfg.limits.max_turn_deg, float(round(abs(bearing))))
        return format_action("left" if bearing > 0 else "right", mag)
    fwd = min(cfg.limits.max_forward_m, math.hypot(way[0] - w.x, way[1] - w.y))
    return format_action("forward", max(cfg.min_forward, _round_to(fwd, 0.05)))


def free_ahead(env) -> float:
    """How far the robot's body can go straight ahead before it touches a wall or an object."""
    w = env.world
    r = w.cfg.robot_radius
    c, s = math.cos(w.yaw), math.sin(w.yaw)
    free = math.inf
    for direction, pos in ((c, w.x), (s, w.y)):
        if abs(direction) > 1e-9:
            free = min(free, ((w.half if direction > 0 else -w.half) - pos) / direction - r)
    for o in w.objects:
        rx, ry = o.x - w.x, o.y - w.y
        along, lateral = rx * c + ry * s, -rx * s + ry * c
        reach = o.radius + r
        if along > 0.0 and abs(lateral) < reach:
            free = min(free, along - math.sqrt(reach * reach - lateral * lateral))
    return max(0.0, free)


def search_action(env, cfg: Optional[ExpertConfig] = None, turned_deg: Optional[float] = None) -> str:
    """What to do while the target is not in sight. Turning in place sweeps the room but never
    looks behind an object; with ``cfg.search_walk_m`` the robot walks on while the floor ahead is
    free for that far (an image shows it), so the view changes and hidden objects come out. With
    ``cfg.relocate_free_m`` it turns first and walks on (where that much floor is free) only once
    it has turned a full circle since it last walked (``env.turned_deg``, or ``turned_deg``)."""
    cfg = cfg or ExpertConfig()
    walk_m = cfg.search_walk_m
    turned = env.turned_deg if turned_deg is None else turned_deg
    if cfg.relocate_free_m > 0.0 and turned >= TURNED_AROUND_DEG:
        walk_m = cfg.relocate_free_m
    if walk_m > 0.0 and free_ahead(env) >= walk_m:
        return format_action("forward", cfg.limits.max_forward_m)
    return search_turn(cfg)


def in_view(env, margin_deg: float = 0.0) -> bool:
    """Whether the target's centre is inside the camera's horizontal field of view."""
    half = env.camera.cfg.hfov_deg / 2.0 - margin_deg
    return abs(math.degrees(env.bearing())) <= half


def expert_action(env, cfg: Optional[ExpertConfig] = None) -> str:
    """The expert's action for the current state of ``env`` (a Go2Episode)."""
    cfg = cfg or ExpertConfig()
    lim = cfg.limits
    bearing = math.degrees(env.bearing())
    gap = env.surface_distance()

    def turn(deg: float) -> str:
        mag = min(lim.max_turn_deg, max(1.0, float(round(abs(deg)))))
        return format_action("left" if deg > 0 else "right", mag)

    visible = in_view(env, cfg.fov_margin_deg)
    search = search_turn(cfg)
    if gap <= cfg.arrive_distance:
        if abs(bearing) <= cfg.face_tol_deg:
            return "done"
        return turn(bearing) if visible else search
    robot_r = env.world.cfg.robot_radius
    block = _blocker(env, robot_r, cfg.clearance)
    if block is not None:
        if visible and abs(bearing) <= cfg.turn_threshold_deg:
            side = _lateral_fix(env, robot_r, cfg)
            if side is not None:
                return side
        return _follow_path(env, robot_r, cfg)
    if not visible:
        return search_action(env, cfg)
    if abs(bearing) > cfg.turn_threshold_deg:
        return turn(bearing)
    fwd = min(lim.max_forward_m, gap - cfg.stop_gap)
    fwd = max(cfg.min_forward, _round_to(fwd, 0.05))
    return format_action("forward", fwd)


def expert_policy(env) -> str:
    """Policy callable for :func:`go2_sim.closed_loop.run_episode` (default ExpertConfig)."""
    return expert_action(env)
