"""Task-vector merging on tensors, against numbers computed by hand."""

from __future__ import annotations

import pytest
import torch

from petkit import ConfigError
from petkit.merge import dare_drop, elect_sign, low_rank, magnitude_trim, merge_tensors

A = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
B = torch.tensor([[3.0, 1.0], [-1.0, 0.2]])
C = torch.tensor([[-1.0, -1.0], [-2.0, 0.4]])


def test_linear_is_the_weighted_sum():
    torch.testing.assert_close(merge_tensors([A, B], [0.5, -1.0]), 0.5 * A - B)


def test_magnitude_trim_keeps_the_largest_entries():
    torch.testing.assert_close(magnitude_trim(A, 0.5), torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
    torch.testing.assert_close(magnitude_trim(A, 1.0), A)
    torch.testing.assert_close(magnitude_trim(A, 0.1), torch.zeros(2, 2))  # ⌊0.4⌋ = 0 entries kept


def test_ties_by_hand():
    """density 1 (no trim), weights 1: per entry, the sign of the sum wins and the agreeing values are averaged.
    (0,0): 1, 3, −1 → sum 3 > 0 → mean(1, 3) = 2;   (0,1): −2, 1, −1 → −2 < 0 → mean(−2, −1) = −1.5;
    (1,0): 0.5, −1, −2 → − → mean(−1, −2) = −1.5;    (1,1): 0, 0.2, 0.4 → + → mean(0.2, 0.4) (0 does not vote) = 0.3."""
    merged = merge_tensors([A, B, C], method="ties", density=1.0)
    torch.testing.assert_close(merged, torch.tensor([[2.0, -1.5], [-1.5, 0.3]]))


# Three task vectors for the density < 1 cases: no two kept entries of one tensor have the same magnitude.
T1 = torch.tensor([[6.0, -1.0], [2.0, -0.5]])
T2 = torch.tensor([[-1.0, 3.0], [-4.0, 0.2]])
T3 = torch.tensor([[-2.0, 0.3], [-1.5, 1.0]])
W = [1.0, 2.0, 0.5]


def test_ties_trims_elects_and_averages_the_agreeing_values_by_hand():
    """density 0.75 keeps the 3 largest |τ| of 4: T1 loses −0.5, T2 loses 0.2, T3 loses 0.3, so per entry
    (values of T1, T2, T3 → sign of their sum → agreeing values weighted 1, 2, 0.5 / how many agree):
    (0,0):  6, −1, −2   → +3 → 1·6 / 1 = 6        (the sign of the count, −1, would give (2·−1 + .5·−2)/2 = −1.5)
    (0,1): −1,  3,  0   → +2 → 2·3 / 1 = 6        (dividing by all 3 inputs would give 2)
    (1,0):  2, −4, −1.5 → −3.5 → (2·−4 + .5·−1.5) / 2 = −4.375
    (1,1):  0,  0,  1   → +1 → .5·1 / 1 = 0.5     (untrimmed: −.5, .2, 1 → (2·.2 + .5·1)/2 = 0.45)"""
    merged = merge_tensors([T1, T2, T3], W, "ties", 0.75)
    torch.testing.assert_close(merged, torch.tensor([[6.0, 6.0], [-4.375, 0.5]]))
    by_weight = merge_tensors([A, B, C], [2.0, 1.0, 1.0], "ties", 1.0, normalize="weights")
    torch.testing.assert_close(by_weight[0, 0], torch.tensor((2 * 1.0 + 3.0) / 3))  # mergekit's normalize=true


# DARE's masks: a generator seeded 33 draws these (kept where rand < density 0.5), one tensor after the other.
DARE_SEED = 33
MASKS = [torch.tensor([[0, 0], [1, 1]]), torch.tensor([[1, 0], [0, 1]]), torch.tensor([[0, 1], [1, 0]])]


def test_the_dare_masks_are_the_ones_typed_here():
    g = torch.Generator().manual_seed(DARE_SEED)
    assert [torch.equal((torch.rand(2, 2, generator=g) < 0.5).long(), m) for m in MASKS] == [True] * 3


def test_dare_linear_and_dare_ties_by_hand():
    """Density 0.5: keep the masked entries and rescale them by 1/(1 − p) = 2:
    T1 → [[0, 0], [4, −1]],   T2 → [[−2, 0], [0, .4]],   T3 → [[0, .6], [−3, 0]].
    dare_linear, weights 1, 2, .5: [[2·−2, .5·.6], [4 + .5·−3, −1 + 2·.4]] = [[−4, .3], [2.5, −.2]].
    dare_ties (sign of the sum of the rescaled values, then the mean of the agreeing ones):
    (0,0): 0, −2, 0 → − → 2·−2 = −4;   (0,1): 0, 0, .6 → + → .5·.6 = .3;
    (1,0): 4, 0, −3 → + → 1·4 / 1 = 4 (dividing by all 3: 1.33);   (1,1): −1, .4, 0 → − → −1."""
    def merge(method):
        return merge_tensors([T1, T2, T3], W, method, 0.5, generator=torch.Generator().manual_seed(DARE_SEED))

    torch.testing.assert_close(merge("dare_linear"), torch.tensor([[-4.0, 0.3], [2.5, -0.2]]))
    torch.testing.assert_close(merge("dare_ties"), torch.tensor([[-4.0, 0.3], [4.0, -1.0]]))


def test_frequency_vote_can_differ_from_the_mass_vote():
    taus = [torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([-5.0])]
    assert elect_sign(torch.stack(taus), "total").item() == -1
    assert elect_sign(torch.stack(taus), "frequency").item() == 1


def test_dare_is_unbiased_and_drops_the_right_fraction():
    tau = torch.randn(64, 64)
    g = torch.Generator().manual_seed(0)
    drops = torch.stack([dare_drop(tau, 0.3, g) for _ in range(2000)])
    assert abs((drops[0] != 0).float().mean().item() - 0.3) < 0.05
    torch.testing.assert_close(drops.mean(0), tau, atol=0.25, rtol=0.1)
    kept = drops[0] != 0
    torch.testing.assert_close(drops[0][kept] / tau[kept], torch.full((int(kept.sum()),), 1 / 0.3))  # rescaled by 1/d


def test_dare_linear_and_ties_with_density_one_are_linear_and_ties():
    torch.testing.assert_close(merge_tensors([A, B], [1.0, 2.0], "dare_linear", 1.0), A + 2 * B)
    torch.testing.assert_close(merge_tensors([A, B, C], None, "dare_ties", 1.0), merge_tensors([A, B, C], None, "ties", 1.0))


def test_low_rank_is_exact_at_full_rank_and_reports_its_error():
    torch.manual_seed(0)
    delta = torch.randn(6, 3) @ torch.randn(3, 5)
    b, a, error = low_rank(delta, 3)
    torch.testing.assert_close(b @ a, delta, atol=1e-5, rtol=1e-5)
    assert error < 1e-6
    b, a, error = low_rank(delta, 1)
    assert error == pytest.approx((torch.linalg.norm(delta - b @ a) / torch.linalg.norm(delta)).item(), rel=1e-5)
    assert 0 < error < 1


@pytest.mark.parametrize("kw,message", [
    ({"method": "ties", "density": -0.2}, r"ties needs a density in \(0, 1\]"),
    ({"method": "dare_linear", "density": 1.5}, r"dare_linear needs a density in \(0, 1\]"),
    ({"method": "linear", "density": 0.5}, "linear merging keeps every entry: drop density"),
    ({"method": "average"}, "merge method must be one of linear, ties"),
    ({"weights": [1.0]}, "1 weights for 2 inputs: give one weight per input"),
    ({"weights": [1.0, float("nan")]}, "weights must be finite numbers"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ConfigError, match=message):
        merge_tensors([A, B], **kw)


def test_shapes_must_match():
    with pytest.raises(ConfigError, match="different shapes cannot be merged"):
        merge_tensors([A, torch.zeros(3, 2)])
