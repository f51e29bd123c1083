"""Every protocol/monitoring message crosses DDS between two OS processes with every field intact."""

import json
import os
import random
import subprocess
import sys

import pytest

MSG_TYPES = [f"edge_cloud_vlm_msgs/{name}" for name in (
    "SessionStart", "DraftBlock", "EarlyExitHint", "VerifyResult", "SessionEnd",
    "DecisionStats", "DecodedAction", "SpecStats")]
PEER = os.path.join(os.path.dirname(__file__), "dds_peer.py")


@pytest.fixture
def ros_env():
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def test_every_message_round_trips_between_processes(ros_env):
    echo = subprocess.Popen([sys.executable, PEER, "echo", *MSG_TYPES], env=ros_env)
    try:
        probe = subprocess.run([sys.executable, PEER, "probe", *MSG_TYPES], env=ros_env,
                               capture_output=True, text=True, timeout=90)
    finally:
        echo.kill()
        echo.wait()
    assert probe.stdout, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert set(report) == set(MSG_TYPES)
    assert all(v == "ok" for v in report.values()), report
    assert probe.returncode == 0


def test_probe_detects_a_corrupted_echo(ros_env, tmp_path):
    """The comparison can fail: an echo that alters a field is caught."""
    shim = tmp_path / "bad_echo.py"
    shim.write_text(
        "import sys, dds_peer\n"
        "orig = dds_peer.fill\n"
        "def main():\n"
        "    import rclpy\n"
        "    rclpy.init(); node = rclpy.create_node('bad_echo')\n"
        "    t = dds_peer.load_type(sys.argv[1])\n"
        "    pub = node.create_publisher(t, '/rt/DraftBlock/echo', dds_peer.QOS)\n"
        "    def cb(m):\n"
        "        m.round += 1; pub.publish(m)\n"
        "    node.create_subscription(t, '/rt/DraftBlock', cb, dds_peer.QOS)\n"
        "    import time; end = time.monotonic() + 60\n"
        "    while time.monotonic() < end: rclpy.spin_once(node, timeout_sec=0.1)\n"
        "main()\n")
    env = dict(ros_env, PYTHONPATH=os.path.dirname(PEER) + os.pathsep + ros_env.get("PYTHONPATH", ""))
    echo = subprocess.Popen([sys.executable, str(shim), "edge_cloud_vlm_msgs/DraftBlock"], env=env)
    try:
        probe = subprocess.run([sys.executable, PEER, "probe", "edge_cloud_vlm_msgs/DraftBlock"], env=ros_env,
                               capture_output=True, text=True, timeout=90)
    finally:
        echo.kill()
        echo.wait()
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["edge_cloud_vlm_msgs/DraftBlock"] != "ok"
    assert probe.returncode == 1
