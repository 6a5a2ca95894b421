"""The baseline interface and the training loop the neural baselines share."""

from __future__ import annotations

import math
import time
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["BASELINES", "Baseline", "NeuralBaseline", "make_baseline", "check_data", "psnr_from_mse"]

BASELINES: dict[str, type["Baseline"]] = {}

#: Pixels in the fixed random subset on which neural baselines are scored during training.
EVAL_SAMPLES = 1 << 16
#: Points per chunk when a neural baseline is evaluated on the whole grid.
PREDICT_CHUNK = 1 << 15

Curve = list[tuple[float, float]]
Callback = Optional[Callable[[dict], Optional[bool]]]


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of signals in [0, 1]: ``10 log10(1 / MSE)``."""
    return 10.0 * math.log10(1.0 / max(float(mse), 1e-20))


def check_data(data) -> np.ndarray:
    """A float32 ``(H, W, C)`` image, ``(T, H, W, C)`` video or volume, or ``(T, Z, Y, X, C)`` clip in [0, 1]."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        data = data.astype(np.float32) / 255.0
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim not in (3, 4, 5) or data.shape[-1] > 4:
        raise ValueError(f"expected an (H, W, C) image, a (T, H, W, C) video or volume, or a (T, Z, Y, X, C) "
                         f"clip, got shape {data.shape}")
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise ValueError("data values must be finite and in [0, 1]")
    return data


def make_baseline(name: str, **options) -> "Baseline":
    """A baseline by name (see :data:`BASELINES`), with its paper's defaults unless overridden."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; use one of {sorted(BASELINES)}")
    return BASELINES[name](**options)


class Baseline:
    """A method that fits an array within a time budget and reports PSNR against time.

    Attributes
    ----------
    steps : int
        Optimisation steps (or ALS/HOOI sweeps) taken by the last fit.
    curve : list of (elapsed seconds, PSNR dB)
        Quality during the last fit; time counts the method's own work only.
    """

    name: ClassVar[str]
    #: short description with the reference, for reports
    reference: ClassVar[str] = ""

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            BASELINES[name] = cls

    def __init__(self, *, seed: int = 0):
        self.seed = int(seed)
        self.steps = 0
        self.curve: Curve = []
        self.shape: tuple[int, ...] = ()

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        """Fit ``data`` for at most ``seconds``; returns ``[(elapsed, psnr), ...]``.

        ``callback(info)`` gets ``{"elapsed", "step", "psnr"}`` at every curve
        point; returning ``False`` stops the fit.
        """
        raise NotImplementedError

    def parameter_count(self) -> int:
        raise NotImplementedError

    def predict_dense(self, shape=None) -> np.ndarray:
        """The fitted signal on its full grid, ``(*spatial, C)`` float32 in data units (not clipped)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-ready settings of this baseline, for reports."""
        return {}

    def _report(self, callback: Callback, elapsed: float, psnr: float) -> bool:
        self.curve.append((float(elapsed), float(psnr)))
        if callback is not None:
            return callback({"elapsed": elapsed, "step": self.steps, "psnr": psnr}) is not False
        return True


class NeuralBaseline(Baseline):
    """A coordinate network trained with Adam on random pixel batches of the signal.

    Subclasses build the network and choose coordinate and value ranges.
    Training time excludes the periodic scoring on a fixed random subset of
    :data:`EVAL_SAMPLES` pixels, so that a baseline is not charged for the
    benchmark's own bookkeeping.
    """

    #: coordinates fed to the network: each axis spans [lo, hi]
    coord_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    #: the network is trained to output data * (hi - lo) + lo
    value_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, *, lr: float, batch: Optional[int] = None, betas=(0.9, 0.999), eps: float = 1e-8,
                 seed: int = 0, device: str = "cpu"):
        super().__init__(seed=seed)
        self.lr, self.batch, self.betas, self.eps = float(lr), batch, tuple(betas), float(eps)
        self.device = torch.device(device)
        self.model: Optional[nn.Module] = None

    # --- what a subclass provides
    def build(self, in_dim: int, out_dim: int, shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": list(model.parameters())}]

    def default_batch(self, shape: tuple[int, ...]) -> int:
        """Pixels per step when ``batch`` is None."""
        return min(math.prod(shape), 1 << 16)

    # --- shared machinery
    def coords(self, flat_index: torch.Tensor) -> torch.Tensor:
        """Normalized coordinates (P, d) of flat pixel indices, each axis spanning ``coord_range``."""
        lo, hi = self.coord_range
        out = []
        rem = flat_index
        for n in reversed(self.shape):
            i = rem % n
            rem = rem // n
            out.append(lo + (hi - lo) * i.to(torch.float32) / max(n - 1, 1))
        return torch.stack(out[::-1], dim=-1)

    def _to_model(self, v: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return v * (hi - lo) + lo

    def _from_model(self, v: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return (v - lo) / (hi - lo)

    @torch.no_grad()
    def _score(self, idx: torch.Tensor, truth: torch.Tensor) -> float:
        self.model.eval()
        pred = torch.cat([self.model(self.coords(idx[s:s + PREDICT_CHUNK]).to(self.device)).cpu()
                          for s in range(0, len(idx), PREDICT_CHUNK)])
        self.model.train()
        pred = self._from_model(pred).clamp(0, 1)
        return psnr_from_mse(float(torch.mean((pred - truth) ** 2)))

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        data = check_data(data)
        self.shape, channels = tuple(data.shape[:-1]), data.shape[-1]
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.model = self.build(len(self.shape), channels, self.shape).to(self.device)
        values = torch.from_numpy(data.reshape(-1, channels))
        n = values.shape[0]
        eval_idx = torch.randperm(n, generator=gen)[:EVAL_SAMPLES] if n > EVAL_SAMPLES else torch.arange(n)
        eval_truth = values[eval_idx]
        batch = self.batch or self.default_batch(self.shape)
        full = batch >= n
        if full:  # the whole signal every step, as the papers do for images
            all_x = self.coords(torch.arange(n)).to(self.device)
            all_y = self._to_model(values).to(self.device)
        opt = torch.optim.Adam(self.param_groups(self.model), lr=self.lr, betas=self.betas, eps=self.eps)
        self.steps, self.curve = 0, []
        self._report(None, 0.0, self._score(eval_idx, eval_truth))
        train, next_eval = 0.0, 0.05
        while train < seconds:
            t0 = time.perf_counter()
            if full:
                x, y = all_x, all_y
            else:
                idx = torch.randint(n, (batch,), generator=gen)
                x, y = self.coords(idx).to(self.device), self._to_model(values[idx]).to(self.device)
            loss = torch.mean((self.model(x) - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.steps += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            train += time.perf_counter() - t0
            if train >= next_eval or train >= seconds:
                t_eval = time.perf_counter()
                keep_going = self._report(callback, train, self._score(eval_idx, eval_truth))
                cost = time.perf_counter() - t_eval
                # dense early, then every 2% of the budget (enough points to interpolate time-to-PSNR),
                # but never spending more wall time on scoring than half the training time
                next_eval = train + max(min(max(0.05, 0.25 * train), seconds / 50), 2 * cost)
                if not keep_going:
                    break
        return self.curve

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def predict_dense(self, shape=None) -> np.ndarray:
        n = math.prod(self.shape)
        self.model.eval()
        out = []
        for s in range(0, n, PREDICT_CHUNK):
            idx = torch.arange(s, min(n, s + PREDICT_CHUNK))
            out.append(self._from_model(self.model(self.coords(idx).to(self.device))).cpu())
        self.model.train()
        return torch.cat(out).reshape(*self.shape, -1).numpy()
