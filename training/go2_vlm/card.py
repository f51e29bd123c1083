"""Model card of the Go2 VLM pair (docs/models/go2_vlm.md), written from its train and eval reports.

    python -m training.go2_vlm --card [--out models/go2_vlm]

The numbers in the card come only from ``train_report.json`` and ``eval_report.json`` (written by
``scripts/make_models.py --steps go2_vlm go2_eval``), so the card never disagrees with the
committed weights.
"""

from __future__ import annotations

import os
from typing import List, Optional

from specdec.models import artefacts

from . import pair
from .config import recipe_sha_of
from .evaluate import eval_up_to_date
from .train import OBJECT_MIN_TOKENS

CARD_PATH = artefacts.repo_path("docs", "models", "go2_vlm.md")


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 1e6:.2f} MB" if os.path.isfile(path) else "missing"


def _spec_row(name: str, spec: pair.PairSpec, params: Optional[int]) -> str:
    return (f"| {name} | `Qwen2VLForConditionalGeneration` | {spec.layers} x hidden {spec.hidden} "
            f"({spec.heads} heads, {spec.kv_heads} KV) | {spec.vision_depth} x dim {spec.vision_dim} | "
            f"{params or 0:,} |")


def _validation_row(ev: dict, train_seconds) -> str:
    """Validation success | said done at another object | train s, of the evaluated weights."""
    val = ev.get("target_validation")
    if not val:
        return "n/a (run `make models-eval`) | | "
    return (f"**{len(val['successes'])} / {val['episodes']}** | {val['said_done_elsewhere']} | "
            f"{train_seconds}")


def _draft_line(d: dict, cfg: dict) -> str:
    start = ("a copy of the target keeping its decoder layers "
             f"{cfg.get('draft_init', '').partition(':')[2]} and its whole vision tower (`pair.draft_from_target`)"
             if str(cfg.get("draft_init", "scratch")).startswith("target") else "random weights (`DRAFT_SPEC`)")
    trained = (f" then {d.get('steps')} steps on the expert data, loss (1-a) CE + a KL(target || draft) with"
               f" a = {cfg.get('kd_alpha')} ({d.get('seconds')} s)" if d.get("steps") else "")
    return f"* **Draft**: starts as {start}{trained}."


def _distill_line(dist: Optional[dict], cfg: dict) -> str:
    if not dist:
        return "* **On-policy distillation**: off in this recipe (`distill_steps 0`)."
    h1, h2 = dist.get("half_1", {}), dist.get("half_2", {})
    return (f"* **On-policy distillation** (`distill.py`, {dist.get('seconds')} s): the frames of the expert data,"
            f" of {cfg.get('distill_target_episodes')} rollouts driven by the target and of"
            f" {cfg.get('distill_draft_episodes')} driven by the draft after the first half, every frame asked for"
            f" every object in its room and answered greedily by the target ({dist.get('samples')} samples,"
            f" {dist.get('frames')} frames); {dist.get('steps')} steps of KL(target || draft) over the whole"
            f" vocabulary along the target's answer (lr {cfg.get('distill_lr')}, batch {cfg.get('distill_batch')})."
            f" Held-out agreement with the target's whole answer: {_pct(h1.get('held_out', {}).get('answer_acc'))}"
            f" after the first half, {_pct(h2.get('held_out', {}).get('answer_acc'))} after the second (verb"
            f" {_pct(h2.get('held_out', {}).get('verb_acc'))}).")


def _exits_line(rows: Optional[dict], exits: dict, cfg: dict) -> str:
    if not rows:
        return "* **Exits**: `training.train_exits` on the target's answer positions of the expert data, target frozen."
    return (f"* **Exits** (`verification.py`): the real engine (EdgeDecoder + Verifier in one process) decodes"
            f" {cfg.get('exit_episodes')} rollouts it drives itself, every frame asked for every object in the room"
            f" ({rows.get('rounds')} verification rounds, {rows.get('seconds')} s); hooks on the target keep rows"
            f" 0..accepted of every round - the rows a hint is read from, the last one where the draft went wrong -"
            f" with the final layer's distribution ({rows.get('train')} rows; {rows.get('held_out')} of held-out"
            f" episodes). `training.train_exits` trains the adapters on them ({exits.get('train_seconds')} s).")


def _agreement_history(ev: dict, d: dict) -> list:
    """How the draft came to agree with the target (issue 14): the measurements behind the recipe
    (development runs, fixed numbers) and the committed pair next to the previous one."""
    frames, spec = ev.get("bench_frames") or {}, ev.get("speculative") or {}
    val = ev.get("target_validation") or {}
    cost = frames.get("per_token_cost") or {}
    return [
        "",
        "## Models that agree: how the draft was chosen",
        "",
        "Development runs on the previous target (fine 1 deg / 0.05 m magnitudes), one draft per row distilled on",
        "the same on-policy data (22k samples: expert, target- and draft-driven frames, every object asked),",
        "scored on 100 benchmark frames; acceptance as the engine counted it then (without agreed end tokens), teacher-forced agreement on held-out",
        "episodes of the distillation data:",
        "",
        "| draft | parameters | distillation steps | held-out whole answers = target | acceptance | draft alone = target |",
        "|---|---:|---:|---:|---:|---:|",
        "| previous: 2 x 64 wide, 1-block 32-dim tower, expert data only | 142,752 | 0 | 56.3 % | 34.0 % | 50 % |",
        "| the same, distilled | 142,752 | 2,000 | 62.3 % | 35.6 % | 50 % |",
        "| target layers 0, 1 + its tower | 531,968 | 1,500 | 68.0 % | 36.0 % | 53 % |",
        "| target layers 0, 3 + the tower's first block | 498,496 | 1,500 | 68.8 % | 39.4 % | 59 % |",
        "| target layers 0, 3 + its tower | 531,968 | 1,500 | 72.4 % | 40.6 % | 57 % |",
        "| the same, longer | 531,968 | 5,500 | 74.5 % | 46.1 % | 66 % |",
        "",
        "Starting from the target's own layers beats any from-scratch draft of this size, and layers 0 and 3",
        "beat 0 and 1 (the last layer's output space is the target's). What was left was mostly the magnitude:",
        "among the disagreements of the best of these, two thirds had the verb right and the number 1-3 degrees",
        "off (`right 23` / `right 25`) - the target's fine-grained regression, which a smaller model cannot track",
        "to the degree. Magnitudes on a 5 deg / 0.1 m grid removed most of those near-ties at no cost to the",
        "robot (the target's validation success stayed where it was), and the same draft distilled on the new",
        "target reached 84 % held-out agreement with the committed recipe (6,000 steps).",
        "",
        "The pair at the issue's start (previous), the pair of 2026-12-03 (5 deg grid, on-policy draft, exits on",
        "verification rows, search by turning; its `make models-eval` report) and the committed pair, 200",
        "benchmark frames and the closed loop (the engine of this tree for all):",
        "",
        "| | previous | 2026-12-03 | committed |",
        "|---|---:|---:|---:|",
        f"| acceptance: drafted tokens the target agreed with (bench frames) | 61.5 % | 83.3 % |"
        f" **{_pct(frames.get('acceptance_rate'))}** |",
        f"| acceptance (closed loop) | n/a (36.0 % by the engine's earlier count, which left out agreed end tokens) |"
        f" 84.4 % | **{_pct(spec.get('acceptance_rate'))}** |",
        f"| tokens per round (bench frames / closed loop) | 1.82 / 1.87 | 2.376 / 2.441 | {frames.get('tokens_per_round')} /"
        f" {spec.get('tokens_per_round')} |",
        f"| draft alone = target, whole answer (bench frames) | 52 % | 80 % | {_pct(frames.get('draft_alone_agreement'))} |",
        f"| draft alone, closed-loop success | 34 % | 92 % | {_pct((ev.get('draft') or {}).get('success_rate'))} |",
        f"| hint accuracy, closed loop (all rounds / rounds followed by another) | 11.4 % (scored before the end-token"
        f" fix) / n/a | 73.9 % / 25.0 % | {_pct(spec.get('hint_accuracy'))} / {_pct(spec.get('open_hint_accuracy'))} |",
        f"| hint accuracy, bench frames (all / followed by another) | 57.0 % / 16.5 % | 62.5 % / 33.3 % |"
        f" {_pct(frames.get('hint_accuracy'))} / {_pct(frames.get('open_hint_accuracy'))} |",
        f"| pre-draft hit rate (closed loop) | n/a | 66.7 % | {_pct(spec.get('predraft_hit_rate'))} |",
        f"| target success, evaluation / validation seeds | 92 % / 88 % | 90 % / 88 % |"
        f" {_pct((ev.get('target') or {}).get('success_rate'))} / {_pct(val.get('success_rate'))} |",
        f"| cost of a drafted token / a target token | 0.56x | 0.622x | {cost.get('ratio', 'n/a')}x |",
        f"| draft parameters | 142,752 | 531,968 | {d.get('params', 0):,} |",
    ]


def _failure_lines(ev: dict) -> list:
    """Failed episodes of the target alone by kind (``evaluate.failure_kind``)."""
    from .evaluate import FAILURE_KINDS

    runs = [(f"evaluation seeds {ev.get('seeds')}", ev.get("target")),
            (f"validation seeds {(ev.get('target_validation') or {}).get('seeds')}", ev.get("target_validation"))]
    runs = [(name, r) for name, r in runs if r and "failure_kinds" in r]
    if not runs:
        return []
    out = ["", "Failures of the target alone, by kind (`evaluate.failure_kind`):", "",
           "| episodes | " + " | ".join(FAILURE_KINDS) + " |", "|---|" + "---:|" * len(FAILURE_KINDS)]
    for name, r in runs:
        out.append(f"| {name} ({r['episodes']}) | " + " | ".join(str(r["failure_kinds"].get(k, 0))
                                                           for k in FAILURE_KINDS) + " |")
    return out


def _speculative_lines(spec: dict, frames: Optional[dict], gamma) -> list:
    rows = [("closed loop (the evaluation episodes)", spec)]
    if frames:
        rows.append((f"{frames.get('frames')} benchmark frames (`bench.workloads.go2_workload`)", frames))
    out = ["", f"Speculative decoding (gamma {gamma}, early-exit hints, pre-drafting):", "",
           "| inputs | acceptance (drafted tokens the target agreed with) | tokens / round | hint accuracy"
           " (all rounds) | hint accuracy (rounds followed by another) | pre-draft hit rate | draft alone = target |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        out.append(f"| {name} | **{_pct(r.get('acceptance_rate'))}** | "
                   f"{r.get('tokens_per_round')} | {_pct(r.get('hint_accuracy'))} | {_pct(r.get('open_hint_accuracy'))}"
                   f" | {_pct(r.get('predraft_hit_rate'))} | {_pct(r.get('draft_alone_agreement'))} |")
    cost = (frames or {}).get("per_token_cost")
    if cost:
        out += ["", f"A drafted token costs {cost['draft_ms']} ms, a target token {cost['target_ms']} ms: {cost['ratio']}x"
                " (`training.costs`: one decoding step, one torch thread, thread CPU time, best of 5)."]
    out += ["", "Blocks of up to gamma tokens (`draft_length fixed`). An answer is 2-3 tokens, the last one the end"
            " token `<|im_end|>`. Acceptance counts a drafted end token the target agrees with"
            " (`RoundStats.kept`: the result names it as its next token, the block cut there), so a perfect draft of"
            " `left 30 <|im_end|>` scores 3/3."
            " A hint is right when it names the round's exact result (accepted count and next token); a decision's"
            " last round ends it, so the rounds followed by another are the ones whose hint pre-drafting uses.", ""]
    return out


# other trainings of the committed recipe: models/go2_vlm_spread/<name>_{eval,train}_report.json (beside the
# pair's folder, which a retraining replaces)
SPREAD_RUNS = {"seed 1": "seed1"}


def _spread_lines(ev: dict, out_dir: Optional[str]) -> List[str]:
    """The committed pair next to other trainings of its recipe (only the seed changed)."""
    spread = os.path.join(os.path.dirname(artefacts.go2_pair_paths(out_dir).root.rstrip("/")), "go2_vlm_spread")
    runs = [("committed (seed 0)", ev, None)]
    committed = pair.read_json(os.path.join(artefacts.go2_pair_paths(out_dir).root, "train_report.json")) or {}
    for label, name in SPREAD_RUNS.items():
        other = pair.read_json(os.path.join(spread, f"{name}_eval_report.json"))
        train = pair.read_json(os.path.join(spread, f"{name}_train_report.json")) or {}
        # only trainings of the committed recipe (a run of an earlier recipe is not its spread)
        if other and recipe_sha_of(train.get("config", {}), (committed.get("config") or {}).get("seed")) \
                == committed.get("recipe_sha"):
            runs.append((label, other, train))
    if len(runs) < 2:
        return ["", "The committed recipe has been trained once, so its spread across trainings is not measured yet."]

    def row(name, get):
        return f"| {name} | " + " | ".join(get(r) for _, r, _ in runs) + " |"

    def rate(section, key):
        return lambda r: _pct((r.get(section) or {}).get(key))

    def acceptance(section):  # a report from before agreed end tokens counted has them in agreement_rate
        return lambda r: _pct((r.get(section) or {}).get("agreement_rate", (r.get(section) or {}).get("acceptance_rate")))

    seconds = ", ".join(f"{label} {train.get('total_seconds')} s" for label, _, train in runs[1:] if train)
    return [
        "",
        "Spread of the committed recipe (twice the data, DAgger, search memory, seen from 20 pixels): other",
        "trainings with only the seed changed (`python -m training.go2_vlm --train --eval --force --out DIR",
        f"--set seed=N threads=1`; {seconds} on one thread), their reports in `models/go2_vlm_spread/`:",
        "",
        "| | " + " | ".join(label for label, _, _ in runs) + " |",
        "|---|" + "---:|" * len(runs),
        row("target success, evaluation seeds", rate("target", "success_rate")),
        row("target success, validation seeds", rate("target_validation", "success_rate")),
        row("draft alone, evaluation seeds", rate("draft", "success_rate")),
        row("closed loop: acceptance", acceptance("speculative")),
        row("closed loop: tokens / round", lambda r: str(r.get("speculative", {}).get("tokens_per_round", "n/a"))),
        row("closed loop: hint accuracy", rate("speculative", "hint_accuracy")),
        row("closed loop: pre-draft hit rate", rate("speculative", "predraft_hit_rate")),
        row("bench frames: acceptance", acceptance("bench_frames")),
        row("lossless mismatches (closed loop)",
            lambda r: str(r.get("speculative", {}).get("lossless_mismatches", "n/a"))),
        "",
        "Differences of a few points in these rates between two trainings are the recipe's spread, not a",
        "change of recipe.",
    ]


def render(out_dir: Optional[str] = None) -> str:
    paths = artefacts.go2_pair_paths(out_dir)
    train = pair.read_json(paths.train_report) or {}
    ev = pair.read_json(paths.eval_report) or {}
    cfg = train.get("config", {})
    t, d, dag = train.get("target", {}), train.get("draft", {}), train.get("dagger", {})
    warm = train.get("vision_warmup", {})
    spec = ev.get("speculative", {})
    exits = train.get("exits", {}).get("per_layer", {})
    n_layers = pair.TARGET_SPEC.layers
    stale = "" if eval_up_to_date(out_dir) else (
        "\n> **The evaluation below is not of the committed weights**: run "
        "`python scripts/make_models.py --steps go2_eval`.\n")
    lines = [
        "# Model card: go2_vlm (Go2 VLM pair: target with early exits + edge draft)",
        "",
        "Written by `python -m training.go2_vlm --card` from `models/go2_vlm/train_report.json` and",
        "`eval_report.json`; rebuilt by `make models` (steps `go2_vlm`, `go2_eval`; code in",
        "`training/go2_vlm/`).",
        stale,
        "## What it is",
        "",
        "A vision-language pair that looks at the simulated Go2's front camera (160x120 bgr8, resized by",
        "the processor to 96x64 RGB: 24 image tokens) and answers an instruction such as",
        "`go to the red ball` with one command of the [action language](../action_language.md), e.g.",
        "`left 35`, `forward 0.8`, `strafe_right 0.4` or `done` (2-3 tokens with the end token).",
        "Both models are ordinary transformers `Qwen2VLForConditionalGeneration` built from configs and",
        "trained from scratch here, so the code that serves them (adapters, speculative engine,",
        "early exits, nodes) is the code that serves released Qwen2-VL checkpoints.",
        "",
        "| model | class | text decoder | vision tower | parameters |",
        "|---|---|---|---|---:|",
        _spec_row("target (cloud)", pair.TARGET_SPEC, t.get("params")),
        _spec_row("draft (edge)", pair.PairSpec(**d["spec"]) if d.get("spec") else pair.DRAFT_SPEC, d.get("params")),
        "",
        f"* Tokenizer: shared by both (identical fingerprint, checked by `check_pair`): {len(pair.WORDS)} words",
        "  (chat roles, instruction vocabulary, action verbs, every magnitude the expert writes as one",
        "  token, WordPiece digit pieces so any other number still tokenizes) plus ChatML and Qwen2-VL",
        "  vision specials. The chat template writes the instruction before the image.",
        f"* Early exits: adapters ({train.get('exits', {}).get('adapter', '?')}) after decoder layers "
        f"{', '.join(str(int(k) + 1) for k in sorted(exits))} of {n_layers}, in",
        "  `target/early_exit.safetensors` (metadata: base-model fingerprint, layers, shapes).",
        f"* Committed: `models/go2_vlm/target/model.safetensors` ({_size(os.path.join(paths.target, 'model.safetensors'))}),"
        f" `draft/model.safetensors` ({_size(os.path.join(paths.draft, 'model.safetensors'))}),"
        f" `target/early_exit.safetensors` ({_size(paths.exits)}), configs, tokenizer, processor.",
        "* Licence: trained here on simulator data only; same licence as the project.",
        "",
        "## Training",
        "",
        f"* **Magnitudes** on a grid of {cfg.get('turn_step_deg', 1.0):g} deg and {cfg.get('move_step_m', 0.05):g} m"
        " (`data.coarse_action`; the expert's own grid is 1 deg, 0.05 m): the controller never needed the finer"
        " steps (the next decision corrects what is left), and every near-tie the two models break differently"
        " is a rejected draft token.",
        f"* **Data** ({train.get('data', {}).get('seconds', '?')} s): {cfg.get('episodes')} expert rollouts in",
        f"  the simulator (3-6 objects, 4 colours x 2 shapes; {_pct(cfg.get('perturb_prob'))} of the executed actions",
        f"  replaced by random ones; {_pct(cfg.get('blocked_prob'))} of the episodes start behind another object,",
        f"  {_pct(cfg.get('near_prob'))} close to an object, often the instructed colour's other shape).",
        "  Every frame is labelled for every object in the room as the instructed one (same image, other",
        "  instruction, the expert's answer for it), except answers that depend on what the camera cannot",
        f"  see. {train.get('data', {}).get('frames', '?')} samples; every {cfg.get('held_out_every')}th episode held out.",
        (f"* **Search memory** (`relocate_free_m {cfg.get('relocate_free_m')}`): every prompt ends `turned little`, or"
         " `turned around` once the robot has turned a full circle in place since it last walked (counted from the"
         " actions the controller ran: `specdec.models.prompting.turned_after`). An instructed object that covers"
         f" fewer than {cfg.get('seen_min_pixels', 8)} of the camera's 160x120 pixels (`seen_min_pixels`: hidden,"
         " out of view or too small to make out) is answered by the search the camera can show: the search turn,"
         f" and after a full circle a walk on (`forward 1`) where {cfg.get('relocate_free_m')} m of floor ahead are"
         " free; such frames are asked both ways." if cfg.get("relocate_free_m") else
         "* **Search memory**: off in this recipe (`relocate_free_m 0`)."),
        f"* **Target**: {t.get('steps')} steps of AdamW (lr {t.get('lr')}, batch {t.get('batch')}), cross-entropy on the",
        "  answer with ordinal label smoothing of the magnitudes, plus training-only auxiliary heads (objects",
        "  per image token scored against the colour/shape word embeddings; instructed object per image",
        f"  token; target visibility, bearing, distance; each visible object's colour and shape, weight"
        f" {cfg.get('object_weight', 0)}): {t.get('seconds')} s.",
        (f"* **Vision warm-up** first ({warm.get('steps')} steps of {warm.get('frames_per_step')} frames, lr"
         f" {warm.get('lr')}, {warm.get('seconds')} s): the vision tower alone learns each visible object's colour"
         " (per image token) and shape (the mean of the object's tokens), scored against the decoder's colour and"
         " shape word embeddings (`train.object_loss`). It gets the tower past the slow start of shape learning"
         " before the decoder depends on its features." if warm else
         "* **Vision warm-up**: off in this recipe (`vision_warmup_steps 0`)."),
        (f"* **DAgger round**: {cfg.get('dagger_episodes')} rollouts driven by the trained target, every state"
         " labelled by the expert, then"
         f" {dag.get('steps')} fine-tuning steps on all data (lr {dag.get('lr')}): rollouts"
         f" {dag.get('rollout_seconds')} s, training {dag.get('seconds')} s." if dag else
         "* **DAgger round**: off in this recipe (`dagger_episodes 0`; see the development runs below)."),
        _draft_line(d, cfg),
        _distill_line(train.get("distill"), cfg),
        _exits_line(train.get("exit_rows"), train.get("exits", {}), cfg),
        f"* **Total**: {train.get('total_seconds')} s wall clock on {train.get('threads')} CPU threads (x86-64), seed {cfg.get('seed')}",
        "  (fixed seeds: the same data for a config; the recipe hash in the report decides whether `make models`",
        "  retrains; the training itself is not bit-exact across runs, see below).",
        "",
        "## Quality",
        "",
        "Teacher-forced on held-out episodes (all instructed objects):",
        "",
        "| | verb correct | whole answer correct |",
        "|---|---:|---:|",
        f"| target | {_pct(t.get('held_out', {}).get('verb_acc'))} | {_pct(t.get('held_out', {}).get('answer_acc'))} |",
    ]
    if dag:
        lines.append(f"| target after DAgger (held-out set incl. DAgger episodes) | "
                     f"{_pct(dag.get('held_out', {}).get('verb_acc'))} | {_pct(dag.get('held_out', {}).get('answer_acc'))} |")
    lines += [
        f"| draft | {_pct(d.get('held_out', {}).get('verb_acc'))} | {_pct(d.get('held_out', {}).get('answer_acc'))} |",
        "",
        "Image features, held-out frames (`train.shape_accuracy`: the colour of each one-object image token, the",
        f"shape of each object covering at least {OBJECT_MIN_TOKENS} tokens, read against the word embeddings):",
        "",
        "| | colour | shape | objects |",
        "|---|---:|---:|---:|",
        f"| target | {_pct(t.get('held_out', {}).get('colour_acc'))} | {_pct(t.get('held_out', {}).get('shape_acc'))} | "
        f"{t.get('held_out', {}).get('objects', 'n/a')} |",
        f"| draft | {_pct(d.get('held_out', {}).get('colour_acc'))} | {_pct(d.get('held_out', {}).get('shape_acc'))} | "
        f"{d.get('held_out', {}).get('objects', 'n/a')} |",
        "",
        "Closed loop (`go2_sim.closed_loop`: strict parser, the controller's motion executor, the simulated",
        f"Go2), {ev.get('episodes', '?')} seeded episodes (seeds {ev.get('seeds')}) with 2-5 distractors, at most",
        f"{ev.get('max_decisions', '?')} decisions; success = said `done` within 0.5 m of the instructed object, facing it:",
        "",
        "| policy | success | mean decisions | invalid actions |",
        "|---|---:|---:|---:|",
    ]
    for name in ("expert", "target", "draft", "speculative"):
        r = ev.get(name)
        if r:
            label = {"speculative": f"speculative (draft + target, early exits, gamma {ev.get('gamma')})"}.get(name, name)
            lines.append(f"| {label} | {_pct(r.get('success_rate'))} | {r.get('mean_decisions')} | "
                         f"{r.get('invalid_actions')} |")
    lines += [
        "",
        *_failure_lines(ev),
        *_speculative_lines(spec, ev.get("bench_frames"), ev.get("gamma")),
        f"* Lossless: speculative decoding reproduced the target alone at every one of "
        f"{spec.get('decisions')} decisions ({spec.get('lossless_mismatches')} mismatches); same episode outcomes: "
        f"{spec.get('same_outcomes_as_target')}.",
        "",
        "Early-exit top-1 agreement with the target's final layer:",
        "",
        "| exit after layer | depth | held-out training rows | held-out rounds named exactly | "
        "closed-loop decoding, every position (eval) |",
        "|---:|---:|---:|---:|---:|",
    ]
    agree_eval = ev.get("exit_agreement", {})
    rounds = train.get("exits", {}).get("round_agreement", {})
    for k in sorted(exits, key=int):
        lines.append(f"| {int(k) + 1} of {n_layers} | {exits[k].get('depth')} | {_pct(exits[k].get('agreement'))} | "
                     f"{_pct(rounds.get(k))} | {_pct(agree_eval.get(k))} |")
    lines += _agreement_history(ev, d)
    lines += [
        "",
        "## Development runs",
        "",
        "Each row is `python -m training.go2_vlm --train --eval --force --out /tmp/run --set <overrides>` from the",
        "recipe of its time (50 evaluation episodes; one run each). Retraining one config is not bit-exact",
        "across runs (multi-threaded CPU reductions): two trainings of the same recipe gave 75.5 % and",
        "70.9 % held-out verb accuracy, so differences of a few points between rows are noise.",
        "",
        "| run | overrides | target success | draft success | acceptance (earlier rows: the engine's count of their"
        " time, without agreed end tokens) |",
        "|---|---|---:|---:|---:|",
        "| blocked starts only, 2200 steps | `blocked_prob=0.3 near_prob=0 target_steps=2200 object_weight=0 vision_warmup_steps=0` | 72 % | 46 % | 34.2 % |",
        "| + DAgger round (150 rollouts, 700 steps) | `... dagger_episodes=150` | 58 % | 22 % | 34.8 % |",
        "| + near-object starts, 2200 steps | `target_steps=2200 object_weight=0 vision_warmup_steps=0` | 78 % | 36 % | 31.8 % |",
        "| + absent-twin labels | `... absent_twins=true` | 56 % | 0 % | 43.7 % |",
        "| previous recipe: near-object starts, 4000 steps | `object_weight=0 vision_warmup_steps=0` | 82 % | 10 % | 30.1 % |",
        "| + object colour/shape loss, vision warm-up (the previous pair) | `turn_step_deg=1 move_step_m=0.05"
        " draft_init=scratch draft_steps=1500 distill_steps=0 exit_episodes=0` | 92 % | 34 % | 36.0 % |",
        "| 2026-12-03 recipe: + 5 deg / 0.1 m grid, draft from the target's layers, on-policy distillation, exits on"
        " verification rows | `episodes=350 target_steps=4000 dagger_episodes=0 relocate_free_m=0 seen_min_pixels=8`"
        " | 90 % | 92 % | 84.4 % |",
        f"| **committed**: + twice the data, a DAgger round, search memory, objects seen from 20 camera pixels on"
        f" (validation sweep below) | (none) | **{_pct((ev.get('target') or {}).get('success_rate'))}** | "
        f"{_pct((ev.get('draft') or {}).get('success_rate'))} | {_pct(spec.get('acceptance_rate'))} |",
        "",
        "### Validation seeds (recipe sweep)",
        "",
        "The 50 evaluation seeds are too few to rank recipes (one episode = 2 points) and choosing on them",
        "would overfit them. `scripts/experiments/go2_recipe_sweep.py` trains target-only variants and scores",
        "them on 100 validation seeds (1000-1099, disjoint from the evaluation seeds and the training",
        "rollouts); `--evaluate DIR` scores a trained pair the same way and `--diagnose DIR` gives its",
        "teacher-forced accuracy and what its image features tell.",
        "",
        "| target | validation success | said done at another object | train s (2 threads) |",
        "|---|---:|---:|---:|",
        "| previous recipe (`object_weight=0 vision_warmup_steps=0`) | 71 / 100 | 23 | 621 |",
        "| previous + `boundary_repeat=4` (done / twin-close samples x4) | 74 / 100 | 20 | 641 |",
        "| previous + `boundary_repeat=4 target.vision_dim=96 target.vision_depth=3` | 66 / 100 | 22 | 814 |",
        "| previous + `boundary_repeat=4 image=128x96` (48 image tokens) | 70 / 100 | 21 | 874 |",
        "| previous + `object_weight=1 vision_warmup_steps=2500` (sweep run) | **87 / 100** | **0** | 668 |",
        "| the 2026-12-03 recipe (`12-03 recipe` below), its weights (`make models-eval` then) | 88 / 100 | 1 |"
        " 626.2 (1 thread) |",
        "| 12-03 recipe + `dagger_episodes=150` (a DAgger round) | 92 / 100 | 1 | 676 (1 thread) |",
        "| 12-03 recipe + `search_walk_m=2.5` (hidden objects: the walking search) | 89 / 100 | 0 | 513 |",
        "| 12-03 recipe + both | 88 / 100 | 3 | 609 (1 thread) |",
        "| 12-03 recipe + `image=128x96` (48 image tokens) | 92 / 100 | 0 | 932 (1 thread) |",
        "| 12-03 recipe + `image=128x96 dagger_episodes=150` | 91 / 100 | 0 | 923 (1 thread) |",
        "| 12-03 recipe + `image=128x96 seed=1` (a second training) | 91 / 100 | 0 | 750 |",
        "| 12-03 recipe + `search_walk_m=100` (the search turn wherever the object is not in the picture,"
        " not the expert's planned path) | 85 / 100 | 2 | 711 (1 thread) |",
        "| 12-03 recipe + `episodes=700 target_steps=6000` (twice the data) | 91 / 100 | 0 | 1095 (1 thread) |",
        "| 12-03 recipe + `blocked_prob=0.45 dagger_episodes=150` | 92 / 100 | 1 | 781 (1 thread) |",
        "| 12-03 recipe + `small_repeat=3` (object in at most 2 image tokens: samples x3) | 92 / 100 | 1 |"
        " 717 (1 thread) |",
        "| 12-03 recipe + `small_repeat=3 dagger_episodes=150` | 85 / 100 | 3 | 717 (1 thread) |",
        "| 12-03 recipe + `image=160x128` (80 image tokens, the camera's own resolution) | 90 / 100 | 1 |"
        " 1999 (1 thread) |",
        "| 12-03 recipe + `object_weight=3` (the per-object colour/shape loss x3) | 89 / 100 | 2 | 757 (1 thread) |",
        "| 12-03 recipe + `object_weight=3 vision_warmup_steps=5000` (held-out shape 0.86 after the"
        " warm-up, 0.81 with 2500 steps) | 91 / 100 | 0 | 787 (1 thread) |",
        "| 12-03 recipe + `object_min_tokens=1` (the shape of objects in 1-3 image tokens scored too; held-out"
        " shape 0.93) | 90 / 100 | 1 | 578 (1 thread) |",
        "| 12-03 recipe + `object_min_tokens=1 object_weight=3` (held-out shape 0.93) | 89 / 100 | 2 |"
        " 580 (1 thread) |",
        "| 12-03 recipe + `search_walk_m=2.5 last_move_feedback=true bump_prob=0.3` (walking search; the"
        " prompt says whether the last motion stalled; 30 % of the decisions near an obstacle walk into it)"
        " | 90 / 100 | 0 | 472 (1 thread) |",
        "| 12-03 recipe + `last_move_feedback=true bump_prob=0.3` (the same, search by turning) | 90 / 100 |"
        " 1 | 485 (1 thread) |",
        "| 12-03 recipe + `search_walk_m=2.5 last_move_feedback=true bump_prob=0.3 dagger_episodes=150` |"
        " 87 / 100 | 0 | 440 (1 thread) |",
        "| 12-03 recipe + `search_walk_m=2.5 last_move_feedback=true bump_prob=0.3 target.hidden=192"
        " target.heads=6 target.intermediate=384` (a 1.5x wider decoder) | 87 / 100 | 2 | 692 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=2.5` (search memory: the prompt ends `turned around` once the robot"
        " has turned a full circle in place since it last walked; an object not in the picture is answered by"
        " the search turn before that, by walking on where 2.5 m of floor are free after it) | 88 / 100 | 0 |"
        " 376 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=2.5 seed=1` | 86 / 100 | 3 | 370 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=2.5 dagger_episodes=150` | 87 / 100 | 1 | 395 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=1.5 dagger_episodes=150` | 89 / 100 | 1 | 409 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=1.5 dagger_episodes=150 episodes=700 target_steps=6000` (twice"
        " the data) | 93 / 100 | 1 | 624 (1 thread) |",
        "| the same, `seed=1` / `seed=2` | 91 / 100, 93 / 100 | 1, 1 | 599, 522 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=1.5 episodes=700 target_steps=6000 target.hidden=192 target.heads=6"
        " target.intermediate=384` (twice the data, a 1.5x wider decoder) | **94 / 100** | 0 | 1023 (1 thread) |",
        "| the same, `seed=1` / `seed=2` | 91 / 100, 89 / 100 | 0, 2 | 985, 915 (1 thread) |",
        "| the same (seed 0) + `dagger_episodes=150` | 86 / 100 | 3 | 996 (1 thread) |",
        "| the same (seed 0) without the search memory (`episodes=700 target_steps=6000 target.hidden=192"
        " target.heads=6 target.intermediate=384`) | 89 / 100 | 2 | 977 (1 thread) |",
        "| 12-03 recipe + `relocate_free_m=1.5 dagger_episodes=150 episodes=700 target_steps=6000"
        " seen_min_pixels=20` (twice the data, a DAgger round, the memory, and an object counts as seen - answered"
        " by the expert - only from 20 camera pixels on, below that by the search) | **95 / 100** | 0 | 536 (1 thread) |",
        "| the same, `seed=1` / `seed=2` | 92 / 100, 95 / 100 | 1, 0 | 564, 544 (1 thread) |",
        "| the same (seed 0) with the 1.5x wider decoder instead of the DAgger round | 93 / 100 | 0 | 954 (1 thread) |",
        f"| committed weights (`make models-eval`) | {_validation_row(ev, t.get('seconds'))} |",
        "",
        "What is left of the 12-03 target's validation failures (2026-12-03): in 8 of its 12 the",
        "instructed object stands behind another one (the straight path is blocked), hidden or showing",
        "as a sliver at the obstacle's edge, and the target answers the search turn in front of it for 40",
        "decisions. The expert restricted to what the camera shows (its own answer when the object covers",
        "at least 8 of the 160x120 pixels, else the search; `scripts/experiments/go2_camera_expert.py`)",
        "fails only 3 of the 100 validation seeds (1008, 1064, 1096) with the search turn and none with the",
        "walking search of `expert.search_action` (walk on while 2.5 m of floor ahead are free; 10.2",
        "decisions an episode against 7.4 for the unrestricted expert). So a one-frame policy can",
        "reach 95 %: most of the target's failures are imitation errors on hard pictures (a few pixels of",
        "the object beside an obstacle 2-5 m away), not the limit of seeing one frame. Trained on the",
        "walking search (`search_walk_m=2.5`: objects not in the picture answered by it), the target found",
        "hidden objects but got stuck walking into objects beside or below the camera's view, where the",
        "picture shows free floor: 89 / 100. A DAgger round gave 92 / 100, twice the image tokens 92 / 100",
        "(91 in a second training; the same hard seeds fail: 1004, 1008, 1012, 1064), no better than the",
        "12-03 recipe's own second training (seed 1: 92 / 100) and within the spread",
        "of one evaluation (binomial: about 3 points at 90 % on 100 seeds; 3 of the 12-03 target's 12",
        "failures turn into successes when only the render noise of later frames changes). None of these",
        "is committed.",
        "",
        "How small an object must a one-frame policy notice? The camera-restricted expert again, now",
        "counting the object as seen only from N of the 160x120 pixels on",
        "(`go2_camera_expert.py --search-walk-m 0 2.5 1.5 --min-pixels 8 12 16 20 30 60 120`, validation seeds):",
        "",
        "| object counts as seen from | search by turning | walking search 2.5 m | walking search 1.5 m |",
        "|---:|---:|---:|---:|",
        "| 8 pixels | 97 / 100 | 100 / 100 | 98 / 100 |",
        "| 12 pixels | 97 / 100 | 100 / 100 | |",
        "| 16 pixels | 96 / 100 | 99 / 100 | |",
        "| 20 pixels | 94 / 100 | 99 / 100 | |",
        "| 30 pixels | 89 / 100 | 98 / 100 | 94 / 100 |",
        "| 60 pixels | 62 / 100 | 94 / 100 | 95 / 100 |",
        "| 120 pixels | 36 / 100 | 78 / 100 | 92 / 100 |",
        "",
        "Every variant of the 12-03 recipe that searches by turning lands",
        "at 85-92 / 100, like a policy that notices objects from about 20-30 camera pixels on. Its hardest",
        "seeds are that policy's too: 1004, 1008 and 1064 fail in every variant and with the 30-pixel",
        "expert (the object 2.5-4.7 m away, 10-60 pixels, often at the edge of its same-colour twin or of",
        "another object in front of it; traced frame by frame with the 12-03 target). 60 camera pixels are",
        "19 of the 96x64 model input, 7 % of one image token. With the turning search, 95 % needs the",
        "policy to act on objects of about 16 pixels (5 model pixels); the walking search tolerates 30-60",
        "pixels (the robot walks until the object is larger), but the target trained on it walks into",
        "objects the picture does not show. The input resolution is not what stops it: at 160x128 (80",
        "image tokens, about one model pixel per camera pixel) the target still fails 1004, 1008, 1012 and",
        "1064 (90 / 100). Scoring the shape of objects of 1-3 image tokens (`object_min_tokens=1`) lifted",
        "held-out shape accuracy to 0.93 and left the closed loop at 89-90. A policy told that its last move",
        "was blocked (`last_move_feedback`: prompts end `last move ok` or `last move blocked` after a motion",
        "the controller stopped as stalled, the same signal the edge node takes from `ActionStatus`;",
        "`bump_prob` puts such frames in the data, about 10 % of them) no longer walks into what the picture does",
        "not show - its failed episodes hold 0-1 decisions taken after a stall (`go2_recipe_sweep.py --evaluate"
        " DIR`: `failed_blocked_decisions`; the 12-03 target's 0, except one episode stuck for 32) - but"
        " reaches only 90 / 100 with the walking",
        "search and 90 with the turning one, and 87 with a DAgger round or a 1.5x wider decoder: the",
        "failures move to search loops (turn, turn, walk, walk without the object coming into view),",
        "strafing back and forth, and turning away from the object 0.8 m in front of it. Every variant so",
        "far lands at 85-92 / 100; more data, DAgger, more image tokens, a wider decoder, small-object",
        "samples and losses, and the blocked flag did not move it.",
        "",
        "A one-frame policy that searches by turning cannot know it has already looked all around: in front",
        "of the object that hides its target it turns for ever. Told so (`relocate_free_m`: the prompt's",
        "`{turned}` becomes `around` after a full circle of turning in place since the last translation, counted",
        "by `specdec.models.prompting.turned_after` from the actions the controller ran - the edge node takes",
        "them from `ActionStatus`), the search walks on to a new place to look from where the floor ahead is",
        "free, and the camera-restricted expert needs far less of the object to succeed",
        "(`go2_camera_expert.py --search-walk-m 0 --min-pixels 8 16 20 30 60 120 --relocate-free-m 0 1.5 2.5`,",
        "validation seeds; this table and the sweep rows `relocate_free_m` above: 2026-12-05):",
        "",
        "| object counts as seen from | search by turning | + walk on after a full circle, 1.5 m free | 2.5 m free |",
        "|---:|---:|---:|---:|",
        "| 8 pixels | 97 / 100 | 99 / 100 | 99 / 100 |",
        "| 16 pixels | 96 / 100 | 100 / 100 | 100 / 100 |",
        "| 20 pixels | 94 / 100 | 100 / 100 | 100 / 100 |",
        "| 30 pixels | 89 / 100 | 98 / 100 | 99 / 100 |",
        "| 60 pixels | 62 / 100 | 84 / 100 | 89 / 100 |",
        "| 120 pixels | 36 / 100 | 68 / 100 | 68 / 100 |",
        "",
        "So a policy that notices objects from 20-30 pixels on, as the target does, could reach 98-100 with it.",
        "The targets trained on it (rows `relocate_free_m` above) use it - traced episode by episode, seeds",
        "the 12-03 target loses in front of a hidden object (1008, 1010, 1020) now end with `turned around`,",
        "`forward 1` and the object found - but land at 86-89 / 100 all the same: the failures move to other",
        "imitation errors (strafing left and right in front of an obstacle where the expert turns or walks",
        "on, turning past an object 0.3 m away, a search that walks on and turns around again). With twice",
        "the data and a 1.5x wider decoder as well it reached 94 / 100, the best of any run, but 91 and 89",
        "in two more trainings and 86 with a DAgger round (the same decoder and data without the memory: 89;",
        "twice the data with a DAgger round and the memory: 93, 91 and 93): within the 85-94 every recipe",
        "spreads over. None of these was committed.",
        "",
        "What moved it was asking for less (2026-12-05). Those recipes still label an object of 8 camera pixels",
        "with the expert's approach: two or three model pixels, which the target cannot make out beside an",
        "obstacle, so it learns noise there. With `seen_min_pixels=20` an object of fewer than 20 pixels is",
        "answered by the search, like a hidden one; with the memory that costs the camera-restricted expert",
        "nothing (100 / 100 at 20 pixels, table above). Twice the data, a DAgger round, the memory and this",
        "threshold gave 95, 92 and 95 / 100 in three trainings (mean 94.0; without the threshold 93, 91 and 93,",
        "mean 92.3), with the wider decoder instead of the DAgger round 93. The gain is about the size of one",
        "evaluation's spread, but it is the first recipe whose trainings reach 95. It is the committed recipe:",
        "its `make models-eval` result is the last row of the sweep table, its second training is in the",
        "spread table below.",
        "",
        "The previous recipe sat at a plateau near 70 % on validation seeds, and nearly all its failures were",
        "the same: it said `done` at the same-colour object of the other shape. The cause was its vision",
        "tower: read against the shape words, its image features told a ball from a box no better than chance",
        "(shape accuracy 57 % on held-out objects of 4+ image tokens, 60 % on training ones; colour 99.5 %).",
        "The per-token region targets it was trained on let colour alone explain almost all of the loss, so",
        "shape was never learned; more steps, oversampling the twin decisions, a wider tower and twice the",
        "image tokens all left it there. The fix is a direct, object-level target (`train.object_loss`): the",
        "shape of each object from the mean of the tokens it covers (a silhouette is spread over tokens)",
        "and the colour of each token, trained alone on the vision tower for a short warm-up (shape learning",
        "starts slowly) and then kept in the target's auxiliary loss.",
        "`--diagnose`, previous -> 12-03 weights: shape accuracy of the image features 57 % -> 90 % held",
        "out (60 % -> 100 % on training frames); verb accuracy on samples with the twin in view 29 % -> 74 %",
        "held out (41 % -> 87 % on training rows); wrong-object `done`s on the validation seeds 23 -> 1.",
        "Three trainings of that recipe (not bit-exact): the sweep run, its `make models`",
        "run and `make models MODELS_ARGS=--force` on a fresh clone reached 94 %, 92 % and 94 % on the",
        "evaluation seeds (`--evaluate DIR --seeds 0:50`, `make_models.py --steps go2_eval`); the fresh-clone",
        "pair's draft 54 %, acceptance 43 %. On validation: 87 and 88 / 100 (the first two).",
    ] + _spread_lines(ev, out_dir) + [
        "",
        "## Limits",
        "",
        "* A toy-sized pair for a toy world: it knows 8 objects, one room and one camera; it is here so",
        "  the whole system runs, is tested and is measured end to end on a CPU. For a real robot use a",
        "  released VLM pair (e.g. Qwen2-VL-2B / 7B) and train its exits with `training.train_exits`.",
        "* Remaining failures: see the failure kinds above. The search memory took most of the episodes the",
        "  earlier targets lost turning in front of a hidden object; what is left is a few of each kind",
        "  (imitation errors: strafing at an obstacle, `done` at the wrong object; see the validation sweep).",
        "",
    ]
    return "\n".join(lines)


def write(out_dir: Optional[str] = None, path: str = CARD_PATH) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(render(out_dir))
    return path
