"""The data of the draft's on-policy distillation and of the exits' verification rows, checked
against the real decoding path on the committed Go2 pair (a few frames: fast)."""

import pytest
import torch

torch.set_num_threads(1)

from training.go2_vlm import pair as vlm  # noqa: E402
from training.go2_vlm.config import TrainConfig  # noqa: E402
from training.go2_vlm.data import COMBOS, INSTRUCTIONS, collect_chunks, data_jobs, job_rollouts  # noqa: E402
from training.go2_vlm.distill import label_with_target  # noqa: E402
from training.go2_vlm.evaluate import greedy_decode  # noqa: E402
from training.go2_vlm.verification import _PassRecorder, verification_rows  # noqa: E402

CFG = TrainConfig(episodes=1, chunk=1, workers=1, held_out_every=2)


@pytest.fixture(scope="module")
def pair():
    if not vlm.artefacts_exist():
        pytest.fail("committed Go2 VLM artefacts missing (make models)")
    return vlm.load_pair()


def test_target_labels_are_the_targets_greedy_decodes(pair):
    """Every (frame, object) answer of label_with_target is what the target decodes greedily
    through its adapter on that frame, and the distributions' argmax is that answer."""
    _draft, target, _heads = pair
    job = data_jobs(CFG, 0, 1)[0]
    data, logp = label_with_target(target.model, collect_chunks([job], 1, progress=False), CFG, progress=False)
    images, rooms, prompts = [], [], []
    for env, _ep, _seed, _step, image, _info, _label in job_rollouts(job, with_info=True):
        images.append(vlm.bgr_to_rgb(image))
        rooms.append(sorted(COMBOS.index((o.color, o.shape)) for o in env.world.objects))
        prompts.append({c: env.prompt(job.prompt_template, INSTRUCTIONS[c]) for c in rooms[-1]})
    assert len(images) == int(data.pix.shape[0])
    for frame, room in enumerate(rooms):  # every object of the room asked, once
        assert data.combo[data.frame == frame].tolist() == room
    for row in range(len(data)):
        frame, combo = int(data.frame[row]), int(data.combo[row])
        answer = [t for t in data.targets[row].tolist() if t >= 0]
        assert answer == greedy_decode(target, prompts[frame][combo], images[frame])[:len(answer)]
        assert answer[-1] == target.eos_token_ids[0] or len(answer) == data.answer_len
        assert logp[row, :len(answer)].float().argmax(-1).tolist() == answer


def test_pass_recorder_keeps_the_last_rows_of_each_layer(pair):
    _draft, target, _heads = pair
    model = target.model
    recorder = _PassRecorder(model, vlm.EXIT_LAYERS, rows=3)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        recorder.remove()
    assert len(recorder.passes) == 1
    for layer in vlm.EXIT_LAYERS:
        assert torch.allclose(recorder.passes[0][layer], out.hidden_states[layer + 1][0, -3:].float(), atol=1e-5)
    final = recorder.passes[0]["final"]
    assert torch.allclose(target.logits(final), out.logits[0, -3:].float(), atol=1e-4)


def test_verification_rows_are_the_decisive_rows_of_each_round(pair):
    """Rows 0..accepted of every round (one sequence each): their labels' top token, in order, is
    what the round committed (the accepted draft tokens, then the target's correction or end)."""
    draft, target, _heads = pair
    train, held = verification_rows(draft, target, vlm.EXIT_LAYERS, CFG, first_chunk=1, episodes=2, progress=False)
    assert len(train) and len(held) and len(train) + len(held) > 10
    for labels in (train, held):
        assert set(labels.hidden) == set(vlm.EXIT_LAYERS)
        for s in torch.unique(labels.seq).tolist():
            rows = torch.nonzero(labels.seq == s).flatten()
            committed = labels.sequences[s].tolist()
            first = int(labels.pos[rows[0]])
            assert labels.pos[rows].tolist() == list(range(first, first + len(committed)))
            assert labels.topk_ids[rows, 0].tolist() == committed


def test_a_draft_equal_to_the_target_agrees_on_every_drafted_token(pair):
    """Acceptance counts a drafted stop token the target confirms, though the result names it as
    the target's next token (the block is cut there)."""
    from training.go2_vlm.evaluate import bench_frames, evaluate_frames

    _draft, target, heads = pair
    report = evaluate_frames(target, target, heads, bench_frames(3), progress=False)
    assert report["acceptance_rate"] == 1.0 and report["draft_alone_agreement"] == 1.0
    assert report["rounds"] == report["decisions"] == 3  # every answer in one round
    assert report["accepted"] == report["drafted"] == report["tokens"]
    assert report["lossless_mismatches"] == 0
