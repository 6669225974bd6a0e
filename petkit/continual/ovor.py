"""OVOR: OnePrompt + Virtual Outlier Regularization (Huang et al., ICLR 2024; spec: methods-modules.md §16).

OnePrompt: one set of key/value prompts shared by every task: no pool, no query, one forward pass at
inference. It is petkit's prefix tuning without the MLP (`prompt_length` tokens, default 10), trained
with the head in the runner's epochs on the current task's classes (the Learner's default loss).
Init U(0, 1) as in the paper's code (`init="uniform"`); `init="normal"` keeps petkit's N(0, 1).
Simplification: petkit's prefix sits in every self-attention layer with one length; the paper's
prompts sit in ViT-B's layers 0-4 of 12 only (a length-10 G-prompt in 0-1, a length-40 E-prompt in 2-4).

VOR (`vor_epochs`, default 10; 0 = plain OnePrompt), in `end_task`, after the regular epochs:
1. features of the task's training examples with the trained prompt, in eval mode, detached (the
   prompt is frozen from here on, so they are computed once);
2. each epoch, new virtual outliers per class by NPOS (`npos_outliers`);
3. only the head trains (a fresh Adam, `vor_lr`, batches of `vor_batch` ID features and an equal share
   of the outliers) on `vor_loss`: CE over the current task's logits + vor_weight·[Huber(ReLU(E_id − tau_id))
   + Huber(ReLU(tau_ood − E_ood))], E = −logsumexp of the current task's logits. The optimiser sees a
   copy of the current task's head rows alone, so old and future classes' rows cannot change. The lr
   is constant (the released code carries its cosine schedule on through these epochs).

NPOS, per class (the paper's; the released code pools the task's classes into one set):
- outlier space: NPOS measures k-NN distances between L2-normalised features, so boundary points,
  Gaussian offsets `cov·N(0, I)` and the k-NN ranking all live on the unit-norm scale (where `cov` has
  the same meaning for any backbone). The head reads raw features, so the kept outliers are multiplied
  by the class's mean feature norm: they reach the head at the scale of the class's own features.
- boundary points: the `select` features farthest from their K-th nearest neighbour in the class
  (the point itself not counted); candidates `boundary + cov·ε`, `sample_from` per boundary point;
  kept: the `per_class` candidates farthest from their K-th nearest ID feature of the class.
- `outliers="origin"` reproduces the released code's bug: `boundary` is computed but never added, so
  the candidates are `cov·ε` around the origin (scaled like the others here; the released code feeds
  them to the head unscaled).
- clamping: the defaults (select = K = 50) are about 40% of a class at the paper's scale (ImageNet-R:
  ~120 training images per class), so for a class of n examples select and K become
  min(value, max(1, n // 2)): boundary points stay the outer half of a small class instead of all of
  it, and K stays a neighbour inside the class (a class of one example is its own boundary point).
Distances by torch.cdist in chunks (no FAISS; exact, as FAISS's flat index is).

Energies depend on the logits' scale: with a small head tau_id = −15 may be out of reach, so `report`
gives the mean energies (train and test ID features, the first epoch's outliers) before and after the
VOR epochs. With the defaults on a small head (energies near −1) the outlier term never fires
(E_ood > tau_ood) and the ID term always does: VOR is then CE plus a push of all current-task logits up.
Outlier sampling and VOR shuffling use a generator seeded by the run's seed and the task, so they leave
the global RNG alone (vor_epochs=0, init="normal" trains exactly as seq-lora with a prefix adapter) and
replay on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from petkit.core.config import check, is_number, is_pos_int

from .baselines import AdapterLearner
from .learner import register_learner

OUTLIER_MODES = ("boundary", "origin")
INITS = ("uniform", "normal")


def energy(logits: torch.Tensor) -> torch.Tensor:
    """The energy score, low for in-distribution inputs."""
    return -torch.logsumexp(logits, dim=1)


def vor_loss(id_logits: torch.Tensor, targets: torch.Tensor, ood_logits: torch.Tensor, *, weight: float = 0.1,
             tau_id: float = -15.0, tau_ood: float = -3.0) -> torch.Tensor:
    """CE on the ID logits plus the energy margins; logits are the current task's classes only,
    targets local to the task."""
    loss = F.cross_entropy(id_logits, targets)
    gap_id = F.relu(energy(id_logits) - tau_id)
    loss = loss + weight * F.huber_loss(gap_id, torch.zeros_like(gap_id))
    if len(ood_logits):
        gap_ood = F.relu(tau_ood - energy(ood_logits))
        loss = loss + weight * F.huber_loss(gap_ood, torch.zeros_like(gap_ood))
    return loss


# -- NPOS ----------------------------------------------------------------------------------------------

def kth_distance(points: torch.Tensor, reference: torch.Tensor, k: int, *, exclude_self: bool = False,
                 chunk: int = 4096) -> torch.Tensor:
    """Distance of each point to its k-th nearest reference point; exclude_self when points are the
    reference set (each point's zero distance to itself is skipped)."""
    rank = k + 1 if exclude_self else k
    return torch.cat([torch.cdist(part, reference).kthvalue(rank, dim=1).values for part in points.split(chunk)])


def clamp_to_class(value: int, n: int) -> int:
    """select and K for a class of n examples (see the module docstring)."""
    return min(value, max(1, n // 2))


@dataclass
class Synthesis:
    """One class's NPOS run, on the unit-norm scale."""
    boundary: torch.Tensor    # (select, d)
    candidates: torch.Tensor  # (select · sample_from, d)
    distance: torch.Tensor    # each candidate's distance to its K-th nearest ID feature
    kept: torch.Tensor        # indices of the kept candidates, farthest first


def class_outliers(unit: torch.Tensor, *, select: int, k: int, sample_from: int, per_class: int, cov: float,
                   around: str, generator: torch.Generator) -> Synthesis:
    """NPOS on one class's L2-normalised features `unit` (n, d)."""
    n, d = unit.shape
    select, k = clamp_to_class(select, n), clamp_to_class(k, n)
    if n > 1:
        boundary = unit[kth_distance(unit, unit, k, exclude_self=True).topk(select).indices]
    else:
        boundary = unit
    offsets = cov * torch.randn(len(boundary), sample_from, d, generator=generator).to(unit)
    centre = boundary if around == "boundary" else torch.zeros_like(boundary)
    candidates = (centre[:, None, :] + offsets).reshape(-1, d)
    distance = kth_distance(candidates, unit, k)
    kept = distance.topk(min(per_class, len(candidates))).indices
    return Synthesis(boundary, candidates, distance, kept)


def npos_outliers(features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator, select: int = 50,
                  k: int = 50, sample_from: int = 600, per_class: int = 40, cov: float = 0.1,
                  around: str = "boundary") -> torch.Tensor:
    """Virtual outliers of every class in `labels`, at the scale of the raw features the head reads."""
    out = []
    for c in labels.unique(sorted=True):
        raw = features[labels == c]
        norms = raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        s = class_outliers(raw / norms, select=select, k=k, sample_from=sample_from, per_class=per_class,
                           cov=cov, around=around, generator=generator)
        out.append(s.candidates[s.kept] * norms.mean())
    return torch.cat(out)


# -- the learner ---------------------------------------------------------------------------------------

@register_learner
class OVOR(AdapterLearner):
    name = "ovor"

    def __init__(self, prompt_length: int = 10, init: str = "uniform", vor_epochs: int = 10, vor_lr: float = 1e-3,
                 vor_batch: int = 128, vor_weight: float = 0.1, tau_id: float = -15.0, tau_ood: float = -3.0,
                 cov: float = 0.1, select: int = 50, k: int = 50, sample_from: int = 600, per_class: int = 40,
                 outliers: str = "boundary"):
        for key, value in {"prompt_length": prompt_length, "vor_batch": vor_batch, "select": select, "k": k,
                           "sample_from": sample_from, "per_class": per_class}.items():
            check(is_pos_int(value), f"ovor: {key} must be a positive integer, got {value!r}")
        check(isinstance(vor_epochs, int) and not isinstance(vor_epochs, bool) and vor_epochs >= 0,
              f"ovor: vor_epochs must be an integer ≥ 0 (0 = plain OnePrompt), got {vor_epochs!r}")
        for key, value in {"vor_lr": vor_lr, "cov": cov}.items():
            check(is_number(value) and 0 < value < math.inf, f"ovor: {key} must be a positive number, got {value!r}")
        check(is_number(vor_weight) and 0 <= vor_weight < math.inf,
              f"ovor: vor_weight must be a number ≥ 0, got {vor_weight!r}")
        for key, value in {"tau_id": tau_id, "tau_ood": tau_ood}.items():
            check(is_number(value) and math.isfinite(value), f"ovor: {key} must be a finite number, got {value!r}")
        check(outliers in OUTLIER_MODES, f"ovor: outliers must be one of {OUTLIER_MODES} (around the boundary points, "
                                         f"the paper's; around the origin, the released code's), got {outliers!r}")
        check(init in INITS, f"ovor: init must be one of {INITS}, got {init!r}")
        super().__init__({"method": "prefix", "num_virtual_tokens": prompt_length, "projection": False})
        self.init, self.vor_epochs, self.vor_lr, self.vor_batch = init, vor_epochs, vor_lr, vor_batch
        self.vor_weight, self.tau_id, self.tau_ood = vor_weight, tau_id, tau_ood
        self.npos = {"select": select, "k": k, "sample_from": sample_from, "per_class": per_class, "cov": cov,
                     "around": outliers}
        self.pending: dict[int, dict] = {}  # end_task's numbers for report, by task

    def setup(self, model, stream):
        super().setup(model, stream)
        self.add("prompt")
        if self.init == "uniform":
            with torch.no_grad():
                self.am.model_deltas["prompt"].table.uniform_(0.0, 1.0)
        self.seed = torch.initial_seed()  # the runner seeds before setup, in a fresh and in a resumed run alike

    # -- VOR ------------------------------------------------------------------------------------------
    def end_task(self, t, data, batches):
        rows = self.stream.classes_of(t)
        features, labels = self._features(data, batches)
        labels = labels - rows.start
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + t) % 2**63)
        head = self.model.head
        before = tuple(p[rows.start:rows.stop].detach().float().clone() for p in (head.weight, head.bias))
        outliers = npos_outliers(features, labels, generator=generator, **self.npos)
        weight, bias = self._train_head(features, labels, outliers, before, generator)
        with torch.no_grad():
            head.weight[rows.start:rows.stop] = weight.to(head.weight.dtype)
            head.bias[rows.start:rows.stop] = bias.to(head.bias.dtype)

        def mean_energy(x, w, b):
            return float(energy(F.linear(x, w, b)).mean())
        self.pending[t] = {"head_before": before, "energy_id_train_before": mean_energy(features, *before),
                           "energy_id_train_after": mean_energy(features, weight, bias),
                           "energy_outlier_before": mean_energy(outliers, *before),
                           "energy_outlier_after": mean_energy(outliers, weight, bias),
                           "outliers": len(outliers)}

    @torch.no_grad()
    def _features(self, data, batches) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        features, labels = [], []
        for batch in batches(data, shuffle=False):
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            features.append(self.model.features(ids, mask).float())
            labels.append(batch["labels"].to(self.device))
        return torch.cat(features), torch.cat(labels)

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def _train_head(self, features, labels, first_outliers, start, generator):
        """The current task's head rows after the VOR epochs (the first epoch uses first_outliers)."""
        weight, bias = (p.clone().requires_grad_(True) for p in start)
        optimizer = torch.optim.Adam([weight, bias], lr=self.vor_lr)
        for epoch in range(self.vor_epochs):
            outliers = (first_outliers if epoch == 0 else
                        npos_outliers(features, labels, generator=generator, **self.npos))
            order = torch.randperm(len(features), generator=generator).to(self.device).split(self.vor_batch)
            shuffled = outliers[torch.randperm(len(outliers), generator=generator).to(self.device)]
            for rows, ood in zip(order, shuffled.tensor_split(len(order))):  # an equal share of outliers per batch
                loss = vor_loss(F.linear(features[rows], weight, bias), labels[rows], F.linear(ood, weight, bias),
                                weight=self.vor_weight, tau_id=self.tau_id, tau_ood=self.tau_ood)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return weight.detach(), bias.detach()

    # -- results --------------------------------------------------------------------------------------
    def report(self, t, row):
        """Mean energies (over the current task's classes) before and after the VOR epochs: of its
        training and test features, and of one set of its virtual outliers (the first epoch's)."""
        pending = self.pending.pop(t, None)
        if pending is None:
            return {}
        rows = self.stream.classes_of(t)
        before = pending.pop("head_before")
        test = {"before": [], "after": []}

        def scores(batch, classes, task):  # the accuracy row's pass over the test sets; task t's alone is used
            labels = batch["labels"]
            if int(labels[0]) not in rows:
                return torch.zeros(len(labels), len(classes))
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            features = self.model.features(ids, mask)
            logits = self.model.head(features)
            test["before"].append(energy(F.linear(features.float(), *before)))
            test["after"].append(energy(logits[:, rows.start:rows.stop].float()))
            return logits[:, classes.start:classes.stop]

        row(scores)
        return {**pending, "energy_id_test_before": float(torch.cat(test["before"]).mean()),
                "energy_id_test_after": float(torch.cat(test["after"]).mean())}

    def describe(self) -> str:
        vor = (f"VOR {self.vor_epochs} epochs, outliers around the {self.npos['around']}" if self.vor_epochs
               else "no VOR")
        return f"ovor (OnePrompt: prefix of {self.adapter.num_virtual_tokens} tokens, {self.init} init; {vor})"
