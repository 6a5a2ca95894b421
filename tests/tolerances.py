"""Tolerances for comparing two float32 evaluations of the same contraction.

Two evaluations of one float32 expression that sum in different orders (chunked
vs whole, a truncated copy vs a rank argument, the CPU vs the CUDA build of
torch, MKL vs another BLAS) do not agree to the bit. The standard bound for a
recursive sum of ``n`` terms (Higham, *Accuracy and Stability of Numerical
Algorithms*, §4.2) is ``|error| <= (n - 1) u Σ|x_i|`` with ``u = eps / 2``, so two
orders differ by at most about ``n · eps · Σ|x_i|``. The tests use the magnitude
of the result (``max |reference|``) for ``Σ|x_i|`` and count ``n`` as the
additions along the longest accumulation path of the computation: a mode
network's last linear layer (its hidden width plus cosine terms), the products
over the modes and the sum over the rank. A tolerance built this way scales with
the values compared, which a fixed ``rtol=1e-5`` does not (values near 20 from
a rank-6 field differ by 1.5e-5 on the CUDA build of torch 2.13).
"""

from __future__ import annotations

import numpy as np
import torch

EPS32 = float(np.finfo(np.float32).eps)


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def contraction_atol(reference, terms: int) -> float:
    """``terms · eps32 · max|reference|``: how far two summation orders may disagree."""
    ref = _array(reference)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return terms * EPS32 * max(scale, np.finfo(np.float32).tiny)


def field_terms(field) -> int:
    """Additions along the longest accumulation path of ``field``'s contraction (see the module docstring)."""
    widest = max(net.out.in_features for net in field.nets)
    return widest + len(field.nets) + max(field.ranks) * max(1, field.channels)


def assert_float32_close(actual, reference, terms: int) -> None:
    """``actual`` equals ``reference`` within the float32 summation bound for ``terms`` additions."""
    a, r = _array(actual), _array(reference)
    assert a.shape == r.shape, (a.shape, r.shape)
    np.testing.assert_allclose(a, r, rtol=0, atol=contraction_atol(r, terms))
