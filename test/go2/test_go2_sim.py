"""Simulated Go2 (ROS-free): kinematics and driver semantics, camera projection and occlusion."""

import math

import numpy as np
import pytest

from go2_sim.camera import Camera, CameraConfig
from go2_sim.episode import Go2Episode
from go2_sim.world import SceneObject, World, WorldConfig


def _empty_world(**kw):
    w = World(WorldConfig(min_objects=0, max_objects=0, **kw), seed=None)
    w.reset(0, objects=[], pose=(0.0, 0.0, 0.0))
    return w


def _run(w, seconds, dt=0.02, cmd=None):
    for _ in range(int(round(seconds / dt))):
        if cmd is not None:
            w.set_cmd(*cmd)
        w.step(dt)


def test_kinematics_body_frame():
    w = _empty_world(response_tau=0.0)
    w.yaw = math.pi / 2
    _run(w, 1.0, cmd=(0.5, 0.0, 0.0))
    assert (w.x, w.y) == pytest.approx((0.0, 0.5), abs=1e-6)
    _run(w, 1.0, cmd=(0.0, 0.2, 0.0))  # strafe left while facing +y -> -x
    assert (w.x, w.y) == pytest.approx((-0.2, 0.5), abs=1e-6)
    _run(w, 1.0, cmd=(0.0, 0.0, -1.0))
    assert w.yaw == pytest.approx(math.pi / 2 - 1.0, abs=1e-6)


def test_real_limits_timeout_zero_drop_and_stop():
    w = _empty_world(response_tau=0.0)
    w.set_cmd(10.0, -5.0, 9.0)
    assert tuple(w.cmd) == (3.8, -1.0, 4.0)
    w.set_cmd(-10.0, 0.0, -9.0)
    assert tuple(w.cmd) == (-2.5, 0.0, -4.0)
    assert not w.set_cmd(math.nan, 0.0, 0.0)
    # command timeout: one command, then silence -> moves for 0.5 s only
    w = _empty_world(response_tau=0.0)
    w.set_cmd(0.4, 0.0, 0.0)
    _run(w, 2.0)
    assert w.x == pytest.approx(0.4 * 0.5, abs=0.03)
    # the driver drops all-zero Twists: the robot keeps going until the timeout
    w = _empty_world(response_tau=0.0)
    _run(w, 0.2, cmd=(0.5, 0.0, 0.0))
    assert w.set_cmd(0.0, 0.0, 0.0) is False
    _run(w, 0.2)
    assert w.v[0] == 0.5
    w.stop()  # explicit stop works at once
    _run(w, 0.1)
    assert w.v[0] == 0.0
    # with the drop disabled a zero Twist stops too
    w = _empty_world(response_tau=0.0, drop_zero_twist=False)
    _run(w, 0.2, cmd=(0.5, 0.0, 0.0))
    assert w.set_cmd(0.0, 0.0, 0.0)
    _run(w, 0.04)
    assert w.v[0] == 0.0


def test_walls_and_objects_block():
    w = _empty_world(response_tau=0.0)
    _run(w, 10.0, cmd=(1.0, 0.0, 0.0))
    assert w.x == pytest.approx(3.0 - w.cfg.robot_radius, abs=0.03) and w.collided
    w.reset(0, objects=[SceneObject("red", "ball", 1.0, 0.0, 0.2)], pose=(0.0, 0.0, 0.0))
    _run(w, 3.0, cmd=(1.0, 0.0, 0.0))
    assert w.x <= 1.0 - 0.2 - w.cfg.robot_radius + 1e-9


def test_scene_from_seed():
    a, b = World(seed=5), World(seed=5)
    assert [o.to_dict() for o in a.objects] == [o.to_dict() for o in b.objects]
    assert a.pose == b.pose
    names = [o.name for o in a.objects]
    assert len(names) == len(set(names)) and 3 <= len(names) <= 6
    for o in a.objects:
        assert abs(o.x) < 3.0 - 0.4 and abs(o.y) < 3.0 - 0.4
    assert not a.collides(a.x, a.y)


def _scene(objects, pose=(0.0, 0.0, 0.0)):
    w = World(seed=None)
    w.reset(0, objects=objects, pose=pose)
    return w


def test_camera_renders_target_in_front_when_facing_it():
    cam = Camera(CameraConfig(width=160, height=120))
    ball = SceneObject("red", "ball", 1.5, 0.0, 0.18)
    w = _scene([ball, SceneObject("blue", "box", -1.5, 1.0, 0.15)])
    img, info = cam.render(w, with_info=True)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert info.visible_pixels["red ball"] > 40 and info.visible_pixels["blue box"] == 0
    ys, xs = np.nonzero(info.ids == 0)
    assert abs(xs.mean() - 80) < 6      # centred horizontally
    assert ys.mean() > 60               # below the horizon (the ball sits on the floor)
    pix = img[info.ids == 0].astype(float).mean(axis=0)  # BGR: red dominates
    assert pix[2] > pix[1] + 60 and pix[2] > pix[0] + 60
    # turned away: not visible; turned 30 deg left: it appears right of centre
    img2, info2 = cam.render(w, pose=(0.0, 0.0, math.pi), with_info=True)
    assert info2.visible_pixels["red ball"] == 0 and info2.visible_pixels["blue box"] > 0
    _, info3 = cam.render(w, pose=(0.0, 0.0, math.radians(30)), with_info=True)
    assert np.nonzero(info3.ids == 0)[1].mean() > 100


def test_perspective_size_shrinks_with_distance():
    cam = Camera()
    counts = []
    for d in (1.0, 2.0, 2.6):
        w = _scene([SceneObject("green", "box", d, 0.0, 0.15)], pose=(0.0, 0.0, 0.0))
        counts.append(cam.render(w, with_info=True)[1].visible_pixels["green box"])
    assert counts[0] > 2.5 * counts[1] > 0 and counts[1] > counts[2] > 0


def test_occlusion_nearer_object_hides_farther():
    cam = Camera()
    far_ball = SceneObject("yellow", "ball", 2.5, 0.0, 0.12)
    near_box = SceneObject("blue", "box", 1.2, 0.0, 0.2)
    alone = _scene([far_ball])
    both = _scene([far_ball, near_box])
    n_alone = cam.render(alone, with_info=True)[1].visible_pixels["yellow ball"]
    _, info = cam.render(both, with_info=True)
    assert n_alone > 10
    assert info.visible_pixels["yellow ball"] == 0 and info.visible_pixels["blue box"] > n_alone
    # depth ordering: object pixels are nearer than the wall behind them
    assert info.depth[info.ids == 1].max() < info.depth[info.ids == -3].min()
    # step aside: the ball shows again
    side = cam.render(both, pose=(0.0, 0.8, -math.radians(18)), with_info=True)[1]
    assert side.visible_pixels["yellow ball"] > 5


def test_lighting_noise_is_seeded():
    cam = Camera()
    w = World(seed=2)
    a = cam.render(w, rng=np.random.default_rng(7))
    b = cam.render(w, rng=np.random.default_rng(7))
    c = cam.render(w, rng=np.random.default_rng(8))
    clean = cam.render(w)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 1.0 < np.abs(a.astype(int) - clean.astype(int)).mean() < 40


def test_camera_intrinsics():
    cfg = CameraConfig(width=1280, height=720, hfov_deg=90.0, supersample=1)
    assert cfg.fx == pytest.approx(640.0) and cfg.cx == 640.0 and cfg.cy == 360.0
    assert len(cfg.k_matrix()) == 9 and len(cfg.p_matrix()) == 12


def test_episode_api():
    env = Go2Episode()
    obs = env.reset(11)
    assert obs["instruction"] == f"go to the {env.target.color} {env.target.shape}"
    assert env.target not in env.distractors and len(env.distractors) >= 2
    assert env.surface_distance() >= env.cfg.min_start_distance
    env2 = Go2Episode()
    env2.reset(11)
    assert env2.world.pose == env.world.pose and env2.target.name == env.target.name
    assert np.array_equal(env.render(), env2.render())
    assert not env.success()
    # put the robot 0.4 m from the target's surface, facing it
    t = env.target
    for ang in np.linspace(0, 2 * math.pi, 16, endpoint=False):
        x = t.x + (t.radius + 0.4) * math.cos(ang)
        y = t.y + (t.radius + 0.4) * math.sin(ang)
        if not env.world.collides(x, y):
            break
    env.world.x, env.world.y, env.world.yaw = x, y, ang + math.pi
    assert env.success()
    env.world.yaw = ang  # facing away
    assert not env.success()
    env.world.yaw = ang + math.pi
    pose = env.step((0.5, 0.0, 0.0), 0.1)
    assert pose != (x, y, ang + math.pi)
