"""Instruction prompts: the operator's instruction placed into a configured prompt template.

The Go2 pair in ``models/`` was trained on bare instructions ("go to the red ball") and needs
no template. A pretrained VLM (Qwen2-VL, SmolVLM) has never seen the action language, so its
prompt must state it: the presets in ``config/presets/`` carry a ``prompt_template`` that
spells out the grammar of ``docs/action_language.md`` with ``{instruction}`` where the
instruction goes. The template is applied on the edge before the session starts; the cloud
tokenizes the resulting prompt exactly like the edge, so draft and target still condition on
the same text. A prompt cannot force valid output - the controller's parser still rejects
anything outside the grammar (and grammar-constrained decoding, when enabled, prevents it).
"""

from __future__ import annotations

PLACEHOLDER = "{instruction}"


def check_prompt_template(template: str) -> str:
    """Return ``template`` if it is usable: empty (the instruction as it is) or containing
    ``{instruction}`` exactly once; otherwise raise ValueError naming the problem."""
    if template and template.count(PLACEHOLDER) != 1:
        raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once "
                         f"(found {template.count(PLACEHOLDER)} times)")
    return template


def apply_prompt_template(template: str, instruction: str) -> str:
    """The prompt for ``instruction``: the template with ``{instruction}`` replaced (plain text
    replacement, so braces in the template or the instruction need no escaping)."""
    if not check_prompt_template(template):
        return instruction
    return template.replace(PLACEHOLDER, instruction)
