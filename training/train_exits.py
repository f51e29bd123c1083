"""Train early-exit adapters for a frozen target.

One adapter per exit layer (:class:`specdec.models.early_exit.EarlyExitHeads`), trained to match
the target's *final* next-token distribution (KL over a candidate vocabulary, see
:mod:`training.losses`). The target runs once over the data: the data source captures
the outputs of all exit layers and the final top-k distribution in the same forward passes, then
the adapters train on those cached features (cheap: the target is never run again).

Shared by both pairs: the text pair's command line is :mod:`training.text.exits`, the Go2 pair
trains its exits in :func:`training.go2_vlm.train.build`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional, Sequence

import torch

from specdec.models.early_exit import EarlyExitHeads
from specdec.models.layout import decoder_layout
from .losses import candidate_set, full_vocab_stats, kl_on_candidates
from .optim import warmup_cosine
from .teacher import Labels


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def set_threads(n: Optional[int] = None) -> None:
    n = n or int(os.environ.get("SPECDEC_THREADS", "0") or 0) or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)


def load_target(path: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a text LM or a VLM folder; the model frozen and in eval mode."""
    import transformers

    model = None
    errors = []
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText"):
        cls = getattr(transformers, auto, None)
        if cls is None:
            continue
        try:
            model = cls.from_pretrained(path, dtype=dtype)
            break
        except (ValueError, KeyError) as exc:
            errors.append(f"{auto}: {exc}")
    if model is None:
        raise ValueError(f"cannot load {path}: {'; '.join(errors)}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except Exception:  # VLM folders may only have a processor
        tokenizer = transformers.AutoProcessor.from_pretrained(path).tokenizer
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


# probabilities at which the held-out evaluation reports a selective exit (it fires only where its top
# token is at least this probable) and tries the edge's gate on hints (hint_min_confidence)
FIRE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


@torch.no_grad()
def evaluate_exits(heads: EarlyExitHeads, labels: Labels, batch: int = 512, lens: bool = False,
                   thresholds: Sequence[float] = ()) -> Dict[int, dict]:
    """Per exit layer: top-1 agreement with the final layer and KL (full vocabulary); with
    ``thresholds``, also ``"fires"``: for each threshold, the share of positions whose exit top token
    has at least that probability and the agreement on those positions."""
    layout = heads._layout
    device = layout.lm_head.weight.device
    dtype = layout.lm_head.weight.dtype
    out = {}
    n = len(labels)
    for layer in heads.exit_layers:
        agree = kl = 0.0
        top_p, right = [], []
        for start in range(0, n, batch):
            h = labels.hidden[layer][start : start + batch].to(device, dtype)
            h = h if lens else heads.adapters[str(layer)](h)
            logits = layout.lm_head(layout.final_norm(h))
            ids = labels.topk_ids[start : start + batch].to(device)
            a, k = full_vocab_stats(logits, ids, labels.topk_logp[start : start + batch].to(device))
            agree += a
            kl += k
            if thresholds:
                top_p.append(torch.softmax(logits.float(), -1).amax(-1).cpu())
                right.append((logits.argmax(-1) == ids[:, 0]).cpu())
        out[layer] = {"agreement": agree / max(1, n), "kl": kl / max(1, n)}
        if thresholds and n:
            top_p, right = torch.cat(top_p), torch.cat(right)
            out[layer]["fires"] = {
                tau: {"share": float((top_p >= tau).float().mean()),
                      "agreement": float(right[top_p >= tau].float().mean()) if bool((top_p >= tau).any()) else 0.0}
                for tau in thresholds}
    return out


def train_exit_heads(
    model,
    labels: Labels,
    layers: Sequence[int],
    *,
    adapter: str = "mlp",
    rank: int = 128,
    epochs: float = 3.0,
    batch: int = 1024,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    n_random: int = 2048,
    seed: int = 0,
    held_out: Optional[Labels] = None,
    ls_init: bool = True,
    progress: bool = True,
    log=print,
) -> tuple:
    """Train adapters on ``labels`` (which must hold hidden states of ``layers``).

    Returns (heads, report) where report has per-layer held-out agreement before/after.
    """
    from tqdm import tqdm

    torch.manual_seed(seed)
    heads = EarlyExitHeads(model, layers, adapter=adapter, rank=rank)
    layout = decoder_layout(model)
    device = layout.lm_head.weight.device
    weight = layout.lm_head.weight.detach()
    heads.to(device=device, dtype=torch.float32)
    model_dtype = weight.dtype
    norm = layout.final_norm

    before = evaluate_exits(heads, held_out, lens=True) if held_out is not None and len(held_out) else {}
    ls_seconds = 0.0
    if ls_init and adapter == "mlp" and labels.final is not None:
        t0 = time.time()
        least_squares_init(heads, labels, norm)
        ls_seconds = time.time() - t0
        log(f"exit heads: least-squares init in {ls_seconds:.1f}s")
    ls_eval = evaluate_exits(heads, held_out) if ls_seconds and held_out is not None and len(held_out) else {}
    n = len(labels)
    steps_per_epoch = max(1, math.ceil(n / batch))
    total = max(0, int(round(epochs * steps_per_epoch)))
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, total)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    losses: List[float] = []
    bar = tqdm(total=total, desc="exit heads", disable=not progress, leave=False)
    step = 0
    while step < total:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            if step >= total:
                break
            rows = order[i : i + batch]
            t_ids = labels.topk_ids[rows].to(device)
            t_logp = labels.topk_logp[rows].to(device)
            cand = candidate_set(t_ids, weight.shape[0], n_random, gen)
            w_c = weight[cand].float().t()
            index = torch.searchsorted(cand, t_ids)
            loss = 0.0
            for layer in heads.exit_layers:
                h = labels.hidden[layer][rows].to(device, torch.float32)
                y = heads.adapters[str(layer)](h)
                normed = _norm(norm, y)
                loss = loss + kl_on_candidates(normed @ w_c, index, t_logp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()) / len(heads.exit_layers))
            bar.update(1)
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
    bar.close()
    elapsed = time.time() - start
    heads.to(dtype=model_dtype)
    after = evaluate_exits(heads, held_out) if held_out is not None and len(held_out) else {}
    n_layers = len(layout.layers)
    report = {
        "exit_layers": heads.exit_layers,
        "num_layers": n_layers,
        "adapter": adapter,
        "rank": rank if adapter != "linear" else 0,
        "train_positions": n,
        "held_out_positions": len(held_out) if held_out is not None else 0,
        "epochs": epochs,
        "steps": total,
        "batch": batch,
        "lr": lr,
        "train_seconds": round(elapsed + ls_seconds, 1),
        "least_squares_init": bool(ls_seconds),
        "device": str(device),
        "final_train_kl": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "per_layer": {
            str(layer): {
                "depth": round((layer + 1) / n_layers, 3),
                "agreement": round(after.get(layer, {}).get("agreement", float("nan")), 4),
                "kl": round(after.get(layer, {}).get("kl", float("nan")), 4),
                "lens_agreement": round(before.get(layer, {}).get("agreement", float("nan")), 4),
                "ls_agreement": round(ls_eval.get(layer, {}).get("agreement", float("nan")), 4),
                "lens_kl": round(before.get(layer, {}).get("kl", float("nan")), 4),
            }
            for layer in heads.exit_layers
        },
    }
    return heads, report


@torch.no_grad()
def least_squares_init(heads: EarlyExitHeads, labels: Labels, final_norm, ridge: float = 1e-3, chunk: int = 4096):
    """Closed-form affine part of each MLP adapter: ridge regression of the normalised exit stream
    onto the final layer's normalised stream (:func:`final_stream`)."""
    gain = final_gain(final_norm)
    for layer in heads.exit_layers:
        module = heads.adapters[str(layer)]

        def chunks(module=module, layer=layer):
            for start in range(0, len(labels), chunk):
                x = module.normalise(labels.hidden[layer][start : start + chunk].float())
                yield x, final_stream(labels.final[start : start + chunk], gain) - x

        weight, bias = ridge_affine(chunks(), ridge)
        module.proj.weight.copy_(weight.to(module.proj.weight.device, module.proj.weight.dtype))
        module.proj.bias.copy_(bias.to(module.proj.bias.device, module.proj.bias.dtype))


def final_gain(final_norm) -> torch.Tensor:
    """The final norm's gain ``g``, kept away from zero (it divides)."""
    gain = final_norm.weight.detach().float().cpu()
    return torch.where(gain.abs() < 1e-3, torch.full_like(gain, 1e-3), gain)


def final_stream(final: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The final layer's stream at unit RMS, from the target's final *normed* state ``f``: the final
    norm is ``g * y / rms(y)``, so reaching ``y = f / g`` reproduces the final logits exactly."""
    z = final.float() / gain
    return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6)


def ridge_affine(chunks, ridge: float = 1e-3):
    """(weight [out, in], bias [out]) of the ridge regression ``y ~ W x + b`` over ``(x, y)`` chunks,
    accumulated in float64; the penalty is ``ridge`` times the mean diagonal of the Gram matrix."""
    xtx = xty = None
    for x, y in chunks:
        xa = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
        if xtx is None:
            xtx = torch.zeros(xa.shape[1], xa.shape[1], dtype=torch.float64)
            xty = torch.zeros(xa.shape[1], y.shape[1], dtype=torch.float64)
        xtx += xa.t() @ xa
        xty += xa.t() @ y.double()
    n = xtx.shape[0]
    sol = torch.linalg.solve(xtx + ridge * xtx.diagonal().mean() * torch.eye(n, dtype=torch.float64), xty)
    return sol[: n - 1].t(), sol[n - 1]


def _norm(norm_module, y: torch.Tensor) -> torch.Tensor:
    """The target's final norm applied in float32 (the module may hold another dtype)."""
    weight = getattr(norm_module, "weight", None)
    if weight is not None and weight.dtype != y.dtype:
        eps = getattr(norm_module, "variance_epsilon", getattr(norm_module, "eps", 1e-6))
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
        return y * weight.float()
    return norm_module(y)


def format_table(report: dict) -> str:
    lines = [
        "| exit layer | depth | top-1 agreement | KL | logit lens | least-squares init |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in report["exit_layers"]:
        row = report["per_layer"][str(layer)]
        lines.append(
            f"| {layer} | {layer + 1}/{report['num_layers']} ({row['depth']:.2f}) | {100 * row['agreement']:.1f}% "
            f"| {row['kl']:.3f} | {100 * row['lens_agreement']:.1f}% | {100 * row.get('ls_agreement', float('nan')):.1f}% |"
        )
    return "\n".join(lines)


# -- exits that attend over the sequence (``attention`` kind) ----------------------------------------
class SequenceStates:
    """Per labelled sequence, the exit layer's states of every position up to the last labelled one,
    and the rows of ``labels`` by position: what an exit that attends trains and is scored on. Label
    files leave the chat template's constant system prefix unlabelled; its states are the target's
    own, computed once per distinct prefix."""

    def __init__(self, labels: Labels, target, layer: int):
        self.labels, self.layer = labels, layer
        order = torch.argsort(labels.seq * 1_000_000 + labels.pos)
        counts = torch.bincount(labels.seq, minlength=len(labels.sequences)).tolist()
        self.rows = list(torch.split(order, counts))
        prefixes, self.states = {}, []
        for s, rows in enumerate(self.rows):
            first = int(labels.pos[rows[0]])
            if int(labels.pos[rows[-1]]) - first + 1 != len(rows):
                raise ValueError(f"sequence {s}: its labelled positions are not contiguous")
            parts = [labels.hidden[layer][rows]]
            if first:
                key = tuple(labels.sequences[s][:first].tolist())
                if key not in prefixes:
                    with torch.no_grad():
                        out = target(input_ids=torch.tensor([key]), output_hidden_states=True)
                    prefixes[key] = out.hidden_states[layer + 1][0].to(parts[0].dtype)
                parts.insert(0, prefixes[key])
            self.states.append(torch.cat(parts))

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, seqs: Sequence[int]):
        """(states [B, T, H] float32, right-padded; per sequence the positions it labels and their rows)."""
        width = max(len(self.states[s]) for s in seqs)
        x = torch.zeros(len(seqs), width, self.states[seqs[0]].shape[-1])
        for b, s in enumerate(seqs):
            x[b, :len(self.states[s])] = self.states[s].float()
        return x, [(self.labels.pos[self.rows[s]], self.rows[s]) for s in seqs]


def train_attention_exit(model, states: SequenceStates, train_seqs: Sequence[int], init: EarlyExitHeads, *,
                         epochs: float = 5.0, lr: float = 1e-3, batch: int = 16, n_random: int = 2048,
                         seed: int = 0, log=print) -> EarlyExitHeads:
    """An ``attention`` exit at ``states.layer`` whose adapter starts as ``init``'s (a trained ``mlp``
    head of that layer: the untrained layer adds nothing, so training starts from it), trained on
    every labelled position of ``train_seqs`` with the position-wise heads' loss (KL to the
    target's top-k on a candidate vocabulary), whole sequences a batch, bfloat16 autocast."""
    layer = states.layer
    torch.manual_seed(seed)
    heads = EarlyExitHeads(model, [layer], adapter="attention", rank=init.adapter_rank)
    exit_module = heads.adapters[str(layer)]
    exit_module.adapter.load_state_dict(init.adapters[str(layer)].state_dict())
    heads.to(dtype=torch.float32).train()
    params = [p for p in heads.parameters()]
    for p in params:
        p.requires_grad_(True)
    layout = decoder_layout(model)
    weight, norm, labels = layout.lm_head.weight.detach(), layout.final_norm, states.labels
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    total = int(epochs * math.ceil(len(train_seqs) / batch))
    sched = warmup_cosine(opt, total)
    gen = torch.Generator().manual_seed(seed)
    step, start = 0, time.time()
    while step < total:
        order = [train_seqs[i] for i in torch.randperm(len(train_seqs), generator=gen).tolist()]
        for i in range(0, len(order), batch):
            if step >= total:
                break
            x, where = states.batch(order[i:i + batch])
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                out = exit_module(x)
            rows = torch.cat([r for _, r in where])
            picked = torch.cat([out[b, pos] for b, (pos, _) in enumerate(where)]).float()
            ids = labels.topk_ids[rows]
            cand = candidate_set(ids, weight.shape[0], n_random, gen)
            logits = _norm(norm, picked) @ weight[cand].float().t()
            loss = kl_on_candidates(logits, torch.searchsorted(cand, ids), labels.topk_logp[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0 or step == total:
                log(f"attention exit: step {step}/{total}, kl {float(loss.detach()):.3f} ({time.time() - start:.0f} s)")
    heads.eval().requires_grad_(False)
    return heads


@torch.no_grad()
def attention_exit_hits(heads: EarlyExitHeads, states: SequenceStates, rows: torch.Tensor):
    """(rows, whether the exit's top token is the target's, the exit's top probability) for the
    labelled ``rows`` of ``states``, each sequence run from its start as a verifier would see it."""
    layer = states.layer
    wanted = torch.zeros(len(states.labels), dtype=torch.bool)
    wanted[rows] = True
    done, right, top_p = [], [], []
    dtype = heads._layout.lm_head.weight.dtype
    for s in range(len(states)):
        x, [(pos, seq_rows)] = states.batch([s])
        keep = wanted[seq_rows]
        if not bool(keep.any()):
            continue
        logits = heads.exit_logits(layer, x[0].to(dtype))[pos[keep]].float()
        done.append(seq_rows[keep])
        right.append(logits.argmax(-1) == states.labels.topk_ids[seq_rows[keep], 0])
        top_p.append(torch.softmax(logits, -1).amax(-1))
    return torch.cat(done), torch.cat(right), torch.cat(top_p)


@torch.no_grad()
def exit_hits(heads: EarlyExitHeads, labels: Labels, target, rows: Optional[torch.Tensor] = None):
    """(rows, whether the first exit's top token is the target's, its top probability) on ``rows`` of
    ``labels`` (all when None), however the exit reads the sequence."""
    layer = heads.exit_layers[0]
    rows = torch.arange(len(labels)) if rows is None else rows
    if heads.attends:
        return attention_exit_hits(heads, SequenceStates(labels, target, layer), rows)
    layout, right, top_p = heads._layout, [], []
    for start in range(0, len(rows), 1024):
        r = rows[start:start + 1024]
        logits = heads.exit_logits(layer, labels.hidden[layer][r].to(layout.lm_head.weight.dtype)).float()
        right.append(logits.argmax(-1) == labels.topk_ids[r, 0])
        top_p.append(torch.softmax(logits, -1).amax(-1))
    return rows, torch.cat(right), torch.cat(top_p)
