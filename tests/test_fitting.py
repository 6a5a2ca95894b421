"""fit(): a PSNR bar on a small image, determinism, budgets, callbacks, guards."""

import math

import numpy as np
import pytest
import torch

import finr3d
import finr3d.fitting
from finr3d.config import FieldConfig, FitConfig
from finr3d.errors import FitCancelled, InputError
from finr3d.targets import ImageTarget
from finr3d.volume import VolumeTarget
from tolerances import assert_float32_close


def smooth_image(h=48, w=40, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    chans = []
    for c in range(channels):
        a, b, p = rng.uniform(2, 6, 3)
        chans.append(0.5 + 0.35 * np.sin(a * x + p) * np.cos(b * y - p) + 0.1 * x * y)
    return np.clip(np.stack(chans, -1), 0, 1).astype(np.float32)


@pytest.mark.parametrize("decomposition", ["cp", "tucker", "tt"])
def test_fit_reaches_psnr_bar_on_small_image(decomposition):
    target = ImageTarget(smooth_image())
    field = finr3d.fit(target, decomposition=decomposition, rank=16, width=32, steps=300, seed=0)
    assert field.history["psnr"] > 30.0, field.history["psnr"]
    scores = target.evaluate(field)
    assert scores["psnr"] > 30.0 and scores["ssim"] > 0.9


@pytest.mark.parametrize("backbone", ["relu", "siren", "wire", "finer"])
def test_every_backbone_learns(backbone):
    target = ImageTarget(smooth_image(32, 32, 1))
    field = finr3d.fit(target, decomposition="cp", rank=8, width=32, backbone=backbone, steps=150, seed=0)
    assert field.history["psnr"] > 22.0, (backbone, field.history["psnr"])


def test_closed_form_start_beats_random_at_equal_steps():
    target = ImageTarget(smooth_image())
    cf = finr3d.fit(target, decomposition="tucker", rank=12, width=32, steps=120, init="closed_form", seed=0)
    rnd = finr3d.fit(target, decomposition="tucker", rank=12, width=32, steps=120, init="random", seed=0)
    assert cf.history["psnr"] > rnd.history["psnr"]


def test_cp_als_of_an_image_is_near_its_truncated_svd():
    """The channel-mean SVD pairs row and column factors: 4 sweeps land near the rank-r optimum."""
    from finr3d.closed_form import cp_als

    img = torch.from_numpy(smooth_image(40, 36)) + 0.05 * torch.rand(40, 36, 3, generator=torch.Generator().manual_seed(0))
    x = img - img.mean()
    (a, b), w = cp_als(x, 6)
    approx = torch.einsum("yr,xr,rc->yxc", a, b, w)
    err = float((approx - x).norm() / x.norm())
    # per-channel truncated SVDs at rank 6 (3x the parameters of one colour per component) bound it from below
    best = sum(float(torch.linalg.svdvals(x[..., c])[6:].pow(2).sum()) for c in range(3)) ** 0.5 / float(x.norm())
    assert err < best * 1.6 + 1e-3, (err, best)
    assert torch.all(w.norm(dim=1)[:-1] >= w.norm(dim=1)[1:] - 1e-6)  # sorted by weight
    # a rank above the image's matrix rank (a small image at the default rank 256): padded, still exact-ish
    small = x[:10, :9]
    (a, b), w = cp_als(small, 16)
    assert a.shape == (10, 16) and b.shape == (9, 16) and torch.isfinite(w).all()
    approx = torch.einsum("yr,xr,rc->yxc", a, b, w)
    assert float((approx - small).norm() / small.norm()) < 0.05


def test_all_distillation_budget_skips_refinement_and_stays_good():
    target = ImageTarget(smooth_image())
    field = finr3d.fit(target, decomposition="tucker", rank=12, width=32, steps=150, init="closed_form",
                       distill_fraction=1.0, seed=0)
    assert field.history["distill_steps"] == 150
    assert field.history["psnr"] > 25.0, field.history["psnr"]


def test_fixed_seed_is_deterministic_on_cpu():
    target = ImageTarget(smooth_image(24, 20))
    a = finr3d.fit(target, rank=8, width=16, steps=40, seed=3, device="cpu")
    b = finr3d.fit(target, rank=8, width=16, steps=40, seed=3, device="cpu")
    c = finr3d.fit(target, rank=8, width=16, steps=40, seed=4, device="cpu")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.bias, c.bias) or not torch.equal(a.nets[0].out.weight, c.nets[0].out.weight)


def test_step_budget_and_callback_progress():
    target = ImageTarget(smooth_image(24, 20))
    seen = []
    field = finr3d.fit(target, rank=4, width=16, steps=30, seed=0, eval_every=5,
                       callback=lambda info: seen.append(info))
    assert field.history["steps"] == 30
    assert seen and seen[-1]["step"] == 30
    assert all({"step", "loss", "elapsed", "eta"} <= set(s) for s in seen if s.get("phase") == "fit")


def test_seconds_budget_is_respected(fake_clock):
    tick = 0.002
    fake_clock(tick)  # every clock read costs 2 ms: the budget logic is tested, not this machine's speed
    target = ImageTarget(smooth_image(24, 20))
    field = finr3d.fit(target, rank=4, width=16, seconds=1.0, seed=0)
    h = field.history
    assert h["stopped"] == "budget" and h["steps"] > 0
    assert h["seconds"] <= 1.0 + 20 * tick  # it stops at the first clock read past the budget, plus the readout


def test_early_stop_at_target_metric():
    target = ImageTarget(smooth_image(24, 20))
    field = finr3d.fit(target, rank=8, width=16, steps=2000, seed=0, target_metric=22.0, eval_every=5)
    assert field.history["stopped"] == "target_metric"
    assert field.history["steps"] < 2000
    assert field.history["psnr"] >= 22.0


def test_a_start_that_already_reaches_the_target_metric_takes_no_step():
    # a rank-2 volume: the HOSVD start of the volume preset is near exact, far over 30 dB
    from finr3d.volume import VolumeTarget

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 18, 16)], indexing="ij")
    target = VolumeTarget((np.exp(-(x**2 + y**2)) * np.cos(z)).astype(np.float32))
    field = finr3d.fit(target, steps=500, seed=0, target_metric=30.0)  # the preset width: its readout holds it
    h = field.history
    assert h["stopped"] == "target_metric" and h["steps"] == 0 and h["psnr"] >= 30.0
    assert len(h["curve"]) == 1  # the start's validation, and no refinement after it


def test_cancel_via_callback_keeps_best_state():
    target = ImageTarget(smooth_image(24, 20))
    with pytest.raises(FitCancelled) as info:
        finr3d.fit(target, rank=4, width=16, steps=500, seed=0, eval_every=5,
                   callback=lambda i: i.get("step", 0) < 20)
    assert info.value.field is not None
    assert math.isfinite(info.value.field.history["psnr"])


def test_divergence_rolls_back_and_never_returns_worse():
    """A learning rate that blows up must not leave a model worse than the best seen."""
    target = ImageTarget(smooth_image(24, 20))
    field = finr3d.fit(target, rank=8, width=16, steps=150, lr=0.5, seed=0, eval_every=5, init="random")
    assert field.history["rollbacks"] >= 1  # lr=0.5 diverges on this image: the guard must have fired
    curve = [c["psnr"] for c in field.history["curve"]]
    assert min(curve) < max(curve) - 10  # it did get worse before the rollback ...
    assert field.history["psnr"] >= max(curve) - 1e-6  # ... and the result is the best state seen
    assert math.isfinite(field.history["psnr"])


def test_nested_ranks_make_prefixes_better():
    target = ImageTarget(smooth_image())
    plain = finr3d.fit(target, decomposition="cp", rank=16, width=32, steps=250, seed=0, init="random")
    nested = finr3d.fit(target, decomposition="cp", rank=16, width=32, steps=250, seed=0, init="random",
                        nested_ranks=True)
    assert target.evaluate(nested, rank=4)["psnr"] > target.evaluate(plain, rank=4)["psnr"]


def test_volume_fit_and_grouped_modes():
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij")
    vol = np.exp(-4 * (x**2 + 0.5 * y**2 + 2 * z**2)).astype(np.float32)
    target = VolumeTarget(vol)
    field = finr3d.fit(target, decomposition="tucker", rank=6, width=32, steps=200, modes=[[1, 2], [0]], seed=0)
    assert field.history["psnr"] > 28


def test_fit_rejects_bad_options():
    target = ImageTarget(smooth_image(8, 8))
    with pytest.raises(InputError, match="unknown option"):
        finr3d.fit(target, rnak=4)
    with pytest.raises(InputError, match="rank"):
        finr3d.fit(target, rank=0)
    with pytest.raises(InputError, match="steps"):
        finr3d.fit(target, steps=-1)
    with pytest.raises(InputError, match="device"):
        finr3d.fit(target, device="tpu")
    with pytest.raises(InputError, match="warmup"):
        finr3d.fit(target, warmup=-3)
    with pytest.raises(InputError, match="distill_fraction"):
        finr3d.fit(target, distill_fraction=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            finr3d.fit(target, device="cuda", steps=1)


@pytest.mark.gpu
def test_fit_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    target = ImageTarget(smooth_image())
    field = finr3d.fit(target, rank=16, width=32, steps=200, device="cuda", amp=True)
    assert field.device.type == "cuda" and field.history["psnr"] > 25


def test_gpu_options_are_safe_on_cpu():
    """amp and compile are CUDA options; on the CPU they must not change the result or fail."""
    target = ImageTarget(smooth_image(16, 12))
    plain = finr3d.fit(target, rank=4, width=16, steps=10, seed=1, device="cpu")
    with pytest.warns(UserWarning, match="only used on CUDA"):
        gpu_opts = finr3d.fit(target, rank=4, width=16, steps=10, seed=1, device="cpu", amp=True, compile=True)
    for (k, a), (_, b) in zip(plain.state_dict().items(), gpu_opts.state_dict().items()):
        assert torch.equal(a, b), k


def test_resolve_device_auto_picks_what_exists():
    from finr3d.fitting import resolve_device

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if mps else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_column_energies_follow_the_core_and_have_mean_one():
    """Distillation weights: HOSVD columns come out in decreasing energy, floored, mean 1."""
    from finr3d.closed_form import column_energies, discrete_decomposition
    from finr3d.config import FieldConfig
    from finr3d.field import FactorizedField

    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(n, 3, generator=gen) for n in (12, 10, 8)]
    x = torch.einsum("ar,br,cr->abc", *factors)[..., None] * torch.tensor([1.0, 0.01, 0.0001]).sum()
    field = FactorizedField(3, 1, FieldConfig(decomposition="tucker", rank=6, width=8))
    _, mix = discrete_decomposition(field, x)
    weights = column_energies(field, mix, floor=0.01)
    assert len(weights) == 3
    for w in weights:
        assert w.shape == (6,) and float(w.mean()) == pytest.approx(1.0, rel=1e-5)
        assert torch.all(w[:-1] >= w[1:] - 1e-5)  # HOSVD orders columns by energy
        assert float(w.min()) >= 0.0099  # floored at 1 % of the mean: no output is left untrained
        assert float(w[0]) > 5 * float(w[-1])  # rank-3 data: the padding columns carry almost nothing
    cp = FactorizedField(3, 1, FieldConfig(decomposition="cp", rank=4, width=8))
    _, cmix = discrete_decomposition(cp, x)
    cw = column_energies(cp, cmix)
    assert all(torch.allclose(cw[0], w) for w in cw)  # one weight per CP component, shared by the modes
    tt = FactorizedField(3, 1, FieldConfig(decomposition="tt", rank=4, width=8))
    _, tmix = discrete_decomposition(tt, x)
    assert column_energies(tt, tmix) == [None, None, None]


def test_chunked_mttkrp_matches_one_einsum(monkeypatch):
    """CP-ALS bounds its memory on long clips by chunking the MTTKRP; the sums must not change."""
    import finr3d.closed_form as cf

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, 9, 3, generator=gen)
    factors = [torch.randn(n, 5, generator=gen) for n in x.shape]
    whole = [cf._mttkrp(x, factors, m) for m in range(4)]
    monkeypatch.setattr(cf, "MTTKRP_CHUNK", 40)  # a few rows of the chunked axis at a time
    for m in range(4):
        # each entry sums the product over every other axis: x.numel() / x.shape[m] terms
        assert_float32_close(cf._mttkrp(x, factors, m), whole[m], x.numel() // x.shape[m])
    letters = "abcd"
    for m in range(4):
        eq = letters + "," + ",".join(f"{letters[k]}r" for k in range(4) if k != m) + f"->{letters[m]}r"
        assert_float32_close(whole[m], torch.einsum(eq, x, *[factors[k] for k in range(4) if k != m]),
                             x.numel() // x.shape[m])


def test_exact_readout_is_only_claimed_when_the_basis_covers_every_axis():
    from finr3d.closed_form import reads_out_exactly
    from finr3d.targets import ImageTarget

    img = ImageTarget(np.random.default_rng(0).random((12, 10, 3)).astype(np.float32))
    build = lambda **kw: finr3d.fitting.build_field(img, FieldConfig(rank=8, width=8, **kw))
    assert reads_out_exactly(build(basis="grid"), img)
    assert not reads_out_exactly(build(basis=10), img)  # 10 terms for 12 rows
    assert not reads_out_exactly(build(basis="grid", decomposition="tucker"), img)
    assert not reads_out_exactly(build(basis="grid", channel_factor=False), img)
    assert not reads_out_exactly(build(), img)
