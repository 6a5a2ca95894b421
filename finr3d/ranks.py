"""Rank rules shared by every front end (numpy-free: the Blender panel reads a header with it).

A field's rank prefixes are its models (:meth:`finr3d.field.FactorizedField.truncate`).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["largest_rank", "power_of_two_ranks"]


def largest_rank(decomposition: str, ranks: Sequence[int]) -> int:
    """The largest rank a prefix can take: the largest rank, leaving out a TT field's output bond.

    A tensor train's last bond feeds the channel mixing and is never truncated
    (:meth:`finr3d.decompositions.TT.prefix`), so it does not count.
    """
    ranks = [int(r) for r in ranks] or [1]
    if decomposition == "tt" and len(ranks) > 1:
        ranks = ranks[:-1]
    return max(ranks)


def power_of_two_ranks(top: int) -> list[int]:
    """2, 4, 8, ... below ``top``, then ``top``: the prefixes a rank sweep measures by default."""
    ranks, r = [], 2
    while r < top:
        ranks.append(r)
        r *= 2
    return ranks + [int(top)]
