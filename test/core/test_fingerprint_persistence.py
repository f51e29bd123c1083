"""A model keeps its fingerprint through save/load (else its own exit adapters would be refused)."""

import torch

from specdec.models.loading import load_model
from specdec.models.early_exit import EarlyExitError, EarlyExitHeads
from specdec.models.fingerprint import model_fingerprint
from specdec.models.tiny import tiny_pair


def test_fingerprint_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    draft, target = tiny_pair("qwen2_vl")
    target.model.save_pretrained(tmp_path / "t")
    target.processor.save_pretrained(tmp_path / "t")
    EarlyExitHeads(target.model, [1]).save(str(tmp_path / "t" / "early_exit.safetensors"))
    loaded = load_model(str(tmp_path / "t"), dtype=torch.bfloat16)
    assert model_fingerprint(loaded.model) == model_fingerprint(target.model)
    EarlyExitHeads.load(loaded.model, str(tmp_path / "t" / "early_exit.safetensors"))
    # ... while another model of the same shape is still refused.
    try:
        EarlyExitHeads.load(draft.model, str(tmp_path / "t" / "early_exit.safetensors"))
    except EarlyExitError as exc:
        assert "another base model" in str(exc)
    else:
        raise AssertionError("adapters of another model were accepted")
