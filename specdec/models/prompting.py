"""Instruction prompts: the operator's instruction placed into a configured prompt template.

The Go2 pair in ``models/`` was trained on bare instructions ("go to the red ball") and needs
no template. A pretrained VLM (Qwen2-VL, SmolVLM) has never seen the action language, so its
prompt must state it: the presets in ``config/presets/`` carry a ``prompt_template`` that
spells out the grammar of ``docs/action_language.md`` with ``{instruction}`` where the
instruction goes. The template is applied on the edge before the session starts; the cloud
tokenizes the resulting prompt exactly like the edge, so draft and target still condition on
the same text. A prompt cannot force valid output - the controller's parser still rejects
anything outside the grammar (and grammar-constrained decoding, when enabled, prevents it).

A template may also hold ``{last_move}`` once: ``ok``, or ``blocked`` when the controller stopped
the robot's last motion as stalled (``ActionStatus.stop_cause == stall``). A front camera does not
show an obstacle beside or below it; a model trained with this word knows its last step ran into
one (the Go2 pair's ``LAST_MOVE_TEMPLATE``).

A template may also hold ``{turned}`` once: ``around`` when the robot has turned in place through
a full circle (:data:`TURNED_AROUND_DEG`) since it last walked (:func:`turned_after` keeps the
count from the actions it ran), else ``little``. One frame cannot tell a policy that it has
already looked everywhere from here; with this word a model learns to walk on to a new place to
look from instead of turning for ever in front of what hides its object.

A model folder trained on a template carries it in ``prompt_template.txt``
(:func:`folder_prompt_template`); a node uses it unless its own ``prompt_template`` is set.
"""

from __future__ import annotations

import os

PLACEHOLDER = "{instruction}"
LAST_MOVE = "{last_move}"
LAST_MOVE_WORDS = {False: "ok", True: "blocked"}
TURNED = "{turned}"
TURNED_WORDS = {False: "little", True: "around"}
TURNED_AROUND_DEG = 360.0
TURN_VERBS = ("left", "right")
WALK_VERBS = ("forward", "backward", "strafe_left", "strafe_right")
TEMPLATE_FILE = "prompt_template.txt"


def check_prompt_template(template: str) -> str:
    """Return ``template`` if it is usable: empty (the instruction as it is) or containing
    ``{instruction}`` exactly once; otherwise raise ValueError naming the problem."""
    if template and template.count(PLACEHOLDER) != 1:
        raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once "
                         f"(found {template.count(PLACEHOLDER)} times)")
    for word in (LAST_MOVE, TURNED):
        if template.count(word) > 1:
            raise ValueError(f"prompt_template may contain {word} at most once (found {template.count(word)} times)")
    return template


def turned_after(turned_deg: float, verb: str, value: float) -> float:
    """Degrees turned in place since the robot last walked, after it ran ``verb value``: a turn
    adds its magnitude, a translation starts the count over, ``stop`` and ``done`` leave it."""
    if verb in TURN_VERBS:
        return turned_deg + abs(float(value))
    return 0.0 if verb in WALK_VERBS else turned_deg


def apply_prompt_template(template: str, instruction: str, last_move_blocked: bool = False,
                          turned_deg: float = 0.0) -> str:
    """The prompt for ``instruction``: the template with ``{last_move}``, ``{turned}`` and then
    ``{instruction}`` replaced (plain text replacement, so braces in the template or the
    instruction need no escaping)."""
    if not check_prompt_template(template):
        return instruction
    return (template.replace(LAST_MOVE, LAST_MOVE_WORDS[bool(last_move_blocked)])
            .replace(TURNED, TURNED_WORDS[turned_deg >= TURNED_AROUND_DEG]).replace(PLACEHOLDER, instruction))


def folder_prompt_template(folder: str) -> str:
    """The template a model folder was trained on (its ``prompt_template.txt``; '' when it has
    none, or ``folder`` is a hub id)."""
    path = os.path.join(folder, TEMPLATE_FILE)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return check_prompt_template(f.read())
