"""Shared fixtures of the core (ROS-free) tests: tiny models, images, reference decoding."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)

PROMPT = "go forward two meters then turn left"


@pytest.fixture(scope="session")
def image():
    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(0).rand(60, 80, 3) * 255).astype("uint8")
    return Image.fromarray(pixels)


_PAIRS = {}


@pytest.fixture(scope="session")
def tiny_pair():
    """``tiny_pair(arch, noise=..., ...) -> (draft_adapter, target_adapter)``, cached per arguments."""
    from specdec.models.tiny import tiny_pair as build

    def get(arch="llama", **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in _PAIRS:
            _PAIRS[key] = build(arch, **kwargs)
        return _PAIRS[key]

    return get


@pytest.fixture(scope="session")
def reference():
    """``reference(adapter, prompt, image, max_new_tokens, **generate_kwargs)``: the model's own
    ``generate(do_sample=False)`` continuation (new tokens only)."""

    def run(adapter, prompt, image=None, max_new_tokens=16, **kwargs):
        inputs = adapter.encode(prompt, image)
        kwargs.setdefault("do_sample", False)
        with torch.inference_mode():
            out = adapter.model.generate(**inputs.generate_kwargs(adapter.device), max_new_tokens=max_new_tokens,
                                         **kwargs)
        return out[0, len(inputs.input_ids):].tolist()

    return run
