"""Would the text feature draft agree more if it saw the target's states of the prompt? (issue 14, item 4)

The draft is fed zeros at prompt positions: the edge drafts the first block before the cloud has
prefilled. From the second round on the cloud could send the prompt's states once (1,152 bytes a
prompt token). This measures what that would buy, teacher-forced, before any protocol work:

1. the target's final normed states at the prompt positions of the second stage's labels (the
   cached ``self-8000-prose2000-bf16``, from ``--finetune``; the target in bfloat16, as they were
   labelled) and of the evaluation prompts' labels (float32);
2. the committed draft scored with the prompt's states in (it never trained on them);
3. the second stage trained again from the first stage's weights with the prompt's states in
   (``FINETUNE_RECIPE`` otherwise), scored with them and with zeros. The draft is written to
   ``--save`` in the committed format.

Scores: per step of a block (0 ... 3 tokens into it, as decoding feeds the draft) and the drafts a
greedy verifier keeps from a block of 4 started at every position, chat and prose apart
(:func:`training.text.feature_draft.evaluate` with ``unroll=4``).

    python scripts/experiments/feature_draft_prompt_states.py --threads 2 --save /tmp/prompt-state-draft

2026-12-05, 2-core AMD EPYC (bfloat16 autocast): prompt states 17 s (evaluation) and 234 s (training
labels), training 1,196 s. Committed draft (zeros): chat 1.288 drafts kept per block, prose 2.329;
with the prompt's states in: 1.186 / 2.189. Trained with them: 1.268 / 2.257 with them, 1.185 /
2.266 with zeros; held-out split of its own data 66.6 % (committed 67.0 %). The prompt's states
do not help: the draft reads the prompt well enough from its tokens, and the state it needs is the
last one, which it gets already.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from feature_draft_new_data import eval_source, score, unpack  # noqa: E402
from specdec.models import artefacts  # noqa: E402
from training.teacher import labelling_model  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import cached_labels  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", default="", help="write the draft trained with prompt states here")
    args = parser.parse_args()
    set_threads(args.threads)
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    work = os.path.join(artefacts.cache_root(), "_work")
    committed = artefacts.committed_text_feature_draft_dir()
    evaluation = cached_labels(eval_source(), target, tokenizer, [], os.path.join(work, "experiment-eval-prompts.pt"))
    eseqs, estates, eprompt = unpack(evaluation, target)
    t0 = time.time()
    fd.add_prompt_states(target, eseqs, eprompt, estates)
    print(json.dumps({"eval_prompt_states_s": round(time.time() - t0, 1)}), flush=True)

    def scored(draft, head_w, prompt_states: bool) -> dict:
        return score(draft, (eseqs, estates, eprompt), evaluation.kinds, head_w, prompt_states)

    draft, head_ids, record = fd.load_committed(committed, target)
    head_w = target.lm_head.weight.detach().float()[head_ids]
    print(json.dumps({"committed_zeros": scored(draft, head_w, False),
                      "committed_prompt_states": scored(draft, head_w, True)}), flush=True)

    recipe = fd.FINETUNE_RECIPE
    labels = cached_labels(None, None, None, [], os.path.join(work, "self-8000-prose2000-bf16.pt"))
    seqs = [s.long() for s in labels.sequences]
    prompt_lens = list(labels.prompt_lens)
    states = fd.target_states(labels, target.config.hidden_size)
    t0 = time.time()
    fd.add_prompt_states(labelling_model(target, recipe["label_dtype"]), seqs, prompt_lens, states, batch=128)
    print(json.dumps({"train_prompt_states_s": round(time.time() - t0, 1)}), flush=True)
    draft, head_ids, record = fd.load_committed(committed, target, stage1=True)
    torch.manual_seed(recipe["seed"])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(recipe["autocast"]), cache_enabled=False):
        stats = fd.train(draft, seqs, states, prompt_lens, head_ids, epochs=recipe["epochs"], lr=recipe["lr"],
                         batch=recipe["batch"], held_out=recipe["held_out"], seed=recipe["seed"],
                         lm_head=target.lm_head.weight, prompt_states=True, log=lambda m: print(m, flush=True))
    if args.save:
        fd.save_committed(draft, target, tokenizer, head_ids, args.save,
                          {"recipe": record["recipe"], "finetune": dict(recipe, prompt_states=True),
                           "training_finetune": stats})
    print(json.dumps({"train_seconds": stats["train_seconds"], "held_out_after": stats["held_out_after"],
                      "trained_prompt_states": scored(draft, head_w, True),
                      "trained_zeros": scored(draft, head_w, False)}), flush=True)


if __name__ == "__main__":
    main()
