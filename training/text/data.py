"""Pluggable data sources for distillation: each turns a frozen target into :class:`Labels`.

A source is any object with ``name`` and ``labels(model, tokenizer, capture_layers, progress)``.
Sources are named on command lines by a spec string:

``text[:chat=N,prose=M,new=T,seed=S]``
    chat prompts (chat template applied) answered by the target, plus openings of prose
    passages continued by the target (:mod:`training.text.corpus`); every prompt and
    generated position is labelled.
``self[:chat=N,prose=M,seed=S]``
    ``N`` chat questions the target writes itself (sampled; :func:`corpus.self_written_questions`)
    and ``M`` training prose openings, all answered greedily by the target: chat worded the way
    the target words questions, which the templated pools are not.
``prompts:FILE.jsonl``
    one JSON object per line, ``{"kind": "chat"|"prose", "text": ...}``, answered by the target.
``labels:FILE.pt``
    a :class:`Labels` file saved earlier (``torch.save(labels.to_dict())``).
``py:package.module:factory``
    ``factory(**kwargs)`` returns a source object; this is how image+prompt data for a VLM
    target plugs in (its ``labels`` runs the VLM's processor and fills the same fields).

Text answers are greedy: that is the distribution speculative decoding verifies against.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from . import corpus
from ..teacher import Labels, label_many


def chat_ids(tokenizer, text: str) -> List[int]:
    """Token ids of a user message with the chat template and the assistant header."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def prose_ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, prompt: corpus.Prompt) -> List[int]:
    return chat_ids(tokenizer, prompt.text) if prompt.kind == "chat" else prose_ids(tokenizer, prompt.text)


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs)
    i = 0
    while i < n and all(s[i] == seqs[0][i] for s in seqs):
        i += 1
    return i


@dataclass
class PromptSource:
    """Target answers to a list of prompts (chat or prose), labelled as generated."""

    prompts: List[corpus.Prompt]
    new_tokens_chat: int = 96
    new_tokens_prose: int = 48
    batch_size: int = 48
    top_k: int = 16
    name: str = "prompts"

    def labels(self, model, tokenizer, capture_layers=(), progress=None) -> Labels:
        parts = []
        stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for kind, new in (("chat", self.new_tokens_chat), ("prose", self.new_tokens_prose)):
            items = [prompt_ids(tokenizer, p) for p in self.prompts if p.kind == kind]
            if not items:
                continue
            # the chat template's constant system prefix is labelled once, not once per prompt
            skip = _common_prefix_len(items) if kind == "chat" else 0
            label_from = [0 if i == 0 else min(skip, len(x) - 1) for i, x in enumerate(items)]
            parts.append(
                label_many(
                    model,
                    items,
                    batch_size=self.batch_size,
                    progress=progress,
                    max_new_tokens=new,
                    capture_layers=capture_layers,
                    top_k=self.top_k,
                    stop_ids=stop if kind == "chat" else [],
                    label_from=label_from,
                    pad_id=pad,
                    kind=kind,
                )
            )
        return Labels.concat(parts)

    def __len__(self) -> int:
        return len(self.prompts)


def prose_prompts(n: int, seed: int = 0) -> List[corpus.Prompt]:
    """Openings of ``n`` training prose passages, for the target to continue."""
    return [corpus.Prompt("prose", corpus.prose_prompt_from(t, 280), "train-prose")
            for t in corpus.prose_train_passages(n, seed=seed)]


def text_source(chat: int = 192, prose: int = 96, new: int = 96, seed: int = 0, **kw) -> PromptSource:
    prompts = [corpus.Prompt("chat", t, "train-chat") for t in corpus.chat_train_prompts(chat, seed=seed)]
    prompts += prose_prompts(prose, seed)
    return PromptSource(prompts, new_tokens_chat=new, new_tokens_prose=max(16, new // 2), name="text", **kw)


@dataclass
class SelfWrittenSource:
    """Questions the labelling model writes itself (plus training prose), answered by it."""

    chat: int = 5000
    prose: int = 0
    seed: int = 0
    batch_size: int = 48
    name: str = "self"

    def prompts(self, model, tokenizer) -> List[corpus.Prompt]:
        held_out = corpus.eval_prompts()
        texts = corpus.self_written_questions(model, tokenizer, self.chat, exclude=[p.text for p in held_out],
                                              seed=self.seed, batch=self.batch_size)
        corpus.check_disjoint(texts, held_out)
        return [corpus.Prompt("chat", t, "self-written") for t in texts] + prose_prompts(self.prose, self.seed)

    def labels(self, model, tokenizer, capture_layers=(), progress=None) -> Labels:
        source = PromptSource(self.prompts(model, tokenizer), new_tokens_chat=128, new_tokens_prose=64,
                              batch_size=self.batch_size, name=self.name)
        return source.labels(model, tokenizer, capture_layers=capture_layers, progress=progress)

    def __len__(self) -> int:
        return self.chat + self.prose


@dataclass
class LabelsFileSource:
    path: str
    name: str = "labels"

    def labels(self, model, tokenizer, capture_layers=(), progress=None) -> Labels:
        data = Labels.from_dict(torch.load(self.path, weights_only=False))
        missing = [layer for layer in capture_layers if layer not in data.hidden]
        if missing:
            raise ValueError(f"{self.path} has no hidden states for layers {missing} (has {sorted(data.hidden)})")
        return data

    def __len__(self) -> int:
        return 0


def _parse_kv(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def make_source(spec: str):
    """Build a data source from its command-line spec (see module doc)."""
    kind, _, rest = spec.partition(":")
    if kind == "text":
        return text_source(**_parse_kv(rest))
    if kind == "self":
        return SelfWrittenSource(**_parse_kv(rest))
    if kind == "prompts":
        prompts = []
        with open(rest, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    obj = json.loads(line)
                    prompts.append(corpus.Prompt(obj.get("kind", "chat"), obj["text"], rest))
        return PromptSource(prompts, name="prompts")
    if kind == "labels":
        return LabelsFileSource(rest)
    if kind == "py":
        module_name, _, factory = rest.rpartition(":")
        factory, _, args = factory.partition("?")
        return getattr(importlib.import_module(module_name), factory)(**_parse_kv(args))
    raise ValueError(f"unknown data source {spec!r}: use text:..., self:..., prompts:FILE, labels:FILE or py:module:factory")


def cached_labels(source, model, tokenizer, capture_layers, cache_path: Optional[str], progress=None) -> Labels:
    """``source.labels(...)``, memoised in ``cache_path`` (reused only if it has all the layers)."""
    import os

    if cache_path and os.path.isfile(cache_path):
        try:
            data = Labels.from_dict(torch.load(cache_path, weights_only=False))
            if all(layer in data.hidden for layer in capture_layers):
                return data
        except Exception:  # stale or partial cache: rebuild it
            pass
    data = source.labels(model, tokenizer, capture_layers=capture_layers, progress=progress)
    if cache_path:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        tmp = cache_path + ".tmp"
        torch.save(data.to_dict(), tmp)
        os.replace(tmp, cache_path)
    return data
