"""Does the edge's own belief make the text exit's hint right more often? (issue 14, item 5)

An exit head at layer L sees one position's residual stream mid-pass. The verifier also holds the
draft block, and the edge could send the draft's probabilities with it (a few bytes per drafted
token). This scores, on the target's greedy answers to the 56 held-out evaluation prompts (their
first 24 tokens, as ``make models-eval`` decodes them), the top-1 agreement with the target's final
layer of:

* the exit alone (the committed sweep heads, layer ``--layer``);
* the feature draft alone, as decoding runs it ``j`` tokens into a block (step 0: fed the target's
  state, step 3: three of its own guesses in, :func:`training.text.feature_draft.unrolled_guesses`);
* their product of experts, ``log p_exit + beta * log q_draft`` (tokens outside the draft's reduced
  head get its least likely head token's probability), for a fixed grid of ``beta`` - nothing is
  fitted to these positions.

    python scripts/experiments/exit_with_draft.py --layer 21 --threads 2    # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from feature_draft_new_data import eval_source, unpack  # noqa: E402
from specdec.models import artefacts  # noqa: E402
from specdec.models.early_exit import EarlyExitHeads  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import cached_labels  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402

BETAS = (0.5, 1.0, 2.0)
STEPS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=21)
    parser.add_argument("--new-tokens", type=int, default=24, help="generated tokens of each answer scored")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    heads = EarlyExitHeads.load(target, artefacts.committed_text_exits_sweep_path())
    draft, head_ids, _record = fd.load_committed(artefacts.committed_text_feature_draft_dir(), target)
    head_w = target.lm_head.weight.detach().float()[head_ids]
    labels = cached_labels(eval_source(), target, tokenizer, [],
                           os.path.join(artefacts.cache_root(), "_work", "experiment-eval-prompts.pt"))
    seqs, states, prompt_lens = unpack(labels, target)
    hits = {"exit": 0, **{f"draft_step{j}": 0 for j in range(STEPS)},
            **{f"exit_x_draft_step{j}_beta{b}": 0 for j in (0, STEPS - 1) for b in BETAS}}
    by_kind = {"chat": dict.fromkeys(hits, 0), "prose": dict.fromkeys(hits, 0)}
    counts = {"chat": 0, "prose": 0}
    for r, (seq, p, kind) in enumerate(zip(seqs, prompt_lens, labels.kinds)):
        n = min(len(seq), p + args.new_tokens)
        ids = seq[:n]
        captured = {}
        with torch.no_grad(), heads.attach(lambda layer, h: captured.__setitem__(layer, h), [args.layer], hidden=True):
            final = target(ids[None]).logits[0].float()
        rows = torch.arange(p, n - 1)  # positions predicting generated tokens 1 .. n - p - 1
        want = final[rows].argmax(-1)
        with torch.no_grad():
            exit_logp = torch.log_softmax(heads.exit_logits(args.layer, captured[args.layer][0, rows]).float(), -1)
            _ids, s_in, _out, _mask = fd._batch([ids], [states[r][:n]], [p], [0])
            guesses = fd.unrolled_guesses(draft, ids[None], s_in, [p], [0], STEPS)
        picks = {"exit": exit_logp.argmax(-1)}
        for j, g in enumerate(guesses):
            q = torch.log_softmax(g[0, rows].float() @ head_w.t(), -1)
            picks[f"draft_step{j}"] = head_ids[q.argmax(-1)]
            if j in (0, STEPS - 1):
                full = q.amin(-1, keepdim=True).expand(-1, exit_logp.shape[-1]).clone()
                full[:, head_ids] = q
                for b in BETAS:
                    picks[f"exit_x_draft_step{j}_beta{b}"] = (exit_logp + b * full).argmax(-1)
        for name, pick in picks.items():
            by_kind[kind][name] += int((pick == want).sum())
        counts[kind] += len(rows)
    total = sum(counts.values())
    out = {"layer": args.layer, "depth": round((args.layer + 1) / target.config.num_hidden_layers, 3),
           "positions": counts,
           "agreement": {name: round(sum(by_kind[k][name] for k in counts) / total, 4) for name in hits},
           "agreement_chat": {name: round(by_kind["chat"][name] / max(1, counts["chat"]), 4) for name in hits},
           "agreement_prose": {name: round(by_kind["prose"][name] / max(1, counts["prose"]), 4) for name in hits}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
