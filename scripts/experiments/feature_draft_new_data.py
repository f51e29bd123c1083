#!/usr/bin/env python3
"""Does the text feature draft generalise, and does new kind of data help it? Scored where the
benchmark decodes: on the held-out evaluation prompts (``models/smollm2_eval_prompts.json``,
hand-written chat questions and held-out prose), not on the recipe's held-out split, which
shares templates and topics with the training prompts.

1. Labels the evaluation prompts with the target (its greedy answers and final states).
2. Scores the committed draft on them, teacher-forced: agreement with the target's next token
   given the target's state (``exact``: what a block's first token sees) and given its own
   guesses (``own``: what the later tokens see), chat and prose apart.
3. Labels ``--new`` chat prompts - the second pool (templates and topics the recipe never saw) or,
   with ``--source self``, questions the target writes itself (sampled) - warm-starts the
   committed draft on them (``--epochs``, ``--lr``) and scores it again.

    python scripts/experiments/feature_draft_new_data.py --new 900 --threads 2

Labels are cached in ``.cache/models/_work/`` (900 prompts: ~10 min on 2 cores); nothing is
saved to ``models/``. 2026-12-03, 2 cores, ``--new 900``: the committed draft agrees (exact
inputs) 61.4 % on a training sample, 50.9 % on the recipe's held-out split, 44.2 % on
second-pool prompts and 38.6 % (chat) / 45.8 % (prose) on the evaluation prompts. Warm-started on
the 900 second-pool prompts (230 s) it learns them (44.2 -> 50.2 %) but moves little where it is
measured: chat 38.6 -> 39.4 %, prose 45.8 -> 45.8 % (own inputs 41.4 -> 39.7 %). ``--source self``
(900 questions the target wrote, 5 min; 261 s training): its own held-out 43.0 -> 46.3 %, chat
38.6 -> 39.5 %, prose 45.8 -> 46.2 % (own inputs 41.4 -> 38.9 %). Neither kind of new prompt moves
the evaluation prompts by more than a point at this scale. 2026-12-04, ``--new 0``, the draft
trained on a GPU at ten times the data (every prompt of both pools and all the prose): exact inputs
chat 57.5 %, prose 78.7 % (own inputs 51.1 % / 76.6 %) - the draft of 2026-11 gave 38.6 % / 45.8 %
(32.6 % / 41.4 %) in the same run. 2026-12-04, ``--source self --new 5000 --prose 1500
--label-dtype bfloat16 --label-batch 128`` (the target in bfloat16 on the CPU's AMX units: 30 min
for the questions, 18 min for the answers): the labels of the committed draft's second stage
(``training.text.feature_draft --finetune``, see its model card): chat 57.5 -> 59.0 %, prose
78.7 -> 79.4 % (own inputs 51.1 -> 54.1 % / 76.6 -> 78.1 %).

Scores also come as decoding runs the draft (``steps``: agreement 0 ... 3 tokens into a block,
target-fed cache up to the block's start; ``accepted_per_block``: the drafts a greedy verifier keeps
from a block of 4 started at every position). 2026-12-05, ``--new 0``: the committed draft chat
59.9 / 53.5 / 51.4 / 49.5 %, 1.288 per block; prose 79.6 / 76.9 / 73.9 / 73.5 %, 2.329 per block.
The second stage trained on decoding's view instead (``--finetune --step-weights 1 1 0.5 0.25``,
``--draft`` that folder): chat 59.8 / 53.8 / 52.3 / 50.8 %, 1.290; prose 79.2 / 76.6 / 74.1 / 74.2 %,
2.308 - the same.
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

from specdec.models import artefacts  # noqa: E402
from training.text import corpus  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import PromptSource, cached_labels, prose_prompts  # noqa: E402
from training.teacher import labelling_model  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402

FIRST_POOL = 1875  # chat prompts of the committed recipe (training.text.feature_draft.DEFAULT_RECIPE)


def eval_source() -> PromptSource:
    with open(os.path.join(ROOT, "models", "smollm2_eval_prompts.json"), encoding="utf-8") as handle:
        prompts = [corpus.Prompt(p["kind"], p["text"], p["source"]) for p in json.load(handle)]
    return PromptSource(prompts, new_tokens_chat=128, new_tokens_prose=64, name="eval")


def unpack(labels, target) -> tuple:
    seqs = [s.long() for s in labels.sequences]
    return seqs, fd.target_states(labels, target.config.hidden_size), list(labels.prompt_lens)


def score(draft, data, kinds, head_w, prompt_states: bool = False) -> dict:
    """Chat and prose apart; ``prompt_states``: the prompt's positions fed the target's states
    (``data``'s states must hold them: scripts/experiments/feature_draft_prompt_states.py)."""
    seqs, states, prompt_lens = data
    out = {}
    for kind in ("chat", "prose"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        r = fd.evaluate(draft, seqs, states, prompt_lens, rows, head_w, unroll=4, prompt_states=prompt_states)
        out[kind] = {"exact": r["agreement_exact_input"], "own": r["agreement_own_input"], "positions": r["positions"],
                     "steps": r["agreement_steps"], "accepted_per_block": r["accepted_per_block"]}
    n = sum(v["positions"] for v in out.values())
    out["all_exact"] = round(sum(v["exact"] * v["positions"] for v in out.values() if isinstance(v, dict)) / n, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=900, help="second-pool chat prompts to warm-start on (0: score only)")
    parser.add_argument("--source", choices=("pool2", "self"), default="pool2",
                        help="pool2: the second pool of templated prompts; self: prompts the target writes itself")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the target's precision while it writes questions and labels the new data (bfloat16: "
                             "the CPU's AMX units; the evaluation prompts are always labelled in float32)")
    parser.add_argument("--label-batch", type=int, default=48, help="prompts the target answers at once")
    parser.add_argument("--prose", type=int, default=0, help="also this many training prose passages (replay)")
    parser.add_argument("--batch", type=int, default=8, help="training batch (sequences)")
    parser.add_argument("--autocast", action="store_true", help="train under bfloat16 autocast (AMX)")
    parser.add_argument("--save", default="", help="write the warm-started draft here (committed format)")
    parser.add_argument("--draft", default=os.path.join(ROOT, "models", "smollm2-135m-feature-draft"),
                        help="the committed-format draft to score and start from")
    args = parser.parse_args()
    set_threads(args.threads)
    work = os.path.join(artefacts.cache_root(), "_work")
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    draft, head_ids, record = fd.load_committed(args.draft, target)
    head_w = target.lm_head.weight.detach().float()[head_ids]

    evaluation = eval_source()
    labels = cached_labels(evaluation, target, tokenizer, [], os.path.join(work, "experiment-eval-prompts.pt"))
    eval_data = unpack(labels, target)
    before = score(draft, eval_data, labels.kinds, head_w)
    print(json.dumps({"draft": args.draft, "recipe_held_out": record["training"]["held_out_after"],
                      "eval_prompts": before}), flush=True)
    if args.new <= 0:
        return

    labeller = labelling_model(target, args.label_dtype)
    tag = "" if args.label_dtype == "float32" else "-bf16"
    if args.source == "self":
        cache = os.path.join(work, f"experiment-self-{args.new}{tag}-prompts.json")
        if os.path.isfile(cache):
            with open(cache, encoding="utf-8") as handle:
                texts = json.load(handle)
        else:
            texts = corpus.self_written_questions(labeller, tokenizer, args.new,
                                                  exclude=[p.text for p in evaluation.prompts], batch=args.label_batch)
            with open(cache, "w", encoding="utf-8") as handle:
                json.dump(texts, handle, indent=0)
        print(json.dumps({"self_written_prompts": len(texts), "examples": texts[:8]}), flush=True)
    else:
        texts = corpus.chat_train_prompts(FIRST_POOL + args.new)[FIRST_POOL:]
    corpus.check_disjoint(texts, evaluation.prompts)
    prompts = [corpus.Prompt("chat", t, args.source) for t in texts]
    prompts += prose_prompts(args.prose)
    new = PromptSource(prompts, new_tokens_chat=128, new_tokens_prose=64, batch_size=args.label_batch, name=args.source)
    t0 = time.time()
    new_labels = cached_labels(new, labeller, tokenizer, [],
                               os.path.join(work, f"experiment-{args.source}-{args.new}-prose{args.prose}{tag}.pt"))
    print(json.dumps({"labelled_sequences": len(new_labels.sequences), "positions": len(new_labels),
                      "label_seconds": round(time.time() - t0, 1), "label_dtype": args.label_dtype}), flush=True)
    del labeller
    seqs, states, prompt_lens = unpack(new_labels, target)
    new_ids = torch.cat([s[p:] for s, p in zip(seqs, prompt_lens)])
    coverage = float(torch.isin(new_ids, head_ids).float().mean())
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast, cache_enabled=False):
        stats = fd.train(draft, seqs, states, prompt_lens, head_ids, epochs=args.epochs, lr=args.lr,
                         batch=args.batch, held_out=48, seed=0, lm_head=target.lm_head.weight.float(),
                         log=lambda m: print(m, flush=True))
    if args.save:
        fd.save_committed(draft, target, tokenizer, head_ids, args.save,
                          {**{k: v for k, v in record.items() if k in ("recipe", "training", "data")},
                           "finetune": {k: v for k, v in vars(args).items() if k != "save"}, "training_finetune": stats})
    after = score(draft, eval_data, labels.kinds, head_w)
    print(json.dumps({"draft": f"committed + {len(texts)} chat prompts ({args.source})", "epochs": args.epochs,
                      "lr": args.lr, "head_coverage_new": round(coverage, 4),
                      "new_held_out_before": stats["held_out_before"]["agreement_exact_input"],
                      "new_held_out_after": stats["held_out_after"]["agreement_exact_input"],
                      "train_seconds": stats["train_seconds"], "eval_prompts": after}), flush=True)


if __name__ == "__main__":
    main()
