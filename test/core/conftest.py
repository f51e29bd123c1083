"""Shared fixtures of the core (ROS-free) tests: tiny models, images, reference decoding."""

import os
from collections import Counter

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def image():
    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(0).rand(60, 80, 3) * 255).astype("uint8")
    return Image.fromarray(pixels)


_PAIRS = {}


@pytest.fixture(scope="session")
def tiny_pair():
    """``tiny_pair(arch, noise=..., ...) -> (draft_adapter, target_adapter)``, cached per arguments.
    ``SPECDEC_TEST_DEVICE=cuda`` puts the pairs on a GPU (the device checks in docs/benchmarks.md)."""
    from specdec.models.tiny import tiny_pair as build

    def get(arch="llama", **kwargs):
        kwargs.setdefault("device", os.environ.get("SPECDEC_TEST_DEVICE") or None)
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


@pytest.fixture(scope="session")
def chi_square():
    """``chi_square(counts, probs, n) -> p-value``: Pearson goodness of fit of observed outcome
    counts against exact probabilities (cells expecting < 5 pooled; an impossible outcome: 0)."""

    def chi_square_pvalue(counts: Counter, probs: dict, n: int) -> float:
        """Pearson chi-square goodness of fit; cells with expected count < 5 pooled."""
        for cell, observed in counts.items():
            if probs.get(cell, 0.0) <= 0.0 and observed:
                return 0.0  # an impossible outcome was produced
        obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
        for cell, p in probs.items():
            e = p * n
            if e < 5:
                pool_o += counts.get(cell, 0)
                pool_e += e
            else:
                obs.append(counts.get(cell, 0))
                exp.append(e)
        if pool_e > 0:
            obs.append(pool_o)
            exp.append(pool_e)
        chi = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
        df = len(obs) - 1
        return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                             torch.tensor(chi / 2, dtype=torch.float64)))

    return chi_square_pvalue
