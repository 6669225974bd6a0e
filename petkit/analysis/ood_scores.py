"""OOD scores and their metrics. Every score is "higher = more in-distribution" (ID).

From logits: maximum softmax probability (MSP, Hendrycks & Gimpel 2017), max-logit (Hendrycks et al.
2022), energy (Liu et al. 2020: T·logsumexp(logits/T)). From features: Mahalanobis distance to the
closest class mean under one shared covariance (Lee et al. 2018, without input pre-processing), and the
negative distance to the k-th nearest ID neighbour of L2-normalised features (Sun et al. 2022; the
detector PT-OOD, Miyai et al. 2023, proposes in the frozen pre-trained feature space).

Metrics (ID is the positive class): AUROC by `sklearn.metrics.roc_auc_score`, and FPR at 95% TPR read
off `sklearn.metrics.roc_curve`: the share of OOD samples still accepted at the highest threshold that
keeps 95% of the ID samples.
"""

from __future__ import annotations

import numpy as np
import torch

from petkit.core.errors import ConfigError, MissingExtra


def _metrics():
    try:
        from sklearn import metrics
    except ImportError:
        raise MissingExtra("OOD metrics need scikit-learn: pip install 'petkit[analysis]'") from None
    return metrics


def msp(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1).max(-1).values


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().max(-1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The negative free energy T·logsumexp(f/T): high on ID data."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


LOGIT_SCORES = {"msp": msp, "max_logit": max_logit, "energy": energy}


class Mahalanobis:
    """Class-conditional Gaussians with one shared covariance, fitted on ID training features;
    score = − min_c (x − μ_c)ᵀ Σ⁻¹ (x − μ_c)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-6):
        features, labels = features.double(), torch.as_tensor(labels).long()
        if features.dim() != 2 or len(features) != len(labels) or len(features) == 0:
            raise ConfigError(f"Mahalanobis needs (N, d) features and N labels, got {tuple(features.shape)} "
                              f"and {tuple(labels.shape)}")
        classes = labels.unique()
        self.means = torch.stack([features[labels == c].mean(0) for c in classes])
        centred = features - self.means[torch.searchsorted(classes, labels)]
        cov = centred.T @ centred / len(features)
        # a ridge on the diagonal keeps Σ invertible when d > N or features are collinear
        cov += ridge * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.double().unsqueeze(1) - self.means.unsqueeze(0)        # (N, C, d)
        dist = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return -dist.min(-1).values.float()


def knn_score(features: torch.Tensor, bank: torch.Tensor, k: int, *, chunk: int = 1024) -> torch.Tensor:
    """−‖z − z_(k)‖₂ with z = x/‖x‖ and z_(k) its k-th nearest neighbour in the (normalised) bank."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(bank):
        raise ConfigError(f"k must be an int in 1..{len(bank)} (the bank's size), got {k!r}")
    bank = torch.nn.functional.normalize(bank.float(), dim=-1)
    z = torch.nn.functional.normalize(features.float(), dim=-1)
    out = [torch.cdist(z[i:i + chunk], bank).topk(k, largest=False).values[:, -1] for i in range(0, len(z), chunk)]
    return -torch.cat(out)


def _labelled(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ConfigError(f"need ID and OOD scores, got {len(a)} ID and {len(b)} OOD")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("scores must be finite (found NaN or inf)")
    return np.concatenate([np.ones(len(a)), np.zeros(len(b))]), np.concatenate([a, b])


def auroc(id_scores, ood_scores) -> float:
    y, s = _labelled(id_scores, ood_scores)
    return float(_metrics().roc_auc_score(y, s))


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Share of OOD accepted at the highest threshold that accepts at least `tpr` of ID."""
    y, s = _labelled(id_scores, ood_scores)
    fprs, tprs, _ = _metrics().roc_curve(y, s, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def detection_metrics(id_scores, ood_scores) -> dict[str, float]:
    return {"auroc": auroc(id_scores, ood_scores), "fpr95": fpr_at_tpr(id_scores, ood_scores)}
