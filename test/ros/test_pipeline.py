"""The real nodes in separate processes, started from the real launch files, over real DDS.

Shows: decoded actions are identical across the speculative modes and cloud-only decoding
(local and remote verifier); early-exit hints reach the edge before the final verify result;
a wrong robot token is refused and the robot gets an invalid action (it stops).
Uses the tiny random-init Qwen2-VL models of conftest (decoded text is arbitrary tokens: fine for
equality, and the parser rejects it, so the controller never moves).
"""

import time

import pytest

from ros_tools.launch_runner import launched
from ros_tools.probe import Probe, ros_env

pytestmark = pytest.mark.timeout(300)

MODES = ["speculative_early_exit", "speculative", "cloud_only", "edge_only"]
INSTRUCTION = "go to the red ball"
FIXED = {"draft_length": "fixed"}


def run_robot(models, frame, tmp_path, mode, verifier, decisions=2, extra=None, env=None, then_s=0.0):
    """Launch robot.launch.yaml, feed a fixed camera frame, collect decoded actions (``decisions``
    of them, then everything for ``then_s`` seconds more)."""
    from sensor_msgs.msg import Image

    from edge_cloud_vlm_msgs.msg import DecodedAction, EarlyExitHint, VerifyResult
    from specdec_ros.qos import COMMAND_QOS, PROTOCOL_QOS, SENSOR_QOS

    env = env or ros_env()
    probe = Probe(env)
    probe.record(DecodedAction, "/decoded_action", COMMAND_QOS)
    probe.record(EarlyExitHint, "/spec/to_edge/early_exit_hint", PROTOCOL_QOS)
    probe.record(VerifyResult, "/spec/to_edge/verify_result", PROTOCOL_QOS)
    camera = probe.node.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
    args = {"mode": mode, "verifier": verifier, "models": str(models), "instruction": INSTRUCTION, **(extra or {})}
    log = tmp_path / f"robot-{mode}-{verifier}.log"
    try:
        with launched("robot.launch.yaml", args, env, log) as proc:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break  # a node died: the log says why
                if len(probe.messages("/decoded_action")) >= decisions:
                    deadline = min(deadline, time.monotonic() + then_s)
                camera.publish(frame)
                time.sleep(0.1)
        actions = [m for _, m in probe.messages("/decoded_action")]
        assert len(actions) >= 1, log.read_text()[-3000:]
        return actions, probe
    finally:
        probe.close()


@pytest.fixture(scope="module")
def local_results(tiny_vlm_models, camera_frame, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    # fixed-length blocks: these tests check the protocol, and the adaptive controller may judge a tiny
    # random draft not worth a token (no drafted rows, no hints) on a fast machine
    return {mode: run_robot(tiny_vlm_models, camera_frame, tmp, mode, "local", extra=FIXED)
            for mode in MODES}


def test_modes_decode_identically_over_dds(local_results):
    texts = {mode: [a.text for a in actions] for mode, (actions, _) in local_results.items()}
    reference = texts["cloud_only"][0]
    assert reference, texts
    for mode in ("speculative_early_exit", "speculative"):
        assert texts[mode][0] == reference, texts
    for mode, (actions, _) in local_results.items():
        a = actions[0]
        assert a.instruction == INSTRUCTION and a.stats.new_tokens > 0
        assert not a.valid and a.reject_reason  # random tokens never pass the parser


def test_speculative_modes_report_protocol_stats(local_results):
    ee = local_results["speculative_early_exit"][0][0].stats
    plain = local_results["speculative"][0][0].stats
    cloud = local_results["cloud_only"][0][0].stats
    assert ee.rounds > 0 and ee.drafted_tokens > 0 and ee.hints > 0
    assert plain.rounds > 0 and plain.hints == 0
    assert cloud.target_forward_passes >= cloud.new_tokens - 1 and cloud.drafted_tokens == 0
    assert local_results["edge_only"][0][0].stats.target_forward_passes == 0


def test_hints_arrive_before_results(local_results):
    _, probe = local_results["speculative_early_exit"]
    hints = {(m.session_id, m.round): t for t, m in probe.messages("/spec/to_edge/early_exit_hint")}
    results = {(m.session_id, m.round): t for t, m in probe.messages("/spec/to_edge/verify_result")}
    both = set(hints) & set(results)
    assert both, (len(hints), len(results))
    assert all(hints[key] <= results[key] for key in both)


def test_remote_verifier_matches_cloud_only(tiny_vlm_models, camera_frame, tmp_path, local_results):
    from specdec.transport.websocket import hash_token

    token_file = tmp_path / "token"
    token_file.write_text("robot-secret\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"robots:\n  go2: {{token_sha256: {hash_token('robot-secret')}}}\n")
    env = ros_env()
    models = tiny_vlm_models
    with launched("cloud.launch.yaml", {"models": str(models), "tokens": str(tokens), "port": "18765"}, env,
                  tmp_path / "cloud.log"):
        actions, _ = run_robot(models, camera_frame, tmp_path, "speculative_early_exit", "remote", decisions=1,
                               env=env, extra={"server_uri": "ws://127.0.0.1:18765", "token_file": str(token_file),
                                               **FIXED})
        assert actions[0].text == local_results["cloud_only"][0][0].text
        assert actions[0].stats.hints > 0 and actions[0].stats.bytes_sent > 0
        # A robot with the wrong token is refused: the decision is invalid, the robot stops.
        token_file.write_text("wrong-secret\n")
        refused, _ = run_robot(models, camera_frame, tmp_path, "speculative", "remote", decisions=1, env=ros_env(),
                               extra={"server_uri": "ws://127.0.0.1:18765", "token_file": str(token_file)},
                               then_s=6.0)
    assert not any(a.valid for a in refused)
    assert "refused" in refused[0].reject_reason, refused[0].reject_reason
    # refused again and again: retried after 1, 2, 4 s (backoff), not at once in a loop
    assert len(refused) <= 4, [a.reject_reason for a in refused]
