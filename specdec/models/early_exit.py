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
from .layout import decoder_layout, text_decoder

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


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class AttentionExitAdapter(nn.Module):
    """The ``mlp`` adapter, then one decoder layer that attends over the sequence, then (as every
    kind) the target's final norm and LM head.

    Position-wise heads cannot move information between positions, which the target's remaining
    layers still do. This exit's layer can, at no cache of its own: its keys and values are those
    of the target's next decoder layer (that layer's input norm and key/value projections, frozen,
    applied to the exit layer's output), so for the positions before a pass it reads the target's
    own KV cache, which every rollback already keeps right. Its queries, output projection, norms
    and MLP are its own (copies of the next layer's, the output projections zeroed: an untrained
    exit is its ``mlp`` adapter). Text stacks with 1-D rotary positions (Llama, Qwen2)."""

    kind = "attention"

    def __init__(self, next_layer: nn.Module, rotary: nn.Module, hidden_size: int, rank: int = 128):
        super().__init__()
        import copy

        attention = next_layer.self_attn
        if getattr(rotary, "mrope_section", None) is not None or not hasattr(attention, "k_proj"):
            raise EarlyExitError("attention exits need a decoder with 1-D rotary positions and q/k/v projections")
        self.adapter = MLPExitAdapter(hidden_size, rank)
        self.attn_norm = copy.deepcopy(next_layer.input_layernorm)
        self.q_proj = copy.deepcopy(attention.q_proj)
        self.o_proj = copy.deepcopy(attention.o_proj)
        self.mlp_norm = copy.deepcopy(next_layer.post_attention_layernorm)
        self.mlp = copy.deepcopy(next_layer.mlp)
        nn.init.zeros_(self.o_proj.weight)
        nn.init.zeros_(self.mlp.down_proj.weight)
        self.head_dim = int(attention.head_dim)
        # the target's, shared and frozen: kept out of the module tree (not ours to train or save)
        object.__setattr__(self, "_next", next_layer)
        object.__setattr__(self, "_rotary", rotary)

    def keys_values(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The next layer's keys and values [B, kv_heads, T, head_dim] of exit-layer states [B, T, H]:
        what that layer puts in the target's KV cache for them."""
        attention = self._next.self_attn
        normed = self._next.input_layernorm(hidden)
        shape = (*hidden.shape[:2], -1, self.head_dim)
        keys = attention.k_proj(normed).view(shape).transpose(1, 2)
        return _rotate(keys, cos, sin), attention.v_proj(normed).view(shape).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, past=None, rows: Optional[int] = None) -> torch.Tensor:
        """Exit-layer states of consecutive positions [B, T, H] (right-padded, or [T, H]) after
        ``past`` = the next layer's cached (keys, values) of the positions before them (None: the
        sequence starts here) -> the exit's stream [B, rows, H] of the last ``rows`` positions
        (all when None), before the final norm."""
        flat = hidden.dim() == 2
        hidden = hidden.unsqueeze(0) if flat else hidden
        batch, count = hidden.shape[:2]
        rows = count if rows is None else rows
        start = 0 if past is None else int(past[0].shape[-2])
        positions = torch.arange(start, start + count, device=hidden.device).expand(batch, -1)
        cos, sin = self._rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keys, values = self.keys_values(hidden, cos, sin)
        if past is not None:
            keys, values = torch.cat([past[0], keys], -2), torch.cat([past[1], values], -2)
        x = self.adapter(hidden[:, count - rows:])
        query = self.q_proj(self.attn_norm(x)).view(batch, rows, -1, self.head_dim).transpose(1, 2)
        query = _rotate(query, cos[:, :, count - rows:], sin[:, :, count - rows:])
        seen = torch.arange(start + count, device=hidden.device) <= \
            torch.arange(start + count - rows, start + count, device=hidden.device)[:, None]
        out = nn.functional.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype),
                                                         attn_mask=seen, enable_gqa=True)
        x = x + self.o_proj(out.transpose(1, 2).reshape(batch, rows, -1))
        x = x + self.mlp(self.mlp_norm(x))
        return x[0] if flat else x


ADAPTER_KINDS = ("linear", "mlp", "attention")


def make_adapter(kind: str, hidden_size: int, rank: int = 128, next_layer=None, rotary=None) -> nn.Module:
    if kind == "linear":
        return ExitAdapter(hidden_size)
    if kind == "mlp":
        return MLPExitAdapter(hidden_size, rank)
    if kind == "attention":
        return AttentionExitAdapter(next_layer, rotary, hidden_size, rank)
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
        rotary = getattr(text_decoder(model), "rotary_emb", None)
        self.adapters = nn.ModuleDict(
            {str(layer): make_adapter(adapter, self.hidden_size, rank, layout.layers[layer + 1], rotary)
             for layer in self.exit_layers}
        )
        # Shared, frozen parts of the target. Kept out of state_dict (not ours to save).
        object.__setattr__(self, "_layout", layout)
        self.to(dtype=layout.lm_head.weight.dtype, device=layout.lm_head.weight.device)

    # -- inference -------------------------------------------------------------------------
    @property
    def attends(self) -> bool:
        """Whether an exit reads the positions before the rows it predicts (``attention`` kind):
        :meth:`exit_logits` then needs ``past`` and every row fed after it."""
        return self.adapter_kind == "attention"

    def exit_logits(self, layer: int, hidden: torch.Tensor, past=None, rows: Optional[int] = None) -> torch.Tensor:
        """Next-token logits predicted from ``hidden`` (output of decoder ``layer``). An exit that
        attends takes the consecutive positions fed after ``past`` (:meth:`past`) and predicts for
        the last ``rows`` of them."""
        if self.attends:
            adapted = self.adapters[str(layer)](hidden, past, rows)
        else:
            adapted = self.adapters[str(layer)](hidden if rows is None else hidden[..., hidden.shape[-2] - rows:, :])
        return self._layout.lm_head(self._layout.final_norm(adapted))

    @staticmethod
    def past(cache, layer: int):
        """What an exit at ``layer`` that attends reads of a target's KV cache (a DynamicCache, its
        batch of one): the next layer's keys and values; None for an empty cache."""
        if cache is None or cache.get_seq_length() == 0:
            return None
        entry = cache.layers[layer + 1]
        return entry.keys, entry.values

    def attach(self, callback: ExitCallback, layers: Optional[Sequence[int]] = None, *, hidden: bool = False):
        """Call ``callback(layer, logits)`` from inside the forward pass of the target - or, with
        ``hidden=True``, ``callback(layer, hidden_states)`` so the caller computes exit logits
        (:meth:`exit_logits`) only for the rows it needs.

        Hooks fire only for forward passes run by the thread that attached them: the same model
        object may serve as a draft in another thread, whose passes must not produce hints.
        Returns a handle whose ``remove()`` detaches the hooks (use as a context manager).
        ``logits`` / ``hidden_states`` have shape [batch, seq, ...] for the tokens of that pass.
        """
        if self.attends and not hidden:
            raise EarlyExitError("an exit that attends needs the target's cache: attach(..., hidden=True) and "
                                 "exit_logits(layer, states, past, rows)")
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
