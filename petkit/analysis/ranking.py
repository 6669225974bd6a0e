"""Rank aggregation of benchmark results: which systems are best across many criteria?

A leaderboard is a score table: systems (e.g. PEFT methods) x criteria (tasks, or task x metric).
Averaging the raw scores is the usual summary, but it is *scale-dependent*: a criterion measured in
large units (perplexity, milliseconds, megabytes) outweighs one measured in [0, 1], and rescaling one
criterion can reorder the leaderboard. Following Colombo et al. (NeurIPS 2022, "What are the best
systems? New perspectives on NLP benchmarking"), this module instead aggregates the *rankings* each
criterion induces, which only uses the order of the scores within a criterion:

- `mean_ranking`  - the plain mean baseline (over observed cells, lower-is-better criteria negated).
- `borda`         - Borda count: a system's points are the systems it beats, summed over criteria.
- `kemeny`        - Kemeny consensus: the order that minimises the total Kendall-tau disagreement with
                    the per-criterion rankings (exact by dynamic programming over subsets for small
                    sets, a flagged local-search approximation beyond).
- `compare`       - all three side by side for a leaderboard.

Everything is built on one *pairwise matrix* ``W``: ``W[i, j]`` is the number of criteria that put
system ``i`` above system ``j`` (a tie counts 1/2). Missing cells (NaN/None) are handled in that
pairwise form, so Borda and Kemeny share the same treatment:

- ``"pairwise_half"`` (default): a pair with a missing system scores 1/2 each way, i.e. the average
  over all full rankings compatible with what was observed (Himmi et al. 2024). With nothing missing
  the Borda score is exactly the usual Borda count with average ranks for ties.
- ``"drop_systems"``: systems with any missing cell are removed first (listed in ``Ranking.dropped``).
- ``"observed_only"``: each criterion ranks only the systems it observed. For Borda a system's
  per-criterion points are normalised by (#observed - 1) to [0, 1] and averaged over the criteria it
  was observed on; for Kemeny only observed pairs count as disagreements.

Scores are compared at the precision they are reported with when the table is given ``decimals``:
two scores that round to the same number there are a tie, so float noise in the last bit (a mean
summed in another order) cannot decide a pair. Without ``decimals`` scores are compared exactly.

When several Kemeny orders are optimal (a majority cycle, even splits) the exact solver counts them
and records the range of positions each system takes across them (`Ranking.position_range`), so a
report can say which positions are not unique instead of printing one order as if it were.

Orders are deterministic and independent of the order of the input rows: ties in a rank-based
score are broken by pairwise-majority wins (Copeland), then by system name; ties in the mean by
system name. The rank-based tie-breaks deliberately avoid the raw scores, so Borda and Kemeny orders
are exactly invariant under any strictly increasing transform of a criterion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from petkit.core.errors import ConfigError

MISSING_MODES = ("pairwise_half", "drop_systems", "observed_only")
EXACT_LIMIT = 12  # Kemeny is solved exactly up to this many systems (DP over subsets)
MAX_EXACT_LIMIT = 16  # O(2^n n) memory: 2^16 x 16 floats is 8 MB

_MISSING_NOTES = {
    "pairwise_half": "a pair involving a missing cell counts 1/2 each way",
    "drop_systems": "systems with any missing cell were dropped",
    "observed_only": "each criterion ranks only the systems it observed",
}


# --------------------------------------------------------------------------- the score table


@dataclass(frozen=True, eq=False)
class ScoreTable:
    """Scores of ``systems`` (rows) on ``criteria`` (columns); NaN or None marks a missing cell.

    ``higher_is_better`` is one bool for all criteria or one per criterion; lower-is-better criteria
    (perplexity, memory, step time) are negated before ranking. ``decimals`` (one for all criteria or
    one per criterion; None = exact) is the precision the scores are reported with: Borda and Kemeny
    compare scores rounded to that many decimal places, so scores that print the same are a tie. The
    mean rule averages the unrounded scores.
    """

    systems: tuple[str, ...]
    criteria: tuple[str, ...]
    scores: np.ndarray
    higher_is_better: tuple[bool, ...]
    decimals: tuple[int | None, ...]

    def __init__(self, systems: Sequence[str], criteria: Sequence[str], scores,
                 higher_is_better: bool | Sequence[bool] = True,
                 decimals: int | None | Sequence[int | None] = None):
        systems = _names(systems, "system")
        criteria = _names(criteria, "criterion")
        try:
            arr = np.array(scores, dtype=float)  # None -> NaN
        except (TypeError, ValueError) as e:
            raise ConfigError(f"scores must be numbers (NaN or None for missing): {e}") from None
        if arr.shape != (len(systems), len(criteria)):
            raise ConfigError(f"scores has shape {arr.shape} but there are {len(systems)} systems and "
                              f"{len(criteria)} criteria; expected ({len(systems)}, {len(criteria)}).")
        if np.isinf(arr).any():
            i, t = np.argwhere(np.isinf(arr))[0]
            raise ConfigError(f"score of {systems[i]!r} on {criteria[t]!r} is {arr[i, t]}; scores must be "
                              "finite (use NaN or None for a missing cell).")
        observed = ~np.isnan(arr)
        for t, c in enumerate(criteria):
            if not observed[:, t].any():
                raise ConfigError(f"criterion {c!r} has no observed scores; remove it or add scores.")
        for i, s in enumerate(systems):
            if not observed[i].any():
                raise ConfigError(f"system {s!r} has no observed scores; remove it or add scores.")
        hib = _directions(higher_is_better, criteria)
        places = _decimals(decimals, criteria)
        arr.setflags(write=False)
        object.__setattr__(self, "systems", systems)
        object.__setattr__(self, "criteria", criteria)
        object.__setattr__(self, "scores", arr)
        object.__setattr__(self, "higher_is_better", hib)
        object.__setattr__(self, "decimals", places)

    @classmethod
    def from_records(cls, records: Iterable[Mapping], higher_is_better: bool | Mapping[str, bool] = True,
                     decimals: int | None = None) -> ScoreTable:
        """Build from ``[{"system": ..., "criterion": ..., "score": ...}, ...]``.

        Systems and criteria keep their order of first appearance; absent (system, criterion) pairs
        and ``score=None`` are missing cells. ``higher_is_better`` is one bool, or a mapping from
        criterion name to bool (criteria not in the mapping are higher-is-better). ``decimals``: as
        in the constructor, one for all criteria.
        """
        cells: dict[tuple[str, str], float] = {}
        systems: dict[str, None] = {}
        criteria: dict[str, None] = {}
        for k, rec in enumerate(records):
            if not isinstance(rec, Mapping) or not {"system", "criterion", "score"} <= set(rec):
                raise ConfigError(f"record {k} must be a mapping with keys 'system', 'criterion', 'score'; "
                                  f"got {rec!r}.")
            s, c = rec["system"], rec["criterion"]
            if (s, c) in cells:
                raise ConfigError(f"two records for system {s!r} on criterion {c!r}; keep one.")
            score = rec["score"]
            cells[(s, c)] = math.nan if score is None else score
            systems.setdefault(s)
            criteria.setdefault(c)
        if not cells:
            raise ConfigError("no records: the score table is empty.")
        sys_list, crit_list = list(systems), list(criteria)
        scores = [[cells.get((s, c), math.nan) for c in crit_list] for s in sys_list]
        if isinstance(higher_is_better, Mapping):
            unknown = sorted(map(str, set(higher_is_better) - set(crit_list)))
            if unknown:
                raise ConfigError(f"higher_is_better names unknown criteria {unknown}; known: {crit_list}.")
            hib = [higher_is_better.get(c, True) for c in crit_list]
        else:
            hib = higher_is_better
        return cls(sys_list, crit_list, scores, hib, decimals)

    @property
    def observed(self) -> np.ndarray:
        """Boolean mask of observed cells."""
        return ~np.isnan(self.scores)

    @property
    def signed(self) -> np.ndarray:
        """Scores with lower-is-better criteria negated, so higher is always better (NaN kept)."""
        return self.scores * np.where(self.higher_is_better, 1.0, -1.0)

    @property
    def compared(self) -> np.ndarray:
        """`signed` rounded to each criterion's ``decimals``: the values the rank rules compare."""
        x = self.signed.copy()
        for t, places in enumerate(self.decimals):
            if places is not None:
                # decimal formatting, as a report prints the number (round-half-even on the exact
                # binary value; np.round scales by 10**places first and can round the other way)
                x[:, t] = [v if math.isnan(v) else float(f"{v:.{places}f}") for v in x[:, t]]
        return x

    def subset(self, systems: Sequence[str]) -> ScoreTable:
        """The table restricted to ``systems`` (in the given order)."""
        idx = [self.systems.index(s) for s in systems]
        return ScoreTable([self.systems[i] for i in idx], self.criteria, self.scores[idx], self.higher_is_better,
                          self.decimals)

    def __repr__(self) -> str:
        return (f"ScoreTable({len(self.systems)} systems x {len(self.criteria)} criteria, "
                f"{int((~self.observed).sum())} missing)")


def _names(names, what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ConfigError(f"{what} names must be a list of strings, not one string {names!r}.")
    names = tuple(names)
    if not names:
        raise ConfigError(f"the score table is empty: no {what} names given.")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"{what} names must be non-empty strings; got {bad[0]!r}.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"duplicate {what} names {dup}; names must be unique.")
    return names


def _directions(higher_is_better, criteria) -> tuple[bool, ...]:
    if isinstance(higher_is_better, (bool, np.bool_)):
        return (bool(higher_is_better),) * len(criteria)
    if isinstance(higher_is_better, (str, Mapping)):
        raise ConfigError("higher_is_better must be a bool or a list of bools, one per criterion.")
    hib = tuple(higher_is_better)
    if len(hib) != len(criteria):
        raise ConfigError(f"higher_is_better has {len(hib)} entries but there are {len(criteria)} criteria.")
    if not all(isinstance(h, (bool, np.bool_)) for h in hib):
        raise ConfigError(f"higher_is_better entries must be True or False; got {list(hib)}.")
    return tuple(bool(h) for h in hib)


def _decimals(decimals, criteria) -> tuple[int | None, ...]:
    if decimals is None or not isinstance(decimals, (Sequence, np.ndarray)) or isinstance(decimals, str):
        values = [decimals] * len(criteria)
    else:
        values = list(decimals)
    if len(values) != len(criteria):
        raise ConfigError(f"decimals has {len(values)} entries but there are {len(criteria)} criteria.")
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ConfigError(f"decimals must be None or whole numbers >= 0 (places after the point); got {v!r}.")
    return tuple(None if v is None else int(v) for v in values)


def _check_missing(missing: str) -> None:
    if missing not in MISSING_MODES:
        raise ConfigError(f"missing={missing!r} is not one of {list(MISSING_MODES)}.")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Ranking:
    """An aggregated order of systems, best first, with the scores and the rule that produced it.

    ``scores[k]`` belongs to ``systems[k]``. For Kemeny the scores are the pairwise wins (the Borda
    points) shown for reference; the order is the consensus, not sorted by them.
    """

    rule: str  # "mean" | "borda" | "kemeny"
    systems: tuple[str, ...]
    scores: tuple[float, ...]
    score_label: str
    missing: str  # the missing-value mode used
    missing_note: str  # what that mode did
    tie_break: str
    n_criteria: int
    dropped: tuple[str, ...] = ()
    exact: bool | None = None  # Kemeny: True when the consensus is provably optimal
    method: str = ""  # how the order was computed
    disagreement: float | None = None  # Kemeny: total Kendall-tau disagreement of the order
    # exact Kemeny: how many orders reach that disagreement, and per system (aligned with `systems`)
    # the lowest and highest 0-based position it takes across them; None when not computed
    optimal_orders: int | None = None
    position_ranges: tuple[tuple[int, int], ...] | None = None

    @property
    def best(self) -> str:
        return self.systems[0]

    def position(self, system: str) -> int:
        """0-based position of ``system`` (0 = best)."""
        return self.systems.index(system)

    def position_range(self, system: str) -> tuple[int, int]:
        """(lowest, highest) 0-based position of ``system`` over all optimal orders; for a rule or an
        approximation that does not enumerate them, its one position twice."""
        k = self.position(system)
        return self.position_ranges[k] if self.position_ranges is not None else (k, k)

    @property
    def unique(self) -> bool | None:
        """Kemeny: True when one order alone is optimal (None when that is not known)."""
        return None if self.optimal_orders is None else self.optimal_orders == 1

    def as_dict(self) -> dict:
        return {"rule": self.rule, "order": list(self.systems), "scores": dict(zip(self.systems, self.scores)),
                "score_label": self.score_label, "missing": self.missing, "missing_note": self.missing_note,
                "tie_break": self.tie_break, "dropped": list(self.dropped), "exact": self.exact,
                "method": self.method, "disagreement": self.disagreement, "optimal_orders": self.optimal_orders,
                "position_ranges": None if self.position_ranges is None else
                dict(zip(self.systems, map(list, self.position_ranges)))}

    @property
    def statement(self) -> str:
        """One line saying which aggregation ordered the systems, and how."""
        what = {"mean": "the mean score (scale-dependent)", "borda": "Borda count",
                "kemeny": f"the {'exact' if self.exact else 'approximate (local search)'} Kemeny consensus"}[self.rule]
        if self.optimal_orders and self.optimal_orders > 1:
            what += f" (one of {self.optimal_orders} equally optimal orders)"
        line = f"Ordered by {what} over {self.n_criteria} criteria; {self.missing_note}"
        if self.dropped:
            line += f" ({', '.join(self.dropped)})"
        return f"{line}; ties broken by {self.tie_break}."

    def __str__(self) -> str:
        rows = [self.statement] + [f"{k + 1:>3}. {s}  {v:.6g}" for k, (s, v) in enumerate(zip(self.systems, self.scores))]
        return "\n".join(rows)


def _key(x: float) -> float:
    """Round to 12 significant digits so float noise (e.g. summation order) cannot split a real tie."""
    return float(f"{x:.12g}")


# --------------------------------------------------------------------------- pairwise form


def pairwise_matrix(table: ScoreTable, missing: str = "pairwise_half") -> np.ndarray:
    """``W[i, j]`` = number of criteria ranking system i above system j (a tie counts 1/2).

    With ``missing="pairwise_half"`` a pair where either cell is missing adds 1/2 to both ``W[i, j]``
    and ``W[j, i]``; with ``"observed_only"`` it adds nothing. (``"drop_systems"`` is applied by the
    callers before this, leaving no missing cells.) ``W[i, j] + W[j, i]`` is the number of criteria
    for ``"pairwise_half"``; the diagonal is 0.
    """
    _check_missing(missing)
    x = table.compared
    obs = table.observed
    n = len(table.systems)
    w = np.zeros((n, n))
    for t in range(len(table.criteria)):
        col, o = x[:, t], obs[:, t]
        both = o[:, None] & o[None, :]
        w += np.where(both, (col[:, None] > col[None, :]) + 0.5 * (col[:, None] == col[None, :]), 0.0)
        if missing == "pairwise_half":
            w += 0.5 * ~both
    np.fill_diagonal(w, 0.0)
    return w


def _copeland(w: np.ndarray) -> np.ndarray:
    """Pairwise-majority wins: 1 per system beaten by a majority of criteria, 1/2 per even split."""
    beats = (w > w.T).sum(axis=1) + 0.5 * ((w == w.T).sum(axis=1) - 1)
    return beats.astype(float)


def _cost(order_idx: Sequence[int], w: np.ndarray) -> float:
    """Total disagreement of an index order: sum over pairs (a above b) of W[b, a]."""
    order_idx = list(order_idx)
    pos = np.empty(len(order_idx), dtype=int)
    pos[order_idx] = np.arange(len(order_idx))
    below = pos[:, None] < pos[None, :]  # below[a, b]: a is placed above b
    return float((w.T * below).sum())


def kendall_tau_distance(order_a: Sequence[str], order_b: Sequence[str]) -> int:
    """Number of pairs the two orders of the same items put the other way round (0 = identical)."""
    a, b = list(order_a), list(order_b)
    if len(set(a)) != len(a) or len(set(b)) != len(b):
        raise ConfigError("kendall_tau_distance: an order lists an item twice.")
    if set(a) != set(b):
        raise ConfigError(f"kendall_tau_distance: the orders rank different items "
                          f"({sorted(map(str, set(a) ^ set(b)))} appear in only one).")
    pos_b = {item: k for k, item in enumerate(b)}
    seq = [pos_b[item] for item in a]
    return sum(1 for i, j in itertools.combinations(range(len(seq)), 2) if seq[i] > seq[j])


def total_disagreement(table: ScoreTable, order: Sequence[str], missing: str = "pairwise_half") -> float:
    """Kendall-tau disagreement of ``order`` with every criterion's ranking, summed over criteria.

    Per criterion, each pair the order puts the other way round costs 1, a tied pair 1/2, and a pair
    with a missing cell 1/2 (``"pairwise_half"``) or 0 (``"observed_only"``). With
    ``"drop_systems"`` the order must list exactly the complete systems. This is what `kemeny`
    minimises.
    """
    _check_missing(missing)
    if missing == "drop_systems":
        table, _ = _drop_incomplete(table)
        missing = "pairwise_half"  # nothing is missing any more
    if sorted(order) != sorted(table.systems):
        raise ConfigError(f"order {list(order)} must list each of {list(table.systems)} exactly once.")
    w = pairwise_matrix(table, missing)
    return _cost([table.systems.index(s) for s in order], w)


def _drop_incomplete(table: ScoreTable) -> tuple[ScoreTable, tuple[str, ...]]:
    complete = table.observed.all(axis=1)
    dropped = tuple(s for s, ok in zip(table.systems, complete) if not ok)
    if not complete.any():
        raise ConfigError("missing='drop_systems' leaves no system: every system misses at least one "
                          "criterion; use missing='pairwise_half' instead.")
    kept = [s for s, ok in zip(table.systems, complete) if ok]
    return (table.subset(kept) if dropped else table), dropped


# --------------------------------------------------------------------------- aggregations


def mean_ranking(table: ScoreTable) -> Ranking:
    """Order systems by their mean score over the criteria they were observed on.

    Lower-is-better criteria are negated first. This is the usual leaderboard average and the
    baseline the rank-based rules are compared with: it is *scale-dependent* (a criterion in large
    units dominates; rescaling one criterion can reorder systems), and with missing cells systems
    are averaged over different criteria. Ties are broken by system name.
    """
    means = np.nanmean(table.signed, axis=1)
    order = sorted(range(len(table.systems)), key=lambda i: (-_key(means[i]), table.systems[i]))
    return Ranking(
        rule="mean", systems=tuple(table.systems[i] for i in order), scores=tuple(float(means[i]) for i in order),
        score_label="mean score over observed criteria (lower-is-better criteria negated)",
        missing="observed_only", missing_note="missing cells are skipped (mean over observed criteria)",
        tie_break="system name", n_criteria=len(table.criteria),
        method="arithmetic mean of raw scores; scale-dependent")


def borda(table: ScoreTable, missing: str = "pairwise_half") -> Ranking:
    """Borda count: per criterion a system scores the number of systems it beats (ties 1/2), summed.

    Equivalently the sum over criteria of 0-based average ranks (0 = worst), direction-aware. See
    the module docstring for the ``missing`` modes. Ties are broken by pairwise-majority wins
    (Copeland score), then by system name; only the order of scores within each criterion matters.
    """
    _check_missing(missing)
    dropped: tuple[str, ...] = ()
    if missing == "drop_systems":
        table, dropped = _drop_incomplete(table)
    w = pairwise_matrix(table, "observed_only" if missing == "observed_only" else "pairwise_half")
    if missing == "observed_only":
        scores = _normalised_borda(table)
        label = "Borda points per observed criterion, normalised by (#observed - 1) and averaged"
    else:
        scores = w.sum(axis=1)
        label = "Borda points (systems beaten, ties 1/2, summed over criteria)"
    cope = _copeland(w)
    order = sorted(range(len(table.systems)),
                   key=lambda i: (-_key(scores[i]), -cope[i], table.systems[i]))
    return Ranking(
        rule="borda", systems=tuple(table.systems[i] for i in order), scores=tuple(float(scores[i]) for i in order),
        score_label=label, missing=missing, missing_note=_MISSING_NOTES[missing],
        tie_break="pairwise-majority wins, then system name", n_criteria=len(table.criteria), dropped=dropped,
        method="Borda count with average ranks for ties")


def _normalised_borda(table: ScoreTable) -> np.ndarray:
    """observed_only Borda: per criterion, wins among observed / (#observed - 1), averaged per system.

    A criterion that observed a single system gives it 1/2 (no comparison, no information).
    """
    x, obs = table.compared, table.observed
    total = np.zeros(len(table.systems))
    for t in range(len(table.criteria)):
        o = obs[:, t]
        m = int(o.sum())
        col = x[o, t]
        wins = (col[:, None] > col[None, :]).sum(axis=1) + 0.5 * ((col[:, None] == col[None, :]).sum(axis=1) - 1)
        total[o] += wins / (m - 1) if m > 1 else 0.5
    return total / obs.sum(axis=1)


def kemeny(table: ScoreTable, missing: str = "pairwise_half", exact_limit: int = EXACT_LIMIT) -> Ranking:
    """Kemeny consensus: the order minimising the total Kendall-tau disagreement with the criteria.

    The disagreement is `total_disagreement` (pairwise form, same ``missing`` handling as `borda`).
    Up to ``exact_limit`` systems (default 12, at most 16) it is solved **exactly** by dynamic
    programming over subsets, O(2^n n^2) time; among several optimal orders the one closest to the
    Borda order (lexicographically first in Borda order) is returned, so ties follow Borda's
    tie-break, and the result says how many orders are optimal (``optimal_orders``) and which
    positions each system takes across them (``position_ranges``). Beyond the limit it is **approximate** (``exact=False``): the Borda order refined by
    moving one system at a time to the position that lowers the disagreement most, until no single
    move helps - a local optimum, never worse than the Borda order.

    ``"pairwise_half"`` and ``"observed_only"`` have the same optimal orders (a 1/2-1/2 pair costs the
    same whichever way it is ordered) and differ in the reported disagreement by that constant; when
    several orders are optimal each mode keeps the one first in its own Borda order.
    """
    _check_missing(missing)
    if not isinstance(exact_limit, int) or not 0 <= exact_limit <= MAX_EXACT_LIMIT:
        raise ConfigError(f"exact_limit must be an int in [0, {MAX_EXACT_LIMIT}]; got {exact_limit!r}.")
    start = borda(table, missing)  # applies drop_systems and fixes the tie-break order
    if missing == "drop_systems":
        table, _ = _drop_incomplete(table)
    canon = [table.systems.index(s) for s in start.systems]
    w_full = pairwise_matrix(table, "observed_only" if missing == "observed_only" else "pairwise_half")
    w = w_full[np.ix_(canon, canon)]  # index k = k-th system of the Borda order
    n = len(canon)
    count, ranges = None, None
    if n <= exact_limit:
        (order, count, spans), exact = _kemeny_dp(w), True
        method = "exact: dynamic programming over subsets"
        ranges = tuple(spans[k] for k in order)
    else:
        order, exact = _kemeny_local_search(w), False
        method = (f"approximate: Borda order refined by single-system moves to a local optimum "
                  f"({n} systems > exact_limit={exact_limit})")
    idx = [canon[k] for k in order]
    wins = w_full.sum(axis=1)
    return Ranking(
        rule="kemeny", systems=tuple(table.systems[i] for i in idx), scores=tuple(float(wins[i]) for i in idx),
        score_label="pairwise wins summed over criteria (for reference; the order is the consensus)",
        missing=missing, missing_note=_MISSING_NOTES[missing],
        tie_break="the Borda order",
        n_criteria=len(table.criteria), dropped=start.dropped, exact=exact, method=method,
        disagreement=_cost(order, w), optimal_orders=count, position_ranges=ranges)


def _kemeny_dp(w: np.ndarray) -> tuple[list[int], int, list[tuple[int, int]]]:
    """Exact Kemeny for pairwise matrix ``w`` over indices 0..n-1: (the lexicographically first optimal
    order, the number of optimal orders, each index's (lowest, highest) position across them).

    g[S] = least disagreement of ordering the set S among themselves (S placed after everything
    else). Putting j first within S costs sum_{r in S} W[r, j] (every r in S is then below j), so
    g[S] = min_{j in S} colsum[S, j] + g[S - {j}]. Values are multiples of 1/2, so comparisons are
    exact in floating point. An order is optimal exactly when each of its steps S -> S - {j} attains
    that minimum (a "tight" step), so the optimal orders are the tight paths from the full set down
    to the empty one: counted bottom-up, and the positions j can take read off the tight steps out of
    the sets such a path reaches (j placed when |S| systems remain is at position n - |S|).
    """
    n = len(w)
    if n <= 1:
        return list(range(n)), 1, [(0, 0)] * n
    subsets = np.arange(1 << n)
    bits = (subsets[:, None] >> np.arange(n)) & 1  # bits[S, j]: j in S
    colsum = bits.astype(float) @ w  # colsum[S, j] = sum_{r in S} W[r, j]
    popcount = bits.sum(axis=1)
    g = np.zeros(1 << n)
    for k in range(1, n + 1):
        layer = subsets[popcount == k]
        rest = layer[:, None] ^ (1 << np.arange(n))
        cand = np.where(bits[layer] == 1, colsum[layer] + g[rest], np.inf)
        g[layer] = cand.min(axis=1)
    rest_all = subsets[:, None] ^ (1 << np.arange(n))
    tight = (bits == 1) & (colsum + g[rest_all] == g[:, None])
    order, s = [], (1 << n) - 1
    while s:
        for j in range(n):  # first j (in Borda order) that achieves the optimum
            if s >> j & 1 and colsum[s, j] + g[s ^ (1 << j)] == g[s]:
                order.append(j)
                s ^= 1 << j
                break
    count, spans = _optimal_paths(tight, rest_all, popcount)
    return order, count, spans


def _optimal_paths(tight: np.ndarray, rest: np.ndarray, popcount: np.ndarray) -> tuple[int, list[tuple[int, int]]]:
    """Number of tight paths from the full set to the empty set, and each index's position span on them."""
    size, n = tight.shape
    paths = np.zeros(size, dtype=np.int64)  # tight paths from S down to the empty set (<= 16! fits)
    paths[0] = 1
    for k in range(1, n + 1):
        layer = np.flatnonzero(popcount == k)
        paths[layer] = np.where(tight[layer], paths[rest[layer]], 0).sum(axis=1)
    reached = np.zeros(size, dtype=bool)  # on a tight path from the full set
    reached[size - 1] = True
    low, high = [n] * n, [-1] * n
    for k in range(n, 0, -1):
        layer = np.flatnonzero((popcount == k) & reached)
        steps = tight[layer]
        reached[rest[layer][steps]] = True
        for j in np.flatnonzero(steps.any(axis=0)):  # j can be placed at position n - k
            low[j], high[j] = min(low[j], n - k), max(high[j], n - k)
    return int(paths[size - 1]), list(zip(low, high))


def _kemeny_local_search(w: np.ndarray) -> list[int]:
    """Start from 0..n-1 (the Borda order) and apply best single-system moves while they help."""
    order = list(range(len(w)))
    improved = True
    while improved:
        improved = False
        for i in range(len(order)):
            x = order[i]
            best_delta, best_pos = 0.0, i
            delta = 0.0
            for p in range(i - 1, -1, -1):  # move x up past order[p]
                y = order[p]
                delta += w[y, x] - w[x, y]  # pair was "y above x" (cost W[x, y]); becomes "x above y"
                if delta < best_delta:
                    best_delta, best_pos = delta, p
            delta = 0.0
            for p in range(i + 1, len(order)):  # move x down past order[p]
                y = order[p]
                delta += w[x, y] - w[y, x]
                if delta < best_delta:
                    best_delta, best_pos = delta, p
            if best_pos != i:
                order.insert(best_pos, order.pop(i))
                improved = True
    return order


# --------------------------------------------------------------------------- side by side


@dataclass(frozen=True)
class Comparison:
    """Mean, Borda and Kemeny orders of one table, for showing side by side."""

    mean: Ranking
    borda: Ranking
    kemeny: Ranking
    rankings: tuple[Ranking, ...] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "rankings", (self.mean, self.borda, self.kemeny))

    @property
    def agree(self) -> bool:
        """True when all three rules give the same order (over the same systems)."""
        return self.mean.systems == self.borda.systems == self.kemeny.systems

    def format(self) -> str:
        """A plain-text leaderboard: one column per rule, then one statement line per rule."""
        cols = [[f"{s} ({v:.4g})" for s, v in zip(r.systems, r.scores)] for r in (self.mean, self.borda)]
        cols.append(list(self.kemeny.systems))
        heads = ["mean", "borda", "kemeny"]
        width = [max(len(h), *(len(c) for c in col)) for h, col in zip(heads, cols)]
        rows = max(len(c) for c in cols)
        lines = ["rank  " + "  ".join(h.ljust(wd) for h, wd in zip(heads, width))]
        for k in range(rows):
            cells = [(col[k] if k < len(col) else "").ljust(wd) for col, wd in zip(cols, width)]
            lines.append(f"{k + 1:>4}  " + "  ".join(cells).rstrip())
        lines += [f"{r.rule}: {r.statement}" for r in self.rankings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def compare(table: ScoreTable, missing: str = "pairwise_half", exact_limit: int = EXACT_LIMIT) -> Comparison:
    """Mean, Borda and Kemeny rankings of ``table`` (``missing`` applies to Borda and Kemeny)."""
    return Comparison(mean=mean_ranking(table), borda=borda(table, missing),
                      kemeny=kemeny(table, missing, exact_limit))
