"""The generic test matrix: every registered method through the same checks on tiny random models.

For each (method config, tiny model): identity (or the method's own init condition) at init, loss
falls when training, only the method's parameters change, save -> load gives identical outputs,
merged == unmerged output, unmerge restores the base, and the trainable count matches a formula.
"""

from __future__ import annotations

import pytest

import petkit
from method_cases import EXTRA_CASES, INIT_CHECKS, TRAIN_LRS
from method_cases._matrix import FORMULAS, check_method, identity_at_init
from petkit.testing import TINY_MODELS, tiny_batch

EMBEDDING = {"bert": "word_embeddings", "gpt2": "wte", "llama": "embed_tokens", "t5": "embed_tokens", "vit": None}

CASES = {
    "lora": lambda fam: petkit.LoraConfig(r=4, alpha=8, targets="all-linear"),
    "lora-rs-patterns": lambda fam: petkit.LoraConfig(
        r=4, alpha=8, rslora=True, targets=["attn.qkv", "mlp.out"], rank_pattern={"mlp.out": 2}, alpha_pattern={"mlp.out": 3}),
    "lora-gaussian-dropout": lambda fam: petkit.LoraConfig(r=2, alpha=4, dropout=0.1, init="gaussian", targets=["mlp.in"]),
    "pissa": lambda fam: petkit.LoraConfig(r=2, alpha=2, init="pissa", targets=["attn.qkv", "attn.out"]),
    "lora-embedding": lambda fam: EMBEDDING[fam] and petkit.LoraConfig(r=3, alpha=6, targets=[EMBEDDING[fam]]),
    "lora-conv2d": lambda fam: fam == "vit" and petkit.LoraConfig(r=2, alpha=4, targets=["patch_embeddings.projection"]),
    "dora": lambda fam: petkit.DoraConfig(r=4, alpha=8, targets="all-linear"),
    "ia3": lambda fam: petkit.IA3Config(),
    "bitfit": lambda fam: petkit.BitFitConfig(targets="all-linear" if fam in ("llama", "t5") else ()),
    "layernorm": lambda fam: petkit.LayerNormConfig(),
    "probe": lambda fam: fam in ("bert", "vit") and petkit.ProbeConfig(),
    "full": lambda fam: petkit.FullConfig(),
    **EXTRA_CASES,
}

GRID = [(case, fam) for case in CASES for fam in TINY_MODELS]


def test_every_registered_method_is_in_the_matrix():
    registered = {m.name for m in petkit.all_methods()}
    covered = {cfg.method for make in CASES.values() for fam in TINY_MODELS if (cfg := make(fam))}
    assert registered <= covered, f"methods missing from the matrix: {registered - covered}"
    assert registered <= set(FORMULAS), f"methods without a parameter-count formula: {registered - set(FORMULAS)}"


@pytest.mark.parametrize("case,family", GRID, ids=[f"{c}-{f}" for c, f in GRID])
def test_method_matrix(case, family, tmp_path):
    config = CASES[case](family)
    if not config:
        pytest.skip(f"{case} does not apply to {family}")
    build = lambda: TINY_MODELS[family](seed=0)  # noqa: E731
    tied = case == "lora-embedding" and family in ("gpt2", "llama", "t5")
    check_method(config, build, tiny_batch(build(), seed=1), tmp_path, init_check=INIT_CHECKS.get(case, identity_at_init),
                 lr=TRAIN_LRS.get(case, 1e-2), tied=tied)
