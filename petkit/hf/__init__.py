"""petkit inside Hugging Face's trainers: `petkit.hf.Trainer` (transformers) and `petkit.hf.SFTTrainer`
(TRL) train an AdaptedModel and write checkpoints that hold only its adapters, in petkit's format,
which resume and load with `petkit.load`. `PetkitTrainerMixin` does the same for another Trainer
subclass: put it first in the bases.

`SFTTrainer` is imported on first use, so `import petkit.hf` does not need TRL.
"""

from .trainer import PetkitTrainerMixin, Trainer

__all__ = ["PetkitTrainerMixin", "Trainer", "SFTTrainer"]


def __getattr__(name: str):
    if name == "SFTTrainer":
        from .sft import SFTTrainer
        return SFTTrainer
    raise AttributeError(f"module 'petkit.hf' has no attribute {name!r}")
