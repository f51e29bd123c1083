"""Reduced-vocabulary draft heads: the draft scores only the K tokens the target uses most.

A small draft spends most of its time in its LM head (SmolLM2's is 49,152 x 576: 56 % of a
4-layer draft's step on a CPU). A head over the K most frequent target tokens is several times
cheaper, and costs nothing in correctness: the draft only proposes, the verifier still scores
the full vocabulary, and when sampling the draft's distribution over those K tokens is exactly
the ``q`` the rejection rule needs (tokens outside have ``q = 0``).

File format: ``draft_head.safetensors`` in the draft's model folder, tensors ``token_ids``
(int64 [K], ascending full-vocabulary ids) and ``weight`` (float [K, hidden]), metadata
``{"format": "specdec-draft-head/1", "vocab_size", "hidden_size"}``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .adapters import LMHead, ModelAdapter

HEAD_FORMAT = "specdec-draft-head/1"
HEAD_FILENAME = "draft_head.safetensors"


class DraftHeadError(ValueError):
    """A draft-head file that does not fit the model."""


def make_head(token_ids, weight: torch.Tensor) -> LMHead:
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return LMHead(linear.eval(), token_ids=ids.to(weight.device))


def head_from_rows(adapter: ModelAdapter, token_ids) -> LMHead:
    """A reduced head cut from the model's own LM head (the rows of ``token_ids``): no training,
    the same scores as the full head restricted to those tokens."""
    ids = torch.as_tensor(sorted(set(int(t) for t in token_ids)), dtype=torch.long)
    weight = adapter.lm_head.module.weight.detach()[ids.to(adapter.device)]
    return make_head(ids, weight.clone())


def save_draft_head(path: str, head: LMHead, vocab_size: int) -> str:
    from safetensors.torch import save_file

    if os.path.isdir(path):
        path = os.path.join(path, HEAD_FILENAME)
    tensors = {"token_ids": head.token_ids.detach().cpu().contiguous(),
               "weight": head.module.weight.detach().cpu().contiguous()}
    save_file(tensors, path, metadata={"format": HEAD_FORMAT, "vocab_size": str(vocab_size),
                                       "hidden_size": str(head.hidden_size)})
    return path


def load_draft_head(adapter: ModelAdapter, path: str) -> LMHead:
    """Read a head file for ``adapter``, refusing one that does not fit it."""
    from safetensors import safe_open

    if os.path.isdir(path):
        path = os.path.join(path, HEAD_FILENAME)
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            ids = handle.get_tensor("token_ids")
            weight = handle.get_tensor("weight")
    except Exception as exc:
        raise DraftHeadError(f"{path}: not a readable draft-head file ({exc})") from exc
    if meta.get("format") != HEAD_FORMAT:
        raise DraftHeadError(f"{path}: format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
    if meta.get("vocab_size") != str(adapter.vocab_size) or weight.shape[1] != adapter.lm_head.hidden_size:
        raise DraftHeadError(f"{path}: head for vocabulary {meta.get('vocab_size')} / hidden {weight.shape[1]}, "
                             f"the model has {adapter.vocab_size} / {adapter.lm_head.hidden_size}")
    if ids.ndim != 1 or ids.shape[0] != weight.shape[0] or ids.shape[0] == 0:
        raise DraftHeadError(f"{path}: token_ids {tuple(ids.shape)} do not match weight {tuple(weight.shape)}")
    if not bool((ids[1:] > ids[:-1]).all()) or int(ids[0]) < 0 or int(ids[-1]) >= adapter.vocab_size:
        raise DraftHeadError(f"{path}: token_ids must be ascending ids in 0..{adapter.vocab_size - 1}")
    return make_head(ids.to(adapter.device), weight.to(device=adapter.device, dtype=adapter.dtype))


def use_draft_head(adapter: ModelAdapter, folder: Optional[str]) -> bool:
    """Switch ``adapter`` to the reduced head in ``folder`` when the folder has one."""
    if not folder or not os.path.isfile(os.path.join(folder, HEAD_FILENAME)):
        return False
    adapter.use_head(load_draft_head(adapter, folder))
    return True
