"""The feature draft's trainer (training.text.feature_draft) on a tiny target: training raises its
agreement with the target, the committed artefact is reassembled into exactly the trained draft,
and the trained draft keeps speculative decoding token-identical to the target."""

import json
import os

import pytest
import torch

from specdec.models.feature_draft import FeatureDraft, FeatureDraftAdapter
from training.text import feature_draft as fd

# a tiny random target's next token is a random function of its context: a draft can fit its training
# text but not generalise (real targets do: see models/eval_smollm2_feature.json)
RECIPE = dict(fd.DEFAULT_RECIPE, layers=1, head_tokens=96, epochs=30.0, lr=3e-3, batch=8, held_out=8)


@pytest.fixture(scope="module")
def trained(tiny_target, tiny_labels, tmp_path_factory):
    model, tok = tiny_target
    committed = str(tmp_path_factory.mktemp("feature_committed"))
    stats = fd.train_and_save(model, tok, tiny_labels, committed, RECIPE, log=lambda _m: None)
    return stats, committed


def test_states_come_from_the_labels(tiny_target, tiny_labels):
    model, _tok = tiny_target
    states = fd.target_states(tiny_labels, model.config.hidden_size)
    seq = tiny_labels.sequences[0]
    with torch.inference_mode():
        want = model.model(seq[None]).last_hidden_state[0]
    p = tiny_labels.prompt_lens[0]
    assert torch.allclose(states[0][p - 1:len(seq) - 1].float(), want[p - 1:len(seq) - 1], atol=2e-2)


def test_training_fits_the_target(trained):
    stats, _ = trained
    before, after = stats["train_sample_before"], stats["train_sample_after"]
    assert after["kl"] < before["kl"] and stats["held_out_after"]["kl"] < stats["held_out_before"]["kl"]
    assert after["agreement_exact_input"] > before["agreement_exact_input"] + 0.15, stats
    assert after["agreement_own_input"] > before["agreement_own_input"] + 0.1, stats


def test_a_time_budget_stops_training_and_says_where(tiny_target, tiny_labels, tmp_path):
    model, tok = tiny_target
    stats = fd.train_and_save(model, tok, tiny_labels, str(tmp_path), dict(RECIPE, epochs=1.0), max_seconds=0.0,
                              log=lambda _m: None)
    assert stats["steps"] > 0 and stats["steps_done"] == 0, stats


def test_committed_artefact_holds_only_the_draft_and_reassembles_exactly(tiny_target, trained, tmp_path):
    from safetensors.torch import load_file

    from specdec.models.loading import load_model

    model, tok = tiny_target
    _stats, committed = trained
    record = json.load(open(os.path.join(committed, fd.DRAFT_CONFIG)))
    assert record["recipe"] == RECIPE and record["config"]["num_hidden_layers"] == 1
    weights = load_file(os.path.join(committed, "feature_draft.safetensors"))
    assert "model.embed_tokens.weight" not in weights and all(v.dtype == torch.float16 for v in weights.values())
    target_dir = tmp_path / "target"
    model.save_pretrained(target_dir)
    tok.save_pretrained(target_dir)
    folder = fd.assemble(committed, str(target_dir), str(tmp_path / "assembled"))
    # torch's own kernels, as the draft below runs: the timed layout choice would make the
    # comparison depend on which kernel won on this machine (the kernels differ in the last bits)
    adapter = load_model(folder, linear_kernel="default")
    assert isinstance(adapter, FeatureDraftAdapter) and adapter.head_ids is not None
    assert len(adapter.head_ids) == RECIPE["head_tokens"]
    # the assembled draft is the trained one: same weights as the committed fp16 ones
    draft = FeatureDraft.for_target(model)
    draft.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    ids = torch.tensor([[3, 9, 14, 20]])
    states = torch.randn(1, 4, model.config.hidden_size)
    with torch.inference_mode():
        assert torch.equal(adapter.model(ids, states), draft(ids, states))


def test_trained_draft_is_lossless_and_accepted(tiny_target, tiny_labels, trained, tmp_path):
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.adapters import wrap_model
    from specdec.models.loading import load_model
    from specdec.protocol import DecodingMode

    model, tok = tiny_target
    _stats, committed = trained
    target_dir = tmp_path / "target"
    model.save_pretrained(target_dir)
    tok.save_pretrained(target_dir)
    draft = load_model(fd.assemble(committed, str(target_dir), str(tmp_path / "assembled")))
    target = wrap_model(model, tok, use_chat_template=False)
    draft.use_chat_template = False  # the labels' prompts were raw text
    accepted = drafted = 0
    with LocalSpeculativeDecoder(draft, target, gamma=4, max_new_tokens=12) as runner:
        for seq, p in list(zip(tiny_labels.sequences, tiny_labels.prompt_lens))[:12]:  # mostly training text
            prompt = tok.decode(seq[:p].tolist())
            inputs = target.encode(prompt)
            with torch.inference_mode():
                out = model.generate(**inputs.generate_kwargs(), max_new_tokens=12, do_sample=False)
            ref = out[0, len(inputs.input_ids):].tolist()
            for mode in (DecodingMode.SPECULATIVE, DecodingMode.SPECULATIVE_EARLY_EXIT):
                result = runner.generate(prompt, None, mode)
                assert result.tokens == ref
                accepted += result.stats.accepted_tokens
                drafted += result.stats.drafted_tokens
    assert accepted > 0, (accepted, drafted)


def test_fine_tuning_warm_starts_the_committed_draft_and_keeps_its_record(tiny_target, tiny_labels, trained,
                                                                           tmp_path):
    import shutil

    model, tok = tiny_target
    stats, committed = trained
    folder = str(tmp_path / "committed")
    shutil.copytree(committed, folder)
    recipe = dict(fd.FINETUNE_RECIPE, epochs=3.0, lr=2e-3, batch=8, held_out=8, autocast=True)
    tuned = fd.finetune_and_save(model, tok, tiny_labels, folder, recipe, log=lambda _m: None)
    # it starts where the first stage ended (same split; bfloat16 autocast scores it to within rounding)
    assert abs(tuned["held_out_before"]["kl"] - stats["held_out_after"]["kl"]) < 0.05 * stats["held_out_after"]["kl"]
    # and the steps train what is scored: an autocast weight cache held for the whole loop would run
    # every step on the first step's weights (the fit would not move, the saved weights would drift)
    assert tuned["train_sample_after"]["kl"] < 0.98 * tuned["train_sample_before"]["kl"], tuned
    record = json.load(open(os.path.join(folder, fd.DRAFT_CONFIG)))
    assert record["recipe"] == RECIPE and record["training"] == stats
    assert record["finetune"] == recipe and record["training_finetune"]["steps_done"] == tuned["steps"] > 0
    first = json.load(open(os.path.join(committed, fd.DRAFT_CONFIG)))
    assert record["weights_sha256"] != first["weights_sha256"]
    draft, head_ids, loaded = fd.load_committed(folder, model)
    assert loaded == record and len(head_ids) == RECIPE["head_tokens"] and not draft.training
    # the committed weights are the ones scored: reloaded, they score what training reported
    seqs = [x.long() for x in tiny_labels.sequences]
    states = fd.target_states(tiny_labels, model.config.hidden_size)
    sample = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(recipe["seed"])).tolist()
    sample = sample[recipe["held_out"]:][:recipe["held_out"]]
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        again = fd.evaluate(draft, seqs, states, list(tiny_labels.prompt_lens), sample, model.lm_head.weight[head_ids])
    assert abs(again["kl"] - tuned["train_sample_after"]["kl"]) < 1e-3 * max(1.0, again["kl"]), (again, tuned)
    # the first stage's weights stay next to the fine-tuned ones, and a second fine-tuning starts from
    # them, not from itself (same starting point as the first fine-tuning)
    assert record["stage1_weights_sha256"] == first["weights_sha256"]
    again = fd.finetune_and_save(model, tok, tiny_labels, folder, dict(recipe, epochs=1.0), log=lambda _m: None)
    assert again["held_out_before"] == tuned["held_out_before"], (again, tuned)
    assert json.load(open(os.path.join(folder, fd.DRAFT_CONFIG)))["stage1_weights_sha256"] == first["weights_sha256"]
    stage1 = os.path.join(folder, fd.STAGE1_WEIGHTS_FILE)
    shutil.copy(os.path.join(folder, "feature_draft.safetensors"), stage1)  # not the first stage any more
    with pytest.raises(ValueError, match="not the first stage"):
        fd.finetune_and_save(model, tok, tiny_labels, folder, recipe, log=lambda _m: None)
    os.remove(stage1)
    with pytest.raises(ValueError, match="train the first stage again"):
        fd.finetune_and_save(model, tok, tiny_labels, folder, recipe, log=lambda _m: None)


def test_training_refuses_a_split_that_leaves_nothing_to_train_on(tiny_target, tiny_labels, tmp_path):
    model, tok = tiny_target
    with pytest.raises(ValueError, match="none to train on"):
        fd.train_and_save(model, tok, tiny_labels, str(tmp_path), dict(RECIPE, held_out=len(tiny_labels.sequences)),
                          log=lambda _m: None)


def test_self_written_source_asks_the_model_and_keeps_held_out_prompts_out(tiny_target, monkeypatch):
    from training.text import corpus
    from training.text.data import SelfWrittenSource, make_source

    source = make_source("self:chat=3,prose=2,seed=0")
    assert isinstance(source, SelfWrittenSource) and (source.chat, source.prose, len(source)) == (3, 2, 5)
    replies = iter(['A curious person might ask: "Why do boats float on water?"', "no question here",
                    "Why do boats float on water?", "How do birds find their way home?",
                    "What is a star made of?", "What is a star made of?"])
    monkeypatch.setattr(corpus, "self_written_questions",
                        lambda model, tok, n, exclude=(), seed=0, batch=32: [
                            q for q in dict.fromkeys(corpus.question_in(r) for r in replies) if q][:n])
    model, tok = tiny_target
    prompts = source.prompts(model, tok)
    chat = [p.text for p in prompts if p.kind == "chat"]
    assert chat == ["Why do boats float on water?", "How do birds find their way home?", "What is a star made of?"]
    assert sum(p.kind == "prose" for p in prompts) == (2 if corpus.prose_train_passages(2) else 0)


def test_question_writer_samples_the_nucleus_of_the_top_k():
    """The question writer's sampler (temperature, top-p within the top k) draws each token with its
    renormalised probability and never one outside the nucleus."""
    from training.text.corpus import _sampling_processor

    torch.manual_seed(0)
    logits = torch.tensor([4.0, 3.5, 3.0, 1.0, 0.5, 0.0, -1.0, 2.0])
    temperature, top_p, top_k = 0.8, 0.9, 6
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)[:top_k]
    p = probs[order] / probs[order].sum()
    keep = order[(p.cumsum(0) - p) < top_p]
    want = torch.zeros_like(probs)
    want[keep] = probs[keep] / probs[keep].sum()
    assert 0 < len(keep) < top_k  # the test exercises both cuts
    rows = 40000
    out = _sampling_processor(temperature, top_p, top_k)(None, logits.repeat(rows, 1))
    assert bool(((out == 0).sum(-1) == 1).all()) and bool(torch.isinf(out).sum(-1).eq(len(logits) - 1).all())
    freq = torch.bincount(out.argmax(-1), minlength=len(logits)).float() / rows
    assert float(freq[want == 0].sum()) == 0.0
    assert torch.allclose(freq, want, atol=4 * (0.25 / rows) ** 0.5), (freq, want)


@pytest.mark.parametrize("block_start", [0, 3])  # offset from the last prompt token
def test_unrolled_guesses_are_what_decoding_drafts(block_start):
    """Step ``j`` of the unrolled training pass is the draft's guess ``j`` tokens into a block as the
    decoding adapter makes it: target-fed cache up to the block's start, its own guesses after."""
    from specdec.models.tiny import build_tiny

    model, tok = build_tiny("llama", layers=2, hidden=64, seed=3)
    model = model.double()  # float64: the two ways may differ only in rounding far below the tolerance
    torch.manual_seed(0)
    draft = FeatureDraft.for_target(model, 2).eval()
    with torch.no_grad():
        for p in draft.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))  # away from the identity start, so contexts matter
    adapter = FeatureDraftAdapter(draft, tok, lm_head=model.lm_head)
    prompt_len, n, steps = 5, 14, 4
    ids = torch.randint(3, 60, (n,))
    states = torch.randn(n, model.config.hidden_size).double()  # float32 values: _batch's rounding is exact
    seqs, prompt_lens = [ids], [prompt_len]
    _ids, s_in, _out, _mask = fd._batch(seqs, [states], prompt_lens, [0])
    with torch.no_grad():
        unrolled = fd.unrolled_guesses(draft, ids[None], s_in, prompt_lens, [0], steps)
    start = prompt_len - 1 + block_start
    state = adapter.prefill(type("Inputs", (), {"input_ids": ids[:prompt_len].tolist()})())
    adapter.receive_states(state, 0, states[prompt_len - 1:start])
    hidden = adapter.forward_hidden(state, ids[prompt_len - 1:start + steps].tolist())
    assert state.exact[block_start] and not any(state.exact[block_start + 1:])
    for j in range(steps):
        assert torch.allclose(hidden[block_start + j], unrolled[j][0, start + j], atol=1e-9), j
    with torch.no_grad():
        # step 0 is the plain forward over the target's states
        assert torch.allclose(unrolled[0], draft(ids[None], s_in), atol=1e-9)
        # guesses everywhere, context included (the first recipe's second pass), are another input
        everywhere = draft(ids[None], fd._shift_guesses(unrolled[0], s_in, prompt_lens, [0]))
    assert not torch.allclose(everywhere[0, start + 2], unrolled[1][0, start + 2], atol=1e-2)


def test_accepted_per_block_counts_each_blocks_leading_run_of_agreements():
    """``evaluate(unroll=4)``'s accepted_per_block against a plain loop over every block start."""
    from specdec.models.tiny import build_tiny

    model, _tok = build_tiny("llama", layers=2, hidden=64, seed=3)
    torch.manual_seed(1)
    draft = FeatureDraft.for_target(model, 2).eval()
    head_w = model.lm_head.weight[:3]  # three tokens: agreement near a third, so runs of every length occur
    seqs = [torch.randint(3, 60, (n,)) for n in (12, 17, 9)]
    prompt_lens = [4, 6, 3]
    states = [torch.randn(len(s), model.config.hidden_size) for s in seqs]
    got = fd.evaluate(draft, seqs, states, prompt_lens, [0, 1, 2], head_w, batch=2, unroll=4)
    runs, blocks, lengths = 0, 0, set()
    for r, (ids, p) in enumerate(zip(seqs, prompt_lens)):
        _ids, s_in, _out, _mask = fd._batch(seqs, states, prompt_lens, [r])
        with torch.no_grad():
            steps = fd.unrolled_guesses(draft, ids[None], s_in, prompt_lens, [r], 4)
        for t in range(p - 1, len(ids) - 4):  # every step of the block has a label (position <= n - 2)
            run = 0
            while run < 4 and int((steps[run][0, t + run] @ head_w.t()).argmax()) == int(
                    (states[r][t + run] @ head_w.t()).argmax()):
                run += 1
            runs, blocks = runs + run, blocks + 1
            lengths.add(run)
    assert len(lengths) >= 3, lengths  # the comparison is not between two zeros
    assert got["accepted_per_block"] == round(runs / blocks, 4), (got, runs, blocks)
    assert len(got["agreement_steps"]) == 4


def test_fine_tuning_on_decodings_view_raises_what_a_block_keeps(tiny_target, tiny_labels, trained, tmp_path):
    """The second stage with ``step_weights`` trains every step of a block as decoding feeds it and
    reports the agreement per step and the drafts a block keeps, before and after."""
    import shutil

    model, tok = tiny_target
    _stats, committed = trained
    folder = str(tmp_path / "committed")
    shutil.copytree(committed, folder)
    recipe = dict(fd.FINETUNE_RECIPE, epochs=4.0, lr=2e-3, batch=8, held_out=8, autocast=False,
                  step_weights=[1.0, 1.0, 0.5, 0.25])
    tuned = fd.finetune_and_save(model, tok, tiny_labels, folder, recipe, log=lambda _m: None)
    before, after = tuned["train_sample_before"], tuned["train_sample_after"]
    assert tuned["steps_done"] == tuned["steps"] > 0
    assert len(after["agreement_steps"]) == 4 and after["agreement_steps"][0] == after["agreement_exact_input"]
    assert after["accepted_per_block"] > before["accepted_per_block"] + 0.1, (before, after)
    assert after["agreement_steps"][3] > before["agreement_steps"][3], (before, after)


def test_prompt_states_are_the_targets_and_feed_the_prompt_positions(tiny_target, tiny_labels):
    """``add_prompt_states`` fills the prompt's positions with the target's own states (batched with
    right padding, as one sequence alone would give them) and ``_batch(prompt_states=True)`` feeds
    them one position later; without it the prompt is fed zeros."""
    model, _tok = tiny_target
    seqs = [s.long() for s in tiny_labels.sequences[:6]]
    prompt_lens = list(tiny_labels.prompt_lens[:6])
    states = fd.target_states(tiny_labels, model.config.hidden_size)[:6]
    fd.add_prompt_states(model, seqs, prompt_lens, states, batch=4)
    for seq, p, st in zip(seqs, prompt_lens, states):
        with torch.no_grad():
            alone = model.model(seq[None, :p - 1]).last_hidden_state[0]
        assert torch.allclose(st[:p - 1].float(), alone, atol=2e-3)
    _ids, fed, _out, _mask = fd._batch(seqs, states, prompt_lens, [0, 1], prompt_states=True)
    _ids, zeros, _out, _mask = fd._batch(seqs, states, prompt_lens, [0, 1])
    p = prompt_lens[0]
    assert torch.equal(fed[0, 1:p], states[0][:p - 1].float()) and not zeros[0, :p].any()
    assert torch.equal(fed[0, p:], zeros[0, p:]) and not fed[0, 0].any()


def test_top1_weight_adds_the_cross_entropy_on_the_targets_top_token():
    torch.manual_seed(0)
    draft_states, target_states = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    head_w = torch.randn(11, 8)
    kl, reg, agree = fd._loss(draft_states, target_states, mask, head_w)
    mixed, reg2, agree2 = fd._loss(draft_states, target_states, mask, head_w, top1_weight=0.5)
    logp = torch.log_softmax(draft_states[mask] @ head_w.t(), -1)
    top = (target_states[mask] @ head_w.t()).argmax(-1)
    ce = -logp[torch.arange(len(top)), top].mean()
    assert torch.allclose(mixed, kl + 0.5 * ce) and torch.equal(reg, reg2) and torch.equal(agree, agree2)


def test_miss_weight_weighs_the_positions_where_decoding_starts_a_block_after_a_rejection():
    torch.manual_seed(0)
    head_w = torch.randn(7, 4)
    target_states = torch.randn(1, 6, 4)
    want = (target_states @ head_w.t()).argmax(-1)[0]
    draft_states = target_states.clone()
    wrong = 3  # the draft misses the token after position 3: a block starts at 4 after a rejection
    for _ in range(100):  # a state whose top token is another one
        guess = torch.randn(4)
        if int((guess @ head_w.t()).argmax()) != int(want[wrong]):
            break
    draft_states[0, wrong] = guess
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 1:5] = True  # the prompt is two tokens long: positions 1 ... 4 are trained
    weights = fd._after_miss_weights(draft_states, target_states, mask, head_w, [2], [0], 2.0)
    # position 1 is the answer's first (round 0); 4 follows the miss; 2 and 3 follow hits
    assert weights.tolist() == [3.0, 1.0, 1.0, 3.0]
    assert fd._after_miss_weights(draft_states, target_states, mask, head_w, [2], [0], 0.0) is None
    kl, _reg, _agree = fd._loss(draft_states, target_states, mask, head_w, weights=weights)
    p_t = torch.softmax(target_states[mask] @ head_w.t(), -1)
    per = (p_t * (p_t.log() - torch.log_softmax(draft_states[mask] @ head_w.t(), -1))).sum(-1)
    assert torch.allclose(kl, (weights * per).sum() / weights.sum()) and not torch.allclose(kl, per.mean())
