"""Each decomposition against a naive per-point reference, for 2, 3 and 4 modes."""

import itertools
import math

import pytest
import torch

from finr3d.decompositions import DECOMPOSITIONS

torch.manual_seed(0)


def naive_value(name, blk, feats_at_point, prefix):
    """Value at one grid point from the textbook formula, by explicit loops over ranks."""
    if name == "cp":
        w = blk.mixing(prefix)
        prod = torch.ones(prefix[0], dtype=torch.float64)
        for f in feats_at_point:
            prod = prod * f[: prefix[0]]
        return prod @ w
    if name == "tucker":
        core = blk.mixing(prefix)
        out = torch.zeros(core.shape[-1], dtype=torch.float64)
        for idx in itertools.product(*[range(r) for r in prefix]):
            term = core[idx]
            for m, r in enumerate(idx):
                term = term * feats_at_point[m][r]
            out = out + term
        return out
    bonds = (1,) + tuple(blk.ranks)
    cut = (1,) + tuple(prefix)
    mat = torch.eye(1, dtype=torch.float64)
    for m, f in enumerate(feats_at_point):
        core = f.reshape(bonds[m], bonds[m + 1])[: cut[m], : cut[m + 1]]
        mat = mat @ core
    return mat[0] @ blk.mixing(prefix)


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("n_modes", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_grid_matches_naive(name, n_modes, channels):
    blk = DECOMPOSITIONS[name](n_modes, 3, channels).double()
    sizes = [2, 3, 2, 2][:n_modes]
    feats = [torch.randn(n, d, dtype=torch.float64) for n, d in zip(sizes, blk.feature_dims())]
    for prefix in [blk.ranks, blk.prefix(2)]:
        grid = blk.contract_grid(feats, prefix)
        assert grid.shape == (*sizes, channels)
        for idx in itertools.product(*[range(n) for n in sizes]):
            ref = naive_value(name, blk, [feats[m][i] for m, i in enumerate(idx)], prefix)
            torch.testing.assert_close(grid[idx], ref)


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("n_modes", [2, 3, 4])
def test_points_match_grid(name, n_modes):
    blk = DECOMPOSITIONS[name](n_modes, 4, 2).double()
    sizes = [3, 4, 2, 3][:n_modes]
    feats = [torch.randn(n, d, dtype=torch.float64) for n, d in zip(sizes, blk.feature_dims())]
    grid = blk.contract_grid(feats)
    idx = torch.tensor(list(itertools.product(*[range(n) for n in sizes])))
    pts = blk.contract_points([feats[m][idx[:, m]] for m in range(n_modes)])
    torch.testing.assert_close(pts, grid.reshape(-1, 2))


def test_prefix_rules():
    tucker = DECOMPOSITIONS["tucker"](3, (4, 3, 2), 1)
    assert tucker.prefix(3) == (3, 3, 2)
    assert tucker.prefix((1, 1, 1)) == (1, 1, 1)
    tt = DECOMPOSITIONS["tt"](3, 5, 3)
    assert tt.ranks == (5, 5, 5)
    assert tt.prefix(2) == (2, 2, 5)  # the output bond is not truncated
    cp = DECOMPOSITIONS["cp"](3, 8, 1)
    assert cp.prefix(20) == (8,)
    with pytest.raises(ValueError):
        cp.prefix(0)
    with pytest.raises(ValueError):
        DECOMPOSITIONS["tucker"](3, (4, 4), 1)
