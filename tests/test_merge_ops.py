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


def test_ties_trims_first_and_weights_the_agreeing_values():
    """density 0.5 keeps the 2 largest of 4 entries per tensor; then the elected sign's values, weighted 2, 1, 1,
    averaged over how many agree (entry by entry in plain Python below)."""
    trimmed = [magnitude_trim(t, 0.5) for t in (A, B, C)]
    stacked = torch.stack(trimmed)
    elected = elect_sign(stacked)
    expected = torch.zeros(2, 2)
    for i in range(2):
        for j in range(2):
            agree = [(w, t[i, j]) for w, t in zip((2.0, 1.0, 1.0), trimmed) if t[i, j] != 0 and t[i, j].sign() == elected[i, j]]
            expected[i, j] = sum(w * v for w, v in agree) / max(1, len(agree))
    torch.testing.assert_close(merge_tensors([A, B, C], [2.0, 1.0, 1.0], "ties", 0.5), expected)
    by_weight = merge_tensors([A, B, C], [2.0, 1.0, 1.0], "ties", 1.0, normalize="weights")
    torch.testing.assert_close(by_weight[0, 0], torch.tensor((2 * 1.0 + 3.0) / 3))  # mergekit's normalize=true


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
