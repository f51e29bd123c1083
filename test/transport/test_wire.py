"""Wire codec: lossless for every message, strict on bad input."""

import pytest

from specdec import protocol
from specdec.transport import wire

MESSAGES = [
    protocol.SessionStart(session_id="s", seq=1, robot_id="r", prompt="go to the red ball ✓", image_format="png",
                          image_data=bytes(range(256)), stop_token_ids=[2], temperature=0.7, do_sample=True),
    protocol.DraftBlock(session_id="s", seq=2, round=1, tokens=[3, 4], topk=1, topk_ids=[3, 4], topk_probs=[1.0, 1.0]),
    protocol.EarlyExitHint(session_id="s", seq=3, predicted_accepted=1, confidence=0.5),
    protocol.VerifyResult(session_id="s", seq=4, accepted=2, next_token=9, finished=True),
    protocol.SessionEnd(session_id="s", seq=5, reason=3, detail="x", tokens=[1]),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.KIND)
def test_round_trip(message):
    assert wire.decode(wire.encode(message)) == message
    assert wire.decode(wire.encode(message).encode()) == message


@pytest.mark.parametrize("frame", [
    "", "[]", "{}", '{"kind":"draft_block","data":[]}', '{"kind":"draft_block","data":{"tokens":[1.5]}}',
    '{"kind":"draft_block","data":{"tokens":[true]}}', '{"kind":"session_start","data":{"image_data":"@@"}}',
    '{"kind":"draft_block","data":{"KIND":"x"}}', '{"kind":"draft_block","data":{"round":"1"}}',
    '{"kind":"draft_block","data":{},"extra":1}', b"\xff\xfe",
])
def test_malformed_frames_are_refused(frame):
    with pytest.raises(protocol.ProtocolError):
        wire.decode(frame)


def test_oversized_frame_refused():
    with pytest.raises(protocol.ProtocolError, match="too large"):
        wire.decode("x" * (wire.MAX_FRAME_BYTES + 1))
