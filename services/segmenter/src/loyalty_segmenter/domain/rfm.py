"""RFM scores: quintiles 1-5 over the members with a paid order, 5 best.

A member's score is `1 + 5 * below // (n - 1)`, capped at 5, where `below` is the number of
buyers with a strictly lower value and n the number of buyers (integer arithmetic, the
percent rank in fifths): ties share a score (the lowest of their group), so the 60 % of
members with one order all get f = 1 rather than being split at random. The recompute job does
the same in SQL with `rank()`; a test holds them together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T", int, float)


def quintile_scores(values: Sequence[T]) -> list[int]:
    """Score each value 1-5 by its rank among all values (higher value, higher score)."""
    n = len(values)
    if n == 0:
        return []
    if n == 1:
        return [1]
    ordered = sorted(values)
    return [min(5, 1 + 5 * bisect_left(ordered, v) // (n - 1)) for v in values]
