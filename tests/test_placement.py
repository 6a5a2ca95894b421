"""finr3d.placement and finr3d.ranks: the transform and rank rules the add-on takes from the core."""

import numpy as np
import pytest

from finr3d.placement import move_info, placement_delta
from finr3d.ranks import largest_rank, power_of_two_ranks


def turn(angle, axis, move=(0, 0, 0), scale=1.0):
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m[:3, :3] *= scale
    m[:3, 3] = move
    return m


def test_move_composes_the_world_transform_and_scales_distances():
    world = np.diag([0.5, 0.5, 0.5, 1.0])
    info = {"world_from_normalized": world.tolist(), "value_scale": 0.1, "kind": "sdf"}
    delta = turn(0.3, 2, (1, 2, 3), scale=2.0)
    moved = move_info(info, delta)
    np.testing.assert_allclose(moved["world_from_normalized"], delta @ world, rtol=0, atol=1e-12)
    assert moved["value_scale"] == pytest.approx(0.2, rel=1e-12)  # a distance doubles with the scale
    assert info["value_scale"] == 0.1  # the input is not changed
    assert move_info(info, np.eye(4)) == info


def test_delta_undoes_the_old_placement():
    before, now = turn(0.2, 0, (1, 0, 0)), turn(-0.4, 1, (0, 3, 0), scale=1.5)
    np.testing.assert_allclose(placement_delta(now, before) @ before, now, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        placement_delta(now, np.zeros((4, 4)))


def test_rank_rules():
    assert largest_rank("tt", [5, 7, 3]) == 7  # the output bond does not count
    assert largest_rank("tucker", [4, 9, 2]) == 9 and largest_rank("cp", [8]) == 8
    assert power_of_two_ranks(48) == [2, 4, 8, 16, 32, 48] and power_of_two_ranks(1) == [1]
