"""Configuration dataclasses: one config drives the API, the CLI and the Blender panel.

Each field's docstring (the string after it) doubles as CLI help. The defaults
are the recommended settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from finr3d.errors import InputError

__all__ = ["FieldConfig", "FitConfig", "field_docs"]

Rank = Union[int, Sequence[int]]


@dataclass
class FieldConfig:
    """Architecture of a factorized field."""

    decomposition: str = "cp"
    """Tensor decomposition that combines the per-mode networks: cp, tucker or tt."""

    rank: Rank = 64
    """Rank: an int, or one rank per mode (tucker) / per bond (tt)."""

    backbone: str = "siren"
    """Per-mode network: relu (Fourier features + ReLU), siren, wire (real Gabor) or finer."""

    width: int = 128
    """Hidden width of every per-mode network."""

    depth: int = 2
    """Hidden layers of every per-mode network."""

    omega0: Optional[float] = None
    """Frequency of the first sine layer (siren/finer/wire); None picks one from the sample count per axis."""

    modes: Optional[list] = None
    """Grouping of axes into modes, e.g. [[0], [1], [2]] or [[1, 2], [0]]; None = one mode per axis."""

    channel_factor: bool = True
    """Share the rank across channels with a learned channel factor (else independent per-channel blocks)."""

    basis: Union[int, str] = 0
    """Cosine terms cos(pi k (x+1)/2) read out beside each 1-D mode network's hidden features: 0 = none, 'grid' = one per stored sample of the axis (the factor curves can then hold any values on the stored grid)."""

    def validate(self) -> "FieldConfig":
        from finr3d.backbones import BACKBONES, MAX_BASIS
        from finr3d.decompositions import DECOMPOSITIONS

        if self.decomposition not in DECOMPOSITIONS:
            raise InputError(f"unknown decomposition {self.decomposition!r}; use one of {sorted(DECOMPOSITIONS)}")
        if self.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {self.backbone!r}; use one of {sorted(BACKBONES)}")
        ranks = [self.rank] if isinstance(self.rank, int) else list(self.rank)
        if not ranks or any((not isinstance(r, int)) or isinstance(r, bool) or r < 1 for r in ranks):
            raise InputError(f"rank must be a positive integer (or one per mode), got {self.rank!r}")
        if any(r > 4096 for r in ranks):
            raise InputError(f"rank {max(ranks)} is larger than 4096; use a smaller rank")
        if not 1 <= self.width <= 4096:
            raise InputError(f"width must be between 1 and 4096, got {self.width}")
        if not 0 <= self.depth <= 16:
            raise InputError(f"depth must be between 0 and 16, got {self.depth}")
        if self.basis != "grid" and (isinstance(self.basis, bool) or not isinstance(self.basis, int)
                                     or not 0 <= self.basis <= MAX_BASIS):
            raise InputError(f"basis must be 'grid' or an integer between 0 and {MAX_BASIS}, got {self.basis!r}")
        if self.omega0 is not None and not (0 < self.omega0 < 1e5):
            raise InputError(f"omega0 must be positive, got {self.omega0}")
        return self


@dataclass
class FitConfig:
    """How a field is optimised."""

    steps: Optional[int] = None
    """Optimisation steps; with seconds, whichever budget ends first. Default: 2000 when seconds is also unset."""

    seconds: Optional[float] = None
    """Wall-time budget in seconds for the optimisation (ground-truth preparation is reported separately)."""

    lr: float = 2e-3
    """Adam learning rate at the start; it decays to lr * lr_final by the end of the budget."""

    lr_final: float = 0.05
    """Final learning rate as a fraction of lr (cosine schedule)."""

    warmup: Optional[int] = None
    """Steps of linear learning-rate warm-up (None: 20 from a random start, 100 after a closed-form start, whose good start a full-size first Adam step would shake)."""

    hidden_lr: Optional[float] = None
    """Learning rate of the mode networks' hidden layers as a fraction of lr (None: 1 from a random start, the target's choice after a closed-form one)."""

    batch: Optional[int] = None
    """Samples per axis in each random sub-grid step; None picks from the target (full grid when it is small)."""

    full_grid_every: int = 0
    """Every N steps, train on the whole stored grid (0 = never)."""

    jitter: Optional[bool] = None
    """Continuous jittered sub-grid coordinates instead of stored samples (None: on for SDFs, off for pixels/voxels)."""

    init: str = "auto"
    """Start: closed_form (discrete decomposition of the target distilled into the networks), random, or auto (the target's default)."""

    distill_fraction: Optional[float] = None
    """Share of the budget spent in the closed-form phase before end-to-end refinement: distilling the closed-form factors into the networks, or sweeping CP-ALS for a CP field whose cosine basis covers the grid (None: the target's default)."""

    nested_ranks: bool = False
    """Also train a random rank prefix each step so that every prefix is a good model (rank preview)."""

    eikonal: float = 0.0
    """Weight of the Eikonal term |grad f| = 1 on random points (SDF only)."""

    clip_grad: float = 1.0
    """Gradient-norm clip."""

    target_metric: Optional[float] = None
    """Stop early once the target's main metric (PSNR for signals, IoU for SDFs) reaches this value; on a 3-D volume with no rank given, also fit the Tucker rank the PSNR needs (finr3d.volume.goal_rank)."""

    eval_every: int = 25
    """Steps between evaluations on the validation grid (best-state tracking and rollback)."""

    seed: int = 0
    """Random seed; a fixed seed gives the same result on the CPU."""

    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, cuda or mps."""

    amp: bool = False
    """bf16 autocast on CUDA (ignored on CPU)."""

    compile: bool = False
    """torch.compile the per-mode networks (CUDA only; compile time counts against the budget)."""

    def validate(self) -> "FitConfig":
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0 or self.steps > 10_000_000):
            raise InputError(f"steps must be a non-negative integer (at most 10,000,000), got {self.steps!r}")
        if self.seconds is not None and not (0 <= self.seconds <= 7 * 24 * 3600):
            raise InputError(f"seconds must be between 0 and 604800, got {self.seconds!r}")
        if not (0 < self.lr < 1):
            raise InputError(f"lr must be in (0, 1), got {self.lr}")
        if self.init not in ("auto", "closed_form", "random"):
            raise InputError(f"init must be auto, closed_form or random, got {self.init!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not str(self.device).startswith("cuda:"):
            raise InputError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.batch is not None and self.batch < 2:
            raise InputError(f"batch must be at least 2 samples per axis, got {self.batch}")
        if self.distill_fraction is not None and not 0 <= self.distill_fraction <= 1:
            raise InputError(f"distill_fraction must be in [0, 1], got {self.distill_fraction}")
        if self.hidden_lr is not None and not 0 <= self.hidden_lr <= 10:
            raise InputError(f"hidden_lr must be a fraction of lr between 0 and 10, got {self.hidden_lr}")
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(self.warmup, int)
                                        or not 0 <= self.warmup <= 1_000_000):
            raise InputError(f"warmup must be a non-negative integer number of steps, got {self.warmup!r}")
        return self

    def budget(self) -> tuple[Optional[int], Optional[float]]:
        """The (steps, seconds) budget, with the default applied."""
        if self.steps is None and self.seconds is None:
            return 2000, None
        return self.steps, self.seconds


def field_docs(cls) -> dict[str, str]:
    """Map each dataclass field to the docstring written after it (used for CLI help)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for prev, node in zip(body, body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = str(node.value.value)
    return docs


def replace(config, **changes):
    """``dataclasses.replace`` that ignores None values (unset CLI flags)."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
