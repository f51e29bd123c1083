"""Model adapters and loading: prompts, cache rollback, clear errors for missing/foreign files."""

import json
import os

import pytest

from specdec.engine.local import speculative_generate
from specdec.engine.stats import MSG_FIELDS, DecisionStats
from specdec.engine.verifier import Verifier
from specdec.models.adapters import Qwen2VLAdapter, TextAdapter, VisionLanguageAdapter
from specdec.models.loading import ModelLoadError, freeze_loaded_objects, load_model
from specdec.models.early_exit import EarlyExitError, EarlyExitHeads
from specdec.models.tiny import build_tiny, perturbed_copy


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("arch,cls", [("llama", TextAdapter), ("qwen2_vl", Qwen2VLAdapter),
                                      ("idefics3", VisionLanguageAdapter), ("llava", VisionLanguageAdapter)])
def test_rollback_keeps_positions(arch, cls, tiny_pair, reference, image, prompt):
    """Feed junk, roll it back (crop), continue: still equal to generate(); M-RoPE included."""
    _, target = tiny_pair(arch, noise=0.03)
    assert isinstance(target, cls)
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=8)
    state = target.prefill(target.encode(prompt, img))
    out = []
    for i in range(8):
        pending = target.sync(state, out)
        if i % 2:
            target.forward(state, pending + [11, 12, 13])
            pending = target.sync(state, out)
        assert len(pending) == 1
        out.append(int(target.forward(state, pending, keep=1)[-1].argmax()))
    assert out == ref


def test_draft_and_target_text_tokens_agree(tiny_pair, image, prompt):
    draft, target = tiny_pair("qwen2_vl", noise=0.03, draft_image_size=28)
    d = draft.encode(prompt, image)
    t = target.encode(prompt, image)
    strip = lambda ids: [i for i in ids if i != target.tokenizer.convert_tokens_to_ids("<|image_pad|>")]  # noqa
    assert strip(d.input_ids) == strip(t.input_ids) and len(d.input_ids) != len(t.input_ids)


def test_text_adapter_refuses_image(tiny_pair, image, prompt):
    _, target = tiny_pair("llama", noise=0.03)
    with pytest.raises(ValueError, match="text-only"):
        target.encode(prompt, image)


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(empty)
    model, _ = build_tiny("llama", layers=1)
    with pytest.raises(ModelLoadError, match="processor"):
        load_model(model.config)


def test_load_model_roundtrip(tmp_path, reference, prompt):
    model, tok = build_tiny("llama", layers=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, TextAdapter)
    original = load_model(model.config, processor=tok)  # random init from a config: another model
    assert loaded.fingerprint == original.fingerprint
    ref = reference(loaded, prompt, None, max_new_tokens=6)
    result = speculative_generate(loaded, loaded, prompt, max_new_tokens=6)
    assert result.tokens == ref


def test_exit_head_files_refused(tmp_path, tiny_pair):
    _, target = tiny_pair("llama", noise=0.03)
    with pytest.raises(EarlyExitError, match="not found"):
        Verifier(target, str(tmp_path / "nothing.safetensors"))
    other = perturbed_copy(target.model, noise=0.5, seed=9)  # same shapes, other weights
    path = EarlyExitHeads(other, [1]).save(str(tmp_path / "other.safetensors"))
    with pytest.raises(EarlyExitError, match="another base model"):
        Verifier(target, path)
    small, _ = build_tiny("llama", layers=4, hidden=32)
    path = EarlyExitHeads(small, [1]).save(str(tmp_path / "small.safetensors"))
    with pytest.raises(EarlyExitError, match="hidden_size"):
        Verifier(target, path)
    good = EarlyExitHeads(target.model, [1, 2]).save(str(tmp_path / "good.safetensors"))
    verifier = Verifier(target, good, exit_layer=2)
    assert verifier.exit_layer == 2
    with pytest.raises(ValueError, match="exit layer"):
        Verifier(target, good, exit_layer=0)


class _Cycle:
    def __init__(self):
        self.me = self


def test_freeze_loaded_objects():
    """The loaded objects leave the collector's view; garbage made before goes first, and garbage
    made after is still collected."""
    import gc
    import weakref

    loaded = [{"weights": [1.0]}]
    before = _Cycle()
    dropped = weakref.ref(before)
    del before  # a cycle: only the collector frees it
    try:
        frozen = freeze_loaded_objects()
        assert dropped() is None  # collected, not frozen
        assert frozen == gc.get_freeze_count() > 0
        assert not any(obj is loaded for obj in gc.get_objects())  # out of the collector's view
        after = _Cycle()
        later = weakref.ref(after)
        del after
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


def test_stats_fields_match_ros_message():
    path = os.path.join(ROOT, "msg", "msg", "DecisionStats.msg")
    names = []
    with open(path) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line.split()[1])
    assert tuple(names) == MSG_FIELDS
    fields = DecisionStats().to_msg_fields()
    assert list(fields) == names
