"""Normalized coordinates: the one convention every layer shares.

A stored axis of ``n`` samples sits at ``linspace(-1, 1, n)`` in normalized
coordinates (``align_corners=True``): ``-1`` is the first sample, ``+1`` the last.
"""

from __future__ import annotations

import torch

__all__ = ["lattice"]


def lattice(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalized coordinates of ``n`` stored samples: ``linspace(-1, 1, n)``."""
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)
