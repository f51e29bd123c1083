"""Where artefacts live.

* ``models/`` (committed): small things only - the draft's own trained layers, exit adapters,
  evaluation JSON.
* ``.cache/models/`` (git-ignored): full HF folders rebuilt from the committed artefacts and
  from the packaged target (``make models`` / ``scripts/make_models.py --ensure``).

``SPECDEC_CACHE`` overrides the cache root (tests use a temporary folder).
"""

from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repo_path(*parts: str) -> str:
    return os.path.join(REPO_ROOT, *parts)


def cache_root() -> str:
    return os.environ.get("SPECDEC_CACHE") or repo_path(".cache", "models")


def models_root() -> str:
    return os.environ.get("SPECDEC_MODELS") or repo_path("models")


# Names of the text pair.
TARGET_NAME = "smollm2-135m-instruct"
DRAFT_NAME = "smollm2-135m-draft"


def target_dir() -> str:
    return os.path.join(cache_root(), TARGET_NAME)


def draft_dir() -> str:
    return os.path.join(cache_root(), DRAFT_NAME)


def committed_draft_dir() -> str:
    return os.path.join(models_root(), DRAFT_NAME)


def committed_exits_path() -> str:
    return os.path.join(models_root(), TARGET_NAME + "-exits", "early_exit.safetensors")


def committed_exits_sweep_path() -> str:
    """All trained exit layers (agreement-vs-depth study); the hint file holds the chosen one."""
    return os.path.join(models_root(), TARGET_NAME + "-exits", "early_exit_sweep.safetensors")
