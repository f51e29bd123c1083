"""Where model artefacts live: the one place the runtime, ``bench/`` and ``training/`` look them up.

* ``models/`` (committed): small things only - the text draft's own trained layers, exit
  adapters, the Go2 VLM pair, evaluation reports, the text pair's held-out prompt list.
* ``.cache/models/`` (git-ignored): full HF folders rebuilt from the committed artefacts and
  from the packaged target (``make models`` / ``scripts/make_models.py --ensure``).

Pure paths (no torch, no training imports), so a robot or cloud install that ships no training
code still finds its models. ``SPECDEC_MODELS`` overrides the committed root and
``SPECDEC_CACHE`` the cache root (tests use temporary folders).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# realpath: under colcon's --symlink-install this file may be imported through build/'s links.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def repo_path(*parts: str) -> str:
    return os.path.join(REPO_ROOT, *parts)


def cache_root() -> str:
    return os.environ.get("SPECDEC_CACHE") or repo_path(".cache", "models")


def models_root() -> str:
    return os.environ.get("SPECDEC_MODELS") or repo_path("models")


# -- the SmolLM2 text pair ------------------------------------------------------------------------
TEXT_TARGET_NAME = "smollm2-135m-instruct"
TEXT_DRAFT_NAME = "smollm2-135m-draft"
TEXT_FEATURE_DRAFT_NAME = "smollm2-135m-feature-draft"  # conditioned on the target's states


def text_target_dir() -> str:
    """The target converted from the packaged gguf (rebuilt, not committed)."""
    return os.path.join(cache_root(), TEXT_TARGET_NAME)


def text_draft_dir() -> str:
    """The full HF draft folder assembled from the committed layers and the target's embeddings."""
    return os.path.join(cache_root(), TEXT_DRAFT_NAME)


def committed_text_draft_dir() -> str:
    return os.path.join(models_root(), TEXT_DRAFT_NAME)


def text_feature_draft_dir() -> str:
    """The loadable feature-draft folder assembled from the committed weights and the target's embeddings."""
    return os.path.join(cache_root(), TEXT_FEATURE_DRAFT_NAME)


def committed_text_feature_draft_dir() -> str:
    return os.path.join(models_root(), TEXT_FEATURE_DRAFT_NAME)


def committed_text_exits_path() -> str:
    """The hint exit (one layer): what the verifier loads."""
    return os.path.join(models_root(), TEXT_TARGET_NAME + "-exits", "early_exit.safetensors")


def committed_text_exits_sweep_path() -> str:
    """All trained exit layers (agreement-vs-depth study); the hint file holds the chosen one."""
    return os.path.join(models_root(), TEXT_TARGET_NAME + "-exits", "early_exit_sweep.safetensors")


def text_eval_report_path() -> str:
    return os.path.join(models_root(), "eval_smollm2.json")


def text_feature_eval_report_path() -> str:
    return os.path.join(models_root(), "eval_smollm2_feature.json")


def text_eval_prompts_path() -> str:
    """The held-out chat and prose prompts (JSON list of {kind, text, source}) the text pair is
    evaluated and benchmarked on, written from the training corpora by ``make models``."""
    return os.path.join(models_root(), "smollm2_eval_prompts.json")


# -- the Go2 VLM pair -----------------------------------------------------------------------------
GO2_PAIR_NAME = "go2_vlm"


@dataclass(frozen=True)
class Go2PairPaths:
    """The files of one Go2 VLM pair folder (``models/go2_vlm`` or a development run's)."""

    root: str

    @property
    def target(self) -> str:
        return os.path.join(self.root, "target")

    @property
    def draft(self) -> str:
        return os.path.join(self.root, "draft")

    @property
    def exits(self) -> str:
        """Early-exit adapters, inside the target folder (they belong to that target's weights)."""
        return os.path.join(self.target, "early_exit.safetensors")

    @property
    def train_report(self) -> str:
        return os.path.join(self.root, "train_report.json")

    @property
    def eval_report(self) -> str:
        return os.path.join(self.root, "eval_report.json")


def go2_pair_dir() -> str:
    return os.path.join(models_root(), GO2_PAIR_NAME)


def go2_pair_paths(root: str | None = None) -> Go2PairPaths:
    return Go2PairPaths(root or go2_pair_dir())
