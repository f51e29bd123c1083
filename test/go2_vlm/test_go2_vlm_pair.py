"""The committed Go2 VLM pair (models/go2_vlm): loads, shares a tokenizer, decodes losslessly.

Fast (a few seconds): two tiny Qwen2-VL models, a handful of simulator frames.
"""

import pytest
import torch

torch.set_num_threads(1)

from specdec.models.artefacts import go2_pair_dir  # noqa: E402
from training.go2_vlm import pair as vlm  # noqa: E402
from training.go2_vlm.evaluate import greedy_decode  # noqa: E402

FRAME_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def pair():
    if not vlm.artefacts_exist():
        pytest.fail(f"committed Go2 VLM artefacts missing in {go2_pair_dir()} "
                    "(make models)")
    return vlm.load_pair()


@pytest.fixture(scope="module")
def frames():
    """(prompt, RGB frame) from a few seeded episodes: the start view and two other headings; the
    prompt is the instruction in the pair's own template, as the edge node and the simulator ask."""
    from go2_sim.episode import Go2Episode

    template = vlm.load_prompt_template()
    env = Go2Episode()
    out = []
    for seed in FRAME_SEEDS:
        env.reset(seed)
        for _ in range(3):
            out.append((env.prompt(template), vlm.bgr_to_rgb(env.render())))
            env.world.yaw += 2.1  # another heading, same room
    return out


def test_pair_loads_and_shares_tokenizer(pair):
    from specdec.models.fingerprint import tokenizer_fingerprint

    draft, target, heads = pair
    assert draft.fingerprint == target.fingerprint
    # the committed tokenizer is the one the code builds
    from training.go2_vlm.config import TrainConfig, prompt_template

    assert target.fingerprint == tokenizer_fingerprint(vlm.build_tokenizer(prompt_template(TrainConfig())))
    assert draft.vocab_size == target.vocab_size
    assert type(target.model).__name__ == type(draft.model).__name__ == "Qwen2VLForConditionalGeneration"
    n_target = sum(p.numel() for p in target.model.parameters())
    n_draft = sum(p.numel() for p in draft.model.parameters())
    # the draft is the target's decoder cut to fewer layers (its vision tower and width kept)
    layers = [m.model.config.text_config.num_hidden_layers for m in (draft, target)]
    assert layers[0] < layers[1] and n_draft < n_target
    assert heads.exit_layers == list(vlm.EXIT_LAYERS)


def test_prompt_layout_matches_training(pair, frames):
    """Training builds prompts with vlm.prompt_text; inference goes through the adapter."""
    _, target, _ = pair
    instruction, image = frames[0]
    inputs = target.encode(instruction, image)
    assert inputs.text == vlm.prompt_text(target.processor, instruction)
    assert inputs.text.index(instruction) < inputs.text.index("<|vision_start|>")  # text before the image
    grid = inputs.model_inputs["image_grid_thw"][0].tolist()
    assert grid[1] * vlm.PATCH == vlm.IMAGE_H and grid[2] * vlm.PATCH == vlm.IMAGE_W


def test_action_tokens_round_trip():
    from go2_vlm_control.action_language import format_action

    tok = vlm.build_tokenizer()
    actions = ["done", "stop", format_action("left", 60), format_action("right", 7),
               format_action("forward", 0.35), format_action("forward", 1.0), format_action("strafe_left", 0.5),
               "forward 0.37", "backward 12.5"]
    for action in actions:
        ids = tok(action, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, action
        assert tok.decode(ids) == action
    for action in actions[:7]:  # what the expert writes is <verb> <number>: two tokens at most
        assert len(tok(action, add_special_tokens=False)["input_ids"]) <= 2


def test_greedy_speculative_equals_target_and_parses(pair, frames):
    from go2_vlm_control.action_language import parse_action
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.protocol import DecodingMode

    draft, target, heads = pair
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=4, max_new_tokens=8) as runner:
        for instruction, image in frames:
            alone = greedy_decode(target, instruction, image)
            assert alone[-1] in target.eos_token_ids
            text = target.decode_text(alone)
            parse_action(text)  # raises when the target's output is not a valid action
            for mode in (DecodingMode.SPECULATIVE, DecodingMode.SPECULATIVE_EARLY_EXIT):
                result = runner.generate(instruction, image, mode)
                assert result.tokens == alone, (instruction, mode)
                assert result.text == text


def test_target_alone_matches_generate(pair, frames):
    """The reference decoder used by the evaluation equals HF generate(do_sample=False)."""
    _, target, _ = pair
    instruction, image = frames[1]
    inputs = target.encode(instruction, image)
    with torch.inference_mode():
        out = target.model.generate(**inputs.generate_kwargs(), max_new_tokens=8, do_sample=False)
    assert greedy_decode(target, instruction, image) == out[0, len(inputs.input_ids):].tolist()


def test_exit_heads_hook_during_decoding(pair, frames):
    _, target, heads = pair
    stats = {}
    instruction, image = frames[0]
    toks = greedy_decode(target, instruction, image, exit_heads=heads, exit_stats=stats)
    assert sorted(stats) == list(vlm.EXIT_LAYERS)
    assert all(total == len(toks) for _, total in stats.values())
