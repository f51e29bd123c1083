#!/usr/bin/env python3
"""Is the text feature draft short of capacity? The committed draft has two decoder layers, a
number no measurement chose. This fine-tunes the committed first stage as the second stage does
(``FINETUNE_RECIPE``'s schedule: 1 epoch, lr 5e-4, bfloat16 autocast), once as it is and once
grown by decoder layers appended after its own (each a copy of its last layer with the output
projections zeroed, so training starts at the two-layer draft's outputs), on the same data, and
saves each as a committed folder that ``feature_draft_chain.py --draft DIR --skip-engine`` replays
and ``python -m training.text.feature_draft --assemble DIR`` makes loadable for ``make
models-eval``'s engine (``python -m training.text.evaluate --draft ASSEMBLED``).

Data: the labels the text-exit experiments cache (``text_exit_inputs.py``): 3,000 questions the
target writes itself, answered (128 tokens), and the 2,000 training prose openings (48 tokens) of
``text:chat=4000,prose=2000,new=96``; labelled here if absent (about 30 min).

    python scripts/experiments/feature_draft_capacity.py --layers 2 3 --threads 2 --out /tmp/capacity

2026-12-06, 2-core Intel Xeon with AMX (4,952 training sequences, 78 steps; 448 s for two layers,
607 s for three): held-out agreement of its own data 67.4 / 67.5 % with the target's states in,
62.3 / 62.4 % with its own guesses in (65.5 / 59.7 % before); the engine replayed on the
evaluation prompts (``feature_draft_chain.py --draft DIR --skip-engine``) 2.052 / 2.065 tokens per
round (chat 1.98 / 2.01, prose 2.15 / 2.15). A third layer grown on a CPU adds nothing measurable.
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
from specdec.models.feature_draft import FeatureDraft  # noqa: E402
from training.teacher import Labels, labelling_model  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import cached_labels, make_source, text_source  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402

EXIT_LAYER = 21  # the caches' captured layer (text_exit_inputs.py); the draft reads only final states


def sequences_of_kind(labels: Labels, kind: str) -> Labels:
    """The sequences of one kind, renumbered, without captured layers."""
    keep = [i for i, k in enumerate(labels.kinds) if k == kind]
    new_index = torch.full((len(labels.sequences),), -1, dtype=torch.long)
    new_index[torch.tensor(keep)] = torch.arange(len(keep))
    rows = torch.nonzero(new_index[labels.seq] >= 0).flatten()
    return Labels(sequences=[labels.sequences[i] for i in keep], seq=new_index[labels.seq[rows]],
                  pos=labels.pos[rows], topk_ids=labels.topk_ids[rows], topk_logp=labels.topk_logp[rows],
                  kinds=[kind] * len(keep), final=labels.final[rows],
                  prompt_lens=[labels.prompt_lens[i] for i in keep])


def grown(stage1: FeatureDraft, target, layers: int) -> FeatureDraft:
    """``stage1`` with decoder layers appended up to ``layers``, each new one a copy of its last
    layer whose attention and MLP outputs are zero (the residual stream passes through)."""
    have = stage1.config.num_hidden_layers
    if layers == have:
        return stage1
    draft = FeatureDraft.for_target(target, layers).float()
    state = dict(stage1.own_state_dict())
    last = f"model.layers.{have - 1}."
    for extra in range(have, layers):
        for key, value in stage1.own_state_dict().items():
            if key.startswith(last):
                name = key[len(last):]
                zero = name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                state[f"model.layers.{extra}.{name}"] = torch.zeros_like(value) if zero else value.clone()
    draft.load_state_dict(state, strict=False)  # the embeddings are the target's
    return draft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--epochs", type=float, default=fd.FINETUNE_RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=fd.FINETUNE_RECIPE["lr"])
    parser.add_argument("--out", required=True, help="one committed folder per layer count is written under it")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    work = os.path.join(artefacts.cache_root(), "_work")
    committed = os.path.join(ROOT, "models", "smollm2-135m-feature-draft")
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    labeller = labelling_model(target, "bfloat16")
    base = cached_labels(text_source(chat=4000, prose=2000, new=96, batch_size=128), labeller, tokenizer, [EXIT_LAYER],
                         os.path.join(work, f"exit-data-{EXIT_LAYER}-c4000-p2000-n96-bf16.pt"))
    prose = sequences_of_kind(base, "prose")
    del base
    own = cached_labels(make_source("self:chat=3000"), labeller, tokenizer, [EXIT_LAYER],
                        os.path.join(work, f"exit-data-{EXIT_LAYER}-self-chat-3000-bf16.pt"))
    labels = Labels.concat([sequences_of_kind(own, "chat"), prose])
    del own, prose, labeller
    seqs = [s.long() for s in labels.sequences]
    states = fd.target_states(labels, target.config.hidden_size)
    print(json.dumps({"sequences": len(seqs), "positions": len(labels)}), flush=True)
    for layers in args.layers:
        stage1, head_ids, record = fd.load_committed(committed, target, stage1=True)
        draft = grown(stage1, target, layers)
        recipe = dict(fd.FINETUNE_RECIPE, data="exit caches: self:chat=3000 + prose 2000 (48 tokens)",
                      epochs=args.epochs, lr=args.lr, grown_to_layers=layers)
        torch.manual_seed(recipe["seed"])
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            stats = fd.train(draft, seqs, states, list(labels.prompt_lens), head_ids, epochs=args.epochs, lr=args.lr,
                             batch=recipe["batch"], held_out=recipe["held_out"], seed=recipe["seed"],
                             lm_head=target.lm_head.weight, log=lambda m: print(m, flush=True))
        out = os.path.join(args.out, f"layers-{layers}")
        fd.save_committed(draft, target, tokenizer, head_ids, out,
                          {"recipe": dict(record["recipe"], layers=layers), "finetune": recipe,
                           "training_finetune": stats})
        print(json.dumps({"layers": layers, "out": out, "seconds": round(time.time() - t0, 1),
                          "held_out_after": stats["held_out_after"],
                          "train_sample_after": stats["train_sample_after"]}), flush=True)


if __name__ == "__main__":
    main()
