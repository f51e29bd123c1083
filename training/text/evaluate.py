"""Evaluate a draft/target pair and the target's early exits on held-out prompts.

For each held-out prompt (:func:`training.text.corpus.eval_prompts`: hand-written chat
prompts and openings of held-out prose; chat prompts go through the chat template, prose is
continued raw):

1. the target alone decodes greedily (reference; the exits' hidden states are captured in the
   same passes, so exit agreement is measured on the target's own held-out text);
2. the pair decodes through the engine (:func:`specdec.engine.local` - plain speculative
   decoding, ``gamma`` drafts per round, greedy) and must produce exactly the reference tokens
   (lossless check); its acceptance rate and tokens per round are recorded;
3. every exit head's top-1 agreement with the final layer is measured on the reference
   positions (prompt + generated), next to the untrained logit lens, and as a selective exit
   (where its top token is at least that probable, for each of ``FIRE_THRESHOLDS``);
4. with exits, the pair decodes again with a hint from every exit layer, and each layer is priced
   by the time its hints would save per round, per pre-draft policy and confidence gate
   (:func:`_hint_layers`).

    python -m training.text.evaluate [--target DIR] [--draft DIR] [--exits FILE] \\
        [--json models/eval_smollm2.json] [--markdown docs/models/eval_smollm2.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import List, Optional, Sequence, Tuple

import torch

from specdec.models import artefacts

from . import corpus
from .data import prompt_ids
from ..teacher import Labels, label_batch


def _engine():
    try:
        from specdec.engine.local import LocalSpeculativeDecoder  # noqa: F401
        from specdec.models.adapters import wrap_model  # noqa: F401
        from specdec.protocol import DecodingMode  # noqa: F401
    except ImportError as exc:  # the engine is another package of this repo
        raise RuntimeError(f"speculative engine unavailable ({exc})") from exc
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.adapters import wrap_model
    from specdec.protocol import DecodingMode

    return LocalSpeculativeDecoder, wrap_model, DecodingMode


def reference_decode(target, tokenizer, prompts: List[corpus.Prompt], max_new_tokens: int, exit_layers=(),
                     progress=None) -> Labels:
    """Target-alone greedy decode of each prompt (batch of one: no padding), labels + exit features."""
    parts = []
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for prompt in prompts:
        part = label_batch(
            target,
            [prompt_ids(tokenizer, prompt)],
            max_new_tokens=max_new_tokens,
            capture_layers=exit_layers,
            top_k=4,
            stop_ids=stop,
            pad_id=tokenizer.pad_token_id or 0,
            kind=prompt.kind,
        )
        parts.append(part)
        if progress is not None:
            progress.update(1)
    return Labels.concat(parts)


def _per_token_cost(draft_adapter, target, tokenizer, prompt: corpus.Prompt) -> dict:
    """:func:`training.costs.cost_ratio` of the draft as served (its reduced head) and the target."""
    from specdec.models.adapters import wrap_model

    from ..costs import cost_ratio

    template = prompt.kind == "chat"
    return cost_ratio(draft_adapter(template), wrap_model(target, tokenizer, use_chat_template=template), prompt.text)


def _draft_loader(draft_dir: str, tokenizer, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``use_chat_template -> draft adapter`` as served: an HF draft with its reduced head, or a
    feature draft (:mod:`specdec.models.feature_draft`)."""
    from transformers import AutoModelForCausalLM

    from specdec.models.adapters import wrap_model
    from specdec.models.draft_head import use_draft_head
    from specdec.models.feature_draft import is_feature_draft, load_feature_draft

    if is_feature_draft(draft_dir):
        def feature(use_template: bool):
            adapter = load_feature_draft(draft_dir, tokenizer, dtype=dtype, device=device)
            adapter.use_chat_template = use_template
            return adapter

        return feature
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=dtype).to(device).eval().requires_grad_(False)

    def plain(use_template: bool):
        adapter = wrap_model(draft, tokenizer, use_chat_template=use_template)
        use_draft_head(adapter, draft_dir)  # propose as the served draft does
        return adapter

    return plain


def tree_shape(spec: str) -> Tuple[int, Optional[int]]:
    """``"K"`` or ``"K:B"``: the draft's K next-best tokens offered at each drafted position, the
    verifier taking at most B of them as branches, those the draft's own probabilities rank likeliest
    (its ``max_branches``, :func:`specdec.engine.sampling.choose_branches`; none given: its default)."""
    k, _, b = str(spec).partition(":")
    shape = (int(k), int(b) if b else None)
    if shape[0] < 1 or (shape[1] is not None and shape[1] < 1):
        raise ValueError(f"a tree is K or K:B with K, B >= 1, got {spec!r}")
    return shape


def _engine_rows(draft_adapter, target, tokenizer, prompts: List[corpus.Prompt], ref, gamma: int,
                 max_new_tokens: int, tree: str, progress: bool, exit_heads=None) -> Tuple[List[dict], list]:
    """Each prompt decoded speculatively (fixed ``gamma``, greedy; ``tree`` "0": a chain, else the
    draft's next-best tokens offered as branches, :func:`tree_shape`; with ``exit_heads``, progressive
    hints from each of their layers), one decoder per prompt style (chat template on / off): a row per
    prompt, and the decisions' stats."""
    from tqdm import tqdm

    LocalSpeculativeDecoder, wrap_model, DecodingMode = _engine()
    mode = DecodingMode.SPECULATIVE if exit_heads is None else DecodingMode.SPECULATIVE_EARLY_EXIT
    rows, stats, decoders = [], [], {}
    alternatives, max_branches = tree_shape(tree) if tree != "0" else (0, None)
    verifier = {} if max_branches is None else {"max_branches": max_branches}
    try:
        for kind in ("chat", "prose"):
            use_template = kind == "chat"
            decoders[kind] = LocalSpeculativeDecoder(
                draft_adapter(use_template), wrap_model(target, tokenizer, use_chat_template=use_template),
                exit_heads=exit_heads, gamma=gamma, max_new_tokens=max_new_tokens, draft_length="fixed",
                alternatives=alternatives, verifier_kwargs=verifier)
        label = f"eval: {mode.name.lower()}" + (f", tree {tree}" if alternatives else "")
        for i, prompt in enumerate(tqdm(prompts, desc=label, disable=not progress, leave=False)):
            result = decoders[prompt.kind].generate(prompt.text, mode=mode)
            stats.append(result.stats)
            reference = ref.sequences[i][len(prompt_ids(tokenizer, prompt)):].tolist()
            s = result.stats
            rows.append({
                "kind": prompt.kind,
                "source": prompt.source,
                "lossless": list(result.tokens) == reference,
                "new_tokens": s.new_tokens,
                "rounds": s.rounds,
                "drafted": s.drafted_tokens,
                "accepted": s.accepted_tokens,
                # verification passes of full blocks after the first (whose pass may carry the prefill)
                "pass_ms": [round(r.verify_ms, 1) for r in s.round_log if r.round > 0 and r.drafted == gamma],
                "alternatives_taken": sum(r.alternative for r in s.round_log),
                "prompt": prompt.text[:60],
            })
    finally:
        for decoder in decoders.values():
            decoder.close()
    return rows, stats


def _median(values: List[float]) -> float:
    values = sorted(values)
    return round(values[len(values) // 2], 1) if values else 0.0


def _hint_layers(chain_stats, hint_stats, num_layers: int, gamma: int) -> dict:
    """Choosing the hint layer, and the confidence a hint needs to be acted on, by expected benefit:
    each exit layer's hints (progressive hints, ``hint_stats``) and the time they would save per round
    (:func:`specdec.engine.predraft.hint_saving_ms`) for each pre-draft policy: ``eager`` stops at the
    result, so a wrong hint costs nothing; ``hint`` (the paper's) drafts a whole block on each hint it
    acts on - every hint, or with the best of the gates ``FIRE_THRESHOLDS`` on the exit's probability of
    the outcome it names. Priced with the plain run's (``chain_stats``) verification pass and drafting
    time on this machine; the exit cost is what the hints added to the passes, shared evenly among the
    layers."""
    from specdec.engine.predraft import hint_saving_ms
    from specdec.engine.stats import hint_outcomes_by_layer
    from ..train_exits import FIRE_THRESHOLDS

    rounds = sum(s.rounds for s in chain_stats)
    verify_ms = sum(s.verify_ms for s in chain_stats) / max(rounds, 1)
    hinted_verify_ms = sum(s.verify_ms for s in hint_stats) / max(sum(s.rounds for s in hint_stats), 1)
    draft_ms = sum(s.draft_ms for s in chain_stats) / max(sum(s.drafted_tokens for s in chain_stats), 1)
    outcomes = hint_outcomes_by_layer(hint_stats)
    exit_ms = max(0.0, hinted_verify_ms - verify_ms) / max(len(outcomes), 1)
    layers = {}
    for layer, hints in outcomes.items():
        depth, sent = (layer + 1) / num_layers, len(hints)

        def saving(right: float, wrong: float = 0.0, exit_cost: float = exit_ms) -> float:
            return round(hint_saving_ms(right, depth, verify_ms, gamma * draft_ms, exit_cost, wrong), 2)

        def gated(tau: float) -> dict:
            acted = [right for p, right in hints if p >= tau]
            return {"min_confidence": tau, "acted": round(len(acted) / sent, 4),
                    "right_when_acted": round(sum(acted) / len(acted), 4) if acted else 0.0,
                    "saving_ms": saving(sum(acted) / sent, (len(acted) - sum(acted)) / sent)}

        every = gated(0.0)
        layers[str(layer)] = {
            "depth": round(depth, 3), "hints": sent, "right": every["right_when_acted"],
            "hidden_ms": saving(every["right_when_acted"], exit_cost=0.0),
            "saving_ms": saving(every["right_when_acted"]),  # eager: a wrong hint costs nothing
            "hint_policy": {"every": every, "best_gate": max([every] + [gated(tau) for tau in FIRE_THRESHOLDS],
                                                             key=lambda g: g["saving_ms"])},
        }
    best = {"eager": max(layers, key=lambda k: layers[k]["saving_ms"]) if layers else None,
            "hint": max(layers, key=lambda k: layers[k]["hint_policy"]["best_gate"]["saving_ms"]) if layers else None}
    return {"verify_ms": round(verify_ms, 2), "draft_ms_per_token": round(draft_ms, 2),
            "exit_ms": round(exit_ms, 2), "gates": [0.0, *FIRE_THRESHOLDS], "layers": layers, "best": best}


def _exit_scores(heads, target, ref, all_positions: bool) -> dict:
    """The first exit of ``heads`` on the reference decodes, as the verifier runs it (an exit that
    attends sees each sequence from its start): top-1 agreement with the final layer on the generated
    positions (and by prompt kind, and on all positions), and where it fires at each of
    ``FIRE_THRESHOLDS``."""
    from ..train_exits import FIRE_THRESHOLDS, exit_hits

    layer = heads.exit_layers[0]
    rows, right, top_p = exit_hits(heads, ref, target, ref.generated_rows())
    kinds = [ref.kinds[int(i)] for i in ref.seq[rows]]
    out = {"layer": layer, "depth": round((layer + 1) / target.config.num_hidden_layers, 3),
           "agreement": round(float(right.float().mean()), 4), "positions": int(right.numel()),
           **{kind: round(float(right[[k == kind for k in kinds]].float().mean()), 4) for kind in ("chat", "prose")},
           "fires": {str(tau): {"share": round(float((top_p >= tau).float().mean()), 4),
                                "agreement": round(float(right[top_p >= tau].float().mean()), 4)
                                if bool((top_p >= tau).any()) else 0.0} for tau in FIRE_THRESHOLDS}}
    if all_positions:
        out["agreement_all_positions"] = round(float(exit_hits(heads, ref, target)[1].float().mean()), 4)
    return out


def evaluate(
    target_dir: Optional[str] = None,
    draft_dir: Optional[str] = None,
    exits_path: Optional[str] = None,
    hint_exit_path: Optional[str] = None,
    *,
    gamma: int = 4,
    max_new_tokens: int = 32,
    n_chat: int = 32,
    n_prose: int = 24,
    progress: bool = True,
    all_positions: bool = False,
    alternatives: Sequence[str] = (),
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    log=print,
) -> dict:
    """The held-out engine evaluation. ``alternatives``: also run it with the draft's next-best tokens
    offered as one-token branches of each verification pass (a tree, ``DecodeConfig.alternatives``), for
    each shape "K" or "K:B" (:func:`tree_shape`). ``device``/``dtype``: where and in which precision both
    models run (the per-token CPU cost is measured on the CPU only)."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdec.models.early_exit import EarlyExitHeads
    from ..train_exits import FIRE_THRESHOLDS, evaluate_exits

    target_dir = target_dir or artefacts.text_target_dir()
    draft_dir = draft_dir or artefacts.text_draft_dir()
    exits_path = artefacts.committed_text_exits_sweep_path() if exits_path is None else exits_path  # "": none
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype).to(device).eval().requires_grad_(False)
    draft_adapter = _draft_loader(draft_dir, tokenizer, device, dtype)
    heads = EarlyExitHeads.load(target, exits_path) if exits_path and os.path.exists(exits_path) else None
    hint_exit_path = artefacts.committed_text_exits_path() if hint_exit_path is None else hint_exit_path
    hint_heads = EarlyExitHeads.load(target, hint_exit_path) \
        if hint_exit_path and os.path.exists(hint_exit_path) else None
    prompts = corpus.eval_prompts(n_chat=n_chat, n_prose=n_prose)

    start = time.time()
    capture = sorted({*(heads.exit_layers if heads else ()), *(hint_heads.exit_layers if hint_heads else ())})
    with tqdm(total=len(prompts), desc="eval: target alone", disable=not progress, leave=False) as bar:
        ref = reference_decode(target, tokenizer, prompts, max_new_tokens, capture, progress=bar)
    ref_seconds = time.time() - start

    # the engine: one decoder per prompt style (chat template on / off), plain speculative mode
    start = time.time()
    rows, chain_stats = _engine_rows(draft_adapter, target, tokenizer, prompts, ref, gamma, max_new_tokens, "0",
                                     progress)
    spec_seconds = time.time() - start
    tree_rows = {str(k): _engine_rows(draft_adapter, target, tokenizer, prompts, ref, gamma, max_new_tokens, str(k),
                                      progress)[0] for k in alternatives}  # keys: the shapes as given
    hint_layers = {}
    if heads is not None:  # progressive hints from every exit layer: which one to hint from
        hint_rows, hint_stats = _engine_rows(draft_adapter, target, tokenizer, prompts, ref, gamma, max_new_tokens,
                                             "0", progress, exit_heads=heads)
        hint_layers = _hint_layers(chain_stats, hint_stats, target.config.num_hidden_layers, gamma)
        hint_layers["lossless"] = sum(r["lossless"] for r in hint_rows)
    hint_exit = {}
    if hint_heads is not None:  # the exit the verifier hints from: how often right, and what it saves
        hint_rows, hint_stats = _engine_rows(draft_adapter, target, tokenizer, prompts, ref, gamma, max_new_tokens,
                                             "0", progress, exit_heads=hint_heads)
        hint_exit = {"exits": os.path.relpath(hint_exit_path, artefacts.REPO_ROOT), "kind": hint_heads.adapter_kind,
                     **_exit_scores(hint_heads, target, ref, all_positions),
                     "priced": _hint_layers(chain_stats, hint_stats, target.config.num_hidden_layers, gamma),
                     "lossless": sum(r["lossless"] for r in hint_rows)}

    def summary(sel):
        drafted = sum(r["drafted"] for r in sel)
        accepted = sum(r["accepted"] for r in sel)
        rounds = sum(r["rounds"] for r in sel)
        new = sum(r["new_tokens"] for r in sel)
        return {
            "prompts": len(sel),
            "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
            "tokens_per_round": round(new / rounds, 3) if rounds else 0.0,
            "accepted_per_round": round(accepted / rounds, 3) if rounds else 0.0,
            "lossless": sum(r["lossless"] for r in sel),
            "new_tokens": new,
            "rounds": rounds,
            "pass_ms_median": _median([ms for r in sel for ms in r["pass_ms"]]),
        }

    exits = {}
    gen_rows = ref.generated_rows()
    if heads is not None:
        generated = ref.subset(gen_rows)
        after = evaluate_exits(heads, generated, thresholds=FIRE_THRESHOLDS)
        lens = evaluate_exits(heads, generated, lens=True)
        after_all = evaluate_exits(heads, ref) if all_positions else {}
        n_layers = target.config.num_hidden_layers
        for layer in heads.exit_layers:
            exits[str(layer)] = {
                "depth": round((layer + 1) / n_layers, 3),
                "agreement": round(after[layer]["agreement"], 4),
                "lens_agreement": round(lens[layer]["agreement"], 4),
                "kl": round(after[layer]["kl"], 4),
                "fires": {str(tau): {k: round(v, 4) for k, v in f.items()} for tau, f in after[layer]["fires"].items()},
            }
            if after_all:
                exits[str(layer)]["agreement_all_positions"] = round(after_all[layer]["agreement"], 4)
    trees = {k: {"overall": summary(sel), "chat": summary([r for r in sel if r["kind"] == "chat"]),
                 "prose": summary([r for r in sel if r["kind"] == "prose"]),
                 "rounds_taking_an_alternative": sum(r["alternatives_taken"] for r in sel)}
             for k, sel in tree_rows.items()}
    result = {
        "target": os.path.basename(os.path.normpath(target_dir)),
        "draft": os.path.basename(os.path.normpath(draft_dir)),
        "exits": os.path.relpath(exits_path, artefacts.REPO_ROOT) if heads is not None else None,
        "gamma": gamma,
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "mode": "SPECULATIVE",
        "overall": summary(rows),
        "chat": summary([r for r in rows if r["kind"] == "chat"]),
        "prose": summary([r for r in rows if r["kind"] == "prose"]),
        "alternatives": trees,
        "hint_layers": hint_layers,
        "hint_exit": hint_exit,
        "exit_agreement": exits,
        "exit_positions": int(gen_rows.numel()),
        "exit_positions_all": len(ref),
        "seconds": {"target_alone": round(ref_seconds, 1), "speculative": round(spec_seconds, 1)},
        "per_token_cost": _per_token_cost(draft_adapter, target, tokenizer, prompts[0]) if device == "cpu" else None,
        "machine": (f"{platform.machine()}, {torch.get_num_threads()} threads" if device == "cpu"
                    else f"{torch.cuda.get_device_name(device)}, {dtype}".replace("torch.", ""))
        + f", torch {torch.__version__}",
        "per_prompt": rows,
    }
    return result


def markdown(result: dict) -> str:
    o, c, p = result["overall"], result["chat"], result["prose"]
    lines = [
        f"# Evaluation: {result['draft']} drafting for {result['target']}",
        "",
        "Generated by `python -m training.text.evaluate` (run by `scripts/make_models.py`). "
        f"Held-out prompts: {c['prompts']} chat (chat template) + {p['prompts']} prose openings (raw continuation), "
        f"none seen in training. Greedy, gamma={result['gamma']}, max_new_tokens={result['max_new_tokens']}, "
        f"engine mode {result['mode']}.",
        "",
        "| prompts | acceptance rate | tokens / round | accepted drafts / round | lossless (= target alone) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in (("all", o), ("chat", c), ("prose", p)):
        lines.append(
            f"| {name} ({s['prompts']}) | {100 * s['acceptance_rate']:.1f}% | {s['tokens_per_round']:.2f} "
            f"| {s['accepted_per_round']:.2f} | {s['lossless']}/{s['prompts']} |"
        )
    trees = result.get("alternatives") or {}
    if trees:
        from specdec.engine.verifier_settings import VerifierSettings

        gamma = result["gamma"]

        def rows_at_most(spec: str) -> int:
            k, b = tree_shape(spec)
            return gamma + 1 + min(gamma * k, VerifierSettings().max_branches if b is None else b)

        def per_pass_ms(s: dict) -> float:
            return s["tokens_per_round"] / s["pass_ms_median"] if s.get("pass_ms_median") else 0.0

        lines += [
            "",
            "The same decodes with the draft's next-best token(s) offered as one-token branches of the same "
            "verification pass, a tree of depth gamma = " + str(gamma) + ": `K` offers the draft's K next-best "
            "tokens at each drafted position (`DecodeConfig.alternatives`), `K:B` lets the verifier take at most B "
            "of them, those the draft's own probabilities rank likeliest to be the target's token at the first "
            "rejection (`VerifierSettings.max_branches`, `specdec.engine.sampling.choose_branches`: `1:1` verifies "
            "one branch a block). A round that takes a branch commits the branch token and the target's token after "
            "it. The pass is the verifier's median over full blocks after the first, as this run measured it "
            "(the evaluation's target in PyTorch's default layout); the last column divides tokens per round by it, "
            "relative to the chain:",
            "",
            "| tree | pass rows at most | prompts | tokens / round | rounds taking an alternative | pass, median "
            "| tokens per pass-ms vs the chain | lossless (= target alone) |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        chain = per_pass_ms(o)
        lines.append(f"| chain | {gamma + 1} | all ({o['prompts']}) | {o['tokens_per_round']:.2f} | | "
                     f"{o.get('pass_ms_median', 0.0):.1f} ms | 1.00x | {o['lossless']}/{o['prompts']} |")
        for spec, tree in sorted(trees.items(), key=lambda kv: (tree_shape(kv[0])[0], tree_shape(kv[0])[1] or 99)):
            for name in ("overall", "chat", "prose"):
                s = tree[name]
                first = name == "overall"
                lines.append(
                    f"| {spec} | {rows_at_most(spec)} | {'all' if first else name} ({s['prompts']}) | "
                    f"{s['tokens_per_round']:.2f} | "
                    + (f"{tree['rounds_taking_an_alternative']} of {s['rounds']} | "
                       f"{s.get('pass_ms_median', 0.0):.1f} ms | {per_pass_ms(s) / chain:.2f}x" if first and chain
                       else " | |")
                    + f" | {s['lossless']}/{s['prompts']} |")
    if result["exit_agreement"]:
        has_all = all("agreement_all_positions" in row for row in result["exit_agreement"].values())
        taus = list(next(iter(result["exit_agreement"].values())).get("fires", {}))
        lines += [
            "",
            f"Early exits ({result['exits']}): top-1 agreement with the final layer on the "
            f"{result['exit_positions']} generated positions of the target's own held-out decodes (what a "
            "verifier sees)" + (f"; the last column counts all {result['exit_positions_all']} positions, prompts "
                                "included." if has_all else ".")
            + (" A selective exit fires only where its top token has at least probability p: the columns p = ... "
               "give the share of positions where it fires / its agreement there." if taus else ""),
            "",
            "| exit layer | depth | top-1 agreement | logit lens (untrained) | KL |"
            + "".join(f" p = {tau}: fires / agrees |" for tau in taus) + (" all positions |" if has_all else ""),
            "|---:|---:|---:|---:|---:|" + "---:|" * len(taus) + ("---:|" if has_all else ""),
        ]
        for layer, row in sorted(result["exit_agreement"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {layer} | {int(layer) + 1}/30 ({row['depth']:.2f}) | {100 * row['agreement']:.1f}% "
                f"| {100 * row['lens_agreement']:.1f}% | {row['kl']:.3f} |"
                + "".join(f" {100 * row['fires'][tau]['share']:.0f}% / {100 * row['fires'][tau]['agreement']:.1f}% |"
                          for tau in taus)
                + (f" {100 * row['agreement_all_positions']:.1f}% |" if has_all else "")
            )
    hints = result.get("hint_layers") or {}
    if hints.get("layers"):
        lines += [
            "",
            "Choosing the hint layer by expected benefit: the same decodes in mode SPECULATIVE_EARLY_EXIT with a "
            "hint from every exit layer as the pass reaches it (lossless "
            f"{hints['lossless']}/{o['prompts']}). A hint is right when it names the round's exact result (accepted "
            "count and the target's next token). Time it would save per round "
            "(`specdec.engine.predraft.hint_saving_ms`): right x min(drafting a block, the rest of the pass) - the "
            f"exit's cost, with this run's verification pass ({hints['verify_ms']} ms), drafting "
            f"({hints['draft_ms_per_token']} ms a token) and exit cost ({hints['exit_ms']} ms a layer: what the hints "
            "added to the passes, shared among the layers). The link does not enter: hint and result take the same "
            "trip back. With the `eager` pre-draft (it stops at the result) a wrong hint costs nothing; the paper's "
            "policy (`hint`) drafts a whole block on each hint it acts on, so a wrong one also costs what that "
            "drafting runs past the result. It can act on every hint, or only on those whose exit gives the named "
            "outcome at least a probability p (`hint_min_confidence`; of p = "
            + ", ".join(str(g) for g in hints["gates"]) + " the one that saves the most is shown).",
            "",
            "| exit layer | depth | hints right | drafting hidden per round | saving per round, eager "
            "| saving per round, paper's policy, every hint | paper's policy, best gate: min confidence "
            "| hints acted on | right when acted on | saving per round |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for layer, row in sorted(hints["layers"].items(), key=lambda kv: int(kv[0])):
            mark = {policy: " (best)" if hints["best"][policy] == layer else "" for policy in ("eager", "hint")}
            every, gate = row["hint_policy"]["every"], row["hint_policy"]["best_gate"]
            lines.append(f"| {layer} | {row['depth']:.2f} | {100 * row['right']:.1f}% | {row['hidden_ms']:.2f} ms "
                         f"| {row['saving_ms']:.2f} ms{mark['eager']} | {every['saving_ms']:.2f} ms "
                         f"| {gate['min_confidence']} | {100 * gate['acted']:.0f}% | {100 * gate['right_when_acted']:.1f}% "
                         f"| {gate['saving_ms']:.2f} ms{mark['hint']} |")
    lines += _hint_exit_markdown(result.get("hint_exit") or {}, result.get("exit_agreement") or {}, o["prompts"])
    cost = result.get("per_token_cost")
    if cost:
        lines += ["", f"Per-token cost (`training.costs`: one decoded token, one torch thread, thread CPU time, best of 5):"
                  f" draft {cost['draft_ms']} ms (as it proposes, through its reduced head when it has one), target"
                  f" {cost['target_ms']} ms: **{cost['ratio']:.2f}x**."]
    lines += ["", f"Timing: target alone {result['seconds']['target_alone']} s, "
              f"speculative {result['seconds']['speculative']} s ({result['machine']})."]
    return "\n".join(lines) + "\n"


def _hint_exit_markdown(hint: dict, sweep: dict, prompts: int) -> List[str]:
    if not hint:
        return []
    layer, priced = hint["layer"], hint["priced"]
    row = priced["layers"].get(str(layer), {})
    every, gate = row["hint_policy"]["every"], row["hint_policy"]["best_gate"]
    plain = sweep.get(str(layer))
    taus = list(hint["fires"])
    lines = [
        "",
        f"The hint exit ({hint['exits']}, kind `{hint['kind']}`: the exit the verifier sends hints from"
        + (", one decoder layer of its own over the sweep's head that attends over the sequence, reading the "
           "target's next-layer keys and values from its cache" if hint["kind"] == "attention" else "")
        + f"), scored the same way on the {hint['positions']} generated positions, run as the verifier runs it"
        + (f"; the sweep's position-wise head of layer {layer} above for comparison" if plain else "") + ":",
        "",
        "| exit | depth | top-1 agreement | chat | prose |" + "".join(f" p = {tau}: fires / agrees |" for tau in taus)
        + (" all positions |" if "agreement_all_positions" in hint else ""),
        "|---|---:|---:|---:|---:|" + "---:|" * len(taus) + ("---:|" if "agreement_all_positions" in hint else ""),
        f"| layer {layer}, {hint['kind']} | {layer + 1}/30 ({hint['depth']:.2f}) | **{100 * hint['agreement']:.1f}%** "
        f"| {100 * hint['chat']:.1f}% | {100 * hint['prose']:.1f}% |"
        + "".join(f" {100 * hint['fires'][tau]['share']:.0f}% / {100 * hint['fires'][tau]['agreement']:.1f}% |"
                  for tau in taus)
        + (f" {100 * hint['agreement_all_positions']:.1f}% |" if "agreement_all_positions" in hint else ""),
        "",
        f"Its hints, priced as above from the same decodes with hints from this exit alone (lossless "
        f"{hint['lossless']}/{prompts}): "
        f"right {100 * row['right']:.1f}%, exit cost {priced['exit_ms']} ms a pass, drafting hidden "
        f"{row['hidden_ms']:.2f} ms a round; saving per round {row['saving_ms']:.2f} ms eager, "
        f"{every['saving_ms']:.2f} ms with the paper's policy on every hint, {gate['saving_ms']:.2f} ms with it at "
        f"min confidence {gate['min_confidence']} ({100 * gate['acted']:.0f}% acted on, "
        f"{100 * gate['right_when_acted']:.1f}% right when acted on).",
    ]
    return lines


def main(argv=None) -> int:
    from ..train_exits import set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--draft", default=None)
    parser.add_argument("--exits", default=None)
    parser.add_argument("--hint-exit", default=None, help="the hint exit's file (default: the committed one; '': none)")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", default=artefacts.text_eval_report_path())
    parser.add_argument("--markdown", default=artefacts.repo_path("docs", "models", "eval_smollm2.md"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--all-positions", action="store_true", help="also score exits on prompt positions")
    parser.add_argument("--alternatives", nargs="*", default=[],
                        help="also decode with trees: K (the draft's K next-best tokens offered as branches at each "
                             "position) or K:B (the verifier taking at most B of them, the draft's likeliest)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from specdec.models.loading import resolve_device, resolve_dtype

    result = evaluate(args.target, args.draft, args.exits, args.hint_exit, gamma=args.gamma,
                      max_new_tokens=args.max_new_tokens,
                      all_positions=args.all_positions, alternatives=args.alternatives,
                      device=resolve_device(args.device),
                      dtype=resolve_dtype(args.dtype))
    write(result, args.json, args.markdown)
    print(markdown(result))
    return 0


def write(result: dict, json_path: Optional[str], md_path: Optional[str]) -> None:
    if json_path:
        os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
        with open(json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    if md_path:
        os.makedirs(os.path.dirname(md_path) or ".", exist_ok=True)
        with open(md_path, "w") as handle:
            handle.write(markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
