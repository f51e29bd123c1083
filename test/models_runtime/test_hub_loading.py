"""Models by hub id from the local HF cache (offline), and one clear line when one is missing."""

import os

import pytest
import torch

from conftest import DRAFT_ID, PROMPT, TARGET_ID, TEXT_TARGET_ID, save_to_hub_cache
from specdec.engine.local import speculative_generate
from specdec.models.loading import ModelLoadError, hub_cache_dir, load_model, resolve_model_path


@pytest.mark.parametrize("repo_id", [TARGET_ID, TEXT_TARGET_ID])
def test_hub_id_loads_the_cached_snapshot_offline(offline_hub, repo_id, frame, greedy_reference):
    snapshot = resolve_model_path(repo_id)
    assert snapshot == os.path.join(offline_hub, "hub", "models--" + repo_id.replace("/", "--"), "snapshots", "0" * 40)
    by_id = load_model(repo_id)
    by_folder = load_model(snapshot)
    assert by_id.name == repo_id
    assert by_id.fingerprint == by_folder.fingerprint
    image = frame if by_id.is_vlm else None
    assert greedy_reference(by_id, PROMPT, image) == greedy_reference(by_folder, PROMPT, image)


def test_speculative_pair_by_hub_ids_is_lossless(offline_hub, frame, greedy_reference):
    draft, target = load_model(DRAFT_ID), load_model(TARGET_ID)
    result = speculative_generate(draft, target, PROMPT, frame, max_new_tokens=12)
    assert result.tokens == greedy_reference(target, PROMPT, frame)


def test_hf_hub_cache_overrides_hf_home(offline_hub, tmp_path, monkeypatch):
    from specdec.models.tiny import build_tiny

    model, tok = build_tiny("llama", layers=1, seed=5)
    save_to_hub_cache(model, tok, str(tmp_path), "other-org/only-here")
    with pytest.raises(ModelLoadError):
        resolve_model_path("other-org/only-here")  # not under HF_HOME/hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub_cache_dir() == str(tmp_path)
    assert load_model("other-org/only-here").num_layers == 1


def test_missing_hub_id_names_folder_and_cache_in_one_line(offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model("Qwen/Qwen2-VL-2B-Instruct")
    message = str(info.value)
    assert "\n" not in message
    assert "'Qwen/Qwen2-VL-2B-Instruct'" in message
    assert os.path.join(str(tmp_path), "Qwen", "Qwen2-VL-2B-Instruct") in message  # the folder tried
    assert os.path.join(offline_hub, "hub", "models--Qwen--Qwen2-VL-2B-Instruct") in message  # the cache entry
    assert "cache has no" in message and "hf download Qwen/Qwen2-VL-2B-Instruct" in message


def test_broken_cache_entries_are_named(offline_hub, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "models--org--dangling"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("1" * 40)  # points at a snapshot that was never downloaded
    with pytest.raises(ModelLoadError, match="incomplete"):
        load_model("org/dangling")
    snapshot = cache / "models--org--noweights" / "snapshots" / ("2" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--org--noweights" / "refs").mkdir()
    (cache / "models--org--noweights" / "refs" / "main").write_text("2" * 40)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match=f"{snapshot}: no weights"):
        load_model("org/noweights")


def test_a_local_folder_wins_over_the_cache(offline_hub, tmp_path, monkeypatch):
    from specdec.models.tiny import build_tiny

    model, tok = build_tiny("llama", layers=2, seed=9)
    folder = tmp_path / TEXT_TARGET_ID  # a relative path that is also a valid hub id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(TEXT_TARGET_ID) == TEXT_TARGET_ID
    assert load_model(TEXT_TARGET_ID).num_layers == 2  # the cached one has 4


def test_paths_that_are_not_hub_ids_say_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=f"model folder not found: {tmp_path}/a/b/c"):
        load_model(tmp_path / "a" / "b" / "c")


def test_build_verifier_takes_hub_id_device_and_dtype(offline_hub):
    from cloud_verifier_bridge.target import build_verifier

    verifier = build_verifier(TARGET_ID, dtype="bf16", device="cpu")
    assert verifier.target.dtype == torch.bfloat16 and verifier.target.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_verifier(TARGET_ID, dtype="float8")
