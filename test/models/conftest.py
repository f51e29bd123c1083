"""Fixtures for the model-artefact tests: tiny random models and labelled data, real-path markers."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _real_target_dir():
    from specdec.models import artefacts
    from training.text.smollm2 import is_converted

    d = artefacts.text_target_dir()
    return d if is_converted(d) else None


@pytest.fixture(scope="session")
def real_target_dir():
    d = _real_target_dir()
    if d is None:
        pytest.skip(".cache/models/smollm2-135m-instruct absent: run 'make models-ensure' "
                    "(scripts/make_models.py --ensure) to convert the packaged SmolLM2 target")
    return d


@pytest.fixture(scope="session")
def tiny_target():
    """(model, tokenizer): a tiny random Llama whose outputs are peaked enough to have an argmax."""
    from specdec.models.tiny import build_tiny

    model, tok = build_tiny("llama", layers=4, hidden=64, seed=3)
    model.requires_grad_(False)
    return model, tok


@pytest.fixture(scope="session")
def tiny_labels(tiny_target):
    """Labels from the tiny target on word prompts, with hidden states of layers 0-2."""
    from specdec.models.tiny import _WORDS
    from training.teacher import label_many

    model, tok = tiny_target
    gen = torch.Generator().manual_seed(0)
    words = [w for w in _WORDS if w.isalpha()]
    prompts = []
    for _ in range(60):
        n = int(torch.randint(4, 12, (1,), generator=gen))
        idx = torch.randint(0, len(words), (n,), generator=gen).tolist()
        prompts.append(tok(" ".join(words[i] for i in idx), add_special_tokens=False)["input_ids"])
    return label_many(model, prompts, batch_size=20, max_new_tokens=12, capture_layers=[0, 1, 2], top_k=8,
                      pad_id=tok.pad_token_id)
