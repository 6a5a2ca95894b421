"""fit(): optimise a FactorizedField against a Target.

Every step is a factorized contraction over a random axis-aligned sub-grid:
per axis, a random subset of the stored samples (or jittered continuous
coordinates), so the networks run on ``Σ n_i`` points while the loss sees
``Π n_i`` values. Adam with a cosine schedule; a budget in steps or seconds;
early stop at a target metric; rollback to the best state when the loss spikes,
so a fit never returns a worse model than it had.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
import torch

from finr3d.config import FieldConfig, FitConfig
from finr3d.errors import FitCancelled, InputError
from finr3d.field import FactorizedField
from finr3d.presets import field_settings, fit_settings
from finr3d.sources import load_target
from finr3d.targets import Target

__all__ = ["fit", "fit_field", "Trainer", "resolve_device", "build_field"]

#: Sub-grid size (values) of one training step when the target is larger.
STEP_SAMPLES = 1 << 18
#: Largest validation grid used for best-state tracking.
EVAL_SAMPLES = 1 << 21


def resolve_device(device: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for ``auto``; a clear error for an absent device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return dev


def build_field(target: Target, config: FieldConfig) -> FactorizedField:
    """A field shaped for ``target`` (axes, channels, modes, per-axis frequencies)."""
    if config.modes is None and target.default_modes != [(i,) for i in range(target.ndim)]:
        config = dataclasses.replace(config, modes=[list(m) for m in target.default_modes])
    return FactorizedField(target.ndim, target.channels, config, target_info=target.describe(),
                           samples=target.shape)


def _default_batch(target: Target) -> list[int]:
    total = math.prod(target.shape) * target.channels
    if total <= 2 * STEP_SAMPLES:
        return list(target.shape)
    n = (STEP_SAMPLES / target.channels) ** (1.0 / target.ndim)
    return [min(s, max(2, int(round(n)))) for s in target.shape]


class _Batcher:
    """Random sub-grids: per-axis index subsets or jittered continuous coordinates."""

    def __init__(self, target: Target, batch, jitter: bool, gen: torch.Generator):
        self.target, self.gen, self.jitter = target, gen, jitter
        self.sizes = list(batch)
        self.full = [target.axis_coords(a) for a in range(target.ndim)]

    def coords(self) -> list[torch.Tensor]:
        out = []
        for a, n in enumerate(self.sizes):
            total = self.target.shape[a]
            if n >= total and not self.jitter:
                out.append(self.full[a])
                continue
            if self.jitter:
                # uniform in [-1, 1] with stratification: one sample per stratum
                edges = torch.linspace(-1, 1, n + 1)
                u = torch.rand(n, generator=self.gen)
                c = edges[:-1] + u * (edges[1:] - edges[:-1])
            else:
                idx = torch.randperm(total, generator=self.gen)[:n].sort().values
                c = self.full[a][idx]
            out.append(c)
        return out


def _main_metric(target: Target) -> str:
    return getattr(target, "main_metric", "psnr")


_WARM = False


def _warm_up() -> float:
    """Import what the first optimiser step pulls in (torch.optim loads torch._dynamo: seconds, once per
    process), before a fit's clock starts; returns the seconds it took."""
    global _WARM
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    _WARM = True
    return time.perf_counter() - t0


class Trainer:
    """One fit as named phases over a field's public methods.

    :meth:`run` calls, in order:

    1. :meth:`closed_form_start` -- a discrete decomposition of the target read
       into the networks (an anytime algorithm under a seconds budget), then
       the *distillation* of its factors by gradient steps, or CP-ALS sweeps for
       a field that reads out exactly; a calibrated random start otherwise;
    2. :meth:`refine` -- Adam on random sub-grids, with a *validation*
       (:meth:`validate`) every ``eval_every`` steps that keeps the best state,
       and a *rollback* (:meth:`rollback`) to it when the loss diverges;
    3. :meth:`finish` -- a last validation, never returning worse than the best
       state, and the history.

    Under a seconds budget every phase leaves time for the ones after it: the
    refinement stops when one more step and the final validation would pass
    the budget.
    """

    def __init__(self, field: FactorizedField, target: Target, config: FitConfig,
                 callback: Optional[Callable[[dict], Optional[bool]]] = None):
        self.config = config = dataclasses.replace(config).validate()
        if config.init == "auto":
            config.init = str(target.preset.fit.get("init", "closed_form"))
        self.field, self.target, self.callback = field, target, callback
        self.steps_budget, self.seconds_budget = config.budget()
        self.metric_name = _main_metric(target)
        warmup_seconds = _warm_up()
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.history: dict = {"curve": [], "rollbacks": 0, "metric_name": self.metric_name,
                              "warmup_seconds": warmup_seconds}
        self.t_start = time.perf_counter()
        self.step = 0
        self.stopped = "budget"
        self.validation_seconds = 0.0
        device = field.device
        eval_coords, eval_truth = target.dense(max_samples=EVAL_SAMPLES)
        self.eval_coords = [c.to(device) for c in eval_coords]
        self.eval_truth = eval_truth.to(device)
        self.best_score, self.best_metrics, self.best_state = -math.inf, {}, None
        self.last_validation = None  # (score, metrics) while the field is unchanged since it was validated

    # ----------------------------------------------------------------- clock
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def progress(self) -> float:
        p = 0.0
        if self.steps_budget:
            p = max(p, self.step / self.steps_budget)
        if self.seconds_budget:
            p = max(p, self.elapsed() / self.seconds_budget)
        return min(1.0, p)

    def eta(self, t: float) -> Optional[float]:
        p = self.progress()
        return None if p <= 0 else max(0.0, t / p - t)

    def out_of_budget(self, reserve: float = 0.0) -> bool:
        """The step budget is spent, or the clock plus ``reserve`` seconds passes the seconds budget."""
        if self.steps_budget is not None and self.step >= self.steps_budget:
            return True
        return self.seconds_budget is not None and self.elapsed() + reserve >= self.seconds_budget

    # ------------------------------------------------------------ validation
    def validate(self) -> tuple[float, dict]:
        """The main metric and all cheap metrics on the validation grid."""
        t0 = time.perf_counter()
        field = self.field
        field.eval()
        with torch.no_grad():
            pred = field.forward_grid(self.eval_coords)
            metrics = self.target.metric(pred, self.eval_truth)
            metrics["loss"] = float(self.target.loss(pred, self.eval_truth))
        field.train()
        self.validation_seconds = time.perf_counter() - t0
        self.last_validation = metrics.get(self.metric_name, -metrics["loss"]), metrics
        return self.last_validation

    def keep_if_best(self) -> float:
        """Validate; a curve point; the state is kept when it is the best so far. Returns the score."""
        score, metrics = self.validate()
        self.history["curve"].append({"elapsed": self.elapsed(), "step": self.step, self.metric_name: score})
        if score > self.best_score or self.best_state is None or not math.isfinite(self.best_score):
            self.best_score, self.best_metrics = score, metrics
            self.best_state = copy.deepcopy(self.field.state_dict())
        return score

    def rollback(self) -> None:
        """Restore the best state seen."""
        self.field.load_state_dict(self.best_state)
        self.history["rollbacks"] += 1
        self.last_validation = None

    # ----------------------------------------------------- closed-form start
    def closed_form_start(self) -> None:
        config, target, field = self.config, self.target, self.field
        if config.init != "closed_form":
            _calibrate_random_init(field, target)
            return
        from finr3d.closed_form import closed_form_start, reads_out_exactly

        frac = config.distill_fraction
        if frac is None:
            # a field that reads out exactly spends its closed-form share on CP-ALS sweeps (target.sweep_fraction);
            # one that distils by gradient steps spends the preset's distill_fraction
            frac = float(target.sweep_fraction if reads_out_exactly(field, target) else target.preset.distill_fraction)
        config.distill_fraction = frac
        seconds, deadline = None, None
        if self.seconds_budget is not None:
            seconds = self.seconds_budget * frac
            # the phase ends with room for the refinement's validation and the final one
            deadline = max(0.0, self.seconds_budget * CLOSED_FORM_SHARE - self.elapsed())
        callback = self.callback

        def checkpoint() -> bool:
            """Validate a closed-form readout: True once the target metric is reached."""
            score = self.keep_if_best()
            return config.target_metric is not None and score >= config.target_metric

        info = closed_form_start(
            field, target, seconds=seconds, deadline=deadline,
            steps=None if self.steps_budget is None else int(self.steps_budget * frac),
            seed=config.seed,
            callback=(lambda d: callback(dict(d, eta=self.eta(d["elapsed"])))) if callback else None,
            checkpoint=checkpoint,
        )
        if info.pop("cancelled", False):
            self.stopped = "cancelled"
        if info.pop("target_reached", False):
            self.stopped = "target_metric"
        self.history.update(info)
        if not info.get("als_sweeps"):
            self.last_validation = None  # distilled since the last checkpoint, if any
        # refinement starts from where the distillation ended; the step budget covers both phases
        if self.steps_budget is not None:
            self.step = int(self.steps_budget * frac)

    # ------------------------------------------------------------ refinement
    def _optimizer_groups(self):
        field, config = self.field, self.config
        # the hidden layers of the mode networks can learn at a fraction of the rate (hidden_lr): after a
        # closed-form readout they carry the start, and full-rate Adam steps on them undo it in a few steps
        hidden = [p for n, p in field.named_parameters() if n.startswith("nets.") and ".out." not in n]
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in field.parameters() if id(p) not in hidden_ids]
        if config.hidden_lr is not None:
            hidden_scale = float(config.hidden_lr)
        else:
            hidden_scale = float(self.target.preset.hidden_lr) if config.init == "closed_form" else 1.0
        groups = [{"params": rest, "scale": 1.0}, {"params": hidden, "scale": hidden_scale}]
        return [g for g in groups if g["params"]]

    def refine(self) -> None:
        config, target, field, gen = self.config, self.target, self.field, self.gen
        device = field.device
        if self.last_validation is None:
            self.keep_if_best()
        if self.stopped == "budget" and config.target_metric is not None and self.best_score >= config.target_metric:
            self.stopped = "target_metric"  # the closed-form start already reaches it: no step to take
        if self.stopped != "budget":
            return
        params = list(field.parameters())
        opt = torch.optim.Adam(self._optimizer_groups(), lr=config.lr)
        jitter = config.jitter if config.jitter is not None else bool(target.preset.fit.get("jitter", False))
        batch = [config.batch] * target.ndim if config.batch else _default_batch(target)
        if not jitter:
            batch = [min(b, s) for b, s in zip(batch, target.shape)]
        batcher = _Batcher(target, batch, jitter, gen)
        full_coords = [target.axis_coords(a) for a in range(target.ndim)]
        sample = target.sampler(device)  # on the device where the target can (a copy of its stored grid)
        max_rank = max(field.ranks)
        amp = config.amp and device.type == "cuda"
        if config.compile:
            if device.type == "cuda":
                for net in field.nets:
                    net.compile()  # compiles forward in place; the state dict keeps its names
            else:
                import warnings

                warnings.warn("compile=True is only used on CUDA; fitting uncompiled on the CPU", stacklevel=3)
        warmup = config.warmup if config.warmup is not None else (100 if config.init == "closed_form" else 20)
        warmup = max(1, warmup)
        step0, lr_scale = self.step, 1.0
        loss_ema, loss_floor, last_report, step_seconds = None, float("inf"), -1.0, 0.0
        # one more step, a validation and the final one must still fit in the seconds budget
        while not self.out_of_budget(reserve=step_seconds + 2 * self.validation_seconds):
            t_step = time.perf_counter()
            p = self.progress()
            warm = min(1.0, (self.step - step0 + 1) / warmup)
            lr = config.lr * lr_scale * warm * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * p)))
            for g in opt.param_groups:
                g["lr"] = lr * g["scale"]
            full_step = config.full_grid_every and self.step % config.full_grid_every == 0
            coords = [c.to(device) for c in (full_coords if full_step else batcher.coords())]
            sizes = [len(c) for c in coords]
            truth = sample(coords)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                feats = field.mode_features(coords)
                loss = target.loss(field.grid_from_features(feats, sizes).float(), truth)
                if config.nested_ranks and max_rank > 1:
                    r = int(torch.randint(1, max_rank, (1,), generator=gen))
                    loss = loss + target.loss(field.grid_from_features(feats, sizes, r).float(), truth)
                if config.eikonal > 0:
                    loss = loss + config.eikonal * _eikonal(field, target, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
            opt.step()
            self.step += 1
            self.last_validation = None
            lval = float(loss.detach())
            step_seconds = time.perf_counter() - t_step
            # divergence guard: restore the best state and halve the learning rate
            spiked = loss_ema is not None and self.step > 50 and lval > 20 * max(loss_floor, 1e-12)
            if not math.isfinite(lval) or spiked:
                self.rollback()
                opt = torch.optim.Adam(self._optimizer_groups(), lr=lr)
                lr_scale *= 0.5
                loss_ema = None
                continue
            loss_ema = lval if loss_ema is None else 0.9 * loss_ema + 0.1 * lval
            loss_floor = min(loss_floor, loss_ema)
            last = self.out_of_budget(reserve=step_seconds + 2 * self.validation_seconds)
            if self.step % config.eval_every == 0 or last:
                score = self.keep_if_best()
                if config.target_metric is not None and score >= config.target_metric:
                    self.stopped = "target_metric"
                    return
            t = self.elapsed()
            if self.callback is not None and (t - last_report >= 0.25 or last):
                last_report = t
                info = {"phase": "fit", "step": self.step, "loss": lval, "elapsed": t, "eta": self.eta(t),
                        self.metric_name: self.best_score}
                if self.callback(info) is False:
                    self.stopped = "cancelled"
                    return

    # ---------------------------------------------------------------- finish
    def finish(self) -> FactorizedField:
        """The best state seen (a last validation decides), with the history on ``field.history``."""
        field = self.field
        score, metrics = self.last_validation or self.validate()
        if not (score >= self.best_score) and self.best_state is not None:
            field.load_state_dict(self.best_state)
            score, metrics = self.best_score, self.best_metrics
        self.history.update({
            "steps": self.step, "seconds": self.elapsed(), "stopped": self.stopped, self.metric_name: score,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "fit_config": dict(dataclasses.asdict(self.config)),
            "device": str(field.device),
        })
        field.history = self.history
        return field

    def run(self) -> FactorizedField:
        self.closed_form_start()
        self.refine()
        field = self.finish()
        if self.stopped == "cancelled":
            raise FitCancelled("fit cancelled; the best state so far is on this exception's .field", field=field)
        return field


#: Share of a seconds budget by which the closed-form phase ends (the refinement and validations get the rest).
CLOSED_FORM_SHARE = 0.85


def fit_field(field: FactorizedField, target: Target, config: FitConfig | None = None,
              callback: Optional[Callable[[dict], Optional[bool]]] = None) -> FactorizedField:
    """Optimise ``field`` on ``target`` in place and return it (at its best state): :class:`Trainer` ``.run()``.

    ``callback(info)`` receives a dict (step, loss, elapsed, eta, metric, phase)
    about every 0.25 s; returning ``False`` stops the fit, keeping the best state.
    The history (curve of elapsed/step/metric, timings) is stored on
    ``field.history``.
    """
    return Trainer(field, target, config or FitConfig(), callback).run()


def _attach_detail(field: FactorizedField, target: Target) -> None:
    """Post-fit step: a target with a finer ground truth near the surface (SDFs) codes the residual there as
    ``field.detail`` (finr3d.local_detail), so ``global + detail`` reaches the fine lattice's accuracy."""
    t0 = time.perf_counter()
    detail = target.fit_detail(field) if hasattr(target, "fit_detail") else None
    field.detail = detail
    if detail is not None:
        field.history["detail"] = {**detail.describe(), "seconds": time.perf_counter() - t0}


def _calibrate_random_init(field: FactorizedField, target: Target) -> None:
    """Scale a random init so features have unit RMS and the output matches the target's spread.

    Without this the product of M small features vanishes (CP) or explodes
    (Tucker/TT with large ranks) before the first step.
    """
    coords, values = target.dense(max_samples=1 << 16)
    coords = [c.to(field.device) for c in coords]
    with torch.no_grad():
        feats = field.mode_features(coords)
        for net, f in zip(field.nets, feats):
            rms = float(f.pow(2).mean().sqrt())
            if rms > 0:
                net.out.weight.div_(rms)
                net.out.bias.div_(rms)
        mean = values.reshape(-1, values.shape[-1]).mean(0).to(field.device)
        std = float(values.float().std())
        field.bias.copy_(mean)
        out = field.forward_grid(coords) - field.bias
        cur = float(out.std())
        if cur > 0 and std > 0:
            for blk in field.blocks:
                blk.mixing_parameter().mul_(0.5 * std / cur)


def _eikonal(field: FactorizedField, target: Target, gen: torch.Generator, n: int = 4096) -> torch.Tensor:
    """Mean of ``(|∇f| t - 1)^2`` on random points inside the truncation band.

    SDF fields predict ``sdf / t`` (clamp profile) or ``tanh(sdf / t)`` (tanh profile) with ``t`` the
    truncation in normalized units, so a true distance has ``|∇f| = 1 / t``, respectively
    ``(1 - f^2) / t``; outside the band the target is clamped and the term does not apply.
    """
    x = (torch.rand(n, field.ndim, generator=gen) * 2 - 1).to(field.device).requires_grad_(True)
    f = field.points(x)[:, 0]
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    t = float(getattr(target, "truncation", None) or 1.0)
    norm = g.norm(dim=-1) * t
    if getattr(target, "profile", "clamp") == "tanh":
        norm = norm / (1.0 - f.detach().clamp(-0.99, 0.99) ** 2)
    mask = f.detach().abs() < 0.9 * float(getattr(target, "saturation", 1.0))
    if not mask.any():
        return norm.sum() * 0
    return ((norm[mask] - 1) ** 2).mean()


_FIELD_KEYS = {f.name for f in dataclasses.fields(FieldConfig)}
_FIT_KEYS = {f.name for f in dataclasses.fields(FitConfig)}


def _goal_rank(target: Target, tcfg: FitConfig, field_options: dict) -> Optional[dict]:
    """The higher Tucker rank a 3-D volume needs for its early-stop PSNR goal (``target_metric``), as
    ``finr3d fit --target-psnr`` takes for its file goal (:func:`finr3d.volume.goal_rank`), or None.

    Only without a structure from the caller (decomposition, rank or basis). On a volume that is not low-rank
    the preset's rank cannot reach the goal at all (a CT-like phantom: rank 48 holds 24.4 dB, where a SIREN
    reaches 28.7 dB in 120 s); a goal no Tucker within :data:`finr3d.volume.GOAL_RANKS`' core size can reach
    takes the largest core, which comes closest, with a warning.
    """
    if tcfg.target_metric is None or {"decomposition", "rank", "basis"} & set(field_options):
        return None
    from finr3d.volume import goal_rank

    goal = goal_rank(target, float(tcfg.target_metric))
    if goal is not None and (goal.get("impossible") or not goal["reachable"]):
        import warnings

        warnings.warn(f"target_metric {tcfg.target_metric:g}: {goal['message']}", stacklevel=3)
    return goal


def fit(source, *, kind: str = "auto", callback=None, target_options: Optional[dict] = None,
        field_config: Optional[FieldConfig] = None, fit_config: Optional[FitConfig] = None,
        **options) -> FactorizedField:
    """Fit a factorized field to a file, an array or a Target.

    Parameters
    ----------
    source : path, array or Target
        A mesh (SDF), volume, image or video; see :func:`finr3d.sources.load_target`.
    kind : auto | sdf | volume | image | video
    callback : callable, optional
        Receives progress dicts; returning False stops the fit.
    target_options : dict, optional
        Passed to the target (e.g. ``resolution`` and ``sign`` for meshes).
    **options
        Any :class:`FieldConfig` or :class:`FitConfig` field, e.g.
        ``decomposition="tucker", rank=32, backbone="siren", seconds=60``.

    Returns
    -------
    FactorizedField
        At its best state, with ``field.history`` and ``field.target_info``.
    """
    unknown = set(options) - _FIELD_KEYS - _FIT_KEYS
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(_FIELD_KEYS | _FIT_KEYS)}")
    field_options = {k: v for k, v in options.items() if k in _FIELD_KEYS}
    fcfg = dataclasses.replace(field_config or FieldConfig(), **field_options)
    tcfg = dataclasses.replace(fit_config or FitConfig(), **{k: v for k, v in options.items() if k in _FIT_KEYS})
    fcfg.validate()
    tcfg.validate()
    t0 = time.perf_counter()
    target = load_target(source, kind=kind, **(target_options or {}))
    prep = time.perf_counter() - t0
    preset = target.preset
    if field_config is None:
        # the kind's preset (finr3d.presets) fills what the caller left unset
        defaults = {k: v for k, v in field_settings(preset, target.shape, target.channels).items()
                    if k not in field_options}
        if "rank" in field_options and "decomposition" not in field_options:
            defaults.pop("decomposition", None)  # a rank given for the generic default keeps its meaning
        fcfg = dataclasses.replace(fcfg, **defaults).validate()
    if fit_config is None:
        fit_defaults = {k: v for k, v in fit_settings(preset, fcfg.decomposition).items() if k not in options}
        tcfg = dataclasses.replace(tcfg, **fit_defaults).validate()
    t_goal = time.perf_counter()
    goal = _goal_rank(target, tcfg, field_options) if field_config is None else None
    if goal is not None:
        goal["seconds"] = time.perf_counter() - t_goal  # part of the preparation: a benchmark counts it
        settings = goal["settings"]
        fcfg = dataclasses.replace(fcfg, **{k: v for k, v in settings.items() if k in _FIELD_KEYS}).validate()
        from finr3d.volume import goal_overrides

        tcfg = dataclasses.replace(tcfg, **{k: v for k, v in goal_overrides(settings, options).items()
                                            if k in _FIT_KEYS}).validate()
    device = resolve_device(tcfg.device)
    torch.manual_seed(tcfg.seed)  # the networks' init is part of the seeded result
    field = build_field(target, fcfg).to(device)
    fit_field(field, target, tcfg, callback=callback)
    _attach_detail(field, target)
    field.history["target_seconds"] = prep
    if goal is not None:
        field.history["goal_rank"] = {k: v for k, v in goal.items() if k != "settings"}
    # (a post-fit step on the returned best state, e.g. local detail near an SDF's surface, goes here)
    return field
