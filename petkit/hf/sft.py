"""TRL's SFTTrainer for an AdaptedModel.

TRL replaces the forward of the model it trains with a fused LM head that runs the backbone
(`model.base_model`) and scores labels against `get_output_embeddings().weight` directly, never
making the logits. On a PEFT model it patches the model inside, so PEFT's own forward still runs;
on anything else it patches the object it was given. Given an AdaptedModel, petkit's forward would
then never run (no mixed batches, no compositions), nor the hooks on the top model that prompt
tuning uses. This trainer moves the fused head onto the wrapped model, as TRL does for PEFT, and
refuses what the fused head cannot see: an adapter on the output head (its weight is read, not
called) and model-level methods other than prompt and prefix tuning (not checked under it).
"""

from __future__ import annotations

from petkit.core.errors import ConfigError
from petkit.core.layer import AdaptedLayer
from petkit.core.model import AdaptedModel
from petkit.hf.trainer import PetkitTrainerMixin

try:
    import trl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("petkit.hf.SFTTrainer needs TRL, which is not installed: pip install 'petkit[trl]' "
                      f"(or pip install 'trl>=1.16') ({exc})") from None
try:
    from trl.trainer.utils import add_fused_lm_head
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(f"petkit.hf.SFTTrainer needs trl>=1.16 (its fused LM head), found trl {trl.__version__}: "
                      "pip install 'petkit[trl]'") from None

FUSED_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what trl 1.16's SFTTrainer asks of its fused head
MODEL_LEVEL_OK = ("prompt", "prefix")  # checked under the fused head (tests/test_hf_trainer.py)


class SFTTrainer(PetkitTrainerMixin, trl.SFTTrainer):
    """trl.SFTTrainer for an AdaptedModel: petkit's forward runs, checkpoints hold only the adapters."""

    def __init__(self, model=None, *args, **kwargs):
        if isinstance(model, AdaptedModel):
            refuse_unseen(model)
        super().__init__(model, *args, **kwargs)
        am = self.adapted_model
        if "forward" in vars(am):  # TRL's fused head, set on the wrapper: put it on the wrapped model
            del am.forward
            add_fused_lm_head(am.base, outputs=FUSED_OUTPUTS)

    def compute_loss(self, model, inputs, *args, **kwargs):
        refuse_unseen(self.adapted_model)  # adapters may have been added or activated since __init__
        return super().compute_loss(model, inputs, *args, **kwargs)


def refuse_unseen(am: AdaptedModel) -> None:
    """Raise a ConfigError for active adapters TRL's fused LM head would skip."""
    head = am.base.get_output_embeddings() if hasattr(am.base, "get_output_embeddings") else None
    if isinstance(head, AdaptedLayer) and am.state.live(head.deltas):
        raise ConfigError(f"adapters {am.state.live(head.deltas)} change the output head, which TRL's SFTTrainer "
                          "never calls (its fused loss reads the head's weight): leave lm_head out of the targets, "
                          "or train with petkit.hf.Trainer")
    for name in am.active:
        method = am.method_of(name).name
        if name in am.model_deltas and method not in MODEL_LEVEL_OK:
            raise ConfigError(f"{method} adapter {name!r} works on the whole model, and of such methods only "
                              f"{' and '.join(MODEL_LEVEL_OK)} tuning are known to run under TRL's fused LM head "
                              "(which replaces the model's logits): train it with petkit.hf.Trainer")
