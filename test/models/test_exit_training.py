"""Early-exit adapter training and adapter files (tiny random models)."""

import json
import os

import pytest
import torch

from specdec.models.early_exit import EarlyExitError, EarlyExitHeads
from training.train_exits import evaluate_exits, train_exit_heads


def test_labels_match_greedy_generate(tiny_target, tiny_labels):
    model, _tok = tiny_target
    seq = tiny_labels.sequences[5]
    rows = torch.nonzero(tiny_labels.seq == 5).flatten()
    # greedy: every labelled generated position's top-1 is the next token of the sequence
    for row in rows.tolist():
        pos = int(tiny_labels.pos[row])
        if pos + 1 < len(seq):
            assert int(tiny_labels.topk_ids[row, 0]) == int(seq[pos + 1]) or pos + 1 < len(seq) - 12
    prompt_len = len(seq) - 12
    ref = model.generate(seq[:prompt_len][None], max_new_tokens=12, do_sample=False)[0]
    assert torch.equal(ref, seq)


@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_training_reduces_kl_and_raises_agreement(tiny_target, tiny_labels, adapter):
    model, _tok = tiny_target
    train, held = tiny_labels.split_by_sequence(5)
    heads, report = train_exit_heads(model, train, [0, 1, 2], adapter=adapter, rank=32, epochs=20, batch=256,
                                     lr=3e-3 if adapter == "linear" else 3e-4, n_random=64, held_out=held,
                                     progress=False)
    for layer in ("0", "1", "2"):
        row = report["per_layer"][layer]
        assert row["kl"] < row["lens_kl"], (layer, row)
    # agreement with the final layer rises on the training text (the tiny data set is small, so
    # held-out agreement is noisy; KL above is held out)
    lens = evaluate_exits(heads, train, lens=True)
    after = evaluate_exits(heads, train)
    gain = sum(after[k]["agreement"] - lens[k]["agreement"] for k in (0, 1, 2)) / 3
    assert gain > 0.05, (lens, after)
    # the report's numbers are the held-out evaluation of the returned heads
    again = evaluate_exits(heads, held)
    assert abs(again[2]["agreement"] - report["per_layer"]["2"]["agreement"]) < 1e-3


def test_least_squares_init_beats_the_logit_lens(tiny_target, tiny_labels):
    model, _tok = tiny_target
    assert tiny_labels.final is not None
    heads, report = train_exit_heads(model, tiny_labels, [1, 2], adapter="mlp", rank=16, epochs=0, batch=256,
                                     lr=0.0, held_out=tiny_labels, progress=False)
    for layer in ("1", "2"):
        row = report["per_layer"][layer]
        assert row["ls_agreement"] > row["lens_agreement"], row


def test_saved_file_reloads_and_bad_files_are_refused(tiny_target, tiny_labels, tmp_path):
    from specdec.models.tiny import build_tiny

    model, _tok = tiny_target
    heads, report = train_exit_heads(model, tiny_labels, [1, 2], adapter="mlp", rank=16, epochs=2, batch=256,
                                     n_random=32, progress=False)
    path = heads.save(str(tmp_path), extra_metadata={"training": json.dumps(report)})
    assert os.path.basename(path) == "early_exit.safetensors"
    loaded = EarlyExitHeads.load(model, path)
    assert loaded.exit_layers == [1, 2] and loaded.adapter_kind == "mlp" and loaded.adapter_rank == 16
    h = tiny_labels.hidden[2][:7].float()
    assert torch.allclose(loaded.exit_logits(2, h), heads.exit_logits(2, h))

    # another base model of the same shape: refused by fingerprint
    other, _ = build_tiny("llama", layers=4, hidden=64, seed=4)
    with pytest.raises(EarlyExitError, match="another base model"):
        EarlyExitHeads.load(other, path)
    # wrong shape (different hidden size)
    wider, _ = build_tiny("llama", layers=4, hidden=96, seed=3)
    with pytest.raises(EarlyExitError):
        EarlyExitHeads.load(wider, path, check_fingerprint=False)
    # missing file / not an adapter file
    with pytest.raises(EarlyExitError, match="not found"):
        EarlyExitHeads.load(model, str(tmp_path / "nope.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(EarlyExitError):
        EarlyExitHeads.load(model, str(junk))


def test_tensor_shape_mismatch_is_refused(tiny_target, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model, _tok = tiny_target
    heads = EarlyExitHeads(model, [1], adapter="mlp", rank=8)
    path = heads.save(str(tmp_path / "a.safetensors"))
    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(path)
    tensors["1.up.weight"] = torch.zeros(64, 4)  # rank 4 instead of 8
    save_file(tensors, path, metadata=meta)
    with pytest.raises(EarlyExitError, match="shape"):
        EarlyExitHeads.load(model, path)


def test_linear_files_without_adapter_metadata_still_load(tiny_target, tmp_path):
    """Files written before adapter kinds existed (no 'adapter' key) are linear adapters."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, _tok = tiny_target
    heads = EarlyExitHeads(model, [0, 2])
    path = heads.save(str(tmp_path / "old.safetensors"))
    with safe_open(path, framework="pt") as handle:
        meta = dict(handle.metadata())
    meta.pop("adapter")
    meta.pop("adapter_rank")
    save_file(load_file(path), path, metadata=meta)
    assert EarlyExitHeads.load(model, path).adapter_kind == "linear"


def test_train_exits_cli(tiny_target, tiny_labels, tmp_path):
    """The command line: labels file as data source, report written, adapter file loadable."""
    from training import train_exits
    from training.text import exits

    model, tok = tiny_target
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    labels_file = tmp_path / "labels.pt"
    torch.save(tiny_labels.to_dict(), labels_file)
    out = tmp_path / "exits.safetensors"
    report = tmp_path / "report.json"
    rc = exits.main(["--target", str(folder), "--layers", "1", "2", "--data", f"labels:{labels_file}",
                    "--out", str(out), "--epochs", "2", "--batch", "256", "--rank", "16",
                    "--report", str(report), "--device", "cpu", "--threads", "1"])
    assert rc == 0 and out.is_file()
    data = json.loads(report.read_text())
    assert set(data["per_layer"]) == {"1", "2"} and data["held_out_positions"] > 0
    reloaded, _ = train_exits.load_target(str(folder), torch.device("cpu"))
    EarlyExitHeads.load(reloaded, str(out))


def test_selective_exit_reports_where_it_fires_and_how_often_it_agrees_there(tiny_target, tiny_labels):
    model, _tok = tiny_target
    heads = EarlyExitHeads(model, [1, 2])
    taus = (0.0, 0.05, 0.2, 1.01)
    out = evaluate_exits(heads, tiny_labels, thresholds=taus, batch=64)  # batches: the curve spans them
    layout = heads._layout
    for layer in (1, 2):
        fires = out[layer]["fires"]
        assert fires[0.0]["share"] == 1.0 and fires[0.0]["agreement"] == pytest.approx(out[layer]["agreement"])
        assert fires[1.01] == {"share": 0.0, "agreement": 0.0}  # never fires
        with torch.no_grad():  # by hand, all positions at once
            h = tiny_labels.hidden[layer].to(layout.lm_head.weight.dtype)
            logits = layout.lm_head(layout.final_norm(heads.adapters[str(layer)](h)))
        top = torch.softmax(logits.float(), -1).amax(-1)
        right = logits.argmax(-1) == tiny_labels.topk_ids[:, 0]
        for tau in (0.05, 0.2):
            mask = top >= tau
            assert fires[tau]["share"] == pytest.approx(float(mask.float().mean()))
            if mask.any():
                assert fires[tau]["agreement"] == pytest.approx(float(right[mask].float().mean()))
        assert fires[0.05]["share"] >= fires[0.2]["share"]


def test_attention_exit_trains_past_its_position_wise_start(tiny_target, tiny_labels):
    """An ``attention`` exit starts as the position-wise head it is given (the same hits) and training
    its layer over whole sequences raises agreement on them; :func:`exit_hits` scores both kinds."""
    from training.train_exits import SequenceStates, exit_hits, train_attention_exit

    model, _tok = tiny_target
    init, _ = train_exit_heads(model, tiny_labels, [1], adapter="mlp", rank=16, epochs=2, batch=256, lr=3e-4,
                               n_random=64, progress=False)
    states = SequenceStates(tiny_labels, model, 1)
    untrained = train_attention_exit(model, states, list(range(len(states))), init, epochs=0, log=lambda *_: None)
    rows, start, _ = exit_hits(untrained, tiny_labels, model)
    rows_pw, position_wise, _ = exit_hits(init, tiny_labels, model)
    assert torch.equal(start, position_wise[torch.argsort(rows_pw)][rows])
    trained = train_attention_exit(model, states, list(range(len(states))), init, epochs=20, lr=1e-3, batch=8,
                                   n_random=64, log=lambda *_: None)
    _, after, _ = exit_hits(trained, tiny_labels, model)
    assert after.float().mean() > start.float().mean() + 0.05, (after.float().mean(), start.float().mean())
