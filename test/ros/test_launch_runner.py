"""The launch runner follows launch_ros semantics, and the project's launch files are correct under
them: every command line parses with the real program's argument parser and every node parameter
has the type its node declares (the checks that would have caught `$(var tls_args)`)."""

import os
import subprocess

import pytest
import yaml

from ros_tools.launch_runner import LaunchError, Scope, command_line, condition, plan, typed_value

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "launch")
REQUIRED = {"cloud.launch.yaml": {"tokens": "/etc/tokens.yaml"},
            "robot.launch.yaml": {},
            "sim.launch.yaml": {"tokens": "/etc/tokens.yaml", "token_file": "/etc/token"}}
NODE_TABLES = {"edge_spec_drafter": "edge_spec_drafter.node", "cloud_verifier_bridge": "cloud_verifier_bridge.node",
               "go2_vlm_control": "go2_vlm_control.controller_node", "go2_sim": "go2_sim.sim_node"}


def scope(**configs):
    return Scope(dict(configs), os.path.join(LAUNCH, "x.launch.yaml"))


# -- argv ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,configs,argv", [
    ("prog --tls $(var tls)", {"tls": ""}, ["prog", "--tls", ""]),  # an empty result stays one argument
    ("prog $(var tls) --x", {"tls": "--cert c.pem --key k.pem"}, ["prog", "--cert c.pem --key k.pem", "--x"]),
    ("prog --up 127.0.0.1:$(var port)", {"port": "8765"}, ["prog", "--up", "127.0.0.1:8765"]),
    ("$(var a)$(var b)/bin tail", {"a": "/opt", "b": "/ros"}, ["/opt/ros/bin", "tail"]),
    ("$(var a) $(var b)", {"a": "1", "b": "2"}, ["1", "2"]),
    ("prog 'two words' x  y\n z", {}, ["prog", "two words", "x", "y", "z"]),
    ("prog --value=$(var v)x y", {"v": "a b"}, ["prog", "--value=a bx", "y"]),
])
def test_substitution_results_are_one_argument_and_literals_split(text, configs, argv):
    assert command_line(text, scope(**configs), "cmd") == argv


@pytest.mark.parametrize("text,expected", [("true", True), (" True ", True), ("1", True), ("FALSE", False),
                                           ("0", False)])
def test_conditions(text, expected):
    assert condition(text, scope(), "if") is expected


@pytest.mark.parametrize("text", ["yes", "", "on", "2"])
def test_conditions_refuse_what_launch_refuses(text):
    with pytest.raises(LaunchError, match="is not a condition"):
        condition(text, scope(), "if")


def test_parameter_values_are_typed_by_yaml_rules_unless_a_type_is_given():
    assert typed_value("5", None, "p") == 5 and typed_value("5.0", None, "p") == 5.0
    assert typed_value("true", None, "p") is True and typed_value("[a, b]", None, "p") == ["a", "b"]
    assert typed_value("", "str", "p") == "" and typed_value("007", "str", "p") == "007"
    assert typed_value("3", "float", "p") == 3.0
    for bad in ("", "a: b", "[1, a]"):
        with pytest.raises(LaunchError, match="type: str|launch_ros refuses"):
            typed_value(bad, None, "p")
    with pytest.raises(LaunchError, match="not an int"):
        typed_value("x", "int", "p")


# -- actions ------------------------------------------------------------------------------------
def write(tmp_path, name, launch):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"launch": launch}))
    return str(path)


def exe(cmd, **extra):
    return {"executable": {"cmd": cmd, **extra}}


def test_if_unless_let_and_arg_defaults(tmp_path):
    path = write(tmp_path, "a.launch.yaml", [
        {"arg": {"name": "tls", "default": "false"}},
        {"let": {"name": "greeting", "value": "hi $(var tls)"}},
        exe("echo on", **{"if": "$(var tls)"}),
        exe("echo off $(var greeting)", unless="$(var tls)"),
    ])
    assert [p.cmd for p in plan(path, {})] == [["echo", "off", "hi false"]]
    assert [p.cmd for p in plan(path, {"tls": "True"})] == [["echo", "on"]]
    with pytest.raises(LaunchError, match="not a condition"):
        plan(path, {"tls": "yes"})
    with pytest.raises(LaunchError, match="unknown launch arguments"):
        plan(path, {"tsl": "true"})


def test_include_passes_arguments_into_the_including_scope_and_group_scopes(tmp_path):
    write(tmp_path, "inner.launch.yaml", [{"arg": {"name": "who"}}, {"arg": {"name": "level", "default": "1"}},
                                          exe("inner $(var who) $(var level)")])
    path = write(tmp_path, "outer.launch.yaml", [
        {"arg": {"name": "level", "default": "7"}},
        {"group": {"children": [
            {"include": {"file": "$(dirname)/inner.launch.yaml", "arg": [{"name": "who", "value": "grouped"}]}}]}},
        exe("after-group $(var who default-who)"),  # scoped: `who` did not leak out of the group
        {"include": {"file": "$(dirname)/inner.launch.yaml", "arg": [{"name": "who", "value": "bare"}]}},
        exe("after-include $(var who)"),  # include alone is not scoped, as in launch
    ])
    # the outer `level` is already set, so the included arg's default does not override it
    assert [p.cmd for p in plan(path, {})] == [["inner", "grouped", "7"], ["after-group", "default-who"],
                                               ["inner", "bare", "7"], ["after-include", "bare"]]
    missing = write(tmp_path, "missing.launch.yaml", [{"include": {"file": "$(dirname)/inner.launch.yaml"}}])
    with pytest.raises(LaunchError, match="missing required argument 'who'"):
        plan(missing, {})


def test_node_command_line_namespace_params_and_remaps(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("x:\n  ros__parameters: {a: 1}\n")
    named_node = {"pkg": "edge_cloud_vlm", "exec": "go2_sim", "name": "sim", "namespace": "inner",
                  "args": "--flag $(var empty)",
                  "param": [{"from": str(params)}, {"name": "seed", "value": "3"},
                            {"name": "label", "value": "", "type": "str"}],
                  "remap": [{"from": "odom", "to": "/robot1/odom_raw"}]}
    path = write(tmp_path, "n.launch.yaml", [
        {"arg": {"name": "empty", "default": ""}},
        {"group": {"children": [{"push-ros-namespace": {"namespace": "robot1"}},
                                {"node": named_node},
                                {"node": {"pkg": "edge_cloud_vlm", "exec": "go2_sim", "namespace": "/abs"}}]}},
        {"node": {"pkg": "edge_cloud_vlm", "exec": "go2_sim"}}])
    named, absolute, bare = plan(path, {})
    cmd = named.cmd
    assert cmd[0].endswith("/lib/edge_cloud_vlm/go2_sim")
    assert cmd[1:6] == ["--flag", "", "--ros-args", "-r", "__node:=sim"]
    assert cmd[6:8] == ["-r", "__ns:=/robot1/inner"]
    files = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--params-file"]
    assert files[0] == str(params) and len(files) == 3
    assert [yaml.safe_load(open(f)) for f in files[1:]] == [
        {"/robot1/inner/sim": {"ros__parameters": {"seed": 3}}},
        {"/robot1/inner/sim": {"ros__parameters": {"label": ""}}}]
    assert cmd[-2:] == ["-r", "odom:=/robot1/odom_raw"]
    assert absolute.cmd[1:] == ["--ros-args", "-r", "__ns:=/abs"]
    assert bare.cmd[1:] == ["--ros-args"]  # the group's namespace ended with the group


@pytest.mark.parametrize("launch,message", [
    ([{"timer": {"period": "1"}}], "action not supported"),
    ([exe("echo", respawn=True)], r"attributes \['respawn'\] not supported"),
    ([exe("echo $(command ls)")], r"\$\(command ...\) is not supported"),
    ([exe("echo $(eval '__import__(\"os\")')")], "only literals"),
    ([{"arg": {"name": "port", "default": 8765}}], "must be a string"),
    ([exe("echo", **{"if": "true", "unless": "false"})], "cannot be used together"),
    ([{"node": {"pkg": "edge_cloud_vlm", "exec": "no_such_node"}}], "not found"),
])
def test_what_the_runner_cannot_run_faithfully_is_refused(tmp_path, launch, message):
    with pytest.raises(LaunchError, match=message):
        plan(write(tmp_path, "bad.launch.yaml", launch), {})


# -- the project's launch files ----------------------------------------------------------------
def parameter_types(node):
    import importlib

    return {p.name: p.type for p in importlib.import_module(NODE_TABLES[node]).PARAMETERS}


def params_of(process):
    values = {}
    for i, arg in enumerate(process.cmd):
        if arg == "--params-file":
            for entry in yaml.safe_load(open(process.cmd[i + 1])).values():
                values.update(entry["ros__parameters"])
    return values


@pytest.mark.parametrize("launch_file,args", [
    ("cloud.launch.yaml", {}),
    ("cloud.launch.yaml", {"tls_cert": "/etc/c.pem", "tls_key": "/etc/k.pem", "host": "0.0.0.0"}),
    ("robot.launch.yaml", {}),
    ("robot.launch.yaml", {"verifier": "local", "instruction": "go to the red ball", "robot_id": "007",
                           "max_action_age": "0"}),
    ("sim.launch.yaml", {}),
    ("sim.launch.yaml", {"rtt_ms": "80", "on_cloud_loss": "edge_only", "seed": "3"}),
])
def test_launch_files_are_correct_under_launch_ros(launch_file, args):
    from cloud_verifier_bridge.server import build_arg_parser

    processes = plan(os.path.join(LAUNCH, launch_file), {**REQUIRED[launch_file], **args})
    assert processes
    for proc in processes:
        name = os.path.basename(proc.cmd[0])
        if name == "verifier_server":
            parsed = build_arg_parser().parse_args(proc.cmd[1:])  # exits on an unrecognized argument
            assert parsed.tls_cert == args.get("tls_cert", "") and parsed.tls_key == args.get("tls_key", "")
        elif name == "link_emulator":
            delay = float(proc.cmd[proc.cmd.index("--delay-ms") + 1])
            assert delay == float(args.get("rtt_ms", 50)) / 2  # rtt_ms changes the emulated link
        else:
            types = parameter_types(name)
            for key, value in params_of(proc).items():
                assert key in types, f"{name}: unknown parameter {key}"
                expected = (int, float) if types[key] is float else types[key]
                assert isinstance(value, expected) and (types[key] is bool or not isinstance(value, bool)), \
                    f"{name}.{key} = {value!r}, declared {types[key].__name__}"
    if launch_file == "robot.launch.yaml" and args:
        edge = params_of(next(p for p in processes if p.name == "edge_spec_drafter"))
        assert edge["instruction"] == "go to the red ball" and edge["robot_id"] == "007"


def run_cli(*argv):
    return subprocess.run(["launch_runner", *argv], capture_output=True, text=True, timeout=60)


def test_command_line_package_form_and_one_line_errors():
    ok = run_cli("edge_cloud_vlm", "cloud.launch.yaml", "tokens:=/etc/t.yaml", "--print")
    assert ok.returncode == 0 and "verifier_server" in ok.stdout, ok.stderr
    for argv, message in ((["no_such_pkg", "x.launch.yaml"], "package 'no_such_pkg' not found"),
                          (["edge_cloud_vlm", "nope.launch.yaml"], "'nope.launch.yaml' not found"),
                          (["/no/such.launch.yaml"], "not found"),
                          ([os.path.join(LAUNCH, "cloud.launch.yaml")], "required launch argument 'tokens'")):
        bad = run_cli(*argv)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_env_sh_puts_every_console_script_the_readme_names_on_path():
    import re

    scripts = re.findall(r'"(\w+) = [\w.]+:\w+"', open(os.path.join(ROOT, "setup.py")).read())
    readme = open(os.path.join(ROOT, "README.md")).read()
    named = [s for s in scripts if re.search(rf"`[^`]*\b{s}\b", readme)]
    assert {"verifier_server", "bag_replay", "bag_recorder", "launch_runner"} <= set(named)
    check = " ".join(f"command -v {s} >/dev/null || echo missing {s};" for s in named)
    out = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/env.sh && {check}"], capture_output=True,
                         text=True, timeout=60, env={"HOME": os.environ.get("HOME", "/"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "missing" not in out.stdout, out.stdout + out.stderr


def test_sigint_stops_a_runner_started_with_sigint_ignored_and_its_files_go(tmp_path):
    """A background job of a script starts with SIGINT ignored: the runner still stops on it (as ros2
    launch does), its processes get it too, and the parameter files it generated are removed."""
    import signal
    import time

    marks = tmp_path / "marks"
    child = ("import pathlib, sys, time\n"
             "marks = pathlib.Path(sys.argv[1])\n"
             "marks.write_text('started\\n')\n"
             "try:\n"
             "    time.sleep(60)\n"
             "except KeyboardInterrupt:\n"
             "    marks.write_text('started\\ninterrupted\\n')\n")
    (tmp_path / "child.py").write_text(child)
    path = write(tmp_path, "bg.launch.yaml", [
        exe(f"python3 {tmp_path / 'child.py'} {marks}"),
        {"node": {"pkg": "edge_cloud_vlm", "exec": "go2_sim", "param": [{"name": "seed", "value": "3"}]}}])
    runner = subprocess.Popen(["launch_runner", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while not (marks.exists() and marks.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the node has its parameters file open by now
        start = time.monotonic()
        runner.send_signal(signal.SIGINT)
        out, _ = runner.communicate(timeout=30)
        stopped_s = time.monotonic() - start
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert marks.read_text() == "started\ninterrupted\n", out  # the child had SIGINT handled, not ignored
    assert stopped_s < 5.0, out  # not the escalation to SIGTERM after 5 s
    params_files = [arg for line in out.splitlines() if line.startswith("[launch] go2_sim")
                    for i, arg in enumerate(line.split()) if i and line.split()[i - 1] == "--params-file"]
    assert len(params_files) == 1 and not os.path.exists(params_files[0]), out
