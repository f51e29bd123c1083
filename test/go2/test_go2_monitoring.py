"""Monitoring outputs, in-process with real message types: the shared /diagnostics helper
(specdec_ros.diagnostics: names "<node>: <task>", the node's hardware_id, levels from the current
state and back to OK when the fault clears, a failing check reported as ERROR without hiding the
others), the simulator's report, and the controller's path."""

import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from specdec_ros.diagnostics import ERROR, OK, WARN, Diagnostics, Report, to_status  # noqa: E402


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=0)
    yield ctx
    rclpy.shutdown(context=ctx)


def test_statuses_follow_the_state_and_survive_a_broken_check(context):
    node = rclpy.create_node("some_node", context=context)
    try:
        state = {"fault": False}
        diag = Diagnostics(node, hardware_id="go2 via test")
        diag.add("safety", lambda: Report(WARN, "fault", {"n": 3}) if state["fault"]
                 else Report(OK, "ok", {"n": 0, "degraded": False, "x": 0.5}))
        diag.add("broken", lambda: 1 / 0)
        first = diag.statuses()
        assert [s.name for s in first] == ["some_node: safety", "some_node: broken"]
        assert all(s.hardware_id == "go2 via test" for s in first)
        assert first[0].level == OK and {(kv.key, kv.value) for kv in first[0].values} == {
            ("n", "0"), ("degraded", "false"), ("x", "0.500")}
        assert first[1].level == ERROR and "ZeroDivisionError" in first[1].message
        state["fault"] = True
        assert diag.statuses()[0].level == WARN
        state["fault"] = False
        assert diag.statuses()[0].level == OK  # back to OK once the fault clears
        diag.publish()  # does not raise with a broken check registered
    finally:
        node.destroy_node()


def test_to_status_levels_are_diagnostic_msgs_levels():
    assert (OK, WARN, ERROR) == (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
    s = to_status("n: t", "hw", Report(ERROR, "boom"))
    assert (s.name, s.hardware_id, s.level, s.message, list(s.values)) == (
        "n: t", "hw", ERROR, "boom", [])


def test_simulator_reports_collisions_until_they_clear(context):
    from go2_sim.sim_node import SimNode
    node = SimNode(context=context)
    try:
        (status,) = node.diagnostics.statuses()
        assert (status.name, status.hardware_id, status.level) == (
            "go2_sim: robot", "simulated go2", OK)
        node.env.world.collided = True
        (status,) = node.diagnostics.statuses()
        assert status.level == WARN and "collision" in status.message
        node.env.world.collided = False
        assert node.diagnostics.statuses()[0].level == OK
        keys = {kv.key for kv in status.values}
        assert {"seed", "stops", "last_stop_via", "target_distance_m"} <= keys
    finally:
        node.destroy_node()


def _odom(x, y, frame="odom"):
    from nav_msgs.msg import Odometry
    m = Odometry()
    m.header.frame_id, m.child_frame_id = frame, "base_link"
    m.pose.pose.position.x, m.pose.pose.position.y = x, y
    m.pose.pose.orientation.w = 1.0
    return m


def test_controller_path_grows_with_motion_and_restarts_with_a_new_instruction(context):
    from edge_cloud_vlm_msgs.msg import DecodedAction

    from go2_vlm_control.controller_node import PATH_STEP_M, ControllerNode
    node = ControllerNode(context=context)
    try:
        def decide(i, instruction):
            m = DecodedAction(decision_id=i, text="stop", valid=True, action="stop",
                              instruction=instruction)
            m.header.stamp = node.get_clock().now().to_msg()
            node._on_action(m)
        decide(1, "go to the red ball")
        for k in range(10):  # 10 odometry samples 1 cm apart: 0.09 m in all
            node._on_odom(_odom(0.01 * k, 0.0))
        assert len(node.path) == 1 + int(0.09 / PATH_STEP_M)  # thinned to >= 5 cm steps
        decide(2, "go to the red ball")                       # same instruction: path kept
        node._on_odom(_odom(0.5, 0.0))
        assert len(node.path) == 3 and node.path_frame == "odom"
        decide(3, "go to the blue box")                       # a new trip starts a new path
        assert len(node.path) == 0
        node._on_odom(_odom(0.6, 0.0))
        assert [p.pose.position.x for p, _ in node.path] == [0.6]
    finally:
        node.destroy_node()
