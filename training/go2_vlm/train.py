"""Optimising one model of the Go2 VLM pair on :class:`~.data.Go2Data`: the answer loss (expert
labels, ordinal smoothing, distillation), the auxiliary vision and state heads, the training loop,
accuracy measures and the teacher pass. :mod:`.build` runs these in the recipe's order."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from ..optim import clipped_step, warmup_cosine
from .data import COMBOS, Go2Data
from .pair import IMAGE_H, IMAGE_W, MERGE, PATCH, build_tokenizer


def _positions(model, data: Go2Data, batch: int) -> torch.Tensor:
    """M-RoPE positions of the fixed layout ([3, batch, len]), as the adapter's prefill computes them."""
    ids = data.ids[:1]
    mm = (ids == model.config.image_token_id).long()
    grid = torch.tensor([data.grid], device=ids.device)
    pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
    return pos.expand(-1, batch, -1).contiguous()


def answer_logits(model, data: Go2Data, rows: torch.Tensor, pos_cache: Dict[int, torch.Tensor],
                     features: Optional[dict] = None):
    """Logits [B, A, V] at the answer positions of ``rows`` (one teacher-forced pass).

    Samples of the same frame share one vision-tower pass (the image features are scattered
    into the prompts exactly as the model's own forward does). ``features`` (optional) receives
    the merged image features per frame and the frame index of every row.
    """
    b = len(rows)
    if b not in pos_cache:
        pos_cache[b] = _positions(model, data, b)
    frames, inverse = torch.unique(data.frame[rows], return_inverse=True)
    per_frame = vision_features(model, data, frames)                # [frames, tokens, H]
    ids = data.ids[rows]
    embeds = model.model.get_input_embeddings()(ids)
    mask = (ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, per_frame[inverse].to(embeds.dtype))
    out = model(inputs_embeds=embeds, position_ids=pos_cache[b], logits_to_keep=data.answer_len, use_cache=False)
    if features is not None:
        features.update(image=per_frame, frames=frames, inverse=inverse)
    return out.logits.float()


def _answer_loss(logits, data: Go2Data, rows, teacher_logp=None, kd_alpha: float = 0.0):
    targets = data.targets[rows]
    mask = targets != -100
    logp = torch.log_softmax(logits, -1)
    hard = torch.nn.functional.one_hot(targets.clamp_min(0), logits.shape[-1]).float()
    if data.soft is not None:
        soft = data.soft[rows]
        has = soft.sum(-1) > 0
        hard[has, 1] = soft[has]
    ce = -(hard * logp).sum(-1)[mask].mean()
    if teacher_logp is None or kd_alpha <= 0:
        return ce
    t_logp = teacher_logp[rows.to(teacher_logp.device)].to(logp.device, torch.float32)
    kl = (t_logp.exp() * (t_logp - logp)).sum(-1)[mask].mean()
    return (1 - kd_alpha) * ce + kd_alpha * kl


@torch.no_grad()
def answer_accuracy(model, data: Go2Data, rows: torch.Tensor, batch: int = 64) -> Dict[str, float]:
    """Teacher-forced accuracy on ``rows``: verb token, whole answer, |turn error| in degrees."""
    model.eval()
    pos_cache: Dict[int, torch.Tensor] = {}
    verb_ok = all_ok = 0
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        pred = answer_logits(model, data, r, pos_cache).argmax(-1)
        tgt = data.targets[r]
        mask = tgt != -100
        verb_ok += int((pred[:, 0] == tgt[:, 0]).sum())
        all_ok += int(((pred == tgt) | ~mask).all(-1).sum())
    n = max(1, len(rows))
    return {"verb_acc": verb_ok / n, "answer_acc": all_ok / n}


OBJECT_MIN_TOKENS = 4  # image tokens an object must cover for its shape to count (smaller: a few pixels)


def _word_ids(words: Sequence[str], device=None) -> torch.Tensor:
    ids = build_tokenizer().convert_tokens_to_ids
    return torch.tensor([ids(w) for w in words], device=device)


COLOURS = tuple(dict.fromkeys(c for c, _ in COMBOS))
SHAPES = tuple(dict.fromkeys(sh for _, sh in COMBOS))


def _colour_shape_ids(device=None):
    """Token ids of the colour words and of the shape words (what :func:`object_loss` scores against)."""
    return _word_ids(COLOURS, device), _word_ids(SHAPES, device)


def _object_scores(image: torch.Tensor, regions: torch.Tensor, embed: torch.nn.Embedding,
                   colour_ids: torch.Tensor, shape_ids: torch.Tensor, min_tokens: int = OBJECT_MIN_TOKENS):
    """(colour logits, colours) of the image tokens showing exactly one object and (shape logits,
    shapes) of the objects covering at least ``min_tokens`` tokens (their mean feature),
    scored against the word embeddings of the colours and the shapes."""
    img = image.float()
    scale = img.shape[-1] ** -0.5
    reg = regions.float()                                                   # [F, T, 8]
    one = reg.sum(-1) == 1
    colour_logits = scale * img[one] @ embed.weight[colour_ids].float().t()
    colours = reg.argmax(-1)[one] // len(SHAPES)
    counts = reg.sum(1)                                                     # [F, 8]
    big = counts >= min_tokens
    pooled = torch.einsum("ftc,fth->fch", reg, img) / counts.clamp_min(1)[..., None]
    shape_logits = scale * pooled[big] @ embed.weight[shape_ids].float().t()
    shapes = (torch.arange(len(COMBOS), device=img.device) % len(SHAPES)).expand_as(counts)[big]
    return colour_logits, colours, shape_logits, shapes


def object_loss(image: torch.Tensor, regions: torch.Tensor, embed: torch.nn.Embedding,
                colour_ids: torch.Tensor, shape_ids: torch.Tensor, min_tokens: int = OBJECT_MIN_TOKENS) -> torch.Tensor:
    """What each visible object is, read from the image features the decoder gets ([F, T, H]),
    scored against the decoder's own word embeddings of the colours and the shapes
    (:func:`_object_scores`): the colour of every image token that shows exactly one object, and
    the shape of every object from the mean of the tokens it covers.

    Shape is a property of the silhouette, spread over tokens: without this term the tower learns
    colour from the per-token region targets but stays blind to shape (the previous recipe's
    image features told a ball from a box at 57 %), and the policy stops at the look-alike.
    """
    f = torch.nn.functional
    colour_logits, colours, shape_logits, shapes = _object_scores(image, regions, embed, colour_ids, shape_ids,
                                                                  min_tokens)
    loss = image.float().sum() * 0  # keeps the graph when a batch shows no object
    if len(colours):
        loss = loss + f.cross_entropy(colour_logits, colours)
    if len(shapes):
        loss = loss + f.cross_entropy(shape_logits, shapes)
    return loss


def vision_features(model, data: Go2Data, frames: torch.Tensor) -> torch.Tensor:
    """The vision tower's merged features of ``frames`` ([F, T, H]), as the decoder receives them."""
    pix = data.pix[frames].reshape(-1, data.pix.shape[-1]).float()
    grid = torch.tensor([data.grid] * len(frames), device=pix.device)
    vis = model.model.visual(pix, grid_thw=grid)
    vis = getattr(vis, "pooler_output", vis)
    return vis.view(len(frames), -1, vis.shape[-1])


def warm_up_vision(model, data: Go2Data, rows: torch.Tensor, *, steps: int, frames_per_step: int, lr: float,
                   seed: int, desc: str = "vision warm-up", progress: bool = True,
                   min_tokens: int = OBJECT_MIN_TOKENS) -> Dict[str, float]:
    """Train the vision tower (and the colour/shape word embeddings it is scored against) alone on
    :func:`object_loss` over the frames of ``rows``. Cheap (no decoder pass), and it gets the
    tower past the slow start of shape learning before the decoder depends on its features."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    frames = torch.unique(data.frame[rows].cpu())
    embed = model.model.get_input_embeddings()
    colour_ids, shape_ids = _colour_shape_ids(data.pix.device)
    opt = torch.optim.AdamW([{"params": list(model.model.visual.parameters()), "weight_decay": 0.01},
                             {"params": [embed.weight], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    model.train()
    t0, ema = time.time(), None
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        pick = frames[torch.randint(len(frames), (frames_per_step,), generator=gen)].to(data.pix.device)
        loss = object_loss(vision_features(model, data, pick), data.regions[pick], embed, colour_ids, shape_ids,
                           min_tokens)
        value = clipped_step(opt, None, model.model.visual.parameters(), loss)
        ema = value if ema is None else 0.95 * ema + 0.05 * value
    model.eval()
    return {"steps": steps, "frames_per_step": frames_per_step, "lr": lr, "final_loss": round(ema or 0.0, 4),
            "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def shape_accuracy(model, data: Go2Data, frames: torch.Tensor, batch: int = 64) -> Dict[str, float]:
    """How well the image features of ``frames`` tell each object's colour and shape (the
    scoring of :func:`object_loss`; shapes of objects of at least ``OBJECT_MIN_TOKENS`` tokens)."""
    embed = model.model.get_input_embeddings()
    colour_ids, shape_ids = _colour_shape_ids(data.pix.device)
    ok = {"colour": 0, "shape": 0}
    n = {"colour": 0, "shape": 0}
    for i in range(0, len(frames), batch):
        fr = frames[i:i + batch].to(data.pix.device)
        cl, c, sl, sh = _object_scores(vision_features(model, data, fr), data.regions[fr], embed, colour_ids, shape_ids)
        for key, logits, truth in (("colour", cl, c), ("shape", sl, sh)):
            ok[key] += int(logits.argmax(-1).eq(truth).sum())
            n[key] += len(truth)
    return {"colour_acc": round(ok["colour"] / max(1, n["colour"]), 4),
            "shape_acc": round(ok["shape"] / max(1, n["shape"]), 4), "objects": n["shape"]}


PROBE_LAYER = 1  # decoder layer whose image-token outputs get the in-place auxiliary targets

# Weights of the auxiliary terms (:meth:`AuxHeads.loss`), relative to the per-token region term (1):
HERE_WEIGHT = 2.0     # "this token shows the instructed object" is what the answer is read from: weighted highest
ROWCOL_WEIGHT = 0.25  # a token's row/column is a fixed function of its place, learned early: a light reminder
STATE_WEIGHT = 0.5    # visibility/bearing/distance restate what the answer already supervises: half weight
REGION_PRIOR = -3.0   # initial region logit: an object shows in few of the 24 tokens (sigmoid(-3) ~ 5 %)
BEARING_SCALE_DEG = 45.0  # bearing regressed in units of 45 deg, so its squared error is O(1) like the others


class AuxHeads(torch.nn.Module):
    """Training-only heads (discarded after training) that give the small models dense targets:

    * image features (vision tower output, in the decoder's input space), per image token: which
      colours and shapes its region shows, scored against the decoder's *word embeddings* of
      the colour and the shape (so what the image shows is written the way the instruction is);
    * decoder layer ``PROBE_LAYER``, per image token (which has read the instruction): does its
      region show the instructed object, and which image row/column it is (so positions are
      carried in the token, ready to be read out by the answer);
    * final norm at the last prompt position: is the target visible, its bearing and distance.
    """

    def __init__(self, model, data: "Go2Data", object_weight: float = 0.0, object_min_tokens: int = OBJECT_MIN_TOKENS):
        super().__init__()
        self.object_weight = object_weight
        self.object_min_tokens = object_min_tokens
        hidden = model.config.text_config.hidden_size
        self.rows, self.cols = IMAGE_H // (PATCH * MERGE), IMAGE_W // (PATCH * MERGE)
        object.__setattr__(self, "embed", model.model.get_input_embeddings())  # the model's, not ours to train twice
        self.register_buffer("colour_ids", _word_ids([c for c, _ in COMBOS]), persistent=False)  # per combo
        self.register_buffer("shape_ids", _word_ids([sh for _, sh in COMBOS]), persistent=False)
        colour_words, shape_words = _colour_shape_ids()
        self.register_buffer("colour_words", colour_words, persistent=False)
        self.register_buffer("shape_words", shape_words, persistent=False)
        self.region_bias = torch.nn.Parameter(torch.full((len(COMBOS),), REGION_PRIOR))
        self.region_scale = torch.nn.Parameter(torch.tensor(1.0))
        self.tokens = torch.nn.Linear(hidden, 1 + self.rows + self.cols)
        self.state = torch.nn.Linear(hidden, 3)
        self.register_buffer("image_pos", torch.nonzero(data.ids[0] == model.config.image_token_id).flatten(),
                             persistent=False)
        self._feats: Dict[str, torch.Tensor] = {}
        from specdec.models.layout import decoder_layout

        layer = decoder_layout(model).layers[PROBE_LAYER]
        self._hooks = [
            layer.register_forward_hook(lambda m, i, o: self._feats.__setitem__(
                "probe", o[0] if isinstance(o, (tuple, list)) else o)),
            model.model.language_model.norm.register_forward_hook(lambda m, i, o: self._feats.__setitem__("txt", o)),
        ]
        self.last: Dict[str, torch.Tensor] = {}

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._feats.clear()

    def loss(self, data: "Go2Data", rows: torch.Tensor, features: dict) -> torch.Tensor:
        f = torch.nn.functional
        b = len(rows)
        words = self.embed.weight[self.colour_ids] + self.embed.weight[self.shape_ids]      # [8, H]
        img = features["image"].float()                                                     # [F, T, H]
        scale = img.shape[-1] ** -0.5
        logits = self.region_scale * scale * img @ words.float().t() + self.region_bias     # [F, T, 8]
        reg = f.binary_cross_entropy_with_logits(logits, data.regions[features["frames"]].float())
        if self.object_weight > 0:
            reg = reg + self.object_weight * object_loss(img, data.regions[features["frames"]], self.embed,
                                                         self.colour_words, self.shape_words, self.object_min_tokens)
        regions = data.regions[data.frame[rows]].float()                                    # [B, T, 8]
        probe = self.tokens(self._feats.pop("probe")[:, self.image_pos].float())            # [B, T, 1+r+c]
        n_tok = probe.shape[1]
        here = regions[torch.arange(b, device=regions.device), :, data.combo[rows]]                                # [B, T]
        l_here = f.binary_cross_entropy_with_logits(probe[..., 0], here)
        grid = torch.arange(n_tok, device=probe.device)
        l_row = f.cross_entropy(probe[..., 1:1 + self.rows].reshape(-1, self.rows), (grid // self.cols).repeat(b))
        l_col = f.cross_entropy(probe[..., 1 + self.rows:].reshape(-1, self.cols), (grid % self.cols).repeat(b))
        out = self.state(self._feats.pop("txt")[:, data.prompt_len - 1].float())
        st = data.state[rows]
        vis = st[:, 0]
        n_vis = vis.sum().clamp_min(1.0)
        l_vis = f.binary_cross_entropy_with_logits(out[:, 0], vis)
        l_bear = (((out[:, 1] - (st[:, 1] / BEARING_SCALE_DEG).clamp(-4, 4)) ** 2) * vis).sum() / n_vis
        l_dist = (((out[:, 2] - st[:, 2].clamp_min(0.05).log()) ** 2) * vis).sum() / n_vis
        # detached, read only when logging (a float() here would sync a GPU every step)
        self.last = {k: v.detach() for k, v in (("reg", reg), ("here", l_here), ("rowcol", l_row + l_col),
                                                 ("vis", l_vis), ("bear", l_bear), ("dist", l_dist))}
        return reg + HERE_WEIGHT * l_here + ROWCOL_WEIGHT * (l_row + l_col) + STATE_WEIGHT * (l_vis + l_bear + l_dist)


def _frame_batches(data: Go2Data, rows: torch.Tensor, batch: int, gen: torch.Generator):
    """Batches of whole frames (all kept samples of a frame together: same image, different
    instructions and answers), about ``batch`` samples each, frames in random order."""
    frames = data.frame[rows].cpu()
    order = torch.argsort(frames, stable=True)
    rows, frames = rows[order], frames[order]
    uniq, counts = torch.unique_consecutive(frames, return_counts=True)
    groups = list(torch.split(rows, counts.tolist()))
    perm = torch.randperm(len(groups), generator=gen).tolist()
    out, cur, n = [], [], 0
    for g in perm:
        cur.append(groups[g])
        n += len(groups[g])
        if n >= batch:
            out.append(torch.cat(cur))
            cur, n = [], 0
    return out


def train_model(model, data: Go2Data, rows: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int,
                weight_decay: float = 0.01, teacher_logp=None, kd_alpha: float = 0.0, aux_weight: float = 0.0,
                object_weight: float = 0.0, object_min_tokens: int = OBJECT_MIN_TOKENS, desc: str = "train",
                progress: bool = True, log_every: int = 0) -> Dict[str, float]:
    """AdamW + warmup/cosine on the answer positions (+ auxiliary heads); deterministic for a seed."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    model.train()
    aux = AuxHeads(model, data, object_weight, object_min_tokens) if aux_weight > 0 and data.regions is not None else None
    if aux is not None:
        aux.to(data.ids.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    if aux is not None:
        decay += [p for p in aux.parameters() if p.dim() >= 2]
        no_decay += [p for p in aux.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    total = max(1, int(steps))
    sched = warmup_cosine(opt, total)
    gen = torch.Generator().manual_seed(seed)
    pos_cache: Dict[int, torch.Tensor] = {}
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step, ema = 0, None
    t0 = time.time()
    while step < total:
        for r in _frame_batches(data, rows, batch, gen):
            if step >= total:
                break
            feats: dict = {}
            loss = _answer_loss(answer_logits(model, data, r, pos_cache, feats), data, r, teacher_logp, kd_alpha)
            if aux is not None:
                loss = loss + aux_weight * aux.loss(data, r, feats)
            loss = clipped_step(opt, sched, model.parameters(), loss)
            step += 1
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}")
            if log_every and step % log_every == 0:
                extra = {k: round(float(v), 3) for k, v in aux.last.items()} if aux is not None else {}
                print(f"{desc} step {step}/{total} loss {ema:.3f} {extra}", flush=True)
    bar.close()
    if aux is not None:
        aux.remove()
    model.eval()
    return {"steps": total, "batch": batch, "epochs": round(total * batch / max(1, len(rows)), 2), "lr": lr, "final_loss": round(ema or 0.0, 4),
            "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def teacher_pass(model, data: Go2Data, exit_layers: Sequence[int], batch: int = 64, topk: int = 16,
                 progress: bool = True):
    """One pass of the trained target over every frame: its answer log-probs [N, A, V] (for the
    draft) and :class:`training.teacher.Labels` of the answer positions (for the exits)."""
    from tqdm import tqdm

    from specdec.models.layout import decoder_layout
    from training.teacher import Labels

    model.eval()
    layers = decoder_layout(model).layers
    captured: Dict[int, torch.Tensor] = {}
    hooks = []
    for layer in exit_layers:
        def hook(_m, _i, output, layer=layer):
            captured[layer] = (output[0] if isinstance(output, (tuple, list)) else output).detach()
        hooks.append(layers[layer].register_forward_hook(hook))
    n, A = len(data), data.answer_len
    logp_all = torch.zeros(n, A, model.config.text_config.vocab_size, dtype=torch.float16)
    hidden: Dict[int, List[torch.Tensor]] = {layer: [] for layer in exit_layers}
    seq, pos, top_ids, top_logp = [], [], [], []
    pos_cache: Dict[int, torch.Tensor] = {}
    try:
        for i in tqdm(range(0, n, batch), desc="target labels", disable=not progress, leave=False):
            r = torch.arange(i, min(n, i + batch))
            logits = answer_logits(model, data, r, pos_cache)
            logp = torch.log_softmax(logits, -1).cpu()
            logp_all[r] = logp.half()
            mask = data.targets[r].cpu() != -100
            rr, aa = torch.nonzero(mask, as_tuple=True)
            flat = logp[rr, aa]
            v, ix = flat.topk(topk, -1)
            top_ids.append(ix)
            top_logp.append(v)
            seq.append(r[rr])
            pos.append(data.prompt_len - 1 + aa)
            for layer in exit_layers:
                h = captured[layer][:, -A:].cpu()
                hidden[layer].append(h[rr, aa].half())
    finally:
        for h in hooks:
            h.remove()
    labels = Labels(sequences=[], seq=torch.cat(seq), pos=torch.cat(pos), topk_ids=torch.cat(top_ids),
                    topk_logp=torch.cat(top_logp), hidden={k: torch.cat(v) for k, v in hidden.items()},
                    kinds=[])
    return logp_all, labels
