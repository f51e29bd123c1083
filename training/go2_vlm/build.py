"""The Go2 VLM pair's recipe end to end: :func:`build` trains target, draft and exits from scratch
and saves them (see :mod:`training.go2_vlm` for the stages); :func:`up_to_date` says whether the
committed pair was trained with the current recipe."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Dict, Optional

import torch

from specdec.models.artefacts import go2_pair_paths

from .config import TrainConfig, draft_init_layers, prompt_template, recipe_sha
from .data import assemble_dataset, collect_chunks, data_jobs, expert_chunks, set_rollout_policy, training_rows
from .pair import (DRAFT_SPEC, EXIT_LAYERS, TARGET_SPEC, artefacts_exist, build_model, build_processor,
                   build_tokenizer, draft_from_target, read_json, save_processor, save_prompt_template, spec_of)
from .distill import distill_on_policy
from .train import answer_accuracy, shape_accuracy, teacher_pass, train_model, warm_up_vision
from .verification import round_agreement, verification_rows


def up_to_date(out_dir: Optional[str] = None) -> bool:
    """The pair in ``out_dir`` (default: the committed one) exists and was trained with the current recipe."""
    report = read_json(go2_pair_paths(out_dir).train_report) or {}
    return artefacts_exist(out_dir) and report.get("recipe_sha") == recipe_sha(TrainConfig())


def _labels_subset(labels, held_out: torch.Tensor):
    rows_h = torch.nonzero(held_out[labels.seq]).flatten()
    rows_t = torch.nonzero(~held_out[labels.seq]).flatten()
    return labels.subset(rows_t), labels.subset(rows_h)


def build(out_dir: Optional[str] = None, force: bool = False, config: Optional[TrainConfig] = None,
          progress: bool = True, log=print, device: str = "cpu", target_only: bool = False) -> dict:
    """Train target, draft and exit adapters from scratch and save them under ``out_dir``.

    Idempotent: does nothing (returns ``{"skipped": True}``) when the artefacts exist, unless
    ``force``. Deterministic for a :class:`TrainConfig` (fixed seeds, fixed data chunks) on one
    device; ``device="cuda"`` trains on a GPU (same recipe, not the same bits as the CPU run:
    the committed artefacts are the CPU ones ``make models`` rebuilds). ``target_only`` stops
    after the target (recipe experiments: no draft, no exits, only ``out_dir/target``).
    """
    out_dir = go2_pair_paths(out_dir).root
    if artefacts_exist(out_dir) and not force:
        log(f"go2 vlm pair: artefacts present in {out_dir} (force=True retrains)")
        return {"skipped": True, "out_dir": out_dir}
    from specdec.models.adapters import wrap_model
    from specdec.models.fingerprint import model_fingerprint, tokenizer_fingerprint
    from training.train_exits import train_exit_heads

    cfg = config or TrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    try:
        report: Dict[str, object] = {"config": asdict(cfg)}
        t = time.time()
        chunks = expert_chunks(cfg, progress)

        def prepare(chunks):
            """Tensors of ``chunks`` on ``device``, with the rows to train on and the held-out rows."""
            data = assemble_dataset(chunks, cfg, log)
            rows = training_rows(data, cfg.other_hidden_frac, cfg.seed, cfg.rare_repeat, cfg.boundary_repeat,
                                 cfg.small_repeat)
            return data.to(device), rows, torch.nonzero(data.held_out).flatten()

        data, train_rows, held_rows = prepare(chunks)
        report["data"] = {"frames": len(data), "held_out": int(data.held_out.sum()), "prompt_len": data.prompt_len,
                          "seconds": round(time.time() - t, 1)}
        tok = build_tokenizer(prompt_template(cfg))
        processor = build_processor(tok)

        held_frames = torch.unique(data.frame[held_rows]).cpu()
        target = build_model(TARGET_SPEC, tok, seed=cfg.seed).to(device)
        if cfg.vision_warmup_steps > 0:
            report["vision_warmup"] = warm_up_vision(
                target, data, train_rows, steps=cfg.vision_warmup_steps, frames_per_step=cfg.vision_warmup_frames,
                lr=cfg.vision_warmup_lr, seed=cfg.seed + 6, progress=progress, min_tokens=cfg.object_min_tokens)
            report["vision_warmup"].update(held_out=shape_accuracy(target, data, held_frames))
            log(f"go2 vision warm-up: {report['vision_warmup']}")
        report["target"] = train_model(target, data, train_rows, steps=cfg.target_steps, batch=cfg.target_batch,
                                       lr=cfg.target_lr, seed=cfg.seed + 1, weight_decay=cfg.weight_decay,
                                       aux_weight=cfg.aux_weight, object_weight=cfg.object_weight,
                                       object_min_tokens=cfg.object_min_tokens, desc="go2 target", progress=progress)
        report["target"].update(held_out={**answer_accuracy(target, data, held_rows),
                                          **shape_accuracy(target, data, held_frames)},
                                params=sum(p.numel() for p in target.parameters()))
        log(f"go2 target: {report['target']}")

        if cfg.dagger_episodes > 0:
            # DAgger: the states the trained target reaches on its own (drifted off the expert's
            # path, pressed against an object), labelled by the expert, then fine-tune on all data.
            t = time.time()
            set_rollout_policy(target.cpu(), processor, prompt_template(cfg))
            first = len(chunks)
            chunks = chunks + collect_chunks(data_jobs(cfg, first, cfg.dagger_episodes, learner_driven=True), cfg.workers,
                                             desc="go2 dagger rollouts (chunks)", progress=progress)
            data, train_rows, held_rows = prepare(chunks)
            target.to(device)
            rollout_s = round(time.time() - t, 1)
            report["dagger"] = train_model(target, data, train_rows, steps=cfg.dagger_steps, batch=cfg.target_batch,
                                           lr=cfg.dagger_lr, seed=cfg.seed + 5, weight_decay=cfg.weight_decay,
                                           aux_weight=0.0, desc="go2 target (dagger)", progress=progress)
            report["dagger"].update(rollout_seconds=rollout_s, held_out=answer_accuracy(target, data, held_rows))
            log(f"go2 dagger: {report['dagger']}")

        if target_only:
            path = go2_pair_paths(out_dir).target
            os.makedirs(path, exist_ok=True)
            target.cpu().save_pretrained(path)
            save_processor(processor, path)
            save_prompt_template(path, prompt_template(cfg))
            report["total_seconds"] = round(time.time() - t_start, 1)
            return report

        t = time.time()
        teacher_logp, labels = teacher_pass(target, data, EXIT_LAYERS, progress=progress)
        report["teacher_pass_seconds"] = round(time.time() - t, 1)

        init_layers = draft_init_layers(cfg)
        if init_layers is None:
            draft = build_model(DRAFT_SPEC, tok, seed=cfg.seed + 2).to(device)
        else:
            draft = draft_from_target(target, init_layers, tok).to(device)
        report["draft"] = {"init": cfg.draft_init}
        if cfg.draft_steps > 0:
            report["draft"].update(train_model(
                draft, data, train_rows, steps=cfg.draft_steps, batch=cfg.draft_batch, lr=cfg.draft_lr,
                seed=cfg.seed + 3, weight_decay=cfg.weight_decay, teacher_logp=teacher_logp, kd_alpha=cfg.kd_alpha,
                aux_weight=cfg.aux_weight, object_weight=cfg.object_weight, object_min_tokens=cfg.object_min_tokens,
                desc="go2 draft", progress=progress))
        report["draft"].update(held_out={**answer_accuracy(draft, data, held_rows),
                                         **shape_accuracy(draft, data, held_frames)},
                               params=sum(p.numel() for p in draft.parameters()),
                               spec=asdict(spec_of(draft)))
        log(f"go2 draft: {report['draft']}")

        next_chunk = len(chunks)  # chunk numbers (rollout seeds) used so far
        if cfg.distill_steps > 0:
            report["distill"] = distill_on_policy(draft, target, chunks, cfg, next_chunk, device, progress, log)
            next_chunk += report["distill"]["chunks"]

        if cfg.exit_episodes > 0:
            t = time.time()
            draft.cpu(), target.cpu()
            train_labels, held_labels = verification_rows(
                wrap_model(draft, processor), wrap_model(target, processor), EXIT_LAYERS, cfg, next_chunk,
                cfg.exit_episodes, progress=progress)
            target.to(device)
            exits_trained_on = "rows 0..accepted of real verification passes (go2_sim, speculative decoding)"
            report["exit_rows"] = {"train": len(train_labels), "held_out": len(held_labels),
                                   "rounds": len(train_labels.sequences), "seconds": round(time.time() - t, 1)}
        else:
            train_labels, held_labels = _labels_subset(labels, data.held_out)
            exits_trained_on = "go2_sim expert frames (answer positions)"
        heads, exit_report = train_exit_heads(
            target, train_labels, list(EXIT_LAYERS), adapter=cfg.exit_adapter, rank=cfg.exit_rank,
            epochs=cfg.exit_epochs, batch=512, lr=cfg.exit_lr, n_random=4096, seed=cfg.seed + 4,
            held_out=held_labels, progress=progress, log=log)
        report["exits"] = exit_report
        if cfg.exit_episodes > 0:  # the rounds of held-out episodes whose hint each exit names exactly
            exit_report["round_agreement"] = {str(k): v for k, v in round_agreement(heads, held_labels).items()}
        log(f"go2 exits: {json.dumps(exit_report['per_layer'])}")
        target.cpu(), draft.cpu(), heads.cpu()

        # save (to a temporary folder first, so an interrupted run leaves no half artefacts)
        tmp = out_dir.rstrip("/") + ".tmp"
        if os.path.exists(tmp):
            import shutil

            shutil.rmtree(tmp)
        p = go2_pair_paths(tmp)
        for model, path in ((target, p.target), (draft, p.draft)):
            os.makedirs(path, exist_ok=True)
            model.save_pretrained(path)
            save_processor(processor, path)
            save_prompt_template(path, prompt_template(cfg))
        heads.save(p.exits, extra_metadata={"trained_on": exits_trained_on})
        report["fingerprints"] = {"tokenizer": tokenizer_fingerprint(tok), "target": model_fingerprint(target),
                                  "draft": model_fingerprint(draft)}
        report["total_seconds"] = round(time.time() - t_start, 1)
        report["threads"] = cfg.threads
        report["recipe_sha"] = recipe_sha(cfg)
        with open(p.train_report, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        _replace_dir(tmp, out_dir)
        log(f"go2 vlm pair: trained in {report['total_seconds']} s -> {out_dir}")
        return report
    finally:
        torch.set_num_threads(threads)


def _replace_dir(src: str, dst: str) -> None:
    """Move the trained folders of ``src`` into ``dst`` (other files in ``dst`` are kept)."""
    import shutil

    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        target = os.path.join(dst, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
        shutil.move(os.path.join(src, name), target)
    shutil.rmtree(src)

