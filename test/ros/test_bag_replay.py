"""rosbag2 replay: the recorder/replay nodes over real DDS, and the whole pipeline on a
committed simulator bag (decisions equal cloud-only decoding of the same frames; commands within
the controller's limits)."""

import math
import os
import subprocess
import time

import pytest
import yaml

from ros_tools.bags import read_bag
from ros_tools.launch_runner import launched
from ros_tools.probe import Probe, ros_env

pytestmark = pytest.mark.timeout(400)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAGS = {"mcap": os.path.join(ROOT, "test", "data", "sim_seed7_mcap"),
        "sqlite3": os.path.join(ROOT, "test", "data", "sim_seed11_sqlite3")}
GO2_MODELS = os.path.join(ROOT, "models", "go2_vlm")
LIB = os.path.join(ROOT, "install", "edge_cloud_vlm", "lib", "edge_cloud_vlm")


def node_process(exe, params, env, log):
    args = [os.path.join(LIB, exe), "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_then_record_round_trips_a_bag(storage, tmp_path):
    env = ros_env()
    original = list(read_bag(BAGS[storage]))
    out = tmp_path / "rerecorded"
    topics = sorted({t for t, *_ in original})
    types = [next(n for t, n, *_ in original if t == topic) for topic in topics]
    with open(tmp_path / "rec.log", "w") as log:
        recorder = node_process("bag_recorder", {
            "output": str(out), "storage": storage, "topics": "[" + ",".join(topics) + "]",
            "types": "[" + ",".join(types) + "]", "max_messages": len(original),
            "sensor_reliability": "reliable"}, env, log)
        try:
            replay = subprocess.run([os.path.join(LIB, "bag_replay"), "--ros-args", "-p", f"bag:={BAGS[storage]}",
                                     "-p", "rate:=4.0", "-p", "wait_subscribers:=1"], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert replay.returncode == 0, replay.stderr
            recorder.wait(30)
        finally:
            if recorder.poll() is None:
                recorder.terminate()
                recorder.wait(10)
    copied = list(read_bag(str(out)))
    assert len(copied) == len(original), (tmp_path / "rec.log").read_text()[-2000:]
    by_topic = lambda msgs: {t: [m for tt, _, _, m in msgs if tt == t] for t in topics}  # noqa: E731
    assert by_topic(copied) == by_topic(original)


def test_replay_of_missing_bag_is_a_clear_error(tmp_path):
    proc = subprocess.run([os.path.join(LIB, "bag_replay"), "--ros-args", "-p", f"bag:={tmp_path}/nope"],
                          env=ros_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "rosbag2 folder" in proc.stderr


def corrupt(bag, tmp_path, how):
    """A copy of a committed bag, damaged the way a crash or a bad disk damages one."""
    import shutil

    copy = tmp_path / how
    shutil.copytree(bag, copy)
    data = next(p for p in copy.iterdir() if p.suffix in (".mcap", ".db3"))
    if how == "truncated_mcap":
        with open(data, "r+b") as handle:
            handle.truncate(data.stat().st_size // 2)
    elif how == "scribbled_sqlite3":
        with open(data, "r+b") as handle:
            handle.seek(data.stat().st_size // 2)
            handle.write(os.urandom(8192))
    elif how == "bad_metadata":
        (copy / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    elif how == "metadata_missing_keys":
        (copy / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n")
    return copy


@pytest.mark.parametrize("bag,how", [("mcap", "truncated_mcap"), ("sqlite3", "scribbled_sqlite3"),
                                     ("mcap", "bad_metadata"), ("sqlite3", "metadata_missing_keys")])
def test_corrupted_bag_is_one_line_no_traceback(bag, how, tmp_path):
    from ros_tools.bags import BagError

    damaged = corrupt(BAGS[bag], tmp_path, how)
    with pytest.raises(BagError, match=str(damaged)):
        list(read_bag(str(damaged)))
    proc = subprocess.run([os.path.join(LIB, "bag_replay"), "--ros-args", "-p", f"bag:={damaged}"],
                          env=ros_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "unreadable bag" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("storage", ["mcap"])
def test_pipeline_on_bag_matches_cloud_only_and_stays_in_limits(storage, tmp_path):
    import torch
    from geometry_msgs.msg import Twist

    from edge_cloud_vlm_msgs.msg import DecodedAction
    from specdec.models.loading import load_model
    from specdec_ros.images import image_to_rgb
    from specdec_ros.qos import COMMAND_QOS

    assert os.path.isfile(os.path.join(GO2_MODELS, "target", "model.safetensors")), "committed Go2 VLM pair missing"
    env = ros_env()
    probe = Probe(env)
    probe.record(DecodedAction, "/decoded_action", COMMAND_QOS)
    probe.record(Twist, "/cmd_vel", COMMAND_QOS)
    from diagnostic_msgs.msg import DiagnosticArray
    probe.record(DiagnosticArray, "/diagnostics", 10)
    try:
        # Bag stamps are old: the controller's stale-decision guard is off for replays (on a
        # robot, `ros2 bag play --clock` with use_sim_time does the same job).
        with launched("robot.launch.yaml", {"verifier": "local", "models": GO2_MODELS, "max_action_age": "0.0",
                                            "mode": "speculative_early_exit"}, env, tmp_path / "robot.log"):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                names = {s.name for _, m in probe.messages("/diagnostics") for s in m.status}
                if {"edge_spec_drafter", "cloud_verifier_bridge"} <= {n.split(":")[0] for n in names}:
                    break
                time.sleep(0.2)
            replay = subprocess.run([os.path.join(LIB, "bag_replay"), "--ros-args", "-p", f"bag:={BAGS[storage]}",
                                     "-p", "wait_subscribers:=1"], env=env, capture_output=True, text=True, timeout=120)
            assert replay.returncode == 0, replay.stderr
            time.sleep(2.0)
        actions = [m for _, m in probe.messages("/decoded_action")]
        twists = [m for _, m in probe.messages("/cmd_vel")]
    finally:
        probe.close()
    log = (tmp_path / "robot.log").read_text()
    assert len(actions) >= 2, log[-3000:]

    # Every decision equals the target's own greedy decoding of the frame it saw.
    frames = {(m.header.stamp.sec, m.header.stamp.nanosec): m
              for t, _, _, m in read_bag(BAGS[storage]) if t == "/camera/image_raw"}
    torch.set_num_threads(1)
    target = load_model(os.path.join(GO2_MODELS, "target"))
    # the node asks in the pair's template; {turned} counts the turns run so far (prompting.turned_after)
    from specdec.models.prompting import apply_prompt_template, folder_prompt_template, turned_after

    template, turned = folder_prompt_template(os.path.join(GO2_MODELS, "draft")), 0.0
    for action in actions:
        frame = frames[(action.header.stamp.sec, action.header.stamp.nanosec)]
        prompt = apply_prompt_template(template, action.instruction, False, turned)
        inputs = target.encode(prompt, image_to_rgb(frame)).generate_kwargs()
        with torch.inference_mode():
            out = target.model.generate(**inputs, do_sample=False, max_new_tokens=8)
        expected = target.decode_text(out[0, inputs["input_ids"].shape[1]:].tolist())
        assert action.text == expected, (action.text, expected)
        if action.valid:
            turned = turned_after(turned, action.action, action.value)
        assert action.valid, action.reject_reason

    # Every command stays within the controller's configured limits.
    with open(os.path.join(ROOT, "config", "go2_vlm_control.yaml")) as handle:
        params = yaml.safe_load(handle)["go2_vlm_control"]["ros__parameters"]
    lim_x = max(params.get("max_vx", 0.6), params.get("max_vx_backward", 0.0))
    lim_y, lim_w = params.get("max_vy", 0.4), params.get("max_wz", 1.0)
    assert twists, "the controller never commanded the robot"
    for t in twists:
        assert abs(t.linear.x) <= lim_x + 1e-6 and abs(t.linear.y) <= lim_y + 1e-6
        assert abs(t.angular.z) <= lim_w + 1e-6 and all(map(math.isfinite, (t.linear.x, t.linear.y, t.angular.z)))
