"""A plain PyTorch trainer: AdamW, warmup + decay, accumulation, clipping, evaluation,
atomic pickle-free checkpoints and exact resume. Start reading at ``loop.py``."""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from .config import SCHEDULES, TrainConfig
from .evaluate import evaluate
from .generative import (
    exact_match,
    exact_match_rate,
    generate_answers,
    generative_scores,
    json_field_accuracy,
    normalize_answer,
    rouge_l,
)
from .loop import StepInfo, TrainResult, build_optimizer, seed_everything, train
from .metrics import MetricsLog, accuracy, macro_f1, perplexity
from .schedule import learning_rate, lr_factor, warmup_steps

__all__ = [
    "SCHEDULES", "Checkpoint", "CheckpointError", "MetricsLog", "StepInfo", "TrainConfig", "TrainResult",
    "accuracy", "build_optimizer", "evaluate", "exact_match", "exact_match_rate", "generate_answers",
    "generative_scores", "json_field_accuracy", "latest_checkpoint", "learning_rate", "list_checkpoints",
    "load_checkpoint", "lr_factor", "macro_f1", "normalize_answer", "perplexity", "rouge_l", "seed_everything",
    "train", "warmup_steps",
]
