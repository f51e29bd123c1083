"""Speculative sampling reproduces the target's sampling distribution (chi-square tests).

Each test also runs a deliberately broken acceptance rule (on rejection, resample
from p instead of the residual max(0, p - q)) and checks that the same test
detects it, so the tests can fail.
"""

from collections import Counter

import pytest
import torch

from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.sampling import SamplingParams, draft_sample, rejection_accept, target_probs
from specdec.models.early_exit import EarlyExitHeads
from specdec.protocol import DecodingMode

PROMPT = "go forward"
TOP_K = 3


def chi_square_pvalue(counts: Counter, probs: dict, n: int) -> float:
    """Pearson chi-square goodness of fit; cells with expected count < 5 pooled."""
    for cell, observed in counts.items():
        if probs.get(cell, 0.0) <= 0.0 and observed:
            return 0.0  # an impossible outcome was produced
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for cell, p in probs.items():
        e = p * n
        if e < 5:
            pool_o += counts.get(cell, 0)
            pool_e += e
        else:
            obs.append(counts.get(cell, 0))
            exp.append(e)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    chi = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(chi / 2, dtype=torch.float64)))


def broken_rule(target_logits, draft_tokens, *, topk_ids, topk_probs, topk, params, generator):
    """Rejection sampling with the classic bug: resample from p, not from the residual.
    (Rules get the target's rows one at a time, as the verifier computes them lazily.)"""
    n = len(draft_tokens)
    p = target_probs(torch.stack([target_logits[i] for i in range(n + 1)]), params).cpu()
    for i, token in enumerate(draft_tokens):
        row_ids = list(topk_ids[i * topk:(i + 1) * topk])
        q_x = topk_probs[i * topk + row_ids.index(token)]
        if float(torch.rand(1, generator=generator)) * q_x >= float(p[i, token]):
            return i, int(torch.multinomial(p[i], 1, generator=generator))
    return n, int(torch.multinomial(p[n], 1, generator=generator))


def test_rejection_rule_exact_on_synthetic_distributions():
    """Unit level, many samples: target p (top-k 3 of 8) vs a draft q that puts mass outside p."""
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=TOP_K)
    target_logits = torch.tensor([[2.0, 1.6, 1.5, 0.2, -1.0, 0.0, 0.5, -2.0]] * 2)
    draft_logits = torch.tensor([0.5, 2.2, -0.5, 1.9, -1.0, 0.0, 1.0, -2.0])
    p = target_probs(target_logits[0], params)
    expected = {t: float(p[t]) for t in range(8)}
    g_draft = torch.Generator().manual_seed(1)
    results = {}
    for name, rule in (("exact", rejection_accept), ("broken", broken_rule)):
        g_verify = torch.Generator().manual_seed(2)
        counts = Counter()
        n = 2000
        for _ in range(n):
            token, ids, probs = draft_sample(draft_logits, params.temperature, 4, g_draft)
            accepted, next_token = rule(target_logits, [token], topk_ids=ids, topk_probs=probs, topk=4,
                                        params=params, generator=g_verify)
            counts[token if accepted else next_token] += 1
        results[name] = chi_square_pvalue(counts, expected, n)
    assert results["exact"] > 1e-3, results
    assert results["broken"] < 1e-6, results


def _exact_joint(target, params):
    """Exact distribution of the target's first two sampled tokens, from full forwards with the
    warpers ``generate`` uses (independent of the engine's own warping code)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    warpers = [TemperatureLogitsWarper(params.temperature), TopKLogitsWarper(params.top_k)]
    ids = target.encode(PROMPT).input_ids

    def dist(prefix):
        x = torch.tensor([prefix])
        with torch.inference_mode():
            scores = target.model(x).logits[:, -1].float()
        for warp in warpers:
            scores = warp(x, scores)
        return torch.softmax(scores, -1)[0]

    joint = {}
    p1 = dist(ids)
    for t1 in torch.nonzero(p1).flatten().tolist():
        p2 = dist(ids + [t1])
        for t2 in torch.nonzero(p2).flatten().tolist():
            joint[(t1, t2)] = float(p1[t1] * p2[t2])
    return joint


def test_end_to_end_sampling_matches_target(tiny_pair):
    draft, target = tiny_pair("llama", noise=0.1, target_layers=2)
    params = SamplingParams(do_sample=True, temperature=1.0, top_k=TOP_K)
    joint = _exact_joint(target, params)
    assert abs(sum(joint.values()) - 1.0) < 1e-4
    heads = EarlyExitHeads(target.model, [0])
    pvalues = {}
    cases = (
        ("exact", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300, "hint"),
        ("exact_eager_predraft", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300, "eager"),
        ("broken", broken_rule, DecodingMode.SPECULATIVE, 200, "hint"),
    )
    for name, rule, mode, runs, policy in cases:
        counts = Counter()
        rejected = 0
        with LocalSpeculativeDecoder(draft, target, exit_heads=heads, verifier_kwargs={"sampling_rule": rule},
                                     do_sample=True, temperature=1.0, top_k=TOP_K, gamma=2,
                                     max_new_tokens=3, predraft_policy=policy) as runner:
            for seed in range(runs):
                result = runner.generate(PROMPT, None, mode, seed=seed)
                counts[tuple(result.tokens[:2])] += 1
                rejected += sum(r.accepted < r.drafted for r in result.stats.round_log)
        assert rejected > runs // 4  # the residual path is exercised a lot
        pvalues[name] = chi_square_pvalue(counts, joint, runs)
    assert pvalues["exact"] > 1e-3, pvalues
    assert pvalues["exact_eager_predraft"] > 1e-3, pvalues
    assert pvalues["broken"] < 1e-6, pvalues


def test_sampling_is_reproducible(tiny_pair):
    draft, target = tiny_pair("llama", noise=0.1, target_layers=2)
    with LocalSpeculativeDecoder(draft, target, do_sample=True, top_k=5, temperature=0.9) as runner:
        a = runner.generate(PROMPT, None, seed=7, max_new_tokens=8).tokens
        b = runner.generate(PROMPT, None, seed=7, max_new_tokens=8).tokens
        c = [runner.generate(PROMPT, None, seed=s, max_new_tokens=8).tokens for s in range(8, 12)]
    assert a == b
    assert any(t != a for t in c)


@pytest.mark.parametrize("mode", [DecodingMode.CLOUD_ONLY, DecodingMode.EDGE_ONLY])
def test_sampling_baselines_run(mode, tiny_pair):
    draft, target = tiny_pair("llama", noise=0.1, target_layers=2)
    with LocalSpeculativeDecoder(draft, target, do_sample=True, top_k=5) as runner:
        tokens = runner.generate(PROMPT, None, mode, seed=3, max_new_tokens=6).tokens
    assert len(tokens) == 6
