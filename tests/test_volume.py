"""Volumes and time-varying volumes: metrics on the value range, axes, N-D readers, decode, exit codes."""

import json
import math

import numpy as np
import pytest
import torch

import finr3d
from finr3d.cli import main
from finr3d.errors import InputError
from finr3d.targets import interpolate_subgrid, lattice
from finr3d.volume import VolumeTarget, parse_layout, read_volume, sample_array, ssim_volume


def blob_clip(t=5, n=12, dtype=np.float32, lo=0.0, hi=1.0):
    """A Gaussian blob moving along x: (T, Z, Y, X)."""
    tt = np.linspace(0, 1, t)[:, None, None, None]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    a = np.exp(-4 * ((x - 0.6 * tt + 0.3) ** 2 + 0.7 * y**2 + 1.3 * z**2))
    return (lo + (hi - lo) * a).astype(dtype)


def uint8_volume(n=12):
    """A uint8 volume whose values span 40..240 (range 200, not 255 and not 1)."""
    v = blob_clip(1, n)[0]
    return np.round(40 + 200 * v).astype(np.uint8)


def manual_psnr(decoded, ref):
    ref = ref.astype(np.float64)
    d = np.clip(decoded.astype(np.float64), ref.min(), ref.max()) - ref
    return 10 * math.log10((ref.max() - ref.min()) ** 2 / np.mean(d**2))


# --------------------------------------------------------------------- metrics
def test_fit_history_and_eval_psnr_use_the_value_range(tmp_path):
    vol = uint8_volume()
    path = tmp_path / "v.npy"
    np.save(path, vol)
    field = finr3d.fit(str(path), decomposition="cp", rank=8, width=16, steps=30, seed=0)
    from finr3d.decoding import decode_array

    decoded = decode_array(field)[..., 0]
    truth = manual_psnr(decoded, vol)
    assert 15 < truth < 80
    report = finr3d.evaluate(field, str(path))
    assert report["psnr"] == pytest.approx(truth, abs=1e-3)
    # the fit's own validation PSNR is on the same range (unclipped, so at most a little lower)
    assert field.history["psnr"] == pytest.approx(truth, abs=1.0)
    assert 0 < report["ssim"] <= 1


def test_ssim_volume_in_slabs_equals_one_shot():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    ref = blob_clip(1, 20)[0].astype(np.float64)
    pred = ref + rng.normal(0, 0.05, ref.shape)
    one = structural_similarity(pred, ref, win_size=7, data_range=1.0)
    slabbed = ssim_volume(lambda a, b: pred[a:b], lambda a, b: ref[a:b], 20, data_range=1.0, slab=4)
    assert slabbed == pytest.approx(one, rel=1e-9)


def test_eval_json_and_sweep_work_for_volumes(tmp_path, capsys):
    vol = uint8_volume()
    src = tmp_path / "v.npy"
    np.save(src, vol)
    model = tmp_path / "v.finr"
    assert main(["fit", str(src), "-o", str(model), "--rank", "4", "--width", "16", "--steps", "10",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), "--reference", str(src), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["psnr"] > 10 and "ssim" in payload
    assert main(["sweep", str(model), "--reference", str(src), "--ranks", "2,4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [2, 4] and all(r["psnr"] > 5 for r in rows)


def test_a_library_value_error_is_a_bug_not_user_input(tmp_path, monkeypatch, capsys):
    from finr3d.cli import _raised_by_finr3d

    try:
        np.zeros(3).reshape(2, 2)
    except ValueError as exc:
        assert not _raised_by_finr3d(exc)
    try:
        VolumeTarget(np.zeros((2, 3, 4, 5)))
    except InputError as exc:
        assert _raised_by_finr3d(exc)

    def broken(*a, **k):
        from skimage.metrics import structural_similarity

        structural_similarity(np.zeros((8, 8)), np.zeros((9, 9)), data_range=1.0)

    src = tmp_path / "v.npy"
    np.save(src, uint8_volume())
    model = tmp_path / "v.finr"
    assert main(["fit", str(src), "-o", str(model), "--rank", "2", "--width", "8", "--steps", "2",
                 "--progress", "none"]) == 0
    monkeypatch.setattr(finr3d, "evaluate", broken)
    capsys.readouterr()
    assert main(["eval", str(model), "--reference", str(src)]) == 1
    assert "unexpected ValueError" in capsys.readouterr().err


# ------------------------------------------------------------------------ axes
def test_4d_array_without_axes_is_refused_naming_the_flag(tmp_path):
    np.save(tmp_path / "c.npy", blob_clip())
    with pytest.raises(InputError, match="--axes"):
        VolumeTarget(tmp_path / "c.npy")
    assert main(["fit", str(tmp_path / "c.npy"), "-o", str(tmp_path / "c.finr"), "--steps", "1",
                 "--progress", "none"]) == 2


@pytest.mark.parametrize("axes,shape,channels", [("tzyx", (5, 12, 12, 12), 1), ("zyxc", (5, 12, 12), 12),
                                                 ("xyzt", (12, 12, 12, 5), 1)])
def test_axes_letters_choose_the_reading(axes, shape, channels):
    clip = blob_clip()
    t = VolumeTarget(clip, axes=axes)
    assert t.shape == shape and t.channels == channels
    assert t.source_axes == axes


def test_axes_reorders_to_t_z_y_x():
    clip = blob_clip()
    src = clip.transpose(3, 2, 1, 0)  # stored (x, y, z, t)
    t = VolumeTarget(src, axes="xyzt")
    assert t.shape == clip.shape
    np.testing.assert_allclose(t.to_values(t.data.numpy()[..., 0]), clip, atol=1e-6)


@pytest.mark.parametrize("axes,match", [("tzyq", "unknown"), ("tzzx", "repeats"), ("tzy", "names 3"),
                                        ("tzyc", "no x")])
def test_bad_axes_are_refused(axes, match):
    with pytest.raises(InputError, match=match):
        VolumeTarget(blob_clip(), axes=axes)


def test_layouts_one_per_axis_and_grouped():
    names = ("t", "z", "y", "x")
    assert parse_layout(None, names) == [(0,), (1,), (2,), (3,)]
    assert parse_layout("x+y+z+t", names) == [(3,), (2,), (1,), (0,)]
    assert parse_layout("(x,y,z)+(t)", names) == [(1, 2, 3), (0,)]
    with pytest.raises(InputError, match="exactly once"):
        parse_layout("xy+t", names)
    with pytest.raises(InputError, match="two modes"):
        parse_layout("xyzt", names)


# --------------------------------------------------------------------- readers
def test_frame_folder_nifti_and_npy_read_the_same_clip(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    clip = blob_clip()
    np.save(tmp_path / "c.npy", clip)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 1, 2, 3, 4):  # natural order: f10 would come after f2
        np.save(folder / f"f{i}.npy", clip[i])
    nibabel.save(nibabel.Nifti1Image(clip.transpose(3, 2, 1, 0), np.eye(4)), str(tmp_path / "c.nii.gz"))
    raw = tmp_path / "frames_raw"
    raw.mkdir()
    for i in range(5):
        clip[i].tofile(raw / f"f{i}_12x12x12_float32.raw")
    ref = VolumeTarget(tmp_path / "c.npy", axes="tzyx").data
    for source in (folder, tmp_path / "c.nii.gz", raw):
        t = VolumeTarget(source)
        assert t.shape == (5, 12, 12, 12) and t.axis_names == ("t", "z", "y", "x")
        torch.testing.assert_close(t.data, ref)
    assert finr3d.targets.detect_kind(folder) == "volume"


def test_raw_with_four_dims_needs_axes(tmp_path):
    clip = blob_clip()
    path = tmp_path / "c_12x12x12x5_float32.raw"
    clip.tofile(path)
    with pytest.raises(InputError, match="--axes"):
        VolumeTarget(path)
    assert VolumeTarget(path, axes="tzyx").shape == (5, 12, 12, 12)


def test_memmapped_source_is_sampled_without_a_float_copy(tmp_path):
    vol = uint8_volume(16)
    path = tmp_path / "v_16x16x16_uint8.raw"
    vol.tofile(path)
    arr, _ = read_volume(path)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint8
    t = VolumeTarget(path)
    assert isinstance(t.array.base, np.memmap) or isinstance(t.array, np.memmap)
    coords = [torch.linspace(-1, 1, 7), lattice(16)[::3], torch.tensor([-0.33, 0.5])]
    lo, rng = float(vol.min()), float(vol.max()) - float(vol.min())
    assert (t.value_offset, t.value_scale) == (lo, rng)
    expected = interpolate_subgrid(torch.from_numpy((vol[..., None] - lo) / rng).float(), coords)
    torch.testing.assert_close(t.sample(coords), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------- decode
@pytest.mark.parametrize("axes", ["tzyx", "xyzt"])
def test_4d_fit_decode_and_per_frame_eval(tmp_path, capsys, axes):
    clip = blob_clip(4, 10)
    src_arr = clip if axes == "tzyx" else clip.transpose(3, 2, 1, 0)
    src = tmp_path / "c.npy"
    np.save(src, src_arr)
    model = tmp_path / "c.finr"
    assert main(["fit", str(src), "-o", str(model), "--axes", axes, "--rank", "6", "--width", "16",
                 "--steps", "20", "--progress", "none"]) == 0
    out = tmp_path / "d.npy"
    assert main(["decode", str(model), "-o", str(out)]) == 0
    decoded = np.load(out)
    assert decoded.shape == src_arr.shape  # written back in the source's axis order
    folder = tmp_path / "frames"
    assert main(["decode", str(model), "-o", str(folder)]) == 0
    frames = sorted(folder.glob("frame_*.npy"))
    assert len(frames) == 4
    first = np.load(frames[0])
    np.testing.assert_allclose(first, decoded[0] if axes == "tzyx" else decoded[..., 0],  # the source frame order
                               atol=1e-5)
    capsys.readouterr()
    assert main(["eval", str(model), "--reference", str(src), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["psnr_per_frame"]) == 4
    assert payload["psnr_mean"] == pytest.approx(np.mean(payload["psnr_per_frame"]))
    assert payload["psnr"] == pytest.approx(manual_psnr(decoded, src_arr), abs=1e-3)


def test_decode_too_large_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    from finr3d import decoding

    field = finr3d.fit(VolumeTarget(uint8_volume(8)), rank=2, width=8, steps=1)
    # the in-memory decode of 1000^3 (the SDF case that grew to 6 GB): refused with the size it needs
    with pytest.raises(InputError, match=r"needs about 7\.\d GiB"):
        decoding.decode_array(field, resolution=1000)
    # the streamed .npy needs one slab of memory, an output within the decode limit, and the disk
    monkeypatch.delenv("FINR3D_MAX_MEMORY", raising=False)
    with pytest.raises(InputError, match=r"1000x1000x1000 decode \(the output\) needs about 3\.7 GiB"):
        decoding.stream_npy(field, tmp_path / "big.npy", resolution=1000)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    with pytest.raises(InputError, match="3.73 GiB of disk"):
        decoding.stream_npy(field, tmp_path / "big.npy", resolution=1000, max_memory="8G")
    with pytest.raises(InputError, match="slab"):
        decoding.stream_npy(field, tmp_path / "big.npy", resolution=1000, max_memory="1M")
    assert not (tmp_path / "big.npy").exists()


def test_target_psnr_and_budget_choose_a_volume_model(tmp_path, capsys):
    from finr3d.decoding import decode_array

    vol = uint8_volume(12)
    src = tmp_path / "v.npy"
    np.save(src, vol)
    model = tmp_path / "v.finr"
    assert main(["fit", str(src), "-o", str(model), "--rank", "8", "--width", "16", "--steps", "40",
                 "--target-psnr", "24", "--progress", "none"]) == 0
    assert "chose ranks" in capsys.readouterr().out
    field = finr3d.load(str(model))
    assert manual_psnr(decode_array(field)[..., 0], vol) >= 24  # on the value range, as a reader decodes it
    plain = tmp_path / "p.finr"
    assert main(["fit", str(src), "-o", str(plain), "--rank", "8", "--width", "16", "--steps", "40",
                 "--progress", "none"]) == 0
    budget = plain.stat().st_size - 1  # below the full fp16 file: a lower rank or precision must be chosen
    small = tmp_path / "s.finr"
    assert main(["fit", str(src), "-o", str(small), "--rank", "8", "--width", "16", "--steps", "40",
                 "--budget-kb", str(budget / 1024), "--progress", "none"]) == 0
    assert small.stat().st_size <= budget  # the whole file: metadata is shed before the budget is broken
    printed = capsys.readouterr().out
    assert "chose ranks" in printed and "(the chosen model's own" in printed
    chosen = finr3d.load(str(small)).history.get("auto_rank")
    if chosen is not None:  # kept when the budget leaves room for it
        assert chosen["quantization"] != "fp16" or chosen["ranks"] != [8]


@pytest.mark.parametrize("metadata", [True, False])
def test_a_compact_time_varying_volume_meshes_in_voxel_units_at_each_frame(metadata, tmp_path):
    """The voxel frame and the stored shape survive a compact file, also one without the optional metadata."""
    import finr3d
    from finr3d.volume import volume_mesh

    n = 12
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    vol = np.stack([np.exp(-4 * ((x - s) ** 2 + y**2 + z**2)) for s in (-0.4, 0.4)]).astype(np.float32)
    field = finr3d.fit(VolumeTarget(vol, axes="tzyx"), rank=6, width=16, steps=40, seed=0)
    path = tmp_path / "clip.finr"
    field.save(path, metadata=metadata)
    back = finr3d.load(path)
    assert back.target_info["shape"] == [2, n, n, n]
    np.testing.assert_allclose(back.target_info["world_from_normalized"], field.target_info["world_from_normalized"])
    for frame in (0, 1):
        want = volume_mesh(field, resolution=16, fraction=0.5, frame=frame).vertices.mean(0)
        got = volume_mesh(back, resolution=16, fraction=0.5, frame=frame).vertices.mean(0)
        np.testing.assert_allclose(got, want, atol=0.25)  # voxel units; fp16-step coefficients move it little
    x0 = volume_mesh(back, resolution=16, fraction=0.5, frame=0).vertices[:, 0].mean()
    x1 = volume_mesh(back, resolution=16, fraction=0.5, frame=1).vertices[:, 0].mean()
    assert x1 - x0 > 2.5  # the blob moved +0.8 normalized along x: 4.4 voxels of 11


def test_a_4d_tucker_start_sees_every_voxel_when_its_preset_allows(monkeypatch):
    """The x+y+z+t preset's CP-ALS start works on a sub-lattice; a Tucker start (HOSVD: one Gram matrix per
    mode) may see the whole clip (``Preset.hosvd_samples``), and then starts far closer to it."""
    import dataclasses

    from finr3d import presets

    clip = blob_clip(t=9, n=12)
    out = {}
    for cap in (None, 1 << 24):
        small = dataclasses.replace(presets.TIMED_VOLUME_PRESET, closed_form_samples=2000, hosvd_samples=cap)
        monkeypatch.setattr(presets, "TIMED_VOLUME_PRESET", small)
        target = VolumeTarget(clip, axes="tzyx")
        field = finr3d.fit(target, decomposition="tucker", rank=6, steps=1, seed=0)
        out[cap] = field.history["decomposition_samples"], target.evaluate(field, ssim=False)["psnr"]
    assert out[None][0] <= 2000 and out[1 << 24][0] == clip.size
    assert out[1 << 24][1] > out[None][1] + 10.0  # measured: 59 dB against 35 dB


def test_a_clip_fit_with_a_goal_takes_the_compact_structure(tmp_path, capsys):
    """`finr3d fit clip --target-psnr X` fits the goal structure (a 4-D Tucker) where a plain fit takes the fast
    CP preset; an explicit --decomposition wins over both."""
    from finr3d.presets import COMPACT_TIMED_VOLUME

    src = tmp_path / "c.npy"
    np.save(src, blob_clip(4, 10))
    common = ["--axes", "tzyx", "--width", "16", "--steps", "20", "--progress", "none"]
    runs = {"plain": [], "goal": ["--target-psnr", "20"], "explicit": ["--target-psnr", "20", "--decomposition", "cp"]}
    got = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.finr"
        assert main(["fit", str(src), "-o", str(out)] + common + extra) == 0
        got[name] = finr3d.load(out).config.decomposition
    capsys.readouterr()
    assert got == {"plain": "cp", "goal": COMPACT_TIMED_VOLUME["decomposition"], "explicit": "cp"}


# --------------------------------------------------------------------- the rank a PSNR goal needs
def _noise_volume(shape=(56, 52, 50), seed=0):
    """White noise: no rank below the mode sizes represents it well."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _truncation_psnr(values: torch.Tensor, ranks) -> float:
    """PSNR (peak 1) of the truncated HOSVD of ``values`` (N_0, ..., N_{d-1}, C) at per-mode ``ranks``, around
    its mean, as the fit's start sees it."""
    from finr3d.closed_form import hosvd

    centred = values.double() - values.double().mean()
    factors, rec = hosvd(centred.float(), list(ranks))
    for m, u in enumerate(factors):
        rec = torch.movedim(torch.tensordot(rec, u, dims=([m], [1])), -1, m)
    return 10 * math.log10(centred.numel() / float(((rec.double() - centred) ** 2).sum()))


def test_the_hosvd_bound_never_promises_more_than_the_truncation_gives():
    from finr3d.volume import hosvd_psnr_bounds

    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 18, 16)], indexing="ij")
    vol = np.exp(-3 * (x - 0.4 * y) ** 2 - 5 * z**2) + 0.05 * rng.standard_normal(x.shape)  # not separable
    values = torch.tensor(vol, dtype=torch.float32)[..., None]
    bounds = hosvd_psnr_bounds(values, [2, 4, 8, 20])
    for r in (2, 4, 8):
        truth = _truncation_psnr(values, [r, r, r])
        assert bounds[r] <= truth + 0.01  # a guarantee (float32 factors: a hundredth of a dB of slack)
        assert bounds[r] >= truth - 6.0  # and not vacuous: at most the sum of three modes' tails
    assert bounds[2] < bounds[4] < bounds[8] and math.isinf(bounds[20])  # rank >= every mode: exact


def test_a_psnr_goal_raises_the_volume_rank_only_where_the_preset_cannot_reach_it():
    from finr3d.volume import goal_rank

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (56, 52, 50)], indexing="ij")
    smooth = VolumeTarget((np.exp(-4 * (x**2 + y**2 + z**2)) + 0.5 * np.cos(2 * x) * y).astype(np.float32))
    assert goal_rank(smooth, 45.0) is None  # rank 2 is exact: the preset's 48 is plenty
    noise = VolumeTarget(_noise_volume())
    goal = goal_rank(noise, 30.0)
    assert goal["settings"] == {"decomposition": "tucker", "rank": (56, 52, 50), "basis": "grid",  # capped per mode
                                "nested_ranks": False,  # the goal's rank is kept whole: no prefix training
                                "steps": 0}  # its start is the truncation of every voxel: Adam adds nothing
    assert "steps" not in goal_rank(noise, 30.0, max_samples=140_000)["settings"]  # a sub-lattice's start is not
    assert goal["reachable"] and goal["bounds"]["64"] is None  # full rank: exact (null in JSON)
    assert goal["bounds"]["48"] < 31.0
    short = goal_rank(noise, 20.0, ranks=(49,))  # over rank 49's guarantee (~18 dB), under its ceiling (~22 dB)
    assert math.prod(short["settings"]["rank"]) <= 49**3 and not short["reachable"]  # the cap: 49^3 core values
    assert "likely be missed" in short["message"] and "not low-rank" in short["message"]
    json.dumps(goal["bounds"], allow_nan=False)  # the fit history must stay strict JSON
    hopeless = goal_rank(noise, 60.0, ranks=(49,))  # a flat spectrum: no rank-49 Tucker comes near 60 dB
    assert hopeless["impossible"] and hopeless["ceiling"] < 59.0
    assert "no Tucker of at most 49^3 core values" in hopeless["message"]
    clip = VolumeTarget(blob_clip(3, 8), axes="tzyx")
    assert goal_rank(clip, 80.0) is None  # a time-varying volume keeps its own goal structure


def test_an_early_stop_goal_of_the_api_fits_the_rank_it_needs_as_the_cli_does(monkeypatch):
    # finr3d.fit(target_metric=...) on a volume its preset's rank cannot hold: the goal's rank, as the CLI's
    # --target-psnr takes, instead of 2000 steps that can never reach it (the speed benchmark's finr3d side)
    import functools
    import warnings

    import finr3d.volume

    noise = _noise_volume()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a goal the chosen rank reaches: no warning
        field = finr3d.fit(VolumeTarget(noise), target_metric=30.0, steps=4, width=8)
    assert tuple(field.ranks) == (56, 52, 50) and field.config.basis == "grid"  # rank 64, capped: exact
    assert field.history["fit_config"]["nested_ranks"] is False
    goal = field.history["goal_rank"]
    assert goal["reachable"] and goal["bounds"]["48"] < 30.0 and "settings" not in goal
    json.dumps(goal, allow_nan=False)
    # with no budget given the goal's fit takes no step after its exact start; a budget in seconds keeps its steps
    bare = finr3d.fit(VolumeTarget(noise), target_metric=30.0, width=8)
    assert bare.history["steps"] == 0 and tuple(bare.ranks) == (56, 52, 50)
    # (99 dB: full ranks promise it exactly, and the float32 start falls short, so it cannot stop the fit)
    timed = finr3d.fit(VolumeTarget(noise), target_metric=99.0, seconds=0.5, width=8)
    assert timed.history["steps"] > 0
    # a structure from the caller wins; no goal keeps the preset
    mine = finr3d.fit(VolumeTarget(noise), target_metric=30.0, steps=2, rank=4, width=8)
    assert tuple(mine.ranks) == (4,) and "goal_rank" not in mine.history  # a CP of rank 4, as given
    plain = finr3d.fit(VolumeTarget(noise), steps=2, width=8)
    assert tuple(plain.ranks) == (48, 48, 48) and "goal_rank" not in plain.history
    # a goal over every rank's ceiling: the largest rank, which comes closest, and a warning (an early stop
    # is not refused, as the CLI's file goal is)
    monkeypatch.setattr(finr3d.volume, "goal_rank", functools.partial(finr3d.volume.goal_rank, ranks=(49,)))
    with pytest.warns(UserWarning, match=r"no Tucker of at most 49\^3 core values"):
        far = finr3d.fit(VolumeTarget(noise), target_metric=60.0, steps=2, width=8)
    assert math.prod(far.ranks) <= 49**3 and far.history["goal_rank"]["impossible"]


def test_a_goal_rank_is_per_mode_and_its_bound_holds():
    # mode 0 has rank 2 (two profiles times two random slabs), modes 1 and 2 are full: the goal's ranks follow
    # the spectrum of each mode instead of one rank for all, and the HOSVD at them keeps the promised PSNR
    from finr3d.volume import goal_rank

    rng = np.random.default_rng(1)
    a = np.stack([np.cos(np.linspace(0, np.pi, 60)), np.linspace(-1, 1, 60)])  # (2, 60)
    vol = np.einsum("kx,kyz->xyz", a, rng.random((2, 58, 56))).astype(np.float32)
    target = VolumeTarget(vol)
    assert goal_rank(target, 35.0) is None  # rank 48 is enough: the preset
    goal = goal_rank(target, 45.0)
    ranks = goal["settings"]["rank"]
    assert ranks[0] <= 3 and min(ranks[1:]) >= 48  # 3: two profiles and the mean
    assert goal["reachable"] and goal["bound"] >= 46.0
    truth = _truncation_psnr(target.dense()[1], ranks)
    assert truth >= goal["bound"] - 0.01  # a guarantee (float32 factors: a hundredth of a dB of slack)
    uniform = max(ranks)  # one rank for all would need the largest mode's rank everywhere
    assert math.prod(ranks) < 0.2 * uniform ** 3


def test_a_grid_basis_tucker_starts_at_its_hosvd_truncation():
    # a cosine basis as long as each axis reads the HOSVD factors out exactly on the samples: the start is the
    # truncation itself. The old ridge (0.1) onto spline-upsampled curves started this jagged rank-6 volume at
    # 30.7 dB (10 dB short on the CT-like phantom); the exact readout's 1e-3 ridge leaves it near 62 dB
    rng = np.random.default_rng(0)
    core, factors = rng.normal(size=(6, 6, 6)), [rng.normal(size=(n, 6)) for n in (20, 18, 16)]  # jagged factors
    vol = np.einsum("abc,xa,yb,zc->xyz", core, *factors) + 1e-4 * rng.normal(size=(20, 18, 16))
    target = VolumeTarget(vol.astype(np.float32))
    field = finr3d.fit(target, steps=1, decomposition="tucker", rank=(6, 6, 6), basis="grid", width=8,
                       nested_ranks=False)
    start = field.history["curve"][0]
    assert start["step"] == 0 and start["psnr"] > 55.0
    # and a truncation that loses real energy is met to a tenth of a dB
    noise = VolumeTarget(_noise_volume((20, 18, 16)))
    ranks = (9, 7, 5)
    field = finr3d.fit(noise, steps=1, decomposition="tucker", rank=ranks, basis="grid", width=8, nested_ranks=False)
    truth = _truncation_psnr(noise.dense()[1], ranks)
    assert abs(field.history["curve"][0]["psnr"] - truth) < 0.1


def test_the_grams_and_hosvd_of_every_sample_match_the_dense_ones_slab_by_slab(monkeypatch):
    # a large volume's spectrum and start come from every stored sample, a slab at a time: the same Gram
    # matrices and the same truncation as a dense float64 copy would give, with channels kept whole
    import finr3d.volume
    from finr3d.closed_form import hosvd

    monkeypatch.setattr(finr3d.volume, "GRAM_SLAB_VALUES", 50)  # slabs of one or two planes
    rng = np.random.default_rng(3)
    raw = (rng.random((9, 11, 13, 2)) * 1000).astype(np.uint16)
    target = VolumeTarget(raw, axes="zyxc")
    x = (torch.from_numpy(raw.astype(np.float64)) - target.value_offset) / target.value_scale
    x -= x.reshape(-1, 2).mean(0)  # each channel around its own mean, as the field's bias takes it
    for m, gram in enumerate(target.mode_grams()):
        mat = torch.movedim(x, m, 0).reshape(x.shape[m], -1)
        assert torch.allclose(gram, mat @ mat.T, rtol=1e-12, atol=1e-9)
    ranks = (4, 5, 6)
    factors, core = target.hosvd(ranks)
    assert core.shape == (4, 5, 6, 2) and [tuple(u.shape) for u in factors] == [(9, 4), (11, 5), (13, 6)]

    def sse(fs, c):
        rec = torch.einsum("abcd,ia,jb,kc->ijkd", c.double(), *[u.double() for u in fs])
        return float(((rec - x) ** 2).sum())

    dense = sse(*hosvd(x.float(), list(ranks)))
    assert abs(sse(factors, core) - dense) <= 1e-5 * dense  # float32 of the dense path's factors


def test_a_goal_reads_the_spectrum_of_every_voxel_not_a_sub_lattice():
    # the bound a goal's ranks promise holds on the whole volume. On a 512 x 512 x 160 CT-like volume the
    # spectrum of its 2^24-sample sub-lattice promised 35.0 dB for ranks (49, 168, 161) where the volume gives
    # 32.2, so a --target-psnr 33 fit missed; a sub-lattice sees fewer samples per axis and caps no rank
    from finr3d.volume import goal_rank

    target = VolumeTarget(_noise_volume((72, 66, 60)))
    full = goal_rank(target, 16.0)
    truth = _truncation_psnr(target.dense()[1], full["settings"]["rank"])
    assert full["reachable"] and truth >= full["bound"] - 0.01
    # the old reading, on every other sample: rank 48 spans that 36 x 33 x 30 sub-lattice exactly, so the
    # preset looked enough; the whole volume at rank 48 stays far under the goal
    assert goal_rank(target, 16.0, max_samples=72 * 66 * 60 // 8) is None
    assert _truncation_psnr(target.dense()[1], (48, 48, 48)) < 16.0 - 1.0


def test_a_grid_basis_tucker_on_a_volume_over_the_start_cap_starts_at_the_whole_truncation(monkeypatch):
    # a volume larger than the preset's closed-form sub-lattice: the exact start takes the HOSVD of every
    # sample (slab by slab) instead of one decomposed on the sub-lattice and splined onto the axes
    import dataclasses

    from finr3d import presets

    small = dataclasses.replace(presets.PRESETS["volume"], closed_form_samples=2000)
    monkeypatch.setitem(presets.PRESETS, "volume", small)
    noise = VolumeTarget(_noise_volume((20, 18, 16)))
    ranks = (9, 7, 5)
    field = finr3d.fit(noise, steps=1, decomposition="tucker", rank=ranks, basis="grid", width=8, nested_ranks=False)
    assert field.history["decomposition_samples"] == 20 * 18 * 16
    truth = _truncation_psnr(noise.dense()[1], ranks)
    assert abs(field.history["curve"][0]["psnr"] - truth) < 0.1
    # a basis shorter than the axes keeps the sub-lattice (its factors are distilled, not read out)
    short = finr3d.fit(noise, steps=1, decomposition="tucker", rank=ranks, basis=8, width=8, nested_ranks=False)
    assert short.history["decomposition_samples"] <= 2000


def test_the_hosvd_ceiling_is_a_true_ceiling_and_at_most_4_8_db_over_the_bound():
    from finr3d.volume import hosvd_psnr_bounds

    values = torch.tensor(_noise_volume((20, 18, 16)))[..., None]
    low, high = hosvd_psnr_bounds(values, [4, 8], ceiling=False), hosvd_psnr_bounds(values, [4, 8], ceiling=True)
    for r in (4, 8):
        truth = _truncation_psnr(values, [r, r, r])
        assert low[r] - 0.01 <= truth <= high[r] + 0.01
        assert high[r] - low[r] <= 10 * math.log10(3) + 1e-9


def test_a_goal_no_tucker_can_reach_is_met_by_a_residual_on_the_lattice(tmp_path, capsys):
    src = tmp_path / "noise.npy"
    vol = _noise_volume((136, 132, 130))  # every mode over the largest goal rank, 128: no Tucker reaches 40 dB
    np.save(src, vol)
    out = tmp_path / "n.finr"
    assert main(["fit", str(src), "-o", str(out), "--target-psnr", "40", "--steps", "2", "--progress", "none"]) == 0
    captured = capsys.readouterr()
    assert "no Tucker of at most 128^3 core values reaches 40 dB" in captured.err and "residual" in captured.err
    assert "lattice residual of" in captured.out
    field = finr3d.load(out)
    assert type(field.detail).__name__ == "LatticeResidual" and field.detail.resolution == vol.shape
    psnr = VolumeTarget(src).evaluate(field, ssim=False)["psnr"]
    assert 40.0 <= psnr < 41.5  # the goal, and not far past it (the residual's step is searched to it)


def test_the_volume_presets_learning_rate_belongs_to_its_tucker():
    # 2e-4 after the HOSVD start of the preset's Tucker (RESULTS.md, 'The volume preset's learning rate'); a
    # structure the caller picks keeps the generic rate, and a rate the caller gives wins
    from finr3d.config import FitConfig

    vol = VolumeTarget(uint8_volume(12))
    lr = lambda **kw: finr3d.fit(vol, steps=1, width=8, **kw).history["fit_config"]["lr"]  # noqa: E731
    assert lr() == 2e-4
    assert lr(rank=8) == FitConfig().lr == 2e-3  # the generic CP
    assert lr(decomposition="cp", rank=8) == 2e-3
    assert lr(lr=1e-3) == 1e-3


def test_a_plain_fit_held_low_by_the_preset_rank_says_how_to_ask_for_more(tmp_path, capsys):
    noise, smooth = tmp_path / "noise.npy", tmp_path / "smooth.npy"
    np.save(noise, _noise_volume())
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 22, 20)], indexing="ij")
    np.save(smooth, (np.exp(-(x**2 + y**2)) * np.cos(z)).astype(np.float32))
    assert main(["fit", str(noise), "-o", str(tmp_path / "n.finr"), "--steps", "2", "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "not low-rank" in err and "--target-psnr" in err  # white noise: rank 48 of 50-56 samples holds ~13 dB
    assert main(["fit", str(smooth), "-o", str(tmp_path / "s.finr"), "--steps", "2", "--progress", "none"]) == 0
    assert "not low-rank" not in capsys.readouterr().err  # a rank-1 volume: 2 steps end low, but not for rank
    # a structure the user chose is theirs: no advice
    assert main(["fit", str(noise), "-o", str(tmp_path / "m.finr"), "--steps", "2", "--rank", "4",
                 "--progress", "none"]) == 0
    assert "not low-rank" not in capsys.readouterr().err


def test_fit_with_an_unreachable_preset_rank_fits_the_rank_the_goal_needs(tmp_path, capsys, monkeypatch):
    src = tmp_path / "noise.npy"
    np.save(src, _noise_volume())
    out = tmp_path / "n.finr"
    seen, real_fit = [], finr3d.fit
    monkeypatch.setattr(finr3d, "fit", lambda *a, **kw: seen.append(kw) or real_fit(*a, **kw))
    assert main(["fit", str(src), "-o", str(out), "--target-psnr", "17", "--width", "16", "--steps", "40",
                 "--progress", "none"]) == 0
    assert seen[-1]["nested_ranks"] is False  # the goal's rank: no nested steps (they cost its full-rank quality)
    assert main(["fit", str(src), "-o", str(tmp_path / "k.finr"), "--target-psnr", "17", "--width", "16",
                 "--steps", "40", "--nested-ranks", "--progress", "none"]) == 0
    assert seen[-1]["nested_ranks"] is True  # ... unless the user asks for them
    err = capsys.readouterr().err
    assert "guarantees only" in err and "fitting ranks [" in err
    field = finr3d.load(out)
    assert field.config.decomposition == "tucker" and field.config.basis not in (0, "0")  # "grid": one term a sample
    assert max(seen[0]["rank"]) > 48  # the fit took more than the preset's rank
    # the file keeps either more than the preset's rank could or a smaller field and a lattice residual (on white
    # noise the residual is the smaller file)
    assert max(field.history["auto_rank"]["ranks"]) > 48 or "detail" in field.history["auto_rank"]
    explicit = tmp_path / "e.finr"
    assert main(["fit", str(src), "-o", str(explicit), "--target-psnr", "10", "--rank", "8", "--decomposition",
                 "tucker", "--width", "16", "--steps", "3", "--progress", "none"]) == 0
    assert "guarantees only" not in capsys.readouterr().err  # an explicit rank is the user's
    assert max(finr3d.load(explicit).ranks) <= 8
