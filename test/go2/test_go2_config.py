"""Parameter files match the nodes' tables; the nodes load them (ints where floats are
declared too); the sport API request builders for both driver message types."""

import json
import math
from pathlib import Path

import pytest
import yaml

from go2_vlm_control import sport_api
from specdec_ros.node_runtime import defaults

ROOT = Path(__file__).resolve().parents[2]
NODES = [("go2_vlm_control.controller_node", "go2_vlm_control", "ControllerNode"),
         ("go2_sim.sim_node", "go2_sim", "SimNode")]


@pytest.mark.parametrize("module,node,cls", NODES)
def test_config_matches_node_parameters(module, node, cls):
    mod = pytest.importorskip(module)
    table = defaults(mod.PARAMETERS)
    params = yaml.safe_load((ROOT / f"config/{node}.yaml").read_text())[node]["ros__parameters"]
    assert set(params) == set(table), set(params) ^ set(table)
    for k, v in params.items():
        default = table[k]
        if isinstance(default, bool):
            assert isinstance(v, bool), k
        elif isinstance(default, (int, float)):
            assert isinstance(v, (int, float)) and not isinstance(v, bool), k
            assert v == default, f"{k}: the YAML says {v}, the table {default}"
        else:
            assert isinstance(v, str) and v == default, k


def _node(module, cls, config, *overrides):
    rclpy = pytest.importorskip("rclpy")
    mod = pytest.importorskip(module)
    ctx = rclpy.Context()
    args = ["x", "--ros-args", "--params-file", str(ROOT / config)]
    for o in overrides:
        args += ["-p", o]
    rclpy.init(context=ctx, domain_id=0, args=args)
    try:
        return getattr(mod, cls)(context=ctx), ctx
    except Exception:
        rclpy.shutdown(context=ctx)
        raise


def _close(node, ctx):
    import rclpy
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def test_controller_loads_its_file_ints_for_floats_and_limits_from_the_dataclasses():
    node, ctx = _node("go2_vlm_control.controller_node", "ControllerNode",
                      "config/go2_vlm_control.yaml", "max_vx:=0.5", "deadman_timeout:=5",
                      "max_forward_m:=2", "degraded_speed_scale:=1", "driver:=unitree_sport")
    try:
        cfg = node.core.cfg
        assert node.motion_limits.max_vx == 0.5 and node.motion_limits.rate_hz == 20.0
        assert cfg.deadman_timeout == 5.0 and isinstance(cfg.deadman_timeout, float)
        assert cfg.action_limits.max_forward_m == 2.0 and cfg.degraded_speed_scale == 1.0
        assert node.driver.name == "unitree_sport"
    finally:
        _close(node, ctx)


def test_controller_refuses_an_unknown_driver_in_one_line():
    with pytest.raises(ValueError, match="driver must be one of go2_ros2_sdk, unitree_sport"):
        _node("go2_vlm_control.controller_node", "ControllerNode",
              "config/go2_vlm_control.yaml", "driver:=cmd_vel")


def test_sim_loads_its_file():
    node, ctx = _node("go2_sim.sim_node", "SimNode", "config/go2_sim.yaml", "room_size:=5")
    try:
        assert node.env.world.cfg.room_size == 5.0
        assert node.env.camera.cfg.width == 160
    finally:
        _close(node, ctx)


def test_sport_api_requests():
    from go2_interfaces.msg import WebRtcReq  # the stand-ins scripts/setup.sh builds
    from unitree_api.msg import Request
    m = sport_api.move_request(0.3, -0.1, math.nan)
    assert m.api_id == sport_api.API_MOVE == 1008 and not m.is_stop
    assert json.loads(m.parameter) == {"x": 0.3, "y": -0.1, "z": 0.0}
    assert sport_api.decode_move(m.parameter) == (0.3, -0.1, 0.0)
    s = sport_api.stop_move_request()
    assert s.api_id == 1003 and s.is_stop and s.parameter == ""
    u = sport_api.fill_unitree_request(Request, s, 7)
    assert (u.header.identity.id, u.header.identity.api_id, u.parameter) == (7, 1003, "")
    w = sport_api.fill_webrtc_request(WebRtcReq, s)
    assert (w.id, w.topic, w.api_id, w.parameter, w.priority) == (
        0, "rt/api/sport/request", 1003, "", 1)


@pytest.mark.parametrize("parameter", ['{"x": 1, "y": 0}', "nan", '{"x": NaN, "y": 0, "z": 0}',
                                       '{"x": "fast", "y": 0, "z": 0}', "[1, 2, 3]", ""])
def test_decode_move_refuses_garbage(parameter):
    with pytest.raises(ValueError, match="bad Move parameter"):
        sport_api.decode_move(parameter)


def test_action_status_message_mirrors_the_controller():
    """edge_cloud_vlm_msgs/ActionStatus names the controller's states, stop causes and status
    fields: one set of names on both sides of the topic."""
    from edge_cloud_vlm_msgs.msg import ActionStatus

    from go2_vlm_control import controller

    def constants(prefix):
        return {n[len(prefix):].lower(): getattr(ActionStatus, n)
                for n in dir(ActionStatus) if n.startswith(prefix)}
    assert constants("STATE_") == {s: s for s in controller.STATES}
    assert constants("CAUSE_") == {
        n[len("CAUSE_"):].lower(): getattr(controller, n)
        for n in dir(controller) if n.startswith("CAUSE_")}
    assert set(constants("CAUSE_").values()) == set(controller.STOP_CAUSES)
    fields = set(ActionStatus.get_fields_and_field_types()) - {"header", "driver"}
    assert fields == set(controller.ControllerCore().status())
