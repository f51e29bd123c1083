"""Fixtures of the model-runtime tests: tiny random-init models saved in a Hugging Face cache.

``hub_cache`` writes models in the layout ``hf download`` produces (``models--org--name/`` with
``blobs/`` named by content hash, ``snapshots/<commit>/`` symlinks into them, ``refs/main``), so
loading by hub id goes through huggingface_hub's real offline resolution.
"""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

PROMPT = "go forward two meters then turn left"
TARGET_ID = "tiny-org/tiny-qwen2-vl"
DRAFT_ID = "tiny-org/tiny-qwen2-vl-draft"
TEXT_TARGET_ID = "tiny-org/tiny-llama"
TEXT_DRAFT_ID = "tiny-org/tiny-llama-draft"


def save_to_hub_cache(model, processor, cache_dir: str, repo_id: str, commit: str = "0" * 40) -> str:
    """Save ``model`` + ``processor`` as ``repo_id`` in an HF hub cache; returns the snapshot folder."""
    staging = os.path.join(cache_dir, ".staging", repo_id.replace("/", "--"))
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for folder, _, files in os.walk(staging):
        for name in files:
            source = os.path.join(folder, name)
            relative = os.path.relpath(source, staging)
            with open(source, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            blob = os.path.join(repo, "blobs", digest)
            shutil.move(source, blob)
            link = os.path.join(snapshot, relative)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(commit)
    shutil.rmtree(staging)
    return snapshot


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory):
    """An HF_HOME whose hub cache holds a tiny Qwen2-VL target + perturbed draft and a tiny Llama
    target + perturbed draft (random init, same tokenizer per pair)."""
    from specdec.models.tiny import build_tiny, perturbed_copy

    home = tmp_path_factory.mktemp("hf_home")
    cache = os.path.join(home, "hub")
    for arch, target_id, draft_id in (("qwen2_vl", TARGET_ID, DRAFT_ID), ("llama", TEXT_TARGET_ID, TEXT_DRAFT_ID)):
        target, processor = build_tiny(arch, layers=4, seed=0)
        save_to_hub_cache(target, processor, cache, target_id)
        save_to_hub_cache(perturbed_copy(target, noise=0.03, seed=1), processor, cache, draft_id)
    return str(home)


@pytest.fixture
def offline_hub(hub_home, monkeypatch):
    """HF_HOME pointing at ``hub_home``, offline, and no socket may connect anywhere."""
    import socket

    monkeypatch.setenv("HF_HOME", hub_home)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return hub_home


@pytest.fixture(scope="session")
def frame():
    """An 80x60 RGB frame with structure (so JPEG and resizing change it)."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:60, 0:80]
    pixels = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) + rng.randint(0, 40, (60, 80, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def greedy_reference():
    """``greedy_reference(adapter, prompt, image, n)``: the model's own generate() (new tokens)."""

    def run(adapter, prompt, image=None, max_new_tokens=12):
        inputs = adapter.encode(prompt, image)
        with torch.inference_mode():
            out = adapter.model.generate(**inputs.generate_kwargs(adapter.device), do_sample=False,
                                         max_new_tokens=max_new_tokens)
        return out[0, len(inputs.input_ids):].tolist()

    return run
