"""Pure helpers of the generator: bisection, connectivity repair, names, codes."""

from __future__ import annotations

import numpy as np
import pytest

from cityops.synth.areas import check_district_code
from cityops.synth.names import cn_number, take
from cityops.synth.partition import bisect, merge_small, repair_connectivity, split_counts


def _grid_edges(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(nx * ny).reshape(ny, nx)
    a = np.r_[idx[:, :-1].ravel(), idx[:-1, :].ravel()]
    b = np.r_[idx[:, 1:].ravel(), idx[1:, :].ravel()]
    return a, b


def test_bisect_balances_weight():
    x, y = np.meshgrid(np.arange(10.0), np.arange(6.0))
    lab = bisect(x.ravel(), y.ravel(), np.ones(60), 4)
    assert sorted(np.bincount(lab)) == [15, 15, 15, 15]


def test_repair_moves_detached_piece():
    a, b = _grid_edges(4, 1)  # a row of 4 cells: 0-1-2-3
    labels = np.array([0, 1, 1, 0])  # group 0 is split in two
    fixed = repair_connectivity(labels, a, b, np.array([5.0, 1, 1, 1]), np.zeros(4, int))
    assert fixed.tolist() == [0, 1, 1, 1]


def test_repair_respects_parent():
    a, b = _grid_edges(4, 1)
    labels = np.array([0, 1, 1, 0])
    parent = np.array([0, 0, 1, 1])  # cell 3 may only join a group of parent 1
    fixed = repair_connectivity(labels, a, b, np.array([5.0, 1, 1, 1]), parent)
    assert fixed[3] == 1


def test_merge_small_joins_lightest_neighbour():
    a, b = _grid_edges(3, 1)
    labels = np.array([0, 1, 2])
    count = np.array([10.0, 1.0, 4.0])
    merged = merge_small(labels, a, b, count, np.zeros(3, int), 3.0)
    assert merged.tolist() == [0, 2, 2]


def test_split_counts():
    assert split_counts(10, np.array([1.0, 1.0, 2.0])).tolist() == [3, 3, 4]
    assert split_counts(3, np.array([100.0, 0.0, 0.0])).tolist() == [1, 1, 1]


def test_cn_number():
    assert cn_number(np.array([1, 9, 10, 11, 20, 35, 99])).tolist() == [
        "一",
        "九",
        "十",
        "十一",
        "二十",
        "三十五",
        "九十九",
    ]


def test_take_numbers_when_pool_runs_out():
    pool = np.array(["金桥", "青枫"])
    assert take(pool, 0, 5).tolist() == ["金桥", "青枫", "金桥二", "青枫二", "金桥三"]


@pytest.mark.parametrize("code", ["320599", "110101", "371083"])
def test_district_code_ok(code):
    check_district_code(code)


@pytest.mark.parametrize("code", ["32059", "3205990", "320500", "000101", "32a599", "320099"])
def test_district_code_bad(code):
    with pytest.raises(ValueError):
        check_district_code(code)
