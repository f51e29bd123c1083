"""The lean decode step (specdec.models.lean_step): bit for bit the model's own forward on every
supported family - decode steps, verification blocks, after rollbacks, inside ``generate`` and
transformers' assisted generation, under early-exit hooks - taken for plain steps only, and off
where it does not apply."""

import numpy as np
import pytest
import torch

from specdec.models import lean_step
from specdec.models.adapters import wrap_model
from specdec.models.artefacts import go2_pair_paths
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.loading import load_model
from specdec.models.tiny import build_tiny

IMAGE = (np.random.RandomState(0).rand(56, 56, 3) * 255).astype(np.uint8)


def _adapter(arch, dtype=torch.float32):
    model, processor = build_tiny(arch, layers=3, seed=2, dtype=dtype)
    return wrap_model(model, processor)


def _passes(adapter, inputs):
    """Hidden states of a prefill's follow-ups: a 5-token block, a rollback of 3, a decode step and
    a 2-token block, as speculative decoding runs them."""
    state = adapter.prefill(inputs)
    out = [adapter.forward_hidden(state, [11, 12, 13, 14, 15])]
    adapter.truncate(state, state.length - 3)
    out.append(adapter.forward_hidden(state, [16]))
    out.append(adapter.forward_hidden(state, [17, 18]))
    return out


def _both(adapter, run):
    """``run()`` with the model's own forward, then with the lean step: (own, lean, lean passes)."""
    adapter.use_lean_step(False)
    assert adapter.lean_step is None and "forward" not in lean_step.text_decoder(adapter.model).__dict__
    own = run()
    adapter.use_lean_step(True)
    step = adapter.lean_step
    assert step is not None, lean_step.supported(lean_step.text_decoder(adapter.model))
    before = step.lean_passes
    lean = run()
    return own, lean, step.lean_passes - before


@pytest.mark.parametrize("arch,dtype", [("llama", torch.float32), ("llama", torch.bfloat16),
                                        ("qwen2_vl", torch.float32), ("idefics3", torch.float32),
                                        ("llava", torch.float32)])
def test_steps_are_bit_identical(arch, dtype):
    adapter = _adapter(arch, dtype)
    assert adapter.lean_step is not None  # the adapter installs it
    inputs = adapter.encode("go to the red ball", None if arch == "llama" else IMAGE)
    own, lean, passes = _both(adapter, lambda: _passes(adapter, inputs))
    assert passes == 3  # the prefill takes the model's own forward, the three steps the lean one
    assert all(torch.equal(a, b) for a, b in zip(own, lean))


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_generate_and_assisted_generation_are_bit_identical(arch):
    adapter = _adapter(arch)
    assistant, _ = build_tiny(arch, layers=1, seed=3)
    inputs = adapter.encode("go to the red ball", None if arch == "llama" else IMAGE)

    def generate(**extra):
        with torch.inference_mode():
            out = adapter.model.generate(**inputs.generate_kwargs(), max_new_tokens=10, do_sample=False,
                                         output_scores=True, return_dict_in_generate=True, **extra)
        return [out.sequences] + list(out.scores)

    own, lean, passes = _both(adapter, generate)
    # one lean pass per generated token after the first (the prefill's); own = [sequences] + scores
    assert passes == len(own) - 2 > 0 and all(torch.equal(a, b) for a, b in zip(own, lean))
    if arch == "llama":  # verification blocks of several tokens under generate's attention mask
        own, lean, passes = _both(adapter, lambda: generate(assistant_model=assistant))
        assert passes >= 1 and len(own) == len(lean) and all(torch.equal(a, b) for a, b in zip(own, lean))


def test_exit_hooks_see_the_same_states_and_can_replace_them():
    adapter = _adapter("llama")
    heads = EarlyExitHeads(adapter.model, [0, 1])
    inputs = adapter.encode("go to the red ball")

    def run():
        seen = []
        with heads.attach(lambda layer, hidden: seen.append((layer, hidden.clone())), hidden=True):
            out = _passes(adapter, inputs)
        return out + [h for _, h in seen] + [torch.tensor([layer for layer, _ in seen])]

    own, lean, passes = _both(adapter, run)
    assert passes == 3 and len(own) == len(lean) == 3 + 2 * 4 + 1
    assert all(torch.equal(a, b) for a, b in zip(own, lean))
    # a hook's return value replaces the layer's output, as nn.Module does it
    layer = lean_step.text_decoder(adapter.model).layers[1]
    handle = layer.register_forward_hook(lambda _m, _i, out: out * 0.5)
    try:
        own, lean, passes = _both(adapter, lambda: _passes(adapter, inputs))
    finally:
        handle.remove()
    assert passes == 3 and all(torch.equal(a, b) for a, b in zip(own, lean))


def test_only_plain_steps_take_the_lean_path():
    adapter = _adapter("llama")
    step = adapter.lean_step
    decoder = lean_step.text_decoder(adapter.model)
    state = adapter.prefill(adapter.encode("go to the red ball"))
    cache, ids = state.cache, torch.tensor([[11, 12]])

    def taken(**kwargs):
        before = step.lean_passes
        length = cache.get_seq_length()
        with torch.inference_mode(kwargs.pop("inference", True)):
            decoder(input_ids=kwargs.pop("ids", ids), past_key_values=kwargs.pop("cache", cache), **kwargs)
        cache.crop(length - cache.get_seq_length())
        return step.lean_passes - before

    assert taken() == 1
    assert taken(attention_mask=torch.ones(1, cache.get_seq_length() + 2, dtype=torch.long)) == 1
    assert taken(attention_mask=torch.tensor([[0] + [1] * (cache.get_seq_length() + 1)])) == 0  # padding
    assert taken(output_hidden_states=True) == 0
    assert taken(ids=ids.repeat(2, 1), cache=type(cache)()) == 0  # a batch, and a prefill
    with torch.enable_grad():
        assert taken(inference=False) == 0  # training
    handle = decoder.layers[0].register_forward_pre_hook(lambda *_: None)
    assert taken() == 0
    handle.remove()
    handle = decoder.layers[0].register_forward_hook(lambda *_args, **_kw: None, with_kwargs=True)
    assert taken() == 0
    handle.remove()
    assert taken() == 1


def test_off_switch_and_unsupported_models(monkeypatch):
    model, processor = build_tiny("llama", layers=2, seed=4)
    monkeypatch.setenv("SPECDEC_LEAN_STEP", "0")
    assert wrap_model(model, processor).lean_step is None
    monkeypatch.delenv("SPECDEC_LEAN_STEP")
    model.config._attn_implementation = "eager"
    assert "attention 'eager'" in lean_step.supported(lean_step.text_decoder(model))
    assert lean_step.install(model) is None
    model.config._attn_implementation = "sdpa"
    step = lean_step.install(model)
    assert step is not None and lean_step.install(model) is step  # installing twice is harmless
    lean_step.uninstall(model)
    assert "forward" not in lean_step.text_decoder(model).__dict__


def test_committed_go2_target_is_bit_identical():
    from bench.workloads import go2_workload

    adapter = load_model(go2_pair_paths().target)
    prompt, image = go2_workload(1, 4).items[0]
    own, lean, passes = _both(adapter, lambda: _passes(adapter, adapter.encode(prompt, image)))
    assert passes == 3 and all(torch.equal(a, b) for a, b in zip(own, lean))
