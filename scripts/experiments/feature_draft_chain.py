#!/usr/bin/env python3
"""Where does the text feature draft's chain lose tokens? Teacher-forced agreement against what the
engine sees, on the held-out evaluation prompts (``models/smollm2_eval_prompts.json``).

1. Teacher-forced on the target's decodes of the prompts (128 chat / 64 prose tokens, as
   ``feature_draft_new_data.py``): agreement with the target's next token after ``d`` of the
   draft's own guesses in a row (``d = 0``: the target's state, what a block's first token sees),
   over all positions and over the first 24 generated ones; and, among those 24, at a position right
   after one the draft got wrong (where every block but the first starts: the correction token is
   the target's).
   Also the share of the target's tokens the reduced head can propose at all.
2. The engine (gamma 4, greedy, 24 new tokens, as ``make models-eval``): how often the first drafted
   token of a block is kept, per prompt kind, apart from the first round (drafted before the cloud
   returned any state).
3. The engine replayed on the same teacher-forced answers (``replayed``): blocks of 4 as decoding
   drafts them (:func:`training.text.feature_draft.unrolled_guesses`), each round starting where the
   last one's first rejected token was; tokens per round over the first 24 tokens (what the engine
   reports) and over the whole answers, and the drafts a block keeps when it starts right after a
   position the draft missed (where the engine's rounds start) or after one it got right, or in the
   first 24 tokens or later; chat and prose apart, then together (``all``). With
   ``--rejected-slot``: the verify pass also holds the target's prediction at the rejected slot (fed
   the draft's wrong token) - how often it names the token after the correction, against the next
   block's first draft token.

    python scripts/experiments/feature_draft_chain.py --threads 2 [--draft COMMITTED_DIR --skip-engine --rejected-slot]

2026-12-05 (committed draft): the own-guess chain costs chat 6 points at the first step and 1-2
after (59.9 -> 54.1 -> 52.4 -> 50.6 % at depths 0-3), prose 2 points over three (79.6 -> 77.8 %);
the head covers 98.0 / 99.3 % of the target's tokens. What costs most is where blocks start: the
first 24 positions agree 58.1 / 64.8 % and, among them, a position after a wrong one 53.3 / 56.6 %
(chat / prose) - what the engine keeps of a block's first token (52.4 / 58.4 %). Training and
decoding match; the positions after a rejection are the hard ones.

2026-12-05, the replay (same draft): 2.04 (chat) / 2.21 (prose) tokens per round over the first 24
tokens - the engine's 2.02 / 2.20 - and 2.09 / 2.99 over the whole answers (128 / 64 tokens; 2.29
together). A block started after a miss keeps 1.00 / 1.81 drafts, after a hit 1.49 / 2.50; chat's
rounds are almost all of the first kind, and prose's first 24 tokens are its hardest (a block
started there keeps 1.62, later 2.79). ``--rejected-slot``: the target's prediction at the rejected
slot names the next token 13.0 / 28.6 % of the time, the next block's first draft token 54.1 /
59.6 % (316 / 203 rejections): a wrong token changes what the target says next; nothing to reuse.
``--mix stage1 0.25`` / ``0.5`` (the committed weights moved towards the first stage's, as robust
fine-tuning does): 2.05 / 2.00 (chat), 2.22 / 2.21 (prose) tokens per round in the replay, against
2.04 / 2.21; ``--mix DIR 0.5`` with the second stage trained with ``--miss-weight 2``: 2.03 / 2.21.
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
from training.text import evaluate as text_eval  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import cached_labels  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402

DEPTHS = 5
FIRST = 24  # the engine evaluation's new tokens


@torch.no_grad()
def teacher_forced(draft, data, rows, head_w, head_ids) -> dict:
    """Agreement by own-guess depth, over the first ``FIRST`` positions, after a wrong position."""
    seqs, states, prompt_lens = data
    by_depth, first, after_wrong, n = [0.0] * DEPTHS, [], [], 0
    for r in rows:
        ids, s_in, s_out, mask = fd._batch(seqs, states, prompt_lens, [r])
        wanted = (s_out[0][mask[0]] @ head_w.t()).argmax(-1)
        inputs = s_in
        for depth in range(DEPTHS):
            guess = draft(ids, inputs)
            right = (guess[0][mask[0]] @ head_w.t()).argmax(-1) == wanted
            by_depth[depth] += float(right.sum())
            if depth == 0:
                first.append(right[:FIRST])
                after_wrong += [bool(b) for a, b in zip(right[:FIRST - 1], right[1:FIRST]) if not a]
            inputs = fd._shift_guesses(guess, s_in, prompt_lens, [r])
        n += int(mask.sum())
    tokens = torch.cat([seqs[r][prompt_lens[r]:] for r in rows])
    return {"by_depth": [round(x / n, 4) for x in by_depth],
            "first_positions": round(float(torch.cat(first).float().mean()), 4),
            "after_a_wrong_one": round(sum(after_wrong) / max(1, len(after_wrong)), 4),
            "head_coverage": round(float(torch.isin(tokens, head_ids).float().mean()), 4), "positions": n}


@torch.no_grad()
def replayed(draft, data, rows, head_w, head_ids, target=None, gamma: int = 4) -> dict:
    """The engine's greedy rounds replayed on the teacher-forced answers (item 3 of the docstring).
    ``target``: also, in the first 24 tokens' rounds that end in a rejection, whether the target's
    own prediction at the rejected slot - the verify pass computes it, fed the draft's wrong token -
    names the token after the correction, against the next block's first draft token."""
    seqs, states, prompt_lens = data
    tally = {k: [0, 0] for k in ("first24", "whole", "after_miss", "after_hit", "starts_first24", "starts_later",
                                 "draft_after_rejection", "target_at_rejected_slot")}  # [sum, count]
    for i in range(0, len(rows), 8):
        part = rows[i:i + 8]
        ids, s_in, s_out, _mask = fd._batch(seqs, states, prompt_lens, part)
        want = (s_out @ head_w.t()).argmax(-1)
        picks = torch.stack([(g @ head_w.t()).argmax(-1)
                             for g in fd.unrolled_guesses(draft, ids, s_in, prompt_lens, part, gamma)])
        hits = picks == want
        for b, r in enumerate(part):
            start, last = prompt_lens[r] - 1, len(seqs[r]) - 2  # the answer's first and last labelled position

            def kept(t: int) -> int:  # the leading run of right guesses of a block started at t
                k = 0
                while k < gamma and t + k <= last and bool(hits[k, b, t + k]):
                    k += 1
                return k

            for t in range(start, last - gamma + 2):
                sides = [tally["starts_first24" if t - start < FIRST else "starts_later"]]
                if t > start:
                    sides.append(tally["after_hit" if bool(hits[0, b, t - 1]) else "after_miss"])
                for side in sides:
                    side[0], side[1] = side[0] + kept(t), side[1] + 1
            for name, length in (("first24", FIRST), ("whole", last - start + 1)):
                t, done, total = start, 0, min(length, last - start + 1)
                while done < total:
                    k = kept(t)
                    done, t = done + min(k + 1, total - done), t + k + 1
                    tally[name][1] += 1
                    if name == "first24" and target is not None and k < gamma and done < total:
                        rejected = head_ids[picks[k, b, t - 1]].view(1)  # the draft's token for slot t
                        fed = torch.cat([ids[b, :t], rejected])[None]
                        right = int(target(fed).logits[0, -1].argmax()) == int(ids[b, t + 1])
                        for key, hit in (("target_at_rejected_slot", right),
                                         ("draft_after_rejection", bool(hits[0, b, t]))):
                            tally[key][0], tally[key][1] = tally[key][0] + hit, tally[key][1] + 1
                tally[name][0] += done
    names = {"first24": "tokens_per_round_first24", "whole": "tokens_per_round_whole",
             "after_miss": "kept_after_a_miss", "after_hit": "kept_after_a_hit",
             "starts_first24": "kept_starting_in_first24", "starts_later": "kept_starting_later"}
    return {names.get(k, k): round(v[0] / max(1, v[1]), 3) for k, v in tally.items() if v[1]}


def engine_first_token(target, tokenizer, draft_dir: str, prompts, kind: str) -> dict:
    LocalSpeculativeDecoder, wrap_model, DecodingMode = text_eval._engine()
    template = kind == "chat"
    decoder = LocalSpeculativeDecoder(text_eval._draft_loader(draft_dir, tokenizer)(template),
                                      wrap_model(target, tokenizer, use_chat_template=template),
                                      gamma=4, max_new_tokens=FIRST, draft_length="fixed")
    kept, rounds = 0, 0
    try:
        for prompt in prompts:
            for r in decoder.generate(prompt.text, mode=DecodingMode.SPECULATIVE).stats.round_log[1:]:
                kept += r.kept >= 1
                rounds += 1
    finally:
        decoder.close()
    return {"first_token_kept": round(kept / max(1, rounds), 4), "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--draft", default=os.path.join(ROOT, "models", "smollm2-135m-feature-draft"),
                        help="a committed-format draft for 1. and 3. (2. runs the assembled committed one)")
    parser.add_argument("--mix", nargs=2, metavar=("DIR", "ALPHA"),
                        help="score (1 - ALPHA) x --draft's weights + ALPHA x DIR's (a committed-format draft, or "
                             "'stage1': --draft's first stage)")
    parser.add_argument("--skip-engine", action="store_true", help="leave out 2. (minutes)")
    parser.add_argument("--rejected-slot", action="store_true",
                        help="3. also scores the target's prediction at each rejected slot (a pass per round)")
    args = parser.parse_args()
    set_threads(args.threads)
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    draft, head_ids, _ = fd.load_committed(args.draft, target)
    if args.mix:  # weights (1 - alpha) x draft + alpha x another draft (from the same first stage)
        other_dir, alpha = args.mix[0], float(args.mix[1])
        other = (fd.load_committed(args.draft, target, stage1=True) if other_dir == "stage1"
                 else fd.load_committed(other_dir, target))[0].state_dict()
        draft.load_state_dict({k: (1 - alpha) * v + alpha * other[k] if v.is_floating_point() else v
                               for k, v in draft.state_dict().items()})
    head_w = target.lm_head.weight.detach().float()[head_ids]
    evaluation = eval_source()
    labels = cached_labels(evaluation, target, tokenizer, [],
                           os.path.join(artefacts.cache_root(), "_work", "experiment-eval-prompts.pt"))
    data = unpack(labels, target)
    draft_dir = os.path.join(artefacts.cache_root(), "smollm2-135m-feature-draft")
    for kind in ("chat", "prose"):
        rows = [i for i, k in enumerate(labels.kinds) if k == kind]
        prompts = [p for p in evaluation.prompts if p.kind == kind]
        print(json.dumps({"kind": kind, **teacher_forced(draft, data, rows, head_w, head_ids),
                          "replayed": replayed(draft, data, rows, head_w, head_ids,
                                               target if args.rejected_slot else None),
                          **({} if args.skip_engine else engine_first_token(target, tokenizer, draft_dir, prompts,
                                                                              kind))}), flush=True)
    print(json.dumps({"kind": "all", "replayed": replayed(draft, data, list(range(len(labels.kinds))), head_w,
                                                          head_ids)}), flush=True)


if __name__ == "__main__":
    main()
