"""Time-quality curves and JSON output shared by the speed benchmarks (numpy only: the GPU run imports it)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["running_best", "time_to", "psnr_at", "jsonable"]


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


def jsonable(obj):
    """``obj`` as JSON values: numpy scalars to Python, NaN/Inf to None, anything else unknown to its str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
