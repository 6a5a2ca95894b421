"""The smoke-plume simulation clip: deterministic, physical (divergence-free flow, rising smoke), fittable."""

import numpy as np
import pytest

import finr3d
from finr3d.simulation import project, smoke_clip
from finr3d.volume import VolumeTarget


def _divergence(u):
    return sum(np.gradient(u[a].astype(np.float64), axis=a) for a in range(3))


def test_projection_removes_divergence():
    from scipy.ndimage import zoom

    rng = np.random.default_rng(0)
    # a smooth flow, as the solver's are: central differences cannot see (or remove) grid-scale checkerboards
    u = np.stack([zoom(rng.standard_normal((4, 4, 4)), 6, order=3) for _ in range(3)]).astype(np.float32)
    before = np.abs(_divergence(u)[2:-2, 2:-2, 2:-2]).mean()
    after = np.abs(_divergence(project(u))[2:-2, 2:-2, 2:-2]).mean()
    assert after < 0.1 * before


def test_smoke_clip_is_deterministic_bounded_and_rises():
    clip = smoke_clip(frames=10, size=12, seed=1)
    assert clip.shape == (10, 12, 12, 12) and clip.dtype == np.float32
    assert clip.min() >= 0 and clip.max() <= 1
    np.testing.assert_array_equal(clip, smoke_clip(frames=10, size=12, seed=1))
    z = np.arange(12)[:, None, None]
    heights = [(f * z).sum() / f.sum() for f in clip]
    assert heights[-1] > heights[0] + 0.5  # buoyant smoke moves up (axis 0 is z, up)
    assert clip[-1].sum() > clip[0].sum()  # the source keeps adding smoke
    with pytest.raises(ValueError, match="frames"):
        smoke_clip(frames=0)


def test_smoke_clip_fits_as_a_4d_volume():
    clip = smoke_clip(frames=4, size=10)
    target = VolumeTarget(clip, axes="tzyx")
    field = finr3d.fit(target, rank=8, width=16, steps=20, seed=0)
    assert field.ndim == 4 and field.history["psnr"] > 20
