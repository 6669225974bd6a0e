"""Analysis tools: rank aggregation of systems across criteria (`petkit.analysis.ranking`); what adaptation did
to a model, layer by layer: probes, linear CKA, ΔW pruning (`petkit.analysis.wrapper`, `petkit.analysis.similarity`)."""

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
    "Ranking",
    "ScoreTable",
    "borda",
    "cka_per_layer",
    "compare",
    "kemeny",
    "kendall_tau_distance",
    "layer_features",
    "linear_cka",
    "mean_ranking",
    "pairwise_matrix",
    "probe_layers",
    "prune_delta",
    "steps_to_recover",
    "total_disagreement",
]
