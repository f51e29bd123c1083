"""Adapters over Hugging Face models for speculative decoding (draft and target alike).

One class hierarchy covers text causal LMs (Llama / SmolLM2 / Qwen2 ...) and VLMs
(Qwen2-VL, Idefics3 / SmolVLM, LLaVA):

* :meth:`ModelAdapter.encode` builds the prompt from (instruction, optional image)
  with the chat template and processor. Draft and target call the same code, so
  with the same tokenizer they get the same *text* tokens; the number of image
  tokens may differ (which is why protocol positions count generated tokens only).
* :meth:`ModelAdapter.prefill` runs ``prompt[:-1]`` (image included) and keeps the
  last prompt token pending, so every later forward is ``pending + new tokens``
  and a verification is uniformly ``[last committed token] + draft``.
* :meth:`ModelAdapter.forward` appends tokens to the KV cache and returns logits;
  :meth:`ModelAdapter.sync` rolls the cache back (``DynamicCache.crop`` with a
  negative count) to the longest prefix shared with a committed sequence and
  returns what is still pending. Positions are always derived from the cache
  length, so Qwen2-VL's M-RoPE (``rope_deltas`` fixed at prefill) stays right
  after any crop.

The state of one sequence lives in a :class:`DecodeState`, not in the adapter, so
one target adapter serves many sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .fingerprint import tokenizer_fingerprint
from . import lean_step
from .images import ImageLike, to_pil
from .layout import decoder_layout


class TokenizerMismatchError(ValueError):
    """Draft and target do not tokenize identically: speculative decoding is refused."""


@dataclass
class PromptInputs:
    """A tokenized prompt: token ids plus the extra tensors the model's prefill needs."""

    input_ids: List[int]
    model_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw, ...
    text: str = ""

    def generate_kwargs(self, device=None) -> Dict[str, torch.Tensor]:
        """Inputs for ``model.generate(**kwargs)`` (reference decoding in tests/benchmarks)."""
        ids = torch.tensor([self.input_ids], device=device)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        out.update({k: v.to(device) if device is not None else v for k, v in self.model_inputs.items()})
        return out


@dataclass
class DecodeState:
    """KV cache of one sequence: ``prompt[:-1]`` plus ``cached`` (which starts with the
    last prompt token once it has been fed)."""

    cache: Any
    prompt_ids: List[int]
    cached: List[int] = field(default_factory=list)
    rope_delta: int = 0  # Qwen2-VL family: M-RoPE position offset of text after the image
    prompt_positions: Optional[torch.Tensor] = None  # Qwen2-VL family: prefill positions, dropped after use

    @property
    def base(self) -> int:
        """Prompt tokens in the cache that never change (``len(prompt) - 1``)."""
        return len(self.prompt_ids) - 1

    @property
    def length(self) -> int:
        return self.base + len(self.cached)


class LMHead:
    """Hidden states -> next-token logits: the model's own LM head (with its final logit
    soft-capping / scale, where the family has one), or a reduced-vocabulary draft head whose
    column ``i`` scores token ``token_ids[i]``.

    Callers ask for logits only for the rows they read (one row per drafted token; rows up to
    the first rejection at verification), which on a CPU is most of a small model's cost.
    """

    def __init__(self, module: nn.Module, token_ids: Optional[torch.Tensor] = None,
                 softcap: Optional[float] = None, scale: Optional[float] = None, valid: Optional[int] = None):
        self.module = module
        self.valid = valid  # columns from here on are padding (no such token): never chosen
        self.token_ids = token_ids
        self.softcap = softcap
        self.scale = scale
        weight = module.weight() if callable(module.weight) else module.weight  # int8 dynamic Linear: a method
        self.hidden_size = int(weight.shape[1])
        self.size = int(weight.shape[0])

    @classmethod
    def of(cls, model: nn.Module, module: nn.Module, token_count: Optional[int] = None) -> "LMHead":
        config = getattr(model, "config", None)
        text = getattr(config, "text_config", None) or config
        softcap = getattr(text, "final_logit_softcapping", None)
        scale = getattr(text, "logit_scale", None)
        return cls(module, None, softcap, scale, token_count)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.module(hidden)
        if self.scale is not None:
            out = out * self.scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        out = out.float()
        if self.valid is not None and self.valid < out.shape[-1]:
            out[..., self.valid:] = float("-inf")
        return out


class ModelAdapter:
    """A causal LM (text or VLM) plus its tokenizer/processor, with explicit decode state."""

    is_vlm = False
    batch_prefill_images = False  # prompts with images can share a prefill pass (prefill_batch)

    def __init__(self, model: nn.Module, processor=None, *, tokenizer=None, use_chat_template: Optional[bool] = None,
                 name: str = ""):
        self.model = model.eval()
        # decode and verification steps without transformers' per-pass bookkeeping, bit for bit the
        # same hidden states; on the model object, so baselines that run it (generate) get it too
        self.lean_step = lean_step.install(model)
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", processor)
        if self.tokenizer is None:
            raise ValueError(f"{type(model).__name__}: a tokenizer or processor is required")
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        layout = decoder_layout(model)
        self.num_layers = len(layout.layers)
        self.vocab_size = layout.vocab_size
        # tokens that exist: LM heads are often padded past the tokenizer (Qwen2-VL-7B: 152,064
        # logits for 151,665 tokens, its 2B draft 151,936); padding ids are never chosen
        self.token_count = min(self.vocab_size, len(self.tokenizer))
        self.fingerprint = tokenizer_fingerprint(self.tokenizer)
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.use_chat_template = bool(template) if use_chat_template is None else use_chat_template
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.eos_token_ids = self._eos_ids()
        self._decoder = getattr(model, model.base_model_prefix)  # the stack without the LM head
        self.lm_head = LMHead.of(model, layout.lm_head, self.token_count)
        self.head = self.lm_head
        self.clock = None  # a ComputeClock: forward passes take an emulated device's time
        config = getattr(model, "config", None)
        self._image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)

    def use_lean_step(self, on: bool = True) -> None:
        """Run steps with the lean step (:mod:`.lean_step`, the default where supported) or with the
        model's own forward (``on=False``; side-by-side measurements and tests)."""
        self.lean_step = lean_step.install(self.model) if on else lean_step.uninstall(self.model)

    # -- identity ------------------------------------------------------------------------
    def _eos_ids(self) -> List[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, layers={self.num_layers}, vocab={self.vocab_size})"

    # -- prompting -----------------------------------------------------------------------
    def prompt_text(self, prompt: str, has_image: bool = False) -> str:
        """The instruction rendered with the chat template (image placeholder included)."""
        if not self.use_chat_template:
            return prompt
        if self.is_vlm:
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
            templater = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        else:
            content = prompt
            templater = self.tokenizer
        messages = [{"role": "user", "content": content}]
        return templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, prompt: str, image: ImageLike = None) -> PromptInputs:
        """Tokenize ``prompt`` (and ``image``) exactly as both sides of the link do."""
        if image is not None and not self.is_vlm:
            raise ValueError(f"{self.name} is a text-only model; it cannot take an image")
        text = self.prompt_text(prompt, has_image=image is not None)
        if image is None:
            ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
            return PromptInputs(input_ids=list(ids), text=text)
        batch = self.processor(text=[text], images=[to_pil(image)], return_tensors="pt")
        ids = batch.pop("input_ids")[0].tolist()
        batch.pop("attention_mask", None)
        extra = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        for key, value in extra.items():
            if torch.is_tensor(value) and value.is_floating_point():
                extra[key] = value.to(self.dtype)
        return PromptInputs(input_ids=ids, model_inputs=extra, text=text)

    def decode_text(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    # -- decoding ------------------------------------------------------------------------
    def new_cache(self):
        """A cache every rollback can undo exactly: one growing layer per decoder layer.

        transformers' sliding-window layers keep only ``window - 1`` keys after a ``crop``, so two
        rollbacks in a row (a wrong pre-draft, then the real result) would leave fewer keys than
        the length counter says. Full layers keep everything; the attention mask still applies
        the model's sliding window, so outputs are those of the model's own cache.
        """
        from transformers import DynamicCache

        return DynamicCache()

    def _positions(self, state: DecodeState, start: int, count: int) -> Optional[torch.Tensor]:
        """Explicit position ids for ``count`` tokens from cache position ``start`` (None: model default)."""
        return None

    def _branch_positions(self, state: DecodeState, start: int, count: int, offsets: Sequence[int]) -> torch.Tensor:
        """Position ids of ``count`` fed tokens from cache position ``start`` followed by branch
        tokens at ``start + offsets``."""
        return (torch.tensor(list(range(count)) + list(offsets), device=self.device) + start).view(1, -1)

    def _prefill_extra(self, inputs: PromptInputs, state: DecodeState) -> Dict[str, Any]:
        """Model kwargs for the prefill forward (vision tensors)."""
        return {}

    def _run(self, state: DecodeState, ids: Sequence[int], start: int, keep: int, **extra) -> torch.Tensor:
        """One forward pass of ``ids`` at cache position ``start``: final hidden states
        ``[keep, hidden]`` (after the final norm; all positions when ``keep`` is 0)."""
        if self.clock is not None:
            images = sum(1 for t in ids if t == self._image_token) if extra and self._image_token is not None else 0
            self.clock.begin(len(ids), start, images)
        tensor = torch.tensor([list(ids)], device=self.device)
        # a step after the prefill goes straight to the lean step of the text stack: a VLM wrapper's
        # own forward would only embed the tokens and pass them on
        decoder = self.lean_step if self.lean_step is not None and not extra and start else self._decoder
        out = decoder(input_ids=tensor, past_key_values=state.cache, use_cache=True,
                      position_ids=self._positions(state, start, len(ids)), **extra)
        hidden = out.last_hidden_state[0]
        return hidden[-keep:] if keep else hidden

    def fresh_state(self, inputs: PromptInputs) -> Tuple[DecodeState, Dict[str, Any]]:
        """A state whose prompt has not been fed yet, and its prefill's model kwargs (vision
        tensors): a row that :meth:`forward_batch` can prefill next to other sequences' rounds."""
        if not inputs.input_ids:
            raise ValueError("empty prompt")
        state = DecodeState(cache=self.new_cache(), prompt_ids=list(inputs.input_ids))
        return state, self._prefill_extra(inputs, state)

    @torch.inference_mode()
    def prefill(self, inputs: Union[PromptInputs, str], image: ImageLike = None) -> DecodeState:
        """Run ``prompt[:-1]`` through the model; the last prompt token stays pending."""
        if isinstance(inputs, str):
            inputs = self.encode(inputs, image)
        for state, _ in self.prefill_chunks(inputs):
            pass
        return state

    def prefill_chunks(self, inputs: PromptInputs, chunk: int = 0) -> Iterator[Tuple[DecodeState, bool]]:
        """:meth:`prefill` in forward passes of at most ``chunk`` prompt tokens (0: one pass), so
        a scheduler can run other work between them. Yields ``(state, done)`` after each pass. The
        first pass holds every image token (the image enters only there)."""
        state, extra = self.fresh_state(inputs)
        head = inputs.input_ids[:-1]
        if not head and extra:
            raise ValueError("a prompt with an image needs text after the image")
        images = [i for i, t in enumerate(head) if t == self._image_token] if extra else []
        first = len(head) if chunk <= 0 else max(chunk, images[-1] + 1 if images else 0)
        start = 0
        while start < len(head):
            end = min(len(head), first if start == 0 else start + chunk)
            with torch.inference_mode():
                self._run(state, head[start:end], start, 1, **(extra if start == 0 else {}))
            start = end
            if start < len(head):
                yield state, False
        state.prompt_positions = None  # only the prefill needs them
        yield state, True

    @torch.inference_mode()
    def prefill_with(self, inputs: PromptInputs, tokens: Sequence[int], keep: int):
        """The whole prompt plus ``tokens`` in ONE forward pass (a first draft block verified
        together with the prefill): ``(state, hidden [keep, hidden])``."""
        state, extra = self.fresh_state(inputs)
        hidden = self._run(state, list(inputs.input_ids) + list(tokens), 0, keep, **extra)
        state.prompt_positions = None
        state.cached = [inputs.input_ids[-1]] + list(tokens)
        return state, hidden

    @torch.inference_mode()
    def prefill_batch(self, prompts: Sequence[PromptInputs], blocks: Sequence[Optional[Sequence[int]]],
                      keeps: Sequence[int]) -> List[Tuple[DecodeState, Optional[torch.Tensor]]]:
        """Several prefills in ONE forward pass: ``(state, hidden)`` per prompt.

        Row ``i`` feeds ``prompts[i]`` and then ``blocks[i]``, a first draft block verified with the
        prefill as in :meth:`prefill_with` (``hidden``: its last ``keeps[i]`` rows), or, where
        ``blocks[i]`` is None, ``prompt[:-1]`` only, as :meth:`prefill` (``hidden`` None). Rows are
        left-padded to the longest, so each row's last token is in the last column; an attention
        mask hides the padding and positions are each row's own, so every row computes what it
        would alone. Each state gets its own cache. Rows with images need ``batch_prefill_images``
        (else ValueError).
        """
        if len(prompts) == 1:
            if blocks[0] is None:
                return [(self.prefill(prompts[0]), None)]
            return [self.prefill_with(prompts[0], blocks[0], keeps[0])]
        states, extras, seqs = [], [], []
        for inputs, block in zip(prompts, blocks):
            state, extra = self.fresh_state(inputs)
            extras.append(extra)
            seqs.append(list(inputs.input_ids) + list(block) if block is not None else list(inputs.input_ids[:-1]))
            states.append(state)
        extra = self._merge_extras(extras)
        if extra is None or not all(seqs):
            raise ValueError("these prompts cannot share one prefill pass")
        rows, longest = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((rows, longest), self._pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(rows, longest, dtype=torch.long, device=self.device)
        positions = []
        for row, (state, seq) in enumerate(zip(states, seqs)):
            pad = longest - len(seq)
            ids[row, pad:] = torch.tensor(seq, device=self.device)
            mask[row, pad:] = 1
            own = self._positions(state, 0, len(seq))
            own = torch.arange(len(seq), device=self.device).view(1, -1) if own is None else own
            positions.append(torch.nn.functional.pad(own, (pad, 0)))
        if self.clock is not None:
            images = sum(s.count(self._image_token) for s in seqs) if extra and self._image_token is not None else 0
            self.clock.begin(sum(len(s) for s in seqs), 0, images, rows)
        cache = self.new_cache()
        out = self._decoder(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                            position_ids=torch.cat(positions, dim=-2), **extra)
        from transformers import DynamicCache

        results = []
        for row, (state, seq, inputs, block, keep) in enumerate(zip(states, seqs, prompts, blocks, keeps)):
            span = slice(longest - len(seq), longest)
            state.cache = DynamicCache(ddp_cache_data=[(layer.keys[row:row + 1, :, span].clone(),
                                                         layer.values[row:row + 1, :, span].clone())
                                                        for layer in cache.layers])
            state.prompt_positions = None
            if block is None:
                results.append((state, None))
                continue
            state.cached = [inputs.input_ids[-1]] + list(block)
            hidden = out.last_hidden_state[row, span]
            results.append((state, hidden[-keep:] if keep else hidden))
        return results

    def _merge_extras(self, extras: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """Several rows' prefill kwargs as one pass's (None: they cannot share one). Text rows
        always can; image tensors only where the family concatenates them (Qwen2-VL)."""
        return {} if not any(extras) else None

    @property
    def placeholder_ids(self) -> frozenset:
        """Token ids the model fills with image / video features where they appear in a pass."""
        config = getattr(self.model, "config", None)
        return frozenset(t for t in (self._image_token, getattr(config, "video_token_id", None)) if t is not None)

    @property
    def _pad_id(self) -> int:
        """A token id for left padding that no image placeholder uses (masked out anyway)."""
        taken = self.placeholder_ids
        return next(t for t in range(len(taken) + 1) if t not in taken)

    @torch.inference_mode()
    def forward_hidden(self, state: DecodeState, tokens: Sequence[int], keep: int = 0) -> torch.Tensor:
        """Feed ``tokens`` after the cache; final hidden states of the last ``keep`` of them. The LM
        head is left to the caller, who computes it only for the rows it reads."""
        hidden = self._run(state, tokens, state.length, keep)
        state.cached.extend(tokens)
        return hidden

    @property
    def _attention(self) -> Optional[str]:
        """The language model's attention implementation (``sdpa``, ``eager``, ...)."""
        config = getattr(self.model, "config", None)
        text = getattr(config, "text_config", None) or config
        return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)

    @property
    def can_branch(self) -> bool:
        """:meth:`forward_with_branches` works: attention that takes an explicit 4D mask (eager or
        SDPA) over every cached key (no sliding window, as for :attr:`can_batch`)."""
        return self._attention in ("eager", "sdpa") and self.can_batch

    @torch.inference_mode()
    def forward_with_branches(self, state: DecodeState, tokens: Sequence[int], branches: Sequence[Tuple[int, int]],
                              keep: int) -> torch.Tensor:
        """:meth:`forward_hidden` of ``tokens`` plus, in the same pass, one-token *branches*: ``(parent,
        token)`` puts ``token`` right after ``tokens[parent]`` instead of ``tokens[parent + 1]`` (a
        draft's next-best token at that position). Returns the final hidden states of the last
        ``keep`` of ``tokens`` followed by one row per branch: what the model predicts after
        ``tokens[:parent + 1] + [token]``. Each branch row sees the cache, its prefix and itself
        (an explicit attention mask, its position ``parent + 1``); the chain rows see what they would
        without branches. The branches' keys and values are dropped afterwards: the cache holds
        ``tokens`` only, so a branch that is committed is fed again next time."""
        if not branches:
            return self.forward_hidden(state, tokens, keep)
        start, n, b = state.length, len(tokens), len(branches)
        if any(not 0 <= parent < n - 1 for parent, _ in branches):
            raise ValueError(f"a branch needs a parent among the first {n - 1} fed tokens")
        ids = torch.tensor([list(tokens) + [t for _, t in branches]], device=self.device)
        positions = self._branch_positions(state, start, n, [parent + 1 for parent, _ in branches])
        allowed = torch.zeros(n + b, start + n + b, dtype=torch.bool, device=self.device)
        allowed[:, :start] = True
        allowed[:n, start:start + n] = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        for j, (parent, _) in enumerate(branches):
            allowed[n + j, start:start + parent + 1] = True
            allowed[n + j, start + n + j] = True
        if self._attention == "sdpa":
            mask = allowed[None, None]
        else:  # eager attention adds the mask to its scores
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
            mask = mask[None, None]
        if self.clock is not None:
            self.clock.begin(n + b, start, 0)
        out = self._decoder(input_ids=ids, attention_mask=mask, past_key_values=state.cache, use_cache=True,
                            position_ids=positions)
        state.cached.extend(tokens)
        state.cache.crop(-b)  # the branches' keys and values
        hidden = out.last_hidden_state[0]
        return torch.cat([hidden[n - keep:n], hidden[n:]])

    @property
    def can_batch(self) -> bool:
        """Sequences of different lengths can share one forward pass (left-padded caches). Not for
        sliding-window attention, whose mask counts cache slots, which padding shifts."""
        config = getattr(self.model, "config", None)
        text = getattr(config, "text_config", None) or config
        return not getattr(text, "sliding_window", None) or getattr(text, "use_sliding_window", True) is False

    @torch.inference_mode()
    def forward_batch(self, states: Sequence[DecodeState], feeds: Sequence[Sequence[int]],
                      keeps: Sequence[int], extras: Optional[Sequence[Dict[str, Any]]] = None) -> List[torch.Tensor]:
        """:meth:`forward_hidden` for several sequences in ONE forward pass.

        Each sequence's cache is left-padded to the longest and its new tokens right-padded to the
        longest feed; an attention mask hides the padding and positions come from each sequence's
        own length, so every row computes what it would alone. Afterwards each state's cache gets
        its own new keys and values. Returns the final hidden states of the last ``keeps[i]`` fed
        tokens of each sequence.

        A state from :meth:`fresh_state` (nothing cached yet) is a prefill: its feed is the prompt
        - ``prompt[:-1]``, or the whole prompt and block 0 as in :meth:`prefill_with` - and
        ``extras[i]`` its vision tensors. A prompt thus shares the pass with other sequences'
        rounds instead of holding them up for a pass of its own. At least one state must have a
        cache (else :meth:`prefill_batch`).
        """
        fresh = [not s.cached and s.cache.get_seq_length() == 0 for s in states]
        if len(states) == 1 and not fresh[0]:
            return [self.forward_hidden(states[0], feeds[0], keeps[0])]
        extra = self._merge_extras([e for e, new in zip(extras or [{}] * len(states), fresh) if new] or [{}])
        if extra is None:
            raise ValueError("these prompts cannot share one pass")
        ref = next((s for s, new in zip(states, fresh) if not new), None)
        if ref is None:
            raise ValueError("forward_batch needs at least one prefilled sequence (prefill_batch: only prompts)")
        rows = len(states)
        past = [0 if new else s.length for s, new in zip(states, fresh)]
        longest_past, longest_feed = max(past), max(len(f) for f in feeds)
        layers = []
        for layer in range(len(ref.cache.layers)):
            keys, values = [], []
            template = ref.cache.layers[layer].keys
            for state, new in zip(states, fresh):
                if new:
                    k = v = template.new_zeros(1, template.shape[1], 0, template.shape[3])
                else:
                    k, v = state.cache.layers[layer].keys, state.cache.layers[layer].values
                pad = longest_past - k.shape[-2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=layers)
        ids = torch.full((rows, longest_feed), self._pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(rows, longest_past + longest_feed, dtype=torch.long, device=self.device)
        positions = []
        for row, (state, feed) in enumerate(zip(states, feeds)):
            ids[row, :len(feed)] = torch.tensor(list(feed), device=self.device)
            mask[row, longest_past - past[row]:longest_past + len(feed)] = 1
            own = self._positions(state, past[row], longest_feed)
            positions.append(own if own is not None else
                             torch.arange(past[row], past[row] + longest_feed, device=self.device).view(1, -1))
        position_ids = torch.cat(positions, dim=-2)
        if self.clock is not None:
            images = sum(list(f).count(self._image_token) for f, new in zip(feeds, fresh) if new) \
                if extra and self._image_token is not None else 0
            self.clock.begin(sum(len(f) for f in feeds), sum(past), images, rows)
        out = self._decoder(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                            position_ids=position_ids, **extra)
        hidden = out.last_hidden_state
        results = []
        for row, (state, feed, keep, new) in enumerate(zip(states, feeds, keeps, fresh)):
            span = slice(longest_past, longest_past + len(feed))
            if new:
                state.cache = DynamicCache(ddp_cache_data=[(layer.keys[row:row + 1, :, span].clone(),
                                                             layer.values[row:row + 1, :, span].clone())
                                                            for layer in cache.layers])
                state.prompt_positions = None
                state.cached = list(feed[state.base:])  # the last prompt token and block 0, when fed
            else:
                for layer, own in zip(cache.layers, state.cache.layers):
                    own.keys = torch.cat([own.keys, layer.keys[row:row + 1, :, span]], dim=-2)
                    own.values = torch.cat([own.values, layer.values[row:row + 1, :, span]], dim=-2)
                state.cached.extend(feed)
            rows_out = hidden[row, :len(feed)]
            results.append(rows_out[-keep:] if keep else rows_out)
        return results

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary float logits ``[rows, vocab]`` for final hidden states."""
        return self.lm_head.logits(hidden)

    @torch.inference_mode()
    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the head this model proposes tokens with: ``[rows, len(head_ids)]`` for a
        reduced-vocabulary draft head, else the full vocabulary (``head_ids`` is None)."""
        return self.head.logits(hidden)

    # -- emulated hardware (specdec.models.compute_profile) -----------------------------------
    def use_clock(self, clock) -> None:
        """Make forward passes take ``clock``'s emulated device time (None: real time only)."""
        self.clock = clock

    def settle(self) -> None:
        """A forward pass's result leaves the caller now: wait out its emulated time."""
        if self.clock is not None:
            self.clock.settle()

    def layer_time(self, layer: int) -> Optional[float]:
        """Inside a pass: when an emulated device reaches the output of decoder ``layer``
        (``time.perf_counter``); None in real time (it is reached now)."""
        if self.clock is None:
            return None
        return self.clock.time_at((layer + 1) / self.num_layers)

    @property
    def head_ids(self) -> Optional[torch.Tensor]:
        return self.head.token_ids

    def use_head(self, head: "LMHead") -> None:
        """Propose tokens with ``head`` (a reduced-vocabulary draft head; the full one stays for
        :meth:`logits`)."""
        if head.hidden_size != self.lm_head.hidden_size:
            raise ValueError(f"head for hidden size {head.hidden_size}, model has {self.lm_head.hidden_size}")
        self.head = head

    @torch.inference_mode()
    def forward(self, state: DecodeState, tokens: Sequence[int], keep: int = 0) -> torch.Tensor:
        """Feed ``tokens`` after the cache; return float logits ``[n, vocab]`` for the last
        ``keep`` of them (all when 0). One forward pass."""
        return self.logits(self.forward_hidden(state, tokens, keep))

    def block_logits(self, state: DecodeState, committed: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Verification in ONE forward pass: roll the cache back to ``prompt + committed``, feed
        ``[last committed token] + tokens`` and return logits ``[len(tokens) + 1, vocab]``: row ``i``
        predicts ``tokens[i]``, the last row is the bonus position."""
        pending = self.sync(state, committed)
        return self.forward(state, pending + list(tokens), keep=len(tokens) + 1)

    def truncate(self, state: DecodeState, length: int) -> None:
        """Drop cached tokens beyond ``length`` (total, prompt included)."""
        remove = state.length - length
        if remove < 0 or length < state.base:
            raise ValueError(f"cannot truncate a cache of {state.length} tokens to {length}")
        if remove:
            state.cache.crop(-remove)
            del state.cached[len(state.cached) - remove:]

    def sync(self, state: DecodeState, generated: Sequence[int]) -> List[int]:
        """Make the cache a prefix of ``prompt + generated`` and return the pending tokens
        (at least one) that must be fed next. Rolls the cache back where it diverged."""
        want_len = len(generated) + 1  # last prompt token + generated
        cached = state.cached
        limit = min(len(cached), want_len - 1)
        common = 0
        if limit:
            if cached[0] == state.prompt_ids[-1]:
                common = 1
                while common < limit and cached[common] == generated[common - 1]:
                    common += 1
        if common < len(cached):
            self.truncate(state, state.base + common)
        if common == 0:
            return [state.prompt_ids[-1]] + list(generated)
        return list(generated[common - 1:])


class TextAdapter(ModelAdapter):
    """Text-only causal LMs (Llama, SmolLM2, Qwen2, ...)."""


class VisionLanguageAdapter(ModelAdapter):
    """VLMs whose image enters only at prefill and whose positions are 1-D (LLaVA, Idefics3/SmolVLM)."""

    is_vlm = True

    def _prefill_extra(self, inputs: PromptInputs, state: DecodeState) -> Dict[str, Any]:
        extra = dict(inputs.model_inputs)
        extra.pop("mm_token_type_ids", None)
        return extra


class Qwen2VLAdapter(VisionLanguageAdapter):
    """Qwen2-VL family: M-RoPE. Positions are computed here from the cache length plus the
    ``rope_delta`` fixed at prefill, never from the model's own (stateful) ``rope_deltas``."""

    def _prefill_extra(self, inputs: PromptInputs, state: DecodeState) -> Dict[str, Any]:
        extra = dict(inputs.model_inputs)
        ids = torch.tensor([inputs.input_ids], device=self.device)
        if extra.get("image_grid_thw") is not None or extra.get("video_grid_thw") is not None:
            if extra.get("mm_token_type_ids") is None:
                raise ValueError("Qwen2-VL needs mm_token_type_ids from the processor when an image is passed")
            rope_kwargs = {k: v for k, v in extra.items()
                           if k in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
            positions, deltas = self.model.model.get_rope_index(ids, **rope_kwargs)
            state.rope_delta = int(deltas.reshape(-1)[0])
            state.prompt_positions = positions  # [3, 1, len(prompt)], used by the prefill only
        extra.pop("mm_token_type_ids", None)
        return extra

    batch_prefill_images = True

    def _merge_extras(self, extras: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        # the vision tower takes every image's patches in one sequence (cu_seqlens from the grids)
        # and the features fill the image placeholders in row order
        present = [{k: v for k, v in e.items() if k != "mm_token_type_ids"} for e in extras]  # used at encode
        present = [e for e in present if e]
        if not present:
            return {}
        keys = set().union(*present)
        if not keys <= {"pixel_values", "image_grid_thw"} or any(set(e) != keys for e in present):
            return None
        return {k: torch.cat([e[k] for e in present]) for k in keys}

    def _branch_positions(self, state: DecodeState, start: int, count: int, offsets: Sequence[int]) -> torch.Tensor:
        # branches are generated text: M-RoPE's three parts are the same text position
        fed = self._positions(state, start, count)
        branch = torch.tensor(list(offsets), device=self.device) + start + state.rope_delta
        return torch.cat([fed, branch.view(1, 1, -1).expand(3, 1, -1)], dim=-1)

    def _positions(self, state: DecodeState, start: int, count: int) -> torch.Tensor:
        prompt = state.prompt_positions
        known = 0 if prompt is None else max(0, min(start + count, prompt.shape[-1]) - start)
        pos = torch.arange(start + known + state.rope_delta, start + count + state.rope_delta, device=self.device)
        text = pos.view(1, 1, -1).expand(3, 1, -1)
        if not known:
            return text
        return torch.cat([prompt[:, :, start:start + known], text], dim=-1) if count > known else \
            prompt[:, :, start:start + known]


QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def adapter_class_for(model: nn.Module) -> type:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if model_type in QWEN_VL_TYPES:
        return Qwen2VLAdapter
    if getattr(config, "vision_config", None) is not None:
        return VisionLanguageAdapter
    return TextAdapter


def wrap_model(model: Union[nn.Module, ModelAdapter], processor=None, **kwargs) -> ModelAdapter:
    """The right adapter for an HF model (an adapter is returned unchanged)."""
    if isinstance(model, ModelAdapter):
        return model
    if isinstance(model, (tuple, list)) and len(model) == 2:
        model, processor = model
    if processor is None:
        raise ValueError(f"{type(model).__name__}: pass its tokenizer (text) or processor (VLM) to wrap it")
    return adapter_class_for(model)(model, processor, **kwargs)


def check_pair(draft: ModelAdapter, target: ModelAdapter) -> None:
    """Refuse a draft/target pair that does not tokenize identically."""
    if draft.fingerprint != target.fingerprint:
        raise TokenizerMismatchError(
            f"draft {draft.name} and target {target.name} have different tokenizers "
            f"(fingerprints {draft.fingerprint[:12]} vs {target.fingerprint[:12]}); "
            "speculative decoding needs identical vocabularies, special tokens and chat templates"
        )
    if draft.token_count != target.token_count:  # padded LM heads may differ in size; tokens may not
        raise TokenizerMismatchError(
            f"draft {draft.name} has {draft.token_count} tokens, target {target.name} has {target.token_count}"
        )
