"""The route docs/training.md gives for Hugging Face's Trainer: petkit.adapt changes the model in place,
so `am.base` goes to transformers.Trainer, which then trains the adapter (and only the adapter), and
`am.save` writes an adapter that reloads with the same outputs."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class Repeat(torch.utils.data.Dataset):
    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i % len(v)] for k, v in self.batch.items()}


def test_transformers_trainer_trains_the_adapter_of_am_base(tmp_path):
    transformers = pytest.importorskip("transformers")
    am = petkit.adapt(TINY_MODELS["bert"](seed=0), petkit.LoraConfig(r=4, targets=["attn.q", "attn.v"]))
    batch = tiny_batch(am.base, seed=1)
    own = {id(p) for p in am.trainable_parameters()}
    before = {n: p.detach().clone() for n, p in am.base.named_parameters()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4, max_steps=3,
                                          learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True,
                                          disable_tqdm=True)
    transformers.Trainer(model=am.base, args=args, train_dataset=Repeat(batch, 16)).train()

    for name, p in am.base.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (id(p) in own), f"{name}: {'moved' if moved else 'did not move'}"
    am.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    am.save(tmp_path / "adapter")
    back = petkit.load(TINY_MODELS["bert"](seed=0), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, am(**inputs).logits)
