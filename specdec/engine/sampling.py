"""Token choice and acceptance rules shared by the drafter and the verifier.

Distributions follow ``transformers``' ``generate`` exactly (temperature, then top-k
keeping ties at the k-th value), so the verifier's target distribution is the one
``target.generate(do_sample=True, temperature=T, top_k=K)`` samples from.

Acceptance rules (``AcceptFn``) take the target's logits for a block
(``[n + 1, vocab]``: one row per draft token plus the bonus row) and return
``(accepted, next_token)``:

* :func:`greedy_accept` - longest prefix equal to the target's argmax, then the
  target's own token. Output = target greedy output.
* :func:`rejection_accept` - speculative (rejection) sampling: accept draft token
  ``x`` with probability ``min(1, p(x)/q(x))``; on the first rejection sample from
  the residual ``max(0, p - q) / Z``; if all are accepted sample the bonus from
  ``p``. ``q`` is the draft's (sparse, top-k truncated) distribution the token was
  actually drawn from, so the output is distributed exactly as target sampling.

:func:`choose_branches` picks which of a greedy block's alternatives the verifier runs as
branches of its pass (they only add rows; acceptance stays :func:`greedy_accept`'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, List, Optional, Sequence, Tuple

import torch


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = full vocabulary


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Temperature then top-k (ties at the k-th value kept), like ``generate``'s warpers."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    return torch.softmax(warp_logits(logits, params.temperature, params.top_k), dim=-1)


def sample_full(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator]) -> int:
    """One token from the full warped distribution (autoregressive sampling)."""
    probs = target_probs(logits, params)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator]) -> int:
    """Greedy argmax or a sample from the warped distribution."""
    if not params.do_sample:
        return int(torch.argmax(logits))
    return sample_full(logits, params, generator)


def draft_sample(
    logits: torch.Tensor, temperature: float, k: int, generator: Optional[torch.Generator]
) -> Tuple[int, List[int], List[float]]:
    """Draw a draft token from the draft's top-``k`` distribution at ``temperature``.

    Returns ``(token, ids, probs)``: the exact sparse distribution the token was drawn
    from, which the verifier needs for lossless rejection sampling.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    k = min(k, logits.shape[-1])
    values, ids = torch.topk(logits, k)
    probs = torch.softmax(values, dim=-1).cpu()
    index = int(torch.multinomial(probs, 1, generator=generator))
    ids_list = ids.tolist()
    return ids_list[index], ids_list, probs.tolist()


AcceptFn = Callable[..., Tuple[int, int]]

# ``target_logits`` below is anything indexable by row: a ``[n + 1, vocab]`` tensor, or the
# verifier's lazy rows, which run the LM head only for the rows an acceptance rule reads (up to
# the first rejection).


def greedy_accept(target_logits, draft_tokens: Sequence[int], **_unused) -> Tuple[int, int]:
    """Longest prefix of the draft equal to the target's argmax, plus the target's next token."""
    accepted = 0
    for token in draft_tokens:
        choice = int(torch.argmax(target_logits[accepted]))
        if choice != token:
            return accepted, choice
        accepted += 1
    return accepted, int(torch.argmax(target_logits[accepted]))


def rejection_accept(
    target_logits,
    draft_tokens: Sequence[int],
    *,
    topk_ids: Sequence[int],
    topk_probs: Sequence[float],
    topk: int,
    params: SamplingParams,
    generator: Optional[torch.Generator],
) -> Tuple[int, int]:
    """Speculative sampling (Leviathan et al. / Chen et al.), exact for a sparse draft ``q``."""
    n = len(draft_tokens)
    if n == 0:
        return 0, int(torch.multinomial(target_probs(target_logits[0], params).cpu(), 1, generator=generator))
    u = torch.rand(n, generator=generator).tolist()
    accepted = n
    p = None
    for i, token in enumerate(draft_tokens):
        p = target_probs(target_logits[i], params)
        p_x = float(p[token])
        row = topk_ids[i * topk:(i + 1) * topk]
        try:
            q_x = topk_probs[i * topk + list(row).index(token)]  # q of the token actually drawn
        except ValueError:
            q_x = 0.0  # not in its own distribution: a malformed block, never accept
        if not (q_x > 0.0 and u[i] * q_x < p_x):
            accepted = i
            break
    if accepted == n:
        return n, int(torch.multinomial(target_probs(target_logits[n], params).cpu(), 1, generator=generator))
    row = slice(accepted * topk, (accepted + 1) * topk)
    residual = p.cpu().clone()
    residual.index_put_(
        (torch.tensor(list(topk_ids[row]), dtype=torch.long),),
        -torch.tensor(list(topk_probs[row]), dtype=residual.dtype),
        accumulate=True,
    )
    residual.clamp_(min=0.0)
    if not float(residual.sum()) > 1e-12:  # p == q numerically: the residual is empty, p itself is exact
        residual = p.cpu()
    return accepted, int(torch.multinomial(residual, 1, generator=generator))


def choose_branches(tokens: Sequence[int], topk_ids: Sequence[int], topk_probs: Sequence[float], topk: int,
                    stop: Collection[int], limit: int) -> List[Tuple[int, int]]:
    """A greedy block's alternatives to verify as one-token branches: ``(position, token)``, distinct
    and not the drafted token, none after a stop token, at most ``limit``, in the block's order.

    Where there are more than ``limit``, the ones most likely to be the target's token at the first
    rejection by the draft's own probabilities: reaching position ``i`` (the drafted tokens before it
    accepted, prod q(t_j)) times the alternative there (q(a)) - EAGLE-2's ranking of tree nodes. A
    block without usable probabilities keeps the nearest positions (where rounds most often end).
    The choice only decides which rows the pass computes; what is committed is the target's."""
    n, k = len(tokens), topk
    usable = len(topk_probs) == n * k and all(0.0 <= p <= 1.0 for p in topk_probs)  # NaN fails both
    probs = topk_probs if usable else [1.0] * (n * k)  # all tied: the sort below keeps position order
    candidates, reach = [], 1.0
    for i, token in enumerate(tokens):
        if token in stop:
            break  # nothing after a stop token is verified
        seen = {token}
        for m in range(1, k):
            alt = topk_ids[i * k + m]
            if alt not in seen:
                seen.add(alt)
                candidates.append((reach * probs[i * k + m], i, alt))
        reach *= probs[i * k]
    keep = set(sorted(range(len(candidates)), key=lambda c: -candidates[c][0])[:limit])  # stable: ties by position
    return [(i, alt) for c, (_, i, alt) in enumerate(candidates) if c in keep]


def derive_seed(seed: int, stream: str) -> int:
    """Independent seeds for independent random streams (draft sampling vs acceptance);
    the same seed on both sides would correlate them and bias the output."""
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))
