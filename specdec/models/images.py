"""Camera images on their way into a model: normalisation and the wire encoding.

The edge and the cloud must condition on exactly the same pixels, so the frame crosses the
link losslessly (PNG) and both sides turn it into an RGB PIL image the same way.
"""

from __future__ import annotations

import io
from typing import Any

ImageLike = Any  # PIL.Image.Image, HxWx3 uint8 numpy array, or encoded image bytes


def to_pil(image: ImageLike):
    """Normalise an image (PIL, numpy HxWx3 uint8, or encoded bytes) to an RGB PIL image."""
    from PIL import Image

    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(image)))
        image.load()
    elif not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_png(image: ImageLike) -> bytes:
    """Lossless encoding for the wire, so the cloud sees exactly the edge's pixels."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
