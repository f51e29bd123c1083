"""Early-exit heads on a target's intermediate decoder layers.

An exit head maps the hidden state after decoder layer ``L`` to next-token
logits. It is a small residual adapter (``h + A h``, ``A`` zero-initialised so an
untrained head is the "logit lens") followed by the target's own final norm and
LM head, which stay shared and frozen: only ``A`` is trained and saved.

A set of heads lives in one safetensors file next to the model, with metadata
that names the base model (fingerprint), the exit layers and the shapes, so a
file that is missing, from another model or of the wrong shape is refused with
a clear error instead of producing garbage hints.

During a verification forward pass :meth:`EarlyExitHeads.attach` registers a
forward hook on each exit layer; the hook computes that layer's exit logits and
hands them to a callback *before the remaining layers run*, so a transport can
ship a hint mid-verification. No second forward pass is made.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .fingerprint import model_fingerprint
from .layout import decoder_layout

ADAPTER_FORMAT = "specdec-early-exit/1"
ADAPTER_FILENAME = "early_exit.safetensors"


class EarlyExitError(RuntimeError):
    """An early-exit adapter file that cannot be used with this model."""


class ExitAdapter(nn.Module):
    """Residual linear adapter ``h -> h + A h``; zero init = logit lens."""

    kind = "linear"

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(hidden)


class MLPExitAdapter(nn.Module):
    """Residual affine + low-rank MLP on the RMS-normalised stream.

    ``x = h / rms(h)``; ``x -> x + P x + b + U silu(D (g * x))``. More capacity than the linear
    adapter for shallow exits. Normalising first makes the adapter independent of the (large,
    layer-dependent) scale of intermediate residual streams, and makes the affine part
    solvable in closed form (least squares onto the final layer's normalised stream) before
    KL fine-tuning. The target's final norm is scale invariant, so with ``P``, ``b``, ``U``
    zero-initialised the head starts as the logit lens.
    """

    kind = "mlp"

    def __init__(self, hidden_size: int, rank: int = 128, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.norm_weight = nn.Parameter(torch.ones(hidden_size))
        self.down = nn.Linear(hidden_size, rank, bias=True)
        self.up = nn.Linear(rank, hidden_size, bias=True)
        self.eps = eps
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.down.weight, std=hidden_size**-0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def normalise(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.normalise(hidden)
        return x + self.proj(x) + self.up(nn.functional.silu(self.down(x * self.norm_weight)))


ADAPTER_KINDS = ("linear", "mlp")


def make_adapter(kind: str, hidden_size: int, rank: int = 128) -> nn.Module:
    if kind == "linear":
        return ExitAdapter(hidden_size)
    if kind == "mlp":
        return MLPExitAdapter(hidden_size, rank)
    raise EarlyExitError(f"unknown exit adapter kind {kind!r} (known: {', '.join(ADAPTER_KINDS)})")


ExitCallback = Callable[[int, torch.Tensor], None]


class EarlyExitHeads(nn.Module):
    """Exit adapters for a set of decoder layers of one target model."""

    def __init__(self, model: nn.Module, exit_layers: Sequence[int], adapter: str = "linear", rank: int = 128):
        super().__init__()
        layout = decoder_layout(model)
        n_layers = len(layout.layers)
        bad = [layer for layer in exit_layers if not 0 <= layer < n_layers - 1]
        if bad or not exit_layers:
            raise EarlyExitError(
                f"exit layers {list(exit_layers)} invalid: need 1+ layers in 0..{n_layers - 2} "
                f"(the model has {n_layers} decoder layers; the last one is the normal exit)"
            )
        self.exit_layers: List[int] = sorted(set(int(x) for x in exit_layers))
        self.hidden_size = int(layout.hidden_size)
        self.vocab_size = int(layout.vocab_size)
        self.base_fingerprint = model_fingerprint(model)
        self.adapter_kind = adapter
        self.adapter_rank = int(rank) if adapter != "linear" else 0
        self.adapters = nn.ModuleDict(
            {str(layer): make_adapter(adapter, self.hidden_size, rank) for layer in self.exit_layers}
        )
        # Shared, frozen parts of the target. Kept out of state_dict (not ours to save).
        object.__setattr__(self, "_layout", layout)
        self.to(dtype=layout.lm_head.weight.dtype, device=layout.lm_head.weight.device)

    # -- inference -------------------------------------------------------------------------
    def exit_logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits predicted from ``hidden`` (output of decoder ``layer``)."""
        adapted = self.adapters[str(layer)](hidden)
        return self._layout.lm_head(self._layout.final_norm(adapted))

    def attach(self, callback: ExitCallback, layers: Optional[Sequence[int]] = None, *, hidden: bool = False):
        """Call ``callback(layer, logits)`` from inside the forward pass of the target - or, with
        ``hidden=True``, ``callback(layer, hidden_states)`` so the caller computes exit logits
        (:meth:`exit_logits`) only for the rows it needs.

        Hooks fire only for forward passes run by the thread that attached them: the same model
        object may serve as a draft in another thread, whose passes must not produce hints.
        Returns a handle whose ``remove()`` detaches the hooks (use as a context manager).
        ``logits`` / ``hidden_states`` have shape [batch, seq, ...] for the tokens of that pass.
        """
        owner = threading.get_ident()
        handles = []
        for layer in layers if layers is not None else self.exit_layers:
            module = self._layout.layers[layer]

            def hook(_module, _inputs, output, layer=layer):
                if threading.get_ident() != owner:
                    return
                states = output[0] if isinstance(output, (tuple, list)) else output
                with torch.no_grad():
                    callback(layer, states if hidden else self.exit_logits(layer, states))

            handles.append(module.register_forward_hook(hook))
        return _Hooks(handles)

    # -- persistence -----------------------------------------------------------------------
    def metadata(self) -> Dict[str, str]:
        return {
            "format": ADAPTER_FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "exit_layers": json.dumps(self.exit_layers),
            "hidden_size": str(self.hidden_size),
            "vocab_size": str(self.vocab_size),
            "num_layers": str(len(self._layout.layers)),
            "adapter": self.adapter_kind,
            "adapter_rank": str(self.adapter_rank),
        }

    def save(self, path: str, extra_metadata: Optional[Dict[str, str]] = None) -> str:
        """Write the adapters (and only them) to ``path`` (a file or a model folder)."""
        from safetensors.torch import save_file

        if os.path.isdir(path):
            path = os.path.join(path, ADAPTER_FILENAME)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.adapters.state_dict().items()}
        meta = self.metadata()
        meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
        save_file(tensors, path, metadata=meta)
        return path

    @classmethod
    def load(cls, model: nn.Module, path: str, check_fingerprint: bool = True) -> "EarlyExitHeads":
        """Load heads for ``model`` from ``path``, refusing files that do not fit it."""
        from safetensors import safe_open

        if os.path.isdir(path):
            path = os.path.join(path, ADAPTER_FILENAME)
        if not os.path.isfile(path):
            raise EarlyExitError(f"early-exit adapter file not found: {path}")
        try:
            with safe_open(path, framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise EarlyExitError(f"{path}: not a readable early-exit adapter file ({exc})") from exc
        if meta.get("format") != ADAPTER_FORMAT:
            raise EarlyExitError(f"{path}: format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
        kind = meta.get("adapter", "linear")  # files written before adapter kinds existed are linear
        if kind not in ADAPTER_KINDS:
            raise EarlyExitError(f"{path}: unknown adapter kind {kind!r} (known: {', '.join(ADAPTER_KINDS)})")
        try:
            rank = int(meta.get("adapter_rank", "0") or 0)
            exit_layers = json.loads(meta["exit_layers"])
        except (KeyError, ValueError) as exc:
            raise EarlyExitError(f"{path}: malformed metadata ({exc})") from exc
        heads = cls(model, exit_layers, adapter=kind, rank=rank or 128)
        for key in ("hidden_size", "vocab_size"):
            if meta.get(key) != str(getattr(heads, key)):
                raise EarlyExitError(
                    f"{path}: adapters were trained for {key}={meta.get(key)}, this model has {getattr(heads, key)}"
                )
        if check_fingerprint and meta.get("base_fingerprint") != heads.base_fingerprint:
            raise EarlyExitError(
                f"{path}: adapters belong to another base model (fingerprint {meta.get('base_fingerprint', '?')[:12]}, "
                f"this model is {heads.base_fingerprint[:12]})"
            )
        expected = heads.adapters.state_dict()
        if set(tensors) != set(expected):
            raise EarlyExitError(f"{path}: tensors {sorted(tensors)} do not match expected {sorted(expected)}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise EarlyExitError(
                    f"{path}: tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
                )
        heads.adapters.load_state_dict(tensors)
        heads.to(dtype=heads._layout.lm_head.weight.dtype)
        return heads


class _Hooks:
    def __init__(self, handles):
        self._handles = handles

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
