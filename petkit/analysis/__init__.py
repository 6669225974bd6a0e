"""Analysis tools: rank aggregation of benchmark results (`ranking`); OOD detection scores with a kNN
bank in frozen pre-trained feature space (`ood`, `ood_scores`); the moral direction of a sentence encoder
(`moral`); what adaptation did to a model, layer by layer: probes, linear CKA, ΔW pruning (`wrapper`,
`similarity`)."""

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
from petkit.analysis.similarity import cka_per_layer, linear_cka
from petkit.analysis.wrapper import layer_features, probe_layers, prune_delta, steps_to_recover

__all__ = [
    "Comparison",
    "Mahalanobis",
    "MoralDirection",
    "OODBank",
    "Ranking",
    "ScoreTable",
    "auroc",
    "borda",
    "cka_per_layer",
    "compare",
    "detection_metrics",
    "energy",
    "fpr_at_tpr",
    "kemeny",
    "kendall_tau_distance",
    "knn_score",
    "layer_features",
    "linear_cka",
    "logit_scores",
    "max_logit",
    "mean_ranking",
    "msp",
    "pairwise_matrix",
    "probe_layers",
    "prune_delta",
    "steps_to_recover",
    "template_embeddings",
    "total_disagreement",
]
