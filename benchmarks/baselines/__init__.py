"""Baselines that finr3d is compared with in ``benchmarks/speed.py``.

Every baseline fits a signal given as a float array in [0, 1], an image
``(H, W, C)`` or a video ``(T, H, W, C)``, within a wall-time budget, and
reports PSNR against training time:

    model = make_baseline("siren")
    curve = model.fit(data, seconds=60)          # [(elapsed_s, psnr_db), ...]
    model.parameter_count(), model.steps
    recon = model.predict_dense()                # (*data.shape[:-1], C), [0, 1] scale

- ``siren``: monolithic SIREN (Sitzmann et al. 2020).
- ``relu_ff``: monolithic ReLU MLP on Gaussian Fourier features (Tancik et al. 2020).
- ``hashgrid``: Instant-NGP multiresolution hash encoding + tiny MLP (Müller et al. 2022), pure PyTorch.
- ``cp_als``, ``cp_als_torch``, ``tucker``, ``tt_svd``: discrete tensor decompositions of the data
  (CP-ALS in numpy and with finr3d's torch sweeps, HOSVD + HOOI, TT-SVD) sized to a parameter budget.

Baselines join :data:`BASELINES` when their class is defined.
"""

from ._base import BASELINES, Baseline, make_baseline
from .hashgrid import HashGridBaseline
from .relu_ff import ReluFFBaseline
from .siren import SirenBaseline
from .tensorly_baselines import CPALSBaseline, CPALSTorchBaseline, TTSVDBaseline, TuckerBaseline

__all__ = ["BASELINES", "Baseline", "make_baseline", "SirenBaseline", "ReluFFBaseline", "HashGridBaseline",
           "CPALSBaseline", "CPALSTorchBaseline", "TuckerBaseline", "TTSVDBaseline"]
