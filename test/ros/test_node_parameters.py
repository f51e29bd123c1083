"""One parameter convention for every node: the table in the node module matches its config/ YAML,
an integer is accepted where a float is declared (``-p cloud_timeout_s:=10``), and a wrong type
is refused in one line."""

import importlib
import os

import pytest
import rclpy
import yaml

from specdec_ros.node_runtime import ParameterError, Param, declare_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODES = {  # node name -> (module, class)
    "edge_spec_drafter": ("edge_spec_drafter.node", "EdgeSpecDrafter"),
    "cloud_verifier_bridge": ("cloud_verifier_bridge.node", "CloudVerifierBridge"),
    "go2_vlm_control": ("go2_vlm_control.controller_node", "ControllerNode"),
    "go2_sim": ("go2_sim.sim_node", "SimNode"),
}


@pytest.mark.parametrize("node", sorted(NODES))
def test_parameter_table_matches_the_config_file(node):
    table = {p.name: p for p in importlib.import_module(NODES[node][0]).PARAMETERS}
    config = yaml.safe_load(open(os.path.join(ROOT, "config", f"{node}.yaml")))[node]["ros__parameters"]
    assert set(config) == set(table), f"only in YAML: {set(config) - set(table)}, only in the table: " \
                                      f"{set(table) - set(config)}"
    for name, value in config.items():
        declared = table[name].type
        accepted = (int, float) if declared is float else declared
        assert isinstance(value, accepted) and (declared is bool or not isinstance(value, bool)), \
            f"{node}.{name}: YAML {value!r}, declared {declared.__name__}"


@pytest.mark.parametrize("preset", sorted(os.listdir(os.path.join(ROOT, "config", "presets"))))
def test_presets_set_only_declared_parameters(preset):
    """A parameter file entry a node does not declare is silently ignored by ROS: refuse it here."""
    doc = yaml.safe_load(open(os.path.join(ROOT, "config", "presets", preset)))
    for node, entry in doc.items():
        table = {p.name for p in importlib.import_module(NODES[node][0]).PARAMETERS}
        unknown = set(entry["ros__parameters"]) - table
        assert not unknown, f"{preset}: {node} ignores {unknown}"


@pytest.mark.parametrize("module,attribute", [(module, "PARAMETERS") for module, _ in NODES.values()]
                         + [("ros_tools.bags", "RECORDER_PARAMETERS"), ("ros_tools.bags", "REPLAY_PARAMETERS")])
def test_tables_describe_every_parameter(module, attribute):
    table = getattr(importlib.import_module(module), attribute)
    assert all(isinstance(p, Param) and p.description for p in table)
    assert len({p.name for p in table}) == len(table)


@pytest.fixture
def context():
    ctx = rclpy.Context()
    yield ctx
    rclpy.try_shutdown(context=ctx)


def make_node(context, overrides, params_file=None):
    args = ["x", "--ros-args", *(["--params-file", params_file] if params_file else [])]
    for key, value in overrides.items():
        args += ["-p", f"{key}:={value}"]
    rclpy.init(context=context, args=args, domain_id=0)
    return rclpy.create_node("parameters", context=context)


def test_int_for_float_and_clear_type_errors(context):
    table = [Param("timeout_s", 5.0, "s"), Param("gamma", 4, "n"), Param("topics", [], "names"),
             Param("label", "x", "text")]
    node = make_node(context, {"timeout_s": 10, "topics": "[a,b]"})
    try:
        values = declare_parameters(node, table)
        assert values == {"timeout_s": 10.0, "gamma": 4, "topics": ["a", "b"], "label": "x"}
        assert isinstance(values["timeout_s"], float)
        assert node.get_parameter("timeout_s").value == 10.0  # what `ros2 param get` shows
    finally:
        node.destroy_node()


def test_a_string_for_a_float_is_refused(context):
    node = make_node(context, {"timeout_s": "soon"})
    try:
        with pytest.raises(ParameterError, match="timeout_s must be a number, got 'soon'"):
            declare_parameters(node, [Param("timeout_s", 5.0, "s")])
    finally:
        node.destroy_node()


# Every node, constructed for real from its config file, with an integer for one float parameter.
INT_FOR_FLOAT = {
    "edge_spec_drafter": ("cloud_timeout_s", 10, lambda n: n.decoder.config.timeout_s),
    "cloud_verifier_bridge": ("connect_timeout_s", 3, lambda n: n.client.connect_timeout),
    "go2_vlm_control": ("max_vx", 1, lambda n: n.motion_limits.max_vx),
    "go2_sim": ("room_size", 5, lambda n: n.env.world.cfg.room_size),
}


@pytest.mark.parametrize("node", sorted(NODES))
def test_every_node_takes_an_int_for_a_float(node, context, tiny_vlm_models, monkeypatch):
    name, value, read = INT_FOR_FLOAT[node]
    overrides = {name: value}
    if node == "edge_spec_drafter":
        overrides.update(draft_model=tiny_vlm_models / "draft", torch_threads=1)
    if node == "cloud_verifier_bridge":
        monkeypatch.setenv("EDGE_CLOUD_VLM_TOKEN", "secret")  # remote mode; it connects only on send
    module, cls = NODES[node]
    make_node(context, overrides, os.path.join(ROOT, "config", f"{node}.yaml")).destroy_node()
    instance = getattr(importlib.import_module(module), cls)(context=context)
    try:
        got = read(instance)
        assert got == float(value) and isinstance(got, float), got
    finally:
        instance.destroy_node()


@pytest.mark.parametrize("text,message", [
    ("robots: [unclosed\n", "not valid YAML (line 2)"),
    ("- go2\n", "expected 'robots:"),
    ("robots:\n  go2: abc\n", "robot 'go2' needs token_sha256"),
    ("robots:\n  go2: {token_sha256: 1234}\n", "robot 'go2' needs token_sha256"),
])
def test_malformed_tokens_file_is_one_line_and_help_shows_the_format(text, message, tmp_path):
    import subprocess

    from cloud_verifier_bridge.server import load_tokens

    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_tokens(str(path))
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    if message.startswith("not valid YAML"):  # the whole program, once: one line, no traceback
        run = subprocess.run(["verifier_server", "--model", str(tmp_path), "--tokens", str(path)],
                             capture_output=True, text=True, timeout=120)
        errors = [line for line in run.stderr.splitlines() if line.startswith("verifier_server:")]
        assert run.returncode != 0 and len(errors) == 1 and message in errors[0], run.stderr
        assert "Traceback" not in run.stderr
        usage = subprocess.run(["verifier_server", "--help"], capture_output=True, text=True, timeout=60).stdout
        assert "token_sha256" in usage and "--hash-token" in usage
