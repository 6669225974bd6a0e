"""Analysis tools: rank aggregation of benchmark results (`ranking`), OOD detection scores with a kNN
bank in frozen pre-trained feature space (`ood`, `ood_scores`) and the moral direction of a sentence
encoder (`moral`)."""

from petkit.analysis.moral import MoralDirection, template_embeddings
from petkit.analysis.ood import OODBank, logit_scores
from petkit.analysis.ood_scores import Mahalanobis, auroc, detection_metrics, energy, fpr_at_tpr, knn_score, max_logit, msp
from petkit.analysis.ranking import (
    Comparison,
    Ranking,
    ScoreTable,
    borda,
    compare,
    kemeny,
    kendall_tau_distance,
    mean_ranking,
    pairwise_matrix,
    total_disagreement,
)

__all__ = [
    "Comparison",
    "Mahalanobis",
    "MoralDirection",
    "OODBank",
    "Ranking",
    "ScoreTable",
    "auroc",
    "borda",
    "compare",
    "detection_metrics",
    "energy",
    "fpr_at_tpr",
    "kemeny",
    "kendall_tau_distance",
    "knn_score",
    "logit_scores",
    "max_logit",
    "mean_ranking",
    "msp",
    "pairwise_matrix",
    "template_embeddings",
    "total_disagreement",
]
