"""Expert policy in closed loop (ROS-free) and the dataset generator."""

import math
import time

import numpy as np

from go2_sim.closed_loop import evaluate, run_episode
from go2_sim.dataset import generate_dataset, load_dataset, save_dataset
from go2_sim.episode import Go2Episode
from go2_sim.expert import expert_action, expert_policy
from go2_vlm_control.action_language import parse_action


def test_expert_reaches_target_in_closed_loop():
    t0 = time.perf_counter()
    r = evaluate(expert_policy, range(1000, 1030))
    failures = [(x.seed, x.actions[-5:]) for x in r["results"] if not x.success]
    print(f"expert success {r['success_rate']:.3f} over {r['episodes']} episodes, "
          f"{r['mean_decisions']:.1f} decisions/episode, {time.perf_counter() - t0:.1f} s")
    assert r["success_rate"] >= 0.95, failures
    for x in r["results"]:
        assert x.invalid == 0
        if x.success:
            assert x.final_distance <= 0.5 and abs(x.final_bearing_deg) <= 20


def test_policy_without_done_or_with_garbage_fails():
    env = Go2Episode()
    r = run_episode(env, lambda e: "forward 0.5; left 30", seed=3, max_decisions=5)
    assert not r.success and r.invalid == 5
    r = run_episode(env, lambda e: "stop", seed=3, max_decisions=3)
    assert not r.success and not r.said_done


def test_expert_decisions():
    env = Go2Episode()
    env.reset(4)
    t = env.target
    # behind the robot -> search turn
    env.world.yaw = math.atan2(t.y - env.world.y, t.x - env.world.x) + math.pi
    assert expert_action(env).startswith("left ")
    # at the target and facing it -> done
    for ang in np.linspace(0, 2 * math.pi, 24, endpoint=False):
        x, y = t.x + (t.radius + 0.4) * math.cos(ang), t.y + (t.radius + 0.4) * math.sin(ang)
        if not env.world.collides(x, y):
            break
    env.world.x, env.world.y, env.world.yaw = x, y, ang + math.pi
    assert expert_action(env) == "done"
    env.world.yaw = ang + math.pi + math.radians(35)  # close but 35 deg off -> turn right
    assert expert_action(env) == "right 35"


def test_dataset_deterministic_and_roundtrip(tmp_path):
    a = generate_dataset(3, seed=7)
    b = generate_dataset(3, seed=7)
    assert len(a) == len(b) > 5
    assert all(np.array_equal(x.image, y.image) and x.action == y.action for x, y in zip(a, b))
    assert generate_dataset(1, seed=8)[0].meta["episode_seed"] != a[0].meta["episode_seed"]
    for s in a:
        assert s.image.shape == (120, 160, 3) and s.image.dtype == np.uint8
        assert s.instruction.startswith("go to the ")
        parse_action(s.action)  # every label is valid in the action language
    assert a[-1].action == "done"
    for fmt in ("png", "npz"):
        save_dataset(a, str(tmp_path / fmt), fmt)
        back = load_dataset(str(tmp_path / fmt))
        assert [s.action for s in back] == [s.action for s in a]
        assert all(np.array_equal(x.image, y.image) for x, y in zip(back, a))
        assert back[0].meta == a[0].meta


def test_blocked_start_puts_an_object_between_robot_and_target():
    from go2_sim.dataset import blocked_start
    from go2_sim.expert import _blocker

    env = Go2Episode()
    placed = 0
    for seed in range(20):
        env.reset(seed)
        before = env.world.pose
        if not blocked_start(env, np.random.default_rng(seed)):
            assert env.world.pose == before  # nothing found: pose untouched
            continue
        placed += 1
        w = env.world
        assert not w.collides(w.x, w.y)
        assert _blocker(env, w.cfg.robot_radius, 0.0) is not None
        assert abs(math.degrees(env.bearing())) < 45.0  # roughly facing the target
        assert env.surface_distance() >= 0.8
    assert placed >= 15


def test_near_object_start_is_close_to_an_object_and_facing_it():
    from go2_sim.dataset import near_object_start

    env = Go2Episode()
    twins = 0
    for seed in range(30):
        env.reset(seed)
        assert near_object_start(env, np.random.default_rng(seed))
        w = env.world
        assert not w.collides(w.x, w.y)
        faced = [o for o in w.objects if env.surface_distance(o) <= 0.9 + w.cfg.robot_radius + 1e-6
                 and abs(math.degrees(env.bearing(o))) < 50.0]
        assert faced, seed
        twins += any(o is not env.target and o.color == env.target.color for o in faced)
    assert twins >= 3  # the instructed colour's other shape is a frequent choice


def test_search_walks_only_where_the_floor_ahead_is_free():
    from go2_sim.expert import ExpertConfig, free_ahead, search_action

    env = Go2Episode()
    env.reset(4)
    w = env.world
    target, other = w.objects[0], w.objects[1]
    w.objects = [target, other]
    # face +x from the middle of the room with the other object 2 m straight ahead
    w.x, w.y, w.yaw = 0.0, 0.0, 0.0
    other.x, other.y = 2.0, 0.0
    target.x, target.y = -2.0, 0.0   # behind the robot: out of view
    reach = other.radius + w.cfg.robot_radius
    assert math.isclose(free_ahead(env), 2.0 - reach, abs_tol=1e-9)
    other.y = reach + 0.01           # just beside the path: the wall limits it
    assert math.isclose(free_ahead(env), w.half - w.cfg.robot_radius, abs_tol=1e-9)  # 2.7 m
    walk = ExpertConfig(search_walk_m=2.5)
    assert search_action(env, walk) == "forward 1"
    assert search_action(env) == expert_action(env) == "left 60"  # the default searches by turning
    assert expert_action(env, walk) == search_action(env, walk)
    w.x = w.half - 1.0               # 1 m from the wall: turn
    assert search_action(env, walk) == "left 60"


def test_a_motion_the_controller_stops_as_stalled_marks_the_next_decision():
    from go2_sim.closed_loop import execute_action
    from go2_vlm_control.motion import ActionExecutor, MotionLimits

    env = Go2Episode()
    env.reset(4)
    assert not env.last_move_blocked
    w = env.world
    w.objects = [w.objects[0]]
    w.x, w.y, w.yaw = w.half - w.cfg.robot_radius - 0.3, 0.0, 0.0  # 0.3 m from the wall, facing it
    w.objects[0].x, w.objects[0].y = -2.0, 0.0
    executor = ActionExecutor(MotionLimits())
    assert not execute_action(env, parse_action("forward 1"), executor)  # into the wall: stalled
    assert env.last_move_blocked
    assert execute_action(env, parse_action("left 90"), executor)
    assert not env.last_move_blocked
    assert execute_action(env, parse_action("forward 0.5"), executor)  # free floor
    assert not env.last_move_blocked
    env.reset(4)
    assert not env.last_move_blocked


def test_the_episode_counts_turning_in_place_and_the_search_walks_on_after_a_full_circle():
    """``env.turned_deg`` (the prompt's ``{turned}``) adds up turns the executor ran and starts
    over at a translation; with ``relocate_free_m`` the search turns until a full circle, then walks
    on where that much floor is free."""
    from go2_sim.closed_loop import execute_action
    from go2_sim.expert import ExpertConfig, free_ahead, search_action
    from go2_vlm_control.motion import ActionExecutor, MotionLimits
    from specdec.models.prompting import TURNED_AROUND_DEG

    env = Go2Episode()
    env.reset(4)
    w = env.world
    w.objects = [w.objects[0]]
    w.x, w.y, w.yaw = 0.0, 0.0, 0.0
    w.objects[0].x, w.objects[0].y = -2.5, 0.0  # behind the robot: out of view
    executor = ActionExecutor(MotionLimits())
    relocate = ExpertConfig(relocate_free_m=2.5)
    assert search_action(env, relocate) == "left 60"
    for turns in range(6):
        assert env.prompt("{instruction} turned {turned}").endswith("turned little")
        execute_action(env, parse_action("left 60"), executor)
    assert env.turned_deg == TURNED_AROUND_DEG
    assert env.prompt("{instruction} turned {turned}") == f"{env.instruction} turned around"
    assert free_ahead(env) >= 2.5 and search_action(env, relocate) == "forward 1"  # a new place to look from
    assert search_action(env, relocate, turned_deg=0.0) == search_action(env) == "left 60"
    w.x = w.half - 1.0  # the wall 1 m ahead: go on turning until the floor is free
    assert search_action(env, relocate) == "left 60"
    w.x = 0.0
    execute_action(env, parse_action("forward 0.5"), executor)
    assert env.turned_deg == 0.0
    execute_action(env, parse_action("right 30"), executor)
    assert env.turned_deg == 30.0
    env.reset(4)
    assert env.turned_deg == 0.0


def test_bumps_walk_into_what_is_close_ahead():
    from go2_sim.dataset import rollouts

    def blocked_frames(bump_prob):
        return sum(env.last_move_blocked for env, *_ in rollouts(12, seed=3, perturb_prob=0.25, near_prob=0.35,
                                                                 bump_prob=bump_prob))

    assert blocked_frames(0.5) > 3 * max(1, blocked_frames(0.0))


def test_episodes_count_the_decisions_taken_after_a_stall():
    env = Go2Episode()
    walker = run_episode(env, lambda e: "forward 1", seed=4, max_decisions=8)  # a 6 m room: into a wall
    assert 0 < walker.blocked_decisions < walker.decisions and type(walker.blocked_decisions) is int
    assert run_episode(env, expert_policy, seed=4).blocked_decisions == 0
