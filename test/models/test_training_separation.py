"""Training stays out of the runtime: no runtime module imports ``training``, the installed package
set leaves it out, and models and held-out prompts are found through the pure-path
``specdec.models.artefacts`` (no torch, no training code)."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNTIME = ("specdec", "specdec_ros", "edge_spec_drafter", "cloud_verifier_bridge", "go2_vlm_control", "go2_sim",
           "bench")


def _imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_runtime_module_imports_training():
    offenders = []
    for package in RUNTIME:
        for folder, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    offenders += [f"{os.path.relpath(path, ROOT)}: {m}" for m in _imported_modules(path)
                                  if m == "training" or m.startswith("training.")]
    assert not offenders, offenders


def test_setup_installs_the_runtime_without_training():
    with mock.patch("setuptools.setup") as setup:
        cwd = os.getcwd()
        os.chdir(ROOT)  # setup.py globs its data files relative to the repository
        try:
            spec = importlib.util.spec_from_file_location("_setup_under_test", os.path.join(ROOT, "setup.py"))
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        finally:
            os.chdir(cwd)
    packages = setup.call_args.kwargs["packages"]
    assert "specdec.models" in packages and "go2_sim" in packages
    assert not [p for p in packages if p == "training" or p.startswith("training.")], packages


def test_artefacts_module_imports_no_torch_and_no_training():
    code = ("import sys; import specdec.models.artefacts as a; "
            "print(sorted(m for m in ('torch', 'training') if m in sys.modules)); print(a.go2_pair_paths().exits)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == os.path.join(ROOT, "models", "go2_vlm", "target", "early_exit.safetensors")


def test_artefact_roots_follow_the_environment(monkeypatch, tmp_path):
    from specdec.models import artefacts

    monkeypatch.setenv("SPECDEC_MODELS", str(tmp_path / "m"))
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "c"))
    assert artefacts.go2_pair_paths().draft == str(tmp_path / "m" / "go2_vlm" / "draft")
    assert artefacts.text_draft_dir() == str(tmp_path / "c" / "smollm2-135m-draft")
    assert artefacts.go2_pair_paths(str(tmp_path / "run")).train_report == str(tmp_path / "run" / "train_report.json")


def test_committed_eval_prompts_are_the_corpus_held_out_set_and_feed_the_bench():
    """The prompts file bench/ reads is exactly what the text evaluation draws from the corpora."""
    spec = importlib.util.spec_from_file_location("_make_models", os.path.join(ROOT, "scripts", "make_models.py"))
    make_models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = make_models  # its dataclasses look their module up there
    spec.loader.exec_module(make_models)
    assert make_models._prompts_done(), "models/smollm2_eval_prompts.json is stale: make models (step prompts)"

    from bench.workloads import text_workload
    from specdec.models import artefacts

    with open(artefacts.text_eval_prompts_path()) as handle:
        committed = json.load(handle)
    workload = text_workload(6, 8)
    assert not workload.missing()
    texts = [text for text, _image in workload.items]
    kinds = {p["text"]: p["kind"] for p in committed}
    assert [kinds[t] for t in texts] == ["chat", "prose"] * 3  # alternating, from the file


def test_the_text_workload_can_be_drafted_by_the_feature_draft():
    from bench.workloads import text_workload, with_feature_draft

    workload = text_workload(2, 8)
    featured = with_feature_draft(workload)
    assert featured.draft == workload.feature_draft != workload.draft
    assert (featured.items, featured.target, featured.exits) == (workload.items, workload.target, workload.exits)
    assert "distilled" in workload.description and "target's states" in featured.description


def test_text_workload_reports_a_missing_prompts_file(monkeypatch, tmp_path):
    from bench.workloads import text_workload

    monkeypatch.setenv("SPECDEC_MODELS", str(tmp_path))
    workload = text_workload(4, 8)
    assert workload.items == []
    assert str(tmp_path / "smollm2_eval_prompts.json") in workload.missing()
