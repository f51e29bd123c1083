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
(32.6 % / 41.4 %) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from specdec.models import artefacts  # noqa: E402
from specdec.models.feature_draft import FeatureDraft  # noqa: E402
from training.text import corpus  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import PromptSource, cached_labels  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402

FIRST_POOL = 1875  # chat prompts of the committed recipe (training.text.feature_draft.DEFAULT_RECIPE)


def eval_source() -> PromptSource:
    with open(os.path.join(ROOT, "models", "smollm2_eval_prompts.json"), encoding="utf-8") as handle:
        prompts = [corpus.Prompt(p["kind"], p["text"], p["source"]) for p in json.load(handle)]
    return PromptSource(prompts, new_tokens_chat=128, new_tokens_prose=64, name="eval")


def load_committed(target) -> tuple:
    from safetensors.torch import load_file

    folder = os.path.join(ROOT, "models", "smollm2-135m-feature-draft")
    with open(os.path.join(folder, fd.DRAFT_CONFIG), encoding="utf-8") as handle:
        record = json.load(handle)
    draft = FeatureDraft.for_target(target, record["recipe"]["layers"]).float()
    draft.load_state_dict({k: v.float() for k, v in load_file(os.path.join(folder, "feature_draft.safetensors")).items()},
                          strict=False)
    head_ids = load_file(os.path.join(folder, fd.HEAD_IDS))["token_ids"].long()
    return draft.eval(), head_ids, record


# Asked of the target (sampled) to write questions of its own: worded as the target words them, not
# filled templates. The subject only spreads them over the world.
_ASK = "Write a question about {s} that a curious person might ask. Reply with the question only."
_SUBJECTS = ("home", "school", "work", "food", "travel", "nature", "science", "history", "art", "music",
             "sport", "health", "money", "technology", "animals", "writing", "language", "games", "family",
             "weather", "space", "the sea", "cities", "machines", "feelings", "plants", "words", "numbers")


def _question(text: str) -> str:
    """The question in a sampled reply ('A curious person might ask: "What ...?"' -> 'What ...?'), or ''."""
    quoted = re.findall(r'"([^"]{8,})"', text)
    text = quoted[0] if quoted else text.split(":", 1)[-1] if re.match(r"^[^?]{0,60}:", text) else text
    text = text.strip().split("\n")[0].strip()
    return text if text.endswith("?") and 12 <= len(text) <= 200 else ""


def self_written_prompts(target, tokenizer, n: int, exclude=(), seed: int = 0, batch: int = 32) -> list:
    """``n`` distinct questions the target writes itself (temperature 0.8, top-p 0.95, <= 40 tokens),
    none containing a text of ``exclude`` (the evaluation prompts: it does write some of them)."""
    from transformers import set_seed

    set_seed(seed)
    subjects = list(_SUBJECTS) + list(corpus._TOPICS)
    tokenizer.padding_side = "left"
    out, seen, i = [], set(), 0
    while len(out) < n and i < 10 * n:
        asks = [_ASK.format(s=subjects[(i + b) % len(subjects)]) for b in range(batch)]
        i += batch
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": a}], tokenize=False,
                                               add_generation_prompt=True) for a in asks]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = target.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=40,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            text = _question(tokenizer.decode(row, skip_special_tokens=True))
            if text and text not in seen and not any(e in text for e in exclude):
                seen.add(text)
                out.append(text)
    tokenizer.padding_side = "right"
    return out[:n]


def unpack(labels, target) -> tuple:
    seqs = [s.long() for s in labels.sequences]
    return seqs, fd.target_states(labels, target.config.hidden_size), list(labels.prompt_lens)


def score(draft, data, kinds, head_w) -> dict:
    seqs, states, prompt_lens = data
    out = {}
    for kind in ("chat", "prose"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        r = fd.evaluate(draft, seqs, states, prompt_lens, rows, head_w)
        out[kind] = {"exact": r["agreement_exact_input"], "own": r["agreement_own_input"], "positions": r["positions"]}
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
    args = parser.parse_args()
    set_threads(args.threads)
    work = os.path.join(artefacts.cache_root(), "_work")
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    draft, head_ids, record = load_committed(target)
    head_w = target.lm_head.weight.detach().float()[head_ids]

    evaluation = eval_source()
    labels = cached_labels(evaluation, target, tokenizer, [], os.path.join(work, "experiment-eval-prompts.pt"))
    eval_data = unpack(labels, target)
    before = score(draft, eval_data, labels.kinds, head_w)
    print(json.dumps({"draft": "committed", "recipe_held_out": record["training"]["held_out_after"],
                      "eval_prompts": before}), flush=True)
    if args.new <= 0:
        return

    if args.source == "self":
        cache = os.path.join(work, f"experiment-self-{args.new}-prompts.json")
        if os.path.isfile(cache):
            with open(cache, encoding="utf-8") as handle:
                texts = json.load(handle)
        else:
            texts = self_written_prompts(target, tokenizer, args.new, exclude=[p.text for p in evaluation.prompts])
            with open(cache, "w", encoding="utf-8") as handle:
                json.dump(texts, handle, indent=0)
        print(json.dumps({"self_written_prompts": len(texts), "examples": texts[:8]}), flush=True)
    else:
        texts = corpus.chat_train_prompts(FIRST_POOL + args.new)[FIRST_POOL:]
    corpus.check_disjoint(texts, evaluation.prompts)
    new = PromptSource([corpus.Prompt("chat", t, args.source) for t in texts], new_tokens_chat=128, name=args.source)
    new_labels = cached_labels(new, target, tokenizer, [], os.path.join(work, f"experiment-{args.source}-{args.new}.pt"))
    seqs, states, prompt_lens = unpack(new_labels, target)
    new_ids = torch.cat([s[p:] for s, p in zip(seqs, prompt_lens)])
    coverage = float(torch.isin(new_ids, head_ids).float().mean())
    torch.manual_seed(0)
    stats = fd.train(draft, seqs, states, prompt_lens, head_ids, epochs=args.epochs, lr=args.lr,
                     batch=8, held_out=48, seed=0, lm_head=target.lm_head.weight.float(), log=lambda m: None)
    after = score(draft, eval_data, labels.kinds, head_w)
    print(json.dumps({"draft": f"committed + {len(texts)} chat prompts ({args.source})", "epochs": args.epochs,
                      "lr": args.lr, "head_coverage_new": round(coverage, 4),
                      "new_held_out_before": stats["held_out_before"]["agreement_exact_input"],
                      "new_held_out_after": stats["held_out_after"]["agreement_exact_input"],
                      "train_seconds": stats["train_seconds"], "eval_prompts": after}), flush=True)


if __name__ == "__main__":
    main()
