"""A toy stream the continual tests share: each class has its own word, so a tiny BERT can learn it in
a few steps, and a class-incremental stream of three two-class tasks (or the same as task-incremental)."""

from __future__ import annotations

import random

import torch

from petkit.continual.model import ContinualClassifier
from petkit.continual.stream import Stream, Task
from petkit.testing import tiny_bert, tiny_tokenizer

WORDS = ["apple", "river", "stone", "cloud", "fire", "green", "metal", "sugar"]


def examples(classes: list[int], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % len(classes)
        word = WORDS[classes[k]]
        out.append({"text": " ".join(rng.choice([word, "the", "a", "of"]) for _ in range(8)) + " " + word, "label": k})
    return out


def toy_task(t: int, classes=None, n_train: int = 48, n_eval: int = 16) -> Task:
    classes = classes or [2 * t, 2 * t + 1]
    return Task(f"t{t}", [WORDS[c] for c in classes], examples(classes, n_train, t),
                examples(classes, n_eval, 10 + t), examples(classes, n_eval, 20 + t))


def toy_stream(scenario: str = "class", tasks: int = 3, **sizes) -> Stream:
    return Stream("toy", scenario, [toy_task(t, **sizes) for t in range(tasks)])


def toy_model(stream: Stream, seed: int = 0, layers: int = 2) -> ContinualClassifier:
    backbone = tiny_bert(seed=seed, layers=layers).bert
    for p in backbone.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)  # the head's init
    return ContinualClassifier(backbone, backbone.config.hidden_size, stream.num_classes, "mean")


def tokenizer():
    return tiny_tokenizer()
