"""The draft: built from target layers, distilled, committed small, reassembled exactly (tiny models)."""

import json
import os

import pytest
import torch

from training.text import distill_draft as dd


@pytest.fixture(scope="module")
def trained(tiny_target, tiny_labels, tmp_path_factory):
    model, tok = tiny_target
    init = dd.default_init_layers(model.config.num_hidden_layers, 2)
    assert init == [0, 3]
    draft = dd.build_draft(model, init)
    stats = dd.distill(draft, tiny_labels, epochs=6, max_tokens=512, lr=3e-3, n_random=64, held_out_every=5,
                       progress=False)
    committed = tmp_path_factory.mktemp("committed")
    files = dd.save_committed(draft, model, tok, str(committed), {"init_layers": init, "training": stats})
    return draft, stats, str(committed), files


def test_draft_shares_target_embeddings(tiny_target):
    model, _tok = tiny_target
    draft = dd.build_draft(model, [0, 1])
    assert draft.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert draft.lm_head.weight is model.lm_head.weight
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)


def test_distillation_improves_agreement(trained):
    _draft, stats, _committed, _files = trained
    before, after = stats["held_out_before"], stats["held_out_after"]
    assert after["kl"] < before["kl"]
    assert after["agreement"] > before["agreement"]


def test_committed_artefact_is_small_and_excludes_shared_weights(trained):
    _draft, _stats, committed, files = trained
    meta = json.load(open(os.path.join(committed, dd.DRAFT_CONFIG)))
    assert meta["shards"] == files and meta["config"]["num_hidden_layers"] == 2
    from safetensors.torch import load_file

    keys = set()
    for name in files:
        keys |= set(load_file(os.path.join(committed, name)))
    assert not keys & set(dd.SHARED_KEYS)
    assert all(k.startswith("model.layers.") or k == "model.norm.weight" for k in keys)


def test_assembly_reproduces_the_trained_draft_exactly(tiny_target, trained, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_target
    draft, _stats, committed, _files = trained
    rebuilt = dd.assemble_model(committed, model)
    want, got = draft.state_dict(), rebuilt.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    assert torch.equal(draft(ids).logits, rebuilt(ids).logits)

    # through an HF folder on disk (what --ensure builds), also equal, and idempotent
    target_dir = tmp_path / "target"
    model.save_pretrained(target_dir)
    tok.save_pretrained(target_dir)
    out = tmp_path / "draft"
    dd.assemble(committed, str(target_dir), str(out), log=lambda *_: None)
    stamp = os.path.getmtime(out / "model.safetensors")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(loaded(ids).logits, draft(ids).logits)
    messages = []
    dd.assemble(committed, str(target_dir), str(out), log=messages.append)
    assert "up to date" in messages[0] and os.path.getmtime(out / "model.safetensors") == stamp


def test_assembly_refuses_wrong_target_and_missing_files(trained, tmp_path):
    from specdec.models.tiny import build_tiny

    _draft, _stats, committed, files = trained
    other, _ = build_tiny("llama", layers=4, hidden=64, seed=9)
    with pytest.raises(dd.DraftError, match="another target"):
        dd.assemble_model(committed, other)
    with pytest.raises(dd.DraftError, match="no committed draft"):
        dd.read_committed(str(tmp_path / "missing"))
    wider, _ = build_tiny("llama", layers=4, hidden=96, seed=3)
    with pytest.raises(dd.DraftError, match="shape"):
        dd.assemble_model(committed, wider, check_fingerprint=False)


def test_frequent_tokens_are_the_targets_most_said(tiny_labels):
    head = dd.frequent_tokens(tiny_labels, 10)
    assert head.tolist() == sorted(head.tolist()) and len(head) == 10
    said = tiny_labels.topk_ids[tiny_labels.generated_rows(), 0]
    counts = torch.bincount(said, minlength=int(said.max()) + 1)
    assert int(counts[head].min()) >= int(counts[[t for t in range(len(counts)) if t not in set(head.tolist())]].max())


def test_reduced_head_draft_is_distilled_committed_and_served_with_its_head(tiny_target, tiny_labels, tmp_path):
    """Trained under the head it will propose with; the committed ids become the assembled
    folder's draft_head.safetensors, which load_model serves (proposals only from those ids)."""
    from specdec.models.loading import load_model

    model, tok = tiny_target
    head = dd.frequent_tokens(tiny_labels, 24)
    draft = dd.build_draft(model, [0, 3])
    stats = dd.distill(draft, tiny_labels, epochs=6, max_tokens=512, lr=3e-3, n_random=16, held_out_every=5,
                       head_ids=head, progress=False)
    assert stats["head_tokens"] == 24
    assert stats["held_out_after"]["agreement"] > stats["held_out_before"]["agreement"]
    committed = tmp_path / "committed"
    dd.save_committed(draft, model, tok, str(committed), {"training": stats}, head_ids=head)
    meta = dd.read_committed(str(committed))
    assert meta["head_size"] == 24 and os.path.isfile(committed / meta["head_tokens"])
    target_dir = tmp_path / "target"
    model.save_pretrained(target_dir)
    tok.save_pretrained(target_dir)
    out = tmp_path / "draft"
    dd.assemble(str(committed), str(target_dir), str(out), log=lambda *_: None)
    served = load_model(str(out))
    assert served.head_ids.tolist() == head.tolist()
    state = served.prefill(served.encode("the cat"))
    hidden = served.forward_hidden(state, [state.prompt_ids[-1]], keep=1)
    scores = served.head_logits(hidden)
    assert scores.shape[-1] == 24
    full = served.logits(hidden)[0]
    assert torch.allclose(scores[0], full[head], atol=1e-4)  # the head's rows are the target's own
