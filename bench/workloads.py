"""The two benchmark workloads: the SmolLM2 text pair and the Go2 VLM pair.

Models and held-out prompts are found through :mod:`specdec.models.artefacts` (paths only), so
the benchmark runs where the training code (``training/``) is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Workload:
    name: str
    draft: str  # model folders
    target: str
    exits: Optional[str]
    items: List[Tuple[str, Optional[np.ndarray]]] = field(default_factory=list)  # (prompt, image)
    max_new_tokens: int = 32
    description: str = ""
    prompts_file: Optional[str] = None  # where the items came from, when a file
    feature_draft: Optional[str] = None  # a draft conditioned on the target's states (text pair)

    def missing(self) -> List[str]:
        return [p for p in (self.draft, self.target, self.exits, self.prompts_file, self.feature_draft)
                if p and not os.path.exists(p)]


def text_workload(n_prompts: int, max_new_tokens: int) -> Workload:
    """SmolLM2-135M-Instruct target, the project's distilled draft, held-out chat + prose prompts."""
    from specdec.models import artefacts

    path = artefacts.text_eval_prompts_path()
    prompts = []
    if os.path.isfile(path):
        with open(path) as handle:
            prompts = json.load(handle)
    # alternate chat and prose so small prompt counts still cover both
    chat = [p["text"] for p in prompts if p["kind"] == "chat"]
    prose = [p["text"] for p in prompts if p["kind"] == "prose"]
    mixed = [x for pair in zip(chat, prose) for x in pair] + chat[len(prose):] + prose[len(chat):]
    return Workload("text", artefacts.text_draft_dir(), artefacts.text_target_dir(),
                    artefacts.committed_text_exits_path(), [(p, None) for p in mixed[:n_prompts]], max_new_tokens,
                    "SmolLM2-135M-Instruct target / distilled draft; held-out chat and prose prompts", path,
                    feature_draft=artefacts.text_feature_draft_dir())


def with_feature_draft(workload: Workload) -> Workload:
    """The same workload drafted by its draft conditioned on the target's states."""
    return dataclasses.replace(workload, draft=workload.feature_draft,
                               description=workload.description.replace("distilled draft",
                                                                        "draft conditioned on the target's states"))


def go2_workload(n_frames: int, max_new_tokens: int, template: Optional[str] = None) -> Workload:
    """The Go2 VLM pair on simulator frames with their instructions: every other decision of
    expert rollouts on evaluation seeds (not the training data's), so the frames cover searching,
    turning, walking, avoiding and arriving, not only start poses. The prompts are ``template``
    around the instruction (None: the committed pair's own, specdec.models.prompting)."""
    from go2_sim.dataset import rollouts
    from specdec.models.artefacts import go2_pair_paths
    from specdec.models.prompting import folder_prompt_template

    paths = go2_pair_paths()
    template = folder_prompt_template(paths.target) if template is None else template
    items = []
    for k, (env, *_, image, _info, _label) in enumerate(
            rollouts(n_frames, seed=BENCH_GO2_SEED, perturb_prob=0.25, with_info=True)):
        if k % 2 == 0:
            items.append((env.prompt(template), np.ascontiguousarray(image[:, :, ::-1])))  # camera bgr8 -> RGB
        if len(items) >= n_frames:
            break
    return Workload("go2", paths.draft, paths.target, paths.exits, items, max_new_tokens,
                    "Go2 VLM pair (Qwen2-VL classes) on simulator frames of expert rollouts, "
                    "'go to the <object>' instructions")


BENCH_GO2_SEED = 777_777  # rollout seeds of the benchmark frames (training uses seed*100003+chunk)


def tiny_workload(n_items: int, max_new_tokens: int) -> Workload:
    """A random-init tiny Qwen2-VL pair (plumbing smoke test; its speed numbers mean nothing), in a
    temporary folder removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    import torch

    from specdec.models.early_exit import EarlyExitHeads
    from specdec.models.tiny import tiny_pair

    torch.manual_seed(0)
    root = tempfile.mkdtemp(prefix="bench_tiny_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    draft, target = tiny_pair("qwen2_vl", noise=0.1, draft_image_size=28)
    for name, adapter in (("draft", draft), ("target", target)):
        adapter.model.save_pretrained(os.path.join(root, name))
        adapter.processor.save_pretrained(os.path.join(root, name))
    exits = os.path.join(root, "target", "early_exit.safetensors")
    EarlyExitHeads(target.model, [1]).save(exits)
    rng = np.random.default_rng(0)
    items = [(f"go to the {c} ball", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
             for c in ("red", "green", "blue", "yellow", "red", "green")[:n_items]]
    return Workload("tiny", os.path.join(root, "draft"), os.path.join(root, "target"), exits, items,
                    max_new_tokens, "random-init tiny Qwen2-VL pair (plumbing check only)")


def build(name: str, items: int, max_new_tokens: int) -> Workload:
    """The workload called ``name`` ("text", "go2" or "tiny") with ``items`` inputs."""
    builders = {"text": text_workload, "go2": go2_workload, "tiny": tiny_workload}
    return builders[name](items, max_new_tokens)
