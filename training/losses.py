"""Distillation loss over a candidate vocabulary.

The full LM head (576 x 49152 for SmolLM2) dominates the cost of a training step on CPU. The
teacher's mass sits on a few tokens per position, so the softmax is taken over the union of the
teacher's top-k tokens of the whole batch plus a few random tokens (negatives from the rest of
the vocabulary); typically 10x fewer columns, with the same argmax behaviour in practice.
Evaluation always uses the full vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch


def candidate_set(topk_ids: torch.Tensor, vocab_size: int, n_random: int, generator: Optional[torch.Generator]):
    cand = torch.unique(topk_ids.flatten())
    if n_random > 0:
        extra = torch.randint(0, vocab_size, (n_random,), generator=generator).to(cand.device)
        cand = torch.unique(torch.cat([cand, extra]))
    return cand


def candidate_kl(
    normed: torch.Tensor,
    lm_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logp: torch.Tensor,
    cand: Optional[torch.Tensor] = None,
    n_random: int = 2048,
    generator: Optional[torch.Generator] = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean KL(teacher top-k, renormalised || student softmax over the candidates).

    ``normed``: [N, H] final-normed student hidden states; ``lm_weight``: [V, H] (frozen);
    ``topk_ids``/``topk_logp``: [N, K] teacher top-k ids and log-probs.
    """
    if cand is None:
        cand = candidate_set(topk_ids, lm_weight.shape[0], n_random, generator)
    return kl_on_candidates(normed @ lm_weight[cand].t(), torch.searchsorted(cand, topk_ids), topk_logp, temperature)


def kl_on_candidates(logits_c: torch.Tensor, index: torch.Tensor, topk_logp: torch.Tensor, temperature: float = 1.0):
    """KL from candidate logits [N, C]; ``index`` [N, K] locates the teacher's top-k among the C."""
    logq = torch.log_softmax(logits_c.float() / temperature, dim=-1)
    logq_t = logq.gather(1, index)
    p = torch.softmax(topk_logp.float() / temperature, dim=-1)
    return (p * (torch.log(p.clamp_min(1e-12)) - logq_t)).sum(-1).mean()


@torch.no_grad()
def full_vocab_stats(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor):
    """(top-1 agreement count, KL sum over top-k) of full-vocabulary student logits."""
    agree = (logits.argmax(-1) == topk_ids[:, 0]).sum().item()
    logq = torch.log_softmax(logits.float(), -1).gather(1, topk_ids)
    p = torch.softmax(topk_logp.float(), -1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum().item()
    return agree, kl
