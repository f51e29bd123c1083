"""Build the cloud's Verifier from a model folder and an early-exit adapter file."""

from __future__ import annotations

import os
from typing import Optional

import torch

from specdec.engine.verifier import Verifier
from specdec.models.loading import load_model
from specdec.models.early_exit import EarlyExitHeads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_verifier(model_path: str, exit_adapters: Optional[str] = None, exit_layer: int = -1,
                   dtype: str = "float32", device: str = "auto", **verifier_kwargs) -> Verifier:
    """Load the target (and its exit heads, if a file is given) and wrap it in a Verifier.

    Missing or mismatched files raise errors that name the file (ModelLoadError,
    EarlyExitError); the caller reports them and exits instead of serving garbage.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    target = load_model(model_path, dtype=DTYPES[dtype], device=pick_device(device), name="target")
    heads = None
    if exit_adapters:
        heads = EarlyExitHeads.load(target.model, os.fspath(exit_adapters))
    return Verifier(target, heads, exit_layer=None if exit_layer is None or exit_layer < 0 else exit_layer,
                    **verifier_kwargs)
