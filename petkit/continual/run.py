"""`run_stream`: train a learner on a stream, task after task; after each task, test on every task so
far (the accuracy matrix, on test and on dev); a checkpoint after each task, so an interrupted run
resumes at the next task and ends exactly where an uninterrupted one would.

    cfg = ContinualConfig(model="minilm", stream="trec-classes", method="lae", epochs=3, output_dir="runs/lae")
    result = run_stream(cfg)              # again with resume=True after a crash
    result.metrics["last"], result.matrix

Only the test matrix is reported; the dev matrix is there to choose hyper-parameters on.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, int_at_least
from petkit.train.batching import batch_indices, epoch_order
from petkit.train.checkpoint import CheckpointError
from petkit.train.progress import ProgressBar

from .baselines import concat
from .learner import Learner, check_scenario, make_learner
from .metrics import summarise
from .model import ContinualClassifier, Encoded, build_classifier, collate, encode_split
from .state import load_task_state, save_task_state
from .stream import Stream, build_stream


@dataclass(frozen=True)
class ContinualConfig:
    """One continual run. lr, epochs, batch_size apply to every task; max_train / max_eval cap each
    task's train and dev/test splits (stratified); max_length truncates inputs."""

    model: str = "minilm"
    stream: object = "trec-classes"
    method: str = "seq-lora"
    options: dict = field(default_factory=dict)
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 64
    max_train: int | None = 600
    max_eval: int | None = 300
    max_grad_norm: float | None = 1.0
    seed: int = 0
    output_dir: str | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
            int_at_least(name, getattr(self, name))
        for name in ("max_train", "max_eval"):
            if getattr(self, name) is not None:
                int_at_least(name, getattr(self, name))
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a mapping of the method's settings, got {self.options!r}")

    @classmethod
    def from_dict(cls, data) -> "ContinualConfig":
        return config_from_mapping(cls, data, where="continual")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ContinualResult:
    config: dict
    stream: list[str]                    # task names, in order
    scenario: str
    matrix: list[list[float]]            # test accuracy: row i = after task i, column j = task j (j ≤ i)
    dev_matrix: list[list[float]]
    metrics: dict[str, float]            # last, average, forgetting, bwt (on test)
    seconds: list[float]                 # training time of each task
    extra: dict = field(default_factory=dict)  # what the learner reports (e.g. LAE's online/offline rows)
    # test accuracy among task j's own classes (as if its task id were given): in a class-incremental
    # stream it tells a task that was learnt but is out-scored by other tasks' classes from one forgotten
    task_aware: list[list[float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path) -> "ContinualResult":
        return cls(**json.loads(Path(path).read_text()))


def run_stream(cfg: ContinualConfig, *, resume: bool = False, progress: bool = True,
               model: ContinualClassifier | None = None, tokenizer=None, stream: Stream | None = None) -> ContinualResult:
    """Run cfg.method on cfg.stream. model/tokenizer/stream may be given (tests pass tiny ones);
    otherwise they are built from cfg. With resume=True, continue from cfg.output_dir's last task."""
    learner = make_learner(cfg.method, cfg.options)
    if stream is None:
        stream = build_stream(cfg.stream, seed=cfg.seed, max_train=cfg.max_train, max_eval=cfg.max_eval)
    check_scenario(learner, stream)
    learner.check(cfg.epochs)
    if model is None:
        model, tokenizer = build_classifier(cfg.model, stream, cfg.seed)
    if tokenizer is None:
        raise ConfigError("run_stream needs the tokenizer that goes with the model")
    out = Path(cfg.output_dir) if cfg.output_dir else None
    done, saved = _resume_point(out, cfg, resume)

    torch.manual_seed(cfg.seed)
    frozen = {id(t) for t in model.backbone.state_dict(keep_vars=True).values()}
    learner.setup(model, stream)
    data = [_encode(tokenizer, stream, t, cfg.max_length) for t in range(len(stream.tasks))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batches(encoded: Encoded, shuffle: bool, salt: int = 0, size: int | None = None):
        order = epoch_order(len(encoded), cfg.seed, salt) if shuffle else range(len(encoded))
        for rows in batch_indices(list(order), size or cfg.batch_size):
            yield collate(encoded, rows, pad)

    matrix, dev_matrix, task_aware, seconds, extra = [], [], [], [], {}
    if done >= 0:  # rebuild what tasks 0..done built, then load their trained tensors and the run's record
        for t in range(done + 1):
            learner.begin_task(t)
        load_task_state(out, done, model, learner, frozen)
        matrix, dev_matrix, seconds, extra = saved["matrix"], saved["dev_matrix"], saved["seconds"], saved["extra"]
        task_aware = saved.get("task_aware", [])
        torch.set_rng_state(torch.ByteTensor(list(base64.b64decode(saved["rng"]))))

    train_sets = [concat([d["train"] for d in data[: t + 1]]) if learner.replays_all else data[t]["train"]
                  for t in range(len(data))]
    steps = [cfg.epochs * math.ceil(len(d) / cfg.batch_size) for d in train_sets]
    with ProgressBar(sum(steps), sum(steps[: done + 1]), "samples", enabled=progress) as bar:
        for t in range(done + 1, len(stream.tasks)):
            bar.log(f"task {t + 1}/{len(stream.tasks)}: {stream.tasks[t].name}")
            started = time.perf_counter()
            _train_task(learner, model, t, train_sets[t], cfg, steps[t], batches, bar)
            seconds.append(time.perf_counter() - started)
            test, dev, report = _evaluate(learner, stream, t, data, batches, cfg)
            matrix.append([a for a, _ in test])
            task_aware.append([w for _, w in test])
            dev_matrix.append(dev)
            extra = _merge_extra(extra, report)
            bar.log("  accuracy: " + "  ".join(f"{stream.tasks[j].name} {a:.3f}" for j, a in enumerate(matrix[-1])))
            if out is not None:
                record = {"config": _config_record(cfg), "task": t, "matrix": matrix, "dev_matrix": dev_matrix,
                          "task_aware": task_aware,
                          "seconds": seconds, "extra": extra,
                          "rng": base64.b64encode(bytes(torch.get_rng_state().tolist())).decode()}
                save_task_state(out, t, model, learner, frozen, record)

    result = ContinualResult(_config_record(cfg), [t.name for t in stream.tasks], stream.scenario, matrix,
                             dev_matrix, summarise(matrix), seconds, extra, task_aware)
    if out is not None:
        (out / "result.json").write_text(result.to_json())
    return result


def _encode(tokenizer, stream: Stream, t: int, max_length: int) -> dict[str, Encoded]:
    task, offset = stream.tasks[t], stream.offsets[t]
    return {split: encode_split(tokenizer, task, getattr(task, split), offset, max_length)
            for split in ("train", "dev", "test")}


def _train_task(learner: Learner, model, t: int, data: Encoded, cfg: ContinualConfig, total: int, batches, bar) -> None:
    learner.begin_task(t)
    params = learner.parameters(t)
    if not params:
        raise ConfigError(f"{learner.name} has nothing to train in task {t}")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)  # a fresh optimiser per task
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        learner.begin_epoch(t, epoch)
        for batch in batches(data, shuffle=True, salt=t * 1000 + epoch):
            lr = cfg.lr * (1 - step / total)  # linear decay to 0 over the task
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = learner.loss(batch, t)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            learner.after_step(t)
            step += 1
            bar.update(loss.item(), lr, len(batch["labels"]))
    learner.end_task(t, data, batches)
    model.eval()


@torch.no_grad()
def _evaluate(learner: Learner, stream: Stream, t: int, data, batches, cfg: ContinualConfig):
    """After task t: (accuracy, within-task accuracy) on each seen task's test set, the accuracies on
    their dev sets, and the learner's own report."""
    learner.model.eval()

    def pairs(scores, split):
        return [_accuracies(scores, stream, t, j, data[j][split], batches, cfg) for j in range(t + 1)]

    def row(scores=learner.scores, split="test"):
        return [a for a, _ in pairs(scores, split)]
    return pairs(learner.scores, "test"), row(split="dev"), learner.report(t, row)


def _accuracies(scores, stream: Stream, t: int, j: int, data: Encoded, batches, cfg: ContinualConfig) -> tuple[float, float]:
    """Accuracy on task j's examples after task t, among every class seen so far (class-incremental) or
    among task j's own classes, with its task id (task-incremental); and among task j's own classes
    from the same scores (the same number in the task-incremental scenario)."""
    given = stream.scenario == "task"
    classes = stream.classes_of(j) if given else range(0, stream.offsets[t + 1])
    own = slice(stream.offsets[j] - classes.start, stream.offsets[j + 1] - classes.start)
    right = within = 0
    for batch in batches(data, shuffle=False, size=cfg.eval_batch_size):
        s = scores(batch, classes, j if given else None)
        right += int((s.argmax(-1) + classes.start == batch["labels"]).sum())
        within += int((s[:, own].argmax(-1) + stream.offsets[j] == batch["labels"]).sum())
    return right / len(data), within / len(data)


def _merge_extra(extra: dict, new: dict) -> dict:
    """Learner reports are per task: lists that grow by one entry per task."""
    out = dict(extra)
    for key, value in new.items():
        out[key] = [*out.get(key, []), value]
    return out


def _config_record(cfg: ContinualConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _resume_point(out: Path | None, cfg: ContinualConfig, resume: bool) -> tuple[int, dict]:
    """(last finished task, its record), or (-1, {}) for a fresh run."""
    progress = out / "progress.json" if out is not None else None
    if progress is None or not progress.is_file():
        return -1, {}
    if not resume:
        raise ConfigError(f"{out} already holds a continual run; pass resume=True (--resume) to continue it, or pick "
                          "another output directory")
    try:
        saved = json.loads(progress.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{progress} is not valid JSON ({exc}); the run cannot resume from it") from None
    if saved.get("config") != _config_record(cfg):
        changed = sorted(k for k in _config_record(cfg) if saved.get("config", {}).get(k) != _config_record(cfg)[k])
        raise ConfigError(f"{out} holds a run with other settings ({', '.join(changed)} differ); resume needs the same "
                          "settings")
    return int(saved["task"]), saved
