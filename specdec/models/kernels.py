"""CPU kernel choice for small-batch linear layers, applied to the model object itself.

On a CPU, a decode step and a verification pass multiply a few rows of activations by every
weight matrix, and the weights stream from memory: verifying five tokens should cost about what
decoding one does. PyTorch's BLAS path does not behave so: a SmolLM2-135M pass of 2 tokens cost
1.7x a one-token pass and 5 tokens 1.9x (default layout), which is what made verification - and
speculative decoding - expensive on CPUs. Three layouts, same weights:

* ``default``: PyTorch's ``[out, in]`` storage and ``F.linear``;
* ``transposed``: the weight stored ``[in, out]`` contiguous (the parameter a transposed view), which
  sends ``F.linear`` down BLAS's GEMV-friendly path on some machines;
* ``small_batch``: ``[out, in]`` storage and this project's kernel (``small_batch_linear.c``,
  compiled on first use by the machine's C compiler, cached under ``~/.cache/edge_cloud_vlm``) for
  passes of at most :data:`SMALL_BATCH_MAX_ROWS` rows. It reads each weight row once for all rows
  (up to 12 at a time) and prefetches the next ones. Whole SmolLM2-135M passes with the LM head on a
  2-core AMD EPYC, one thread (``scripts/experiments/kernel_layout.py``, medians, layouts taking
  turns): 1 / 2 / 3 / 5 / 9 tokens 68 / 73 / 86 / 81 / 107 ms, against 81 / 137 / 162 / 153 / 175 ms
  in the default layout. Every output element is summed in one fixed order, so a row's result is the
  same bit for bit whether it is decoded alone or verified next to others (batch invariance). Larger
  passes (prefills) use ``F.linear``, and so does anything that needs gradients or is not float32
  on the CPU. Without a C compiler, or with ``SPECDEC_SMALL_BATCH_KERNEL=0``, the layout is simply
  not offered. A draft may store its weights bfloat16 for it (:func:`use_bf16_weights`,
  ``load_model(..., quantization="bf16")``): half the bytes per step. SmolLM2 text drafts, one
  thread, AMD EPYC: a step of the feature draft 11.6 -> 9.2 ms, of the 4-layer draft 22.5 -> 18.5 ms.

:func:`choose_layout` times the model's own linear layers, all of them in sequence (so the weights
stream from memory as in a real pass), at the row counts decoding and verification use, in every
layout on offer, and keeps the fastest (``load_model(..., linear_kernel="auto")``, the default).
It is applied to the loaded model object, so every mode that runs the model - our verifier, the
draft, and the baselines (``model.generate``, transformers' assisted generation) - gets it.
Measure whole passes with ``python scripts/experiments/kernel_layout.py MODEL_FOLDER``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
import time
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ROWS = (1, 2, 3, 5)  # a decode step and verification passes of 1-4 draft tokens
SMALL_BATCH_MAX_ROWS = 16  # above this (prefills) BLAS is as fast and the kernel re-reads weights
LAYOUTS = ("default", "transposed", "small_batch")
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "small_batch_linear.c")
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC")

log = logging.getLogger(__name__)
_library_lock = threading.Lock()
_library: Tuple[bool, Optional[ctypes.CDLL]] = (False, None)  # (tried, library)


# -- the small-batch kernel ----------------------------------------------------------------------
def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("SPECDEC_KERNEL_CACHE") or os.path.join(base, "edge_cloud_vlm", "kernels")


def _cpu_flags() -> str:
    """Part of the cache key: a library built with -march=native must not run on another CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _compile(cc: str, out: str) -> Optional[str]:
    """Build the library at ``out`` (OpenMP if the compiler has it); returns the error, or None."""
    error = ""
    for extra in (("-fopenmp",), ()):
        tmp = ""
        try:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
            os.close(fd)
            done = subprocess.run([cc, *_FLAGS, *extra, _SOURCE, "-o", tmp], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode == 0:
                os.replace(tmp, out)  # atomic: concurrent processes never load a half-written file
                return None
            error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as exc:  # no compiler, a read-only cache, ...
            error = str(exc)
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
    return error


def small_batch_library() -> Optional[ctypes.CDLL]:
    """The compiled kernel, built once per machine and cached; None (with one warning) where it
    cannot be had."""
    global _library
    with _library_lock:
        if _library[0]:
            return _library[1]
        lib = None
        if os.environ.get("SPECDEC_SMALL_BATCH_KERNEL", "1") != "0":
            cc = os.environ.get("CC") or "cc"
            with open(_SOURCE, "rb") as handle:
                key = hashlib.sha256(handle.read() + repr((cc, _FLAGS, platform.machine(), _cpu_flags())).encode())
            path = os.path.join(_cache_dir(), f"small_batch_linear-{key.hexdigest()[:16]}.so")
            error = None if os.path.isfile(path) else _compile(cc, path)
            if error is None:
                try:
                    lib = ctypes.CDLL(path)  # ctypes releases the GIL for the call
                    for fn in (lib.small_batch_linear, lib.small_batch_linear_bf16):
                        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
                        fn.restype = None
                except OSError as exc:
                    error = str(exc)
            if error is not None:
                log.warning("small-batch linear kernel unavailable (%s): linear layers use torch's kernels", error)
        _library = (True, lib)
        return lib


_KERNEL_WEIGHTS = (torch.float32, torch.bfloat16)  # weight formats the kernel reads (activations: float32)


class SmallBatchLinear(nn.Linear):
    """An ``nn.Linear`` whose small inference passes run the small-batch kernel (same parameters,
    same state dict; :func:`use_small_batch_linears` switches a model's layers to it). Its weight
    may be stored bfloat16 (:func:`use_bf16_weights`, drafts only): activations stay float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        lib = _library[1]
        rows = x.numel() // weight.shape[1] if x.dim() else 0
        if (lib is None or not 0 < rows <= SMALL_BATCH_MAX_ROWS or x.dtype != torch.float32
                or weight.dtype not in _KERNEL_WEIGHTS or x.device.type != "cpu" or not weight.is_contiguous()
                or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return F.linear(x, weight.to(x.dtype), bias)
        x2 = x.reshape(rows, weight.shape[1]).contiguous()
        out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32)
        kernel = lib.small_batch_linear_bf16 if weight.dtype == torch.bfloat16 else lib.small_batch_linear
        kernel(x2.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(), rows,
               weight.shape[1], weight.shape[0], torch.get_num_threads())
        return out


def use_bf16_weights(model: nn.Module) -> bool:
    """Store the weights of the model's small-batch linear layers as bfloat16: half the bytes a
    decode step streams from memory, for a draft whose proposals decide only speed (a target must
    keep its own weights: its outputs are the answer). A layer tied to the input embeddings gets
    its own copy, so the embeddings stay float32. False (nothing changed) without the kernel."""
    if small_batch_library() is None:
        return False
    for module in _linears(model):
        if type(module) is SmallBatchLinear and module.weight.dtype == torch.float32:
            module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16).contiguous(), requires_grad=False)
    return True


# -- layouts -------------------------------------------------------------------------------------
def _linears(model: nn.Module):
    """Each CPU linear layer once (a tied LM head is the embedding's weight: it changes once)."""
    seen = set()
    for module in model.modules():
        if type(module) not in (nn.Linear, SmallBatchLinear) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        if module.weight.device.type == "cpu" and module.weight.dim() == 2:
            yield module


def use_default_linears(model: nn.Module) -> None:
    """PyTorch's ``[out, in]`` storage and ``F.linear``."""
    for module in _linears(model):
        module.__class__ = nn.Linear
        if not module.weight.is_contiguous():
            with torch.no_grad():
                module.weight.data = module.weight.data.contiguous()


def use_transposed_linears(model: nn.Module) -> int:
    """Store every ``nn.Linear`` weight transposed in memory (shape and values unchanged); returns
    how many layers changed. Tied weights stay tied (the parameter object is kept)."""
    changed = 0
    for module in _linears(model):
        module.__class__ = nn.Linear
        if module.weight.t().is_contiguous():
            continue
        with torch.no_grad():
            module.weight.data = module.weight.data.t().contiguous().t()
        changed += 1
    return changed


def use_small_batch_linears(model: nn.Module) -> bool:
    """Run the model's linear layers through the small-batch kernel; False (nothing changed) when
    the kernel is not available on this machine."""
    if small_batch_library() is None:
        return False
    use_default_linears(model)
    for module in _linears(model):
        module.__class__ = SmallBatchLinear
    return True


def available_layouts() -> Tuple[str, ...]:
    return LAYOUTS if small_batch_library() is not None else LAYOUTS[:2]


def use_layout(model: nn.Module, layout: str) -> str:
    """Apply ``layout`` (one of :data:`LAYOUTS`); returns the one applied (``transposed`` stands in
    for ``small_batch`` where the kernel is unavailable)."""
    if layout not in LAYOUTS:
        raise ValueError(f"linear kernel {layout!r}: expected one of {', '.join(LAYOUTS)} or 'auto'")
    if layout == "small_batch" and use_small_batch_linears(model):
        return layout
    if layout == "default":
        use_default_linears(model)
        return layout
    use_transposed_linears(model)
    return "transposed"


def _sweep_ms(layers: Sequence[nn.Module], rows: Sequence[int], repeats: int) -> float:
    """Every linear layer in turn at each row count: best of ``repeats``, summed over row counts."""
    total = 0.0
    for n in rows:
        inputs = [torch.randn(n, layer.weight.shape[1], dtype=layer.weight.dtype) for layer in layers]
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for layer, x in zip(layers, inputs):
                layer(x)
            best = min(best, time.perf_counter() - t0)
        total += best
    return total * 1000


@torch.inference_mode()
def choose_layout(model: nn.Module, rows: Sequence[int] = ROWS, repeats: int = 3) -> str:
    """Apply the layout in which the model's linear layers - all of them in sequence, so their
    weights stream from memory as in a decode step - run ``rows``-row inputs fastest on this CPU in
    this thread, and say which."""
    layers = list(_linears(model))
    if not layers:
        return "default"
    times = {}
    for layout in available_layouts():
        use_layout(model, layout)
        times[layout] = _sweep_ms(layers, rows, repeats)
    best = min(times, key=times.get)
    return use_layout(model, best)
