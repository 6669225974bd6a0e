"""The shared sparse machinery: ΔW = s·scatter(values), and the backward gathered at the support."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from petkit.kernels import sparse
from petkit.kernels.sparse import (
    SparseDelta,
    gathered_grad,
    sorted_support,
    sparse_linear,
    with_support,
)


def _dense_reference(x, W, b, index, values, scale):
    """The same layer with a dense ΔW parameter masked to the support: its gradient at the support is
    what the sparse backward must return."""
    D = torch.zeros(W.shape, requires_grad=True)
    mask = torch.zeros(W.numel(), dtype=torch.bool)
    mask[index] = True
    with torch.no_grad():
        D.view(-1)[index] = values
    y = x @ (W + scale * D * mask.view(W.shape)).t()
    return (y if b is None else y + b), D


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("chunk", [sparse.CHUNK, 64])  # 64: many row blocks, contiguous and gathered
def test_forward_and_gradients_match_a_dense_masked_layer(with_base, chunk, monkeypatch):
    monkeypatch.setattr(sparse, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    out_f, in_f = 24, 10
    W = torch.randn(out_f, in_f, generator=g)
    b = torch.randn(out_f, generator=g)
    index = sorted_support(torch.randperm(out_f * in_f, generator=g)[:70])
    index = torch.cat([index, torch.arange(230, 240)]).unique()  # a run of consecutive full rows too
    values = torch.randn(index.numel(), generator=g)
    x = torch.randn(3, 5, in_f, generator=g)
    upstream = torch.randn(3, 5, out_f, generator=g)

    v = values.clone().requires_grad_(True)
    xs = x.clone().requires_grad_(True)
    y = sparse_linear(xs, W if with_base else None, b if with_base else None, v, index, (out_f, in_f), 1.5)
    (y * upstream).sum().backward()

    xr = x.clone().requires_grad_(True)
    y_ref, D = _dense_reference(xr, W if with_base else torch.zeros_like(W), b if with_base else None, index, values, 1.5)
    (y_ref * upstream).sum().backward()

    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(xs.grad, xr.grad)
    torch.testing.assert_close(v.grad, D.grad.view(-1)[index])
    assert v.grad.shape == (index.numel(),)


def test_output_takes_in_place_additions():
    # Falcon adds into its MLP output in place: the output must not be a view made inside the Function.
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    index = sorted_support(torch.tensor([0, 5, 9, 23]))
    values = torch.randn(4, generator=g, requires_grad=True)
    x = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    other = torch.randn(2, 3, 6, generator=g)
    y = sparse_linear(x, W, b, values, index, (6, 4), 1.5)
    y += other
    y.square().sum().backward()
    y_ref, D = _dense_reference(x.detach().requires_grad_(True), W, b, index, values.detach(), 1.5)
    (y_ref + other).square().sum().backward()
    torch.testing.assert_close(y, y_ref + other)
    torch.testing.assert_close(values.grad, D.grad.view(-1)[index])


def test_transposed_weight_view_like_gpt2_conv1d():
    g = torch.Generator().manual_seed(1)
    stored = torch.randn(6, 9, generator=g)  # Conv1D stores (in, out)
    index = torch.tensor([0, 5, 17, 40, 53])
    v = torch.randn(5, generator=g, requires_grad=True)
    x = torch.randn(4, 6, generator=g)
    y = sparse_linear(x, stored.t(), None, v, index, (9, 6))
    dense = stored.t().contiguous()
    dense.view(-1)[index] += v.detach()
    torch.testing.assert_close(y, x @ dense.t())


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.sizes.append(t.numel())
        return out


def test_backward_never_builds_a_dense_weight_sized_gradient():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(40, 30, generator=g)
    index = sorted_support(torch.randperm(1200, generator=g)[:300])
    v = torch.zeros(300, requires_grad=True)
    x = torch.randn(2, 3, 30, generator=g)  # few tokens, no input gradient: only dL/dW could be weight-sized
    y = sparse_linear(x, W, None, v, index, (40, 30))
    rec = _Shapes()
    with rec:
        y.sum().backward()
    assert max(rec.sizes) <= 1200 // 2, "a tensor as large as the weight was built in backward"
    assert v.grad.shape == (300,)


def test_gathered_grad_with_no_support_and_single_row():
    g2, x2 = torch.randn(7, 4), torch.randn(7, 3)
    assert gathered_grad(g2, x2, torch.empty(0, dtype=torch.int64), 3).shape == (0,)
    idx = torch.tensor([6, 8])  # both in row 2
    torch.testing.assert_close(gathered_grad(g2, x2, idx, 3), (g2.t() @ x2).view(-1)[idx])


def test_sparse_delta_merge_unmerge_and_only_values_train():
    base = nn.Linear(8, 5)
    w0 = base.weight.detach().clone()
    delta = SparseDelta(base, torch.tensor([39, 3, 3, 12]), scale=2.0)  # unsorted, duplicated: normalised
    assert delta.index.tolist() == [3, 12, 39]
    assert [n for n, _ in delta.named_parameters()] == ["values"]
    with torch.no_grad():
        delta.values.copy_(torch.tensor([1.0, -2.0, 0.5]))
    expected = torch.zeros(40)
    expected[[3, 12, 39]] = torch.tensor([2.0, -4.0, 1.0])
    torch.testing.assert_close(delta.delta_weight(base), expected.view(5, 8))
    x = torch.randn(3, 8)
    torch.testing.assert_close(delta.fused_forward(base, x), x @ (w0 + expected.view(5, 8)).t() + base.bias)
    torch.testing.assert_close(delta(base, x, base(x)), delta.fused_forward(base, x))
    delta.merge(base)
    torch.testing.assert_close(base.weight, w0 + expected.view(5, 8))
    delta.unmerge(base)
    torch.testing.assert_close(base.weight, w0)


def test_empty_support_is_the_base_layer():
    base = nn.Linear(4, 3)
    delta = SparseDelta(base, torch.empty(0, dtype=torch.int64))
    x = torch.randn(2, 4)
    torch.testing.assert_close(delta.fused_forward(base, x), base(x))
    torch.testing.assert_close(delta(base, x, base(x)), base(x))


@pytest.mark.parametrize("bad", [[3, 2], [1, 1], [-1, 2], [5, 12]])
def test_loaded_rejects_a_corrupt_support(bad):
    delta = SparseDelta(nn.Linear(4, 3), torch.tensor([0, 1]))
    delta.index.copy_(torch.tensor(bad))
    with pytest.raises(ValueError, match="sorted, unique"):
        delta.loaded()


def test_with_support_leaves_the_weight_alone():
    W = torch.randn(3, 4)
    before = W.clone()
    out = with_support(W, torch.ones(2), torch.tensor([0, 5]), (3, 4), 1.0)
    torch.testing.assert_close(W, before)
    assert out[0, 0] == W[0, 0] + 1 and out[1, 1] == W[1, 1] + 1
