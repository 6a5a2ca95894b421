"""Rank sweep: the quality-versus-size curve of one fitted field.

Every rank prefix of a field is a model. ``rank_sweep`` measures each prefix's
parameters, file bytes at each quantization, quality against a reference and
decode time, so a user can pick a point on the curve.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["default_ranks", "rank_sweep", "plot_sweep"]


def default_ranks(field) -> list[int]:
    """Powers of two up to the trained rank, plus the trained rank itself."""
    top = max(field.ranks[:-1] if field.config.decomposition == "tt" else field.ranks)
    ranks, r = [], 1
    while r < top:
        if r >= 2:
            ranks.append(r)
        r *= 2
    return ranks + [top]


def rank_sweep(field, reference, *, ranks=None, quantizations=("fp32", "fp16", "int8"), resolution: int = 128,
               **eval_options) -> list[dict]:
    """Measure every rank prefix of ``field``.

    Returns one dict per rank: rank, params, bytes_<q> per quantization,
    the quality metrics of :func:`finr3d.evaluate`, and decode_seconds (grid
    evaluation at ``resolution`` per axis for 3-D fields, the stored shape otherwise).
    """
    from finr3d import __version__, codec
    from finr3d.evaluation import evaluate

    rows = []
    for r in ranks or default_ranks(field):
        model = field.truncate(r)
        header = dict(model.describe(), library_version=__version__, format="finr3d-field")
        tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        row = {"rank": int(r), "ranks": list(model.ranks), "params": model.parameter_count()}
        for q in quantizations:
            row[f"bytes_{q}"] = len(codec.encode(header, tensors, quantization=q, keep_fp32=model.precision_critical()))
        t0 = time.perf_counter()
        shape = [resolution] * model.ndim if field.kind == "sdf" else (field.target_info.get("shape") or resolution)
        model.grid(shape)
        row["decode_seconds"] = time.perf_counter() - t0
        row.update({k: float(v) for k, v in evaluate(model, reference, **eval_options).items()
                    if isinstance(v, (int, float, np.floating))})
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
