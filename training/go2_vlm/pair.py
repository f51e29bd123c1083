"""The Go2 VLM pair itself: shapes, tokenizer, processor, model construction, files on disk.

See :mod:`training.go2_vlm` for the whole picture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

# Two training threads on a shared 2-core machine: without this, OpenMP threads spin while they
# wait for a descheduled sibling and a step costs ~8x the CPU (only effective before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from specdec.models.artefacts import go2_pair_paths  # noqa: E402
from specdec.models.prompting import (LAST_MOVE, LAST_MOVE_WORDS, PLACEHOLDER, TEMPLATE_FILE, TURNED, TURNED_WORDS,  # noqa: E402
                                     check_prompt_template, folder_prompt_template)

# -- tokenizer ---------------------------------------------------------------------------------
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>",
            "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_WORDS = "system user assistant".split()
INSTRUCTION_WORDS = (
    "go to the a an and of at in on toward towards near next by please now then "
    "walk move drive head turn find reach approach stop at face "
    "red green blue yellow ball box sphere cube object"
).split()
ACTION_WORDS = ["forward", "backward", "left", "right", "strafe_left", "strafe_right", "stop", "done"]
# Magnitudes as single tokens: turns in whole degrees, translations in 0.05 m steps.
NUMBER_WORDS = [str(i) for i in range(1, 91)] + [f"{0.05 * i:.2f}".rstrip("0").rstrip(".") for i in range(1, 20)]
PIECES = [f"##{d}" for d in "0123456789"] + ["##."]
WORDS = CHAT_WORDS + INSTRUCTION_WORDS + ACTION_WORDS + NUMBER_WORDS + ["0"] + PIECES
# The prompt of a pair trained with ``TrainConfig.last_move_feedback`` (else the bare instruction).
LAST_MOVE_TEMPLATE = "{instruction} last move {last_move}"
# ... and, trained with ``TrainConfig.relocate_free_m``, this after it (whether it turned a full circle)
TURNED_SUFFIX = " turned {turned}"


def vocabulary(template: str = "") -> List[str]:
    """The pair's words: ``WORDS`` and, after them (so no other id moves), the words a prompt
    ``template`` adds, including what its ``{last_move}`` and ``{turned}`` become."""
    extra = template.replace(PLACEHOLDER, " ").replace(LAST_MOVE, " ").replace(TURNED, " ").split()
    for slot, words in ((LAST_MOVE, LAST_MOVE_WORDS), (TURNED, TURNED_WORDS)):
        if slot in template:
            extra += [words[False], words[True]]
    return WORDS + [w for w in dict.fromkeys(extra) if w not in WORDS]

# -- image / model shapes ----------------------------------------------------------------------
PATCH = 8
MERGE = 2
TEMPORAL_PATCH = 2  # as the released Qwen2-VL (a still image is repeated once)
IMAGE_W, IMAGE_H = 96, 64  # what the processor resizes the 160x120 camera frame to


@dataclass
class PairSpec:
    """Shapes of one model of the pair (the text decoder and the vision tower)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_dim: int
    vision_depth: int
    vision_heads: int
    mrope_section: Sequence[int]


TARGET_SPEC = PairSpec(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=256,
                       vision_dim=64, vision_depth=2, vision_heads=2, mrope_section=(2, 2, 12))
DRAFT_SPEC = PairSpec(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                      vision_dim=32, vision_depth=1, vision_heads=1, mrope_section=(2, 2, 12))
EXIT_LAYERS = (1, 2)  # exits after decoder layers 2 and 3 of 4


# ChatML like :func:`specdec.models.tiny.chat_template`, except that a message's text parts are
# written before its image: the image tokens then see the instruction (causal attention), so the
# decoder can mark the instructed object in place, token by token.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROPE_THETA = 1000.0


def build_tokenizer(template: str = ""):
    """The pair's tokenizer (offline; same construction as :func:`specdec.models.tiny.tiny_tokenizer`
    with the Go2 vocabulary for prompts of ``template``, whitespace-only splitting and WordPiece
    number pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from specdec.models.tiny import chatml_tokenizer

    vocab: Dict[str, int] = {}
    for word in SPECIALS + vocabulary(template):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##",
                                         max_input_chars_per_word=32))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return chatml_tokenizer(backend, SPECIALS[4:], CHAT_TEMPLATE, qwen_vision=True)


def build_processor(tokenizer=None, template: str = ""):
    """Image-only Qwen2-VL processor: any frame is resized to IMAGE_W x IMAGE_H (24 image tokens);
    the tokenizer (default: :func:`build_tokenizer` of ``template``)."""
    from transformers import Qwen2VLImageProcessorPil

    from specdec.models.loading import ImageOnlyQwen2VLProcessor

    tok = tokenizer or build_tokenizer(template)
    # smart_resize: a 160x120 frame is scaled to fit max_pixels, rounded down to multiples of 16.
    size = {"shortest_edge": 16 * 16, "longest_edge": IMAGE_W * (IMAGE_H + 8)}
    image_processor = Qwen2VLImageProcessorPil(size=size, patch_size=PATCH, merge_size=MERGE,
                                               temporal_patch_size=TEMPORAL_PATCH)
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template)


def model_config(spec: PairSpec, tok):
    from transformers import Qwen2VLConfig

    text = dict(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=256, rms_norm_eps=1e-6,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(spec.mrope_section)},
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=spec.vision_depth, embed_dim=spec.vision_dim, hidden_size=spec.hidden,
                           num_heads=spec.vision_heads, mlp_ratio=2, patch_size=PATCH, spatial_merge_size=MERGE,
                           temporal_patch_size=TEMPORAL_PATCH, in_channels=3, initializer_range=0.02),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


SIMILARITY_INIT_LAYERS = (0, 1)


def build_model(spec: PairSpec, tok, seed: int = 0):
    """A random-init Qwen2-VL of ``spec``. In the first decoder layers one key/value head starts with
    its key projection equal to the query projection of the first query head it serves (a
    "similarity" head: tokens attend to tokens that look alike), which is where matching the
    instruction's words against the image starts."""
    from transformers import Qwen2VLForConditionalGeneration

    from specdec.models.layout import decoder_layout

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(model_config(spec, tok))
    head_dim = spec.hidden // spec.heads
    with torch.no_grad():
        for index in SIMILARITY_INIT_LAYERS:
            layers = decoder_layout(model).layers
            if index >= len(layers):
                continue
            attn = layers[index].self_attn
            attn.k_proj.weight[:head_dim].copy_(attn.q_proj.weight[:head_dim])
            if attn.k_proj.bias is not None and attn.q_proj.bias is not None:
                attn.k_proj.bias[:head_dim].copy_(attn.q_proj.bias[:head_dim])
    gen = model.generation_config
    gen.eos_token_id = tok.eos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False
    return model


def draft_from_target(target, layers: Sequence[int], tok):
    """A draft that starts as a copy of ``target`` keeping only the decoder ``layers`` (its vision
    tower, embeddings, final norm and head whole): the cheapest start for a draft that must say
    what the target says, since its image features and output space begin as the target's."""
    from dataclasses import replace

    draft = build_model(replace(spec_of(target), layers=len(layers)), tok)
    source = target.state_dict()
    prefix = "model.language_model.layers."
    state = {}
    for name in draft.state_dict():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            name_in_target = f"{prefix}{layers[int(index)]}.{rest}"
        else:
            name_in_target = name
        state[name] = source[name_in_target].detach().clone()
    draft.load_state_dict(state)
    return draft


def spec_of(model) -> PairSpec:
    """The :class:`PairSpec` a built model has (read from its config)."""
    text, vision = model.config.text_config, model.config.vision_config
    return PairSpec(hidden=text.hidden_size, layers=text.num_hidden_layers, heads=text.num_attention_heads,
                    kv_heads=text.num_key_value_heads, intermediate=text.intermediate_size,
                    vision_dim=vision.embed_dim, vision_depth=vision.depth, vision_heads=vision.num_heads,
                    mrope_section=tuple(text.rope_parameters["mrope_section"]))


# -- saving / loading --------------------------------------------------------------------------
def save_processor(processor, path: str) -> None:
    """Save the processor so :func:`specdec.models.loading.load_model` rebuilds it.

    ``processor_class`` is written as the released ``Qwen2VLProcessor`` (what real checkpoints
    carry): ``AutoProcessor`` does not know the image-only subclass and would silently return
    the bare tokenizer, while for ``Qwen2VLProcessor`` it fails on the missing video processor
    and ``load_model`` falls back to the image-only processor.
    """
    processor.save_pretrained(path)
    cfg_path = os.path.join(path, "processor_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["processor_class"] = "Qwen2VLProcessor"
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_prompt_template(model_dir: str, template: str) -> None:
    """Record in a model folder the prompt template it was trained on (none for the bare instruction)."""
    path = os.path.join(model_dir, TEMPLATE_FILE)
    if template:
        with open(path, "w") as f:
            f.write(check_prompt_template(template))
    elif os.path.exists(path):
        os.remove(path)


def load_prompt_template(out_dir: Optional[str] = None) -> str:
    """The prompt template the pair in ``out_dir`` was trained with ('' = the bare instruction)."""
    return folder_prompt_template(go2_pair_paths(out_dir).target)


def artefacts_exist(out_dir: Optional[str] = None) -> bool:
    p = go2_pair_paths(out_dir)
    return all(os.path.isfile(f) for f in (
        os.path.join(p.target, "model.safetensors"), os.path.join(p.target, "config.json"),
        os.path.join(p.draft, "model.safetensors"), os.path.join(p.draft, "config.json"), p.exits))


def load_pair(out_dir: Optional[str] = None, *, with_exits: bool = True, dtype: torch.dtype = torch.float32):
    """``(draft_adapter, target_adapter, exit_heads_or_None)`` from the committed folders."""
    from specdec.models.adapters import check_pair
    from specdec.models.loading import load_model
    from specdec.models.early_exit import EarlyExitHeads

    p = go2_pair_paths(out_dir)
    target = load_model(p.target, dtype=dtype, name="go2-vlm-target")
    draft = load_model(p.draft, dtype=dtype, name="go2-vlm-draft")
    check_pair(draft, target)
    heads = EarlyExitHeads.load(target.model, p.exits) if with_exits else None
    return draft, target, heads


# -- data ---------------------------------------------------------------------------------------
def prompt_text(processor, instruction: str) -> str:
    """The chat prompt exactly as :meth:`specdec.models.adapters.ModelAdapter.prompt_text` renders it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


