"""Linear-weight layouts (specdec.models.kernels): a layout change keeps every output, and the
timed choice applies the layout it names."""

import torch

from specdec.models.kernels import choose_layout, use_default_linears, use_transposed_linears
from specdec.models.tiny import build_tiny


def _linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m is not model.lm_head]


def test_layouts_keep_outputs_and_the_choice_is_applied():
    model, _tok = build_tiny("llama", layers=2, hidden=64, seed=1)
    ids = torch.tensor([[3, 7, 11, 5]])
    with torch.inference_mode():
        use_default_linears(model)
        assert all(m.weight.is_contiguous() for m in _linears(model))
        want = model(input_ids=ids).logits
        use_transposed_linears(model)
        assert all(m.weight.t().is_contiguous() for m in _linears(model))
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)  # other kernels, other rounding
        chosen = choose_layout(model)
        assert chosen in ("default", "transposed")
        contiguous = chosen == "default"
        assert all(m.weight.is_contiguous() == contiguous for m in _linears(model))
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)  # other kernels, other rounding
