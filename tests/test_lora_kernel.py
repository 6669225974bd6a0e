"""Numerical checks behind the LoRA fast paths measured in benchmarks/lora_overhead.py:

1. gradcheck of LoraLinearFn in float64 on the dropout-free path, for 3-D and 2-D inputs, with and
   without bias, a normal or transposed (GPT-2 Conv1D-style) weight, and several requires_grad sets;
2. the dropout path against plain autograd with the same mask (same RNG seed), and the no-graph
   path consuming the RNG identically;
3. fp32 outputs and gradients against the plain formula x W^T + b + s (x A^T) B^T at MiniLM sizes;
4. lora_linear_routed and lora_linear_grouped against a per-sample loop (float64) plus gradchecks;
5. a tiny BERT with three adapters (different scales and targets): mixed-adapter batches through the
   batched route vs the per-group fallback vs each sample run alone, outputs and adapter gradients.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import petkit
from petkit.methods.lora import LoraDelta
from petkit.kernels.lora import LoraLinearFn, lora_linear, lora_linear_grouped, lora_linear_routed


def ref(x, W, b, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    return F.linear(x, W, b) + s * F.linear(F.linear(xd, A), B)


def rel(a, c):
    return ((a - c).abs().max() / c.abs().max().clamp_min(1e-30)).item()


def test_gradcheck():
    n = 0
    for shape, bias, transposed, req in itertools.product(
            [(3, 5, 7), (6, 7)], [True, False], [False, True],
            [(1, 0, 0, 1, 1), (0, 0, 0, 1, 1), (1, 1, 1, 1, 1), (1, 0, 1, 0, 1), (1, 0, 0, 1, 0)]):
        in_f, out_f, r = 7, 4, 3
        d = torch.float64
        x = torch.randn(*shape, dtype=d, requires_grad=bool(req[0]))
        W = torch.randn(in_f, out_f, dtype=d).t() if transposed else torch.randn(out_f, in_f, dtype=d)
        W.requires_grad_(bool(req[1]))
        b = torch.randn(out_f, dtype=d, requires_grad=bool(req[2])) if bias else None
        A = torch.randn(r, in_f, dtype=d, requires_grad=bool(req[3]))
        B = torch.randn(out_f, r, dtype=d, requires_grad=bool(req[4]))
        assert torch.autograd.gradcheck(lambda *t: LoraLinearFn.apply(*t, 1.7, 0.0), (x, W, b, A, B))
        n += 1
    print(f"1. gradcheck (float64, no dropout): {n} configurations ok")


def test_dropout():
    d = torch.float64
    for transposed in (False, True):
        x = torch.randn(4, 5, 7, dtype=d, requires_grad=True)
        W = (torch.randn(7, 6, dtype=d).t() if transposed else torch.randn(6, 7, dtype=d)).requires_grad_()
        b = torch.randn(6, dtype=d, requires_grad=True)
        A = torch.randn(3, 7, dtype=d, requires_grad=True)
        B = torch.randn(6, 3, dtype=d, requires_grad=True)
        g = torch.randn(4, 5, 6, dtype=d)
        torch.manual_seed(5)
        y1 = LoraLinearFn.apply(x, W, b, A, B, 0.9, 0.3)
        gr1 = torch.autograd.grad(y1, (x, W, b, A, B), g)
        torch.manual_seed(5)
        mask = torch.empty(20, 7, dtype=d).bernoulli_(0.7).div_(0.7).view(4, 5, 7)
        y2 = ref(x, W, b, A, B, 0.9, mask)
        gr2 = torch.autograd.grad(y2, (x, W, b, A, B), g)
        assert rel(y1, y2) < 1e-12 and all(rel(a, c) < 1e-12 for a, c in zip(gr1, gr2))
        with torch.no_grad():
            torch.manual_seed(5)
            y3 = lora_linear(x, W, b, A, B, 0.9, 0.3)
        assert torch.equal(y3, y1.detach())
    print("2. dropout path = plain autograd with the same mask; no-graph path gives the identical output")


def test_output_takes_in_place_additions():
    # Model code adds into a layer's output in place (Falcon: mlp_output += attention_output); the
    # output must not be a view made inside the autograd Function, which autograd refuses to modify.
    d = torch.float64
    for shape, p in itertools.product([(3, 5, 7), (6, 7)], [0.0, 0.3]):
        x = torch.randn(*shape, dtype=d, requires_grad=True)
        W, b = torch.randn(4, 7, dtype=d), torch.randn(4, dtype=d)
        A = torch.randn(3, 7, dtype=d, requires_grad=True)
        B = torch.randn(4, 3, dtype=d, requires_grad=True)
        other = torch.randn(*shape[:-1], 4, dtype=d)
        torch.manual_seed(5)
        y = lora_linear(x, W, b, A, B, 0.9, p)
        y += other
        grads = torch.autograd.grad(y.square().sum(), (x, A, B))
        torch.manual_seed(5)
        mask = torch.empty(x.numel() // 7, 7, dtype=d).bernoulli_(1 - p).div_(1 - p).view(x.shape) if p else None
        want = ref(x, W, b, A, B, 0.9, mask) + other
        assert rel(y, want) < 1e-12
        assert all(rel(a, c) < 1e-12 for a, c in zip(grads, torch.autograd.grad(want.square().sum(), (x, A, B))))


def test_fp32_against_the_plain_formula():
    for in_f, out_f in [(384, 384), (384, 1536), (1536, 384)]:
        x = torch.randn(8, 64, in_f, requires_grad=True)
        W, b = torch.randn(out_f, in_f) * 0.05, torch.randn(out_f) * 0.1
        A = (torch.randn(8, in_f) * 0.05).requires_grad_()
        B = (torch.randn(out_f, 8) * 0.05).requires_grad_()
        g = torch.randn(8, 64, out_f)
        y1 = lora_linear(x, W, b, A, B, 2.0)
        gr1 = torch.autograd.grad(y1, (x, A, B), g)
        y2 = ref(x, W, b, A, B, 2.0)
        gr2 = torch.autograd.grad(y2, (x, A, B), g)
        errs = [rel(y1, y2)] + [rel(a, c) for a, c in zip(gr1, gr2)]
        assert max(errs) < 1e-5, errs
        with torch.no_grad():
            assert torch.equal(lora_linear(x, W, b, A, B, 2.0), y1.detach())
        print(f"3. fp32 {in_f}->{out_f}: max relative error of y, dx, dA, dB = "
              + ", ".join(f"{e:.1e}" for e in errs))


def test_routed_kernel():
    d = torch.float64
    for bias in (True, False):
        S, T, in_f, out_f, r = 5, 3, 7, 6, 2
        x = torch.randn(S, T, in_f, dtype=d, requires_grad=True)
        W = torch.randn(out_f, in_f, dtype=d)
        b = torch.randn(out_f, dtype=d) if bias else None
        As = torch.randn(S, r, in_f, dtype=d, requires_grad=True)
        Bs = torch.randn(S, out_f, r, dtype=d, requires_grad=True)
        sc = torch.rand(S, dtype=d)
        yr = torch.stack([ref(x[i], W, b, As[i], Bs[i], sc[i].item()) for i in range(S)])

        def routed(x, As, Bs):
            Bt = Bs.transpose(1, 2)
            if b is not None:
                Bt = torch.cat([Bt, b.view(1, 1, -1).expand(S, 1, -1)], 1)
            return lora_linear_routed(x, W, As * sc.view(-1, 1, 1), Bt)
        assert rel(routed(x, As, Bs), yr) < 1e-12
        assert torch.autograd.gradcheck(routed, (x, As, Bs))

        # grouped: samples 0, 2 share factors 0, samples 1, 3, 4 factors 1 (groups padded to 3 places)
        src, back, of = torch.tensor([0, 2, 0, 1, 3, 4]), torch.tensor([0, 3, 1, 4, 5]), [0, 1, 0, 1, 1]
        G_A, G_B = As[:2] * sc[:2].view(-1, 1, 1), Bs[:2]
        yg_ref = torch.stack([ref(x[i], W, b, As[of[i]], Bs[of[i]], sc[of[i]].item()) for i in range(S)])

        def grouped(x, G_A, G_B):
            return lora_linear_grouped(x, W, b, G_A, G_B.transpose(1, 2), src, back)
        assert rel(grouped(x, G_A, G_B), yg_ref) < 1e-12
        assert torch.autograd.gradcheck(grouped, (x, G_A.detach().requires_grad_(), G_B.detach().requires_grad_()))
    print("4. lora_linear_routed / lora_linear_grouped = per-sample formula (float64); gradcheck ok")


def test_routed_model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    am = petkit.adapt(BertModel(cfg).eval(), petkit.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    am.add(petkit.LoraConfig(r=4, alpha=4, targets=["query", "value"]), name="b")
    am.add(petkit.LoraConfig(r=4, alpha=16, targets="all-linear", rslora=True), name="c")
    for n in ("a", "b", "c"):
        am.set_trainable(n)
    with torch.no_grad():
        for n, p in am.named_parameters():
            if n.endswith(".B"):
                p.normal_(0, 0.1)
    ids = torch.randint(0, 100, (7, 5))
    proj = torch.randn(7, 5, 32)  # loss = <output, proj>: gradients far from rounding noise
    fast = LoraDelta.__dict__["routed_plan"]
    for names in (["a", "b", None, "c", "a", "b", "c"], ["a"] * 3 + ["c"] * 4, ["b"] * 7, [None, None, "a", "a", "a", "b", "b"]):
        with torch.no_grad():
            y_fast = am(input_ids=ids, adapter_names=names).last_hidden_state
            LoraDelta.routed_plan = None  # force the per-group fallback (layers keep no plan then)
            for m in am.modules():
                if hasattr(m, "_kept_plan"):
                    m._kept_plan = None
            try:
                y_old = am(input_ids=ids, adapter_names=names).last_hidden_state
            finally:
                LoraDelta.routed_plan = fast
        am.zero_grad(set_to_none=True)
        y = am(input_ids=ids, adapter_names=names).last_hidden_state
        (y * proj).sum().backward()
        g_fast = {n: p.grad.clone() for n, p in am.named_parameters() if p.grad is not None}
        am.zero_grad(set_to_none=True)
        ref_rows = []
        for i, n in enumerate(names):
            if n is None:
                with am.disabled(), torch.no_grad():
                    ref_rows.append(am(input_ids=ids[i:i + 1]).last_hidden_state[0])
                continue
            am.set_active(n)
            yi = am(input_ids=ids[i:i + 1]).last_hidden_state
            (yi * proj[i:i + 1]).sum().backward()
            ref_rows.append(yi[0].detach())
        am.set_active("a")
        g_ref = {n: p.grad.clone() for n, p in am.named_parameters() if p.grad is not None}
        assert set(g_fast) == set(g_ref)
        e_old = (y_fast - y_old).abs().max().item()
        e_ref = (y_fast - torch.stack(ref_rows)).abs().max().item()
        e_grad = max(rel(g_fast[k], g_ref[k]) for k in g_ref)
        assert max(e_old, e_ref) < 1e-5 and e_grad < 1e-5, (e_old, e_ref, e_grad)
        print(f"5. mixed batch {names}: |batched - fallback| {e_old:.1e}, |batched - each sample alone| {e_ref:.1e}, "
              f"adapter grads rel. err {e_grad:.1e}")
