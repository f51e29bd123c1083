"""Camera images on their way into a model: validation, the wire encoding and its decoding.

Three rules shape this module:

* **Refuse, never guess.** :func:`to_pil` takes a PIL image in an 8-bit mode, an HxW / HxWx3 /
  HxWx4 ``uint8`` array or PNG/JPEG bytes; anything else (a path string, a float array that
  would silently turn black, 16-bit or float modes, HxWx2) raises :class:`ImageError` with one
  line naming what is accepted.
* **The label must match the bytes.** :func:`decode_image` decodes wire data only with the
  decoder of its declared ``image_format`` (``png`` or ``jpeg``), after checking the file
  signature, so a GIF or JPEG labelled ``png`` is refused instead of decoded by whatever Pillow
  recognises.
* **Draft and target see the same pixels.** :func:`encode_image` downscales a frame on the edge
  (to the model processor's input size, or to fit a bound) and encodes it as PNG or JPEG; the
  returned :attr:`EncodedImage.image` is exactly what :func:`decode_image` gives the cloud for
  those bytes. The edge drafts on that image, so a lossy JPEG costs acceptance, never
  correctness: the committed output is always the target's on the decoded frame.

Downscaling uses the processor's own resampling filter with Pillow, the operation the processor
would otherwise run on the full frame in the cloud: for Qwen2-VL-style processors the
``processor`` size mode therefore sends the very pixels the target would have computed from the
full frame, at a fraction of the bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Optional, Tuple

ImageLike = Any  # PIL.Image.Image, HxWx3 uint8 numpy array, or encoded PNG/JPEG bytes

# wire format name -> (Pillow format, file signature)
WIRE_FORMATS = {"png": ("PNG", b"\x89PNG\r\n\x1a\n"), "jpeg": ("JPEG", b"\xff\xd8\xff")}
# 8-bit modes Pillow converts to RGB without guessing a value range (F, I, I;16 are refused)
_PIL_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr")
ACCEPTED = ("a PIL image (8-bit mode), an HxW, HxWx3 or HxWx4 uint8 numpy array, "
            "or PNG/JPEG bytes")
# Signatures of formats the wire does not carry, to name them in a refusal.
_OTHER_SIGNATURES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"RIFF": "WEBP",
                     b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


class ImageError(ValueError):
    """An image that cannot be used as model input (the message names what is accepted)."""


def _sniff(data: bytes) -> str:
    """The file type ``data`` starts with: a WIRE_FORMATS name, an upper-case name of another
    format, or "" when unknown."""
    for name, (_, signature) in WIRE_FORMATS.items():
        if data.startswith(signature):
            return name
    return next((name for sig, name in _OTHER_SIGNATURES.items() if data.startswith(sig)), "")


def decode_image(data: bytes, declared_format: Optional[str] = None):
    """Decode wire image bytes into an RGB PIL image with the decoder of ``declared_format``.

    ``declared_format`` is a :data:`WIRE_FORMATS` name; ``None`` takes the format from the file
    signature (PNG or JPEG only). A format the wire does not carry, bytes that are another
    format, and truncated or corrupt data raise :class:`ImageError`.
    """
    from PIL import Image

    data = bytes(data)
    if not data:
        raise ImageError("empty image data")
    actual = _sniff(data)
    fmt = actual if declared_format is None else declared_format
    if fmt not in WIRE_FORMATS:
        if declared_format is not None:
            raise ImageError(f"image_format {declared_format!r} is not supported (use one of {sorted(WIRE_FORMATS)})")
        raise ImageError(f"image bytes are {actual or 'neither PNG nor JPEG'}: expected {ACCEPTED}")
    if actual != fmt:
        what = f"{WIRE_FORMATS[actual][0] if actual in WIRE_FORMATS else actual} data" if actual else "neither PNG nor JPEG"
        raise ImageError(f"image_format {fmt!r} but the bytes are {what}")
    try:
        image = Image.open(io.BytesIO(data), formats=[WIRE_FORMATS[fmt][0]])
        image.load()
    except Exception as exc:  # truncated/corrupt data, decompression bombs
        raise ImageError(f"cannot decode the {fmt} image: {exc}") from None
    return _pil_to_rgb(image)


def _pil_to_rgb(image):
    if image.mode not in _PIL_MODES:
        raise ImageError(f"PIL image mode {image.mode!r} is not accepted (8-bit modes only): expected {ACCEPTED}")
    if image.width < 1 or image.height < 1:
        raise ImageError(f"empty image {image.width}x{image.height}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_pil(array):
    import numpy as np
    from PIL import Image

    if array.dtype != np.uint8:
        hint = " (scale floats in [0, 1] with (x * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise ImageError(f"{array.dtype} array: expected {ACCEPTED}{hint}")
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if not shape_ok:
        raise ImageError(f"array of shape {array.shape}: expected {ACCEPTED}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"empty image array of shape {array.shape}")
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def to_pil(image: ImageLike):
    """Normalise an image to an RGB PIL image (``None`` stays ``None``).

    Accepted: a PIL image in an 8-bit mode, an HxW / HxWx1 / HxWx3 / HxWx4 ``uint8`` numpy array
    (RGB order), or PNG/JPEG bytes. Anything else raises :class:`ImageError`.
    """
    from PIL import Image

    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    import numpy as np

    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    hint = " (a file path? open it first)" if isinstance(image, str) or hasattr(image, "__fspath__") else ""
    raise ImageError(f"{type(image).__name__} is not an image{hint}: expected {ACCEPTED}")


# -- edge-side downscaling -----------------------------------------------------------------------
def parse_image_size(text: str):
    """An image size setting: ``"full"`` (send the frame as it is), ``"processor"`` (the draft
    processor's input size for the frame) or ``"WxH"`` (fit within W x H, keeping the aspect
    ratio). Returns ``"full"``, ``"processor"`` or ``(W, H)``; anything else raises ValueError."""
    value = str(text).strip().lower()
    if value in ("full", "processor"):
        return value
    width, sep, height = value.partition("x")
    if sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0:
        return int(width), int(height)
    raise ValueError(f"image size must be 'full', 'processor' or WxH (e.g. 640x360), got {text!r}")


def fit_within(size: Tuple[int, int], bound: Tuple[int, int]) -> Tuple[int, int]:
    """``size`` (W, H) scaled down to fit ``bound`` with its aspect ratio kept; never enlarged."""
    width, height = size
    scale = min(1.0, bound[0] / width, bound[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def processor_input_size(processor, size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """The (W, H) a VLM processor resizes a ``size`` frame to, or None when it does not say.

    Qwen2-VL / Qwen2.5-VL: ``smart_resize`` with the processor's pixel bounds and patch factor;
    processors with a ``longest_edge`` bound (Idefics3 / SmolVLM): fit that edge.
    """
    image_processor = getattr(processor, "image_processor", processor)
    bounds = getattr(image_processor, "size", None) or {}
    get = bounds.get if isinstance(bounds, dict) else lambda key, default=None: getattr(bounds, key, default)
    width, height = size
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    if patch and merge and get("shortest_edge") and get("longest_edge"):  # pixel-count bounds (Qwen2-VL)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        new_h, new_w = smart_resize(height, width, factor=patch * merge, min_pixels=get("shortest_edge"),
                                    max_pixels=get("longest_edge"))
        return new_w, new_h
    if get("longest_edge"):
        edge = int(get("longest_edge"))
        return fit_within(size, (edge, edge))
    return None


def _resample_filter(processor):
    from PIL import Image

    value = getattr(getattr(processor, "image_processor", processor), "resample", None)
    return Image.Resampling.BICUBIC if value is None else Image.Resampling(int(value))


@dataclass
class EncodedImage:
    """A frame as it crosses the link: the bytes, their ``image_format`` and the RGB image both
    sides condition on (``image`` == ``decode_image(data, format)``, pixel for pixel)."""

    data: bytes
    format: str
    image: Any  # PIL.Image.Image

    @property
    def size(self) -> Tuple[int, int]:
        return self.image.size


def encode_image(image: ImageLike, image_format: str = "png", size="full", processor=None,
                 jpeg_quality: int = 90) -> EncodedImage:
    """Downscale and encode a frame for the wire (the edge's half of :func:`decode_image`).

    ``size``: ``"full"``, ``"processor"`` (needs ``processor``: the size it would resize this
    frame to) or ``(W, H)`` to fit within; see :func:`parse_image_size` for the text form. Frames
    are never enlarged. ``image_format``: ``png`` (lossless) or ``jpeg`` (``jpeg_quality`` 1-95,
    4:2:0 chroma).
    """
    if image_format not in WIRE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(WIRE_FORMATS)}, got {image_format!r}")
    if not 1 <= int(jpeg_quality) <= 95:
        raise ValueError(f"jpeg_quality must be 1..95, got {jpeg_quality}")
    if isinstance(size, str):
        size = parse_image_size(size)
    pil = to_pil(image)
    new_size = None
    if size == "processor":
        if processor is None:
            raise ValueError("image size 'processor' needs the model's processor")
        new_size = processor_input_size(processor, pil.size)
    elif size != "full":
        new_size = fit_within(pil.size, tuple(size))
    if new_size is not None and new_size[0] <= pil.width and new_size[1] <= pil.height and new_size != pil.size:
        pil = pil.resize(new_size, resample=_resample_filter(processor))
    buffer = io.BytesIO()
    if image_format == "png":
        pil.save(buffer, format="PNG", compress_level=1)
        return EncodedImage(buffer.getvalue(), "png", pil)  # lossless: the cloud decodes these pixels
    pil.save(buffer, format="JPEG", quality=int(jpeg_quality))
    data = buffer.getvalue()
    return EncodedImage(data, "jpeg", decode_image(data, "jpeg"))


def encode_png(image: ImageLike) -> bytes:
    """The full frame as lossless PNG bytes (``encode_image(image).data``)."""
    return encode_image(image).data
