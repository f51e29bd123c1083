"""Families the other tests do not name: sliding-window attention (Mistral, Qwen2, Gemma 2 and 3)
past the window with rollbacks in a row, and one model object serving as draft and target."""

import pytest
import torch

from specdec.engine.local import LocalSpeculativeDecoder
from specdec.models.adapters import wrap_model
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.tiny import perturbed_copy, tiny_tokenizer
from specdec.protocol import DecodingMode

WINDOW = 4  # far shorter than prompt + answer: every rollback crosses the window


def _text_config(tok):
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, head_dim=16,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                tie_word_embeddings=False, initializer_range=0.2)


def _sliding_model(family, tok):
    import transformers as tf

    base = _text_config(tok)
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**base, sliding_window=WINDOW))
    if family == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**base, use_sliding_window=True, sliding_window=WINDOW,
                                                  max_window_layers=0))
    if family == "gemma2":  # alternating sliding / global layers, final logit soft-capping
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**base, sliding_window=WINDOW, final_logit_softcapping=30.0))
    return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**base, sliding_window=WINDOW))


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2", "gemma3"])
def test_sliding_window_families_are_lossless(family, reference, prompt):
    tok = tiny_tokenizer("llama")
    torch.manual_seed(0)
    target = _sliding_model(family, tok).eval()
    target.generation_config.eos_token_id = tok.eos_token_id
    target.generation_config.pad_token_id = tok.pad_token_id
    target_adapter = wrap_model(target, tok)
    ref = reference(target_adapter, prompt, None, max_new_tokens=20)
    assert len(ref) >= 6 and len(target_adapter.encode(prompt).input_ids) > 2 * WINDOW
    draft = wrap_model(perturbed_copy(target, noise=0.4, seed=1), tok)  # rejections: rollbacks
    heads = EarlyExitHeads(target, [1])
    for policy in ("hint", "eager"):
        with LocalSpeculativeDecoder(draft, target_adapter, exit_heads=heads, predraft_policy=policy,
                                     latency_s=0.005) as runner:
            for gamma in (2, 4):
                result = runner.generate(prompt, None, DecodingMode.SPECULATIVE_EARLY_EXIT, gamma=gamma,
                                         max_new_tokens=20)
                assert result.tokens == ref, (family, policy, gamma)
                assert result.stats.acceptance_rate < 1.0  # rollbacks happened


def test_one_model_object_as_draft_and_target_with_exit_hooks(tiny_pair, reference, prompt):
    """The edge's forward passes on the shared model must not fire the verifier's exit hooks."""
    _, target = tiny_pair("llama", noise=0.05)
    ref = reference(target, prompt, None, max_new_tokens=14)
    with LocalSpeculativeDecoder(target, target, exit_heads=EarlyExitHeads(target.model, [1]), latency_s=0.01,
                                 predraft_policy="eager") as runner:
        for gamma in (2, 4):
            result = runner.generate(prompt, None, DecodingMode.SPECULATIVE_EARLY_EXIT, gamma=gamma,
                                     max_new_tokens=14)
            assert result.tokens == ref
            assert result.stats.acceptance_rate == 1.0
