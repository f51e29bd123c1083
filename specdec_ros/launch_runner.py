"""Run a ROS 2 YAML launch file where ``ros2 launch`` is not installed.

The launch files in ``launch/`` use the standard YAML front end of ``ros2 launch``, so a robot
runs them with ``ros2 launch edge_cloud_vlm robot.launch.yaml``. This machine has no
``launch``/``ros2cli`` wheels; this runner executes the same files faithfully for the subset
they use, mapping each node to its installed executable with standard ``--ros-args``:

* ``arg`` (name, default, description), ``let`` (name, value)
* ``node``: pkg, exec, name, namespace, args, ``param`` (``from`` a params file, or name/value),
  ``remap`` (from/to), ``env`` (name/value), ``if`` / ``unless``
* ``executable``: cmd, name, ``env``, ``if`` / ``unless``
* substitutions ``$(var x)``, ``$(env X)``, ``$(env X default)``, ``$(find-pkg-share pkg)``,
  ``$(find-pkg-prefix pkg)``

Anything else is refused with a clear error rather than silently ignored.

    python -m specdec_ros.launch_runner launch/sim.launch.yaml mode:=speculative rtt_ms:=50
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

SUPPORTED_ACTIONS = {"arg", "let", "node", "executable"}
NODE_KEYS = {"pkg", "exec", "name", "namespace", "args", "param", "remap", "env", "if", "unless", "output"}
EXEC_KEYS = {"cmd", "name", "env", "if", "unless", "output"}


class LaunchError(ValueError):
    """A launch file this runner cannot execute faithfully."""


def find_pkg_prefix(pkg: str) -> str:
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and os.path.isfile(os.path.join(prefix, "share", "ament_index", "resource_index", "packages", pkg)):
            return prefix
    raise LaunchError(f"package {pkg!r} not found on AMENT_PREFIX_PATH (did you source install/setup.bash?)")


_SUBST = re.compile(r"\$\(([a-z-]+)((?:\s+[^)\s]+)*)\s*\)")


def substitute(text, variables: Dict[str, str]) -> str:
    if not isinstance(text, str):
        return text

    def one(match):
        kind, args = match.group(1), match.group(2).split()
        if kind == "var":
            if args[0] not in variables:
                raise LaunchError(f"undefined launch argument {args[0]!r}")
            return variables[args[0]]
        if kind == "env":
            if args[0] in os.environ:
                return os.environ[args[0]]
            if len(args) > 1:
                return args[1]
            raise LaunchError(f"environment variable {args[0]!r} not set")
        if kind == "find-pkg-share":
            return os.path.join(find_pkg_prefix(args[0]), "share", args[0])
        if kind == "find-pkg-prefix":
            return find_pkg_prefix(args[0])
        raise LaunchError(f"unsupported substitution $({kind} ...)")

    previous = None
    while previous != text:  # nested substitutions resolve inside out
        previous, text = text, _SUBST.sub(one, text)
    return text


def typed_value(text: str):
    """A parameter value string typed the way launch_ros does it: as a YAML scalar."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


_TEMP_FILES: List[str] = []


def write_params_file(params: dict) -> str:
    import atexit
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", prefix="launch_params_", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump({"/**": {"ros__parameters": params}}, handle)
    if not _TEMP_FILES:
        atexit.register(lambda: [os.unlink(f) for f in _TEMP_FILES if os.path.exists(f)])
    _TEMP_FILES.append(handle.name)
    return handle.name


def truthy(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise LaunchError(f"condition {value!r} is not a boolean")


@dataclass
class Process:
    name: str
    cmd: List[str]
    env: Dict[str, str] = field(default_factory=dict)


def plan(path: str, cli_args: Dict[str, str]) -> List[Process]:
    """Resolve a launch file into the processes it starts (nothing is started)."""
    with open(path) as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict) or not isinstance(doc.get("launch"), list):
        raise LaunchError(f"{path}: expected a top-level 'launch:' list")
    variables: Dict[str, str] = {}
    processes: List[Process] = []
    declared = set()
    for entry in doc["launch"]:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise LaunchError(f"{path}: each launch entry must be a single action, got {entry!r}")
        (action, spec), = entry.items()
        if action not in SUPPORTED_ACTIONS:
            raise LaunchError(f"{path}: action {action!r} not supported by this runner ({sorted(SUPPORTED_ACTIONS)})")
        if action == "arg":
            declared.add(spec["name"])
            if spec["name"] in cli_args:
                variables[spec["name"]] = cli_args[spec["name"]]
            elif "default" in spec:
                variables[spec["name"]] = substitute(str(spec["default"]), variables)
            else:
                raise LaunchError(f"{path}: launch argument {spec['name']!r} is required")
            continue
        if action == "let":
            variables[spec["name"]] = substitute(str(spec["value"]), variables)
            continue
        keys = NODE_KEYS if action == "node" else EXEC_KEYS
        unknown = set(spec) - keys
        if unknown:
            raise LaunchError(f"{path}: {action} keys {sorted(unknown)} not supported")
        if "if" in spec and not truthy(substitute(spec["if"], variables)):
            continue
        if "unless" in spec and truthy(substitute(spec["unless"], variables)):
            continue
        env = {e["name"]: substitute(str(e["value"]), variables) for e in spec.get("env", [])}
        if action == "executable":
            cmd = shlex.split(substitute(spec["cmd"], variables))
            processes.append(Process(spec.get("name", cmd[0]), cmd, env))
            continue
        pkg, exe = substitute(spec["pkg"], variables), substitute(spec["exec"], variables)
        binary = os.path.join(find_pkg_prefix(pkg), "lib", pkg, exe)
        if not os.path.exists(binary):
            raise LaunchError(f"executable {exe!r} of package {pkg!r} not found at {binary}")
        cmd = [binary, *shlex.split(substitute(spec.get("args", ""), variables)), "--ros-args"]
        name = substitute(spec.get("name", exe), variables)
        if "name" in spec:
            cmd += ["-r", f"__node:={name}"]
        if "namespace" in spec:
            cmd += ["-r", f"__ns:={substitute(spec['namespace'], variables)}"]
        inline = {}
        for param in spec.get("param", []):
            if "from" in param:
                params_file = substitute(param["from"], variables)
                if not os.path.isfile(params_file):
                    raise LaunchError(f"parameter file not found: {params_file}")
                cmd += ["--params-file", params_file]
            else:
                inline[param["name"]] = typed_value(substitute(str(param["value"]), variables))
        if inline:
            # As launch_ros does: name/value parameters go through a generated parameter file
            # (after the files, so they override them), which also carries empty strings.
            cmd += ["--params-file", write_params_file(inline)]
        for remap in spec.get("remap", []):
            cmd += ["-r", f"{substitute(remap['from'], variables)}:={substitute(remap['to'], variables)}"]
        processes.append(Process(name, cmd, env))
    extra = set(cli_args) - declared
    if extra:
        raise LaunchError(f"{path}: unknown launch arguments {sorted(extra)} (declared: {sorted(declared)})")
    return processes


def run(processes: List[Process], timeout: Optional[float] = None) -> int:
    """Start every process; stop all when one exits, on SIGINT/SIGTERM, or after ``timeout``."""
    children = []
    for proc in processes:
        print(f"[launch] {proc.name}: {' '.join(shlex.quote(c) for c in proc.cmd)}", flush=True)
        children.append((proc, subprocess.Popen(proc.cmd, env={**os.environ, **proc.env})))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    deadline = time.monotonic() + timeout if timeout else None
    code = 0
    try:
        while not stopping:
            for proc, child in children:
                if child.poll() is not None:
                    print(f"[launch] {proc.name} exited with {child.returncode}; stopping the rest", flush=True)
                    code = child.returncode
                    stopping.append(proc.name)
                    break
            if deadline and time.monotonic() > deadline:
                stopping.append("timeout")
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    end = time.monotonic() + 5
    for _, child in children:
        try:
            child.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a ROS 2 YAML launch file without ros2 launch.")
    parser.add_argument("launch_file")
    parser.add_argument("arguments", nargs="*", help="name:=value launch arguments")
    parser.add_argument("--print", action="store_true", help="print the resolved commands and exit")
    parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    args = parser.parse_intermixed_args(argv)
    cli = {}
    for item in args.arguments:
        if ":=" not in item:
            parser.error(f"launch arguments are name:=value, got {item!r}")
        key, value = item.split(":=", 1)
        cli[key] = value
    try:
        processes = plan(args.launch_file, cli)
    except LaunchError as exc:
        print(f"launch error: {exc}", file=sys.stderr)
        return 2
    if args.print:
        for proc in processes:
            print(" ".join(shlex.quote(c) for c in proc.cmd))
        return 0
    return run(processes, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
