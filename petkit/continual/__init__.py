"""Continual learning with adapters: task streams, learners (baselines, LAE, OVOR, L2M, MoRA), the
runner that trains task after task and fills the accuracy matrix, and its metrics and plots."""

from . import baselines, l2m, lae, mora, ovor  # noqa: F401  (registers the learners)
from .learner import LEARNERS, Learner, make_learner, register_learner
from .metrics import summarise
from .model import ContinualClassifier, build_classifier
from .run import ContinualConfig, ContinualResult, run_stream
from .stream import NAMED_STREAMS, Stream, Task, build_stream

__all__ = ["LEARNERS", "ContinualClassifier", "ContinualConfig", "ContinualResult", "Learner", "NAMED_STREAMS",
           "Stream", "Task", "build_classifier", "build_stream", "make_learner", "register_learner", "run_stream",
           "summarise"]
