"""Rank sweep: the quality-versus-size curve of one fitted field.

Every rank prefix of a field is a model. ``rank_sweep`` measures each prefix's
parameters, file bytes at each quantization, quality against a reference and
decode time, so a user can pick a point on the curve.
"""

from __future__ import annotations

import math
import time

import numpy as np

from finr3d.ranks import power_of_two_ranks

__all__ = ["default_ranks", "rank_sweep", "plot_sweep", "choose_rank", "residual_target", "residual_applies"]


def default_ranks(field) -> list[int]:
    """Powers of two up to the trained rank, plus the trained rank itself."""
    return power_of_two_ranks(field.max_rank)


def rank_sweep(field, reference, *, ranks=None, quantizations=("fp32", "fp16", "int8"), resolution: int = 128,
               callback=None, **eval_options) -> list[dict]:
    """Measure every rank prefix of ``field``.

    Returns one dict per rank: rank, params, bytes_<q> per quantization (the
    bytes :meth:`~finr3d.field.FactorizedField.save` writes; with local detail also
    bytes_<q>_without_detail), the quality
    metrics of :func:`finr3d.evaluate` (SDF fields: meshed at ``resolution`` per
    axis; a prefix with no surface scores IoU 0) and decode_seconds (grid
    evaluation at ``resolution`` per axis for 3-D fields, the stored shape
    otherwise). ``callback({"phase": "measure", "rank", "index", "count"})`` is
    called before each rank.
    """
    from finr3d.evaluation import evaluate

    ranks = list(ranks or default_ranks(field))
    if field.kind == "sdf":
        eval_options = {"resolution": resolution, **eval_options}
    rows = []
    for i, r in enumerate(ranks):
        if callback is not None:
            callback({"phase": "measure", "rank": int(r), "index": i, "count": len(ranks)})
        model = field.truncate(r)
        row = {"rank": int(r), "ranks": list(model.ranks), "params": model.parameter_count()}
        for q in quantizations:
            row[f"bytes_{q}"] = model.file_bytes(quantization=q)  # exactly what save(rank=r) writes
            if getattr(model, "detail", None) is not None:
                row[f"bytes_{q}_without_detail"] = model.file_bytes(quantization=q, detail=False)
        t0 = time.perf_counter()
        shape = [resolution] * model.ndim if field.kind == "sdf" else (field.target_info.get("shape") or resolution)
        model.grid(shape)
        row["decode_seconds"] = time.perf_counter() - t0
        try:
            scores = evaluate(model, reference, **eval_options)
        except RuntimeError:
            if field.kind != "sdf":
                raise
            scores = {"iou": 0.0}  # no surface at this rank prefix: nothing else to score
        row.update({k: float(v) for k, v in scores.items() if isinstance(v, (int, float, np.floating))})
        rows.append(row)
    return rows


def plot_sweep(rows: list[dict], path, *, metric: str, quantizations=("fp32", "fp16", "int8")) -> None:
    """Quality against bytes, one line per quantization, written with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for q in quantizations:
        xs = [row[f"bytes_{q}"] / 1024 for row in rows]
        ys = [row[metric] for row in rows]
        ax.plot(xs, ys, marker="o", label=q)
        for row, x, y in zip(rows, xs, ys):
            if q == quantizations[-1]:
                ax.annotate(f"r{row['rank']}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    if metric.startswith("chamfer"):
        ax.set_yscale("log")
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(title="quantization")
    ax.set_title("rank sweep: quality vs size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rank_path(field, max_points: int = 12) -> list:
    """Candidate rank prefixes from small to full, for automatic rank choice.

    CP and TT: powers of two. Tucker: per-mode ranks need not be equal. Starting
    from rank 1 in every mode, the path repeatedly grows the mode whose next
    core slab adds the most energy per stored value (the core's energy is the
    captured signal energy when the factors are near-orthonormal, as after a
    closed-form start), so the path follows the best core shape for each size.
    """
    if field.config.decomposition != "tucker":
        return default_ranks(field)
    import math

    core = field.blocks[0].core.detach().float().pow(2).sum(dim=-1).cpu()
    full = tuple(core.shape)
    channels = field.channels
    row_cost = [net.out.in_features + 1 for net in field.nets]  # one output row of a mode network per rank
    cur = [1] * len(full)
    path = [tuple(cur)]
    while tuple(cur) != full:
        best, best_gain = None, -1.0
        for m in range(len(full)):
            if cur[m] >= full[m]:
                continue
            step = max(1, cur[m] // 2)  # geometric growth keeps the path short
            nxt = list(cur)
            nxt[m] = min(full[m], cur[m] + step)
            sl_new = tuple(slice(0, r) for r in nxt)
            sl_old = tuple(slice(0, r) for r in cur)
            gain = float(core[sl_new].sum() - core[sl_old].sum())
            cost = (math.prod(nxt) - math.prod(cur)) * channels + (nxt[m] - cur[m]) * row_cost[m]
            if gain / max(cost, 1e-9) > best_gain:
                best, best_gain = nxt, gain / max(cost, 1e-9)
        cur = best
        path.append(tuple(cur))
    if len(path) > max_points:  # keep an even spread, always including the full model
        idx = np.unique(np.round(np.geomspace(1, len(path), max_points)).astype(int) - 1)
        path = [path[i] for i in idx]
        if path[-1] != full:
            path.append(full)
    return path


#: Values (samples x channels) over which a non-SDF reference's proxy error is taken on an evenly spaced index
#: sub-lattice of about this many (:func:`_proxy_error`) instead of on every stored sample.
PROXY_SAMPLES = 1 << 24
#: Quantization steps (field units) that automatic selection tries for compact files.
AUTO_STEPS = (1.25e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
#: Rank prefixes automatic selection tries (the step carries most of the rate; prefixes trim the rest).
AUTO_PREFIXES = 6
#: Bisections of the step between the chosen grid step and its neighbour (the grid is 3x apart): the file
#: then lands near the target or the budget instead of at the grid's next coarser point.
AUTO_REFINE = 4


#: mesh metrics :func:`finr3d.geometry_metrics.chamfer` computes alone (no volumetric IoU: its inside tests took
#: about a third of each evaluation of ``choose_rank`` on bunny)
_SURFACE_METRICS = ("chamfer_l1", "chamfer_l2", "accuracy", "completeness", "hausdorff95", "fscore_0.5", "fscore_1",
                    "normal_consistency")


def _surface_metric(field, ref_mesh, metric: str, *, resolution: int = 256, n_samples: int = 100_000, seed: int = 0,
                    **_) -> float:
    """``evaluate(field, ref_mesh)[metric]`` for a surface metric, without the IoU it does not need."""
    from finr3d.geometry_metrics import chamfer
    from finr3d.meshing import extract_mesh

    return float(chamfer(extract_mesh(field, resolution), ref_mesh, n_samples, seed=seed)[metric])


def _proxy_truth(reference) -> tuple:
    """What :func:`_proxy_error` compares a candidate with, read once per :func:`choose_rank`: ``(axes, truth,
    band)``, the per-axis normalized coordinates (None: the whole stored grid), the reference there
    (``(..., C)`` float32) and, for an SDF, the band mask (|truth| below the profile's saturation, where the
    surface lives; None otherwise)."""
    shape = tuple(getattr(reference, "shape", ()))
    channels = int(getattr(reference, "channels", 1))
    if (getattr(reference, "kind", None) != "sdf" and hasattr(reference, "dense") and shape
            and math.prod(shape) * channels > PROXY_SAMPLES):
        # a large reference: its dense sub-lattice (exact samples for volumes and clips), not three float copies
        # of every sample (a 512^3 CT-like volume's goal fit peaked at 2.8 GB here, each candidate took 5 s)
        coords, truth = reference.dense(max_samples=max(1, PROXY_SAMPLES // channels))
        return [c.cpu().numpy() for c in coords], truth.numpy(), None
    truth = reference.data.detach().cpu().numpy() if hasattr(reference.data, "detach") else np.asarray(reference.data)
    band = None
    if getattr(reference, "kind", None) == "sdf":
        band = np.abs(truth) < 0.999 * float(getattr(reference, "saturation", 1.0))
    return None, truth, band


def _proxy_error(blob: bytes, proxy: tuple) -> float:
    """Cheap stand-in for the metric: mean |error| of the decoded file against :func:`_proxy_truth`'s ``proxy``.

    SDF: over the band; otherwise over every sample compared.
    """
    from finr3d import codec

    axes, truth, band = proxy
    pred = (codec.decode_grid(blob, resolution=list(truth.shape[:-1]), squeeze=False) if axes is None
            else codec.decode_axes(blob, axes, squeeze=False))
    err = np.abs(pred - truth)
    if band is not None:
        return float(err[band].mean()) if band.any() else float(err.mean())
    return float(err.mean())


#: fields on the proxy's Pareto front that :func:`choose_rank` tries under a lattice residual (log-spaced in
#: bytes, the smallest always among them), and then the best one's neighbours on the front
RESIDUAL_CANDIDATES = 5
#: largest lattice (nodes) a residual is tried on: its search holds the truth, a decoded field, the residual,
#: the encoder's lattice and a pass's neighbours and codes, 66 bytes a node at its peak (2.78 GB on a
#: 512 x 512 x 160 CT-like volume), so about 4.4 GB at this size; a 512^3 goal fit keeps its field alone
RESIDUAL_NODES_LIMIT = 1 << 26
#: the residual's squared-error goal keeps this fraction of the target's, for float32 rounding between the
#: encoder's error and the evaluation's
RESIDUAL_SSE_MARGIN = 0.995
#: past this many nodes, the residual's candidates are ranked on a central crop of about this size, and only
#: the best RESIDUAL_FINALISTS are coded on the whole lattice
RESIDUAL_CROP_NODES = 1 << 20
RESIDUAL_FINALISTS = 2
#: ... unless the crop's estimate is over this multiple of the field-only choice (the smoke clip at 40 and
#: 45 dB: the whole-lattice searches added 270 s to the rate-distortion run and lost)
RESIDUAL_SKIP_RATIO = 1.25
#: ... nor a finalist whose estimate is over this multiple of the best one's
RESIDUAL_FINALIST_RATIO = 1.1
#: the level factors of a residual sized to a byte budget (the budget's step bisection takes one setting;
#: within 3 % of the best on neghip at 40 and 45 dB and the best on the CT-like phantom at 40 dB, 37 % over it
#: at 45 dB: a /tmp scan with steps 1.12x apart)
BUDGET_LEVELS = (2.0, 8.0)
#: a quantization step that zeroes every core value (they are in field units, the value range being 1): the
#: constant field among the residual's candidates
CONSTANT_STEP = 1024.0


def residual_target(reference) -> bool:
    """Whether a field of ``reference`` may carry a lattice residual (:mod:`finr3d.lattice_residual`): a
    one-channel volume or clip of at most :data:`RESIDUAL_NODES_LIMIT` nodes."""
    shape = tuple(getattr(reference, "shape", ()))
    return (getattr(reference, "kind", None) == "volume" and int(getattr(reference, "channels", 1)) == 1
            and bool(shape) and math.prod(shape) <= RESIDUAL_NODES_LIMIT)


def residual_applies(field, reference) -> bool:
    """Whether :func:`choose_rank` codes a lattice residual beside ``field``: :func:`residual_target`, and the
    field was fitted to this reference's own lattice."""
    fitted = (getattr(field, "target_info", None) or {}).get("shape")
    return (residual_target(reference) and fitted is not None
            and tuple(int(v) for v in fitted) == tuple(reference.shape))


def _residual_rows(field, reference, front: list, *, target: float | None, budget_bytes: int | None,
                   upto: int | None, to_beat: int | None = None) -> list:
    """Field + lattice residual candidates: for fields on the proxy's front (up to index ``upto``), the
    residual that brings the decoded file to ``target`` dB (or, for a budget, the finest that fits).
    ``to_beat``: the bytes of the field-only choice; on a large lattice, a finalist whose crop estimate is over
    :data:`RESIDUAL_SKIP_RATIO` times that is not coded on the whole lattice."""
    import torch

    from finr3d import codec, compact_io
    from finr3d.lattice_residual import crop_box, fit_lattice_residual, fit_within

    shape = tuple(reference.shape)
    truth = reference.sample_indices([torch.arange(n) for n in shape]).numpy()[..., 0]
    n = truth.size
    pool = [r for r in front[: (len(front) if upto is None else upto + 1)] if r.get("quantization") == "compact"]
    if not pool:
        return []
    bounds = tuple(float(v) for v in reference.value_bounds)
    # the constant field (the smallest prefix at a step that zeroes its core: its bias alone), for volumes whose
    # structure is all local: any factor there only makes the residual harder to predict. Its residual is coded
    # around the low end of the value range (the residual's offset), so an empty background is exactly 0 (on
    # neghip, coding it around the bias cost 12-16 % more bytes)
    smallest = field.truncate(tuple(pool[0]["ranks"]))
    blob = compact_io.encode_steps(smallest, [CONSTANT_STEP])[0]
    pool.insert(0, {"ranks": list(smallest.ranks), "bytes": len(blob), "step": CONSTANT_STEP,
                    "quantization": "compact", "proxy": float("nan"), "_blob": blob, "_constant": True})
    sizes = np.array([r["bytes"] for r in pool], np.float64)
    wanted = np.geomspace(sizes[0], sizes[-1], min(RESIDUAL_CANDIDATES, len(pool)))
    picks = sorted({int(np.argmin(np.abs(np.log(sizes) - math.log(w)))) for w in wanted})
    def offset_of(row, decoded):
        """The residual's offset: the constant field's is coded around the value range's low end."""
        return bounds[0] - float(decoded.flat[0]) if row.get("_constant") else 0.0

    sse_max = (None if target is None else
               RESIDUAL_SSE_MARGIN * n * float(reference.data_range) ** 2 * 10 ** (-float(target) / 10))
    out, tried = [], set()

    hints = {}

    def attempt(i):
        if i in tried or not 0 <= i < len(pool):
            return None
        tried.add(i)
        base = pool[i]
        decoded = codec.decode_grid(base["_blob"], resolution=list(shape), squeeze=False)[..., 0]
        residual = truth - decoded
        model = field.truncate(tuple(base["ranks"]))
        offset = offset_of(base, decoded)
        if target is not None:
            detail = fit_within(residual, sse_max, base=decoded, bounds=bounds, offset=offset, hint=hints.get(i))
            del decoded
        else:
            del decoded
            room = budget_bytes - base["bytes"] - 64  # the section's header and table entry
            if room <= 0:
                return None
            detail = _residual_in(residual, room, lambda r, step: fit_lattice_residual(
                r, step=step, offset=offset, levels=BUDGET_LEVELS))
            if detail is None:
                return None
        model.detail = detail
        blob = compact_io.encode_steps(model, [base["step"]])[0]
        if budget_bytes is not None and len(blob) > budget_bytes:
            return None
        row = {"ranks": list(model.ranks), "bytes": len(blob), "step": base["step"], "quantization": "compact",
               "field_bytes": base["bytes"], "detail": detail.describe(), "proxy": base["proxy"],
               "_blob": blob, "_detail": detail}
        out.append(row)
        return row

    box = crop_box(shape, RESIDUAL_CROP_NODES)
    if target is not None and math.prod(truth[box].shape) < n:
        # a large lattice: rank the candidates by their residual on a central crop, then code the best
        # RESIDUAL_FINALISTS on the whole lattice (each whole search costs seconds per million nodes)
        axes = [reference.axis_coords(a).cpu().numpy()[box[a]] for a in range(len(shape))]
        part = truth[box]
        share = part.size / n
        estimates = {}

        def estimate(i):
            if i in estimates or not 0 <= i < len(pool):
                return
            dec = codec.decode_axes(pool[i]["_blob"], axes, squeeze=False)[..., 0]
            d = fit_within(part - dec, sse_max * share, base=dec, bounds=bounds, offset=offset_of(pool[i], dec))
            estimates[i] = pool[i]["bytes"] + d.nbytes / share
            hints[i] = d  # the whole lattice's search starts from the crop's levels and step

        for i in picks:
            estimate(i)
        first = min(estimates, key=estimates.get)
        estimate(first - 1)
        estimate(first + 1)
        ranked = sorted(estimates, key=estimates.get)
        for i in ranked[:RESIDUAL_FINALISTS]:
            hopeless = to_beat is not None and estimates[i] >= RESIDUAL_SKIP_RATIO * to_beat
            behind = estimates[i] > RESIDUAL_FINALIST_RATIO * estimates[ranked[0]]
            if not (hopeless or behind):
                attempt(i)
        return out
    if math.prod(truth[box].shape) < n:
        # a budget on a large lattice: its step bisection codes the whole lattice a dozen times per field, so
        # only the smallest fields (the constant one first) are tried
        for i in picks[:RESIDUAL_FINALISTS]:
            attempt(i)
        return out
    for i in picks:
        attempt(i)
    if out:
        best = min(out, key=lambda r: r["bytes"]) if target is not None else min(
            out, key=lambda r: r["_detail"].sse)
        i = next(k for k, r in enumerate(pool) if r["bytes"] == best["field_bytes"])
        attempt(i - 1)
        attempt(i + 1)
    return out


def _residual_in(residual, room: int, fit):
    """The finest residual (step bisected on a log scale) whose bytes fit in ``room``, or None."""
    spread = float(np.abs(residual).max())
    if spread == 0.0:
        return fit(residual, 1.0)
    lo, hi = spread * 1e-5, spread * 2.0  # hi: every code 0 or +-1
    best = None
    coarse = fit(residual, hi)
    if coarse.nbytes > room:
        return None
    best = coarse
    for _ in range(10):
        mid = math.sqrt(lo * hi)
        d = fit(residual, mid)
        if d.nbytes <= room:
            best, hi = d, mid
        else:
            lo = mid
    return best


def choose_rank(field, reference, *, budget_bytes: int | None = None, target: float | None = None,
                metric: str | None = None, steps=AUTO_STEPS, quantizations=None, **eval_options) -> dict:
    """Pick rank prefix and quantization step from the field's own rate-quality curve, after one fit.

    Candidates are every prefix on :func:`rank_path` at every step of ``steps``
    (compact files; bytes are the exact ``len(field.encode(...))``). Each is
    ranked by a cheap proxy (the decoded file's mean error on the stored grid,
    near the surface for SDFs); the true metric (Chamfer-L1 or PSNR, on the
    *decoded* file) is measured only on the proxy's Pareto front: once for a
    budget, by bisection for a target (a handful of evaluations, not one per
    candidate). Returns the chosen row (ranks, step, quantization, bytes,
    params, the metric) plus the candidate table. Fields that cannot be stored
    compactly fall back to the version-1 quantizations (``quantizations``).
    """
    from finr3d import codec, compact_io
    from finr3d.field import FactorizedField
    from finr3d.evaluation import evaluate

    if (budget_bytes is None) == (target is None):
        raise ValueError("give exactly one of budget_bytes and target")
    metric = metric or ("chamfer_l1" if field.kind == "sdf" else "psnr")
    lower_better = metric.startswith("chamfer") or metric.startswith("hausdorff")
    rows = []
    proxy = _proxy_truth(reference)
    for prefix in rank_path(field, max_points=AUTO_PREFIXES):
        model = field.truncate(prefix)
        if compact_io.can_compact(model) is None:
            blobs = compact_io.encode_steps(model, steps)
            labels = [(s, "step") for s in steps]
        else:
            qs = quantizations or ("fp16", "int8", "int6")
            blobs = [model.encode(quantization=q) for q in qs]
            labels = [(q, "quantization") for q in qs]
        for blob, (value, how) in zip(blobs, labels):
            if budget_bytes is not None and len(blob) > budget_bytes:
                continue
            row = {"ranks": list(model.ranks), "bytes": len(blob), "proxy": _proxy_error(blob, proxy),
                   "_blob": blob}
            row.update({"step": value, "quantization": "compact"} if how == "step" else {"quantization": value})
            rows.append(row)
    if not rows:
        raise ValueError(f"no rank/quantization fits in {budget_bytes} bytes; the smallest model needs more — "
                         "raise --budget-kb")
    # Pareto front of (bytes up, proxy down)
    front = []
    for r in sorted(rows, key=lambda r: (r["bytes"], r["proxy"])):
        if not front or r["proxy"] < front[-1]["proxy"]:
            front.append(r)

    def measure(row):
        if metric not in row:
            decoded = FactorizedField.from_file(row["_blob"])
            if metric == "psnr" and getattr(reference, "kind", None) == "volume":
                row[metric] = float(reference.evaluate(decoded, ssim=False)["psnr"])  # SSIM is not needed to choose
            elif metric in _SURFACE_METRICS and getattr(reference, "mesh", None) is not None:
                row[metric] = _surface_metric(decoded, reference.mesh, metric, **eval_options)
            else:
                row[metric] = float(evaluate(decoded, reference, **eval_options)[metric])
            row["params"] = decoded.parameter_count()
        return row[metric]

    def ok(row):
        return measure(row) <= target if lower_better else measure(row) >= target

    def candidate(model, step):
        blob = compact_io.encode_steps(model, [step])[0]
        return {"ranks": list(model.ranks), "bytes": len(blob), "proxy": _proxy_error(blob, proxy),
                "_blob": blob, "step": step, "quantization": "compact"}

    def refined(pick, accept, better, worse):
        """Bisect the step (log scale) between ``pick``'s, which ``accept``s, and the neighbouring grid step
        on the side that may not (``worse``); keep the accepted candidate ``better`` prefers."""
        if pick.get("quantization") != "compact":
            return pick
        model = field.truncate(tuple(pick["ranks"]))
        if compact_io.can_compact(model) is not None:
            return pick
        good, bad = pick["step"], worse(pick["step"])
        if bad is None:
            return pick
        best = pick
        for _ in range(AUTO_REFINE):
            mid = math.sqrt(good * bad)
            row = candidate(model, mid)
            if budget_bytes is None or row["bytes"] <= budget_bytes:
                rows.append(row)  # the table lists what fits a budget, every candidate measured for a target
            if accept(row):
                good, best = mid, (row if better(row, best) else best)
            else:
                bad = mid
        return best

    residual = metric == "psnr" and residual_applies(field, reference)
    if budget_bytes is not None:
        pick = front[-1]
        # a finer step of the same prefix, while the file still fits
        finer = lambda step: max((s for s in steps if s < step), default=None)  # noqa: E731
        pick = refined(pick, lambda row: row["bytes"] <= budget_bytes,
                       lambda row, best: row["proxy"] < best["proxy"], finer)
        measure(pick)
        if residual:
            # the same budget split between a smaller field and a lattice residual: the best PSNR wins
            for row in _residual_rows(field, reference, front, target=None, budget_bytes=budget_bytes, upto=None):
                rows.append(row)
                if measure(row) > pick[metric]:
                    pick = row
    else:
        pick = None
        if ok(front[-1]):
            lo, hi = 0, len(front) - 1  # front[hi] meets the target; find the smallest that does
            while lo < hi:
                mid = (lo + hi) // 2
                if ok(front[mid]):
                    hi = mid
                else:
                    lo = mid + 1
            pick = front[hi]
            # a coarser step of the same prefix, while the target still holds: a smaller file
            coarser = lambda step: min((s for s in steps if s > step), default=None)  # noqa: E731
            pick = refined(pick, ok, lambda row, best: row["bytes"] < best["bytes"], coarser)
        if residual:
            # a smaller field and a lattice residual that makes up the rest: the smallest file that holds wins
            upto = None if pick is None else next((i for i, r in enumerate(front) if r["bytes"] >= pick["bytes"]),
                                                  None)
            for row in _residual_rows(field, reference, front, target=target, budget_bytes=None, upto=upto,
                                      to_beat=None if pick is None else pick["bytes"]):
                rows.append(row)
                if (pick is None or row["bytes"] < pick["bytes"]) and ok(row):
                    pick = row
        if pick is None:
            raise ValueError(f"no rank reaches {metric} {target} (best {front[-1][metric]:.4g}); "
                             "fit longer or at a higher rank")
    table = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    chosen = {k: v for k, v in pick.items() if k != "_blob"}
    return {**chosen, "metric": metric, "evaluations": sum(metric in r for r in rows), "table": table}
