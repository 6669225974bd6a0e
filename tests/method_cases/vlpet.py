"""Matrix cases of VL-PET: the four gate granularities, and T5's lightweight decoder (value adapters)."""

from __future__ import annotations

import torch

from method_cases._shapes import io_features, method_layers
from petkit.methods.vlpet import VLPetConfig


def vlpet_count(am, name):
    cfg = am.adapter_config(name)
    total = 0
    for path, base, _ in method_layers(am, name):
        d_in, d = io_features(base)
        if path.endswith("EncDecAttention.v"):  # decoder value adapter: d_in → r → d
            r = cfg.decoder_bottleneck
            total += (d_in * r + r) + (r * d + d)
            continue
        r, rg = cfg.bottleneck, cfg.gate_bottleneck
        total += (d * r + r) + (r * d + d)  # the multi-head adapter (heads split r, not the count)
        total += {"large": (d * rg + rg) + (rg * d + d), "middle_x": d + 1, "middle_y": d, "small": 2 * d + 1}[cfg.granularity]
    return total


def _differs(y_adapted, y_base):
    """VL-PET's init is not the identity: G ≈ 0.5 scales every adapted sublayer output."""
    assert (y_adapted - y_base).abs().max() > 1e-5


def _near_identity(y_adapted, y_base):
    """middle_y: G = 1 + g with g ~ N(0, 0.02), and a small non-zero adapter: close, not equal."""
    assert not torch.equal(y_adapted, y_base)
    torch.testing.assert_close(y_adapted, y_base, atol=0.1, rtol=0.1)


def _case(granularity, **kw):
    return lambda fam: VLPetConfig(granularity=granularity, bottleneck=8, heads=4, gate_bottleneck=4,
                                   decoder_value_adapter=fam == "t5", decoder_bottleneck=4, **kw)


CASES = {
    "vlpet-large": _case("large"),
    "vlpet-middle-x": _case("middle_x"),
    "vlpet-middle-y": _case("middle_y"),
    "vlpet-small": _case("small"),
    "vlpet-t5-setting": _case("large", zero_init=True, gate_scale=0.3),
}
FORMULAS = {"vlpet": vlpet_count}
INIT_CHECKS = {"vlpet-large": _differs, "vlpet-middle-x": _differs, "vlpet-middle-y": _near_identity,
               "vlpet-small": _differs, "vlpet-t5-setting": _differs}
