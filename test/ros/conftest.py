"""Shared fixtures of the ROS tests: tiny VLM model folders and a camera frame."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_vlm_models(tmp_path_factory):
    """A tiny draft/target Qwen2-VL pair (different image token counts) + target exit heads, saved as
    model folders the nodes load. Their text is arbitrary tokens: fine for equality, and the action
    parser rejects it (so a controller never moves)."""
    import torch

    from specdec.models.early_exit import EarlyExitHeads
    from specdec.models.tiny import tiny_pair

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    draft, target = tiny_pair("qwen2_vl", noise=0.15, draft_image_size=28)
    for name, adapter in (("draft", draft), ("target", target)):
        adapter.model.save_pretrained(root / name)
        adapter.processor.save_pretrained(root / name)
    EarlyExitHeads(target.model, [1]).save(str(root / "target" / "early_exit.safetensors"))
    return root


@pytest.fixture(scope="session")
def camera_frame():
    """A fixed random RGB frame, as a sensor_msgs/Image."""
    from specdec_ros.images import rgb_to_image

    return rgb_to_image(np.random.default_rng(1).integers(0, 256, size=(72, 96, 3), dtype=np.uint8))
