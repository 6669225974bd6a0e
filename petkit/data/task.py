"""The one shape every dataset is returned in, and the error for data that is not on disk."""

from __future__ import annotations

from dataclasses import dataclass, field

from petkit.core.errors import PetkitError

TASKS = ("classification", "causal_lm", "sft", "regression")


class DatasetNotFound(PetkitError, ValueError):
    """A known dataset whose files are not where we looked.

    A ValueError subclass so callers that validate user input with ``except ValueError`` catch it.
    """


@dataclass
class TaskData:
    """A dataset split three ways, ready for tokenisation.

    Classification examples are ``{"text": str, "label": int}`` (plus ``"text_pair"`` for sentence-pair
    tasks); ``labels[i]`` is the name of label ``i``. Language-modelling examples are ``{"text": str}``
    chunks of one running text, in reading order, and ``labels`` is empty. SFT examples are records in
    one of the ``sft_formats`` (prompt/completion, chat messages, Alpaca); ``labels`` names the label
    words of an instruction task built from a classification set (``instruct``), else it is empty.
    Regression examples are ``{"text": str, "target": [float, ...]}`` in original units, and
    ``labels`` names the targets (one name per output).
    """

    name: str
    task: str
    labels: list[str]
    # repr=False: printing a TaskData must not dump thousands of examples.
    train: list[dict] = field(repr=False)
    dev: list[dict] = field(repr=False)
    test: list[dict] = field(repr=False)
    splits_note: str = ""  # where the splits came from (source files or carved by seed)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (each example has a ``text_pair``)."""
        return bool(self.train) and "text_pair" in self.train[0]

    def label_counts(self, split: str = "train") -> dict[str, int]:
        """How many examples of each label name a split holds (every label listed, even at 0)."""
        if self.task == "regression":  # SFT sets built from a classification set keep their labels
            raise ValueError(f"label_counts applies to labelled data; {self.name} holds regression targets")
        counts = {name: 0 for name in self.labels}
        for ex in getattr(self, split):
            counts[self.labels[ex["label"]]] += 1
        return counts

    def summary(self) -> str:
        sizes = f"train {len(self.train)} / dev {len(self.dev)} / test {len(self.test)}"
        what = "targets" if self.task == "regression" else "labels"
        labels = f", {self.num_labels} {what}" if self.labels else ""
        return f"{self.name} ({self.task}{labels}): {sizes}"
