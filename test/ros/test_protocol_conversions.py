"""specdec.protocol dataclasses and the generated messages stay in step and convert losslessly."""

import dataclasses
import os

import pytest

from specdec import protocol
from specdec_ros.conversions import ROS_TYPES, from_ros, to_ros

MSG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "msg", "msg")


def msg_fields(name):
    """Field names declared in msg/msg/<name>.msg (constants and comments skipped)."""
    fields = []
    for line in open(os.path.join(MSG_DIR, name + ".msg")):
        line = line.split("#", 1)[0].strip()
        if line and "=" not in line.split()[1]:
            fields.append(line.split()[1])
    return fields


@pytest.mark.parametrize("cls", list(ROS_TYPES), ids=lambda c: c.__name__)
def test_msg_file_mirrors_dataclass(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is protocol.SessionStart:
        names = [n for n in names if n not in ("image_format", "image_data")] + ["image"]
    assert sorted(msg_fields(cls.__name__)) == sorted(names)


def test_constants_agree():
    from edge_cloud_vlm_msgs.msg import SessionEnd, SessionStart, VerifyResult
    assert SessionStart.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    for reason in protocol.EndReason:
        assert getattr(SessionEnd, "REASON_" + reason.name) == reason.value
    for mode in protocol.DecodingMode:
        assert getattr(SessionStart, "MODE_" + mode.name) == mode.value
    for finish in protocol.FinishReason:
        assert getattr(VerifyResult, "FINISH_" + finish.name) == finish.value


SAMPLES = [
    protocol.SessionStart(session_id="s1", seq=7, robot_id="go2-a", prompt="go to the red ball",
                          tokenizer_fingerprint="ab" * 32, image_format="png", image_data=b"\x89PNG\x00\xff",
                          mode=1, max_new_tokens=12, gamma=4, do_sample=True, temperature=0.5, top_k=20,
                          seed=2**63, stop_token_ids=[0, 2], return_states=True),
    protocol.DraftBlock(session_id="s1", seq=8, round=3, position=9, tokens=[5, 6], topk=2,
                        topk_ids=[5, 1, 6, 2], topk_probs=[0.75, 0.25, 0.5, 0.5], predrafted=True, draft_ms=1.5),
    protocol.EarlyExitHint(session_id="s1", seq=9, round=3, position=9, exit_layer=10, predicted_accepted=2,
                           predicted_next_token=-1, confidence=0.25, exit_ms=3.0),
    protocol.VerifyResult(session_id="s1", seq=10, round=3, position=9, accepted=1, next_token=44, finished=True,
                          finish_reason=2, queue_ms=0.5, verify_ms=7.25, target_forward_passes=4,
                          target_states=b"\x00\x3c" * 6 + b"\xff"),
    protocol.SessionEnd(session_id="s1", seq=11, reason=4, detail="tokenizer mismatch", tokens=[1, 2, 3],
                        target_forward_passes=4, cloud_compute_ms=12.5),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_generated_type(message):
    assert from_ros(to_ros(message)) == message


def test_unknown_type_is_refused():
    from std_msgs.msg import String
    with pytest.raises(protocol.ProtocolError):
        from_ros(String())


def test_wrong_protocol_version_is_refused():
    data = SAMPLES[1].to_dict()
    data["protocol_version"] = 99
    with pytest.raises(protocol.ProtocolError, match="protocol version 99"):
        protocol.message_from_dict("draft_block", data)
    with pytest.raises(protocol.ProtocolError, match="unknown fields"):
        protocol.message_from_dict("draft_block", {**SAMPLES[1].to_dict(), "evil": 1})
    with pytest.raises(protocol.ProtocolError, match="unknown message kind"):
        protocol.message_from_dict("nope", {})
