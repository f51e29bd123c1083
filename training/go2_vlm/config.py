"""The training recipe of the Go2 VLM pair: :class:`TrainConfig`, text overrides and the recipe hash.

Its own module so that data (:mod:`.data`) and training (:mod:`.train`) both read the recipe
without importing each other. The hash (:func:`recipe_sha`) covers everything that decides the
trained weights; ``make models`` retrains the committed pair when it changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Dict

from .pair import (DRAFT_SPEC, EXIT_LAYERS, IMAGE_H, IMAGE_W, LAST_MOVE_TEMPLATE, MERGE, PATCH, PLACEHOLDER, TARGET_SPEC,
                   TURNED_SUFFIX, vocabulary)


@dataclass
class TrainConfig:
    seed: int = 0
    episodes: int = 700            # expert rollouts (about 11 decisions each, each frame labelled per object)
    chunk: int = 25                # episodes per data job (fixes the data whatever the worker count)
    perturb_prob: float = 0.25     # executed action replaced by a random one (label stays the expert's)
    blocked_prob: float = 0.25     # episodes that start behind another object (dataset.blocked_start)
    absent_twins: bool = False     # also label "go to <visible object's colour> <other shape>" (absent): search
    near_prob: float = 0.35        # ... close to an object, often a same-colour twin (dataset.near_object_start)
    supersample: int = 1           # camera anti-aliasing for the training frames (the default camera: 2) ...
    exact_camera_every: int = 4    # ... except every n-th chunk, rendered with the default camera
    held_out_every: int = 20       # every n-th chunk of episodes is held out
    workers: int = 2
    threads: int = 2
    target_steps: int = 6000
    target_batch: int = 32
    target_lr: float = 2e-3
    draft_init: str = "target:0,3"  # the draft: DRAFT_SPEC from random weights, or "target:0,3" - the target's
                                   # decoder layers 0 and 3 with its vision tower (pair.draft_from_target)
    draft_steps: int = 0           # draft steps on the expert data (0: none, e.g. after a target init)
    draft_batch: int = 32
    draft_lr: float = 3e-3
    dagger_episodes: int = 150     # rollouts driven by the trained target, labelled by the expert (0: off)
    dagger_steps: int = 700        # target fine-tuning steps on expert + DAgger data
    dagger_lr: float = 1e-3
    rare_repeat: int = 3           # strafe samples (rare: ~2%) are repeated this often per epoch
    boundary_repeat: int = 1       # ... and "done" / twin-close-in-view samples (data.training_rows)
    small_repeat: int = 1          # ... and samples whose instructed object shows small (a few image tokens)
    kd_alpha: float = 0.5          # draft loss = (1-a) CE(expert) + a KL(target || draft)
    turn_step_deg: float = 5.0     # magnitudes the models learn to say: turns in multiples of this ...
    move_step_m: float = 0.1       # ... and translations (the expert's own grid: 1 deg, 0.05 m)
    sigma_deg: float = 2.0         # ordinal label smoothing of turn magnitudes (0: off)
    sigma_m: float = 0.03          # ... and of translations
    exit_adapter: str = "mlp"
    exit_rank: int = 64
    exit_epochs: float = 30.0
    exit_lr: float = 3e-3
    weight_decay: float = 0.01
    aux_weight: float = 1.0        # auxiliary heads (objects per image token, target state); 0: off
    object_weight: float = 1.0     # ... plus each visible object's colour and shape from its image tokens (object_loss)
    object_min_tokens: int = 4     # image tokens an object must cover for object_loss to score its shape
    vision_warmup_steps: int = 2500  # steps training the vision tower alone on object_loss first (0: off)
    vision_warmup_frames: int = 16  # frames per warm-up step
    vision_warmup_lr: float = 2e-3
    other_hidden_frac: float = 0.25  # share of kept samples "instructed object out of view" (not the episode's)
    search_walk_m: float = 0.0     # > 0: answer an object not in the picture by the walking search
                                   # (expert.search_action), not by the expert's planned path
    last_move_feedback: bool = False  # prompts say whether the last motion stalled (pair.LAST_MOVE_TEMPLATE)
    relocate_free_m: float = 1.5   # > 0: prompts say whether the robot turned a full circle in place ({turned});
                                   # an object not in the picture is answered by the search that then walks on
                                   # where this much floor is free (expert.search_action)
    seen_min_pixels: int = 20      # camera pixels (of 160x120) the instructed object must cover to be answered by
                                   # the expert; fewer: by the search (with search_walk_m / relocate_free_m), so
                                   # the labels ask only for objects the target can make out
    bump_prob: float = 0.0         # decisions near an obstacle that walk into it instead (dataset.rollouts)
    # On-policy distillation of the draft (distill.py), after its expert-data training: frames of
    # rollouts driven by the target and by the draft (plus the expert's), every object asked,
    # labelled with the target's greedy answers and distributions; KL(target || draft). 0 steps: off.
    distill_target_episodes: int = 300
    distill_draft_episodes: int = 300
    distill_steps: int = 6000
    distill_batch: int = 32
    distill_lr: float = 5e-4
    # Exits trained on the decisive rows of real verification passes (verification.py) in this many
    # speculative-decoder-driven episodes; 0: on the target's answer positions of the expert data.
    exit_episodes: int = 100


def apply_overrides(cfg: TrainConfig, overrides: Dict[str, str]) -> TrainConfig:
    """Set ``cfg``'s fields from text (``{"target_steps": "6000", "absent_twins": "true"}``)."""
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise KeyError(f"TrainConfig has no field {key!r}")
        kind = type(getattr(cfg, key))
        setattr(cfg, key, value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
    return cfg


def prompt_template(cfg: TrainConfig) -> str:
    """The prompt template the pair of ``cfg`` is trained and served with ('' = the instruction)."""
    template = LAST_MOVE_TEMPLATE if cfg.last_move_feedback else ""
    if cfg.relocate_free_m > 0.0:
        template = (template or PLACEHOLDER) + TURNED_SUFFIX
    return template


def draft_init_layers(cfg: TrainConfig):
    """The target's decoder layers the draft starts from (``draft_init = "target:0,3"``), or None."""
    kind, _, layers = cfg.draft_init.partition(":")
    if kind == "scratch" and not layers:
        return None
    if kind != "target" or not layers:
        raise ValueError(f"draft_init must be 'scratch' or 'target:<layers>', got {cfg.draft_init!r}")
    return tuple(int(x) for x in layers.split(","))


# Fields added after a recipe was trained: at these values they change nothing, so they leave
# that recipe's hash (and the committed artefacts' up-to-date state) as it was.
_NEUTRAL = {"boundary_repeat": 1, "small_repeat": 1, "object_weight": 0.0, "object_min_tokens": 4, "vision_warmup_steps": 0, "vision_warmup_frames": 16,
            "vision_warmup_lr": 2e-3, "distill_target_episodes": 0, "distill_draft_episodes": 0, "distill_steps": 0,
            "distill_batch": 32, "distill_lr": 1e-3, "exit_episodes": 0, "turn_step_deg": 1.0, "move_step_m": 0.05,
            "draft_init": "scratch", "search_walk_m": 0.0, "last_move_feedback": False, "bump_prob": 0.0,
            "relocate_free_m": 0.0, "seen_min_pixels": 8}


# How the work is spread (data workers, torch threads), not what is trained: the data are the same
# whatever the worker count; the thread count changes only the rounding of CPU reductions.
_EXECUTION = ("workers", "threads")


def recipe_sha(cfg: "TrainConfig") -> str:
    """Hash of everything that decides the trained weights (config, shapes, vocabulary, exits)."""
    config = {k: v for k, v in asdict(cfg).items()
              if k not in _EXECUTION and not (k in _NEUTRAL and v == _NEUTRAL[k])}
    recipe = {"config": config, "target": asdict(TARGET_SPEC), "draft": asdict(DRAFT_SPEC),
              "exits": list(EXIT_LAYERS), "words": vocabulary(prompt_template(cfg)), "image": [IMAGE_W, IMAGE_H, PATCH, MERGE], "version": 1}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=list).encode()).hexdigest()[:16]


def recipe_sha_of(config: Dict, seed: "int | None" = None) -> str:
    """:func:`recipe_sha` of a report's ``config`` (fields it lacks at their defaults), with its
    seed replaced by ``seed`` if given: two trainings are of one recipe when these agree."""
    cfg = TrainConfig()
    for key, value in config.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    if seed is not None:
        cfg.seed = seed
    return recipe_sha(cfg)
