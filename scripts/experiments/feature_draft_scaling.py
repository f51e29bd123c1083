#!/usr/bin/env python3
"""Data scaling of the text draft conditioned on the target's states: the committed recipe
(training.text.feature_draft.DEFAULT_RECIPE) trained on a fraction of its training sequences,
scored on the same held-out sequences. Prints the training statistics as JSON; nothing is saved.

    python scripts/experiments/feature_draft_scaling.py 0.25 0.5 --threads 2

Reuses the labels `make models` cached (step feature_draft), or labels the recipe's data first
(~22 min on 2 cores). 2026-12-02, 2 cores: 1/4 of the data 37.1 %, 1/2 44.0 %, all 50.9 %
held-out agreement with exact inputs. That split shares templates and topics with the training
prompts, so it overstates what more of the same data buys where the benchmark decodes: see
scripts/experiments/feature_draft_new_data.py (the committed draft: 40.7 % on the evaluation
prompts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from make_models import recipe_sha  # noqa: E402
from specdec.models import artefacts  # noqa: E402
from specdec.models.feature_draft import FeatureDraft  # noqa: E402
from training.text import feature_draft as fd  # noqa: E402
from training.text.data import cached_labels, make_source  # noqa: E402
from training.train_exits import load_target, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fractions", nargs="+", type=float)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    recipe = fd.DEFAULT_RECIPE
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    cache = os.path.join(artefacts.cache_root(), "_work", f"labels-{recipe_sha({'d': recipe['data'], 'l': []})}.pt")
    labels = cached_labels(make_source(recipe["data"]), target, tokenizer, [], cache)
    seqs = [s.long() for s in labels.sequences]
    prompt_lens = list(labels.prompt_lens)
    states = fd.target_states(labels, target.config.hidden_size)
    head_ids = fd.frequent_tokens(seqs, prompt_lens, recipe["head_tokens"])
    for fraction in args.fractions:
        torch.manual_seed(recipe["seed"])
        draft = FeatureDraft.for_target(target, recipe["layers"])
        stats = fd.train(draft, seqs, states, prompt_lens, head_ids, epochs=recipe["epochs"], lr=recipe["lr"],
                         batch=recipe["batch"], held_out=recipe["held_out"], seed=recipe["seed"],
                         lm_head=target.lm_head.weight, train_fraction=fraction, log=lambda m: None)
        print(json.dumps({"fraction": fraction, **stats}), flush=True)


if __name__ == "__main__":
    main()
