"""A draft conditioned on the target's own hidden state (a *feature draft*).

A small draft that starts from tokens alone has to rebuild what the target knows about the
context; this one is handed it. Its input at sequence position ``s`` is the token ``x[s]`` and
the target's final (normed) hidden state at ``s - 1`` - the vector the target's LM head turns
into the distribution of ``x[s]`` - and its output is its guess of the target's state at ``s``,
which the target's own (frozen) LM head, or a reduced-vocabulary cut of it, turns into the next
token. Drafting several tokens ahead, it feeds its own guesses back in. The cloud returns the
target's states of the positions it verified with every result (``VerifyResult.target_states``:
one fp16 row of ``hidden_size`` per committed position), so each block starts from the target's
exact state of the last verified token.

Conventions shared by training (:mod:`training.text.feature_draft`) and decoding:

* prompt positions carry no target state (zeros): the edge drafts block 0 before the cloud has
  prefilled, and the prompt's states would be bytes on the link for no gain (measured:
  scripts/experiments/feature_draft_prompt_states.py);
* the first state the cloud returns is that of the last prompt token (the verify pass starts
  there), so the slot of generated token 0 already gets the target's state;
* the model is the target's embeddings (shared, frozen), ``fc: [embedding; state] -> hidden``,
  one or two Llama decoder layers, and a final RMSNorm: about a tenth of the target's cost per
  token with a reduced head.

Decoding state: :class:`FeatureState` keeps, per cached slot, whether its input state was the
target's (exact) or the draft's own guess, and the target's states as they arrive
(:meth:`FeatureDraftAdapter.receive_states`); :meth:`FeatureDraftAdapter.sync` recomputes a
slot fed with a guess once the target's state for it is known. Only the proposal changes with
it: the verifier's result alone decides what is committed, so the output stays the target's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn

from .adapters import DecodeState, LMHead, ModelAdapter
from .fingerprint import tokenizer_fingerprint

FEATURE_DRAFT_FILE = "specdec_feature_draft.json"  # marks an assembled feature-draft folder
FEATURE_DRAFT_FORMAT = "specdec-feature-draft/1"
WEIGHTS_FILE = "feature_draft.safetensors"


class FeatureDraftError(ValueError):
    """A feature-draft folder or a target-state payload that does not fit."""


class FeatureDraft(nn.Module):
    """``x[s], state[s-1] -> guess of state[s]`` (see the module docstring)."""

    def __init__(self, config, embed_tokens: nn.Embedding):
        super().__init__()
        from transformers import LlamaModel

        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.model = LlamaModel(config)  # its decoder layer(s) + final norm; the input comes from fc
        self.model.embed_tokens = embed_tokens  # the target's (shared, frozen)

    @classmethod
    def for_target(cls, target: nn.Module, layers: int = 1) -> "FeatureDraft":
        """A fresh draft for a Llama-family ``target`` (a causal LM): its embeddings (shared,
        frozen) and a copy of its final norm; ``fc`` starts as embedding + state, a residual input
        the layer learns to refine."""
        from transformers import LlamaConfig

        cfg = target.config.to_dict()
        for key in ("_name_or_path", "architectures", "transformers_version", "quantization_config"):
            cfg.pop(key, None)
        cfg.update(num_hidden_layers=layers, layer_types=None)
        draft = cls(LlamaConfig(**cfg), target.model.embed_tokens)
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
        with torch.no_grad():
            hidden = draft.hidden_size
            draft.fc.weight.zero_()
            draft.fc.weight[:, :hidden].copy_(torch.eye(hidden))
            draft.fc.weight[:, hidden:].copy_(torch.eye(hidden))
        draft.model.embed_tokens.weight.requires_grad_(False)
        embed = target.model.embed_tokens.weight  # the draft lives where the target's embeddings do
        return draft.to(device=embed.device, dtype=embed.dtype)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, input_ids: torch.Tensor, states: torch.Tensor, cache=None) -> torch.Tensor:
        """``input_ids [B, T]``, ``states [B, T, H]`` (the state *before* each token) -> guessed
        states ``[B, T, H]``. Positions continue the cache (right padding only)."""
        embeds = self.model.embed_tokens(input_ids)
        mixed = self.fc(torch.cat([embeds, states.to(embeds.dtype)], dim=-1))
        out = self.model(inputs_embeds=mixed, past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def own_state_dict(self) -> dict:
        """The trained weights (the embeddings belong to the target)."""
        return {k: v for k, v in self.state_dict().items() if k != "model.embed_tokens.weight"}


@dataclass
class FeatureState(DecodeState):
    """A :class:`DecodeState` plus, per cached slot, whether its input state was exact, the
    draft's own output there, and the target's states of committed slots as they arrive."""

    exact: List[bool] = field(default_factory=list)  # per cached slot
    outs: List[torch.Tensor] = field(default_factory=list)  # per cached slot: the draft's guess
    target: List[Optional[torch.Tensor]] = field(default_factory=list)  # per slot: the target's state


class FeatureDraftAdapter(ModelAdapter):
    """The engine's draft interface over a :class:`FeatureDraft` (text only)."""

    needs_target_states = True

    def __init__(self, draft: FeatureDraft, tokenizer, *, lm_head: nn.Module, name: str = "feature-draft"):
        # not a Hugging Face causal LM: set what the shared ModelAdapter methods read
        self.model = draft.eval()
        self.processor = None
        self.tokenizer = tokenizer
        self.name = name
        self.num_layers = draft.config.num_hidden_layers
        self.hidden_size = draft.hidden_size
        self.vocab_size = int(lm_head.weight.shape[0])
        self.token_count = min(self.vocab_size, len(tokenizer))
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None))
        param = next(draft.fc.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.eos_token_ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
        self.lm_head = LMHead(lm_head, valid=self.token_count)
        self.head = self.lm_head
        self.clock = None
        self._image_token = None
        self._zero = torch.zeros(self.hidden_size, dtype=self.dtype, device=self.device)

    # -- state --------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, inputs, image=None) -> FeatureState:
        if isinstance(inputs, str):
            inputs = self.encode(inputs, image)
        if image is not None:
            raise ValueError(f"{self.name} is a text-only draft; it cannot take an image")
        ids = list(inputs.input_ids)
        state = FeatureState(cache=self.new_cache(), prompt_ids=ids)
        if len(ids) > 1:  # prompt positions carry no target state (module docstring)
            self._pass(state, ids[:-1], [self._zero] * (len(ids) - 1))
        return state

    def receive_states(self, state: FeatureState, first_slot: int, rows: torch.Tensor) -> None:
        """The target's states for cached slots ``first_slot ..`` (slot 0: the last prompt token,
        slot ``i``: generated token ``i - 1``)."""
        if rows.ndim != 2 or rows.shape[1] != self.hidden_size:
            raise FeatureDraftError(f"target states of shape {tuple(rows.shape)}, the draft needs rows of "
                                    f"{self.hidden_size}")
        end = first_slot + rows.shape[0]
        if len(state.target) < end:
            state.target.extend([None] * (end - len(state.target)))
        rows = rows.to(self.device, self.dtype)
        for i in range(rows.shape[0]):
            state.target[first_slot + i] = rows[i]

    def _known(self, state: FeatureState, slot: int) -> Optional[torch.Tensor]:
        return state.target[slot] if slot < len(state.target) else None

    # -- passes -------------------------------------------------------------------------------
    def _pass(self, state: FeatureState, ids: Sequence[int], inputs: List[torch.Tensor]) -> torch.Tensor:
        if self.clock is not None:
            self.clock.begin(len(ids), state.cache.get_seq_length(), 0)
        tokens = torch.tensor([list(ids)], device=self.device)
        return self.model(tokens, torch.stack(inputs)[None], cache=state.cache)[0]

    @torch.inference_mode()
    def forward_hidden(self, state: FeatureState, tokens: Sequence[int], keep: int = 0) -> torch.Tensor:
        """Feed ``tokens`` after the cache: one pass when every input state is known before it,
        else one pass per token (a guess feeds the next slot)."""
        tokens = list(tokens)
        outs: List[torch.Tensor] = []
        i = 0
        while i < len(tokens):
            slot = len(state.cached)
            j = i
            inputs, exact = [], []
            # extend the pass while the input state of the next slot is known now
            while j < len(tokens):
                s = slot + (j - i)
                if s == 0:
                    value, ok = self._zero, True  # the last prompt token: a prompt position
                elif (known := self._known(state, s - 1)) is not None:
                    value, ok = known, True
                elif j == i:
                    value, ok = state.outs[s - 1], False  # the draft's own guess
                else:
                    break
                inputs.append(value)
                exact.append(ok)
                j += 1
            out = self._pass(state, tokens[i:j], inputs)
            state.cached.extend(tokens[i:j])
            state.exact.extend(exact)
            state.outs.extend(out.unbind(0))
            outs.append(out)
            i = j
        hidden = torch.cat(outs) if outs else torch.zeros(0, self.hidden_size, dtype=self.dtype)
        return hidden[-keep:] if keep else hidden

    def truncate(self, state: FeatureState, length: int) -> None:
        keep = length - state.base
        super().truncate(state, length)
        del state.exact[keep:]
        del state.outs[keep:]

    def sync(self, state: FeatureState, generated: Sequence[int]) -> List[int]:
        """As :meth:`ModelAdapter.sync`, and also roll back to the first slot whose input was a
        guess the target's state can now replace."""
        redo = next((i for i, ok in enumerate(state.exact)
                     if not ok and self._known(state, i - 1) is not None), None)
        if redo is not None:
            self.truncate(state, state.base + redo)
        return super().sync(state, generated)

    def decode_states(self, payload: bytes) -> torch.Tensor:
        """``VerifyResult.target_states`` (fp16 rows) as a tensor ``[rows, hidden]``."""
        row = 2 * self.hidden_size
        if len(payload) % row:
            raise FeatureDraftError(f"target states of {len(payload)} bytes are not rows of {self.hidden_size} fp16")
        return torch.frombuffer(bytearray(payload), dtype=torch.float16).view(-1, self.hidden_size)


def encode_states(rows: torch.Tensor) -> bytes:
    """Target states ``[rows, hidden]`` as the wire's fp16 bytes (little-endian)."""
    return rows.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()


# -- folders ----------------------------------------------------------------------------------
def is_feature_draft(path: str) -> bool:
    return os.path.isfile(os.path.join(path, FEATURE_DRAFT_FILE))


def load_feature_draft(path: str, tokenizer, *, dtype=None, device: str = "cpu", name: str = "",
                       draft_head: bool = True) -> FeatureDraftAdapter:
    """An assembled folder: ``config.json`` (the decoder layer's Llama config), the marker file,
    ``feature_draft.safetensors`` (fc, layer, norm), ``embed_tokens.safetensors`` (the
    target's embeddings), ``lm_head.safetensors`` (the target's LM head, absent when tied to the
    embeddings) and optionally ``draft_head.safetensors``."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    with open(os.path.join(path, FEATURE_DRAFT_FILE), encoding="utf-8") as handle:
        marker = json.load(handle)
    if marker.get("format") != FEATURE_DRAFT_FORMAT:
        raise FeatureDraftError(f"{path}: format {marker.get('format')!r}, expected {FEATURE_DRAFT_FORMAT!r}")
    config = LlamaConfig.from_pretrained(path, local_files_only=True)
    embed_weight = load_file(os.path.join(path, "embed_tokens.safetensors"))["weight"]
    if dtype is not None:
        embed_weight = embed_weight.to(dtype)
    embed = nn.Embedding.from_pretrained(embed_weight, freeze=True)
    draft = FeatureDraft(config, embed)
    weights = load_file(os.path.join(path, WEIGHTS_FILE))
    missing, unexpected = draft.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "model.embed_tokens.weight"]
    if missing or unexpected:
        raise FeatureDraftError(f"{path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    draft = draft.to(device=device, dtype=embed_weight.dtype).eval()
    head = nn.Linear(embed_weight.shape[1], embed_weight.shape[0], bias=False, device=device, dtype=embed_weight.dtype)
    head_file = os.path.join(path, "lm_head.safetensors")
    if os.path.isfile(head_file):
        head.weight = nn.Parameter(load_file(head_file)["weight"].to(device=device, dtype=embed_weight.dtype),
                                   requires_grad=False)
    else:
        head.weight = draft.model.embed_tokens.weight  # tied, as in the target
    adapter = FeatureDraftAdapter(draft, tokenizer, lm_head=head, name=name or os.path.basename(os.path.normpath(path)))
    if draft_head:
        from .draft_head import use_draft_head

        use_draft_head(adapter, path)
    return adapter
