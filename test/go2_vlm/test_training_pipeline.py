"""The Go2 VLM training pipeline end to end on a tiny budget: simulator data -> target -> draft ->
exits -> saved pair -> closed-loop evaluation (speculative decoding lossless against the target).

About a minute on 2 cores; the trained models are useless, the plumbing is what is checked.
"""

import json
import os

import pytest
import torch


from specdec.models.artefacts import go2_pair_paths  # noqa: E402
from training.go2_vlm import pair as vlm  # noqa: E402
from training.go2_vlm.config import TrainConfig, apply_overrides, recipe_sha  # noqa: E402
from training.go2_vlm.data import (SMALL_OBJECT_TOKENS, TWIN_CLOSE_TOKENS, assemble_dataset,  # noqa: E402
                                   coarse_action, expert_chunks, object_tokens, training_rows, twin_of,
                                   twin_tokens)
from training.go2_vlm.build import build  # noqa: E402
from training.go2_vlm.train import OBJECT_MIN_TOKENS, object_loss, warm_up_vision  # noqa: E402

TINY = dict(episodes=16, chunk=8, workers=1, threads=1, target_steps=12, draft_steps=8, exit_epochs=1.0,
            held_out_every=4, boundary_repeat=3, object_weight=1.0, vision_warmup_steps=3, vision_warmup_frames=4,
            turn_step_deg=5.0, move_step_m=0.1, dagger_episodes=0)  # the recipe's DAgger round: 150 rollouts
# the draft from the target's layers, distilled on target- and draft-driven frames; exits from verification rows
ON_POLICY = dict(draft_init="target:0,3", distill_target_episodes=2, distill_draft_episodes=2, distill_steps=3,
                 exit_episodes=2, chunk=2)


@pytest.fixture(scope="module")
def tiny_data():
    cfg = TrainConfig(**TINY)
    return cfg, assemble_dataset(expert_chunks(cfg, progress=False), cfg, log=lambda m: None)


def test_boundary_rows_are_repeated(tiny_data):
    cfg, data = tiny_data
    base = training_rows(data, cfg.other_hidden_frac, cfg.seed, rare_repeat=1)
    rows = training_rows(data, cfg.other_hidden_frac, cfg.seed, rare_repeat=1, boundary_repeat=3)
    close = twin_tokens(data) >= TWIN_CLOSE_TOKENS
    boundary = {int(r) for r in base if close[r] or data.actions[int(r)] == "done"}
    assert boundary, "tiny rollouts should contain done samples"
    counts = torch.bincount(rows, minlength=len(data))
    for r in base.tolist():
        assert int(counts[r]) == (3 if r in boundary else 1)


def test_small_object_rows_are_repeated(tiny_data):
    cfg, data = tiny_data
    base = training_rows(data, cfg.other_hidden_frac, cfg.seed)
    rows = training_rows(data, cfg.other_hidden_frac, cfg.seed, small_repeat=4)
    shown = object_tokens(data)
    small = {int(r) for r in base if data.state[r, 0] > 0 and shown[r] <= SMALL_OBJECT_TOKENS}
    large = {int(r) for r in base if shown[r] > SMALL_OBJECT_TOKENS}
    assert small and large, "tiny rollouts should show objects both small and large"
    counts = torch.bincount(rows, minlength=len(data))
    for r in base.tolist():
        assert int(counts[r]) == (4 if r in small else 1)
    r = next(iter(small))
    assert int(shown[r]) == int(data.regions[data.frame[r], :, data.combo[r]].sum())


def test_twin_tokens_count_the_lookalike(tiny_data):
    _cfg, data = tiny_data
    from training.go2_vlm.data import COMBOS

    tw = twin_tokens(data)
    for i in range(0, len(data), max(1, len(data) // 50)):
        colour, shape = COMBOS[int(data.combo[i])]
        twin = COMBOS.index(twin_of(colour, shape))
        assert twin_of(*COMBOS[twin]) == (colour, shape) and COMBOS[twin][1] != shape
        assert int(tw[i]) == int(data.regions[data.frame[i], :, twin].sum())


def test_data_cache_is_reused_only_for_the_same_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("GO2_VLM_DATA_CACHE", str(tmp_path / "chunks.pt"))
    cfg = TrainConfig(episodes=2, chunk=2, workers=1)
    first = expert_chunks(cfg, progress=False)
    again = expert_chunks(cfg, progress=False)
    assert torch.equal(torch.from_numpy(first[0]["frames"]["pix"][0]),
                       torch.from_numpy(again[0]["frames"]["pix"][0]))
    other = expert_chunks(TrainConfig(episodes=2, chunk=2, workers=1, seed=5), progress=False)
    assert not torch.equal(torch.from_numpy(first[0]["frames"]["pix"][0]),
                           torch.from_numpy(other[0]["frames"]["pix"][0]))
    assert torch.load(tmp_path / "chunks.pt", weights_only=False)["chunks"][0]["frames"]["pix"][0].tobytes() \
        == other[0]["frames"]["pix"][0].tobytes()


def test_apply_overrides_parses_text():
    cfg = apply_overrides(TrainConfig(), {"target_steps": "123", "absent_twins": "yes", "target_lr": "0.5"})
    assert (cfg.target_steps, cfg.absent_twins, cfg.target_lr) == (123, True, 0.5)
    with pytest.raises(KeyError):
        apply_overrides(TrainConfig(), {"no_such_field": "1"})


def test_recipe_hash_ignores_neutral_new_fields():
    assert recipe_sha(TrainConfig()) == recipe_sha(TrainConfig(boundary_repeat=1))
    assert recipe_sha(TrainConfig()) != recipe_sha(TrainConfig(boundary_repeat=2))
    assert recipe_sha(TrainConfig()) == recipe_sha(TrainConfig(workers=1, threads=1))  # how, not what


def test_tiny_build_saves_a_pair_that_decodes_losslessly(tmp_path):
    from training.go2_vlm.evaluate import evaluate_pair

    out = str(tmp_path / "pair")
    cfg = TrainConfig(**{**TINY, **ON_POLICY})
    report = build(out, force=True, config=cfg, progress=False, log=lambda m: None)
    assert vlm.artefacts_exist(out)
    assert report["recipe_sha"] == recipe_sha(cfg)
    assert report["target"]["steps"] == TINY["target_steps"]
    assert report["draft"]["spec"]["layers"] == 2 and report["draft"]["spec"]["hidden"] == vlm.TARGET_SPEC.hidden
    assert report["distill"]["steps"] == 3 and report["distill"]["chunks"] == 2  # 2 + 2 episodes, 2 per chunk
    assert report["distill"]["samples"] > report["distill"]["frames"] > 0
    assert report["exit_rows"]["train"] > 0 and report["exits"]["train_positions"] == report["exit_rows"]["train"]
    assert report["vision_warmup"]["steps"] == TINY["vision_warmup_steps"]
    assert report["target"]["held_out"]["objects"] > 0  # held-out objects big enough for a shape were scored
    result = evaluate_pair(out, seeds=[3, 4], max_decisions=4, threads=1, progress=False, log=lambda m: None,
                           include_expert=False)
    spec = result["speculative"]
    assert spec["decisions"] > 0
    assert spec["lossless_mismatches"] == 0
    assert spec["same_outcomes_as_target"]
    # every frame the speculative run saw was one the target run decoded (same trajectory)
    assert spec["reference_decodes"] == 0


def test_target_only_build(tmp_path):
    out = str(tmp_path / "target_only")
    build(out, force=True, config=TrainConfig(**dict(TINY, target_steps=4)), progress=False, log=lambda m: None,
          target_only=True)
    paths = go2_pair_paths(out)
    assert os.path.isfile(os.path.join(paths.target, "model.safetensors"))
    assert not os.path.exists(paths.draft)


def test_object_loss_scores_colour_per_token_and_shape_per_object():
    """Features that carry the right colour and shape word score low; the twin's shape scores high;
    objects smaller than OBJECT_MIN_TOKENS do not count for shape."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(6, 16)
    colours, shapes = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5])
    tokens = OBJECT_MIN_TOKENS + 2
    regions = torch.zeros(1, tokens, 8, dtype=torch.bool)
    regions[0, :, 2 * 1 + 1] = True                       # a green box over every token
    w = embed.weight.detach()

    def loss_with(shape_word):
        feats = (8.0 * (w[1] + w[shape_word])).expand(1, tokens, 16)
        return float(object_loss(feats, regions, embed, colours, shapes))

    assert loss_with(5) < 0.5 * loss_with(4)
    small = regions.clone()
    small[0, OBJECT_MIN_TOKENS - 1:] = False              # now too small for a shape target
    feats = (8.0 * (w[1] + w[4])).expand(1, tokens, 16)
    colour_only = float(object_loss(feats, small, embed, colours, shapes))
    assert colour_only < loss_with(4)
    # TrainConfig.object_min_tokens lowers the bar: the small box's wrong shape word costs again
    assert float(object_loss(feats, small, embed, colours, shapes, min_tokens=1)) > colour_only + 1.0


def test_vision_warm_up_trains_only_the_tower(tiny_data):
    cfg, data = tiny_data
    model = vlm.build_model(vlm.TARGET_SPEC, vlm.build_tokenizer(), seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = training_rows(data, cfg.other_hidden_frac, cfg.seed)
    warm_up_vision(model, data, rows, steps=2, frames_per_step=4, lr=1e-2, seed=0, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.visual.") for n in changed)
    assert all(n.startswith("model.visual.") or n.endswith("embed_tokens.weight") for n in changed), changed


def test_card_validation_row_comes_from_the_eval_report(tmp_path):
    """The committed weights' validation success is read from the evaluation report, never typed in."""
    from training.go2_vlm import card

    from dataclasses import asdict, replace

    from training.go2_vlm.config import TrainConfig, recipe_sha

    recipe = TrainConfig()
    out = tmp_path / "pair"
    out.mkdir()
    (out / "train_report.json").write_text(json.dumps(
        {"target": {"seconds": 123.4}, "config": asdict(recipe), "recipe_sha": recipe_sha(recipe)}))
    assert "| committed weights (`make models-eval`) | n/a (run `make models-eval`)" in card.render(str(out))
    (out / "eval_report.json").write_text(json.dumps(
        {"target_validation": {"episodes": 100, "successes": list(range(1000, 1087)), "said_done_elsewhere": 2}}))
    assert "| committed weights (`make models-eval`) | **87 / 100** | 2 | 123.4 |" in card.render(str(out))
    assert "has been trained once" in card.render(str(out))
    (tmp_path / "go2_vlm_spread").mkdir()  # another training of the recipe, beside the pair's folder
    (tmp_path / "go2_vlm_spread" / "seed1_eval_report.json").write_text(json.dumps(
        {"target_validation": {"success_rate": 0.91}, "speculative": {"tokens_per_round": 2.5}}))
    seed1_train = tmp_path / "go2_vlm_spread" / "seed1_train_report.json"
    # a training of another recipe is not the committed recipe's spread
    seed1_train.write_text(json.dumps({"config": asdict(replace(recipe, seed=1, search_walk_m=2.5))}))
    assert "has been trained once" in card.render(str(out))
    seed1_train.write_text(json.dumps({"config": asdict(replace(recipe, seed=1))}))
    spread = card.render(str(out))
    assert "| target success, validation seeds | n/a | 91.0 % |" in spread
    assert "| closed loop: tokens / round | n/a | 2.5 |" in spread


def test_coarse_action_puts_magnitudes_on_the_grid(tiny_data):
    assert [coarse_action(a, 5.0, 0.1) for a in ("left 23", "right 2", "left 60", "forward 0.35", "forward 0.04",
                                                 "strafe_left 0.25", "done")] == \
        ["left 25", "right 5", "left 60", "forward 0.4", "forward 0.1", "strafe_left 0.3", "done"]
    assert coarse_action("left 23", 1.0, 0.05) == "left 23"  # the expert's own grid: unchanged
    cfg, data = tiny_data  # TINY trains on a 5 deg / 0.1 m grid
    for verb, value in (a.split(" ") for a in data.actions if " " in a):
        step = 5.0 if verb in ("left", "right") else 0.1
        assert abs(float(value) / step - round(float(value) / step)) < 1e-6, (verb, value)
    smooth = data.soft[data.soft.sum(-1) > 0]
    assert len(smooth) and int((smooth > 0).sum(-1).max()) <= 90 // 5  # smoothing only over grid values


def test_concat_shifts_frames_and_keeps_every_sample(tiny_data):
    from training.go2_vlm.data import Go2Data

    _cfg, data = tiny_data
    both = Go2Data.concat([data, data])
    n, frames = len(data), int(data.pix.shape[0])
    assert len(both) == 2 * n and int(both.pix.shape[0]) == 2 * frames and both.actions == data.actions * 2
    assert torch.equal(both.frame[n:], data.frame + frames)
    assert torch.equal(both.pix[both.frame[n:]], data.pix[data.frame])
    assert torch.equal(both.ids[n:], data.ids) and torch.equal(both.held_out[:n], data.held_out)


def test_failure_kinds_name_what_went_wrong():
    from go2_sim.closed_loop import EpisodeResult
    from training.go2_vlm.evaluate import failure_kind

    def episode(actions, said_done=False, reached=False):
        return EpisodeResult(seed=0, success=False, reached=reached, said_done=said_done, decisions=len(actions),
                             invalid=0, sim_time=1.0, final_distance=2.0, final_bearing_deg=0.0, actions=actions)

    assert failure_kind(episode(["forward 1", "done"], said_done=True)) == "said done elsewhere"
    assert failure_kind(episode(["forward 1"] * 3, reached=True)) == "at the object, no done"
    assert failure_kind(episode(["forward 1"] * 4 + ["left 60"] * 6)) == "never found"
    assert failure_kind(episode(["forward 1", "left 20", "right 20", "left 15", "right 20", "left 20"])) \
        == "back-and-forth"
    assert failure_kind(episode(["forward 1", "left 20", "forward 0.5", "right 10"])) == "other"


def test_objects_not_in_the_picture_are_answered_by_the_search():
    """With ``search_walk_m`` every object the camera does not show is answered by the search the
    picture supports (turn, or walk on where the floor is free), never by the expert's planned
    path; the default recipe answers them as before."""
    import dataclasses

    from training.go2_vlm.data import DataJob, _gen_chunk

    job = DataJob(seed=3, episodes=3, perturb_prob=0.25, supersample=1, blocked_prob=1.0, near_prob=0.0,
                  absent_twins=False, learner_driven=False, turn_step_deg=5.0, move_step_m=0.1)
    before = _gen_chunk(job)["samples"]
    after = _gen_chunk(dataclasses.replace(job, search_walk_m=2.0))["samples"]
    hidden = [i for i, state in enumerate(after["state"]) if state[0] == 0.0]
    assert hidden and {after["action"][i] for i in hidden} <= {"left 60", "forward 1"}
    assert "forward 1" in {after["action"][i] for i in hidden}   # blocked starts: room to walk
    # objects in the picture keep the expert's answers
    shown = [a for a, s in zip(after["action"], after["state"]) if s[0] > 0]
    assert shown == [a for a, s in zip(before["action"], before["state"]) if s[0] > 0]
    # the default leaves out hidden objects the expert reaches by a planned path; now they are answered
    assert len(after["action"]) > len(before["action"])


def test_last_move_feedback_prompts_say_when_a_motion_stalled(tmp_path):
    """With ``last_move_feedback`` every prompt ends "last move ok" or, on a frame after a motion
    the controller stopped as stalled, "last move blocked" (same length: the layout stays fixed);
    the recipe has its own vocabulary and hash, and the trained folder carries the template the
    edge node then applies."""
    from specdec.models.loading import load_model
    from specdec.models.prompting import folder_prompt_template
    from training.go2_vlm.data import DataJob, _gen_chunk

    job = DataJob(seed=3, episodes=4, perturb_prob=0.25, supersample=1, blocked_prob=0.0, near_prob=1.0,
                  absent_twins=False, learner_driven=False, bump_prob=1.0, prompt_template=vlm.LAST_MOVE_TEMPLATE)
    chunk = _gen_chunk(job)
    tok = vlm.build_tokenizer(vlm.LAST_MOVE_TEMPLATE)
    blocked, ok = tok.convert_tokens_to_ids("blocked"), tok.convert_tokens_to_ids("ok")
    stalled = chunk["frames"]["blocked"]
    assert any(stalled) and not all(stalled)
    samples = chunk["samples"]
    assert len({len(ids) for ids in samples["ids"]}) == 1
    for frame, ids in zip(samples["frame"], samples["ids"]):
        assert (blocked in ids) == stalled[frame] and (ok in ids) != stalled[frame]
    assert tok.unk_token_id not in samples["ids"][0]

    cfg = TrainConfig(**dict(TINY, relocate_free_m=0.0, episodes=8, target_steps=2, vision_warmup_steps=0,
                             last_move_feedback=True, bump_prob=0.3))
    assert recipe_sha(cfg) != recipe_sha(TrainConfig(**TINY))
    out = str(tmp_path / "feedback")
    build(out, force=True, config=cfg, progress=False, log=lambda m: None, target_only=True)
    target = go2_pair_paths(out).target
    assert folder_prompt_template(target) == vlm.load_prompt_template(out) == vlm.LAST_MOVE_TEMPLATE
    assert load_model(target, name="t").vocab_size == len(tok) == len(vlm.build_tokenizer()) + 3


def test_relocation_labels_answer_hidden_objects_by_the_turning_done(tmp_path):
    """With ``relocate_free_m`` every prompt ends "turned little" or "turned around"; an object
    not in the picture is asked both ways - the search turn before a full circle, the walk on to a
    new place to look from after it where the floor ahead is free - while an object in the
    picture keeps the expert's answer whatever the count. The recipe has its own template,
    vocabulary and hash."""
    from specdec.models.prompting import TURNED_AROUND_DEG
    from training.go2_vlm.config import prompt_template
    from training.go2_vlm.data import DataJob, _gen_chunk

    cfg = TrainConfig(**dict(TINY, relocate_free_m=2.5))
    template = prompt_template(cfg)
    assert template == "{instruction} turned {turned}"
    assert prompt_template(TrainConfig(**dict(TINY, relocate_free_m=2.5, last_move_feedback=True))) == \
        vlm.LAST_MOVE_TEMPLATE + " turned {turned}"
    assert recipe_sha(cfg) != recipe_sha(TrainConfig(**TINY))
    job = DataJob(seed=3, episodes=4, perturb_prob=0.25, supersample=1, blocked_prob=1.0, near_prob=0.0,
                  absent_twins=False, learner_driven=False, prompt_template=template, relocate_free_m=2.5)
    samples = _gen_chunk(job)["samples"]
    tok = vlm.build_tokenizer(template)
    around, little = tok.convert_tokens_to_ids("around"), tok.convert_tokens_to_ids("little")
    assert tok.unk_token_id not in samples["ids"][0] and len({len(ids) for ids in samples["ids"]}) == 1
    by_key = {}
    for frame, combo, ids, action, state in zip(samples["frame"], samples["combo"], samples["ids"],
                                                samples["action"], samples["state"]):
        assert (around in ids) != (little in ids)
        by_key.setdefault((frame, combo, state[0] > 0), {})[around in ids] = action
    hidden = [answers for (_, _, shown), answers in by_key.items() if not shown]
    assert hidden and all(len(answers) == 2 for answers in hidden)  # every hidden object asked both ways
    assert all(answers[False] == "left 60" for answers in hidden)
    assert {answers[True] for answers in hidden} == {"left 60", "forward 1"}  # walks on where it is free
    shown_both = [answers for (_, _, shown), answers in by_key.items() if shown and len(answers) == 2]
    assert shown_both and all(answers[False] == answers[True] for answers in shown_both)
    assert TURNED_AROUND_DEG == 360.0


def test_objects_below_seen_min_pixels_are_answered_by_the_search():
    """``seen_min_pixels`` decides which objects the labels treat as seen: one covering fewer camera
    pixels is answered by the search (as if hidden), so raising it turns expert answers into search
    answers on the same frames and leaves the frames themselves alone."""
    from dataclasses import replace

    from training.go2_vlm.config import prompt_template
    from training.go2_vlm.data import REGION_MIN_PIXELS, DataJob, _gen_chunk

    cfg = TrainConfig(**dict(TINY, relocate_free_m=1.5, seen_min_pixels=20))
    assert recipe_sha(cfg) != recipe_sha(TrainConfig(**dict(TINY, relocate_free_m=1.5, seen_min_pixels=8)))
    assert recipe_sha(TrainConfig(seen_min_pixels=REGION_MIN_PIXELS)) != recipe_sha(TrainConfig())
    job = DataJob(seed=3, episodes=3, perturb_prob=0.25, supersample=1, blocked_prob=0.5, near_prob=0.0,
                  absent_twins=False, learner_driven=False, prompt_template=prompt_template(cfg),
                  relocate_free_m=1.5)
    base, blind = _gen_chunk(job), _gen_chunk(replace(job, seen_min_pixels=10 ** 6))
    assert len(base["frames"]["pix"]) == len(blind["frames"]["pix"])
    assert any(state[0] > 0 for state in base["samples"]["state"])
    assert not any(state[0] > 0 for state in blind["samples"]["state"])
    assert set(blind["samples"]["action"]) <= {"left 60", "forward 1"}  # the search, nothing else
    assert set(base["samples"]["action"]) - {"left 60", "forward 1"}
