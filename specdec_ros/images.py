"""Camera messages <-> numpy arrays, with cv_bridge when installed and a strict fallback.

A robot's ROS install has cv_bridge and it is used there. The PyPI ROS wheels have none (and
the PyPI ``cv-bridge`` is an old ROS 1 copy that breaks on NumPy 2), so the fallback converts
the encodings cameras publish (bgr8, rgb8, mono8, bgra8, rgba8) and CompressedImage
(jpeg/png) itself, refusing anything else with a clear error. Both paths return RGB uint8.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - only on a robot with a full ROS install
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
except Exception:  # ImportError, or the broken PyPI copy failing at import
    _BRIDGE = None

_CHANNELS = {"bgr8": 3, "rgb8": 3, "mono8": 1, "bgra8": 4, "rgba8": 4}


class ImageConversionError(ValueError):
    """A camera message that cannot be turned into an image."""


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> HxWx3 uint8 RGB array."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return _compressed_to_rgb(msg)
    encoding = msg.encoding.lower()
    if encoding not in _CHANNELS:
        raise ImageConversionError(f"unsupported image encoding {msg.encoding!r} (supported: {sorted(_CHANNELS)})")
    if _BRIDGE is not None:
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    channels = _CHANNELS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image {width}x{height}")
    if step < width * channels or len(msg.data) < step * height:
        raise ImageConversionError(
            f"image data too short: {len(msg.data)} bytes for {width}x{height} {encoding} with step {step}")
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def _compressed_to_rgb(msg) -> np.ndarray:
    import cv2

    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError("empty CompressedImage")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError(f"cannot decode CompressedImage of format {msg.format!r}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def rgb_to_image(rgb: np.ndarray, encoding: str = "bgr8", header=None):
    """HxWx3 uint8 RGB array -> sensor_msgs/Image (bgr8 like the Go2 driver, or rgb8)."""
    from sensor_msgs.msg import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f"expected HxWx3 uint8, got {rgb.dtype} {rgb.shape}")
    pixels = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    if encoding not in ("bgr8", "rgb8"):
        raise ImageConversionError(f"can only produce bgr8 or rgb8, not {encoding!r}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg
