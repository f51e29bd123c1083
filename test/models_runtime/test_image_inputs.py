"""Images: refused clearly when they are not images, labelled formats checked against the bytes,
and the edge's downscaled/JPEG frame is exactly what the cloud decodes (losslessness holds)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import PROMPT
from specdec.engine.verifier import Verifier
from specdec.models.images import (
    ImageError,
    decode_image,
    encode_image,
    encode_png,
    fit_within,
    parse_image_size,
    processor_input_size,
    to_pil,
)
from specdec.protocol import DecodingMode, EndReason, SessionEnd, SessionStart

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _encoded(array, fmt, **save):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("bad,detail", [
    ("frame.png", "str is not an image (a file path? open it first)"),
    (3, "int is not an image"),
    ({"data": b""}, "dict is not an image"),
    ([[1, 2], [3, 4]], "list is not an image"),
    (np.random.RandomState(0).rand(8, 8, 3), "float64 array"),  # values in [0, 1]: used to become black
    (np.zeros((8, 8, 2), np.uint8), "shape (8, 8, 2)"),
    (np.zeros(24, np.uint8), "shape (24,)"),
    (np.zeros((8, 8, 3), np.uint16), "uint16 array"),
    (np.zeros((0, 8, 3), np.uint8), "empty image"),
    (Image.new("F", (8, 8)), "mode 'F'"),
    (Image.new("I;16", (8, 8)), "mode 'I;16'"),
    (Image.new("I", (8, 8)), "mode 'I'"),
])
def test_non_images_are_refused_in_one_line(bad, detail):
    with pytest.raises(ImageError) as info:
        to_pil(bad)
    message = str(info.value)
    assert detail in message and "\n" not in message
    if "empty" not in detail:
        assert "uint8 numpy array" in message and "PNG/JPEG bytes" in message  # names what is accepted


def test_accepted_kinds_become_rgb(frame):
    grey = frame[:, :, 0]
    cases = [frame, np.dstack([frame, np.full(grey.shape, 255, np.uint8)]), grey, grey[:, :, None],
             Image.fromarray(frame), Image.fromarray(grey), Image.fromarray(frame).convert("P"),
             encode_png(frame), _encoded(frame, "JPEG")]
    for case in cases:
        image = to_pil(case)
        assert image.mode == "RGB" and image.size == (80, 60)
    assert np.array_equal(np.asarray(to_pil(frame)), frame)
    assert np.array_equal(np.asarray(to_pil(encode_png(frame))), frame)
    assert to_pil(None) is None


@pytest.mark.parametrize("data_format,declared,detail", [
    ("JPEG", "png", "image_format 'png' but the bytes are JPEG data"),
    ("GIF", "png", "image_format 'png' but the bytes are GIF"),
    ("BMP", "png", "but the bytes are BMP"),
    ("PNG", "jpeg", "image_format 'jpeg' but the bytes are PNG data"),
    ("PNG", "gif", "image_format 'gif' is not supported"),
    ("PNG", "", "image_format '' is not supported"),
])
def test_declared_format_must_match_the_bytes(frame, data_format, declared, detail):
    with pytest.raises(ImageError, match=detail.replace("(", r"\(").replace(")", r"\)")):
        decode_image(_encoded(frame, data_format), declared)


def test_corrupt_and_unknown_bytes_are_refused(frame):
    png = encode_png(frame)
    with pytest.raises(ImageError, match="cannot decode the png image"):
        decode_image(png[: len(png) // 2], "png")
    with pytest.raises(ImageError, match="neither PNG nor JPEG"):
        decode_image(b"hello world", "png")
    with pytest.raises(ImageError, match="image bytes are GIF"):
        to_pil(_encoded(frame, "GIF"))
    with pytest.raises(ImageError, match="empty image data"):
        decode_image(b"", "png")


@pytest.fixture(scope="module")
def qwen_target():
    from specdec.models.adapters import wrap_model
    from specdec.models.tiny import build_tiny

    return wrap_model(*build_tiny("qwen2_vl", layers=2, seed=0))


def _start(target, fmt, data, mode=DecodingMode.SPECULATIVE):
    return SessionStart(session_id="s", seq=0, prompt=PROMPT, tokenizer_fingerprint=target.fingerprint,
                        image_format=fmt, image_data=data, mode=int(mode), max_new_tokens=6, gamma=3,
                        stop_token_ids=list(target.eos_token_ids))


@pytest.mark.parametrize("data_format,declared", [("JPEG", "png"), ("GIF", "png"), ("PNG", "jpeg"), ("PNG", "webp")])
def test_verifier_refuses_a_mislabelled_image(qwen_target, frame, data_format, declared):
    verifier, out = Verifier(qwen_target), []
    verifier.handle(_start(qwen_target, declared, _encoded(frame, data_format)), out.append)
    (end,) = out
    assert isinstance(end, SessionEnd) and end.reason == EndReason.BAD_REQUEST
    assert f"image_format {declared!r}" in end.detail
    assert verifier.open_sessions == []


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_verifier_accepts_correctly_labelled_images(qwen_target, frame, fmt):
    verifier, out = Verifier(qwen_target), []
    verifier.handle(_start(qwen_target, fmt, encode_image(frame, fmt).data), out.append)
    assert out == [] and verifier.open_sessions == ["s"]


def test_image_sizes():
    assert parse_image_size("full") == "full" and parse_image_size(" Processor ") == "processor"
    assert parse_image_size("640x360") == (640, 360)
    for bad in ("640", "0x10", "axb", "640x", "-5x3"):
        with pytest.raises(ValueError, match="'full', 'processor' or WxH"):
            parse_image_size(bad)
    assert fit_within((1280, 720), (644, 364)) == (644, 362)
    assert fit_within((160, 120), (640, 480)) == (160, 120)  # never enlarged


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("size", ["full", "40x40", (64, 20)])
def test_encoded_image_is_what_the_cloud_decodes(frame, fmt, size):
    encoded = encode_image(frame, fmt, size)
    decoded = decode_image(encoded.data, encoded.format)
    assert encoded.format == fmt
    assert np.array_equal(np.asarray(encoded.image), np.asarray(decoded))  # the pixels the draft uses
    bound = (80, 60) if size == "full" else parse_image_size(size) if isinstance(size, str) else size
    assert encoded.size == fit_within((80, 60), bound)
    if fmt == "png" and size == "full":
        assert np.array_equal(np.asarray(decoded), frame)  # lossless
    if fmt == "jpeg":
        assert not np.array_equal(np.asarray(decoded), np.asarray(to_pil(frame).resize(encoded.size)))


def test_encode_refuses_bad_settings(frame):
    with pytest.raises(ValueError, match="image_format must be one of"):
        encode_image(frame, "gif")
    with pytest.raises(ValueError, match="jpeg_quality must be 1..95"):
        encode_image(frame, "jpeg", jpeg_quality=0)
    with pytest.raises(ValueError, match="needs the model's processor"):
        encode_image(frame, "png", "processor")
    with pytest.raises(ImageError):
        encode_image("frame.png")


def test_processor_size_sends_the_pixels_the_processor_would_compute():
    """Downscaling on the edge to the Go2 processor's input size: the target's pixel_values are
    identical to what it computes from the full frame, at a fraction of the bytes."""
    from specdec.models.loading import _load_processor
    from go2_sim.camera import CameraConfig
    from go2_sim.episode import Go2Episode

    processor = _load_processor(os.path.join(ROOT, "models", "go2_vlm", "target"), "qwen2_vl")
    env = Go2Episode(camera_config=CameraConfig(width=320, height=240))
    env.reset(3)
    rgb = env.render()[:, :, ::-1].copy()
    encoded = encode_image(rgb, "png", "processor", processor=processor)
    assert encoded.size == processor_input_size(processor, (320, 240)) == (96, 64)
    full = processor.image_processor(images=[to_pil(rgb)], return_tensors="pt")["pixel_values"]
    small = processor.image_processor(images=[encoded.image], return_tensors="pt")["pixel_values"]
    assert np.array_equal(full.numpy(), small.numpy())
    assert len(encoded.data) * 5 < len(encode_png(rgb))


def test_cloud_conditions_on_the_decoded_jpeg(qwen_target, frame, greedy_reference):
    """Cloud-only over the wire with JPEG bytes: the target's output is its greedy output on the
    decoded frame - the image the edge drafts on - so speculative output stays lossless."""
    encoded = encode_image(frame, "jpeg", "64x48", jpeg_quality=40)
    verifier, out = Verifier(qwen_target), []
    verifier.handle(_start(qwen_target, "jpeg", encoded.data, DecodingMode.CLOUD_ONLY), out.append)
    end = out[-1]
    assert isinstance(end, SessionEnd) and end.reason == EndReason.COMPLETED
    assert list(end.tokens) == greedy_reference(qwen_target, PROMPT, encoded.image, max_new_tokens=6)
