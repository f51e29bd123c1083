"""Run ROS 2 YAML launch files where ``ros2 launch`` is not installed, with launch_ros semantics.

The files in ``launch/`` are ordinary ``ros2 launch`` YAML files: a robot runs them with
``ros2 launch edge_cloud_vlm robot.launch.yaml``. The PyPI ROS wheels have no ``launch`` /
``launch_ros``, so this runner executes the same files, and does what launch_ros does for every
construct it accepts, so a file that works here works there:

* argv: in ``cmd`` (executable), ``args`` and ``ros_args`` (node) literal text is split like a
  shell (``shlex``), while a substitution's result, with any literal text touching it, is ONE
  argument, even when it is empty or holds spaces (``--tls $(var tls)`` with ``tls:=""`` passes
  an empty argument; it is not dropped);
* ``executable``: ``cmd`` is the whole command line; ``node``: ``pkg``/``exec`` name
  ``<prefix>/lib/<pkg>/<exec>``, ``args`` go before ``--ros-args``, then ``-r __node:=``,
  ``-r __ns:=``, one ``--params-file`` per ``param`` entry in order (``from`` a file, or a
  generated file per ``name``/``value``, the value typed by YAML rules unless ``type`` is given;
  an empty or non-scalar result is an error, as in launch_ros), then ``-r from:=to`` remaps;
* ``arg`` (name, default, description, choice) never overrides a value already set (command
  line, include); ``let`` always sets;
* ``if`` / ``unless`` on every action: ``true``/``1``/``false``/``0`` (case and surrounding
  spaces ignored), anything else is an error;
* ``include`` (file, ``arg`` name/value) sets its arguments in the current scope, as
  launch does; only ``group`` scopes (``scoped``, ``forwarding``, ``keep``, ``children``);
* ``push-ros-namespace`` prefixes relative node namespaces until the end of its group;
* substitutions ``$(var x [default])``, ``$(env X [default])``, ``$(optenv X [default])``,
  ``$(find-pkg-share p)``, ``$(find-pkg-prefix p)``, ``$(dirname)``, ``$(filename)``, and
  ``$(eval expr)`` for arithmetic, comparison and logic on literals.

Anything else (another action, attribute or substitution) is refused with one line naming it,
never ignored. The runner is stricter than launch in three places: an undeclared command-line
argument, a missing parameter file and an attribute launch would accept but this runner does not
know are errors. At run time it behaves like ``ros2 launch``: processes keep running when one
exits (``--stop-all-on-exit`` for tests), Ctrl-C sends SIGINT, then SIGTERM, then SIGKILL.

    launch_runner edge_cloud_vlm sim.launch.yaml tokens:=... token_file:=...   # like ros2 launch
    launch_runner launch/sim.launch.yaml rtt_ms:=80 --print                    # resolved commands
"""

from __future__ import annotations

import argparse
import ast
import atexit
import operator
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import yaml


class LaunchError(ValueError):
    """A launch file this runner cannot execute as launch_ros would (one line, for the user)."""


# -- substitutions ------------------------------------------------------------------------------
@dataclass
class Subst:
    kind: str
    args: List[list]  # each argument is a template: a list of str and Subst parts


Template = List[Union[str, Subst]]


def parse_template(text: str) -> Template:
    """'--port $(var port)' -> ['--port ', Subst('var', [['port']])]."""
    parts, pos = _parse_parts(text, 0, stop="")
    if pos != len(text):
        raise LaunchError(f"unbalanced ')' in {text!r}")
    return parts


def _parse_parts(text: str, pos: int, stop: str):
    """Literal text and substitutions up to a character in ``stop`` (not consumed)."""
    parts: Template = []
    literal = []
    while pos < len(text) and text[pos] not in stop:
        if text.startswith("$(", pos):
            if literal:
                parts.append("".join(literal))
                literal = []
            subst, pos = _parse_subst(text, pos + 2)
            parts.append(subst)
        else:
            literal.append(text[pos])
            pos += 1
    if literal:
        parts.append("".join(literal))
    return parts, pos


def _parse_subst(text: str, pos: int):
    start = pos
    while pos < len(text) and (text[pos].isalnum() or text[pos] in "-_"):
        pos += 1
    kind = text[start:pos]
    if not kind:
        raise LaunchError(f"substitution without a name in {text!r}")
    args: List[Template] = []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            raise LaunchError(f"unclosed $({kind} ...) in {text!r}")
        if text[pos] == ")":
            return Subst(kind, args), pos + 1
        arg: Template = []
        while pos < len(text) and not text[pos].isspace() and text[pos] != ")":
            if text[pos] in "'\"":
                quote = text[pos]
                inner, pos = _parse_parts(text, pos + 1, stop=quote)
                if pos >= len(text):
                    raise LaunchError(f"unclosed quote in {text!r}")
                arg.extend(inner or [""])
                pos += 1
            else:
                inner, pos = _parse_parts(text, pos, stop=" \t\n)'\"")
                arg.extend(inner)
        args.append(arg)


_EVAL_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}


def safe_eval(expression: str):
    """What ``$(eval ...)`` computes, for literals, arithmetic, comparisons, and/or/not and
    ``a if c else b`` (launch evaluates any Python; anything beyond this is refused here)."""
    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _EVAL_OPERATORS:
            return _EVAL_OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _EVAL_OPERATORS:
            return _EVAL_OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [value(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare) and all(type(op) in _EVAL_OPERATORS for op in node.ops):
            left = value(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node)
                if not _EVAL_OPERATORS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return value(node.body) if value(node.test) else value(node.orelse)
        raise LaunchError(f"$(eval {expression!r}): only literals, arithmetic, comparisons and logic are supported")

    try:
        return value(ast.parse(expression.strip(), mode="eval"))
    except SyntaxError as exc:
        raise LaunchError(f"$(eval {expression!r}): {exc.msg}") from None
    except ArithmeticError as exc:
        raise LaunchError(f"$(eval {expression!r}): {exc}") from None


def find_pkg_prefix(pkg: str) -> str:
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and os.path.isfile(os.path.join(prefix, "share", "ament_index", "resource_index", "packages", pkg)):
            return prefix
    raise LaunchError(f"package {pkg!r} not found on AMENT_PREFIX_PATH (did you source install/setup.bash?)")


@dataclass
class Scope:
    """Launch configurations (``ros_namespace`` included, as in launch_ros) and the current file."""

    configs: Dict[str, str]
    file: str


def perform(template: Template, scope: Scope) -> str:
    return "".join(part if isinstance(part, str) else _perform_subst(part, scope) for part in template)


def _perform_subst(subst: Subst, scope: Scope) -> str:
    args = [perform(arg, scope) for arg in subst.args]
    kind, count = subst.kind, len(args)

    def need(low, high):
        if not low <= count <= high:
            raise LaunchError(f"$({kind} ...) takes {low}..{high} arguments, got {count}")

    if kind == "var":
        need(1, 2)
        if args[0] in scope.configs:
            return scope.configs[args[0]]
        if count == 2:
            return args[1]
        raise LaunchError(f"launch configuration {args[0]!r} does not exist")
    if kind in ("env", "optenv"):
        need(1, 2)
        if args[0] in os.environ:
            return os.environ[args[0]]
        if count == 2 or kind == "optenv":
            return args[1] if count == 2 else ""
        raise LaunchError(f"environment variable {args[0]!r} does not exist")
    if kind in ("find-pkg-share", "find-pkg-prefix"):
        need(1, 1)
        prefix = find_pkg_prefix(args[0])
        return os.path.join(prefix, "share", args[0]) if kind == "find-pkg-share" else prefix
    if kind in ("dirname", "filename"):
        need(0, 0)
        return os.path.dirname(scope.file) if kind == "dirname" else scope.file
    if kind == "eval":
        need(1, 1)
        return str(safe_eval(args[0]))
    raise LaunchError(f"substitution $({kind} ...) is not supported by this runner")


def substitute(value, scope: Scope, what: str) -> str:
    """A string attribute after substitution (launch refuses a non-string where text is expected)."""
    if not isinstance(value, str):
        raise LaunchError(f"{what} must be a string, got {value!r} (quote it in the YAML)")
    return perform(parse_template(value), scope)


def command_line(value, scope: Scope, what: str) -> List[str]:
    """launch's argv rule: literal text splits like a shell; a substitution, glued to any literal
    text touching it, is one argument (an empty result stays an empty argument)."""
    if not isinstance(value, str):
        raise LaunchError(f"{what} must be a string, got {value!r}")
    argv: List[str] = []
    current: Optional[List[str]] = None  # the argument being built, None between arguments
    for part in parse_template(value):
        if isinstance(part, Subst):
            current = (current or []) + [_perform_subst(part, scope)]
            continue
        try:
            tokens = shlex.split(part)
        except ValueError as exc:
            raise LaunchError(f"{what}: {exc} in {part!r}") from None
        if not tokens:  # only whitespace: it separates arguments
            if current is not None:
                argv.append("".join(current))
            current = None
            continue
        if part[0].isspace() and current is not None:
            argv.append("".join(current))
            current = None
        current = (current or []) + [tokens[0]]
        if len(tokens) > 1:
            argv.append("".join(current))
            argv.extend(tokens[1:-1])
            current = [tokens[-1]]
        if part[-1].isspace():
            argv.append("".join(current))
            current = None
    if current is not None:
        argv.append("".join(current))
    return argv


def condition(text, scope: Scope, what: str) -> bool:
    value = substitute(text, scope, what).strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise LaunchError(f"{what}: {value!r} is not a condition (true, false, 1 or 0)")


def boolean_attr(spec: dict, key: str, default: bool, what: str) -> bool:
    value = spec.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise LaunchError(f"{what}: {key} must be true or false, got {value!r}")


# -- parameters ----------------------------------------------------------------------------------
PARAM_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def typed_value(text: str, type_name: Optional[str], what: str):
    """A parameter value the way launch_ros types it: YAML rules unless ``type`` says otherwise."""
    if type_name is not None:
        if type_name not in PARAM_TYPES:
            raise LaunchError(f"{what}: type {type_name!r} not supported (one of {sorted(PARAM_TYPES)})")
        kind = PARAM_TYPES[type_name]
        if kind is str:
            return text
        if kind is bool:
            value = yaml.safe_load(text) if text.strip() else None
            if not isinstance(value, bool):
                raise LaunchError(f"{what}: {text!r} is not a bool")
            return value
        try:
            return kind(text)
        except ValueError:
            raise LaunchError(f"{what}: {text!r} is not an {type_name}") from None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LaunchError(f"{what}: {text!r} is not valid YAML (add type: str to keep it text)") from None
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value and len({type(v) for v in value}) == 1 \
            and isinstance(value[0], (bool, int, float, str)):
        return value
    raise LaunchError(f"{what}: {text!r} gives {type(value).__name__} by YAML rules, which launch_ros refuses "
                      f"(an empty value needs type: str)")


def param_value(value, type_name, scope: Scope, what: str):
    if isinstance(value, str):
        return typed_value(substitute(value, scope, what), type_name, what)
    if isinstance(value, list):
        items = [typed_value(substitute(v, scope, what), type_name, what) if isinstance(v, str) else v
                 for v in value]
        if not items or len({type(v) for v in items}) != 1:
            raise LaunchError(f"{what}: a list parameter needs items of one type, got {value!r}")
        return items
    if isinstance(value, (bool, int, float)):
        return value
    raise LaunchError(f"{what}: value {value!r} not supported")


def nested_params(entries, scope: Scope, what: str) -> dict:
    out = {}
    for entry in entries:
        unknown = set(entry) - {"name", "value", "type", "param"}
        if unknown:
            raise LaunchError(f"{what}: param keys {sorted(unknown)} not supported")
        name = substitute(entry["name"], scope, f"{what} param name")
        if ("value" in entry) == ("param" in entry):
            raise LaunchError(f"{what}: param {name!r} needs exactly one of value or nested param")
        if "param" in entry:
            out[name] = nested_params(entry["param"], scope, f"{what} param {name}")
        else:
            out[name] = param_value(entry["value"], entry.get("type"), scope, f"{what} param {name}")
    return out


_TEMP_FILES: List[str] = []


def write_params_file(node_key: str, params: dict) -> str:
    """As launch_ros: name/value parameters go to a generated file, keyed by the node's full name
    when it is known, else ``/**``."""
    handle = tempfile.NamedTemporaryFile("w", prefix="launch_params_", suffix=".yaml", delete=False)
    with handle:
        yaml.dump({node_key: {"ros__parameters": params}}, handle, default_flow_style=False)
    if not _TEMP_FILES:
        atexit.register(lambda: [os.unlink(f) for f in _TEMP_FILES if os.path.exists(f)])
    _TEMP_FILES.append(handle.name)
    return handle.name


def prefix_namespace(base: Optional[str], ns: Optional[str]) -> Optional[str]:
    """launch_ros' rule: a relative namespace goes under the pushed one; the result is absolute."""
    if base is None and ns is None:
        return None
    if ns is None:
        combined = base
    elif not base or ns.startswith("/"):
        combined = ns
    else:
        combined = ("" if base == "/" else base) + "/" + ns
    if combined != "/":
        combined = combined.rstrip("/")
    return combined if combined.startswith("/") else "/" + combined


# -- actions -------------------------------------------------------------------------------------
@dataclass
class Process:
    name: str
    cmd: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    generated_params: Dict[str, dict] = field(default_factory=dict)  # params file -> its contents


COMMON_KEYS = {"if", "unless"}
ACTION_KEYS = {
    "arg": {"name", "default", "description", "choice"},
    "let": {"name", "value"},
    "node": {"pkg", "exec", "name", "namespace", "args", "ros_args", "param", "remap", "env", "output",
             "exec_name"},
    "executable": {"cmd", "name", "env", "cwd", "output"},
    "include": {"file", "arg"},
    "group": {"scoped", "forwarding", "keep", "children"},
    "push-ros-namespace": {"namespace"},
    "push_ros_namespace": {"namespace"},
}


class Planner:
    """Walks launch files the way launch visits them and collects the processes they start."""

    def __init__(self):
        self.processes: List[Process] = []
        self.declared: set = set()

    def load(self, path: str) -> list:
        if not os.path.isfile(path):
            raise LaunchError(f"launch file {path!r} not found")
        if not path.endswith((".yaml", ".yml")):
            raise LaunchError(f"{path}: only YAML launch files are supported by this runner")
        try:
            with open(path) as handle:
                doc = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise LaunchError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("launch"), list):
            raise LaunchError(f"{path}: expected a top-level 'launch:' list")
        return doc["launch"]

    def run_file(self, path: str, scope: Scope) -> None:
        path = os.path.abspath(path)
        self.run_actions(self.load(path), Scope(scope.configs, path))

    def run_actions(self, entries: list, scope: Scope) -> None:
        for entry in entries:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise LaunchError(f"{scope.file}: each launch entry must be a single action, got {entry!r}")
            (action, spec), = entry.items()
            what = f"{os.path.basename(scope.file)}: {action}"
            if action not in ACTION_KEYS:
                raise LaunchError(f"{what}: action not supported by this runner ({', '.join(sorted(ACTION_KEYS))})")
            if not isinstance(spec, dict):
                raise LaunchError(f"{what}: expected a mapping, got {spec!r}")
            unknown = set(spec) - ACTION_KEYS[action] - COMMON_KEYS
            if unknown:
                raise LaunchError(f"{what}: attributes {sorted(unknown)} not supported by this runner")
            if "if" in spec and "unless" in spec:
                raise LaunchError(f"{what}: if and unless cannot be used together")
            if "if" in spec and not condition(spec["if"], scope, f"{what} if"):
                continue
            if "unless" in spec and condition(spec["unless"], scope, f"{what} unless"):
                continue
            getattr(self, "_" + action.replace("-", "_"))(spec, scope, what)

    def _arg(self, spec, scope: Scope, what):
        name = substitute(spec.get("name"), scope, f"{what} name")
        self.declared.add(name)
        if name not in scope.configs:
            if "default" not in spec:
                description = spec.get("description", "")
                raise LaunchError(f"required launch argument {name!r} not given"
                                  + (f" ({description})" if description else ""))
            scope.configs[name] = substitute(spec["default"], scope, f"{what} {name} default")
        choices = [substitute(c.get("value"), scope, f"{what} choice") for c in spec.get("choice", [])]
        if choices and scope.configs[name] not in choices:
            raise LaunchError(f"launch argument {name}:={scope.configs[name]!r} not one of {choices}")

    def _let(self, spec, scope: Scope, what):
        scope.configs[substitute(spec.get("name"), scope, f"{what} name")] = substitute(
            spec.get("value"), scope, f"{what} value")

    def _include(self, spec, scope: Scope, what):
        path = substitute(spec.get("file"), scope, f"{what} file")
        given = {}
        for item in spec.get("arg", []):
            given[substitute(item.get("name"), scope, f"{what} arg name")] = substitute(
                item.get("value"), scope, f"{what} arg value")
        entries = self.load(path)
        for entry in entries:  # launch's up-front check: unconditional required arguments
            decl = entry.get("arg") if isinstance(entry, dict) else None
            if isinstance(decl, dict) and "default" not in decl and not COMMON_KEYS & set(decl) \
                    and decl.get("name") not in given:
                raise LaunchError(f"{what} {path}: missing required argument {decl.get('name')!r}")
        scope.configs.update(given)  # not scoped: launch sets them in the including scope
        self.run_actions(entries, Scope(scope.configs, os.path.abspath(path)))

    def _group(self, spec, scope: Scope, what):
        scoped = boolean_attr(spec, "scoped", True, what)
        forwarding = boolean_attr(spec, "forwarding", True, what)
        keep = {substitute(k.get("name"), scope, f"{what} keep"): substitute(k.get("value"), scope, f"{what} keep")
                for k in spec.get("keep", [])}
        if not scoped:
            scope.configs.update(keep)
            self.run_actions(spec.get("children", []), scope)
            return
        inner = dict(scope.configs) if forwarding else {}
        inner.update(keep)
        self.run_actions(spec.get("children", []), Scope(inner, scope.file))

    def _push_ros_namespace(self, spec, scope: Scope, what):
        namespace = substitute(spec.get("namespace"), scope, f"{what} namespace")
        scope.configs["ros_namespace"] = prefix_namespace(scope.configs.get("ros_namespace"), namespace)

    def _env(self, spec, scope: Scope, what) -> Dict[str, str]:
        return {substitute(e.get("name"), scope, f"{what} env name"): substitute(e.get("value"), scope,
                                                                                 f"{what} env value")
                for e in spec.get("env", [])}

    def _executable(self, spec, scope: Scope, what):
        cmd = command_line(spec.get("cmd"), scope, f"{what} cmd")
        if not cmd:
            raise LaunchError(f"{what}: empty cmd")
        name = substitute(spec["name"], scope, f"{what} name") if "name" in spec else os.path.basename(cmd[0])
        cwd = substitute(spec["cwd"], scope, f"{what} cwd") if "cwd" in spec else None
        self.processes.append(Process(name, cmd, self._env(spec, scope, what), cwd))

    def _node(self, spec, scope: Scope, what):
        exe = substitute(spec.get("exec"), scope, f"{what} exec")
        if "pkg" in spec:
            pkg = substitute(spec["pkg"], scope, f"{what} pkg")
            binary = os.path.join(find_pkg_prefix(pkg), "lib", pkg, exe)
            if not os.path.isfile(binary):
                raise LaunchError(f"executable {exe!r} of package {pkg!r} not found at {binary}")
        else:
            binary = exe
        cmd = [binary, *(command_line(spec["args"], scope, f"{what} args") if "args" in spec else [])]
        if "ros_args" in spec:
            cmd += ["--ros-args", *command_line(spec["ros_args"], scope, f"{what} ros_args")]
        cmd.append("--ros-args")
        name = substitute(spec["name"], scope, f"{what} name") if "name" in spec else None
        if name is not None:
            cmd += ["-r", f"__node:={name}"]
        own_ns = substitute(spec["namespace"], scope, f"{what} namespace") if "namespace" in spec else None
        namespace = prefix_namespace(scope.configs.get("ros_namespace"), own_ns)
        if namespace is not None:
            cmd += ["-r", f"__ns:={namespace}"]
        node_key = (namespace.rstrip("/") + "/" + name) if name is not None and namespace is not None else "/**"
        generated = {}
        for param in spec.get("param", []):
            if "from" in param:
                if set(param) != {"from"}:
                    raise LaunchError(f"{what}: a param 'from' entry takes no other keys, got {sorted(param)}")
                path = substitute(param["from"], scope, f"{what} param from")
                if not os.path.isfile(path):
                    raise LaunchError(f"{what}: parameter file {path!r} not found")
                cmd += ["--params-file", path]
            else:
                params = nested_params([param], scope, what)
                path = write_params_file(node_key, params)
                generated[path] = params
                cmd += ["--params-file", path]
        for remap in spec.get("remap", []):
            cmd += ["-r", f"{substitute(remap.get('from'), scope, what)}:={substitute(remap.get('to'), scope, what)}"]
        label = substitute(spec["exec_name"], scope, what) if "exec_name" in spec else os.path.basename(exe)
        self.processes.append(Process(label, cmd, self._env(spec, scope, what), generated_params=generated))


def plan(path: str, arguments: Dict[str, str]) -> List[Process]:
    """Resolve a launch file into the processes it starts (nothing is started)."""
    planner = Planner()
    planner.run_file(path, Scope(dict(arguments), os.path.abspath(path)))
    undeclared = set(arguments) - planner.declared
    if undeclared:
        raise LaunchError(f"{os.path.basename(path)}: unknown launch arguments {sorted(undeclared)} "
                          f"(declared: {sorted(planner.declared)})")
    return planner.processes


def declared_arguments(path: str) -> List[dict]:
    """The top-level ``arg`` declarations of a file (``--show-args``)."""
    return [entry["arg"] for entry in Planner().load(path) if isinstance(entry, dict) and "arg" in entry]


def package_launch_file(package: str, filename: str) -> str:
    """``ros2 launch PACKAGE FILE``: the one file of that name under the package's share folder."""
    share = os.path.join(find_pkg_prefix(package), "share", package)
    found = [os.path.join(root, filename) for root, _, files in os.walk(share) if filename in files]
    if not found:
        raise LaunchError(f"file {filename!r} not found in the share folder of package {package!r} ({share})")
    if len(found) > 1:
        raise LaunchError(f"file {filename!r} found more than once in package {package!r}: {found}")
    return found[0]


# -- running -------------------------------------------------------------------------------------
def run(processes: List[Process], timeout: Optional[float] = None, stop_all_on_exit: bool = False) -> int:
    """Start every process and wait; as ``ros2 launch``, the others keep running when one exits
    (unless ``stop_all_on_exit``). Returns the first non-zero exit code of a process that ended
    by itself, else 0."""
    # Started with SIGINT ignored (a background job of a script), the runner would ignore the stop
    # request and pass the ignore on to every node; ros2 launch handles SIGINT whatever it inherits.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    children = []
    for proc in processes:
        print(f"[launch] {proc.name}: {' '.join(shlex.quote(c) for c in proc.cmd)}", flush=True)
        try:
            child = subprocess.Popen(proc.cmd, env={**os.environ, **proc.env}, cwd=proc.cwd)
        except OSError as exc:
            print(f"[launch] {proc.name}: cannot start: {exc}", flush=True)
            _shutdown([c for _, c in children])
            return 1
        children.append((proc, child))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    deadline = time.monotonic() + timeout if timeout else None
    code, reported = 0, set()
    try:
        while not stopping:
            for proc, child in children:
                if child.poll() is not None and child.pid not in reported:
                    reported.add(child.pid)
                    print(f"[launch] {proc.name} exited with code {child.returncode}", flush=True)
                    code = code or child.returncode
                    if stop_all_on_exit:
                        stopping.append(proc.name)
            if len(reported) == len(children) or (deadline and time.monotonic() > deadline):
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    _shutdown([c for _, c in children])
    return code


def _shutdown(children, grace_s: float = 5.0) -> None:
    """SIGINT, then SIGTERM after ``grace_s``, then SIGKILL after as long again (as launch does)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [c for c in children if c.poll() is None]
        for child in alive:
            child.send_signal(sig)
        end = time.monotonic() + grace_s
        for child in alive:
            try:
                child.wait(max(0.05, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


# a bare file name given to launched(): this source tree's launch/ folder, else the installed package
SOURCE_LAUNCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
PACKAGE = "edge_cloud_vlm"


@contextmanager
def launched(launch_file: str, args: dict, env: dict, log_path=None, stop_all_on_exit: bool = True):
    """Run a launch file (a path, or a file name of this project's launch/ folder) through this
    runner in a child process group (tests, the demo); stop it and all its processes afterwards.
    Yields the runner's Popen."""
    if not os.path.isfile(launch_file):
        local = os.path.join(SOURCE_LAUNCH_DIR, launch_file)
        target = [local] if os.path.isfile(local) else [PACKAGE, launch_file]
    else:
        target = [launch_file]
    cmd = [sys.executable, "-m", "ros_tools.launch_runner", *target,
           *[f"{k}:={v}" for k, v in args.items()], *(["--stop-all-on-exit"] if stop_all_on_exit else [])]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log_path:
            log.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch_runner", description="Run a ROS 2 YAML launch file like `ros2 launch` (launch_ros semantics).",
        usage="launch_runner [options] (FILE | PACKAGE FILE) [name:=value ...]")
    parser.add_argument("target", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--print", action="store_true", help="print the resolved commands and exit")
    parser.add_argument("-s", "--show-args", action="store_true", help="list the file's launch arguments and exit")
    parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    parser.add_argument("--stop-all-on-exit", action="store_true",
                        help="stop every process when one exits (ros2 launch keeps the others running)")
    args = parser.parse_intermixed_args(argv)
    positional = [a for a in args.target if ":=" not in a]
    arguments = [a for a in args.target if ":=" in a]
    try:
        if len(positional) == 1:
            path = positional[0]
        elif len(positional) == 2:
            path = package_launch_file(*positional)
        else:
            parser.error("expected a launch file, or a package and a launch file name")
        if args.show_args:
            for decl in declared_arguments(path):
                default = f" (default: {decl['default']!r})" if "default" in decl else " (required)"
                print(f"  {decl.get('name')}{default}  {decl.get('description', '')}".rstrip())
            return 0
        processes = plan(path, dict(a.split(":=", 1) for a in arguments))
    except LaunchError as exc:
        print(f"launch_runner: {exc}", file=sys.stderr)
        return 2
    if args.print:
        for proc in processes:  # generated parameter files are deleted on exit: show their contents
            print(" ".join(shlex.quote(c) for c in proc.cmd))
            for path, params in proc.generated_params.items():
                print(f"#   {path}: {yaml.safe_dump(params, default_flow_style=True).strip()}")
        return 0
    return run(processes, args.timeout, args.stop_all_on_exit)


if __name__ == "__main__":
    sys.exit(main())
