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


@pytest.mark.faults
@pytest.mark.parametrize("frame", [
    "", "[]", "{}", '{"kind":"draft_block","data":[]}', '{"kind":"draft_block","data":{"tokens":[1.5]}}',
    '{"kind":"draft_block","data":{"tokens":[true]}}', '{"kind":"session_start","data":{"image_data":"@@"}}',
    '{"kind":"draft_block","data":{"KIND":"x"}}', '{"kind":"draft_block","data":{"round":"1"}}',
    '{"kind":"draft_block","data":{},"extra":1}', b"\xff\xfe",
])
def test_malformed_frames_are_refused(frame):
    with pytest.raises(protocol.ProtocolError):
        wire.decode(frame)


@pytest.mark.faults
def test_oversized_frame_refused():
    with pytest.raises(protocol.ProtocolError, match="too large"):
        wire.decode("x" * (wire.MAX_FRAME_BYTES + 1))


@pytest.mark.faults
@pytest.mark.parametrize("frame, words", [
    ('{"kind":"draft_block","data":{"topk_probs":[NaN]}}', "NaN"),
    ('{"kind":"draft_block","data":{"topk_probs":[Infinity]}}', "Infinity"),
    ('{"kind":"draft_block","data":{"topk_probs":[-Infinity]}}', "-Infinity"),
    ('{"kind":"draft_block","data":{"topk_probs":[1e999]}}', "overflows"),
    ('{"kind":"draft_block","data":{"seq":' + "9" * 5000 + "}}", "5000 digits"),
    ('{"kind":"draft_block","data":{"seq":9223372036854775808}}', "int64"),
    ('{"kind":"draft_block","data":{"tokens":' + "[" * 20 + "]" * 20 + "}}", "nested"),
    ("[" * 100000 + "]" * 100000, "nested"),
    ('{"kind":"draft_block","data":{"session_id":"s","seq":1}', "not JSON"),
], ids=["nan", "inf", "-inf", "1e999", "5000-digits", "int64", "nested", "deeply-nested", "truncated"])
def test_numbers_json_does_not_allow_and_garbage_are_refused_with_a_reason(frame, words):
    with pytest.raises(wire.WireError, match=words) as info:
        wire.decode(frame)
    assert info.value.reason == protocol.EndReason.BAD_REQUEST


@pytest.mark.faults
def test_refusals_name_the_session_when_it_is_legible():
    with pytest.raises(wire.WireError) as info:
        wire.decode('{"kind":"draft_block","data":{"session_id":"abc","tokens":"x"}}')
    assert info.value.session_id == "abc"
    with pytest.raises(wire.WireError) as info:  # JSON itself fails: the id is still found in the text
        wire.decode('{"kind":"draft_block","data":{"session_id":"abc","seq":' + "1" * 5000 + "}}")
    assert info.value.session_id == "abc"


@pytest.mark.faults
def test_another_protocol_version_is_a_version_mismatch_whatever_its_fields():
    frame = ('{"kind":"session_start","data":{"protocol_version":%d,"session_id":"v","a_new_field":[1]}}'
             % (protocol.PROTOCOL_VERSION + 1))
    with pytest.raises(wire.WireError) as info:
        wire.decode(frame)
    assert info.value.reason == protocol.EndReason.PROTOCOL_VERSION_MISMATCH
    assert info.value.session_id == "v"


@pytest.mark.faults
def test_decode_never_raises_anything_but_wire_error(monkeypatch):
    monkeypatch.setattr(wire, "message_from_dict", lambda *a: 1 / 0)  # a bug deeper down
    with pytest.raises(wire.WireError, match="ZeroDivisionError"):
        wire.decode(wire.encode(MESSAGES[1]))


def test_field_types_are_looked_up_once_per_message_class(monkeypatch):
    import typing
    wire._field_types.cache_clear()
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda cls: calls.append(cls) or real(cls))
    frame = wire.encode(MESSAGES[1])
    for _ in range(50):
        wire.decode(frame)
    assert calls == [type(MESSAGES[1])]
