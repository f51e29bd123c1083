"""Camera message conversion: every supported encoding, and clear errors for bad input."""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from specdec_ros.images import ImageConversionError, image_to_rgb, rgb_to_image

RGB = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def make(encoding, pixels, pad=0):
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.zeros((h, w * c + pad), dtype=np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]), ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.zeros(RGB.shape[:2], np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings(encoding, pixels, pad):
    assert np.array_equal(image_to_rgb(make(encoding, np.ascontiguousarray(pixels), pad)), RGB)


def test_mono8():
    grey = RGB[:, :, 0]
    out = image_to_rgb(make("mono8", np.ascontiguousarray(grey)))
    assert out.shape == (6, 5, 3) and np.array_equal(out[:, :, 1], grey)


def test_compressed_png_is_lossless():
    ok, png = cv2.imencode(".png", RGB[:, :, ::-1])
    assert np.array_equal(image_to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)


def test_round_trip_bgr8():
    assert np.array_equal(image_to_rgb(rgb_to_image(RGB, "bgr8")), RGB)


@pytest.mark.parametrize("msg,match", [
    (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "unsupported image encoding"),
    (Image(height=2, width=2, encoding="bgr8", step=6, data=bytes(5)), "too short"),
    (Image(height=0, width=2, encoding="bgr8", step=6, data=b""), "empty image"),
    (CompressedImage(format="jpeg", data=b"not a jpeg"), "cannot decode"),
    (CompressedImage(format="png", data=b""), "empty"),
])
def test_bad_images_are_refused(msg, match):
    with pytest.raises(ImageConversionError, match=match):
        image_to_rgb(msg)
