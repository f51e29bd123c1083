"""Loading models from folders (or building them from configs) into adapters.

Nothing is downloaded: folders are read with ``local_files_only``. A missing or incomplete
folder raises :class:`ModelLoadError` naming what is missing.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from .adapters import QWEN_VL_TYPES, ModelAdapter, wrap_model

try:  # Qwen2-VL's processor insists on a video processor, which needs torchvision.
    from transformers import Qwen2VLProcessor as _Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin as _ProcessorMixin

    class ImageOnlyQwen2VLProcessor(_Qwen2VLProcessor):
        """Qwen2-VL processor without the video processor (images and text only)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            _ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

except ImportError:  # pragma: no cover - very old transformers
    ImageOnlyQwen2VLProcessor = None  # type: ignore


class ModelLoadError(FileNotFoundError):
    """A model folder/file that is missing or incomplete."""


_VLM_TYPES = ("qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava", "llava_next", "idefics2")


def _load_processor(path: str, model_type: str):
    from transformers import AutoProcessor, AutoTokenizer

    if model_type not in _VLM_TYPES:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    error: Optional[Exception] = None
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        if getattr(processor, "image_processor", None) is not None:
            return processor
    except Exception as exc:  # e.g. Qwen2-VL's video processor needs torchvision
        error = exc
    # AutoProcessor failed or fell back to a bare tokenizer: build an image-only processor
    if model_type in QWEN_VL_TYPES and ImageOnlyQwen2VLProcessor is not None:
        from transformers import AutoImageProcessor

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        template = _read_chat_template(path) or getattr(tokenizer, "chat_template", None)
        return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                         chat_template=template)
    raise ModelLoadError(f"{path}: cannot load the image processor ({error or 'AutoProcessor returned a tokenizer'})")


def _read_chat_template(path: str) -> Optional[str]:
    import json

    for name in ("chat_template.jinja", "chat_template.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def load_model(
    path_or_config,
    *,
    processor=None,
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device] = "cpu",
    name: str = "",
) -> ModelAdapter:
    """Load a model folder (``config.json`` + safetensors/bin weights + tokenizer/processor files)
    or build a random-init model from a ``PretrainedConfig`` (then ``processor`` is required).

    Missing folders/files raise :class:`ModelLoadError` naming what is missing. Nothing is
    downloaded (``local_files_only``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

    if isinstance(path_or_config, PretrainedConfig):
        config = path_or_config
        if processor is None:
            raise ModelLoadError("building a model from a config needs processor= (its tokenizer or processor)")
        auto = AutoModelForImageTextToText if config.model_type in _VLM_TYPES else AutoModelForCausalLM
        model = auto.from_config(config)
        if dtype is not None:
            model = model.to(dtype)
        return wrap_model(model.to(device), processor, name=name or config.model_type)

    path = os.fspath(path_or_config)
    if not os.path.exists(path):
        raise ModelLoadError(f"model folder not found: {path}")
    if not os.path.isdir(path):
        raise ModelLoadError(f"{path} is a file; pass the model folder (with config.json and weights)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"{path}: no config.json (not a Hugging Face model folder)")
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") or n.startswith("pytorch_model") or n.endswith(".gguf") for n in names):
        raise ModelLoadError(f"{path}: no weights (*.safetensors or pytorch_model*.bin) in the folder")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: unreadable config.json ({exc})") from exc
    if processor is None:
        try:
            processor = _load_processor(path, config.model_type)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load the tokenizer ({exc})") from exc
    auto = AutoModelForImageTextToText if config.model_type in _VLM_TYPES else AutoModelForCausalLM
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = auto.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the weights ({exc})") from exc
    return wrap_model(model.to(device), processor, name=name or os.path.basename(os.path.normpath(path)))
