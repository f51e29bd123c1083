#!/usr/bin/env python3
"""(Re)create every model artefact of the project, reproducibly (``make models``).

Steps (each skipped when its output exists and matches its recipe; ``--force`` redoes them):

  target    convert the packaged SmolLM2-135M-Instruct gguf to .cache/models/smollm2-135m-instruct/
  labels    label training text with the target (cached under .cache/models/_work/; only when training)
  draft     distil the draft -> models/smollm2-135m-draft/ (committed: own layers + config)
  assemble  rebuild .cache/models/smollm2-135m-draft/ (HF folder) from the committed draft
  feature_draft  train the draft conditioned on the target's states -> models/smollm2-135m-feature-draft/
  feature_assemble  rebuild .cache/models/smollm2-135m-feature-draft/ from it
  exits     train early-exit adapters -> models/smollm2-135m-instruct-exits/early_exit_sweep.safetensors
  hint_exit train the hint exit (an exit at HINT_EXIT_LAYER that attends, from the sweep's head there)
            -> .../early_exit.safetensors
  prompts   the held-out text prompts -> models/smollm2_eval_prompts.json (read by eval and bench/)
  eval      acceptance rate / losslessness / exit agreement / per-token cost -> models/eval_smollm2.json,
            docs/models/eval_smollm2.md
  feature_eval  the same evaluation for the feature draft -> models/eval_smollm2_feature.json,
            docs/models/eval_smollm2_feature.md
  go2_vlm   train the Go2 VLM pair on simulator data -> models/go2_vlm/{target,draft} (committed,
            target/early_exit.safetensors included; training/go2_vlm/)
  go2_eval  closed-loop evaluation of the Go2 pair (50 evaluation + 100 validation seeds)
            -> models/go2_vlm/eval_report.json, docs/models/go2_vlm.md

``--ensure`` is the fast path for demos, tests and benchmarks: only ``target`` and ``assemble``
(no training, no evaluation); it fails if a committed artefact is missing.

More pairs (e.g. a VLM pair) plug in by appending :class:`Step` objects to ``STEPS`` (or via
``register_step`` from another module listed in ``SPECDEC_EXTRA_STEPS``): a step has a name,
``ensure`` (part of the fast path?), ``is_done()`` and ``run(force)``.

``make models`` runs the artefact steps (``--no-eval``), ``make models-eval`` the two evaluations
(``--eval-only``); ``MODELS_ARGS=--force`` rebuilds from scratch.

Usage: python scripts/make_models.py [--ensure] [--force] [--steps target draft ...] [--no-eval | --eval-only]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from specdec.models import artefacts  # noqa: E402

# -- recipes (changing one retrains that artefact) -------------------------------------------------

SEED = 0
TEXT_DATA = "text:chat=160,prose=96,new=96,seed=0"
# Exit layers of the sweep file (agreement vs depth).
EXIT_LAYERS = [3, 6, 9, 12, 14, 15, 18, 21, 24, 27]
# The hint file holds the exit the verifier hints from (its default hint layer is the first of the file
# it loads). Layer 21 (22/30 deep, the deepest the 75 % allows): the most time saved per round
# by expected benefit with version 1's heads; with version 2's the estimate put layer 9 ahead by 1.2 ms
# a round, within its error, and a full make bench with layer 9 was slower (hint acc. 0.15 against
# 0.34). Since version 3 it is not a copy of the sweep's position-wise head but an exit that attends
# over the sequence (``attention``: the sweep's layer-21 head, then one decoder layer of its own that
# reads the target's layer-22 keys and values): position-wise heads stop near 64 % at layer 21 however
# much data they get; this one gains 4 points on the same data, and each 3,000 more questions the target
# writes itself have added 1-2 more (version 4: 9,000; scripts/experiments/text_exit_inputs.py).
# ``--hint-layer`` copies a layer of the sweep file instead, to benchmark it.
HINT_EXIT_LAYER = 21
HINT_EXIT_COPY = False
HINT_EXIT_RECIPE = {"data": ["text:chat=4000,prose=2000,new=96,seed=0,batch_size=128", "self:chat=3000",
                             "self:chat=3000,seed=1", "self:chat=3000,seed=2"], "label_dtype": "bfloat16",
                    "layer": HINT_EXIT_LAYER, "adapter": "attention", "epochs": 5.0, "batch": 16, "lr": 1e-3,
                    "seed": SEED, "held_out_every": 10, "version": 4}
# The exits learn from far more of the target's answers than the draft's recipe labels (488k positions
# against 28k; bfloat16 labels, AMX): at layer 21 that, with 3 epochs at lr 1e-3, took agreement on the
# held-out prompts from 48 to ~62 % (scripts/experiments/text_exit_data.py). The size keeps the ten
# layers' captured states (fp16) within a 24 GB machine while they are labelled.
EXIT_DATA = "text:chat=3000,prose=1500,new=96,seed=0"
EXIT_RECIPE = {"data": EXIT_DATA, "label_dtype": "bfloat16", "layers": EXIT_LAYERS, "adapter": "mlp", "rank": 128,
               "least_squares_init": True, "epochs": 3.0, "batch": 512, "lr": 1e-3, "seed": SEED,
               "held_out_every": 10, "version": 2}
# The held-out evaluation (>= 50 prompts; tokens per prompt sized so make models stays < 30 min).
# "alternatives": the same decodes again with the draft's next-best token offered as branches (trees:
# one branch a block, two, one at every position - version 6); with exits, again with a
# hint from every exit layer (which layer to hint from: version 4; the confidence a hint needs to be
# acted on, and where a selective exit fires: version 5).
EVAL_RECIPE = {"gamma": 4, "max_new_tokens": 24, "n_chat": 32, "n_prose": 24, "all_positions": True,
               "alternatives": ["1:1", "1:2", "1"], "version": 6}
DRAFT_RECIPE = {"data": TEXT_DATA, "layers": 4, "init": "first-k-1+last", "epochs": 2.5, "lr": 1e-3,
                "max_tokens": 512, "seed": SEED, "version": 1}


def recipe_sha(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[make_models] {msg}")


# -- shared state (loaded lazily, once) ------------------------------------------------------------


class Context:
    def __init__(self, force: bool, threads: Optional[int] = None):
        self.force = force
        self.threads = threads
        self._target = None
        self._labels = None
        self.timings = {}

    def target(self):
        if self._target is None:
            from training.train_exits import load_target, pick_device

            self._target = load_target(artefacts.text_target_dir(), pick_device("auto"))
        return self._target

    def labels(self, capture_layers, data: str = TEXT_DATA, timing: str = "labels", dtype: str = "float32"):
        """Target-labelled training text ``data`` (a source spec) with hidden states of
        ``capture_layers``, the target run in ``dtype`` (cached on disk; the time it took goes to
        ``timings[timing]``)."""
        if self._labels is None or self._labels[0] != (data, list(capture_layers), dtype):
            from tqdm import tqdm

            from training.teacher import labelling_model
            from training.text.data import cached_labels, make_source

            model, tokenizer = self.target()
            model = labelling_model(model, dtype)
            source = make_source(data)
            if next(model.parameters()).device.type == "cuda":  # a GPU answers many prompts at once
                source.batch_size = max(getattr(source, "batch_size", 0), 1024)
            key = {'d': data, 'l': capture_layers, **({} if dtype == "float32" else {'t': dtype})}
            cache = os.path.join(artefacts.cache_root(), "_work", f"labels-{recipe_sha(key)}.pt")
            start = time.time()
            with tqdm(total=len(source), desc="labelling (target generates)", unit="prompt") as bar:
                labels = cached_labels(source, model, tokenizer, capture_layers, cache, progress=bar)
            self._labels = ((data, list(capture_layers), dtype), labels)
            self.timings[timing] = round(time.time() - start, 1)
            log(f"labels: {len(labels)} positions, {len(labels.sequences)} sequences")
        return self._labels[1]

    def drop_labels(self) -> None:
        """Let the labels go once a step has taken what it needs (the exits' are gigabytes)."""
        self._labels = None


def _source_sha() -> Optional[str]:
    from training.text.smollm2 import read_manifest

    manifest = read_manifest(artefacts.text_target_dir()) or {}
    return manifest.get("source_sha256")


@dataclass
class Step:
    name: str
    ensure: bool
    is_done: Callable[[], bool]
    run: Callable[[Context], None]
    help: str = ""
    evaluation: bool = False  # measures artefacts (reports, model cards) instead of making one


# -- text pair steps -------------------------------------------------------------------------------


def _target_done() -> bool:
    from training.text.smollm2 import file_sha256, gguf_location, is_converted

    try:
        folder, name = gguf_location()
    except Exception:
        return is_converted(artefacts.text_target_dir())
    return is_converted(artefacts.text_target_dir(), file_sha256(os.path.join(folder, name)))


def _target_run(ctx: Context) -> None:
    from training.text.smollm2 import convert

    convert(artefacts.text_target_dir(), force=ctx.force, log=log)


def _draft_meta() -> Optional[dict]:
    from training.text.distill_draft import DraftError, read_committed

    try:
        return read_committed(artefacts.committed_text_draft_dir())
    except DraftError:
        return None


def _draft_done() -> bool:
    meta = _draft_meta()
    return bool(meta) and meta.get("recipe_sha") == recipe_sha(DRAFT_RECIPE) and all(
        os.path.isfile(os.path.join(artefacts.committed_text_draft_dir(), s)) for s in meta.get("shards", [])
    )


def _draft_run(ctx: Context) -> None:
    from training.text.distill_draft import build_draft, default_init_layers, distill, save_committed

    model, tokenizer = ctx.target()
    labels = ctx.labels(EXIT_LAYERS)
    init = default_init_layers(model.config.num_hidden_layers, DRAFT_RECIPE["layers"])
    draft = build_draft(model, init)
    stats = distill(draft, labels, epochs=DRAFT_RECIPE["epochs"], lr=DRAFT_RECIPE["lr"],
                    max_tokens=DRAFT_RECIPE["max_tokens"], seed=SEED, log=log)
    stats["labelling_seconds"] = ctx.timings.get("labels")
    save_committed(draft, model, tokenizer, artefacts.committed_text_draft_dir(), {
        "init_layers": init, "training": stats, "recipe": DRAFT_RECIPE, "recipe_sha": recipe_sha(DRAFT_RECIPE),
        "target_source_sha256": _source_sha(), "target": artefacts.TEXT_TARGET_NAME,
    })
    ctx.timings["draft"] = stats["train_seconds"]
    after = stats.get("held_out_after", {})
    log(f"draft: held-out top-1 agreement {100 * after.get('agreement', 0):.1f}% in {stats['train_seconds']}s")


def _assemble_done() -> bool:
    from training.text.distill_draft import MANIFEST

    meta = _draft_meta()
    try:
        with open(os.path.join(artefacts.text_draft_dir(), MANIFEST)) as handle:
            have = json.load(handle)
    except (OSError, ValueError):
        return False
    return bool(meta) and have.get("weights_sha256") == meta.get("weights_sha256") and os.path.isfile(
        os.path.join(artefacts.text_draft_dir(), "model.safetensors"))


def _assemble_run(ctx: Context) -> None:
    from training.text.distill_draft import assemble

    if _draft_meta() is None:
        raise SystemExit(f"no committed draft in {artefacts.committed_text_draft_dir()}: run scripts/make_models.py "
                         "without --ensure to train it")
    assemble(artefacts.committed_text_draft_dir(), artefacts.text_target_dir(), artefacts.text_draft_dir(),
             force=ctx.force, log=log)


def _feature_meta() -> Optional[dict]:
    try:
        with open(os.path.join(artefacts.committed_text_feature_draft_dir(), "draft_config.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _feature_draft_done() -> bool:
    from training.text.feature_draft import DEFAULT_RECIPE, FINETUNE_RECIPE  # the recipes live with their trainer

    meta = _feature_meta()
    return meta is not None and meta.get("recipe") == DEFAULT_RECIPE and meta.get("finetune") == FINETUNE_RECIPE


def _feature_draft_run(ctx: Context) -> None:
    """Both stages; the first (a GPU's work: hours on a 2-core CPU) only when its recipe changed or
    its weights are gone (the second stage starts from the first's weights, kept with the draft)."""
    from training.text.feature_draft import (DEFAULT_RECIPE, FINETUNE_RECIPE, STAGE1_WEIGHTS_FILE, finetune_and_save,
                                             train_and_save)

    model, tokenizer = ctx.target()
    folder = artefacts.committed_text_feature_draft_dir()
    meta = _feature_meta() or {}
    stage1_kept = "finetune" not in meta or os.path.isfile(os.path.join(folder, STAGE1_WEIGHTS_FILE))
    if ctx.force or meta.get("recipe") != DEFAULT_RECIPE or not stage1_kept:
        labels = ctx.labels([], DEFAULT_RECIPE["data"], timing="feature_labels")
        stats = train_and_save(model, tokenizer, labels, folder, dict(DEFAULT_RECIPE), log=log)
        ctx.timings["feature_draft"] = stats["train_seconds"]
    labels = ctx.labels([], FINETUNE_RECIPE["data"], timing="feature_finetune_labels",
                        dtype=FINETUNE_RECIPE["label_dtype"])
    stats = finetune_and_save(model, tokenizer, labels, folder, dict(FINETUNE_RECIPE), log=log)
    ctx.timings["feature_finetune"] = stats["train_seconds"]


def _feature_assemble_done() -> bool:
    meta = _feature_meta()
    try:
        with open(os.path.join(artefacts.text_feature_draft_dir(), "specdec_feature_draft.json")) as handle:
            return meta is not None and json.load(handle).get("weights_sha256") == meta["weights_sha256"]
    except (OSError, ValueError):
        return False


def _feature_assemble_run(ctx: Context) -> None:
    from training.text.feature_draft import assemble

    if _feature_meta() is None:
        raise SystemExit(f"no committed feature draft in {artefacts.committed_text_feature_draft_dir()}: run "
                         "scripts/make_models.py --steps feature_draft")
    assemble(artefacts.committed_text_feature_draft_dir(), artefacts.text_target_dir(),
             artefacts.text_feature_draft_dir(), force=True)


def _exits_meta(path: Optional[str] = None) -> Optional[dict]:
    from safetensors import safe_open

    path = path or artefacts.committed_text_exits_path()
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:
        return None


def _exits_done() -> bool:
    return (_exits_meta(artefacts.committed_text_exits_sweep_path()) or {}).get("recipe_sha") == recipe_sha(EXIT_RECIPE)


def _exits_run(ctx: Context) -> None:
    import torch

    from training.train_exits import format_table, train_exit_heads

    model, _tokenizer = ctx.target()
    r = EXIT_RECIPE
    labels = ctx.labels(EXIT_LAYERS, data=r["data"], timing="exit_labels", dtype=r["label_dtype"])
    train, held = labels.split_by_sequence(r["held_out_every"])
    del labels
    ctx.drop_labels()
    heads, report = train_exit_heads(model, train, r["layers"], adapter=r["adapter"], rank=r["rank"],
                                     epochs=r["epochs"], batch=r["batch"], lr=r["lr"], seed=r["seed"],
                                     held_out=held, ls_init=r["least_squares_init"], log=log)
    report["data"] = r["data"]
    report["labelling_seconds"] = ctx.timings.get("exit_labels")
    meta = {"training": json.dumps(report, sort_keys=True), "recipe_sha": recipe_sha(EXIT_RECIPE),
            "target_source_sha256": _source_sha() or "", "target": artefacts.TEXT_TARGET_NAME}
    os.makedirs(os.path.dirname(artefacts.committed_text_exits_sweep_path()), exist_ok=True)
    heads.to(dtype=torch.float16)  # fp16 on disk keeps the files small; loading casts to the target's dtype
    heads.save(artefacts.committed_text_exits_sweep_path(), extra_metadata=meta)
    ctx.timings["exits"] = report["train_seconds"]
    log("exits: held-out agreement (target-generated training text)\n" + format_table(report))


def _hint_exit_sha() -> str:
    """The hint file's recipe: a copy of the sweep's layer, or the attention exit trained on it."""
    sweep = (_exits_meta(artefacts.committed_text_exits_sweep_path()) or {}).get("recipe_sha")
    if HINT_EXIT_COPY:
        return sweep or ""
    return recipe_sha({**HINT_EXIT_RECIPE, "sweep": sweep})


def _hint_exit_done() -> bool:
    hint = _exits_meta()
    return (hint is not None and hint.get("exit_layers") == json.dumps([HINT_EXIT_LAYER])
            and hint.get("recipe_sha") == _hint_exit_sha())


def _hint_exit_run(ctx: Context) -> None:
    import torch

    from specdec.models.early_exit import EarlyExitHeads

    model, _tokenizer = ctx.target()
    sweep = EarlyExitHeads.load(model, artefacts.committed_text_exits_sweep_path())
    if HINT_EXIT_LAYER not in sweep.exit_layers:
        raise SystemExit(f"hint layer {HINT_EXIT_LAYER} is not in the sweep file's layers {sweep.exit_layers}")
    meta = {"recipe_sha": _hint_exit_sha(), "target_source_sha256": _source_sha() or "",
            "target": artefacts.TEXT_TARGET_NAME}
    if HINT_EXIT_COPY:
        hint = EarlyExitHeads(model, [HINT_EXIT_LAYER], adapter=sweep.adapter_kind, rank=sweep.adapter_rank)
        hint.adapters[str(HINT_EXIT_LAYER)].load_state_dict(sweep.adapters[str(HINT_EXIT_LAYER)].state_dict())
        meta["training"] = (_exits_meta(artefacts.committed_text_exits_sweep_path()) or {}).get("training", "")
    else:
        hint, report = _train_hint_exit(ctx, model, sweep)
        meta["training"] = json.dumps(report, sort_keys=True)
    hint.to(dtype=torch.float16)
    hint.save(artefacts.committed_text_exits_path(), extra_metadata=meta)
    log(f"hint exit: layer {HINT_EXIT_LAYER} ({hint.adapter_kind}) -> {artefacts.committed_text_exits_path()}")


def _train_hint_exit(ctx: Context, model, sweep):
    """HINT_EXIT_RECIPE: an ``attention`` exit at the hint layer, from the sweep's head of that layer."""
    from training.teacher import Labels
    from training.train_exits import SequenceStates, attention_exit_hits, train_attention_exit

    r, layer = HINT_EXIT_RECIPE, HINT_EXIT_LAYER
    start = time.time()
    parts = []
    for spec in r["data"]:
        parts.append(ctx.labels([layer], data=spec, timing="hint_exit_labels", dtype=r["label_dtype"]))
        ctx.drop_labels()
    labels = Labels.concat(parts)
    del parts
    labelling = round(time.time() - start, 1)
    states = SequenceStates(labels, model, layer)
    train_seqs = [s for s in range(len(states)) if s % r["held_out_every"] != r["held_out_every"] - 1]
    start = time.time()
    hint = train_attention_exit(model, states, train_seqs, sweep, epochs=r["epochs"], lr=r["lr"], batch=r["batch"],
                                seed=r["seed"], log=log)
    seconds = round(time.time() - start, 1)
    held = (labels.seq % r["held_out_every"] == r["held_out_every"] - 1).nonzero().flatten()
    _, right, _ = attention_exit_hits(hint, states, held)
    report = {"layer": layer, "adapter": "attention", "data": r["data"], "train_sequences": len(train_seqs),
              "train_positions": int(sum(len(states.rows[s]) for s in train_seqs)), "epochs": r["epochs"],
              "lr": r["lr"], "batch": r["batch"], "seed": r["seed"], "labelling_seconds": labelling,
              "train_seconds": seconds, "held_out_positions": int(right.numel()),
              "held_out_agreement": round(float(right.float().mean()), 4)}
    log(f"hint exit: held-out agreement {100 * report['held_out_agreement']:.1f} % "
        f"({report['train_positions']} training positions, {seconds:.0f} s)")
    return hint, report


def _eval_prompts() -> list:
    """The held-out prompts of the text evaluation, as the committed prompts file holds them."""
    from dataclasses import asdict

    from training.text import corpus

    return [asdict(p) for p in corpus.eval_prompts(EVAL_RECIPE["n_chat"], EVAL_RECIPE["n_prose"])]


def _prompts_done() -> bool:
    try:
        with open(artefacts.text_eval_prompts_path()) as handle:
            return json.load(handle) == _eval_prompts()
    except (OSError, ValueError):
        return False


def _prompts_run(ctx: Context) -> None:
    path = artefacts.text_eval_prompts_path()
    with open(path, "w") as handle:
        json.dump(_eval_prompts(), handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    log(f"prompts: {path}")


def _eval_inputs_sha() -> str:
    meta = _draft_meta() or {}
    exits = _exits_meta(artefacts.committed_text_exits_sweep_path()) or {}
    return recipe_sha({"draft": meta.get("weights_sha256"), "exits": exits.get("recipe_sha"),
                       "hint_exit": (_exits_meta() or {}).get("recipe_sha"), "eval": EVAL_RECIPE,
                       "source": _source_sha()})


def _report_current(path: str, inputs_sha) -> bool:
    """Whether the evaluation report at ``path`` was made from the inputs whose hash ``inputs_sha()`` gives."""
    try:
        with open(path) as handle:
            return json.load(handle).get("inputs_sha") == inputs_sha()
    except (OSError, ValueError):
        return False


def _eval_done() -> bool:
    return _report_current(artefacts.text_eval_report_path(), _eval_inputs_sha)


def _eval_run(ctx: Context) -> None:
    from training.text import evaluate

    start = time.time()
    settings = {k: v for k, v in EVAL_RECIPE.items() if k != "version"}
    result = evaluate.evaluate(exits_path=artefacts.committed_text_exits_sweep_path(), log=log, **settings)
    result["inputs_sha"] = _eval_inputs_sha()
    evaluate.write(result, artefacts.text_eval_report_path(), artefacts.repo_path("docs", "models", "eval_smollm2.md"))
    ctx.timings["eval"] = round(time.time() - start, 1)
    o = result["overall"]
    log(f"eval: acceptance {100 * o['acceptance_rate']:.1f}%, {o['tokens_per_round']:.2f} tokens/round, "
        f"lossless {o['lossless']}/{o['prompts']}")


def _feature_eval_sha() -> str:
    return recipe_sha({"draft": (_feature_meta() or {}).get("weights_sha256"), "eval": EVAL_RECIPE,
                       "source": _source_sha()})


def _feature_eval_done() -> bool:
    return _report_current(artefacts.text_feature_eval_report_path(), _feature_eval_sha)


def _feature_eval_run(ctx: Context) -> None:
    from training.text import evaluate

    settings = {k: v for k, v in EVAL_RECIPE.items() if k not in ("version", "all_positions")}
    result = evaluate.evaluate(draft_dir=artefacts.text_feature_draft_dir(), exits_path="", hint_exit_path="", log=log,
                               **settings)
    result["inputs_sha"] = _feature_eval_sha()
    evaluate.write(result, artefacts.text_feature_eval_report_path(),
                   artefacts.repo_path("docs", "models", "eval_smollm2_feature.md"))
    o = result["overall"]
    log(f"feature eval: acceptance {100 * o['acceptance_rate']:.1f}%, {o['tokens_per_round']:.2f} tokens/round, "
        f"lossless {o['lossless']}/{o['prompts']}")


def _go2_done() -> bool:
    from training.go2_vlm.build import up_to_date

    return up_to_date()


def _go2_run(ctx: Context) -> None:
    from training.go2_vlm.build import build
    from training.go2_vlm.config import TrainConfig

    config = TrainConfig()
    if ctx.threads:  # --threads: also the data workers (a shared machine)
        config.threads = config.workers = ctx.threads
    report = build(force=True, log=log, config=config)
    ctx.timings["go2_vlm"] = report.get("total_seconds")


def _go2_eval_done() -> bool:
    from training.go2_vlm.evaluate import eval_up_to_date

    return eval_up_to_date()


def _go2_eval_run(ctx: Context) -> None:
    from training.go2_vlm import card
    from training.go2_vlm.evaluate import evaluate_and_save

    report = evaluate_and_save(log=log)
    card.write()
    log(f"go2 eval: target success {report['target']['success_rate']:.2f}, "
        f"draft {report['draft']['success_rate']:.2f}, "
        f"acceptance {report['speculative']['acceptance_rate']:.2f}")


STEPS: List[Step] = [
    Step("target", True, _target_done, _target_run, "convert the packaged gguf target"),
    Step("draft", False, _draft_done, _draft_run, "distil the draft (committed)"),
    Step("assemble", True, _assemble_done, _assemble_run, "rebuild the HF draft folder"),
    Step("feature_draft", False, _feature_draft_done, _feature_draft_run,
         "train the draft conditioned on the target's states (committed)"),
    Step("feature_assemble", True, _feature_assemble_done, _feature_assemble_run, "rebuild the feature-draft folder"),
    Step("exits", False, _exits_done, _exits_run, "train early-exit adapters, every layer of the sweep (committed)"),
    Step("hint_exit", False, _hint_exit_done, _hint_exit_run,
         "train the hint exit, one that attends, on the sweep's head (committed)"),
    Step("prompts", False, _prompts_done, _prompts_run, "held-out text prompts for eval and bench (committed)"),
    Step("eval", False, _eval_done, _eval_run, "evaluate the pair and the exits", evaluation=True),
    Step("feature_eval", False, _feature_eval_done, _feature_eval_run, "evaluate the feature draft",
         evaluation=True),
    Step("go2_vlm", False, _go2_done, _go2_run, "train the Go2 VLM pair + exits (committed)"),
    Step("go2_eval", False, _go2_eval_done, _go2_eval_run, "closed-loop evaluation of the Go2 pair",
         evaluation=True),
]


def register_step(step: Step, after: Optional[str] = None) -> None:
    """Add a step (e.g. the VLM pair's), after step ``after`` or at the end."""
    names = [s.name for s in STEPS]
    if step.name in names:
        STEPS[names.index(step.name)] = step
    elif after in names:
        STEPS.insert(names.index(after) + 1, step)
    else:
        STEPS.append(step)


def _load_extra_steps() -> None:
    for module in filter(None, os.environ.get("SPECDEC_EXTRA_STEPS", "").split(",")):
        importlib.import_module(module.strip())


def _use_seed(seed: int) -> None:
    global SEED
    SEED = DRAFT_RECIPE["seed"] = EXIT_RECIPE["seed"] = HINT_EXIT_RECIPE["seed"] = seed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensure", action="store_true", help="fast path: only rebuild .cache folders (no training)")
    parser.add_argument("--force", action="store_true", help="redo the selected steps even if up to date")
    parser.add_argument("--steps", nargs="+", default=None, help="only these steps (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation steps (make models)")
    parser.add_argument("--eval-only", action="store_true", help="only the evaluation steps (make models-eval)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 2; for the Go2 pair also its data workers)")
    parser.add_argument("--list", action="store_true", help="list the steps and whether they are up to date")
    parser.add_argument("--seed", type=int, default=None,
                        help="train the text draft and exits with this seed instead of their recipes' (a second "
                             "training, for the spread between trainings; the artefact's recipe records it, so a "
                             "later make models retrains the committed recipe)")
    parser.add_argument("--hint-layer", type=int, default=None,
                        help="step hint_exit: copy this layer of the sweep file as the hint head instead of "
                             "HINT_EXIT_LAYER (to benchmark another layer; a later make models restores the "
                             "committed one)")
    args = parser.parse_args(argv)
    if args.seed is not None:
        _use_seed(args.seed)
    if args.hint_layer is not None:
        global HINT_EXIT_LAYER, HINT_EXIT_COPY
        HINT_EXIT_LAYER, HINT_EXIT_COPY = args.hint_layer, True

    _load_extra_steps()
    if args.list:
        for step in STEPS:
            state = "done" if step.is_done() else "TODO"
            print(f"{step.name:10s} {state:5s} {'(ensure) ' if step.ensure else ''}{step.help}")
        return 0
    from training.train_exits import set_threads
    from tqdm import tqdm

    set_threads(args.threads)
    import torch

    torch.manual_seed(SEED)
    selected = [s for s in STEPS if (args.steps is None or s.name in args.steps)]
    if args.ensure:
        selected = [s for s in selected if s.ensure]
    if args.no_eval:
        selected = [s for s in selected if not s.evaluation]
    if args.eval_only:
        selected = [s for s in selected if s.evaluation]
    ctx = Context(force=args.force, threads=args.threads)
    start = time.time()
    with tqdm(total=len(selected), desc="make models", unit="step") as bar:
        for step in selected:
            bar.set_postfix(step=step.name)
            if not args.force and step.is_done():
                log(f"{step.name}: up to date")
            else:
                t0 = time.time()
                step.run(ctx)
                ctx.timings.setdefault(step.name, round(time.time() - t0, 1))
                ctx.timings[step.name + "_wall"] = round(time.time() - t0, 1)
            bar.update(1)
    log(f"done in {time.time() - start:.0f}s {json.dumps(ctx.timings) if ctx.timings else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
