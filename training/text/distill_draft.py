"""The draft: a few decoder layers on top of the target's own (frozen, shared) embeddings and LM head.

Design. A ``LlamaForCausalLM`` with the target's hidden size, tokenizer, embeddings and tied LM
head, and ``k`` decoder layers initialised from chosen target layers (default: the first
``k - 1`` and the last). Only the decoder layers and the final norm are trained - by KL
distillation to the target's next-token distribution on target-labelled text
(:mod:`training.teacher`), with a candidate-vocabulary softmax to keep CPU training
cheap (:mod:`training.losses`).

Committed artefact (small): ``models/<draft>/`` holds ``draft_config.json`` (the HF config and
the provenance: target fingerprint, init layers, training stats) and the draft's *own* weights
in fp16 safetensors shards (one per decoder layer, < 10 MB each). :func:`assemble` rebuilds a
normal HF folder under ``.cache/models/<draft>/`` by adding the target's embeddings and the
tokenizer files; the trained weights are rounded to fp16 in memory before saving, so the
assembled draft equals the trained one exactly.

Reduced head (optional): the draft proposes only the ``K`` tokens the target says most often
(:func:`frequent_tokens`) - its LM head is most of its cost - and is distilled as it will propose,
with the target's distribution renormalised over those tokens. The committed folder then holds
their ids (``head_token_ids.safetensors``); :func:`assemble` writes the head
(``draft_head.safetensors``, :mod:`specdec.models.draft_head`) from the target's own rows.

    python -m training.text.distill_draft --target .cache/models/smollm2-135m-instruct \\
        --layers 4 --data text --out models/smollm2-135m-draft
    python -m training.text.distill_draft --assemble models/smollm2-135m-draft \\
        --target .cache/models/smollm2-135m-instruct --out .cache/models/smollm2-135m-draft
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

import torch

from specdec.models.fingerprint import model_fingerprint, tokenizer_fingerprint
from ..losses import candidate_set, full_vocab_stats, kl_on_candidates
from ..optim import clipped_step, warmup_cosine
from ..teacher import Labels

DRAFT_CONFIG = "draft_config.json"
DRAFT_FORMAT = "specdec-draft/1"
SHARED_KEYS = ("model.embed_tokens.weight", "lm_head.weight")
HEAD_IDS = "head_token_ids.safetensors"  # the reduced head's vocabulary (committed; its rows are the target's)
MANIFEST = "specdec_draft.json"


class DraftError(RuntimeError):
    pass


def default_init_layers(target_layers: int, k: int) -> List[int]:
    """First ``k - 1`` target layers and the last one."""
    if k <= 1:
        return [0]
    return list(range(k - 1)) + [target_layers - 1]


def build_draft(target, init_layers: Sequence[int]):
    """A fresh draft whose layers are copies of ``init_layers`` of ``target`` (shares embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = target.config.to_dict()
    for key in ("_name_or_path", "architectures", "transformers_version", "quantization_config"):
        cfg.pop(key, None)
    cfg.update(num_hidden_layers=len(init_layers))
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    draft = LlamaForCausalLM(config).to(target.model.embed_tokens.weight.dtype)
    # shared with the target, frozen (same Parameter objects: no copy in memory)
    draft.model.embed_tokens.weight = target.model.embed_tokens.weight
    draft.lm_head.weight = target.lm_head.weight
    for i, src in enumerate(init_layers):
        draft.model.layers[i].load_state_dict(target.model.layers[src].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.generation_config = target.generation_config
    draft.eval()
    return draft


def frequent_tokens(labels: Labels, k: int) -> torch.Tensor:
    """The ``k`` tokens the target says most often (its top-1 at the generated positions of
    ``labels``; ties broken by id), ascending: the vocabulary of a reduced draft head."""
    rows = labels.generated_rows()
    counts = torch.bincount(labels.topk_ids[rows, 0], minlength=int(labels.topk_ids.max()) + 1)
    order = sorted(range(len(counts)), key=lambda t: (-int(counts[t]), t))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def _head_kl(hidden, weight, t_ids, t_logp, head_ids: Optional[torch.Tensor], n_random: int, gen) -> torch.Tensor:
    """KL(target || draft) on a candidate vocabulary. With ``head_ids`` the draft can only say
    those tokens (its reduced head): candidates are drawn from them, and the target's top-k is
    renormalised over the ones the head has (rows where it has none are skipped)."""
    if head_ids is None:
        cand = candidate_set(t_ids, weight.shape[0], n_random, gen)
        return kl_on_candidates(hidden @ weight[cand].t(), torch.searchsorted(cand, t_ids), t_logp)
    inside = torch.isin(t_ids, head_ids)
    keep = inside.any(-1)
    t_ids, t_logp, inside, hidden = t_ids[keep], t_logp[keep], inside[keep], hidden[keep]
    extra = head_ids[torch.randint(0, len(head_ids), (n_random,), generator=gen)] if n_random else head_ids[:0]
    cand = torch.unique(torch.cat([t_ids[inside], extra.to(t_ids.device)]))
    index = torch.searchsorted(cand, t_ids).clamp_max(len(cand) - 1)
    masked = torch.where(inside, t_logp.float(), torch.full_like(t_logp.float(), float("-inf")))
    return kl_on_candidates(hidden @ weight[cand].t(), index, masked)


def own_state(draft) -> Dict[str, torch.Tensor]:
    """The draft's own (trained) tensors: everything but the shared embeddings / LM head."""
    return {k: v for k, v in draft.state_dict().items() if k not in SHARED_KEYS}


def round_to_fp16_(draft) -> None:
    """Round the draft's own weights to fp16 values in place (what gets committed)."""
    with torch.no_grad():
        for name, param in draft.named_parameters():
            if name not in SHARED_KEYS and param.dtype != torch.float16:
                param.copy_(param.to(torch.float16).to(param.dtype))


def _shards(state: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    shards: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        name = f"layer-{int(parts[2]):02d}" if parts[:2] == ["model", "layers"] else "norm"
        shards.setdefault(name, {})[key] = tensor.detach().to("cpu", torch.float16).contiguous()
    return shards


def save_committed(draft, target, tokenizer, out_dir: str, info: dict,
                   head_ids: Optional[torch.Tensor] = None) -> List[str]:
    """Write the small committed artefact (config + fp16 shards of the draft's own weights, and
    the token ids of its reduced head: its weights are the target's rows, rebuilt by
    :func:`assemble`)."""
    from safetensors.torch import save_file

    round_to_fp16_(draft)
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.endswith(".safetensors"):
            os.remove(os.path.join(out_dir, old))
    files = []
    digest = hashlib.sha256()
    for name, tensors in sorted(_shards(own_state(draft)).items()):
        path = os.path.join(out_dir, name + ".safetensors")
        save_file(tensors, path, metadata={"format": DRAFT_FORMAT})
        files.append(os.path.basename(path))
        for key in sorted(tensors):
            digest.update(key.encode())
            digest.update(tensors[key].numpy().tobytes())
    head = {}
    if head_ids is not None:
        ids = torch.as_tensor(head_ids, dtype=torch.long).contiguous()
        save_file({"token_ids": ids}, os.path.join(out_dir, HEAD_IDS), metadata={"format": DRAFT_FORMAT})
        digest.update(ids.numpy().tobytes())
        head = {"head_tokens": HEAD_IDS, "head_size": len(ids)}
    meta = {
        "format": DRAFT_FORMAT,
        "config": {k: v for k, v in draft.config.to_dict().items() if k != "_name_or_path"},
        "shards": files,
        "weights_sha256": digest.hexdigest(),
        "target_fingerprint": model_fingerprint(target),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "shared_from_target": list(SHARED_KEYS),
        **head,
        **info,
    }
    with open(os.path.join(out_dir, DRAFT_CONFIG), "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True, default=str)
    return files


def read_committed(committed_dir: str) -> dict:
    path = os.path.join(committed_dir, DRAFT_CONFIG)
    if not os.path.isfile(path):
        raise DraftError(f"no committed draft at {committed_dir} ({DRAFT_CONFIG} missing)")
    with open(path) as handle:
        meta = json.load(handle)
    if meta.get("format") != DRAFT_FORMAT:
        raise DraftError(f"{path}: format {meta.get('format')!r}, expected {DRAFT_FORMAT!r}")
    return meta


def assemble_model(committed_dir: str, target, check_fingerprint: bool = True):
    """The full draft model (in memory) from committed weights + the target's embeddings."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    meta = read_committed(committed_dir)
    config = LlamaConfig(**meta["config"])
    if config.hidden_size != target.config.hidden_size or config.vocab_size != target.config.vocab_size:
        raise DraftError(f"{committed_dir}: draft shape does not match the target")
    if check_fingerprint and meta.get("target_fingerprint") != model_fingerprint(target):
        raise DraftError(f"{committed_dir}: draft was distilled from another target (fingerprint mismatch)")
    state = {}
    for name in meta["shards"]:
        state.update(load_file(os.path.join(committed_dir, name)))
    draft = LlamaForCausalLM(config)
    expected = set(own_state(draft))
    if set(state) != expected:
        raise DraftError(f"{committed_dir}: tensors do not match the config (missing {sorted(expected - set(state))[:3]})")
    full = {k: v.to(torch.float32) for k, v in state.items()}
    full["model.embed_tokens.weight"] = target.model.embed_tokens.weight.detach().to("cpu", torch.float32)
    full["lm_head.weight"] = target.lm_head.weight.detach().to("cpu", torch.float32)
    draft.load_state_dict(full, strict=True)
    draft.generation_config = target.generation_config
    return draft.eval()


def assemble(committed_dir: str, target_dir: str, out_dir: str, force: bool = False, log=print) -> str:
    """Rebuild the HF draft folder (idempotent: skipped when its manifest matches)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    meta = read_committed(committed_dir)
    manifest_path = os.path.join(out_dir, MANIFEST)
    want = {"weights_sha256": meta["weights_sha256"], "target_fingerprint": meta["target_fingerprint"]}
    if not force and os.path.isfile(manifest_path) and os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        with open(manifest_path) as handle:
            have = json.load(handle)
        if all(have.get(k) == v for k, v in want.items()):
            log(f"draft: {out_dir} is up to date")
            return out_dir
    target = LlamaForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    draft = assemble_model(committed_dir, target, check_fingerprint=False)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    draft.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(target_dir).save_pretrained(tmp)
    if meta.get("head_tokens"):
        from safetensors.torch import load_file

        from specdec.models.draft_head import make_head, save_draft_head

        ids = load_file(os.path.join(committed_dir, meta["head_tokens"]))["token_ids"]
        save_draft_head(tmp, make_head(ids, draft.lm_head.weight.detach()[ids].clone()), draft.config.vocab_size)
    with open(os.path.join(tmp, MANIFEST), "w") as handle:
        json.dump({**want, "committed_dir": os.path.basename(os.path.normpath(committed_dir))}, handle, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log(f"draft: assembled {out_dir}")
    return out_dir


# -- training -------------------------------------------------------------------------------


def _sequence_rows(labels: Labels):
    """Map sequence -> (positions, label rows)."""
    by_seq: Dict[int, List[int]] = {}
    for row, s in enumerate(labels.seq.tolist()):
        by_seq.setdefault(s, []).append(row)
    return by_seq


def _batches(labels: Labels, by_seq, seq_ids: List[int], max_tokens: int):
    """Groups of sequences of similar length with at most ``max_tokens`` padded tokens."""
    seq_ids = sorted(seq_ids, key=lambda s: len(labels.sequences[s]))
    batch: List[int] = []
    width = 0
    for s in seq_ids:
        w = max(width, len(labels.sequences[s]))
        if batch and w * (len(batch) + 1) > max_tokens:
            yield batch
            batch, w = [], len(labels.sequences[s])
        batch.append(s)
        width = w
    if batch:
        yield batch


def _collate(labels: Labels, by_seq, batch: List[int], device):
    width = max(len(labels.sequences[s]) for s in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    b_idx, p_idx, rows = [], [], []
    for b, s in enumerate(batch):
        seq = labels.sequences[s]
        ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
        r = by_seq.get(s, [])
        rows.extend(r)
        b_idx.extend([b] * len(r))
        p_idx.extend(labels.pos[r].tolist())
    return (
        ids.to(device),
        mask.to(device),
        torch.tensor(b_idx, device=device),
        torch.tensor(p_idx, device=device),
        torch.tensor(rows, dtype=torch.long),
    )


@torch.no_grad()
def evaluate_draft(draft, labels: Labels, seq_ids: Optional[List[int]] = None, max_tokens: int = 4096,
                   head_ids: Optional[torch.Tensor] = None) -> dict:
    """Top-1 agreement of the draft with the target's next token, teacher-forced, over the full
    vocabulary or, with ``head_ids``, over its reduced head (the rest can never be proposed)."""
    device = draft.lm_head.weight.device
    by_seq = _sequence_rows(labels)
    seq_ids = sorted(by_seq) if seq_ids is None else seq_ids
    agree = kl = n = 0.0
    per_kind: Dict[str, List[float]] = {}
    for batch in _batches(labels, by_seq, seq_ids, max_tokens):
        ids, mask, b_idx, p_idx, rows = _collate(labels, by_seq, batch, device)
        hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state[b_idx, p_idx]
        logits = draft.lm_head(hidden).float()
        if head_ids is not None:
            outside = torch.ones(logits.shape[-1], dtype=torch.bool, device=device)
            outside[head_ids.to(device)] = False
            logits[:, outside] = -1e4  # never the argmax; keeps the KL finite
        a, k = full_vocab_stats(logits, labels.topk_ids[rows].to(device), labels.topk_logp[rows].to(device))
        agree, kl, n = agree + a, kl + k, n + len(rows)
        if labels.kinds:
            hits = (logits.argmax(-1).cpu() == labels.topk_ids[rows, 0]).float()
            seq_of_row = labels.seq[rows]
            for kind in set(labels.kinds[s] for s in batch):
                sel = torch.tensor([labels.kinds[int(s)] == kind for s in seq_of_row])
                stats = per_kind.setdefault(kind, [0.0, 0.0])
                stats[0] += float(hits[sel].sum())
                stats[1] += float(sel.sum())
    return {
        "agreement": agree / max(1, n),
        "kl": kl / max(1, n),
        "positions": int(n),
        "per_kind": {k: v[0] / max(1, v[1]) for k, v in per_kind.items()},
    }


def distill(
    draft,
    labels: Labels,
    *,
    epochs: float = 2.0,
    max_tokens: int = 2048,
    lr: float = 3e-4,
    n_random: int = 2048,
    seed: int = 0,
    held_out_every: int = 10,
    head_ids: Optional[torch.Tensor] = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Train the draft's own layers on ``labels``; returns stats (held-out agreement before/after).
    With ``head_ids`` the draft is trained and measured as it will propose: through a reduced
    head over those tokens (:func:`_head_kl`)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    device = draft.lm_head.weight.device
    draft.model.embed_tokens.weight.requires_grad_(False)
    draft.lm_head.weight.requires_grad_(False)
    weight = draft.lm_head.weight.detach()
    by_seq = _sequence_rows(labels)
    all_seqs = sorted(by_seq)
    held = [s for s in all_seqs if s % held_out_every == held_out_every - 1]
    train = [s for s in all_seqs if s % held_out_every != held_out_every - 1]
    before = evaluate_draft(draft, labels, held, head_ids=head_ids) if held else {}
    params = [p for n, p in draft.named_parameters() if p.requires_grad and n not in SHARED_KEYS]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    batches = list(_batches(labels, by_seq, train, max_tokens))
    total = max(1, int(round(epochs * len(batches))))
    sched = warmup_cosine(opt, total)
    draft.train()
    start = time.time()
    losses: List[float] = []
    bar = tqdm(total=total, desc="draft", disable=not progress, leave=False)
    step = 0
    while step < total:
        order = torch.randperm(len(batches), generator=gen).tolist()
        for bi in order:
            if step >= total:
                break
            ids, mask, b_idx, p_idx, rows = _collate(labels, by_seq, batches[bi], device)
            hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state[b_idx, p_idx]
            loss = _head_kl(hidden, weight, labels.topk_ids[rows].to(device), labels.topk_logp[rows].to(device),
                            head_ids if head_ids is None else head_ids.to(device), n_random, gen)
            losses.append(clipped_step(opt, sched, params, loss))
            step += 1
            bar.update(1)
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
    bar.close()
    draft.eval()
    elapsed = time.time() - start
    round_to_fp16_(draft)
    after = evaluate_draft(draft, labels, held, head_ids=head_ids) if held else {}
    return {
        "head_tokens": len(head_ids) if head_ids is not None else None,
        "train_seconds": round(elapsed, 1),
        "steps": total,
        "epochs": epochs,
        "max_tokens": max_tokens,
        "lr": lr,
        "train_sequences": len(train),
        "train_positions": int(sum(len(by_seq[s]) for s in train)),
        "held_out_sequences": len(held),
        "final_train_kl": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "held_out_before": before,
        "held_out_after": after,
    }


def main(argv=None) -> int:
    from tqdm import tqdm

    from .data import cached_labels, make_source
    from ..train_exits import load_target, pick_device, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HF folder of the target")
    parser.add_argument("--out", required=True, help="committed artefact folder (or HF folder with --assemble)")
    parser.add_argument("--assemble", default=None, metavar="COMMITTED_DIR", help="only rebuild the HF folder")
    parser.add_argument("--layers", type=int, default=4, help="number of draft decoder layers")
    parser.add_argument("--init-layers", type=int, nargs="+", default=None, help="target layers to copy")
    parser.add_argument("--data", default="text")
    parser.add_argument("--labels-cache", default=None)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.assemble:
        assemble(args.assemble, args.target, args.out, force=True)
        return 0
    device = pick_device(args.device)
    target, tokenizer = load_target(args.target, device)
    init = args.init_layers or default_init_layers(target.config.num_hidden_layers, args.layers)
    source = make_source(args.data)
    with tqdm(total=len(source) or None, desc="labelling") as bar:
        labels = cached_labels(source, target, tokenizer, [], args.labels_cache, progress=bar)
    draft = build_draft(target, init)
    stats = distill(draft, labels, epochs=args.epochs, lr=args.lr, max_tokens=args.max_tokens, seed=args.seed)
    save_committed(draft, target, tokenizer, args.out, {"init_layers": init, "training": stats, "data": args.data})
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
