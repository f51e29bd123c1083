"""Device, dtype and draft quantization: names resolve, bad ones are refused in one line, and a
draft in another precision (bf16, int8) changes acceptance only - the output stays the target's."""

import os

import pytest
import torch

from conftest import DRAFT_ID, PROMPT, TARGET_ID, TEXT_DRAFT_ID, TEXT_TARGET_ID
from specdec.engine.local import speculative_generate
from specdec.models.kernels import small_batch_library
from specdec.models.loading import load_model, resolve_device, resolve_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GO2 = os.path.join(ROOT, "models", "go2_vlm")


def _int8_linears(model):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return [m for m in model.modules() if isinstance(m, DynamicLinear)]


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("fp32", torch.float32), ("BF16", torch.bfloat16),
                                        ("bfloat16", torch.bfloat16), ("fp16", torch.float16), (None, None)])
def test_dtype_names(name, dtype):
    assert resolve_dtype(name) is dtype


def test_device_names():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == "cpu"
    for bad in ("gpu", "tpu", "cuda:x"):
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_loading(offline_hub):
    with pytest.raises(ValueError, match="sees no CUDA device"):
        load_model(TARGET_ID, device="cuda")


@pytest.mark.parametrize("kwargs,message", [
    (dict(quantization="int4"), "quantization must be one of none, int8, bf16, 4bit"),
    (dict(quantization="bf16", dtype="fp16"), "bf16 is the CPU small-batch kernel's weight format"),
    (dict(quantization="4bit", device="cpu"), "4bit needs a CUDA device"),
    (dict(quantization="int8", dtype="bf16"), "needs dtype float32"),
    (dict(dtype="half"), "dtype must be one of"),
])
def test_bad_settings_are_refused_in_one_line(offline_hub, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        load_model(DRAFT_ID, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_draft_keeps_fp32_target_output(offline_hub, frame, greedy_reference, dtype):
    draft, target = load_model(DRAFT_ID, dtype=dtype), load_model(TARGET_ID, dtype="fp32")
    assert draft.dtype == resolve_dtype(dtype) and target.dtype == torch.float32
    result = speculative_generate(draft, target, PROMPT, frame, max_new_tokens=12)
    assert result.tokens == greedy_reference(target, PROMPT, frame)


@pytest.mark.parametrize("draft_id,target_id,vlm", [(DRAFT_ID, TARGET_ID, True), (TEXT_DRAFT_ID, TEXT_TARGET_ID, False)])
def test_int8_draft_is_quantized_and_lossless(offline_hub, frame, greedy_reference, draft_id, target_id, vlm):
    draft = load_model(draft_id, quantization="int8")
    float_draft, target = load_model(draft_id), load_model(target_id)
    quantized = _int8_linears(draft.model)
    assert len(quantized) >= 4 * 7  # every attention/MLP projection of the 4 decoder layers (+ the vision tower)
    assert isinstance(draft.model.get_output_embeddings(), torch.nn.Linear)  # the head stays float
    image = frame if vlm else None
    inputs = draft.encode(PROMPT, image)
    with torch.inference_mode():  # it really is another model: its logits moved
        q_logits = draft.model(**inputs.generate_kwargs()).logits
        f_logits = float_draft.model(**inputs.generate_kwargs()).logits
    assert not torch.equal(q_logits, f_logits)
    reference = greedy_reference(target, PROMPT, image, max_new_tokens=16)
    for gamma in (1, 3, 5):
        result = speculative_generate(draft, target, PROMPT, image, max_new_tokens=16, gamma=gamma)
        assert result.tokens == reference


@pytest.mark.skipif(small_batch_library() is None, reason="no C compiler for the small-batch kernel")
@pytest.mark.parametrize("draft_id,target_id,vlm", [(DRAFT_ID, TARGET_ID, True), (TEXT_DRAFT_ID, TEXT_TARGET_ID, False)])
def test_bf16_weight_draft_is_lossless_and_keeps_float32_embeddings(offline_hub, frame, greedy_reference, draft_id,
                                                                    target_id, vlm):
    """bf16 weights for every linear layer of the draft (its LM head too: a tied head gets its own
    copy, the input embeddings stay float32); the draft's logits move, the output does not."""
    draft = load_model(draft_id, quantization="bf16")
    float_draft, target = load_model(draft_id), load_model(target_id)
    assert draft.linear_kernel == "small_batch_bf16"
    linears = [m for m in draft.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert draft.model.get_input_embeddings().weight.dtype == torch.float32
    assert draft.lm_head.module.weight.dtype == torch.bfloat16
    image = frame if vlm else None
    state_b, state_f = draft.prefill(draft.encode(PROMPT, image)), float_draft.prefill(float_draft.encode(PROMPT, image))
    logits_b, logits_f = draft.forward(state_b, [5]), float_draft.forward(state_f, [5])
    assert not torch.equal(logits_b, logits_f) and torch.allclose(logits_b, logits_f, atol=0.5)
    reference = greedy_reference(target, PROMPT, image, max_new_tokens=16)
    for gamma in (1, 3, 5):
        result = speculative_generate(draft, target, PROMPT, image, max_new_tokens=16, gamma=gamma)
        assert result.tokens == reference


def test_int8_draft_of_the_go2_pair_on_simulator_frames(greedy_reference):
    """The trained Go2 pair: int8 draft + fp32 target decides exactly as the target alone."""
    from go2_sim.episode import Go2Episode

    draft = load_model(os.path.join(GO2, "draft"), quantization="int8")
    target = load_model(os.path.join(GO2, "target"))
    assert _int8_linears(draft.model)
    env = Go2Episode()
    for seed in (0, 1, 2):
        env.reset(seed)
        rgb = env.render()[:, :, ::-1].copy()
        result = speculative_generate(draft, target, env.instruction, rgb, max_new_tokens=8)
        assert result.tokens == greedy_reference(target, env.instruction, rgb, max_new_tokens=8)
