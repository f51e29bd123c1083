"""Linear-layer kernels (specdec.models.kernels): every layout keeps the outputs, the timed choice
applies the layout it names, and the small-batch kernel is batch invariant, falls back to torch
where it does not apply, and is simply not offered where it cannot be built."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from specdec.models import kernels
from specdec.models.kernels import (SMALL_BATCH_MAX_ROWS, SmallBatchLinear, available_layouts, choose_layout,
                                    small_batch_library, use_bf16_weights, use_layout)
from specdec.models.tiny import build_tiny

needs_kernel = pytest.mark.skipif(small_batch_library() is None, reason="no C compiler for the small-batch kernel")


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]


def test_layouts_keep_outputs_and_the_choice_is_applied():
    model, _tok = build_tiny("llama", layers=2, hidden=64, seed=1)
    ids = torch.tensor([[3, 7, 11, 5]])
    with torch.inference_mode():
        use_layout(model, "default")
        assert all(type(m) is torch.nn.Linear and m.weight.is_contiguous() for m in _linears(model))
        want = model(input_ids=ids).logits
        for layout in available_layouts():
            assert use_layout(model, layout) == layout
            if layout == "transposed":
                assert all(m.weight.t().is_contiguous() for m in _linears(model))
            assert all((type(m) is SmallBatchLinear) == (layout == "small_batch") for m in _linears(model))
            for step in range(1, 5):  # prefill, then one-token steps through the kernel's row counts
                got = model(input_ids=ids[:, :step]).logits
                assert torch.allclose(got, want[:, :step], atol=1e-5)  # other kernels, other rounding
        chosen = choose_layout(model)
        assert chosen in available_layouts()
        assert all((type(m) is SmallBatchLinear) == (chosen == "small_batch") for m in _linears(model))
        assert all(m.weight.is_contiguous() == (chosen != "transposed") for m in _linears(model))
    with pytest.raises(ValueError, match="linear kernel 'fast'"):
        use_layout(model, "fast")


@needs_kernel
@pytest.mark.parametrize("weights", ["fp32", "bf16"])
@pytest.mark.parametrize("k_in,n_out,bias", [(64, 96, False), (37, 53, True), (576, 1536, True)])
def test_small_batch_kernel_is_batch_invariant(k_in, n_out, bias, weights):
    """A row's result does not depend on the rows computed with it (nor on the thread count), and
    matches F.linear to rounding: decoding one token and verifying it in a block agree bit for bit
    in every linear layer. Odd sizes cover the k % 8 tails and the rows past the last full tile.
    bf16 weights (drafts) are widened exactly: the result is F.linear's with the widened weight."""
    gen = torch.Generator().manual_seed(k_in + n_out)
    layer = torch.nn.Linear(k_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, k_in, generator=gen) * 0.1)
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    x = torch.randn(SMALL_BATCH_MAX_ROWS, k_in, generator=gen)
    use_layout(layer, "small_batch")
    if weights == "bf16":
        assert use_bf16_weights(layer) and layer.weight.dtype == torch.bfloat16
    reference = F.linear(x, layer.weight.float(), layer.bias)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        alone = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])
        assert torch.allclose(alone, reference, atol=1e-4, rtol=1e-4)
        assert not torch.equal(alone, torch.zeros_like(alone))
        for rows in range(2, SMALL_BATCH_MAX_ROWS + 1):
            assert torch.equal(layer(x[:rows]), alone[:rows]), rows
        assert torch.equal(layer(x[:5].reshape(1, 5, k_in))[0], alone[:5])  # a [batch, seq, hidden] input
        try:
            torch.set_num_threads(2)
            assert torch.equal(layer(x[:7]), alone[:7])
        finally:
            torch.set_num_threads(threads)
        # more rows than the kernel takes (a prefill): torch's kernel, on the widened weight
        assert torch.allclose(layer(torch.cat([x, x[:1]])), torch.cat([reference, reference[:1]]), atol=1e-4)


@needs_kernel
def test_small_batch_falls_back_to_torch_where_it_does_not_apply():
    layer = torch.nn.Linear(16, 8)
    use_layout(layer, "small_batch")
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).sum().backward()  # training: gradients flow (torch's kernel)
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode():
        big = torch.randn(SMALL_BATCH_MAX_ROWS + 1, 16)  # a prefill
        assert torch.equal(layer(big), F.linear(big, layer.weight, layer.bias))
        half = layer.to(torch.float16)
        xh = torch.randn(2, 16, dtype=torch.float16)
        assert torch.equal(half(xh), F.linear(xh, half.weight, half.bias))


@pytest.mark.parametrize("broken", ["compiler", "cache"])
def test_without_a_compiler_the_kernel_is_not_offered(tmp_path, broken):
    """No C compiler (or a cache folder that cannot be made): one warning, two layouts on offer,
    and asking for the kernel gives the transposed layout (the model still runs)."""
    code = (
        "import torch\n"
        "from specdec.models.kernels import available_layouts, small_batch_library, use_layout\n"
        "layer = torch.nn.Linear(8, 4)\n"
        "print(small_batch_library() is None, available_layouts(), use_layout(layer, 'small_batch'))\n"
    )
    (tmp_path / "cache").mkdir()
    if broken == "compiler":
        env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), SPECDEC_KERNEL_CACHE=str(tmp_path / "cache"))
    else:
        (tmp_path / "file").write_text("")
        env = dict(os.environ, SPECDEC_KERNEL_CACHE=str(tmp_path / "file" / "kernels"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "True ('default', 'transposed') transposed"
    warnings = [line for line in done.stderr.splitlines() if "small-batch linear kernel unavailable" in line]
    assert len(warnings) == 1, done.stderr
    assert not os.listdir(tmp_path / "cache")  # no half-built library left behind


@needs_kernel
def test_the_library_is_built_once_per_machine(tmp_path):
    """A fresh cache gets one library; a second process loads it without compiling."""
    code = "from specdec.models.kernels import small_batch_library; print(small_batch_library() is not None)"
    env = dict(os.environ, SPECDEC_KERNEL_CACHE=str(tmp_path))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
        assert done.stdout.strip() == "True", done.stderr
    built = os.listdir(tmp_path)
    assert len(built) == 1 and built[0].startswith("small_batch_linear-") and built[0].endswith(".so")
    assert kernels._SOURCE.endswith("small_batch_linear.c")
