"""Loading models into adapters: where the weights are, on which device, in which precision.

A model is named by a local folder or by a Hugging Face hub id (``Qwen/Qwen2-VL-2B-Instruct``).
Nothing is ever downloaded: a hub id is resolved in the local HF cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``; the ``models--org--name/snapshots/<rev>``
layout that ``hf download`` writes), and every file is read with ``local_files_only``, so the
same parameter works offline (``HF_HUB_OFFLINE=1``) on a robot. A missing or incomplete model
raises :class:`ModelLoadError` with one line naming what was looked for and where.

Device (``auto``/``cpu``/``cuda[:N]``) and dtype (``float32``/``bfloat16``/``float16`` or
``fp32``/``bf16``/``fp16``) are plain strings, so nodes and command lines pass them through.

``quantization`` is for the edge's draft only: speculative decoding commits only what the
target verifies, so a quantized draft changes acceptance, never the output. ``int8`` on CPU is
torch's dynamic quantization of every ``nn.Linear`` except the LM head (weights int8,
activations quantized per batch); ``bf16`` on CPU stores every linear layer's weight (the LM
head and a reduced draft head included) as bfloat16 for the small-batch kernel
(:func:`specdec.models.kernels.use_bf16_weights`: half the bytes per decode step, float32
activations); on CUDA ``int8`` / ``4bit`` load through bitsandbytes (LLM.int8 / NF4) when it is
installed. The target is never quantized.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import torch

from .adapters import QWEN_VL_TYPES, ModelAdapter, wrap_model

log = logging.getLogger(__name__)

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

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
QUANTIZATIONS = ("none", "int8", "bf16", "4bit")


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A torch dtype from its name (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``);
    None and torch dtypes pass through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower()
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[key]


def resolve_device(device: Union[str, torch.device, None] = "auto") -> str:
    """``auto`` (CUDA when torch sees one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device
    that this torch cannot use is refused here rather than deep inside the first forward pass."""
    name = str(device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        kind = ""
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but this torch ({torch.__version__}) sees no CUDA device")
    return name


def hub_cache_dir() -> str:
    """The Hugging Face hub cache as huggingface_hub finds it, read from the environment now
    (its own constant is fixed at import time)."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = os.path.join(home, "hub")
    return os.path.abspath(os.path.expanduser(cache))


def _is_hub_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model_path(name_or_path: Union[str, os.PathLike]) -> str:
    """The local folder of a model: ``name_or_path`` itself when it exists, else the snapshot of a
    hub id in the local HF cache (``refs/main``). Never downloads."""
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.exists(path):
        return path
    if not _is_hub_id(path):
        raise ModelLoadError(f"model folder not found: {os.path.abspath(path)}")
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    entry = os.path.join(cache, "models--" + path.replace("/", "--"))
    try:
        return snapshot_download(path, cache_dir=cache, local_files_only=True)
    except Exception as exc:
        found = "an incomplete" if os.path.isdir(entry) else "no"
        raise ModelLoadError(
            f"model {path!r} not found: no folder {os.path.abspath(path)}, and the Hugging Face cache has {found} "
            f"{entry} ({type(exc).__name__}); nothing is downloaded here: run 'hf download {path}' where there "
            "is network, or point HF_HOME / HF_HUB_CACHE at a cache that has it") from None


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every nn.Linear except the LM head (CPU). The head stays
    float: it may be tied to the input embeddings, and the adapters read its weight shape."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    spec = {torch.nn.Linear: default_dynamic_qconfig}
    spec.update({name: None for name, module in model.named_modules() if module is head})
    with warnings.catch_warnings():  # torch deprecates torch.ao in favour of torchao; same kernels
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def _check_quantization(quantization: str, device: str, dtype: Optional[torch.dtype]) -> str:
    quantization = str(quantization or "none").strip().lower()
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    cuda = device.startswith("cuda")
    if quantization == "int8" and not cuda and dtype not in (None, torch.float32):
        raise ValueError("int8 dynamic quantization on CPU needs dtype float32 (its activations stay float32)")
    if quantization == "bf16" and (cuda or dtype not in (None, torch.float32)):
        raise ValueError("quantization bf16 is the CPU small-batch kernel's weight format (float32 activations); "
                         "on CUDA pass dtype=bfloat16")
    if quantization == "4bit" and not cuda:
        raise ValueError("quantization 4bit needs a CUDA device (bitsandbytes); on CPU use int8")
    if quantization in ("int8", "4bit") and cuda:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"quantization {quantization} on CUDA needs bitsandbytes (pip install bitsandbytes)")
    return quantization


def _bitsandbytes_config(quantization: str, dtype: Optional[torch.dtype]):
    # Untested here (no GPU, no bitsandbytes): the documented transformers path for NF4 / LLM.int8.
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=dtype or torch.float16)
    return BitsAndBytesConfig(load_in_8bit=True)


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
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device] = "cpu",
    quantization: str = "none",
    name: str = "",
    draft_head: bool = True,
    linear_kernel: str = "auto",
) -> ModelAdapter:
    """Load a model (a folder with ``config.json`` + safetensors/bin weights + tokenizer/processor
    files, or a hub id in the local HF cache) or build a random-init model from a
    ``PretrainedConfig`` (then ``processor`` is required).

    ``dtype``/``device`` take names (see :func:`resolve_dtype`, :func:`resolve_device`);
    ``quantization`` is ``none``, ``int8`` or ``4bit`` (see the module docstring; drafts only).
    ``draft_head``: propose with the folder's reduced-vocabulary head (``draft_head.safetensors``,
    :mod:`specdec.models.draft_head`) when it has one. ``linear_kernel``: on a CPU, how linear layers
    multiply small batches (:mod:`specdec.models.kernels`): ``default``, ``transposed``,
    ``small_batch``, or ``"auto"`` (the fastest, timed on this CPU for this model's shapes).
    Missing folders/files raise :class:`ModelLoadError` naming what is missing. Nothing is
    downloaded (``local_files_only``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    quantization = _check_quantization(quantization, device, dtype)
    if quantization == "int8" and not device.startswith("cuda"):
        dtype = torch.float32
    if isinstance(path_or_config, PretrainedConfig):
        config = path_or_config
        if processor is None:
            raise ModelLoadError("building a model from a config needs processor= (its tokenizer or processor)")
        if quantization != "none" and device.startswith("cuda"):
            raise ValueError("bitsandbytes quantization loads weights from a folder, not from a config")
        auto = AutoModelForImageTextToText if config.model_type in _VLM_TYPES else AutoModelForCausalLM
        model = auto.from_config(config)
        if dtype is not None:
            model = model.to(dtype)
        return wrap_model(_place(model, device, quantization), processor, name=name or config.model_type)

    label = os.fspath(path_or_config)
    path = resolve_model_path(path_or_config)
    if not os.path.isdir(path):
        raise ModelLoadError(f"{path} is a file; pass the model folder (with config.json and weights)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"{path}: no config.json (not a Hugging Face model folder)")
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") or n.startswith("pytorch_model") or n.endswith(".gguf") for n in names):
        raise ModelLoadError(f"{path}: no weights (*.safetensors or pytorch_model*.bin) in the folder")
    from .feature_draft import is_feature_draft, load_feature_draft

    if is_feature_draft(path):  # a draft conditioned on the target's states (one layer, not an HF model)
        try:
            tokenizer = processor or _load_processor(path, "llama")
            adapter = load_feature_draft(path, tokenizer, dtype=dtype, device=device, name=name,
                                         draft_head=draft_head)
            return _with_linear_kernel(adapter, linear_kernel, quantization)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load the feature draft ({exc})") from exc
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
    if quantization != "none" and device.startswith("cuda"):
        kwargs.update(quantization_config=_bitsandbytes_config(quantization, dtype), device_map={"": device})
    try:
        model = auto.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the weights ({exc})") from exc
    if "device_map" not in kwargs:
        model = _place(model, device, quantization)
    default_name = label if _is_hub_id(label) and not os.path.exists(label) else os.path.basename(os.path.normpath(path))
    adapter = wrap_model(model, processor, name=name or default_name)
    if draft_head:
        from .draft_head import use_draft_head

        use_draft_head(adapter, path)
    return _with_linear_kernel(adapter, linear_kernel, quantization)


def freeze_loaded_objects() -> int:
    """Move every object the process holds now out of the cyclic garbage collector's view
    (``gc.freeze``); returns how many. Call it once a long-lived process has loaded its models:
    they hold some 370,000 tracked objects, and a full collection walks them all - 96-157 ms on a
    2-core Xeon, a stall of whatever forward pass waits on the interpreter then
    (``scripts/experiments/gc_pauses.py``). Objects made later are collected as usual; frozen ones
    are still freed by reference counting, and only those that end up in reference cycles stay
    (until ``gc.unfreeze()``)."""
    import gc

    gc.collect()  # what is garbage already goes first, not into the frozen generation
    gc.freeze()
    return gc.get_freeze_count()


def adapter_modules(adapter: ModelAdapter) -> torch.nn.ModuleList:
    """Everything the adapter runs (model, LM head, draft head), as one module for the kernels."""
    return torch.nn.ModuleList([adapter.model, adapter.lm_head.module, adapter.head.module])


def _with_linear_kernel(adapter: ModelAdapter, linear_kernel: str, quantization: str = "none") -> ModelAdapter:
    """Apply the linear kernel to every layer the adapter runs; the choice is kept as
    ``adapter.linear_kernel`` (``small_batch_bf16`` for bf16 weights)."""
    from .kernels import choose_layout, use_bf16_weights, use_layout

    layers = adapter_modules(adapter)
    if quantization == "bf16":
        if use_layout(layers, "small_batch") == "small_batch":
            use_bf16_weights(layers)
            adapter.linear_kernel = "small_batch_bf16"
            return adapter
        log.warning("%s: bf16 weights need the small-batch kernel; keeping float32 weights", adapter.name)
    adapter.linear_kernel = choose_layout(layers) if linear_kernel == "auto" else use_layout(layers, linear_kernel)
    return adapter


def _place(model: torch.nn.Module, device: str, quantization: str) -> torch.nn.Module:
    """Move a loaded model to ``device`` and apply CPU int8 quantization (after the move)."""
    model = model.to(device)
    return _quantize_int8(model.eval()) if quantization == "int8" else model
