"""The standard continual-learning metrics, from the accuracy matrix A[i][j]: accuracy on task j's
test set after training on tasks 0..i (j ≤ i; later tasks are not evaluated).

- last accuracy        mean_j A[T-1][j]                                   (the final model on every task)
- average accuracy     mean_i ( mean_{j≤i} A[i][j] )                      (Rebuffi et al.'s average
                       incremental accuracy: the model after each task, on the tasks it has seen)
- forgetting           mean_{j<T-1} ( max_{j≤i<T-1} A[i][j] − A[T-1][j] ) (Chaudhry et al. 2018)
- backward transfer    mean_{j<T-1} ( A[T-1][j] − A[j][j] )               (Lopez-Paz & Ranzato 2017;
                       negative when later tasks hurt earlier ones)

The same definitions as Avalanche's and PILOT's; written out here (a dozen lines) rather than
importing Avalanche, whose metrics hang off its own training strategies and whose install pulls
torchvision and a stack of plotting and logging packages.
"""

from __future__ import annotations

import math


def _check(matrix: list[list[float]]) -> int:
    n = len(matrix)
    if n == 0 or any(len(row) < i + 1 for i, row in enumerate(matrix)):
        raise ValueError("an accuracy matrix has one row per task trained, row i holding tasks 0..i")
    return n


def last_accuracy(matrix) -> float:
    n = _check(matrix)
    return sum(matrix[n - 1][:n]) / n


def average_accuracy(matrix) -> float:
    n = _check(matrix)
    return sum(sum(matrix[i][: i + 1]) / (i + 1) for i in range(n)) / n


def forgetting(matrix) -> float:
    n = _check(matrix)
    if n < 2:
        return math.nan
    return sum(max(matrix[i][j] for i in range(j, n - 1)) - matrix[n - 1][j] for j in range(n - 1)) / (n - 1)


def backward_transfer(matrix) -> float:
    n = _check(matrix)
    if n < 2:
        return math.nan
    return sum(matrix[n - 1][j] - matrix[j][j] for j in range(n - 1)) / (n - 1)


def summarise(matrix) -> dict[str, float]:
    return {"last": last_accuracy(matrix), "average": average_accuracy(matrix),
            "forgetting": forgetting(matrix), "bwt": backward_transfer(matrix)}
