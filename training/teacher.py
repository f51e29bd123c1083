"""Label text with a frozen target: its next-token distribution and intermediate hidden states.

One batched pass does everything: the prompt is prefilled (teacher-forced labels for every prompt
position), then the target decodes greedily with a KV cache, and every forward step's final
distribution (top-k log-probs) and the outputs of the requested decoder layers are kept. So
target-generated text is labelled as it is generated, with no second pass.

The result, :class:`Labels`, is flat over labelled positions (``P`` rows) plus the token
sequences, and is what both the draft distiller and the exit trainer consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from specdec.models.layout import decoder_layout


@dataclass
class Labels:
    """Target labels over ``P`` positions of ``len(sequences)`` token sequences.

    Row ``r`` is position ``pos[r]`` of sequence ``seq[r]``: the target's distribution for
    the token *after* that position (``topk_ids``/``topk_logp``, exact log-probs of the top-k)
    and the output of each captured decoder layer at that position (``hidden[layer]``).
    """

    sequences: List[torch.Tensor]
    seq: torch.Tensor  # [P] int64
    pos: torch.Tensor  # [P] int64
    topk_ids: torch.Tensor  # [P, K] int64
    topk_logp: torch.Tensor  # [P, K] float32
    hidden: Dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [P, H] float16
    kinds: List[str] = field(default_factory=list)  # per sequence: "chat" / "prose" / ...
    final: Optional[torch.Tensor] = None  # [P, H] float16: the target's final *normed* hidden state
    prompt_lens: List[int] = field(default_factory=list)  # per sequence: tokens before generation

    def generated_rows(self) -> torch.Tensor:
        """Rows whose position is generated text (not prompt): what a verifier sees."""
        if not self.prompt_lens:
            return torch.arange(len(self))
        lens = torch.tensor(self.prompt_lens, dtype=torch.long)
        return torch.nonzero(self.pos >= lens[self.seq]).flatten()

    def __len__(self) -> int:
        return int(self.seq.numel())

    def subset(self, rows: torch.Tensor) -> "Labels":
        return Labels(
            sequences=self.sequences,
            seq=self.seq[rows],
            pos=self.pos[rows],
            topk_ids=self.topk_ids[rows],
            topk_logp=self.topk_logp[rows],
            hidden={k: v[rows] for k, v in self.hidden.items()},
            kinds=self.kinds,
            final=self.final[rows] if self.final is not None else None,
            prompt_lens=self.prompt_lens,
        )

    def split_by_sequence(self, held_out_every: int = 10):
        """(train, held-out) by whole sequences: every ``held_out_every``-th sequence is held out."""
        held = (self.seq % held_out_every) == (held_out_every - 1)
        return self.subset(torch.nonzero(~held).flatten()), self.subset(torch.nonzero(held).flatten())

    def to_dict(self) -> dict:
        return {
            "sequences": self.sequences,
            "seq": self.seq,
            "pos": self.pos,
            "topk_ids": self.topk_ids.to(torch.int32),
            "topk_logp": self.topk_logp,
            "hidden": self.hidden,
            "kinds": self.kinds,
            "final": self.final,
            "prompt_lens": self.prompt_lens,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Labels":
        return cls(
            sequences=d["sequences"],
            seq=d["seq"],
            pos=d["pos"],
            topk_ids=d["topk_ids"].long(),
            topk_logp=d["topk_logp"],
            hidden=d["hidden"],
            kinds=d.get("kinds", []),
            final=d.get("final"),
            prompt_lens=d.get("prompt_lens", []),
        )

    @staticmethod
    def concat(parts: Sequence["Labels"]) -> "Labels":
        sequences, kinds, seqs, prompt_lens = [], [], [], []
        for part in parts:
            seqs.append(part.seq + len(sequences))
            sequences.extend(part.sequences)
            kinds.extend(part.kinds)
            prompt_lens.extend(part.prompt_lens)
        layers = set(parts[0].hidden)
        finals = [p.final for p in parts]
        return Labels(
            sequences=sequences,
            seq=torch.cat(seqs),
            pos=torch.cat([p.pos for p in parts]),
            topk_ids=torch.cat([p.topk_ids for p in parts]),
            topk_logp=torch.cat([p.topk_logp for p in parts]),
            hidden={k: torch.cat([p.hidden[k] for p in parts]) for k in sorted(layers)},
            kinds=kinds,
            final=torch.cat(finals) if all(f is not None for f in finals) else None,
            prompt_lens=prompt_lens if len(prompt_lens) == len(sequences) else [],
        )


def _topk_logprobs(lm_head, normed: torch.Tensor, k: int, chunk: int = 256):
    ids, logp = [], []
    flat = normed.reshape(-1, normed.shape[-1])
    for i in range(0, flat.shape[0], chunk):
        logits = lm_head(flat[i : i + chunk]).float()
        lp = torch.log_softmax(logits, dim=-1)
        v, j = lp.topk(k, dim=-1)
        ids.append(j)
        logp.append(v)
    return torch.cat(ids).view(*normed.shape[:-1], k), torch.cat(logp).view(*normed.shape[:-1], k)


@torch.no_grad()
def label_batch(
    model,
    prompts: List[List[int]],
    *,
    max_new_tokens: int,
    capture_layers: Sequence[int] = (),
    top_k: int = 16,
    stop_ids: Sequence[int] = (),
    label_from: Optional[List[int]] = None,
    pad_id: int = 0,
    kind: str = "text",
) -> Labels:
    """Prefill ``prompts`` (token lists), decode greedily up to ``max_new_tokens``, label everything.

    ``label_from[i]``: first position of prompt ``i`` to keep labels for (e.g. skip a constant
    system prefix). Generation of a sequence stops after a token in ``stop_ids``.
    """
    layout = decoder_layout(model)
    decoder = model.model if hasattr(model, "model") else model
    device = layout.lm_head.weight.device
    batch = len(prompts)
    label_from = label_from or [0] * batch
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    captured: Dict[int, torch.Tensor] = {}
    handles = []
    for layer in capture_layers:

        def hook(_m, _i, output, layer=layer):
            captured[layer] = (output[0] if isinstance(output, (tuple, list)) else output).detach()

        handles.append(layout.layers[layer].register_forward_hook(hook))

    rows_seq, rows_pos, rows_ids, rows_logp = [], [], [], []
    rows_hidden: Dict[int, list] = {layer: [] for layer in capture_layers}
    rows_final: list = []
    generated: List[List[int]] = [[] for _ in range(batch)]
    try:
        out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        top_ids, top_logp = _topk_logprobs(layout.lm_head, out.last_hidden_state, top_k)
        for i in range(batch):
            cols = torch.arange(width - lengths[i] + label_from[i], width, device=device)
            rows_seq.append(torch.full((cols.numel(),), i, dtype=torch.long))
            rows_pos.append(torch.arange(label_from[i], lengths[i], dtype=torch.long))
            rows_ids.append(top_ids[i, cols].cpu())
            rows_logp.append(top_logp[i, cols].cpu())
            rows_final.append(out.last_hidden_state[i, cols].to("cpu", torch.float16))
            for layer in capture_layers:
                rows_hidden[layer].append(captured[layer][i, cols].to("cpu", torch.float16))
        alive = torch.ones(batch, dtype=torch.bool)
        next_tok = top_ids[:, -1, 0]
        last_pos = positions[:, -1]
        stop = set(int(s) for s in stop_ids)
        for step in range(max_new_tokens):
            tokens = next_tok.tolist()  # one device sync per step, not one per row
            for i in range(batch):
                if alive[i]:
                    generated[i].append(tokens[i])
                    if tokens[i] in stop:
                        alive[i] = False
            if step == max_new_tokens - 1 or not alive.any():
                break
            feed = torch.where(alive.to(device), next_tok, torch.full_like(next_tok, pad_id))
            mask = torch.cat([mask, alive.to(device, torch.long)[:, None]], dim=1)
            last_pos = last_pos + 1
            out = decoder(
                input_ids=feed[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            s_ids, s_logp = _topk_logprobs(layout.lm_head, out.last_hidden_state[:, -1], top_k)
            live = torch.nonzero(alive).flatten()
            for i in live.tolist():
                rows_seq.append(torch.tensor([i]))
                rows_pos.append(torch.tensor([lengths[i] + len(generated[i]) - 1]))
            rows_ids.append(s_ids[live.to(device)].cpu())
            rows_logp.append(s_logp[live.to(device)].cpu())
            rows_final.append(out.last_hidden_state[live.to(device), -1].to("cpu", torch.float16))
            for layer in capture_layers:
                rows_hidden[layer].append(captured[layer][live.to(device), -1].to("cpu", torch.float16))
            next_tok = s_ids[:, 0]
    finally:
        for handle in handles:
            handle.remove()

    sequences = [torch.tensor(p + g, dtype=torch.long) for p, g in zip(prompts, generated)]
    return Labels(
        sequences=sequences,
        seq=torch.cat(rows_seq),
        pos=torch.cat(rows_pos),
        topk_ids=torch.cat(rows_ids),
        topk_logp=torch.cat(rows_logp),
        hidden={layer: torch.cat(rows_hidden[layer]) for layer in capture_layers},
        kinds=[kind] * batch,
        final=torch.cat(rows_final),
        prompt_lens=lengths,
    )


def label_many(
    model,
    prompts: List[List[int]],
    *,
    batch_size: int = 32,
    progress=None,
    **kwargs,
) -> Labels:
    """:func:`label_batch` over batches of similar-length prompts; keeps the input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    label_from = kwargs.pop("label_from", None)
    parts = []
    sequences: List[Optional[torch.Tensor]] = [None] * len(prompts)
    prompt_lens: List[int] = [0] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        part = label_batch(
            model,
            [prompts[i] for i in idx],
            label_from=[label_from[i] for i in idx] if label_from else None,
            **kwargs,
        )
        part.seq = torch.tensor(idx, dtype=torch.long)[part.seq]  # back to the callers' numbering
        for j, i in enumerate(idx):
            sequences[i] = part.sequences[j]
            prompt_lens[i] = part.prompt_lens[j]
        parts.append(part)
        if progress is not None:
            progress.update(len(idx))
    merged = Labels(
        sequences=sequences,
        seq=torch.cat([p.seq for p in parts]),
        pos=torch.cat([p.pos for p in parts]),
        topk_ids=torch.cat([p.topk_ids for p in parts]),
        topk_logp=torch.cat([p.topk_logp for p in parts]),
        hidden={k: torch.cat([p.hidden[k] for p in parts]) for k in parts[0].hidden},
        kinds=[parts[0].kinds[0]] * len(prompts) if parts else [],
        final=torch.cat([p.final for p in parts]),
        prompt_lens=prompt_lens,
    )
    return merged


def labelling_model(model, dtype_name: str = "float32"):
    """The model that labels: ``model`` itself, or a copy in ``dtype_name`` (``bfloat16`` runs on a
    CPU's AMX units, several times faster than float32; the labels are then bfloat16's answers)."""
    import copy

    from specdec.models.loading import resolve_dtype

    dtype = resolve_dtype(dtype_name)
    return model if dtype in (None, next(model.parameters()).dtype) else copy.deepcopy(model).to(dtype)

