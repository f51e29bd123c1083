"""Model presets (config/presets/*.yaml): ROS parameter files whose every value the loaders
accept, and whose prompt template states the action grammar a pretrained VLM must follow."""

import glob
import os
import re

import pytest
import yaml

from go2_vlm_control.action_language import VERBS, parse_action
from specdec.models.images import WIRE_FORMATS, parse_image_size
from specdec.models.loading import QUANTIZATIONS, _is_hub_id, resolve_dtype
from specdec.models.prompting import TEMPLATE_FILE, apply_prompt_template, check_prompt_template, folder_prompt_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "config", "presets", "*.yaml")))
# Parameters the presets set that the nodes declare once the model-runtime options are wired
# (edge: quantization, image_format, image_size, jpeg_quality, prompt_template); every other key
# must already be in the node's defaults file.
MODEL_RUNTIME_PARAMETERS = {"edge_spec_drafter": set(), "cloud_verifier_bridge": set()}


def _params(path):
    with open(path) as handle:
        doc = yaml.safe_load(handle)
    return {node: section["ros__parameters"] for node, section in doc.items()}


def test_presets_exist():
    names = {os.path.basename(p) for p in PRESETS}
    assert {"qwen2vl_2b_7b.yaml", "smolvlm_256m_500m.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_values_are_accepted(path):
    params = _params(path)
    assert set(params) == {"edge_spec_drafter", "cloud_verifier_bridge"}
    for node, values in params.items():
        defaults = _params(os.path.join(ROOT, "config", f"{node}.yaml"))[node]
        unknown = set(values) - set(defaults) - MODEL_RUNTIME_PARAMETERS[node]
        assert not unknown, f"{node}: parameters the node does not declare: {sorted(unknown)}"
        resolve_dtype(values["dtype"])
        assert values["device"] in ("auto", "cpu", "cuda") or values["device"].startswith("cuda:")
    edge, cloud = params["edge_spec_drafter"], params["cloud_verifier_bridge"]
    assert _is_hub_id(edge["draft_model"]) and _is_hub_id(cloud["target_model"])
    assert edge["quantization"] in QUANTIZATIONS
    assert edge["image_format"] in WIRE_FORMATS and 1 <= edge["jpeg_quality"] <= 95
    parse_image_size(edge["image_size"])
    assert edge["gamma"] >= 1 and edge["max_new_tokens"] >= 4


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_prompt_states_the_action_grammar(path):
    template = _params(path)["edge_spec_drafter"]["prompt_template"]
    prompt = apply_prompt_template(template, "go to the red ball")
    assert "Task: go to the red ball" in prompt and "{instruction}" not in prompt
    for verb in VERBS:
        assert re.search(rf"\b{verb}\b", prompt), f"the prompt never names {verb!r}"
    examples = re.findall(r"`([^`]+)`", prompt)
    assert len(examples) >= 4
    for example in examples:
        parse_action(example)  # every example is itself a valid action


def test_prompt_template_rules():
    assert apply_prompt_template("", "go to {x} now") == "go to {x} now"
    assert apply_prompt_template("Task {instruction}; {not a field}", "a {b}") == "Task a {b}; {not a field}"
    for bad in ("no placeholder", "{instruction} twice {instruction}", "{Instruction}"):
        with pytest.raises(ValueError, match="exactly once"):
            check_prompt_template(bad)
    moved = "{instruction} last move {last_move}"
    assert apply_prompt_template(moved, "go to the red ball") == "go to the red ball last move ok"
    assert apply_prompt_template(moved, "go {last_move}", True) == "go {last_move} last move blocked"
    with pytest.raises(ValueError, match="at most once"):
        check_prompt_template("{instruction} {last_move} {last_move}")
    turned = "{instruction} last move {last_move} turned {turned}"
    assert apply_prompt_template(turned, "go", True, 359.0) == "go last move blocked turned little"
    assert apply_prompt_template(turned, "go", False, 360.0) == "go last move ok turned around"
    with pytest.raises(ValueError, match="at most once"):
        check_prompt_template("{instruction} {turned} {turned}")


def test_turning_in_place_adds_up_until_the_robot_walks():
    from specdec.models.prompting import turned_after

    assert turned_after(0.0, "left", 60.0) == 60.0
    assert turned_after(60.0, "right", -30.0) == 90.0  # a magnitude, whatever its sign
    for verb in ("forward", "backward", "strafe_left", "strafe_right"):
        assert turned_after(300.0, verb, 0.3) == 0.0
    for verb in ("stop", "done", ""):
        assert turned_after(300.0, verb, 0.0) == 300.0


def test_a_model_folder_carries_its_prompt_template(tmp_path):
    assert folder_prompt_template(str(tmp_path)) == ""  # none: the bare instruction
    assert folder_prompt_template("HuggingFaceTB/SmolVLM-256M-Instruct") == ""  # a hub id
    (tmp_path / TEMPLATE_FILE).write_text("{instruction} last move {last_move}")
    assert folder_prompt_template(str(tmp_path)) == "{instruction} last move {last_move}"
    (tmp_path / TEMPLATE_FILE).write_text("no placeholder")
    with pytest.raises(ValueError, match="exactly once"):
        folder_prompt_template(str(tmp_path))
