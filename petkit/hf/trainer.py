"""Adapter-only checkpoints for transformers' Trainer.

Trainer knows how to checkpoint a PreTrainedModel or a PEFT model; anything else it saves whole with
`state_dict()` and resumes from that. The mixin swaps the three private methods that touch model
files (transformers 5.x: `_save`, `_load_from_checkpoint`, `_load_best_model`) for petkit's adapter
files: a checkpoint folder is an adapter folder (`petkit.load(base, folder)` reads it) plus what
Trainer writes beside the model (tokenizer, training_args.bin, optimizer, scheduler, RNG and state).
Resuming copies the saved tensors into the live model's adapters, after checking they match.
"""

from __future__ import annotations

import inspect
import os

import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from petkit.core.errors import ConfigError
from petkit.core.files import restore_petkit
from petkit.core.model import AdaptedModel

TRAINING_ARGS_NAME = "training_args.bin"  # what transformers.Trainer calls it


class PetkitTrainerMixin:
    """Put first in the bases of a transformers.Trainer subclass whose model is an AdaptedModel."""

    def __init__(self, model=None, *args, **kwargs):
        if not isinstance(model, AdaptedModel):
            raise ConfigError(f"{type(self).__name__} trains an AdaptedModel (petkit.adapt(model, config)), got "
                              f"{type(model).__name__}; use the plain transformers/TRL trainer for other models")
        super().__init__(model, *args, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ConfigError(f"{type(self).__name__} saves the adapters from the live model, which DeepSpeed and "
                              "FSDP shard; train without them")

    @property
    def adapted_model(self) -> AdaptedModel:
        return self.model

    def create_optimizer(self, *args, **kwargs):
        # A method's once-per-step gradient term (SaRA's) runs at each optimizer step, after clipping.
        had = self.optimizer
        optimizer = super().create_optimizer(*args, **kwargs)
        if had is None and optimizer is not None:
            self.adapted_model.hook_optimizer(optimizer)
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the adapters (not the base) in petkit's format, and what Trainer writes beside a model.
        state_dict (which Trainer gathers under FSDP and DeepSpeed, both refused) is not needed: the live
        model holds the adapters."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.adapted_model.save(output_dir)
        tokenizer = self.processing_class
        if tokenizer is None:
            tokenizer = getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.adapted_model if model is None else model
        restore_petkit(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        restore_petkit(self.adapted_model, self.state.best_model_checkpoint)


class Trainer(PetkitTrainerMixin, transformers.Trainer):
    """transformers.Trainer for an AdaptedModel: adapter-only checkpoints in petkit's format."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # With label smoothing Trainer shifts a causal LM's labels only if the model's class name is a causal
        # LM's, which AdaptedModel's is not: smooth here, by the wrapped model's class. (TRL smooths by itself.)
        base_name = type(self.adapted_model.base).__name__
        if (self.label_smoother is None or self.compute_loss_func is not None or "labels" not in inputs
                or base_name not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs)
        loss = self.label_smoother(outputs, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss *= self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        # Dataset columns are kept by the wrapped model's forward arguments, not the wrapper's (*args, **kwargs).
        if self._signature_columns is None:
            own = inspect.signature(self.adapted_model.base.forward).parameters
            self._signature_columns = [*own, "adapter_names", "label", "label_ids", *self.label_names]
