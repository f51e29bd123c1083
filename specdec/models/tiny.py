"""Tiny random-init models with offline tokenizers/processors, for tests and demos.

Nothing here touches the network: every tokenizer is built with the
``tokenizers`` library from a fixed word list, every model from a config.

* :func:`tiny_tokenizer` - a WordLevel tokenizer with the special tokens each
  supported processor needs and a ChatML-style chat template.
* :func:`build_tiny` - ``(model, processor_or_tokenizer)`` for one architecture:
  ``"llama"`` (text), ``"qwen2_vl"``, ``"idefics3"``, ``"llava"``.
* :func:`perturbed_copy` / :func:`truncated_copy` - a draft that agrees with the
  target only partly (for acceptance tests).
* :func:`tiny_pair` - ``(draft_adapter, target_adapter)`` ready for speculative decoding.
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch

ARCHITECTURES = ("llama", "qwen2_vl", "idefics3", "llava")

_WORDS = (
    "user assistant system the a an to of and in on at is are be it this that with for from by as or not no yes "
    "robot dog go move walk turn stop done forward backward left right strafe meters degrees "
    "door wall table chair box ball red green blue yellow black white person cup bottle room "
    "kitchen hall floor near far front behind next slowly quickly then now wait look see find "
    "reach avoid follow come back around over under up down small big open closed obstacle path "
    "clear blocked goal target action value answer step one two three four five six seven eight "
    "nine ten zero 0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ( ) - + = / what where which how why"
).split()

_SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# Placeholders the VLM processors look up in the vocabulary.
_VISION = (
    ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
)

# ChatML-like template; ``image_placeholder`` is what the model's processor expands.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_PLACEHOLDER"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PLACEHOLDERS = {
    "llama": "",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "llava": "<image>",
}


def chat_template(arch: str = "llama") -> str:
    return _CHAT_TEMPLATE.replace("IMAGE_PLACEHOLDER", _PLACEHOLDERS[arch])


def tiny_tokenizer(arch: str = "llama"):
    """A PreTrainedTokenizerFast over a fixed word list (unknown words map to <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {}
    for word in _SPECIAL + _VISION + _WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return chatml_tokenizer(backend, _SPECIAL[4:] + _VISION, chat_template(arch), qwen_vision=arch == "qwen2_vl")


def chatml_tokenizer(backend, extra_specials, template: str, qwen_vision: bool = False):
    """A PreTrainedTokenizerFast over ``backend`` with the ChatML specials (``<|im_end|>`` ends an
    answer) and, for Qwen2-VL, the image/video token attributes its processor reads."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in extra_specials if t != "<|im_end|>"],
        chat_template=template,
    )
    if qwen_vision:
        tok.image_token = "<|image_pad|>"
        tok.video_token = "<|video_pad|>"
        tok.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        tok.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
    return tok


def _text_kwargs(tok, hidden: int, layers: int, vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )


def _finish(model, tok):
    from .kernels import use_layout

    use_layout(model, "small_batch")  # what load_model picks on CPUs (transposed without a compiler)
    model.eval()
    gen = model.generation_config
    gen.eos_token_id = tok.eos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    return model


def build_tiny(
    arch: str = "llama",
    *,
    layers: int = 4,
    hidden: int = 64,
    seed: int = 0,
    image_size: int = 56,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.nn.Module, object]:
    """Build a tiny random-init model of ``arch`` and its tokenizer (text) or processor (VLM).

    ``image_size`` sets the pixels the VLM image processor resizes to, i.e. how
    many image tokens a prompt gets (draft and target may differ there).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")
    tok = tiny_tokenizer(arch)
    vocab = len(tok)
    torch.manual_seed(seed)
    text = _text_kwargs(tok, hidden, layers, vocab)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**text))
        return _finish(model, tok).to(dtype), tok

    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from .loading import ImageOnlyQwen2VLProcessor

        text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        config = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
            ),
            image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
            tie_word_embeddings=False,
        )
        model = Qwen2VLForConditionalGeneration(config)
        pixels = image_size * image_size
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        processor = ImageOnlyQwen2VLProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
        )
        return _finish(model, tok).to(dtype), processor

    if arch == "idefics3":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
        from transformers import Idefics3ImageProcessorPil

        patch = 14
        scale = 2
        config = Idefics3Config(
            text_config=dict(text, model_type="llama"),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=patch,
            ),
            scale_factor=scale,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        model = Idefics3ForConditionalGeneration(config)
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
            do_image_splitting=False,
        )
        seq_len = int(((image_size // patch) ** 2) / (scale**2))
        processor = Idefics3Processor(
            image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=tok.chat_template
        )
        return _finish(model, tok).to(dtype), processor

    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    patch = 14
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=32,
        ),
        text_config=dict(text, model_type="llama"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tok.chat_template,
    )
    return _finish(model, tok).to(dtype), processor


def perturbed_copy(model: torch.nn.Module, noise: float = 0.3, seed: int = 1, layers_from: int = 0):
    """A deep copy of ``model`` whose decoder weights (layers >= ``layers_from``) get
    relative Gaussian noise: a draft that agrees with the target only partly."""
    from .layout import decoder_layout

    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    layout = decoder_layout(draft)
    with torch.no_grad():
        for index, layer in enumerate(layout.layers):
            if index < layers_from:
                continue
            for param in layer.parameters():
                if param.dim() < 2:
                    continue
                scale = param.float().std().item() * noise
                param.add_((torch.randn(param.shape, generator=gen) * scale).to(param.device, param.dtype))
    return draft


def truncated_copy(model: torch.nn.Module, keep_layers: int):
    """A deep copy of ``model`` keeping only its first ``keep_layers`` decoder layers."""
    from .layout import decoder_layout

    draft = copy.deepcopy(model)
    layout = decoder_layout(draft)
    del layout.layers[keep_layers:]
    for cfg in (draft.config, getattr(draft.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = keep_layers
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:keep_layers]
    return draft


def tiny_pair(
    arch: str = "llama",
    *,
    noise: float = 0.03,
    seed: int = 0,
    target_layers: int = 4,
    draft_image_size: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[str] = None,
):
    """``(draft_adapter, target_adapter)``: a tiny target and a perturbed copy as draft.

    With ``draft_image_size`` the draft's processor resizes images differently, so
    draft and target see different numbers of image tokens (as real pairs do). ``device``:
    where both models live (built on the CPU first, so a seed gives the same weights anywhere).
    """
    from .adapters import wrap_model

    if draft_image_size is not None and arch != "qwen2_vl":
        raise ValueError("draft_image_size needs an architecture whose vision tower takes any size (qwen2_vl)")
    target, proc = build_tiny(arch, layers=target_layers, seed=seed, dtype=dtype)
    draft = perturbed_copy(target, noise=noise, seed=seed + 1)
    draft_proc = proc
    if draft_image_size is not None:
        _, draft_proc = build_tiny(arch, layers=1, seed=seed, image_size=draft_image_size, dtype=dtype)
    if device is not None:
        target, draft = target.to(device), draft.to(device)
    return wrap_model(draft, draft_proc), wrap_model(target, proc)


def tiny_feature_draft(target, seed: int = 0):
    """A random-init feature draft (:mod:`specdec.models.feature_draft`) over a tiny Llama target
    adapter's embeddings and LM head."""
    from .feature_draft import FeatureDraft, FeatureDraftAdapter

    with torch.random.fork_rng(), torch.no_grad():  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        draft = FeatureDraft.for_target(target.model)
        noise = torch.randn(draft.fc.weight.shape) * 0.05  # not the identity start: disagreements too
        draft.fc.weight.add_(noise.to(draft.fc.weight.device))
    return FeatureDraftAdapter(draft, target.tokenizer, lm_head=target.model.lm_head, name="tiny-feature-draft")
