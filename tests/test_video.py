"""Video: reading files and frame folders, sub-grid sampling, writing, scoring, a tiny fit, bad input."""

import importlib.util
import math
import subprocess

import numpy as np
import pytest
import torch

from finr3d.errors import InputError
from finr3d.sources import load_target
from finr3d.targets import interpolate_subgrid, lattice, write_png
from finr3d.video import VideoTarget, read_video, sample_stored_grid, write_video
from tolerances import assert_float32_close

#: a multilinear interpolation in 3-D sums 2^3 weighted corners
LINEAR_TERMS = 8

HAS_PYAV = importlib.util.find_spec("av") is not None
BACKENDS = [pytest.param("pyav", marks=pytest.mark.skipif(not HAS_PYAV, reason="PyAV not installed")), "ffmpeg"]


def blob_clip(t=8, h=24, w=32) -> np.ndarray:
    """A moving Gaussian blob over a drifting gradient: (T, H, W, 3) float32 in [0, 1]."""
    tt = np.linspace(0, 1, t)[:, None, None]
    y = np.linspace(0, 1, h)[None, :, None]
    x = np.linspace(0, 1, w)[None, None, :]
    blob = np.exp(-((y - 0.3 - 0.4 * tt) ** 2 + (x - 0.25 - 0.5 * tt) ** 2) / 0.03)
    grad = 0.25 + 0.5 * x * (1 - 0.5 * tt) + 0 * y
    clip = np.stack([blob, grad + 0 * blob, 0.6 * blob + 0.3 * y + 0 * x], -1)
    return np.clip(clip, 0, 1).astype(np.float32)


def as_uint8(clip):
    return np.round(clip * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP threads that
    wait on each other make these fits 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clip_u8():
    return as_uint8(blob_clip())


@pytest.fixture
def frame_folder(tmp_path, clip_u8):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(clip_u8):
        write_png(folder / f"f{i}.png", f)  # f10 after f9: natural order, not string order
    return folder


@pytest.fixture
def clip_mp4(tmp_path, clip_u8):
    import imageio.v3 as iio

    path = tmp_path / "clip.mp4"
    if HAS_PYAV:
        iio.imwrite(path, clip_u8, plugin="pyav", codec="libx264", fps=12)
    else:
        write_video(clip_u8, path, fps=12)
    return path


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_video_file(clip_mp4, clip_u8, backend):
    frames, fps = read_video(clip_mp4, backend=backend)
    assert frames.shape == clip_u8.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(12)
    assert np.abs(frames.astype(float) - clip_u8).mean() < 6  # lossy yuv420p
    sub, fps2 = read_video(clip_mp4, backend=backend, frames=(1, 7), stride=2)
    np.testing.assert_array_equal(sub, frames[1:7:2])
    assert fps2 == pytest.approx(6)


def test_read_frame_folder_natural_order_and_options(tmp_path, clip_u8):
    folder = tmp_path / "many"
    folder.mkdir()
    clip = np.concatenate([clip_u8, clip_u8[::-1]])  # 16 frames: names f0..f15
    for i, f in enumerate(clip):
        write_png(folder / f"f{i}.png", f)
    frames, fps = read_video(folder)
    np.testing.assert_array_equal(frames, clip)
    assert fps == 25
    t = VideoTarget(folder, frames=(2, 13), stride=3, max_frames=3, fps=30)
    assert t.shape == (3, 24, 32)
    np.testing.assert_array_equal(t.frames.numpy(), clip[2:13:3][:3])
    assert t.fps == pytest.approx(10)
    assert t.describe()["bounds"][0] == [2, 8]  # world t is the source frame index
    assert VideoTarget(folder, resize=(12, 16)).shape == (16, 12, 16)
    assert VideoTarget(folder, resize=0.5, max_frames=2).shape == (2, 12, 16)
    assert isinstance(load_target(folder), VideoTarget)


def test_array_source_and_describe(clip_u8):
    t = VideoTarget(clip_u8, fps=24, layout="xy+t")
    assert (t.shape, t.channels, t.axis_names) == ((8, 24, 32), 3, ("t", "y", "x"))
    assert t.default_modes == [(1, 2), (0,)]
    assert VideoTarget(clip_u8).default_modes == [(0,), (1,), (2,)]
    d = t.describe()
    assert d["kind"] == "video" and d["fps"] == 24 and d["shape"] == [8, 24, 32]
    assert t.frames.dtype == torch.uint8  # stored at 1 byte a value, not as a float copy
    gray = VideoTarget(blob_clip()[..., 0])
    assert gray.channels == 1 and gray.frames.dtype == torch.float32


def test_carphone_first_frames(shared_assets):
    path = shared_assets / "video" / "carphone.mp4"
    t = VideoTarget(path, frames=(0, 4))
    assert t.shape == (4, 144, 176) and t.channels == 3
    assert t.fps == pytest.approx(29.97, abs=0.01)
    small = VideoTarget(path, frames=(10, 20), stride=5, resize=(36, 44))
    assert small.shape == (2, 36, 44)


# --------------------------------------------------------------------------- sampling
def test_sample_matches_float_interpolation(clip_u8):
    t = VideoTarget(clip_u8)
    full = [lattice(n) for n in t.shape]
    assert torch.equal(t.sample(full), t.data)
    gen = torch.Generator().manual_seed(0)
    coords = [torch.rand(n, generator=gen) * 2 - 1 for n in (5, 7, 9)]
    assert_float32_close(t.sample(coords), interpolate_subgrid(t.data, coords), LINEAR_TERMS)
    mixed = [lattice(8)[[0, 3, 7]], coords[1], lattice(32)[::4]]
    assert_float32_close(t.sample(mixed), interpolate_subgrid(t.data, mixed), LINEAR_TERMS)
    # a dense sub-lattice holds stored samples exactly
    c, v = t.dense(max_samples=500)
    assert np.prod([len(x) for x in c]) <= 500
    assert_float32_close(v, interpolate_subgrid(t.data, c), LINEAR_TERMS)


def test_sample_stored_grid_uint16():
    data = torch.from_numpy(np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4, 1) * 1000)
    c = [torch.tensor([-1.0, 0.3]), torch.tensor([0.1]), lattice(4)]
    out = sample_stored_grid(data, c, 65535.0)
    assert_float32_close(out, interpolate_subgrid(data.float() / 65535.0, c), LINEAR_TERMS)


# --------------------------------------------------------------------------- writing
@pytest.mark.parametrize("name,tol", [("out.mp4", 8), ("out.webm", 8), ("out.avi", 8), ("out.gif", 8),
                                      ("out.png", 0.5), ("frames_dir", 0.5)])
def test_write_video_round_trip(tmp_path, name, tol):
    clip = blob_clip(t=6, h=23, w=31)  # odd sizes: yuv420p needs padding
    written = write_video(clip, tmp_path / name, fps=10)
    back, fps = read_video(written)
    assert back.shape[0] == 6
    assert back.shape[1:3] in ((23, 31), (24, 32))
    assert np.abs(back[:, :23, :31].astype(float) - as_uint8(clip)).mean() < tol
    if name.endswith(".mp4"):
        assert fps == pytest.approx(10)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_png_pattern_and_rewrite(tmp_path, clip_u8):
    out = write_video(clip_u8, tmp_path / "seq_%03d.png", fps=5)
    assert sorted(p.name for p in tmp_path.glob("seq_*.png"))[:2] == ["seq_000.png", "seq_001.png"]
    assert out.name == "seq_%03d.png"
    folder = write_video(clip_u8, tmp_path / "clip.png")
    write_video(clip_u8[:3], tmp_path / "clip.png")  # a shorter clip replaces the old frames
    np.testing.assert_array_equal(read_video(folder)[0], clip_u8[:3])


def test_write_video_bad_arguments(tmp_path, clip_u8):
    with pytest.raises(InputError, match="T, H, W"):
        write_video(np.zeros((4, 5)), tmp_path / "a.mp4")
    with pytest.raises(InputError, match="cannot write video"):
        write_video(clip_u8, tmp_path / "a.mkv2")
    with pytest.raises(InputError, match="fps"):
        write_video(clip_u8, tmp_path / "a.mp4", fps=0)
    with pytest.raises(FileNotFoundError):
        write_video(clip_u8, tmp_path / "nodir" / "a.mp4")


# --------------------------------------------------------------------------- bad input
def test_corrupt_and_truncated_files(tmp_path, clip_mp4):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="junk.mp4"):
        VideoTarget(junk)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip_mp4.read_bytes()[:300])
    with pytest.raises(InputError, match="cut.mp4"):
        VideoTarget(cut)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(InputError, match="empty"):
        VideoTarget(empty)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_frames(tmp_path, clip_mp4, backend):
    import imageio_ffmpeg

    audio = tmp_path / "audio_only.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "0.2", "-c:a", "aac", str(audio)], check=True)
    with pytest.raises(InputError, match="audio_only.mp4"):
        read_video(audio, backend=backend)
    with pytest.raises(InputError, match="selects no frames; the clip has 8 frames"):
        read_video(clip_mp4, frames=(50, 60), backend=backend)


def test_folder_problems(tmp_path, frame_folder, clip_u8):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="zero frames"):
        VideoTarget(empty)
    write_png(frame_folder / "f5.png", clip_u8[5][:20])  # a frame of another size
    with pytest.raises(InputError, match=r"f5\.png.*f0\.png"):
        VideoTarget(frame_folder)
    # frames outside the selected range are never read, so their size does not matter
    assert VideoTarget(frame_folder, frames=(0, 5)).shape[0] == 5
    (frame_folder / "f7.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="f7.png"):
        VideoTarget(frame_folder, frames=(6, 8))


@pytest.mark.parametrize("kwargs,match", [
    ({"stride": 0}, "stride"),
    ({"frames": (5, 2)}, "frames"),
    ({"frames": "abc"}, "frames"),
    ({"max_frames": 0}, "max_frames"),
    ({"resize": (1, 5)}, "resize"),
    ({"resize": -1.0}, "resize"),
    ({"layout": "t+xy"}, "layout"),
    ({"max_frames": 1}, "at least 2 frames"),
])
def test_bad_options(frame_folder, kwargs, match):
    with pytest.raises(InputError, match=match):
        VideoTarget(frame_folder, **kwargs)


def test_missing_path_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        VideoTarget(tmp_path / "missing.mp4")
    other = tmp_path / "clip.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="unsupported video type"):
        read_video(other)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        VideoTarget(blob_clip() * 2)


# --------------------------------------------------------------------------- fitting and scoring
@pytest.mark.parametrize("layout,decomposition,rank,modes", [
    ("x+y+t", "cp", 32, [(0,), (1,), (2,)]),  # the default layout, closed-form start
    ("xy+t", "tucker", 8, [(1, 2), (0,)]),
])
def test_tiny_fit_reaches_psnr_bar_and_scores_per_frame(clip_u8, layout, decomposition, rank, modes):
    import finr3d

    target = VideoTarget(clip_u8, layout=layout)
    field = finr3d.fit(target, decomposition=decomposition, rank=rank, width=32, steps=200, seed=0)
    assert field.modes == modes
    report = target.evaluate(field)
    assert report["psnr"] > 28, report["psnr"]
    assert len(report["psnr_per_frame"]) == len(report["ssim_per_frame"]) == 8
    assert report["psnr"] == pytest.approx(np.mean(report["psnr_per_frame"]))
    assert 0.5 < report["ssim"] <= 1


def test_evaluate_in_frame_chunks_matches_one_chunk(clip_u8, monkeypatch):
    import finr3d.video
    from finr3d.config import FieldConfig
    from finr3d.field import FactorizedField

    target = VideoTarget(clip_u8)
    torch.manual_seed(0)
    field = FactorizedField(3, 3, FieldConfig(rank=4, width=16, modes=[[1, 2], [0]]), target_info=target.describe())
    whole = target.evaluate(field)
    monkeypatch.setattr(finr3d.video, "EVAL_CHUNK_VALUES", 1)  # 4 frames a chunk
    assert target.evaluate(field)["psnr_per_frame"] == pytest.approx(whole["psnr_per_frame"])


def test_cli_fit_then_decode(tmp_path, clip_mp4, capsys):
    from finr3d.cli import main

    model = tmp_path / "clip.finr"
    assert main(["fit", str(clip_mp4), "-o", str(model), "--steps", "40", "--rank", "8", "--width", "32",
                 "--decomposition", "tucker", "--progress", "none"]) == 0
    out = tmp_path / "back.mp4"
    assert main(["decode", str(model), "-o", str(out)]) == 0
    back, fps = read_video(out)
    assert back.shape == (8, 24, 32, 3) and fps == pytest.approx(12)
    assert main(["decode", str(model), "-o", str(tmp_path / "back.png")]) == 0
    assert len(list((tmp_path / "back").glob("frame_*.png"))) == 8
    capsys.readouterr()


def test_for_field_rebuilds_the_fitted_window(frame_folder, clip_u8):
    from finr3d.config import FieldConfig
    from finr3d.field import FactorizedField

    fitted = VideoTarget(frame_folder, frames=(1, 8), stride=3, resize=(12, 16))
    field = FactorizedField(3, 3, FieldConfig(rank=2, width=8, modes=[[1, 2], [0]]), target_info=fitted.describe())
    again = VideoTarget.for_field(frame_folder, field.target_info)
    assert again.shape == fitted.shape == (3, 12, 16)
    torch.testing.assert_close(again.data, fitted.data)
    with pytest.raises(InputError, match="fitted to 3x12x16"):
        VideoTarget(frame_folder).evaluate(field)


@pytest.mark.parametrize("basis", ["grid", 0])
def test_closed_form_start_of_a_long_clip_uses_a_bounded_sub_lattice(clip_u8, monkeypatch, basis):
    """CP-ALS sees at most closed_form_samples points; the readout (spline-interpolated onto every stored
    sample with the default cosine basis, distilled without it) still gives a usable start."""
    import finr3d
    import finr3d.closed_form as cf

    seen = []
    real = cf.cp_als_sweeps  # both paths sweep through it (cp_als too)
    monkeypatch.setattr(cf, "cp_als_sweeps", lambda x, rank, **kw: seen.append(x.shape) or real(x, rank, **kw))
    import dataclasses

    from finr3d import presets

    small = dataclasses.replace(presets.PRESETS["video"], closed_form_samples=8 * 12 * 16)
    monkeypatch.setitem(presets.VIDEO_LAYOUT_PRESETS, "x+y+t", small)
    target = VideoTarget(clip_u8)
    # sweeps of a sub-lattice leave half the budget to refinement on every stored sample
    assert target.sweep_fraction == 0.5 and VideoTarget(clip_u8[:2, :4, :4]).sweep_fraction == 1.0
    field = finr3d.fit(target, rank=16, width=32, steps=60, seed=0, basis=basis)
    assert len(seen) == 1 and 2 * 6 * 8 <= seen[0][:3].numel() <= 8 * 12 * 16 < 8 * 24 * 32
    assert field.history["fit_config"]["init"] == "closed_form"
    assert ("als_sweeps" in field.history) == (basis == "grid")
    assert field.history["fit_config"]["distill_fraction"] == (0.5 if basis == "grid" else 0.0)
    assert field.history["curve"][-1]["step"] == 60  # refinement ran after the closed-form phase
    assert target.evaluate(field)["psnr"] > 25


# --------------------------------------------------------------------------- the CP-ALS default
def test_default_video_rank_keeps_the_clip_compressed():
    from finr3d.video import VIDEO_MAX_RANK, VIDEO_MIN_RATIO, default_video_rank

    assert default_video_rank((120, 144, 176), 3) == VIDEO_MAX_RANK  # carphone
    for shape in [(8, 24, 32), (32, 128, 128), (300, 288, 352)]:
        r = default_video_rank(shape, 3)
        assert 16 <= r <= VIDEO_MAX_RANK
        if r > 16:
            assert r * (sum(shape) + 3 * 32 + 3) * VIDEO_MIN_RATIO <= np.prod(shape) * 3
    from finr3d.presets import field_settings

    clip = VideoTarget(blob_clip())
    assert field_settings(clip.preset, clip.shape, clip.channels)["rank"] == default_video_rank((8, 24, 32), 3)


def test_default_fit_is_cp_als_read_out_without_loss(clip_u8):
    """The default x+y+t field reads a cosine basis per axis, so the fit is CP-ALS sweeps read out into the
    networks: the field equals the discrete CP of the same sweeps, and the fit's curve has a point per readout."""
    import finr3d
    from finr3d.closed_form import ALS_SWEEPS, cp_als

    target = VideoTarget(clip_u8)
    field = finr3d.fit(target, rank=24, steps=100, seed=0)
    h = field.history
    assert field.config.basis == "grid" and [net.basis for net in field.nets] == [8, 24, 32]
    assert h["als_sweeps"] == ALS_SWEEPS and h["steps"] == 100 and h["distill_steps"] == 0
    assert len(h["curve"]) >= 5  # readouts after sweeps 1, 2, 4, 8 and 10, then the final validation
    assert h["curve"][0]["psnr"] < h["curve"][-1]["psnr"]
    data = target.data
    mean = data.reshape(-1, 3).mean(0)
    factors, w = cp_als(data - mean, 24, n_iter=ALS_SWEEPS, seed=0)
    discrete = torch.einsum("ir,jr,kr,rc->ijkc", *factors, w) + mean
    mse = float(((discrete - data) ** 2).mean())
    ours = torch.from_numpy(field.grid(list(target.shape), squeeze=False))
    assert float(((ours - discrete) ** 2).mean()) < 0.01 * mse  # the readout adds under 1 % of the error
    assert target.evaluate(field)["psnr"] > 32


def test_cancelling_during_the_sweeps_keeps_a_read_out_field(clip_u8):
    import finr3d
    from finr3d.errors import FitCancelled

    calls = []

    def stop_at_third(info):
        calls.append(info)
        return not (info.get("phase") == "closed_form" and info["step"] >= 3)

    with pytest.raises(FitCancelled) as exc:
        finr3d.fit(VideoTarget(clip_u8), rank=16, steps=100, seed=0, callback=stop_at_third)
    field = exc.value.field
    assert field.history["als_sweeps"] == 3 and field.history["stopped"] == "cancelled"
    assert VideoTarget(clip_u8).evaluate(field)["psnr"] > 25


def test_seconds_budget_sweeps_until_it_ends(clip_u8, fake_clock):
    import finr3d
    from finr3d.closed_form import ALS_SWEEPS

    tick = 0.005
    fake_clock(tick)  # a sweep costs a few clock reads: the budget, not this machine's speed, ends the sweeps
    field = finr3d.fit(VideoTarget(clip_u8), rank=16, seconds=1.0, seed=0)
    h = field.history
    assert h["als_sweeps"] > ALS_SWEEPS and h["stopped"] == "budget"
    assert h["seconds"] <= 1.0 + 20 * tick


def test_target_metric_ends_the_sweeps(clip_u8):
    import finr3d

    field = finr3d.fit(VideoTarget(clip_u8), rank=16, steps=100, seed=0, target_metric=20.0)
    h = field.history
    assert h["stopped"] == "target_metric" and h["als_sweeps"] < 10 and h["psnr"] >= 20


def test_cp_als_field_interpolates_between_frames_and_pixels():
    """The cosine readout keeps the field continuous: decoded on a grid twice as fine in t, y and x (frames
    and pixels never stored), the clip is about as good as on the stored samples."""
    import finr3d

    field = finr3d.fit(VideoTarget(blob_clip(t=8, h=24, w=32)), rank=24, steps=50, seed=0)
    on = field.grid([torch.linspace(-1, 1, n) for n in (8, 24, 32)])
    fine = field.grid([torch.linspace(-1, 1, n) for n in (15, 47, 63)])
    psnr_on = 10 * np.log10(1 / np.mean((on - blob_clip(t=8, h=24, w=32)) ** 2))
    psnr_fine = 10 * np.log10(1 / np.mean((fine - blob_clip(t=15, h=47, w=63)) ** 2))
    assert psnr_on > 32 and psnr_fine > psnr_on - 2, (psnr_on, psnr_fine)


def test_the_first_sweep_is_sized_to_a_short_budget(clip_u8):
    """Under a deadline too short for one CP-ALS sweep over every sample, the sweeps see an evenly spaced
    sub-lattice whose size is predicted from a timed probe sweep; a budget with room keeps every sample."""
    from finr3d.closed_form import _als_samples_for
    from finr3d.config import FieldConfig
    from finr3d.field import FactorizedField

    target = VideoTarget(clip_u8)
    field = FactorizedField(3, 3, FieldConfig(decomposition="cp", rank=24, width=8, basis="grid"),
                            samples=list(target.shape), target_info=target.describe())
    total = math.prod(target.shape)
    assert _als_samples_for(field, target, total, seconds=1e3, seed=0) == total
    short = _als_samples_for(field, target, total, seconds=1e-9, seed=0)
    assert 4 ** 3 <= short < total
