"""Dual encoders for zero-shot classification: hand templates, and CoOp/CoCoOp learnable context
trained through a frozen text encoder (spec methods-extra §5)."""

from .config import CLASS_POSITIONS, CoOpConfig
from .coop import CoOpClassifier
from .fit import FitConfig, FitResult, accuracy, fit_coop
from .prompts import PromptSlots, build_slots
from .zeroshot import ensemble, template_class_embeddings, zero_shot_accuracy

__all__ = ["CLASS_POSITIONS", "CoOpConfig", "CoOpClassifier", "FitConfig", "FitResult", "accuracy", "fit_coop",
           "PromptSlots", "build_slots", "ensemble", "template_class_embeddings", "zero_shot_accuracy"]
