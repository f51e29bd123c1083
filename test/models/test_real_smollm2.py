"""The real pair (SmolLM2-135M-Instruct target + committed draft/exits), when .cache holds the target.

Skipped with a reason when the converted target is absent (``make models-ensure`` creates it).
"""

import importlib.util
import os
import sys

import pytest
import torch

from specdec.models import artefacts

ROOT = artefacts.REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("make_models", os.path.join(ROOT, "scripts", "make_models.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_models"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed():
    from training.text.distill_draft import DRAFT_CONFIG

    if not os.path.isfile(os.path.join(artefacts.committed_text_draft_dir(), DRAFT_CONFIG)):
        pytest.skip(f"no committed draft in {artefacts.committed_text_draft_dir()} (run scripts/make_models.py)")
    if not os.path.isfile(artefacts.committed_text_exits_path()):
        pytest.skip(f"no committed exit adapters at {artefacts.committed_text_exits_path()}")
    return artefacts.committed_text_draft_dir()


@pytest.fixture(scope="module")
def target(real_target_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(artefacts.text_target_dir(), dtype=torch.float32).eval()
    return model.requires_grad_(False), AutoTokenizer.from_pretrained(artefacts.text_target_dir())


def test_make_models_ensure_is_idempotent(real_target_dir, committed):
    script = _load_script()
    assert script.main(["--ensure"]) == 0  # builds .cache/models/<draft> if needed
    draft_weights = os.path.join(artefacts.text_draft_dir(), "model.safetensors")
    target_weights = os.path.join(artefacts.text_target_dir(), "model.safetensors")
    stamps = (os.path.getmtime(draft_weights), os.path.getmtime(target_weights))
    assert all(step.is_done() for step in script.STEPS if step.ensure)
    assert script.main(["--ensure"]) == 0
    assert (os.path.getmtime(draft_weights), os.path.getmtime(target_weights)) == stamps


def test_committed_exits_load_on_the_real_target(target, committed):
    from specdec.models.early_exit import EarlyExitHeads

    model, tok = target
    heads = EarlyExitHeads.load(model, artefacts.committed_text_exits_path())
    assert len(heads.exit_layers) == 1  # the one hint layer the verifier sends hints from
    assert (heads.exit_layers[0] + 1) / model.config.num_hidden_layers <= 0.75
    sweep = EarlyExitHeads.load(model, artefacts.committed_text_exits_sweep_path())
    assert len(sweep.exit_layers) > 1
    # the hint file is the hint exit the recipe trains on the sweep's head of the chosen layer
    script = _load_script()
    assert heads.exit_layers == [script.HINT_EXIT_LAYER] and heads.adapter_kind == "attention"
    assert script._hint_exit_done()
    ids = tok("The robot walked to the door and", return_tensors="pt")["input_ids"]
    seen = {}
    with torch.inference_mode(), heads.attach(lambda layer, states: seen.setdefault(layer, states), hidden=True):
        out = model(ids, use_cache=True)
    layer = heads.exit_layers[0]
    with torch.inference_mode():
        whole = heads.exit_logits(layer, seen[layer][0])
        assert whole.shape == out.logits.shape[1:]
        # the last rows again after a cache of the rest: what a verifier's round computes
        cache = model(ids[:, :-3], use_cache=True).past_key_values
        tail = heads.exit_logits(layer, seen[layer][0, -3:], EarlyExitHeads.past(cache, layer), rows=2)
    assert torch.allclose(tail, whole[-2:], atol=1e-3)


def test_assembled_draft_equals_committed_weights(target, committed):
    from transformers import AutoModelForCausalLM

    from training.text.distill_draft import assemble, assemble_model

    model, _tok = target
    assemble(committed, artefacts.text_target_dir(), artefacts.text_draft_dir(), log=lambda *_: None)
    on_disk = AutoModelForCausalLM.from_pretrained(artefacts.text_draft_dir(), dtype=torch.float32)
    rebuilt = assemble_model(committed, model, check_fingerprint=False)
    want, got = rebuilt.state_dict(), on_disk.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_real_pair_is_lossless_through_the_engine(target, committed):
    pytest.importorskip("specdec.engine.local")
    from transformers import AutoModelForCausalLM

    from specdec.engine.local import speculative_generate
    from specdec.protocol import DecodingMode

    model, tok = target
    draft = AutoModelForCausalLM.from_pretrained(artefacts.text_draft_dir(), dtype=torch.float32).eval()
    prompt = "Name two things a robot dog can do."
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    ref = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    result = speculative_generate((draft, tok), (model, tok), prompt, mode=DecodingMode.SPECULATIVE, gamma=4,
                                  max_new_tokens=12)
    assert result.tokens == ref
    assert result.stats.rounds >= 1
