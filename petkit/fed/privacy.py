"""Privacy accounting for client-level DP-FedAvg: Rényi DP of the sampled Gaussian mechanism.

Each round samples a fraction q of the clients and releases their clipped mean plus Gaussian noise of
multiplier z. For integer orders α ≥ 2, one round is (α, ε_α)-RDP with (Mironov, Talwar & Zhang 2019,
Poisson sampling at rate q):

    ε_α = 1/(α−1) · log Σ_{k=0}^{α} C(α,k) (1−q)^{α−k} q^k exp((k²−k) / (2z²))

T rounds compose additively (T·ε_α), and (ε, δ)-DP follows from the conversion of Balle et al. (2020):

    ε = min_α  T·ε_α + log((α−1)/α) − (log δ + log α)/(α−1)

With q = 1 this is the plain Gaussian mechanism, ε_α = α/(2z²). Fixed-size sampling of m of N clients
is accounted as Poisson sampling at q = m/N (the common approximation; say so when reporting).
"""

from __future__ import annotations

import math

from petkit.core.errors import ConfigError

ORDERS = tuple(range(2, 257))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, alpha: int) -> float:
    if not 0 < q <= 1:
        raise ConfigError(f"the sampling rate q must be in (0, 1], got {q}")
    if noise_multiplier <= 0:
        return math.inf
    if q == 1:
        return alpha / (2 * noise_multiplier**2)
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * noise_multiplier**2)
             for k in range(alpha + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def epsilon(q: float, noise_multiplier: float, rounds: int, delta: float) -> tuple[float, int]:
    """(ε, the order α that gives it) for `rounds` rounds at sampling rate q and noise multiplier z."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    best = (math.inf, ORDERS[0])
    for alpha in ORDERS:
        eps = (rounds * rdp_sampled_gaussian(q, noise_multiplier, alpha) + math.log((alpha - 1) / alpha)
               - (math.log(delta) + math.log(alpha)) / (alpha - 1))
        best = min(best, (eps, alpha))
    return best
