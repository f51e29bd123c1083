"""Build the cloud's Verifier from a target model (folder or cached hub id) and early-exit adapters.

Device and dtype are names (``auto``/``cpu``/``cuda``, ``float32``/``bfloat16``/``float16``),
resolved by :mod:`specdec.models.loading` like the edge's draft. The target is never quantized:
it defines the output.
"""

from __future__ import annotations

import os
from typing import Optional

from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.loading import load_model


def build_verifier(model_path: str, exit_adapters: Optional[str] = None, exit_layer: int = -1,
                   dtype: str = "float32", device: str = "auto", **verifier_kwargs) -> Verifier:
    """``exit_layer`` -1: every layer in the adapter file sends hints (progressive); ``verifier_kwargs``:
    ``settings=VerifierSettings(...)`` and the other :class:`Verifier` keyword arguments."""
    """Load the target (and its exit heads, if a file is given) and wrap it in a Verifier.

    Missing or mismatched files and bad device/dtype names raise errors that name them
    (ModelLoadError, EarlyExitError, ValueError); the caller reports them and exits instead of
    serving garbage.
    """
    target = load_model(model_path, dtype=dtype, device=device, name="target")
    heads = None
    if exit_adapters:
        heads = EarlyExitHeads.load(target.model, os.fspath(exit_adapters))
    return Verifier(target, heads, exit_layer=None if exit_layer is None or exit_layer < 0 else exit_layer,
                    **verifier_kwargs)
