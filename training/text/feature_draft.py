"""Train a feature draft (:mod:`specdec.models.feature_draft`) for a text target.

Data: the target's own greedy answers to training prompts (:mod:`training.text.data`, labelled
once and cached); the labelling keeps the target's final (normed) hidden state at every labelled
position, which is all a feature draft learns from.

Loss, on every position from the last prompt token on (the ones a draft is asked about):

* pass 1 - inputs are the target's states (what the first drafted token of a block sees): KL from
  the target's distribution to the draft's, both over the reduced head's tokens, plus a
  smooth-L1 pull of the guessed state towards the target's;
* pass 2 - inputs are the draft's own pass-1 guesses (what the second drafted token onwards
  sees), same loss: a draft trained only on exact inputs falls apart after one step.

Or, with ``step_weights`` (``--step-weights``), every step of a block as decoding feeds it
(:func:`unrolled_guesses`); ``top1_weight`` (``--top1-weight``) adds cross-entropy on the target's
top token; ``miss_weight`` (``--miss-weight``) weighs the positions where decoding starts a block
after a rejection. On the second stage none moves the engine's tokens per round (the model card
has the numbers).

The target's distribution is its LM head over its own state, so no top-k labels are stored.

Two stages. The first (:data:`DEFAULT_RECIPE`) trains the draft from scratch on the target's
answers to every training prompt of the corpus - a GPU's work. The second (:data:`FINETUNE_RECIPE`,
``--finetune``) warm-starts the committed draft on chat questions the target writes itself, the
target run in bfloat16 on a CPU's matrix units. It always starts from the first stage's weights,
which a fine-tuned draft keeps next to its own (so the second stage reruns without a GPU).

Committed artefact (``models/<name>/``): ``draft_config.json`` (the decoder layer's config,
provenance, training stats), ``feature_draft.safetensors`` (fc, layer, norm in fp16; weights are
rounded to fp16 in memory first, so the assembled draft is the trained one),
``head_token_ids.safetensors`` and, once fine-tuned, ``feature_draft_stage1.safetensors``.
:func:`assemble` adds the target's embeddings, the head rows and the tokenizer under
``.cache/models/<name>/``.

    python -m training.text.feature_draft --target .cache/models/smollm2-135m-instruct \\
        --out models/smollm2-135m-feature-draft      # (scripts/make_models.py runs the same recipe)
    python -m training.text.feature_draft --target .cache/models/smollm2-135m-instruct \\
        --out models/smollm2-135m-feature-draft --finetune --label-batch 128    # the second stage
    python -m training.text.feature_draft --assemble models/smollm2-135m-feature-draft \\
        --target .cache/models/smollm2-135m-instruct --out .cache/models/smollm2-135m-feature-draft
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from specdec.models.feature_draft import FEATURE_DRAFT_FILE, FEATURE_DRAFT_FORMAT, WEIGHTS_FILE, FeatureDraft
from specdec.models.fingerprint import model_fingerprint, tokenizer_fingerprint
from ..optim import clipped_step, warmup_cosine
from ..teacher import Labels, labelling_model

DRAFT_CONFIG = "draft_config.json"
HEAD_IDS = "head_token_ids.safetensors"
# a fine-tuned draft keeps its first stage's weights, so the second stage can be redone without the
# first (a GPU's work)
STAGE1_WEIGHTS_FILE = "feature_draft_stage1.safetensors"
RECIPE_VERSION = 1


# -- data -------------------------------------------------------------------------------------
def target_states(labels: Labels, hidden_size: int) -> List[torch.Tensor]:
    """Per sequence, the target's final normed state at every position the labels cover (the
    prompt's tail and all generated ones - the only positions a draft reads; zeros elsewhere)."""
    if labels.final is None:
        raise ValueError("these labels have no final hidden states (label them again)")
    out = [torch.zeros(len(seq), hidden_size, dtype=torch.float16) for seq in labels.sequences]
    for row, (s, p) in enumerate(zip(labels.seq.tolist(), labels.pos.tolist())):
        out[s][p] = labels.final[row]
    return out


def frequent_tokens(sequences: Sequence[torch.Tensor], prompt_lens: Sequence[int], k: int) -> torch.Tensor:
    """The ``k`` tokens the target generated most often (ties by id), ascending."""
    generated = torch.cat([s[p:] for s, p in zip(sequences, prompt_lens)])
    counts = torch.bincount(generated)
    order = sorted(range(len(counts)), key=lambda t: (-int(counts[t]), t))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def _batch(seqs, states, prompt_lens, rows: Sequence[int], features=None, prompt_states: bool = False):
    """Right-padded ids, input states (state[s-1] from the last prompt token on, else 0), target
    states, and the mask of trained positions (from the last prompt token on). ``features``: per
    sequence, what the draft is fed at s-1 when it is not ``states`` itself (wider rows).
    ``prompt_states``: the prompt's positions are fed the target's states too (``states`` must
    hold them: :func:`add_prompt_states`)."""
    features = states if features is None else features
    width = max(len(seqs[r]) for r in rows)
    hidden, fed = states[rows[0]].shape[1], features[rows[0]].shape[1]
    device = states[rows[0]].device  # built where the states live (a GPU trains without copies)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    s_in = torch.zeros(len(rows), width, fed, device=device)
    s_out = torch.zeros(len(rows), width, hidden, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        n, p = len(seqs[r]), prompt_lens[r]
        ids[b, :n] = seqs[r]
        s_out[b, :n] = states[r].float()
        first = 1 if prompt_states else p
        s_in[b, first:n] = features[r][first - 1:n - 1].float()
        mask[b, p - 1:n - 1] = True  # the last position predicts past the sequence: no label
    return ids, s_in, s_out, mask


@torch.no_grad()
def add_prompt_states(target, seqs, prompt_lens, states, batch: int = 64) -> None:
    """Fill each sequence's prompt positions (all but the last, which the labels hold) in
    ``states`` with the target's final normed states (one batched, right-padded pass)."""
    order = sorted(range(len(seqs)), key=lambda r: prompt_lens[r])
    for i in range(0, len(order), batch):
        rows = order[i:i + batch]
        width = max(prompt_lens[r] for r in rows) - 1
        if width <= 0:
            continue
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=seqs[rows[0]].device)
        for b, r in enumerate(rows):
            ids[b, :prompt_lens[r] - 1] = seqs[r][:prompt_lens[r] - 1]
        hidden = target.model(ids).last_hidden_state
        for b, r in enumerate(rows):
            states[r][:prompt_lens[r] - 1] = hidden[b, :prompt_lens[r] - 1].to(states[r].dtype)


def _shift_guesses(guess: torch.Tensor, s_in: torch.Tensor, prompt_lens, rows) -> torch.Tensor:
    """Pass-2 inputs: the draft's own guess of state[s-1] where pass 1 had the target's (prompt
    positions stay zero)."""
    out = torch.zeros(*s_in.shape[:2], guess.shape[-1], dtype=guess.dtype, device=guess.device)
    for b, r in enumerate(rows):
        p = prompt_lens[r]
        if s_in.shape[-1] == out.shape[-1]:  # zeros, or the target's prompt states (_batch's prompt_states)
            out[b, :p] = s_in[b, :p]
        out[b, p:] = guess[b, p - 1:-1]
    return out


@torch.no_grad()
def _after_miss_weights(g1, s_out, mask, head_w, prompt_lens, rows, miss_weight: float):
    """Per position at ``mask``: ``1 + miss_weight`` where a block starts in decoding after a
    rejection - the draft's first-token guess at the position before missed the target's token, or
    the answer's first position (round 0) - else 1; ``None`` for ``miss_weight`` 0. The engine's
    rounds start there, and those blocks are the hard ones (chat: a block after a miss keeps 1.00
    drafts, after a hit 1.49)."""
    if not miss_weight:
        return None
    hit = (g1 @ head_w.t()).argmax(-1) == (s_out @ head_w.t()).argmax(-1)
    after_miss = torch.ones_like(hit)
    after_miss[:, 1:] = ~hit[:, :-1]
    for b, r in enumerate(rows):
        after_miss[b, prompt_lens[r] - 1] = True
    return 1.0 + miss_weight * after_miss[mask].float()


def _block_mask(width: int, step: int, device) -> torch.Tensor:
    """Which keys a query at block step ``step`` (0: the block's first token) sees, as decoding
    caches them: keys of steps 0..step side by side, ``[width, (step + 1) * width]``. The block
    started at ``s - step``; positions up to there were computed from the target's states (step
    0's keys), and block position ``k`` (at ``s - step + k``) from the draft's ``k``-th guess."""
    s = torch.arange(width, device=device)[:, None]
    t = torch.arange(width, device=device)[None, :]
    blocks = [t <= s - step] + [t == s - (step - k) for k in range(1, step + 1)]
    return torch.cat(blocks, dim=1)


def unrolled_guesses(draft: FeatureDraft, ids: torch.Tensor, s_in: torch.Tensor, prompt_lens, rows,
                     steps: int) -> List[torch.Tensor]:
    """The draft's guesses at every position as decoding makes them ``steps`` tokens into a block:
    element ``j`` is step ``j``'s, whose input at ``s`` is step ``j - 1``'s guess at ``s - 1`` (the
    target's state for ``j = 0``) and whose attention sees the target-fed keys up to the block's
    start and then each earlier step's key at its own position (:func:`_block_mask`) - what
    :class:`specdec.models.feature_draft.FeatureDraftAdapter` caches while it drafts. (Training on
    guesses everywhere, context included, teaches a context decoding never shows.)"""
    model = draft.model
    embeds = model.embed_tokens(ids)
    width = ids.shape[1]
    position_ids = torch.arange(width, device=ids.device)[None]
    cos, sin = model.rotary_emb(embeds, position_ids)
    keys: List[List[tuple]] = [[] for _ in model.layers]  # per layer, per step: (k, v)
    guesses: List[torch.Tensor] = []
    fed = s_in
    for step in range(steps):
        if step:
            fed = _shift_guesses(guesses[-1].detach(), s_in, prompt_lens, rows)
        h = draft.fc(torch.cat([embeds, fed.to(embeds.dtype)], dim=-1))
        mask = _block_mask(width, step, ids.device)
        for layer, cache in zip(model.layers, keys):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            shape = (*x.shape[:2], -1, attn.head_dim)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            cache.append((k, v))
            k_all = torch.cat([kv[0] for kv in cache], dim=2)
            v_all = torch.cat([kv[1] for kv in cache], dim=2)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=True)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        guesses.append(model.norm(h))
    return guesses


def _step_mask(mask: torch.Tensor, prompt_lens, rows, step: int) -> torch.Tensor:
    """``mask`` less the positions whose block would start before the last prompt token (decoding
    starts its first block there)."""
    out = mask.clone()
    for b, r in enumerate(rows):
        out[b, :prompt_lens[r] - 1 + step] = False
    return out


def _loss(draft_states, target_states_, mask, head_w, p_t=None, top1_weight: float = 0.0, weights=None):
    """KL(target || draft) over the head's tokens, the smooth-L1 pull towards the target's state and
    the top-1 agreement, over ``mask``. ``p_t``: the target's distribution at ``mask`` when known
    (the steps of a block share it). ``top1_weight``: plus that much cross-entropy on the target's
    top token, the only one a greedy verifier compares (added to the first value). ``weights``: per
    position at ``mask``, the share of each in the first value (default: equal)."""
    h_d, h_t = draft_states[mask], target_states_[mask]
    logp_d = F.log_softmax(h_d @ head_w.t(), dim=-1)
    with torch.no_grad():
        if p_t is None:
            p_t = F.softmax(h_t @ head_w.t(), dim=-1)
        agree = (logp_d.argmax(-1) == p_t.argmax(-1)).float().mean()
    per_position = (p_t * (torch.log(p_t.clamp_min(1e-12)) - logp_d)).sum(-1)
    if top1_weight:
        per_position = per_position + top1_weight * F.nll_loss(logp_d, p_t.argmax(-1), reduction="none")
    kl = per_position.mean() if weights is None else (weights * per_position).sum() / weights.sum()
    reg = F.smooth_l1_loss(h_d, h_t)
    return kl, reg, agree


@torch.no_grad()
def evaluate(draft, seqs, states, prompt_lens, rows, head_w, batch: int = 8, features=None, unroll: int = 0,
             prompt_states: bool = False) -> dict:
    """KL and top-1 agreement with the target's states in and with the draft's own guesses in
    everywhere. ``unroll``: also decoding's view (:func:`unrolled_guesses`) - the agreement at
    each step of a block and ``accepted_per_block``, the draft tokens a greedy verifier would
    accept from a block of ``unroll`` started at every position (the engine's accepted drafts per
    round, over all positions rather than the ones its rounds happen to start at)."""
    totals = {"kl1": 0.0, "agree1": 0.0, "agree2": 0.0, "n": 0}
    step_hits, step_n, runs, blocks = [0.0] * unroll, [0] * unroll, 0.0, 0
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        ids, s_in, s_out, mask = _batch(seqs, states, prompt_lens, part, features, prompt_states)
        g1 = draft(ids, s_in)
        kl, _, a1 = _loss(g1, s_out, mask, head_w)
        g2 = draft(ids, _shift_guesses(g1, s_in, prompt_lens, part))
        _, _, a2 = _loss(g2, s_out, mask, head_w)
        n = int(mask.sum())
        totals["kl1"] += float(kl) * n
        totals["agree1"] += float(a1) * n
        totals["agree2"] += float(a2) * n
        totals["n"] += n
        if unroll:
            want = (s_out @ head_w.t()).argmax(-1)
            hits = [(g @ head_w.t()).argmax(-1) == want for g in unrolled_guesses(draft, ids, s_in, prompt_lens, part,
                                                                                      unroll)]
            for j, hit in enumerate(hits):
                valid = _step_mask(mask, prompt_lens, part, j)
                step_hits[j] += float(hit[valid].sum())
                step_n[j] += int(valid.sum())
            # a block started at t: its step j is at t + j; every step must have a label
            width = max(0, mask.shape[1] - unroll + 1)
            start = _step_mask(mask, prompt_lens, part, 0)[:, :width] & mask[:, unroll - 1:unroll - 1 + width]
            alive = torch.ones_like(start)
            for j, hit in enumerate(hits):
                alive = alive & hit[:, j:j + width]
                runs += float(alive[start].sum())
            blocks += int(start.sum())
    n = max(1, totals["n"])
    out = {"kl": round(totals["kl1"] / n, 4), "agreement_exact_input": round(totals["agree1"] / n, 4),
           "agreement_own_input": round(totals["agree2"] / n, 4), "positions": totals["n"]}
    if unroll:
        out["agreement_steps"] = [round(h / max(1, c), 4) for h, c in zip(step_hits, step_n)]
        out["accepted_per_block"] = round(runs / max(1, blocks), 4)
    return out


def train(draft: FeatureDraft, seqs, states, prompt_lens, head_ids: torch.Tensor, *, epochs: float, lr: float,
          batch: int, held_out: int, seed: int, lm_head: torch.Tensor, reg_weight: float = 0.5,
          train_fraction: float = 1.0, features=None, max_seconds: Optional[float] = None,
          step_weights: Sequence[float] = (), prompt_states: bool = False, top1_weight: float = 0.0,
          miss_weight: float = 0.0, log=print) -> dict:
    """``lm_head``: the target's LM head weight (its distribution is that head over its state).
    ``train_fraction``: train on that share of the training sequences only, the held-out ones
    unchanged (a data-scaling study: scripts/experiments/feature_draft_scaling.py). ``features``:
    per sequence, wider input rows than ``states`` (scripts/experiments/feature_draft_layers.py).
    ``max_seconds``: stop early past that much training time (a leased GPU's budget); the stats say
    at which step. ``step_weights``: train decoding's view of a block (:func:`unrolled_guesses`),
    one weight per step, instead of the target's states in and then the draft's guesses in
    everywhere. ``top1_weight``: see :func:`_loss`. ``miss_weight``: see :func:`_after_miss_weights`
    (the two-pass objective only)."""
    unroll = len(step_weights)
    if unroll and miss_weight:
        raise ValueError("miss_weight applies to the two-pass objective, not to step_weights")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(seqs), generator=gen).tolist()
    held, train_rows = order[:held_out], order[held_out:]
    train_rows = train_rows[:max(1, int(len(train_rows) * train_fraction))]
    if not train_rows:
        raise ValueError(f"{len(seqs)} sequences leave none to train on after {held_out} held out")
    head_w = lm_head.detach()[head_ids]
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = max(1, int(math.ceil(len(train_rows) / batch) * epochs))
    sched = warmup_cosine(opt, steps)
    sample = train_rows[:held_out]  # training sequences scored like the held-out ones (fit vs generalisation)
    scoring = dict(features=features, unroll=unroll, prompt_states=prompt_states)
    before = evaluate(draft, seqs, states, prompt_lens, held, head_w, **scoring)
    fit_before = evaluate(draft, seqs, states, prompt_lens, sample, head_w, **scoring)
    log(f"held-out before: {before}")
    t0 = time.time()
    step, losses = 0, []
    draft.train()
    out_of_time = False
    while step < steps and not out_of_time:
        perm = torch.randperm(len(train_rows), generator=gen).tolist()
        for i in range(0, len(perm), batch):
            out_of_time = max_seconds is not None and time.time() - t0 > max_seconds
            if step >= steps or out_of_time:
                break
            rows = [train_rows[j] for j in perm[i:i + batch]]
            ids, s_in, s_out, mask = _batch(seqs, states, prompt_lens, rows, features, prompt_states)
            if unroll:  # decoding's view, step by step (unrolled_guesses)
                loss, agree = 0.0, []
                with torch.no_grad():
                    p_all = F.softmax(s_out[mask] @ head_w.t(), dim=-1)
                for j, (g, w) in enumerate(zip(unrolled_guesses(draft, ids, s_in, prompt_lens, rows, unroll),
                                               step_weights)):
                    valid = _step_mask(mask, prompt_lens, rows, j)
                    kl, reg, a = _loss(g, s_out, valid, head_w, p_all[valid[mask]], top1_weight)
                    loss, agree = loss + w * (kl + reg_weight * reg), agree + [a]
                a1, a2 = agree[0], agree[1]
            else:
                g1 = draft(ids, s_in)
                weights = _after_miss_weights(g1, s_out, mask, head_w, prompt_lens, rows, miss_weight)
                kl1, reg1, a1 = _loss(g1, s_out, mask, head_w, top1_weight=top1_weight, weights=weights)
                g2 = draft(ids, _shift_guesses(g1.detach(), s_in, prompt_lens, rows))
                kl2, reg2, a2 = _loss(g2, s_out, mask, head_w, top1_weight=top1_weight)
                loss = kl1 + kl2 + reg_weight * (reg1 + reg2)
            losses.append(clipped_step(opt, sched, params, loss))
            step += 1
            if step % 100 == 0 or step == steps:
                log(f"step {step}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                    f"agree {float(a1):.3f}/{float(a2):.3f} {time.time() - t0:.0f}s")
    draft.eval()
    with torch.no_grad():  # the committed weights are fp16: train-time numbers use the rounded ones
        for p in params:
            p.copy_(p.half().float())
    after = evaluate(draft, seqs, states, prompt_lens, held, head_w, **scoring)
    fit_after = evaluate(draft, seqs, states, prompt_lens, sample, head_w, **scoring)
    log(f"held-out after: {after}; training sample after: {fit_after}")
    return {"steps": steps, "steps_done": step, "epochs": epochs, "lr": lr, "batch": batch, "reg_weight": reg_weight,
            "train_seconds": round(time.time() - t0, 1), "train_sequences": len(train_rows),
            "train_positions": int(sum(len(seqs[r]) - prompt_lens[r] + 1 for r in train_rows)),
            "held_out_sequences": len(held), "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "held_out_before": before, "held_out_after": after,
            "train_sample_before": fit_before, "train_sample_after": fit_after}


# -- artefacts --------------------------------------------------------------------------------
def save_committed(draft: FeatureDraft, target, tokenizer, head_ids: torch.Tensor, out_dir: str, info: dict) -> None:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    weights = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in draft.own_state_dict().items()}
    save_file(weights, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": FEATURE_DRAFT_FORMAT})
    save_file({"token_ids": head_ids.contiguous()}, os.path.join(out_dir, HEAD_IDS),
              metadata={"format": FEATURE_DRAFT_FORMAT})
    config = draft.config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        config.pop(key, None)
    record = {
        "format": FEATURE_DRAFT_FORMAT,
        "config": config,
        "target": os.path.basename(os.path.normpath(getattr(target, "name_or_path", "") or "target")),
        "target_fingerprint": model_fingerprint(target),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "weights_sha256": weights_digest(weights),
        "head_tokens": int(len(head_ids)),
        **info,
    }
    with open(os.path.join(out_dir, DRAFT_CONFIG), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)


def weights_digest(weights: dict) -> str:
    """sha256 over a draft's fp16 weights, by name (the record's ``weights_sha256``)."""
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].numpy().tobytes())
    return digest.hexdigest()


def load_committed(committed_dir: str, target, stage1: bool = False) -> tuple:
    """``(draft, head_ids, record)`` of a committed artefact, the draft float32 on the target's
    device and in eval mode (a warm start, or the draft scored by scripts/experiments). ``stage1``:
    the first stage's weights of a fine-tuned draft (checked against ``stage1_weights_sha256``)."""
    from safetensors.torch import load_file

    with open(os.path.join(committed_dir, DRAFT_CONFIG), encoding="utf-8") as handle:
        record = json.load(handle)
    draft = FeatureDraft.for_target(target, record["recipe"]["layers"]).float()
    path = os.path.join(committed_dir, WEIGHTS_FILE)
    if stage1 and "finetune" in record:
        path = os.path.join(committed_dir, STAGE1_WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{committed_dir}: fine-tuned without {STAGE1_WEIGHTS_FILE}; train the first stage again")
    weights = load_file(path)
    if stage1 and "finetune" in record and weights_digest(weights) != record.get("stage1_weights_sha256"):
        raise ValueError(f"{path}: not the first stage this draft was fine-tuned from (sha256 differs)")
    draft.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)  # embeddings: the target's
    head_ids = load_file(os.path.join(committed_dir, HEAD_IDS))["token_ids"].long()
    return draft.eval(), head_ids, record


def assemble(committed_dir: str, target_dir: str, out_dir: str, force: bool = False) -> str:
    """A loadable folder (:func:`specdec.models.feature_draft.load_feature_draft`) from the
    committed artefact and the target's embeddings and tokenizer."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig

    from specdec.models.draft_head import make_head, save_draft_head

    with open(os.path.join(committed_dir, DRAFT_CONFIG), encoding="utf-8") as handle:
        record = json.load(handle)
    marker = os.path.join(out_dir, FEATURE_DRAFT_FILE)
    if not force and os.path.isfile(marker):
        with open(marker, encoding="utf-8") as handle:
            if json.load(handle).get("weights_sha256") == record["weights_sha256"]:
                return out_dir
    tensors = {}
    for name in sorted(os.listdir(target_dir)):
        if name.endswith(".safetensors"):
            tensors.update({k: v for k, v in load_file(os.path.join(target_dir, name)).items()
                            if k in ("model.embed_tokens.weight", "lm_head.weight")})
    if "model.embed_tokens.weight" not in tensors:
        raise FileNotFoundError(f"{target_dir}: no model.embed_tokens.weight in its safetensors files")
    embed = tensors["model.embed_tokens.weight"]
    head = tensors.get("lm_head.weight", embed)  # absent: tied to the embeddings
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    LlamaConfig(**record["config"]).save_pretrained(tmp)
    shutil.copy(os.path.join(committed_dir, WEIGHTS_FILE), os.path.join(tmp, WEIGHTS_FILE))
    save_file({"weight": embed.contiguous()}, os.path.join(tmp, "embed_tokens.safetensors"))
    if head is not embed:
        save_file({"weight": head.contiguous()}, os.path.join(tmp, "lm_head.safetensors"))
    ids = load_file(os.path.join(committed_dir, HEAD_IDS))["token_ids"]
    save_draft_head(tmp, make_head(ids, head[ids].clone()), int(head.shape[0]))
    AutoTokenizer.from_pretrained(target_dir).save_pretrained(tmp)
    with open(os.path.join(tmp, FEATURE_DRAFT_FILE), "w", encoding="utf-8") as handle:
        json.dump({"format": FEATURE_DRAFT_FORMAT, "weights_sha256": record["weights_sha256"],
                   "target_fingerprint": record["target_fingerprint"]}, handle, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


# Every training prompt the corpus has (8,283 chat, 18,790 prose; 2.1M generated positions), ten
# times the first recipe's 1,875 + 900: held-out agreement 51% -> 78%. Labelling and training take
# 291 s on one H200 (`--device cuda --label-batch 1024`); on a 2-core CPU, hours.
DEFAULT_RECIPE = {"data": "text:chat=8283,prose=18790,new=128,seed=0", "layers": 2, "head_tokens": 16384,
                  "epochs": 8.0, "lr": 2e-3, "batch": 64, "held_out": 256, "seed": 0, "version": RECIPE_VERSION}


def train_and_save(target, tokenizer, labels: Labels, out_dir: str, recipe: dict, max_seconds: Optional[float] = None,
                   log=print) -> dict:
    """Train a feature draft on ``labels`` with ``recipe`` (keys of :data:`DEFAULT_RECIPE`) and
    commit it to ``out_dir``; returns the training stats. Trains on the target's device (the
    labels' tensors go there too)."""
    torch.manual_seed(recipe["seed"])
    device = target.lm_head.weight.device
    seqs = [s.long().to(device) for s in labels.sequences]
    prompt_lens = list(labels.prompt_lens)
    states = [s.to(device) for s in target_states(labels, target.config.hidden_size)]
    head_ids = frequent_tokens([s.cpu() for s in seqs], prompt_lens, recipe["head_tokens"])
    generated = torch.cat([s[p:].cpu() for s, p in zip(seqs, prompt_lens)])
    coverage = float(torch.isin(generated, head_ids).float().mean())
    log(f"{len(seqs)} sequences, {len(generated)} generated tokens, head covers {coverage:.3f}")
    draft = FeatureDraft.for_target(target, recipe["layers"])
    stats = train(draft, seqs, states, prompt_lens, head_ids.to(device), epochs=recipe["epochs"], lr=recipe["lr"],
                  batch=recipe["batch"], held_out=recipe["held_out"], seed=recipe["seed"],
                  lm_head=target.lm_head.weight, max_seconds=max_seconds, log=log)
    stats["head_coverage_train"] = round(coverage, 4)
    stats["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    save_committed(draft, target, tokenizer, head_ids, out_dir, {"recipe": recipe, "training": stats})
    return stats


# The second stage, on a CPU with bfloat16 matrix units (AMX): the target writes 5,000 chat questions
# of its own and answers them, with 1,500 training prose openings as replay, all labelled in
# bfloat16, and the draft above trains on them for 1 epoch under bfloat16 autocast. The first
# stage's chat prompts are templates; the evaluation's are hand-written, and the target's own
# questions are closer to them (the first-stage draft agrees 61.8 % on their answers, 78 % on its
# held-out split, 57.5 % on the evaluation chat).
FINETUNE_RECIPE = {"data": "self:chat=8000,prose=2000,seed=0", "label_dtype": "bfloat16", "epochs": 1.0,
                   "lr": 5e-4, "batch": 64, "held_out": 48, "autocast": True, "seed": 0, "version": 2}
# objective options of :func:`train` a second-stage recipe may add (flags of the same names; none moved
# the engine's tokens per round: the model card)
OBJECTIVE_OPTIONS = ("step_weights", "top1_weight", "miss_weight")


def finetune_and_save(target, tokenizer, labels: Labels, out_dir: str, recipe: dict,
                      max_seconds: Optional[float] = None, log=print) -> dict:
    """Warm-start the first stage's draft in ``out_dir`` on ``labels`` with ``recipe`` (keys of
    :data:`FINETUNE_RECIPE`) and commit it there again; the record keeps the first stage's recipe
    and statistics and adds ``finetune`` and ``training_finetune``. A draft fine-tuned already is
    fine-tuned again from its first stage's weights (:data:`STAGE1_WEIGHTS_FILE`), never from itself."""
    torch.manual_seed(recipe["seed"])
    device = target.lm_head.weight.device
    draft, head_ids, record = load_committed(out_dir, target, stage1=True)
    stage1_sha = record.get("stage1_weights_sha256", record["weights_sha256"])
    if "finetune" not in record:  # the committed weights are the first stage's: keep them
        shutil.copy(os.path.join(out_dir, WEIGHTS_FILE), os.path.join(out_dir, STAGE1_WEIGHTS_FILE))
    seqs = [s.long().to(device) for s in labels.sequences]
    states = [s.to(device) for s in target_states(labels, target.config.hidden_size)]
    log(f"fine-tuning on {len(seqs)} sequences")
    # no weight cache: autocast would otherwise cast each weight once for the whole loop, and every
    # step would run (and score) the weights of the first step
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(recipe["autocast"]), cache_enabled=False):
        stats = train(draft, seqs, states, list(labels.prompt_lens), head_ids.to(device), epochs=recipe["epochs"],
                      lr=recipe["lr"], batch=recipe["batch"], held_out=recipe["held_out"], seed=recipe["seed"],
                      lm_head=target.lm_head.weight, max_seconds=max_seconds, log=log,
                      **{key: recipe[key] for key in OBJECTIVE_OPTIONS if key in recipe})
    stats["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    keep = {k: record[k] for k in ("recipe", "training") if k in record}
    save_committed(draft, target, tokenizer, head_ids, out_dir,
                   {**keep, "stage1_weights_sha256": stage1_sha, "finetune": recipe, "training_finetune": stats})
    return stats


def main(argv=None) -> int:
    from ..train_exits import load_target, set_threads
    from .data import cached_labels, make_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HF folder of the target")
    parser.add_argument("--out", required=True, help="committed artefact folder (or HF folder with --assemble)")
    parser.add_argument("--assemble", default=None, metavar="COMMITTED_DIR", help="only build the loadable folder")
    parser.add_argument("--labels-cache", default=None)
    for key, value in DEFAULT_RECIPE.items():
        if key != "version":
            parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the target labels and the draft trains")
    parser.add_argument("--label-batch", type=int, default=48, help="prompts the target answers at once")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training past this many seconds")
    parser.add_argument("--finetune", action="store_true",
                        help="only the second stage (FINETUNE_RECIPE with --seed), from the first stage's draft "
                             "committed in --out")
    parser.add_argument("--top1-weight", type=float, default=0.0,
                        help="with --finetune: add this much cross-entropy on the target's top token")
    parser.add_argument("--miss-weight", type=float, default=0.0,
                        help="with --finetune: weigh the first-token loss 1 + this where the draft missed the "
                             "token before (where the engine's rounds start)")
    parser.add_argument("--step-weights", type=float, nargs="+", default=None, metavar="W",
                        help="with --finetune: train decoding's view of a block, one loss weight per step "
                             "(unrolled_guesses; e.g. 1 1 0.5 0.25)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.assemble:
        assemble(args.assemble, args.target, args.out, force=True)
        return 0
    recipe = {key: getattr(args, key) for key in DEFAULT_RECIPE if key != "version"}
    recipe["version"] = RECIPE_VERSION
    t0 = time.time()
    from specdec.models.loading import resolve_device

    device = torch.device(resolve_device(args.device))
    target, tokenizer = load_target(args.target, device)
    if args.finetune:
        source = make_source(FINETUNE_RECIPE["data"])
        source.batch_size = args.label_batch
        labels = cached_labels(source, labelling_model(target, FINETUNE_RECIPE["label_dtype"]), tokenizer, [],
                               args.labels_cache)
        print(f"labelled {len(labels.sequences)} sequences in {time.time() - t0:.0f} s", flush=True)
        recipe = dict(FINETUNE_RECIPE, seed=args.seed)
        recipe.update({key: getattr(args, key) for key in OBJECTIVE_OPTIONS if getattr(args, key)})
        stats = finetune_and_save(target, tokenizer, labels, args.out, recipe, max_seconds=args.max_seconds,
                                  log=lambda m: print(m, flush=True))
        print(json.dumps(stats, indent=2), f"\n{time.time() - t0:.0f} s in all")
        return 0
    source = make_source(recipe["data"])
    source.batch_size = args.label_batch
    labels = cached_labels(source, target, tokenizer, [], args.labels_cache)
    print(f"labelled {len(labels.sequences)} sequences in {time.time() - t0:.0f} s", flush=True)
    if device.type == "cuda":  # the labels are the target's fp32 answers; the draft trains in TF32
        torch.backends.cuda.matmul.allow_tf32 = True
    stats = train_and_save(target, tokenizer, labels, args.out, recipe, max_seconds=args.max_seconds,
                           log=lambda m: print(m, flush=True))
    print(json.dumps(stats, indent=2), f"\n{time.time() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
