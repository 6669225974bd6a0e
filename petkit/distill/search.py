"""Compressor's architecture search: a genetic algorithm over student shapes that maximises compute
under a size budget (Shi et al., ASE 2022, `searcher.py`).

    target_params = budget_MB · 1e6 / 4                                   (fp32)
    fitness(g)    = GFLOPs(g) − |target_params − params(g)| · 4 / 1e6     (GFLOPs minus MB off target)

GFLOPs stand in for capacity; the penalty is in MB, so 1 MB off target costs as much as 1 GFLOP.
Costs come from `cost.TransformerShape` (sequence length 514, the code's head count).

    population: `population_size` (50) random genomes, unique by the md5 of their values
    each of `generations` (100):
        until there are population_size children: draw two parents at random;
            with probability `crossover` (0.6): one-point crossover on the genes in sorted key order
            (heads, hidden, intermediate, layers, vocab_size) -> two children
            otherwise: a mutated copy of each parent
        a child equal to a genome in the population is mutated until it is not; all join the population
        keep the `population_size` fittest (elitist truncation: the best never gets worse)

Search space [code]: vocab_size 1000..50000 step 1000, heads {1, 2, 4, 8}, hidden 16..768 step 16,
intermediate 32..3040 step 32, layers 1..12; `search_space(**choices)` narrows any gene.

Paper/code differences and other choices
- Mutation [code, default `mutation="suffix"`]: pick a locus, then resample EVERY gene from the locus
  onward (each to a value other than its current one). The textbook operator changes one gene;
  `mutation="single"` does that. The spec records the GA from the released code only, so the code's
  operator is the default here.
- Gene order: the code's mutation loci index a genome's dict order, which is the search-space order
  for initial genomes and sorted order for crossover children; we use sorted order throughout.
- Restarts: the code runs the whole GA 10 times and keeps the best; `restarts` (default 10) does the same.
- Size guarantee: the fitness trades 1 MB off target for 1 GFLOP, so the fittest genome can sit more than
  5% off the budget (a short run from an unlucky seed ends at 3.3 MB for 3 MB). The code returns it
  anyway; we return the fittest genome of the final population within `tolerance` (5%) of the budget
  (the same genome whenever the fittest is within it) and raise a ConfigError if there is none. A
  budget no shape of the space can come near is refused before searching.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from petkit.core.errors import ConfigError

from .cost import BYTES_PER_PARAM, TransformerShape

GENES = ("heads", "hidden", "intermediate", "layers", "vocab_size")  # sorted: the crossover order
MUTATIONS = ("suffix", "single")
MAX_REDRAWS = 10_000  # mutations of one duplicate before giving up (a space too small to dedupe in)


def search_space(**choices) -> dict[str, tuple[int, ...]]:
    """The code's search space, with any gene narrowed, e.g. `search_space(vocab_size=[1000, 2000])`."""
    space = {"vocab_size": tuple(range(1000, 50001, 1000)), "heads": (1, 2, 4, 8),
             "hidden": tuple(range(16, 769, 16)), "intermediate": tuple(range(32, 3041, 32)),
             "layers": tuple(range(1, 13))}
    for gene, values in choices.items():
        if gene not in space:
            raise ConfigError(f"unknown gene {gene!r}: the search space has {', '.join(sorted(space))}")
        values = tuple(sorted(set(values))) if not isinstance(values, int) else (values,)
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
            raise ConfigError(f"{gene} choices must be positive ints, got {list(values)!r}")
        space[gene] = values
    bad = [(h, a) for h in space["hidden"] for a in space["heads"] if h % a]
    if bad:
        raise ConfigError(f"every hidden choice must be divisible by every heads choice; e.g. hidden {bad[0][0]} "
                          f"with {bad[0][1]} heads is not")
    return space


def fitness(shape: TransformerShape, target_params: float) -> float:
    return shape.gflops() - abs(target_params - shape.params()) * BYTES_PER_PARAM / 1e6


@dataclass
class SearchResult:
    shape: TransformerShape
    fitness: float
    budget_mb: float
    history: list[float] = field(default_factory=list)  # best fitness after each generation, of the restart
                                                         # the shape comes from
    population: list[TransformerShape] = field(default_factory=list)  # its final population, fittest first

    @property
    def size_mb(self) -> float:
        return self.shape.size_mb()

    @property
    def gflops(self) -> float:
        return self.shape.gflops()

    @property
    def size_error(self) -> float:
        """Relative distance of the shape's size from the budget."""
        return abs(self.size_mb - self.budget_mb) / self.budget_mb


class _Genetic:
    """One GA run; genomes are tuples of gene values in GENES order."""

    def __init__(self, space, target_params, seq_len, rng, crossover, mutation):
        self.space, self.target, self.seq_len, self.rng = space, target_params, seq_len, rng
        self.crossover_rate, self.single = crossover, mutation == "single"
        self.scores: dict[tuple, float] = {}

    def shape(self, genome: tuple) -> TransformerShape:
        return TransformerShape(**dict(zip(GENES, genome)), seq_len=self.seq_len)

    def score(self, genome: tuple) -> float:
        if genome not in self.scores:
            self.scores[genome] = fitness(self.shape(genome), self.target)
        return self.scores[genome]

    def mutate(self, genome: tuple) -> tuple:
        locus = self.rng.randint(0, len(GENES) - 1)
        genes = list(genome)
        for x in ([locus] if self.single else range(locus, len(GENES))):
            others = [v for v in self.space[GENES[x]] if v != genes[x]]
            if others:  # a gene narrowed to one value stays
                genes[x] = self.rng.choice(others)
        return tuple(genes)

    def breed(self, p1: tuple, p2: tuple) -> list[tuple]:
        if self.rng.random() < self.crossover_rate:
            cut = self.rng.randint(1, len(GENES) - 1)
            return [p1[:cut] + p2[cut:], p2[:cut] + p1[cut:]]
        return [self.mutate(p1), self.mutate(p2)]

    def add_unique(self, genome: tuple, population: list, hashes: set) -> None:
        for _ in range(MAX_REDRAWS):
            key = _md5(genome)
            if key not in hashes:
                population.append(genome)
                hashes.add(key)
                return
            genome = self.mutate(genome)
        raise ConfigError(f"could not find a genome unlike the {len(population)} in the population after "
                          f"{MAX_REDRAWS} mutations: widen the search space or lower population_size")

    def run(self, population_size: int, generations: int) -> tuple[list[tuple], list[float]]:
        population, hashes = [], set()
        while len(population) < population_size:
            self.add_unique(tuple(self.rng.choice(self.space[g]) for g in GENES), population, hashes)
        history = []
        for _ in range(generations):
            children = []
            while len(children) < population_size:
                children += self.breed(*self.rng.sample(population, 2))
            for child in children:
                self.add_unique(child, population, hashes)
            population = sorted(population, key=self.score, reverse=True)[:population_size]  # stable: seeded ties
            hashes = {_md5(g) for g in population}
            history.append(self.score(population[0]))
        return population, history


def _md5(genome: tuple) -> str:
    return hashlib.md5(",".join(map(str, genome)).encode()).hexdigest()


def _space_size(space: dict) -> int:
    size = 1
    for g in GENES:
        size *= len(space[g])
    return size


def _check_budget(budget_mb: float, space: dict, seq_len: int, tolerance: float) -> None:
    if not isinstance(budget_mb, (int, float)) or isinstance(budget_mb, bool) or not budget_mb > 0:
        raise ConfigError(f"budget_mb must be a positive number of megabytes, got {budget_mb!r}")
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance is a fraction of the budget in (0, 1), got {tolerance!r}")
    # params grow with every gene but heads, so the space's extremes are its smallest and largest values
    smallest = TransformerShape(**{g: min(space[g]) for g in GENES}, seq_len=seq_len).size_mb()
    largest = TransformerShape(**{g: max(space[g]) for g in GENES}, seq_len=seq_len).size_mb()
    if budget_mb * (1 + tolerance) < smallest or budget_mb * (1 - tolerance) > largest:
        raise ConfigError(f"no shape in the search space is within {tolerance:.0%} of {budget_mb} MB: its shapes "
                          f"range from {smallest:.3f} MB to {largest:.1f} MB; pick a budget in that range "
                          f"or widen the search space")


def search_shape(budget_mb: float, *, space: dict | None = None, population_size: int = 50,
                 generations: int = 100, crossover: float = 0.6, mutation: str = "suffix", restarts: int = 10,
                 seed: int = 0, seq_len: int = 514, tolerance: float = 0.05) -> SearchResult:
    """The fittest shape for a `budget_mb` (fp32 MB) budget; deterministic given `seed`."""
    space = space or search_space()
    if mutation not in MUTATIONS:
        raise ConfigError(f"mutation must be one of {MUTATIONS}, got {mutation!r}")
    for name, value, low in (("population_size", population_size, 2), ("generations", generations, 1),
                             ("restarts", restarts, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0 <= crossover <= 1:
        raise ConfigError(f"crossover is a probability in [0, 1], got {crossover!r}")
    _check_budget(budget_mb, space, seq_len, tolerance)
    if _space_size(space) < 2 * population_size:
        raise ConfigError(f"the search space holds {_space_size(space)} shapes, fewer than the {2 * population_size} "
                          f"unique genomes a generation needs (population and children): widen it or lower "
                          f"population_size")
    rng = random.Random(seed)
    target = budget_mb * 1e6 / BYTES_PER_PARAM
    best = None
    for _ in range(restarts):
        ga = _Genetic(space, target, seq_len, rng, crossover, mutation)
        population, history = ga.run(population_size, generations)
        shapes = [ga.shape(g) for g in population]
        feasible = [(g, s) for g, s in zip(population, shapes) if abs(s.size_mb() - budget_mb) <= tolerance * budget_mb]
        if feasible and (best is None or ga.score(feasible[0][0]) > best.fitness):
            best = SearchResult(feasible[0][1], ga.score(feasible[0][0]), budget_mb, history, shapes)
    if best is None:
        raise ConfigError(f"no shape in the final population{'s' if restarts > 1 else ''} is within {tolerance:.0%} of "
                          f"the {budget_mb} MB budget: raise generations or restarts, or widen the search space")
    return best


def random_shapes(n: int, budget_mb: float, tolerance: float = 0.05, *, space: dict | None = None,
                  seed: int = 0, seq_len: int = 514, max_draws: int | None = None) -> list[TransformerShape]:
    """`n` distinct random shapes of the space within `tolerance` of the budget: the search's baseline."""
    space = space or search_space()
    _check_budget(budget_mb, space, seq_len, tolerance)
    rng = random.Random(seed)
    max_draws = max_draws or 5000 * n
    found: dict[tuple, TransformerShape] = {}
    for _ in range(max_draws):
        genome = tuple(rng.choice(space[g]) for g in GENES)
        if genome in found:
            continue
        shape = TransformerShape(**dict(zip(GENES, genome)), seq_len=seq_len)
        if abs(shape.size_mb() - budget_mb) <= tolerance * budget_mb:
            found[genome] = shape
            if len(found) == n:
                return list(found.values())
    raise ConfigError(f"only {len(found)} of {n} random shapes within {tolerance:.0%} of {budget_mb} MB after "
                      f"{max_draws} draws: widen the tolerance or the search space, or ask for fewer")
