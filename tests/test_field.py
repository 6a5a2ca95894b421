"""FactorizedField: grid == points, prefixes, gradients, introspection, save/load."""

import math

import numpy as np
import pytest
import torch

from finr3d.backbones import BACKBONES, Siren
from finr3d.config import FieldConfig
from finr3d.decompositions import DECOMPOSITIONS
from finr3d.errors import InputError
from finr3d.field import FactorizedField
from tolerances import assert_float32_close, field_terms

LAYOUTS = {
    "2d": (2, None),
    "3d": (3, None),
    "4d": (4, None),
    "xy+t": (3, [[1, 2], [0]]),
}


def make(decomposition="cp", backbone="siren", ndim=3, modes=None, channels=1, rank=4, **kw):
    torch.manual_seed(0)
    cfg = FieldConfig(decomposition=decomposition, backbone=backbone, rank=rank, width=16, depth=1, modes=modes, **kw)
    return FactorizedField(ndim, channels, cfg, samples=[8] * ndim)


def lattice_points(coords):
    grids = torch.meshgrid(*coords, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_grid_equals_points(decomposition, layout, channels):
    ndim, modes = LAYOUTS[layout]
    field = make(decomposition, ndim=ndim, modes=modes, channels=channels)
    coords = [torch.rand(n) * 2 - 1 for n in [5, 4, 3, 2][:ndim]]
    grid = field.grid(coords, squeeze=False)
    pts = field.points(lattice_points(coords)).detach().numpy()
    assert_float32_close(grid.reshape(-1, channels), pts, field_terms(field))


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
def test_chunked_grid_equals_unchunked(decomposition):
    field = make(decomposition, channels=2)
    coords = [torch.linspace(-1, 1, n) for n in (9, 7, 5)]
    full = field.forward_grid(coords).detach().numpy()
    chunked = field.grid(coords, squeeze=False, chunk_elements=40)  # forces one row per chunk
    assert_float32_close(chunked, full, field_terms(field))


def test_grouped_mode_chunking_and_order():
    field = make("tucker", ndim=3, modes=[[1, 2], [0]], channels=3)
    coords = [torch.linspace(-1, 1, n) for n in (4, 6, 5)]
    full = field.forward_grid(coords).detach().numpy()
    assert full.shape == (4, 6, 5, 3)
    assert_float32_close(field.grid(coords, squeeze=False, chunk_elements=50), full, field_terms(field))


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_gradients_reach_every_parameter(decomposition, backbone):
    field = make(decomposition, backbone=backbone, channels=2)
    out = field.forward_grid([torch.linspace(-1, 1, 5)] * 3)
    out.square().sum().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("channel_factor", [True, False])
def test_truncate_matches_rank_argument_and_manual_slicing(decomposition, channel_factor):
    field = make(decomposition, rank=6, channels=3, channel_factor=channel_factor)
    coords = [torch.linspace(-1, 1, n) for n in (5, 4, 3)]
    small = field.truncate(3)
    assert_float32_close(small.grid(coords), field.grid(coords, rank=3), field_terms(field))
    assert small.parameter_count() < field.parameter_count()
    # manual slicing of the raw features and the mixing parameter
    with torch.no_grad():
        feats = [net(c[:, None]) for net, c in zip(field.nets, coords)]
        if not field.independent:
            blk = field.blocks[0]
            if decomposition == "cp":
                ref = torch.einsum("ar,br,cr,rk->abck", *[f[:, :3] for f in feats], blk.weights[:3])
            elif decomposition == "tucker":
                ref = torch.einsum("ar,bs,ct,rstk->abck", *[f[:, :3] for f in feats], blk.core[:3, :3, :3])
            else:
                r1, r2, r3 = blk.ranks
                a = feats[0].reshape(-1, 1, r1)[:, :, :3]
                b = feats[1].reshape(-1, r1, r2)[:, :3, :3]
                c = feats[2].reshape(-1, r2, r3)[:, :3, :]
                ref = torch.einsum("aor,brs,cst,tk->abck", a, b, c, blk.weights)
            assert_float32_close(field.grid(coords, rank=3, squeeze=False), (ref + field.bias).numpy(), field_terms(field))


def test_siren_init_keeps_activation_statistics():
    torch.manual_seed(0)
    net = Siren(1, 8, width=256, depth=4, omega0=30.0)
    x = torch.linspace(-1, 1, 4096)[:, None]
    h = x
    stds = []
    for layer in net.body:
        h = layer(h)
        stds.append(float(h.std()))
    # Sitzmann et al.: sine activations stay arcsine-distributed with std ~ 1/sqrt(2) through depth
    for s in stds[1:]:
        assert 0.6 < s < 0.8, stds


def test_parts_and_bytes():
    field = make("tucker", rank=(4, 3, 2), channels=3)
    parts = field.parts()
    assert parts["tucker:mixing"] == 4 * 3 * 2 * 3
    assert sum(parts.values()) == field.parameter_count()
    assert field.nbytes(2)["total"] == 2 * field.parameter_count()


def test_bad_configs_raise_clear_errors():
    with pytest.raises(InputError, match="rank"):
        make(rank=0)
    with pytest.raises(InputError, match="decomposition"):
        make(decomposition="svd")
    with pytest.raises(InputError, match="backbone"):
        make(backbone="gelu")
    with pytest.raises(InputError, match="cover"):
        make(modes=[[0], [0], [1]])
    field = make()
    with pytest.raises(InputError, match="resolution"):
        field.grid(0)
    with pytest.raises(InputError, match="resolution must be between"):
        field.grid(100000)
    with pytest.raises(InputError, match="more than"):
        field.grid(4096)  # 68 G values: refused before allocating


def test_save_load_round_trip_fp32_is_exact(tmp_path):
    field = make("tt", rank=5, channels=3, ndim=3, modes=[[1, 2], [0]])
    field.target_info = {"kind": "image", "shape": [4, 5, 6]}
    path = tmp_path / "f.finr"
    field.save(path, quantization="fp32")
    import finr3d

    back = finr3d.load(path)
    for (k, a), (_, b) in zip(field.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    coords = [torch.linspace(-1, 1, n) for n in (4, 5, 6)]
    np.testing.assert_array_equal(back.grid(coords), field.grid(coords))
    assert back.kind == "image"


def test_lower_rank_saves_smaller_file(tmp_path):
    field = make("cp", rank=16, channels=1)
    full = field.save(tmp_path / "full.finr", quantization="fp16")
    small = field.save(tmp_path / "small.finr", rank=4, quantization="fp16")
    assert small < full
    # sweeps size files with encode(); it must be exactly what save() writes
    assert field.encode(rank=4, quantization="fp16") == (tmp_path / "small.finr").read_bytes()
    import finr3d

    back = finr3d.load(tmp_path / "small.finr")
    assert back.ranks[0] <= 4  # compact: components below the quantization step are dropped
    field.save(tmp_path / "small_ed.finr", rank=4, quantization="fp16", editable=True)
    assert finr3d.load(tmp_path / "small_ed.finr").ranks == (4,)


def test_hostile_header_declaring_a_huge_model_is_refused_without_building_it(tmp_path):
    """A header may claim width 4096 x depth 16 (800M parameters); load must refuse before allocating it."""
    import resource

    import finr3d
    from finr3d import codec
    from finr3d.errors import FormatError

    field = make("cp", rank=4)
    header, tensors = codec.decode(codec.encode(*field.to_parts()))
    header["field_config"].update(width=4096, depth=16)
    for bc in header["backbone_configs"]:
        bc.update(width=4096, depth=16)
    (tmp_path / "hostile.finr").write_bytes(codec.encode(header, tensors))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FormatError, match="declares"):
        finr3d.load(tmp_path / "hostile.finr")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500  # building it for real would take 3.2 GB


# --------------------------------------------------------------------------- cosine-basis readout
@pytest.mark.parametrize("backbone", sorted(set(BACKBONES) - {"cosine"}))  # cosine: no hidden features
def test_grid_basis_reproduces_any_curve_on_the_stored_samples(backbone):
    """With one cosine term per stored sample, the readout holds arbitrary (rough) curves exactly on the
    grid, whatever the backbone; between samples the curve stays finite and bounded."""
    from finr3d.closed_form import readout

    n = 37
    field = FactorizedField(2, 1, FieldConfig(rank=12, width=16, backbone=backbone, basis="grid"), samples=[n, 20])
    net = field.nets[0]
    assert net.basis == n and net.out.in_features == 16 + n and field.nets[1].basis == 20
    x = torch.linspace(-1, 1, n)[:, None]
    rough = torch.randn(n, 12, generator=torch.Generator().manual_seed(0))
    readout(net, x, rough, ridge=1e-6)
    with torch.no_grad():
        err = float((net(x) - rough).abs().max())
        between = net(torch.linspace(-1, 1, 4 * n)[:, None])
    assert err < 1e-3, err
    assert torch.isfinite(between).all() and float(between.abs().max()) < 10 * float(rough.abs().max())


def test_basis_validation_modes_and_round_trip(tmp_path):
    with pytest.raises(InputError, match="basis"):
        make(basis=-1)
    with pytest.raises(InputError, match="basis"):
        make(basis="all")
    with pytest.raises(InputError, match="basis"):
        make(basis=10**6)
    # a grouped (x, y) mode has no cosine basis; its 1-D partner does
    field = FactorizedField(3, 3, FieldConfig(rank=4, width=8, modes=[[1, 2], [0]], basis=6), samples=[5, 6, 7])
    assert [net.basis for net in field.nets] == [0, 6]
    field = FactorizedField(3, 3, FieldConfig(rank=6, width=8, basis="grid"), samples=[5, 6, 7])
    with torch.no_grad():
        for net in field.nets:
            net.out.weight.normal_()  # the cosine terms start silent; make them matter
    coords = [torch.linspace(-1, 1, n) for n in (5, 6, 7)]
    field.save(tmp_path / "f.finr", quantization="fp32", editable=True)
    import finr3d

    back = finr3d.load(tmp_path / "f.finr")
    assert [net.basis for net in back.nets] == [5, 6, 7]
    np.testing.assert_array_equal(back.grid(coords), field.grid(coords))
    assert_float32_close(field.truncate(3).grid(coords), field.grid(coords, rank=3), field_terms(field))


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("layout", ["3d", "4d", "xy+t"])
def test_plane_reader_equals_grid(decomposition, layout):
    """Planes read a few at a time (the other modes contracted once, or grid() per read for grouped modes),
    at full rank and at a prefix, into a fresh array or into each channel's block of a larger buffer."""
    ndim, modes = LAYOUTS[layout]
    field = make(decomposition, ndim=ndim, modes=modes, channels=2, rank=5 if decomposition != "tucker" else 3)
    coords = [torch.linspace(-1, 1, n) for n in [7, 5, 4, 3][:ndim]]
    for rank in (None, 2):
        full = np.moveaxis(field.grid(coords, rank=rank, squeeze=False), -1, 0)
        read = field.plane_reader(coords, rank=rank)
        buffer = np.full((2, 4, *full.shape[2:]), np.nan, np.float32)
        got = []
        for i0, i1 in ((0, 3), (3, 6), (6, 7)):
            view = buffer[:, 1:1 + i1 - i0]  # channel c's planes are one contiguous block, the channels are not
            assert read(i0, i1, view) is view
            got.append(view.copy())
            assert_float32_close(read(i0, i1), view, field_terms(field))
        assert np.isnan(buffer[:, 0]).all()  # nothing written outside the view
        assert_float32_close(np.concatenate(got, axis=1), full, field_terms(field))
    # a cache over the limit falls back to grid() per read, with the same values
    slow = field.plane_reader(coords, max_cached=1)
    assert_float32_close(slow(2, 5), np.moveaxis(field.grid(coords, squeeze=False), -1, 0)[:, 2:5],
                         field_terms(field))
