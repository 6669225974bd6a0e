"""petkit.analysis.ranking: mean, Borda and Kemeny aggregation of a systems x criteria score table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petkit.analysis import (
    ScoreTable,
    borda,
    compare,
    kemeny,
    kendall_tau_distance,
    mean_ranking,
    pairwise_matrix,
    total_disagreement,
)
from petkit.analysis.ranking import EXACT_LIMIT
from petkit.core.errors import ConfigError

NAN = math.nan
MODES = ["pairwise_half", "drop_systems", "observed_only"]


def table(rows: dict[str, list], criteria=None, higher_is_better=True) -> ScoreTable:
    criteria = criteria or [f"t{k + 1}" for k in range(len(next(iter(rows.values()))))]
    return ScoreTable(list(rows), criteria, list(rows.values()), higher_is_better)


# --------------------------------------------------------------------------- hand-computed cases


def test_three_by_three_by_hand():
    # t1: A > B > C    0-based average ranks (0 = worst): A 2, B 1, C 0
    # t2: B > A > C                                        A 1, B 2, C 0
    # t3: C > A > B                                        A 1, B 0, C 2
    # Borda = row sums: A 4, B 3, C 2  ->  A > B > C.
    # Pairwise (criteria preferring row over column): A-B 2:1, A-C 2:1, B-C 2:1, so A is the Condorcet
    # winner and A > B > C agrees with every majority; its disagreement is 1 + 1 + 1 = 3 (one dissenting
    # criterion per pair), and any other order flips a majority pair, costing at least 2 - 1 = 1 more.
    t = table({"A": [0.9, 0.6, 0.3], "B": [0.8, 0.7, 0.2], "C": [0.7, 0.5, 0.4]})
    b = borda(t)
    assert b.systems == ("A", "B", "C") and b.scores == (4.0, 3.0, 2.0)
    k = kemeny(t)
    assert k.systems == ("A", "B", "C") and k.exact and k.disagreement == 3.0
    np.testing.assert_array_equal(pairwise_matrix(t), [[0, 2, 2], [1, 0, 2], [1, 1, 0]])
    assert mean_ranking(t).systems == ("A", "B", "C")  # means 0.6, 0.567, 0.533


def test_borda_and_kemeny_differ_and_kemeny_keeps_the_condorcet_winner():
    # Five criteria: three say A > B > C, two say B > C > A.
    # Borda: A = 3*2 + 2*0 = 6, B = 3*1 + 2*2 = 7, C = 0 + 2*1 = 2          ->  B > A > C.
    # Pairwise: A beats B 3:2 and C 3:2 (A is the Condorcet winner), B beats C 5:0.
    # Kemeny cost of A > B > C = W[B,A] + W[C,A] + W[C,B] = 2 + 2 + 0 = 4,
    #             of B > A > C = W[A,B] + W[C,B] + W[C,A] = 3 + 0 + 2 = 5  ->  Kemeny A > B > C.
    # Borda's margin for B comes from B's *large* wins over C (5:0) outweighing its narrow losses to A;
    # Kemeny only counts which way each pair goes, so the Condorcet winner A comes first.
    t = table({"A": [3, 3, 3, 1, 1], "B": [2, 2, 2, 3, 3], "C": [1, 1, 1, 2, 2]})
    b, k = borda(t), kemeny(t)
    assert b.systems == ("B", "A", "C") and b.scores == (7.0, 6.0, 2.0)
    assert k.systems == ("A", "B", "C") and k.disagreement == 4.0
    assert total_disagreement(t, b.systems) == 5.0


def test_readme_counterexample_mean_says_ABC_borda_says_CBA():
    # One metric on a 0-100 scale ranks A > B > C; two metrics on a 0-1 scale rank C > B > A.
    # Mean: A 30.07, B 16.8, C 3.53 (the big scale wins). Borda: A 2+0+0, B 1+1+1, C 0+2+2.
    t = table({"A": [90, 0.1, 0.1], "B": [50, 0.2, 0.2], "C": [10, 0.3, 0.3]})
    c = compare(t)
    assert c.mean.systems == ("A", "B", "C")
    assert c.borda.systems == ("C", "B", "A") and c.borda.scores == (4.0, 3.0, 2.0)
    assert c.kemeny.systems == ("C", "B", "A")
    assert not c.agree


def test_mean_order_changes_under_a_monotone_rescale_but_rank_rules_do_not():
    t = table({"A": [1.0, 0.5, 0.2], "B": [0.0, 0.8, 0.3]})
    t10 = table({"A": [1.0, 5.0, 0.2], "B": [0.0, 8.0, 0.3]})  # t2 multiplied by 10
    assert mean_ranking(t).systems == ("A", "B") and mean_ranking(t10).systems == ("B", "A")
    for rule in (borda, kemeny):
        assert rule(t).systems == rule(t10).systems == ("B", "A")


def test_lower_is_better_criteria_are_negated():
    # accuracy (higher better) and perplexity, memory (lower better)
    scores = {"lora": [0.80, 12.0, 900], "ia3": [0.78, 11.0, 700], "full": [0.82, 15.0, 3000]}
    hib = [True, False, False]
    t = table(scores, ["acc", "ppl", "mem"], hib)
    # acc: full > lora > ia3; ppl: ia3 > lora > full; mem: ia3 > lora > full
    # Borda: ia3 0+2+2 = 4, lora 1+1+1 = 3, full 2+0+0 = 2
    assert borda(t).systems == ("ia3", "lora", "full") and borda(t).scores == (4.0, 3.0, 2.0)
    negated = table({s: [v[0], -v[1], -v[2]] for s, v in scores.items()}, ["acc", "ppl", "mem"])
    for rule in (borda, kemeny, mean_ranking):
        assert rule(t).systems == rule(negated).systems
        assert rule(t).scores == pytest.approx(rule(negated).scores)
    assert table(scores, ["acc", "ppl", "mem"], True).higher_is_better == (True, True, True)
    assert borda(table(scores, ["acc", "ppl", "mem"], True)).systems[0] == "full"


def test_ties_get_average_ranks_not_index_order():
    # t1 ties A and B for first: each gets (2 + 1) / 2 = 1.5, C gets 0. t2: C > B > A.
    t = table({"A": [5, 0], "B": [5, 1], "C": [1, 2]})
    b = borda(t)
    assert dict(zip(b.systems, b.scores)) == {"A": 1.5, "B": 2.5, "C": 2.0}
    assert b.systems == ("B", "C", "A")


# --------------------------------------------------------------------------- missing values


def missing_table():
    # t1: A > B > C; t2: A missing, C > B; t3: B > A > C
    return table({"A": [3, NAN, 0.5], "B": [2, 1, 0.9], "C": [1, 2, 0.1]})


def test_pairwise_half_by_hand():
    # W[i, j] per criterion (pairs with a missing cell: 1/2 each way):
    #   t1: A>B, A>C, B>C      t2: A-B 1/2:1/2, A-C 1/2:1/2, C>B      t3: B>A, A>C, B>C
    # so W = [[0, 1.5, 2.5], [1.5, 0, 2], [0.5, 1, 0]] (A-B split 1.5:1.5).
    # Borda = sum_j W[i, j] = per-criterion points summed: A = 2 + 1 + 1 = 4, B = 1 + 1/2 + 2 = 3.5,
    # C = 0 + 3/2 + 0 = 1.5.
    t = missing_table()
    np.testing.assert_array_equal(pairwise_matrix(t), [[0, 1.5, 2.5], [1.5, 0, 2], [0.5, 1, 0]])
    b = borda(t)
    assert b.systems == ("A", "B", "C") and b.scores == (4.0, 3.5, 1.5)
    assert b.missing == "pairwise_half" and "1/2" in b.missing_note and b.dropped == ()
    # Kemeny: A > B > C costs W[B,A] + W[C,A] + W[C,B] = 1.5 + 0.5 + 1 = 3 and B > A > C costs
    # W[A,B] + W[C,B] + W[C,A] = 1.5 + 1 + 0.5 = 3 too (A-B is split); the tie goes to the Borda order.
    k = kemeny(t)
    assert k.systems == ("A", "B", "C") and k.disagreement == 3.0
    assert total_disagreement(t, ["B", "A", "C"]) == 3.0 and total_disagreement(t, ["A", "C", "B"]) == 4.0
    assert mean_ranking(t).scores == pytest.approx((1.75, 1.3, 3.1 / 3))  # mean over observed cells


def test_drop_systems_by_hand():
    # A misses t2 and is dropped; B vs C: t1 B, t2 C, t3 B -> B 2, C 1.
    t = missing_table()
    for rule in (borda, kemeny):
        r = rule(t, missing="drop_systems")
        assert r.systems == ("B", "C") and r.dropped == ("A",) and "(A)" in r.statement
    assert borda(t, missing="drop_systems").scores == (2.0, 1.0)
    assert total_disagreement(t, ["B", "C"], missing="drop_systems") == 1.0
    with pytest.raises(ConfigError, match="leaves no system"):
        borda(table({"A": [1, NAN], "B": [NAN, 1]}), missing="drop_systems")


def test_observed_only_by_hand():
    # Per criterion: wins among observed / (#observed - 1), averaged over the criteria a system has.
    #   t1 (3 observed): A 2/2, B 1/2, C 0     t2 (B, C): B 0, C 1     t3: A 1/2, B 2/2, C 0
    #   A = (1 + 1/2) / 2 = 0.75, B = (1/2 + 0 + 1) / 3 = 0.5, C = (0 + 1 + 0) / 3 = 1/3
    b = borda(missing_table(), missing="observed_only")
    assert b.systems == ("A", "B", "C") and b.scores == pytest.approx((0.75, 0.5, 1 / 3))
    # Kemeny: unobserved pairs cost nothing; the two 1/2-1/2 pairs of t2 (each counted once whichever
    # way it is ordered) no longer add 2 * 1/2, so the cost is 3 - 1 = 2 for the same optimal orders.
    k = kemeny(missing_table(), missing="observed_only")
    assert k.systems == kemeny(missing_table()).systems and k.disagreement == 2.0
    # A criterion that observed only one system gives it 1/2.
    one = table({"A": [1, 5], "B": [2, NAN]})
    assert dict(zip(*[borda(one, "observed_only").systems, borda(one, "observed_only").scores])) == \
        {"A": 0.25, "B": 1.0}


def test_pairwise_half_equals_plain_borda_when_nothing_is_missing():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(6, 5)).astype(float)
    t = ScoreTable([f"s{i}" for i in range(6)], [f"c{j}" for j in range(5)], x)
    # usual Borda: sum over criteria of 0-based average ranks
    avg_ranks = np.stack([[(col < v).sum() + 0.5 * ((col == v).sum() - 1) for v in col] for col in x.T], axis=1)
    expected = dict(zip(t.systems, avg_ranks.sum(axis=1)))
    for mode in ("pairwise_half", "drop_systems"):
        b = borda(t, missing=mode)
        assert dict(zip(b.systems, b.scores)) == expected
    ob = borda(t, missing="observed_only")  # same order, scores divided by (n - 1) * T
    assert ob.systems == borda(t).systems
    assert ob.scores == pytest.approx([expected[s] / (5 * 5) for s in ob.systems])


def test_tie_breaks_are_deterministic_and_ignore_input_order():
    # All systems tied on Borda points (a Latin square), different pairwise majorities:
    # A beats B 2:1, B beats C 2:1, C beats A 2:1 -> Copeland also ties -> order by name.
    latin = {"C": [1, 3, 2], "A": [3, 2, 1], "B": [2, 1, 3]}
    t = table(latin)
    assert borda(t).systems == ("A", "B", "C")
    assert kemeny(t).systems == ("A", "B", "C")  # three optimal cyclic orders; the Borda-first is kept
    # Borda tie broken by pairwise majority, against name order: A = 2 + 1 + 1 = 4 = B = 0 + 2 + 2,
    # but B beats A on t2 and t3, so B (2 majority wins) comes before A (1).
    t2 = table({"A": [2, 1, 1], "B": [0, 2, 2], "C": [1, 0, 0]})
    assert borda(t2).systems == ("B", "A", "C") and borda(t2).scores == (4.0, 4.0, 1.0)
    # Borda and pairwise majority both tie (B-C split 1.5:1.5 with a tie on t3) -> name.
    t3 = table({"A": [3, 3, 3], "B": [2, 1, 2], "C": [1, 2, 2]})
    assert borda(t3).systems == ("A", "B", "C") and borda(t3).scores[1:] == (1.5, 1.5)
    # Same rows in every order (and columns permuted) -> same result, repeatedly.
    x = {"lora": [0.8, NAN, 3, 3], "dora": [0.8, 12, 3, NAN], "ia3": [0.7, 12, 2, 3], "bitfit": [0.8, 11, 3, 3],
         "full": [NAN, 12, 3, 3]}
    hib = [True, False, True, True]
    ref = compare(ScoreTable(list(x), ["a", "b", "c", "d"], list(x.values()), hib))
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = rng.permutation(list(x))
        cols = rng.permutation(4)
        scores = [[x[s][c] for c in cols] for s in rows]
        got = compare(ScoreTable(list(rows), [["a", "b", "c", "d"][c] for c in cols], scores,
                                 [hib[c] for c in cols]))
        for r_ref, r_got in zip(ref.rankings, got.rankings):
            assert r_got.systems == r_ref.systems
            assert r_got.scores == pytest.approx(r_ref.scores)
    assert compare(ScoreTable(list(x), ["a", "b", "c", "d"], list(x.values()), hib)).format() == ref.format()


def test_scores_equal_at_the_reported_precision_tie():
    # The MiniLM zoo's TREC cell: sherl's and lowbit-lora-fp32's seeds are the same accuracies, but
    # their means were summed in another order and differ in the last bit. Both print 92.8 %.
    noisy = {"sherl": [0.8053333333333333, 0.9279999999999999], "fp32": [0.844, 0.928], "other": [0.9, 0.5]}
    assert noisy["sherl"][1] != noisy["fp32"][1]
    t = ScoreTable(list(noisy), ["sst2", "trec"], list(noisy.values()), decimals=3)
    b = borda(t)
    assert dict(zip(b.systems, b.scores)) == {"other": 2.0 + 0.0, "fp32": 1.0 + 1.5, "sherl": 0.0 + 1.5}
    assert pairwise_matrix(t)[0, 1] == 0.5 and pairwise_matrix(t)[1, 0] == 1.5
    # compared as printed: 0.9285 is 0.92849999... in binary and prints 0.928, so it ties 0.928 too
    assert ScoreTable(["a", "b"], ["t"], [[0.9285], [0.928]], decimals=3).compared[0, 0] == 0.928
    # without decimals the comparison stays exact (one last bit is a win); per-criterion decimals
    assert borda(ScoreTable(list(noisy), ["sst2", "trec"], list(noisy.values()))).scores[1:] == (2.0, 1.0)
    t2 = ScoreTable(list(noisy), ["sst2", "trec"], list(noisy.values()), decimals=[None, 3])
    assert t2.decimals == (None, 3) and borda(t2).scores == b.scores
    # lower-is-better criteria round the same way after negation; the mean rule keeps raw scores
    t3 = ScoreTable(["a", "b"], ["ppl"], [[5.004], [5.001]], higher_is_better=False, decimals=2)
    assert borda(t3).scores == (0.5, 0.5) and mean_ranking(t3).systems == ("b", "a")
    assert t3.subset(["b"]).decimals == (2,)


def test_several_optimal_kemeny_orders_are_reported_as_such():
    # A 3-cycle: A beats B, B beats C, C beats A, each 2:1. The three rotations A>B>C, B>C>A, C>A>B
    # each go against one majority (cost 1 + 1 + 2 = 4); the other three go against two (cost 5).
    cycle = table({"A": [3, 2, 1], "B": [2, 1, 3], "C": [1, 3, 2]})
    k = kemeny(cycle)
    assert k.disagreement == 4.0 and k.optimal_orders == 3 and k.unique is False
    assert [k.position_range(s) for s in "ABC"] == [(0, 2)] * 3  # each takes every place in some rotation
    assert "one of 3 equally optimal orders" in k.statement
    assert k.as_dict()["position_ranges"] == {"A": [0, 2], "B": [0, 2], "C": [0, 2]}
    # D above and E below the cycle: their places are unique, the cycle's are not
    t = table({"D": [9, 9, 9], "A": [3, 2, 1], "B": [2, 1, 3], "C": [1, 3, 2], "E": [0, 0, 0]})
    k = kemeny(t)
    assert k.optimal_orders == 3 and k.position_range("D") == (0, 0) and k.position_range("E") == (4, 4)
    assert {k.position_range(s) for s in "ABC"} == {(1, 3)}
    # one optimal order: unique, and no note in the statement
    k = kemeny(table({"A": [3, 3, 3], "B": [2, 2, 2], "C": [1, 1, 1]}))
    assert k.optimal_orders == 1 and k.unique and k.position_ranges == ((0, 0), (1, 1), (2, 2))
    assert "optimal orders" not in k.statement
    # the approximation does not enumerate: nothing claimed, a system's own position twice
    k = kemeny(cycle, exact_limit=0)
    assert k.optimal_orders is None and k.unique is None and k.position_range(k.systems[1]) == (1, 1)


# --------------------------------------------------------------------------- properties


@st.composite
def tables(draw, max_systems=6, max_criteria=4, allow_missing=True):
    """Small integer scores (so ties are common), random directions, some missing cells; every row and
    column keeps at least one observed cell."""
    n = draw(st.integers(1, max_systems))
    t = draw(st.integers(1, max_criteria))
    cell = st.one_of(st.integers(0, 4).map(float), st.just(NAN)) if allow_missing else st.integers(0, 4).map(float)
    x = np.array(draw(st.lists(st.lists(cell, min_size=t, max_size=t), min_size=n, max_size=n)))
    for i in range(max(n, t)):
        if np.isnan(x[i % n, i % t]):
            x[i % n, i % t] = draw(st.integers(0, 4))
    hib = draw(st.lists(st.booleans(), min_size=t, max_size=t))
    names = draw(st.permutations([f"s{i}" for i in range(n)]))
    return ScoreTable(names, [f"c{j}" for j in range(t)], x, hib)


def brute_force_cost(t: ScoreTable, order, missing: str) -> float:
    """Kendall-tau disagreement computed straight from the scores, independently of pairwise_matrix."""
    x, cost = t.signed, 0.0
    idx = [t.systems.index(s) for s in order]
    for col in x.T:
        for a, b in itertools.combinations(idx, 2):  # a placed above b
            if np.isnan(col[a]) or np.isnan(col[b]):
                cost += 0.5 if missing == "pairwise_half" else 0.0
            elif col[b] > col[a]:
                cost += 1.0
            elif col[b] == col[a]:
                cost += 0.5
    return cost


@settings(max_examples=60, deadline=None)
@given(tables())
def test_exact_kemeny_matches_brute_force(t):
    for missing in ("pairwise_half", "observed_only"):
        k = kemeny(t, missing=missing)
        best = min(brute_force_cost(t, p, missing) for p in itertools.permutations(t.systems))
        assert k.exact and k.disagreement == best
        assert brute_force_cost(t, k.systems, missing) == best == total_disagreement(t, k.systems, missing)
        assert total_disagreement(t, borda(t, missing).systems, missing) >= best
        # the count of optimal orders and each system's position span match the enumeration
        optimal = [p for p in itertools.permutations(t.systems) if brute_force_cost(t, p, missing) == best]
        assert k.optimal_orders == len(optimal)
        for s in t.systems:
            places = [p.index(s) for p in optimal]
            assert k.position_range(s) == (min(places), max(places))
    # the two modes share their optimal orders (ties may resolve differently: each follows its own Borda)
    assert total_disagreement(t, kemeny(t, "observed_only").systems) == kemeny(t).disagreement


STRICTLY_INCREASING = [lambda v: np.exp(v), lambda v: v ** 3 - 5, lambda v: 1000 * v + 7, lambda v: np.log1p(v) / 9,
                       lambda v: -1.0 / (v + 1)]


@settings(max_examples=60, deadline=None)
@given(tables(), st.data())
def test_rank_rules_are_invariant_to_monotone_transforms(t, data):
    j = data.draw(st.integers(0, len(t.criteria) - 1))
    f = data.draw(st.sampled_from(STRICTLY_INCREASING))
    x = t.scores.copy()
    x[:, j] = f(x[:, j])  # NaN stays NaN
    t2 = ScoreTable(t.systems, t.criteria, x, t.higher_is_better)
    modes = MODES if t.observed.all(axis=1).any() else ["pairwise_half", "observed_only"]
    for missing in modes:
        for rule in (borda, kemeny):
            a, b = rule(t, missing), rule(t2, missing)
            assert a.systems == b.systems and a.scores == pytest.approx(b.scores)


@settings(max_examples=60, deadline=None)
@given(tables(allow_missing=False))
def test_condorcet_winner_is_ranked_first_by_kemeny(t):
    w = pairwise_matrix(t)
    winners = [t.systems[i] for i in range(len(t.systems))
               if all(w[i, j] > w[j, i] for j in range(len(t.systems)) if j != i)]
    if winners:
        assert kemeny(t).best == winners[0]


def random_table(rng, n, t, missing_rate=0.0) -> ScoreTable:
    x = rng.integers(0, 6, size=(n, t)).astype(float)
    x[rng.random((n, t)) < missing_rate] = NAN
    x[np.arange(n), np.arange(n) % t] = 1.0  # keep every row and column observed
    return ScoreTable([f"s{i:02d}" for i in range(n)], [f"c{j}" for j in range(t)], x)


def test_kemeny_approximation_beyond_the_exact_limit():
    rng = np.random.default_rng(1)
    for n, limit in [(9, 5), (EXACT_LIMIT + 6, EXACT_LIMIT)]:
        for _ in range(3):
            t = random_table(rng, n, 7, missing_rate=0.15)
            approx = kemeny(t, exact_limit=limit)
            assert approx.exact is False and approx.method.startswith("approximate")
            assert "approximate" in approx.statement
            assert approx.disagreement == total_disagreement(t, approx.systems)
            assert approx.disagreement <= total_disagreement(t, borda(t).systems)
            if n <= 9:
                exact = kemeny(t, exact_limit=n)
                assert exact.exact and exact.disagreement <= approx.disagreement


def test_kendall_tau_distance():
    assert kendall_tau_distance("abcd", "abcd") == 0
    assert kendall_tau_distance("abcd", "dcba") == 6
    assert kendall_tau_distance(["a", "b", "c"], ["b", "a", "c"]) == 1
    assert kendall_tau_distance(["a", "b", "c"], ["c", "a", "b"]) == 2
    with pytest.raises(ConfigError, match="different items"):
        kendall_tau_distance("abc", "abd")
    with pytest.raises(ConfigError, match="twice"):
        kendall_tau_distance("aab", "abb")


# --------------------------------------------------------------------------- robustness (paper, scaled down)


def test_borda_is_more_robust_than_the_mean_to_corrupted_criteria():
    """Colombo et al.'s synthetic check, small: 8 systems with a known true order, 12 criteria each a
    noisy ranking of it (Thurstone: quality + Gaussian noise) reported on its own scale (log-uniform
    1e-2..1e2, so scales differ as between accuracy, perplexity and latency); k criteria are
    corrupted with the reversed true ranking. Mean aggregation follows whichever criteria have the
    largest scale; Borda gives every criterion one ranking's worth of say."""
    n, t_count, seeds = 8, 12, range(8)
    truth = [f"s{i}" for i in range(n)]  # s0 is best
    errors = {"mean": {}, "borda": {}, "kemeny": {}}
    for k in (0, 1, 2, 3):
        per_rule = {r: [] for r in errors}
        for seed in seeds:
            rng = np.random.default_rng(1000 * k + seed)
            quality = np.linspace(1.0, 0.0, n)
            cols = []
            for c in range(t_count):
                rank_score = quality + rng.normal(0, 0.25, n) if c >= k else -quality  # corrupted: reversed
                scale = 10 ** rng.uniform(-2, 2)
                cols.append(scale * rank_score + rng.uniform(-1, 1))
            table_ = ScoreTable(truth, [f"c{c}" for c in range(t_count)], np.stack(cols, axis=1))
            for rule, fn in (("mean", mean_ranking), ("borda", borda), ("kemeny", kemeny)):
                per_rule[rule].append(kendall_tau_distance(fn(table_).systems, truth))
        for rule, by_k in errors.items():
            by_k[k] = float(np.mean(per_rule[rule]))
    overall = {rule: np.mean(list(by_k.values())) for rule, by_k in errors.items()}
    assert overall["borda"] <= overall["mean"], errors
    assert errors["borda"][3] <= errors["mean"][3], errors
    assert overall["kemeny"] <= overall["mean"], errors


# --------------------------------------------------------------------------- construction, output, errors


def test_from_records_and_output():
    records = [
        {"system": "lora", "criterion": "sst2/acc", "score": 0.91},
        {"system": "lora", "criterion": "wikitext/ppl", "score": 21.0},
        {"system": "ia3", "criterion": "sst2/acc", "score": 0.89},
        {"system": "ia3", "criterion": "wikitext/ppl", "score": None},
        {"system": "full", "criterion": "sst2/acc", "score": 0.93},
        {"system": "full", "criterion": "wikitext/ppl", "score": 19.5},
        {"system": "bitfit", "criterion": "sst2/acc", "score": 0.88},
    ]
    t = ScoreTable.from_records(records, higher_is_better={"wikitext/ppl": False})
    assert t.systems == ("lora", "ia3", "full", "bitfit") and t.criteria == ("sst2/acc", "wikitext/ppl")
    assert t.higher_is_better == (True, False) and int((~t.observed).sum()) == 2
    c = compare(t)
    assert c.borda.systems == c.kemeny.systems == ("full", "lora", "ia3", "bitfit")
    text = c.format()
    assert text.splitlines()[0].split() == ["rank", "mean", "borda", "kemeny"]
    assert "Ordered by Borda count over 2 criteria" in text and "exact Kemeny" in text
    assert c.borda.as_dict()["order"] == list(c.borda.systems)
    assert str(c.mean).startswith("Ordered by the mean score (scale-dependent)")
    with pytest.raises(ConfigError, match="two records"):
        ScoreTable.from_records(records + records[:1])
    with pytest.raises(ConfigError, match="unknown criteria"):
        ScoreTable.from_records(records, higher_is_better={"wikitext/pp": False})
    with pytest.raises(ConfigError, match="keys"):
        ScoreTable.from_records([{"system": "a", "score": 1}])


@pytest.mark.parametrize("args, match", [
    (([], ["t"], np.zeros((0, 1))), "empty"),
    ((["a"], [], np.zeros((1, 0))), "empty"),
    ((["a", "b"], ["t"], [[1.0], [2.0], [3.0]]), "shape"),
    ((["a", "b"], ["t", "u"], [[1.0, NAN], [2.0, NAN]]), "criterion 'u' has no observed"),
    ((["a", "b"], ["t", "u"], [[1.0, 2.0], [None, None]]), "system 'b' has no observed"),
    ((["a", "b"], ["t"], [[1.0], [math.inf]]), "finite"),
    ((["a", "b"], ["t"], [[1.0], ["x"]]), "numbers"),
    ((["a", "a"], ["t"], [[1.0], [2.0]]), "duplicate"),
    ((["a", "b"], ["t"], [[1.0], [2.0]], [True, False]), "higher_is_better has 2"),
    ((["a", "b"], ["t"], [[1.0], [2.0]], ["max"]), "True or False"),
    ((["a", "b"], ["t"], [[1.0], [2.0]], True, [1, 2]), "decimals has 2"),
    ((["a", "b"], ["t"], [[1.0], [2.0]], True, -1), "whole numbers"),
    ((["a", "b"], ["t"], [[1.0], [2.0]], True, 0.1), "whole numbers"),
])
def test_bad_tables_raise_one_clear_config_error(args, match):
    with pytest.raises(ConfigError, match=match):
        ScoreTable(*args)
    assert issubclass(ConfigError, ValueError)


def test_bad_arguments_raise_config_error():
    t = missing_table()
    with pytest.raises(ConfigError, match="missing="):
        borda(t, missing="impute")
    with pytest.raises(ConfigError, match="exact_limit"):
        kemeny(t, exact_limit=40)
    with pytest.raises(ConfigError, match="exactly once"):
        total_disagreement(t, ["A", "B"])
