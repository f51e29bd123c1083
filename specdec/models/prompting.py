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

A model folder trained on a template carries it in ``prompt_template.txt``
(:func:`folder_prompt_template`); a node uses it unless its own ``prompt_template`` is set.
"""

from __future__ import annotations

import os

PLACEHOLDER = "{instruction}"
LAST_MOVE = "{last_move}"
LAST_MOVE_WORDS = {False: "ok", True: "blocked"}
TEMPLATE_FILE = "prompt_template.txt"


def check_prompt_template(template: str) -> str:
    """Return ``template`` if it is usable: empty (the instruction as it is) or containing
    ``{instruction}`` exactly once; otherwise raise ValueError naming the problem."""
    if template and template.count(PLACEHOLDER) != 1:
        raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once "
                         f"(found {template.count(PLACEHOLDER)} times)")
    if template.count(LAST_MOVE) > 1:
        raise ValueError(f"prompt_template may contain {LAST_MOVE} at most once "
                         f"(found {template.count(LAST_MOVE)} times)")
    return template


def apply_prompt_template(template: str, instruction: str, last_move_blocked: bool = False) -> str:
    """The prompt for ``instruction``: the template with ``{last_move}`` and then ``{instruction}``
    replaced (plain text replacement, so braces in the template or the instruction need no
    escaping)."""
    if not check_prompt_template(template):
        return instruction
    return template.replace(LAST_MOVE, LAST_MOVE_WORDS[bool(last_move_blocked)]).replace(PLACEHOLDER, instruction)


def folder_prompt_template(folder: str) -> str:
    """The template a model folder was trained on (its ``prompt_template.txt``; '' when it has
    none, or ``folder`` is a hub id)."""
    path = os.path.join(folder, TEMPLATE_FILE)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return check_prompt_template(f.read())
