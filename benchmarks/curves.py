"""Time-quality curves shared by the speed benchmarks (standard library only, so the GPU run can import it)."""

from __future__ import annotations

import math

__all__ = ["running_best", "time_to", "psnr_at"]


def running_best(curve):
    """(time, psnr) points with PSNR replaced by the best so far: every method keeps its best state."""
    out, best = [], -math.inf
    for t, p in sorted(curve):
        best = max(best, float(p))
        out.append((float(t), float(best)))
    return out


def time_to(curve, level: float) -> float:
    """First time a running-best curve reaches ``level``, linearly interpolated; inf if never."""
    prev = None
    for t, p in curve:
        if p >= level:
            if prev is None or p == prev[1]:
                return t
            return prev[0] + (t - prev[0]) * (level - prev[1]) / (p - prev[1])
        prev = (t, p)
    return math.inf


def psnr_at(curve, t: float) -> float:
    """Best PSNR reached by time ``t`` (the last curve point at or before it)."""
    vals = [p for s, p in curve if s <= t + 1e-9]
    return vals[-1] if vals else -math.inf
