"""Grammar-constrained decoding: the same token automaton masks draft and target, so speculative
decoding gives exactly the constrained target's output, and every output is in the grammar."""

import re
from collections import Counter

import pytest
import torch

from go2_vlm_control.action_language import GRAMMAR_PATTERN, parse_action
from specdec.engine.grammar import CharDfa, GrammarError, compile_grammar
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.sampling import SamplingParams, target_probs
from specdec.engine.token_loop import TokenLoop, TokenPicker
from specdec.models.artefacts import go2_pair_paths
from specdec.models.loading import load_model
from specdec.protocol import DecodingMode

TINY_GRAMMAR = r"(?:forward|backward|left|right) [1-9]|stop|done"  # the tiny word-level vocabulary's actions


def test_dfa_matches_the_regex():
    dfa = CharDfa(GRAMMAR_PATTERN)
    for text in ("forward 0.5", "left 30", "strafe_right 9999.999", "stop", "done", "right 0.05", "forward 10"):
        assert dfa.accepting(dfa.walk(0, text)), text
        assert re.fullmatch(GRAMMAR_PATTERN, text)
    for text in ("forward 0", "forward 0.0", "forward 01", "forward .5", "left", "stopp", "Forward 1", "left 1e3"):
        assert not dfa.accepting(dfa.walk(0, text)), text
    assert dfa.walk(0, "jump") == CharDfa.DEAD and dfa.walk(0, "forw") != CharDfa.DEAD


@pytest.mark.parametrize("pattern", [r"^forward", r"(a)\1", r"a(?=b)", "x" * 5000])
def test_unsupported_or_oversized_grammars_are_refused(pattern):
    with pytest.raises(GrammarError):
        CharDfa(pattern)


def _constrained_target(target, prompt, image, grammar, max_new_tokens):
    state = target.prefill(target.encode(prompt, image))
    picker = TokenPicker("greedy", SamplingParams())
    loop = TokenLoop(target, state, [], limit=max_new_tokens, picker=picker, stop=frozenset(target.eos_token_ids),
                     grammar=grammar)
    return loop.run().tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_constrained_greedy_is_the_constrained_target(arch, tiny_pair, image, prompt):
    draft, target = tiny_pair(arch, noise=0.2)  # random-init: unconstrained output is word salad
    img = None if arch == "llama" else image
    grammar = compile_grammar(TINY_GRAMMAR, target, target.eos_token_ids)
    ref = _constrained_target(target, prompt, img, grammar, 10)
    assert re.fullmatch(TINY_GRAMMAR, target.decode_text(ref)), target.decode_text(ref)
    for settings in (dict(), dict(draft_length="adaptive", predraft_policy="eager"), dict(merge_first_block=True)):
        with LocalSpeculativeDecoder(draft, target, grammar=TINY_GRAMMAR, **settings) as runner:
            for mode in (DecodingMode.SPECULATIVE_EARLY_EXIT, DecodingMode.CLOUD_ONLY):
                result = runner.generate(prompt, img, mode, max_new_tokens=10)
                assert result.tokens == ref, (settings, mode)
            edge = runner.generate(prompt, img, DecodingMode.EDGE_ONLY, max_new_tokens=10)
            assert re.fullmatch(TINY_GRAMMAR, draft.decode_text(edge.tokens))


def test_forced_tokens_cost_no_draft_step(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.2)
    pattern = r"forward (?:1|2)"  # "forward" and the end are forced; only the number is a choice
    with LocalSpeculativeDecoder(draft, target, grammar=pattern, gamma=4) as runner:
        result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=8)
    assert re.fullmatch(pattern, draft.decode_text(result.tokens))
    assert len(result.tokens) == 3  # forward, the number, the stop token
    assert result.stats.draft_forward_passes == 2  # the prefill and the one real choice


def test_constrained_sampling_follows_the_constrained_target(tiny_pair, chi_square, prompt):
    draft, target = tiny_pair("llama", noise=0.3, target_layers=2)
    pattern = r"(?:forward|left|stop) (?:1|2|3)"
    grammar = compile_grammar(pattern, target, target.eos_token_ids)
    params = SamplingParams(do_sample=True, temperature=1.0)
    # exact distribution of the constrained target over its 9 outputs (the stop token is forced)
    state0 = grammar.start()
    exact = {}
    with torch.inference_mode():
        base = target.prefill(target.encode(prompt))
        logits = target.forward(base, [base.prompt_ids[-1]], keep=1)[0]
        p1 = target_probs(logits.masked_fill(~grammar.allowed(state0, device=logits.device), float("-inf")), params)
        for verb in grammar.allowed_ids(state0):
            s1 = grammar.advance(state0, verb)
            l2 = target.forward(base, [verb], keep=1)[0]
            target.truncate(base, base.length - 1)
            p2 = target_probs(l2.masked_fill(~grammar.allowed(s1, device=l2.device), float("-inf")), params)
            for number in grammar.allowed_ids(s1):
                exact[(verb, number)] = float(p1[verb] * p2[number])
    assert len(exact) == 9 and abs(sum(exact.values()) - 1) < 1e-4
    counts, runs = Counter(), 400
    with LocalSpeculativeDecoder(draft, target, grammar=pattern, do_sample=True, gamma=2,
                                 draft_length="adaptive") as runner:
        for seed in range(runs):
            tokens = runner.generate(prompt, None, DecodingMode.SPECULATIVE, seed=seed, max_new_tokens=4).tokens
            counts[tuple(tokens[:2])] += 1
    assert chi_square(counts, exact, runs) > 1e-3


def test_untrained_go2_vlm_only_ever_produces_valid_actions(image):
    """A model that never learnt the action language (random weights, the Go2 tokenizer) still
    answers only parseable actions under the grammar - draft, target and speculative alike."""
    paths = go2_pair_paths()
    trained = load_model(paths.draft)
    torch.manual_seed(3)
    untrained = type(trained.model)(trained.model.config).eval()
    from specdec.models.adapters import wrap_model

    draft = wrap_model(untrained, trained.processor)
    target = load_model(paths.target)
    outputs = []
    with LocalSpeculativeDecoder(draft, target, grammar=GRAMMAR_PATTERN, gamma=3) as runner:
        for instruction in ("go to the red ball", "go to the blue box", "find the green ball"):
            for mode in (DecodingMode.EDGE_ONLY, DecodingMode.SPECULATIVE_EARLY_EXIT):
                result = runner.generate(instruction, image, mode, max_new_tokens=12)
                outputs.append(result.text)
    for text in outputs:
        parse_action(text)  # raises on anything invalid
    unconstrained = TokenLoop(draft, draft.prefill(draft.encode("go to the red ball", image)), [], limit=12,
                              picker=TokenPicker("greedy", SamplingParams())).run()
    with pytest.raises(ValueError):
        parse_action(draft.decode_text(unconstrained.tokens))  # what the grammar prevents
