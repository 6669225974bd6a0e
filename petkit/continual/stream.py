"""Task streams: what a continual learner sees, one task after another.

Two scenarios, as Avalanche and PILOT define them:

- ``class`` (class-incremental): each task brings new classes; at test time no task id is given and
  the model picks among every class seen so far. Classes are told apart by name, so a task whose
  classes overlap an earlier task's is refused.
- ``task`` (task-incremental): each task is its own problem with its own labels; at test time the
  task id is given, so the model picks among that task's labels only.

Every class gets one global index, in stream order: task t owns the slice ``offsets[t]:offsets[t+1]``
of the classifier's outputs in both scenarios (in the task scenario those are its own head's rows).

A stream is written as a mapping (the YAML of ``petkit continual --stream``)::

    scenario: class
    tasks:
      - {dataset: trec, classes: [ABBR, DESC]}
      - {dataset: trec, classes: [ENTY, HUM]}
    max_train: 600          # per task, stratified; max_eval caps dev and test

or by name (``NAMED_STREAMS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from petkit.core.errors import ConfigError
from petkit.data.load import load_dataset
from petkit.data.splits import stratified_sample

SCENARIOS = ("class", "task")


@dataclass
class Task:
    """One task: examples ``{"text", "label"}`` with labels local to the task (0 .. len(labels)-1)."""

    name: str
    labels: list[str]
    train: list[dict] = field(repr=False)
    dev: list[dict] = field(repr=False)
    test: list[dict] = field(repr=False)
    words: list[str] | None = None  # answer words of an instruction task (a decoder's head starts from them)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass
class Stream:
    name: str
    scenario: str
    tasks: list[Task]

    def __post_init__(self) -> None:
        check_stream(self)

    @property
    def offsets(self) -> list[int]:
        """Global index of each task's first class, then the total number of classes."""
        out = [0]
        for task in self.tasks:
            out.append(out[-1] + task.num_classes)
        return out

    @property
    def num_classes(self) -> int:
        return self.offsets[-1]

    def classes_of(self, t: int) -> range:
        return range(self.offsets[t], self.offsets[t + 1])

    def describe(self) -> str:
        parts = [f"{t.name} ({t.num_classes} classes, {len(t.train)} train / {len(t.test)} test)" for t in self.tasks]
        return f"{self.name} [{self.scenario}-incremental]: " + " → ".join(parts)


def check_stream(stream: Stream) -> None:
    """One clear error for each stream a continual run cannot use."""
    if stream.scenario not in SCENARIOS:
        raise ConfigError(f"scenario must be one of {SCENARIOS} (class- or task-incremental), got {stream.scenario!r}")
    if len(stream.tasks) < 2:
        raise ConfigError(f"stream {stream.name!r} has {len(stream.tasks)} task: continual learning needs at least "
                          "two (train on one task with `petkit train`)")
    seen: dict[str, str] = {}
    for t, task in enumerate(stream.tasks):
        for split in ("train", "test"):
            if not getattr(task, split):
                raise ConfigError(f"task {t} ({task.name}) has no {split} examples; check its classes and max_train/max_eval")
        if task.num_classes < 2:  # each task trains on its own classes' logits: one class teaches nothing
            raise ConfigError(f"task {t} ({task.name}) has {task.num_classes} class; a task needs at least two")
        used = {ex["label"] for ex in task.train}
        stray = sorted(set(range(task.num_classes)) - used)
        if stray:
            raise ConfigError(f"task {t} ({task.name}) has no training examples of {[task.labels[i] for i in stray]}")
        if stream.scenario == "class":
            for label in task.labels:
                key = label.strip().lower()
                if key in seen:
                    raise ConfigError(f"class-incremental task {t} ({task.name}) brings class {label!r}, which task "
                                      f"{seen[key]} already brought: classes of a class-incremental stream must be new "
                                      "in each task (use scenario: task for tasks that share labels)")
                seen[key] = f"{t} ({task.name})"


def task_from_dataset(dataset: str, classes=None, *, seed: int = 0, max_train: int | None = None,
                      max_eval: int | None = None, name: str | None = None) -> Task:
    """A task from a labelled dataset (named or a file), optionally only some of its classes (by name),
    relabelled 0..k-1 in the order given."""
    data = load_dataset(dataset, seed)
    if data.task not in ("classification", "sft") or not data.labels:
        raise ConfigError(f"dataset {dataset!r} is not a labelled classification set, so it cannot be a task of a stream")
    keep = list(data.labels) if classes is None else [str(c) for c in classes]
    unknown = [c for c in keep if c not in data.labels]
    if unknown:
        raise ConfigError(f"dataset {dataset!r} has no class {unknown[0]!r}; its classes are {data.labels}")
    if len(set(keep)) != len(keep):
        raise ConfigError(f"classes of a task must differ, got {keep}")
    index = {data.labels.index(c): i for i, c in enumerate(keep)}

    def pick(examples: list[dict], n: int | None, split: str) -> list[dict]:
        rows = [{"text": ex.get("prompt", ex.get("text")), "label": index[ex["label"]]}
                for ex in examples if ex["label"] in index]
        return stratified_sample(rows, n, seed, f"continual/{dataset}/{'-'.join(keep)}/{split}")

    words = keep if data.task == "sft" else None
    label = name or (data.name if classes is None else f"{data.name}:{'+'.join(keep)}")
    return Task(label, keep, pick(data.train, max_train, "train"), pick(data.dev, max_eval, "dev"),
                pick(data.test, max_eval, "test"), words)


# Streams the benchmark and `petkit continual --stream NAME` know by name.
NAMED_STREAMS: dict[str, dict] = {
    # TREC's 6 question types, 2 per task.
    "trec-classes": {"scenario": "class", "tasks": [
        {"dataset": "trec", "classes": ["ABBR", "DESC"]},
        {"dataset": "trec", "classes": ["ENTY", "HUM"]},
        {"dataset": "trec", "classes": ["LOC", "NUM"]}]},
    # News topics: AG News's four, then the two BBC topics AG News does not have (BBC's business,
    # sport and tech would repeat AG News's classes, which a class-incremental stream refuses).
    "news-classes": {"scenario": "class", "tasks": [
        {"dataset": "ag_news", "classes": ["World", "Sports"]},
        {"dataset": "ag_news", "classes": ["Business", "Sci/Tech"]},
        {"dataset": "bbc", "classes": ["entertainment", "politics"]}]},
    # Four different problems, one after another; the task id is given at test time.
    "text-tasks": {"scenario": "task", "tasks": ["sst2", "trec", "ag_news", "sms_spam"]},
    # The same idea for a decoder, as instructions answered with one word.
    "instruct-tasks": {"scenario": "task", "tasks": ["sst2-instruct", "trec-instruct", "agnews-instruct"]},
}

_STREAM_KEYS = {"name", "scenario", "tasks", "max_train", "max_eval"}
_TASK_KEYS = {"dataset", "classes", "name"}


def build_stream(spec, *, seed: int = 0, max_train: int | None = None, max_eval: int | None = None) -> Stream:
    """A Stream from a name in NAMED_STREAMS or a mapping (see the module docstring). max_train and
    max_eval given here override the mapping's."""
    name = None
    if isinstance(spec, str):
        if spec not in NAMED_STREAMS:
            raise ConfigError(f"unknown stream {spec!r}; named streams: {sorted(NAMED_STREAMS)} (or give a YAML file)")
        name, spec = spec, NAMED_STREAMS[spec]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a stream is a name or a mapping with scenario and tasks, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _STREAM_KEYS)
    if unknown:
        raise ConfigError(f"unknown stream keys {unknown}; a stream has {sorted(_STREAM_KEYS)}")
    tasks = spec.get("tasks")
    if not isinstance(tasks, list):
        raise ConfigError("a stream needs `tasks`: a list of dataset names or {dataset, classes} mappings")
    max_train = max_train if max_train is not None else spec.get("max_train")
    max_eval = max_eval if max_eval is not None else spec.get("max_eval")
    built = []
    for i, entry in enumerate(tasks):
        entry = {"dataset": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, Mapping) or "dataset" not in entry:
            raise ConfigError(f"task {i} of the stream must be a dataset name or a mapping with `dataset`, got {entry!r}")
        stray = sorted(set(entry) - _TASK_KEYS)
        if stray:
            raise ConfigError(f"task {i} has unknown keys {stray}; a task has {sorted(_TASK_KEYS)}")
        built.append(task_from_dataset(entry["dataset"], entry.get("classes"), seed=seed, max_train=max_train,
                                       max_eval=max_eval, name=entry.get("name")))
    return Stream(spec.get("name") or name or "stream", spec.get("scenario", "class"), built)
