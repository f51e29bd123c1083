"""Speculative sampling reproduces the target's sampling distribution (chi-square tests).

Each test also runs a deliberately broken acceptance rule (on rejection, resample
from p instead of the residual max(0, p - q)) and checks that the same test
detects it, so the tests can fail.
"""

from collections import Counter

import pytest
import torch

from specdec.engine.local import LocalSpeculativeDecoder
from specdec.models.adapters import wrap_model
from specdec.models.draft_head import head_from_rows
from specdec.engine.sampling import SamplingParams, draft_sample, rejection_accept, target_probs
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.tiny import tiny_feature_draft
from specdec.protocol import DecodingMode

PROMPT = "go forward"
TOP_K = 3


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


def test_rejection_rule_exact_on_synthetic_distributions(chi_square):
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
        results[name] = chi_square(counts, expected, n)
    assert results["exact"] > 1e-3, results
    assert results["broken"] < 1e-6, results


def _exact_joint(target, params, image=None):
    """Exact distribution of the target's first two sampled tokens, from full forwards (no cache:
    never the engine's steps) with the warpers ``generate`` uses (independent of the engine's own
    warping code)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    warpers = [TemperatureLogitsWarper(params.temperature), TopKLogitsWarper(params.top_k)]
    inputs = target.encode(PROMPT, image)
    ids = inputs.input_ids

    def dist(prefix):
        kwargs = inputs.generate_kwargs(target.device)
        x = kwargs["input_ids"] = torch.tensor([prefix], device=target.device)
        kwargs["attention_mask"] = torch.ones_like(x)
        if "mm_token_type_ids" in kwargs:  # text tokens after the prompt
            kwargs["mm_token_type_ids"] = torch.nn.functional.pad(kwargs["mm_token_type_ids"],
                                                                  (0, len(prefix) - len(ids)))
        with torch.inference_mode():
            scores = target.model(**kwargs, use_cache=False).logits[:, -1].float()
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


def test_end_to_end_sampling_matches_target(tiny_pair, chi_square):
    draft, target = tiny_pair("llama", noise=0.1, target_layers=2)
    params = SamplingParams(do_sample=True, temperature=1.0, top_k=TOP_K)
    joint = _exact_joint(target, params)
    assert abs(sum(joint.values()) - 1.0) < 1e-4
    heads = EarlyExitHeads(target.model, [0])
    # a second adapter over the draft model proposing from half the vocabulary (reduced head)
    half = wrap_model(draft.model, draft.tokenizer)
    half.use_head(head_from_rows(half, set(range(0, half.vocab_size, 2)) | set(half.eos_token_ids)))
    feature = tiny_feature_draft(target)  # conditioned on the target's states (specdec.models.feature_draft)
    pvalues = {}
    cases = (
        ("exact", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300, dict(predraft_policy="hint"), draft),
        ("exact_eager_predraft", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300,
         dict(predraft_policy="eager"), draft),
        ("exact_adaptive_reduced_head", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300,
         dict(predraft_policy="eager", draft_length="adaptive", merge_first_block=True), half),
        ("exact_confidence_stop", rejection_accept, DecodingMode.SPECULATIVE, 300,
         dict(draft_length="confidence", confidence_threshold=0.3), draft),
        ("exact_cloud_finish", rejection_accept, DecodingMode.SPECULATIVE, 300,
         dict(cloud_finish_tokens=1), draft),
        ("exact_feature_draft", rejection_accept, DecodingMode.SPECULATIVE_EARLY_EXIT, 300,
         dict(predraft_policy="eager"), feature),
        ("broken", broken_rule, DecodingMode.SPECULATIVE, 200, dict(predraft_policy="hint"), draft),
    )
    for name, rule, mode, runs, settings, proposer in cases:
        counts = Counter()
        rejected = 0
        with LocalSpeculativeDecoder(proposer, target, exit_heads=heads, verifier_kwargs={"sampling_rule": rule},
                                     do_sample=True, temperature=1.0, top_k=TOP_K, gamma=2,
                                     max_new_tokens=3, **settings) as runner:
            for seed in range(runs):
                result = runner.generate(PROMPT, None, mode, seed=seed)
                counts[tuple(result.tokens[:2])] += 1
                rejected += sum(r.accepted < r.drafted for r in result.stats.round_log)
        # the residual path is exercised (the adaptive policy drafts this weak draft's tokens rarely)
        assert rejected > (8 if "adaptive" in name else runs // 10), (name, rejected)
        pvalues[name] = chi_square(counts, joint, runs)
    for name in pvalues:
        if name != "broken":
            assert pvalues[name] > 1e-3, pvalues
    assert pvalues["broken"] < 1e-6, pvalues


def test_sampling_matches_target_on_a_vlm_after_an_image(tiny_pair, chi_square, image):
    """Qwen2-VL (M-RoPE positions after an image), every draft and verification step through the
    lean decode step; the reference is full forwards without a cache."""
    draft, target = tiny_pair("qwen2_vl", noise=0.1, target_layers=2)
    assert draft.lean_step is not None and target.lean_step is not None
    params = SamplingParams(do_sample=True, temperature=1.0, top_k=TOP_K)
    joint = _exact_joint(target, params, image)
    assert abs(sum(joint.values()) - 1.0) < 1e-4
    heads = EarlyExitHeads(target.model, [0])
    pvalues = {}
    for name, rule, runs in (("exact", rejection_accept, 300), ("broken", broken_rule, 200)):
        counts, rejected = Counter(), 0
        with LocalSpeculativeDecoder(draft, target, exit_heads=heads, verifier_kwargs={"sampling_rule": rule},
                                     do_sample=True, temperature=1.0, top_k=TOP_K, gamma=2, max_new_tokens=3,
                                     predraft_policy="eager") as runner:
            for seed in range(runs):
                result = runner.generate(PROMPT, image, DecodingMode.SPECULATIVE_EARLY_EXIT, seed=seed)
                counts[tuple(result.tokens[:2])] += 1
                rejected += sum(r.accepted < r.drafted for r in result.stats.round_log)
        assert rejected > runs // 10, (name, rejected)
        pvalues[name] = chi_square(counts, joint, runs)
    assert pvalues["exact"] > 1e-3 and pvalues["broken"] < 1e-6, pvalues


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
