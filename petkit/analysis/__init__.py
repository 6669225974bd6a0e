"""Analysis of benchmark results: rank aggregation of systems across criteria (`petkit.analysis.ranking`)."""

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
    "Ranking",
    "ScoreTable",
    "borda",
    "compare",
    "kemeny",
    "kendall_tau_distance",
    "mean_ranking",
    "pairwise_matrix",
    "total_disagreement",
]
