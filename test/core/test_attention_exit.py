"""Exits that attend over the sequence (``attention`` kind): they read the target's own KV cache, so the
hint a verifier sends from inside any pass - a round after a rollback, a prefill carrying block 0, a
batched pass, a pass with branches - is what the exit says when run over the whole sequence at once."""

import threading

import pytest
import torch

from specdec.engine.drafter import EdgeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitError, EarlyExitHeads
from specdec.protocol import DecodingMode
from specdec.transport.inprocess import InProcessHub

from hint_rewriting import HintRewriter

LAYER = 1
PROMPTS = ["go forward two meters then turn left", "turn right", "find the red ball near the door and stop"]


def _trained_like(target, seed=0):
    """An attention exit with every weight moved off its initialisation (an untrained one is its
    position-wise adapter: zero output projections would hide a wrong cache)."""
    heads = EarlyExitHeads(target.model, [LAYER], adapter="attention", rank=8)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p) * 0.05)
    return heads


def _exit_states(target, ids, inputs=None):
    """The exit layer's states of ``ids`` in one pass from position 0 (``inputs``: a prompt's
    PromptInputs, whose image tensors the pass needs), and the pass's cache."""
    kwargs = inputs.generate_kwargs(target.device) if inputs is not None else {}
    kwargs["input_ids"] = torch.tensor([ids], device=target.device)
    kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
    with torch.inference_mode():
        out = target.model(**kwargs, output_hidden_states=True, use_cache=True)
    return out.hidden_states[LAYER + 1][0], out.past_key_values


def test_attention_exit_reads_the_targets_cache(tiny_pair):
    _, target = tiny_pair("llama", noise=0.03)
    ids = target.encode(PROMPTS[0]).input_ids + [5, 9, 11, 3]
    states, cache = _exit_states(target, ids)
    untrained = EarlyExitHeads(target.model, [LAYER], adapter="attention", rank=8)
    exit_module = untrained.adapters[str(LAYER)]
    with torch.inference_mode():
        # its keys and values are the next layer's cache entries for the same states
        positions = torch.arange(len(ids)).view(1, -1)
        cos, sin = exit_module._rotary(states[None], positions)
        keys, values = exit_module.keys_values(states[None], cos.unsqueeze(1), sin.unsqueeze(1))
        assert torch.equal(keys, cache.layers[LAYER + 1].keys) and torch.equal(values, cache.layers[LAYER + 1].values)
        # untrained, it is its position-wise adapter
        plain = target.model.lm_head(target.model.model.norm(exit_module.adapter(states)))
        assert torch.equal(untrained.exit_logits(LAYER, states), plain)
        # trained, the last rows after a cache of the first positions are the whole sequence's rows
        heads = _trained_like(target)
        whole = heads.exit_logits(LAYER, states)
        _, head_cache = _exit_states(target, ids[:-6])
        past = EarlyExitHeads.past(head_cache, LAYER)
        assert past[0].shape[-2] == len(ids) - 6
        tail = heads.exit_logits(LAYER, states[-6:], past, rows=3)
        assert torch.allclose(tail, whole[-3:], atol=1e-4)
        assert not torch.allclose(whole, plain, atol=1e-2)  # the layer does something
        assert EarlyExitHeads.past(target.new_cache(), LAYER) is None


def test_attention_exit_save_load_and_refusals(tiny_pair, tmp_path):
    _, target = tiny_pair("llama", noise=0.03)
    heads = _trained_like(target)
    path = heads.save(str(tmp_path / "attention.safetensors"))
    loaded = EarlyExitHeads.load(target.model, path)
    assert loaded.adapter_kind == "attention" and loaded.attends and loaded.exit_layers == [LAYER]
    states, _ = _exit_states(target, target.encode(PROMPTS[1]).input_ids)
    with torch.inference_mode():
        assert torch.equal(loaded.exit_logits(LAYER, states), heads.exit_logits(LAYER, states))
    with pytest.raises(EarlyExitError, match="needs the target's cache"):
        loaded.attach(lambda layer, logits: None)  # logits from the pass's rows alone would be wrong
    _, qwen = tiny_pair("qwen2_vl", noise=0.03)
    with pytest.raises(EarlyExitError, match="1-D rotary"):
        EarlyExitHeads(qwen.model, [LAYER], adapter="attention")


def _offline_hint(target, heads, inputs, committed, block, max_new_tokens, stop):
    """(accepted, next token, confidence) the exit names for ``block`` after ``ids + committed``, run over
    the whole sequence in one pass with no cache; None where the result would cut it (a stop token,
    max_new_tokens)."""
    ids = list(inputs.input_ids)
    states, _ = _exit_states(target, ids + committed + list(block), inputs)
    with torch.inference_mode():
        logits = heads.exit_logits(LAYER, states).float()
    first = len(ids) + len(committed) - 1  # the row that predicts block[0]
    rows = logits[first:first + len(block) + 1]
    accepted = 0
    while accepted < len(block) and int(rows[accepted].argmax()) == block[accepted]:
        accepted += 1
    guess = int(rows[accepted].argmax())
    named = list(block[:accepted]) + [guess]
    if len(committed) + accepted + 1 > max_new_tokens or set(named) & set(stop):
        return None
    logp = torch.log_softmax(rows[:accepted + 1], -1)
    return accepted, guess, float(logp[torch.arange(accepted + 1), torch.tensor(named)].sum().exp())


@pytest.mark.parametrize("arch", ["llama", "idefics3"])
def test_attention_hints_are_the_exit_over_the_whole_sequence(arch, tiny_pair, reference, image):
    draft, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    heads = _trained_like(target)
    refs = {p: reference(target, p, img, max_new_tokens=12) for p in PROMPTS}
    verifier = Verifier(target, heads, max_batch=4, batch_window_ms=15)
    seen, errors, results = [], [], []

    def robot(index):
        current = {}

        def record(hint, block):
            seen.append((current["prompt"], hint, block))
            return hint

        try:
            with_hub = HintRewriter(hub.connect(), record)
            edge = EdgeDecoder(draft, with_hub, robot_id=f"robot{index}", timeout_s=30)
            for k in range(3):
                prompt = PROMPTS[(index + k) % 3]
                current["prompt"] = prompt
                result = edge.decode(prompt, img, DecodingMode.SPECULATIVE_EARLY_EXIT, gamma=2 + (index + k) % 3,
                                     max_new_tokens=12, alternatives=(index + k) % 2,
                                     merge_first_block=(index + k) % 2 == 0,
                                     predraft_policy="eager" if index % 2 else "hint")
                results.append((prompt, result.tokens))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    with InProcessHub(verifier, latency_s=0.005) as hub:
        threads = [threading.Thread(target=robot, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert len(results) == 9 and all(tokens == refs[prompt] for prompt, tokens in results)  # lossless
    checked = 0
    for prompt, hint, block in seen:
        expected = _offline_hint(target, heads, target.encode(prompt, img), refs[prompt][:block.position],
                                 block.tokens, 12, draft.eos_token_ids)
        if expected is None:
            continue
        accepted, guess, confidence = expected
        assert (hint.predicted_accepted, hint.predicted_next_token) == (accepted, guess), (prompt, block.position)
        assert hint.confidence == pytest.approx(confidence, rel=1e-3, abs=1e-6)
        checked += 1
    assert checked >= len(seen) // 2 and checked > 10
    assert verifier.stats.batched_rows > verifier.stats.batches  # some hints came from shared passes
