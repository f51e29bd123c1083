"""rviz/edge_cloud_vlm.rviz works with the simulator: checked over real DDS against the running
simulator, controller and edge node (no rviz2 here, so the config is read as data).

* the fixed frame is ``odom``, the root of the TF tree both the simulator and go2_ros2_sdk
  publish (odom -> base_link), and every frame the displayed data is stamped with hangs below it;
* every display's topic has a publisher of the type that display plugin reads, with a QoS the
  display's reliability setting can receive (a Reliable display gets nothing from a
  best-effort publisher);
* odometry, path and camera data actually arrive; the path grows while the robot moves.
"""

from pathlib import Path

import pytest
import yaml

from go2_ros_helpers import ControllerRig, Listener, random_domain

pytest.importorskip("rclpy")
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from specdec_ros.qos import LATCHED_QOS, STATE_QOS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DISPLAY_TYPES = {  # rviz_default_plugins display -> the message type it subscribes to
    "rviz_default_plugins/Odometry": "nav_msgs/msg/Odometry",
    "rviz_default_plugins/Path": "nav_msgs/msg/Path",
    "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
}
TOPIC_FREE = {"rviz_default_plugins/Grid", "rviz_default_plugins/TF"}


def _config():
    return yaml.safe_load((ROOT / "rviz" / "edge_cloud_vlm.rviz").read_text())


def test_every_display_has_a_known_plugin():
    displays = _config()["Visualization Manager"]["Displays"]
    assert {d["Class"] for d in displays} <= set(DISPLAY_TYPES) | TOPIC_FREE
    assert {"rviz_default_plugins/TF", "rviz_default_plugins/Path",
            "rviz_default_plugins/Odometry", "rviz_default_plugins/MarkerArray"} <= {
        d["Class"] for d in displays}


def _frames_below(root, edges):
    seen, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for child in edges.get(parent, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_rviz_config_against_simulator_controller_and_edge():
    from tf2_msgs.msg import TFMessage

    cfg = _config()["Visualization Manager"]
    fixed = cfg["Global Options"]["Fixed Frame"]
    displays = [d for d in cfg["Displays"] if "Topic" in d]
    domain = random_domain()
    L = Listener(domain)
    rig = ControllerRig(L, domain)
    try:
        L.subscribe(TFMessage, "/tf", STATE_QOS)
        L.subscribe(TFMessage, "/tf_static", LATCHED_QOS)
        L.subscribe(Odometry, "/odom", qos_profile_sensor_data)
        L.subscribe(PathMsg, "/go2_vlm_control/path", STATE_QOS)
        L.subscribe(Image, "/camera/image_raw", qos_profile_sensor_data)
        rig.spawn("go2_sim.sim_node", {"seed": 3})
        rig.spawn("edge_spec_drafter.node",
                  {"draft_model": str(ROOT / "models" / "go2_vlm" / "draft"), "torch_threads": 1})
        rig.start_controller(deadman_timeout=5.0)
        t = rig.send("left 60")  # turning in place: the path grows wherever the robot stands
        assert L.wait_for(lambda: L.get("/go2_vlm_control/path")
                          and len(L.get("/go2_vlm_control/path")[-1][1].poses) >= 3
                          and L.get("/camera/image_raw") and L.get("/tf_static")
                          # the moving odom -> base_link frame too: the path can grow before the first
                          # /tf reaches this listener, which then has only the static frames
                          and any(tf.header.frame_id == "odom" for _, m in L.get("/tf") for tf in m.transforms),
                          20.0), \
            "\n".join(p.output[-2000:] for p in rig.procs)
        assert rig.wait_state("completed", t, 10.0)

        # TF: the fixed frame is the root of what the sim (and go2_ros2_sdk) publish
        edges = {}
        for _, msg in L.get("/tf") + L.get("/tf_static"):
            for tf in msg.transforms:
                edges.setdefault(tf.header.frame_id, set()).add(tf.child_frame_id)
        reachable = _frames_below(fixed, edges)
        assert fixed == "odom" and {"base_link", "front_camera"} <= reachable, edges
        odom = L.get("/odom")[-1][1]
        path = L.get("/go2_vlm_control/path")[-1][1]
        image = L.get("/camera/image_raw")[-1][1]
        edge_cfg = yaml.safe_load((ROOT / "config" / "edge_spec_drafter.yaml").read_text())
        marker_frame = edge_cfg["edge_spec_drafter"]["ros__parameters"]["base_frame"]
        for frame in (odom.header.frame_id, odom.child_frame_id, path.header.frame_id,
                      image.header.frame_id, marker_frame):
            assert frame in reachable, f"frame {frame!r} not below the fixed frame {fixed!r}"

        # each display: publishers of the type the plugin reads, with a compatible QoS
        for d in displays:
            topic = d["Topic"]["Value"]
            pubs = L.wait_for(lambda: L.node.get_publishers_info_by_topic(topic), 60.0)
            assert pubs, f"display {d['Name']}: nobody publishes {topic}"
            assert {p.topic_type for p in pubs} == {DISPLAY_TYPES[d["Class"]]}, (d["Name"], pubs)
            if d["Topic"]["Reliability Policy"] == "Reliable":
                assert all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                           for p in pubs), f"display {d['Name']}: best-effort publisher"
    finally:
        rig.close()
        L.close()
