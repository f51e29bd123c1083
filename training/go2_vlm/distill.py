"""On-policy distillation of the Go2 draft: propose what the *target* would say.

Speculative decoding pays only when the target accepts the draft's tokens, and the target
accepts exactly its own greedy answer. A draft trained on the expert's answers learns the task,
not the target: where the two differ (the target's mistakes, its choice between equally good
turns, its magnitudes) every such token is rejected. So after its expert-data training the
draft is distilled on the target itself:

* frames: the states the models visit when they decide - rollouts driven by the trained
  target and by the draft (:func:`policy_chunks`; the expert's frames are kept too);
* labels: every frame with the instruction of every object in its room (the same image asked
  for each object), answered greedily by the target, with its full next-token distribution at
  every answer position (:func:`label_with_target`);
* loss: KL(target || draft) over the whole (small) vocabulary along the target's own answer,
  the path verification follows (:func:`training.go2_vlm.train.train_model` with ``kd_alpha=1``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from specdec.models.prompting import apply_prompt_template

from .config import TrainConfig, prompt_template
from .data import (INSTRUCTIONS, Go2Data, chunk_count, collect_chunks, data_jobs, prompt_ids, set_rollout_policy,
                   stack_frames)
from .pair import MERGE, build_processor
from .train import answer_logits

ANSWER_TOKENS = 3  # verb, number, end (a "done" answer ends after two)


def policy_chunks(model, processor, cfg: TrainConfig, first_chunk: int, episodes: int, desc: str,
                  progress: bool = True) -> list:
    """Rollouts in which ``model`` (greedy) drives, numbered from chunk ``first_chunk`` (seeds apart
    from every other chunk's); the expert's labels of these chunks are not used here."""
    set_rollout_policy(model, processor, prompt_template(cfg))
    return collect_chunks(data_jobs(cfg, first_chunk, episodes, learner_driven=True), cfg.workers, desc=desc,
                          progress=progress)


@torch.no_grad()
def label_with_target(target, chunks: list, cfg: TrainConfig, batch_rows: int = 256,
                      progress: bool = True) -> Tuple[Go2Data, torch.Tensor]:
    """Every frame of ``chunks`` x the instruction of every object in its room (what a robot is
    asked there), answered greedily by ``target``.

    Returns the samples as :class:`Go2Data` (answer = the target's greedy answer, ``combo`` = the
    instructed object) and the target's log-probabilities at the answer positions ([N, A, V]
    float16). The answer is built position by position with teacher-forced passes over the fixed
    layout, as the adapter's incremental decode computes it; the last pass, which sees the whole
    answer, gives the distributions.
    """
    from tqdm import tqdm

    frames = stack_frames(chunks, cfg)
    template = prompt_template(cfg)
    processor = build_processor(template=template)
    tok = processor.tokenizer
    n_image = int(torch.tensor(frames.grid).prod()) // (MERGE * MERGE)
    # [2, instructions, L]: the prompts after a motion that finished / one that stalled
    prompts = torch.tensor([[prompt_ids(processor, apply_prompt_template(template, text, blocked), n_image)
                             for text in INSTRUCTIONS] for blocked in (False, True)])
    frame = torch.tensor([f for f, objs in enumerate(frames.objects) for _ in objs])
    combo = torch.tensor([c for objs in frames.objects for c in objs])
    n, prompt_len, A = len(frame), prompts.shape[2], ANSWER_TOKENS
    ids = torch.full((n, prompt_len + A - 1), tok.pad_token_id, dtype=torch.long)
    ids[:, :prompt_len] = prompts[frames.blocked[frame].long(), combo]
    data = Go2Data(ids=ids, targets=torch.full((n, A), -100, dtype=torch.long), frame=frame, pix=frames.pix,
                   grid=frames.grid, prompt_len=prompt_len, actions=[], held_out=frames.held_out[frame],
                   regions=frames.regions, combo=combo)
    logp = torch.zeros(n, A, target.config.text_config.vocab_size, dtype=torch.float16)
    target.eval()
    pos_cache: dict = {}
    for start in tqdm(range(0, n, batch_rows), desc="target labels", disable=not progress, leave=False):
        rows = torch.arange(start, min(n, start + batch_rows))  # frame-major: few vision passes per batch
        ended = torch.zeros(len(rows), dtype=torch.bool)
        for k in range(A):
            logits = answer_logits(target, data, rows, pos_cache)
            token = logits[:, k].argmax(-1)
            data.targets[rows, k] = torch.where(ended, torch.full_like(token, -100), token)
            if k + 1 < A:
                data.ids[rows, prompt_len + k] = torch.where(ended, torch.full_like(token, tok.pad_token_id), token)
            ended |= token == tok.eos_token_id
        logp[rows] = torch.log_softmax(logits, -1).half()
    data.actions = answer_texts(tok, data.targets)
    return data, logp


def answer_texts(tok, targets: torch.Tensor) -> List[str]:
    """The answers of ``targets`` ([N, A] token ids, -100 padded) as text, special tokens skipped."""
    return [tok.decode([t for t in row if t >= 0], skip_special_tokens=True) for row in targets.tolist()]


def distill_on_policy(draft, target, expert: list, cfg: TrainConfig, first_chunk: int, device: str = "cpu",
                      progress: bool = True, log=print) -> dict:
    """The whole stage, DAgger-style in two halves: label the ``expert`` chunks and rollouts driven
    by ``target``, train half of ``cfg.distill_steps``; then add rollouts driven by the draft as it
    now is (the states *it* reaches) and train the other half on everything. Chunks are numbered
    from ``first_chunk``. Returns the stage's report (``chunks``: how many chunk numbers it used;
    agreement with the target's answers on held-out episodes after each half)."""
    import time

    from .train import answer_accuracy, train_model

    t0 = time.time()
    processor = build_processor(template=prompt_template(cfg))
    n_target = chunk_count(cfg, cfg.distill_target_episodes)
    chunks = list(expert)
    if cfg.distill_target_episodes:
        chunks += policy_chunks(target.cpu(), processor, cfg, first_chunk, cfg.distill_target_episodes,
                                "go2 target-driven rollouts (chunks)", progress)
    data, logp = label_with_target(target.cpu(), chunks, cfg, progress=progress)  # the data stay on the CPU
    report: dict = {"steps": 0, "chunks": n_target + chunk_count(cfg, cfg.distill_draft_episodes)}
    for half, steps in enumerate((cfg.distill_steps // 2, cfg.distill_steps - cfg.distill_steps // 2)):
        if half == 1 and cfg.distill_draft_episodes:
            more = policy_chunks(draft.cpu(), processor, cfg, first_chunk + n_target, cfg.distill_draft_episodes,
                                 "go2 draft-driven rollouts (chunks)", progress)
            more_data, more_logp = label_with_target(target, more, cfg, progress=progress)
            data, logp = Go2Data.concat([data, more_data]), torch.cat([logp, more_logp])
        data = data.to(device)
        train = torch.nonzero(~data.held_out).flatten()
        held = torch.nonzero(data.held_out).flatten()
        draft.to(device)
        run = train_model(draft, data, train, steps=steps, batch=cfg.distill_batch, lr=cfg.distill_lr,
                          seed=cfg.seed + 7 + half, weight_decay=cfg.weight_decay, teacher_logp=logp, kd_alpha=1.0,
                          desc=f"go2 draft (on-policy distillation {half + 1}/2)", progress=progress)
        report["steps"] += run["steps"]
        report[f"half_{half + 1}"] = {**run, "samples": len(data), "frames": int(data.pix.shape[0]),
                                      "held_out": answer_accuracy(draft, data, held)}
    target.to(device)
    report.update(samples=len(data), frames=int(data.pix.shape[0]), seconds=round(time.time() - t0, 1))
    log(f"go2 draft distillation: {report}")
    return report
