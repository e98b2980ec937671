"""Point sources: where a constraint is evaluated, with stable ids where promised."""

from __future__ import annotations

import pytest
import torch

import constrained_grad as cg
from constrained_grad.constraints.points import check_batch_index
from constrained_grad.errors import InputValidationError


def test_inbox_draws_fresh_seeded_points_inside_the_box() -> None:
    box = cg.Box([-1.0, 0.0, 2.0], [1.0, 0.5, 2.0])  # last feature pinned
    source = cg.InBox(box, n=500)
    batch = torch.zeros(7, 3, dtype=torch.float64)
    x1, idx = source.points(batch, None, torch.Generator().manual_seed(0))
    x2, _ = source.points(batch, None, torch.Generator().manual_seed(0))
    x3, _ = source.points(batch, None, torch.Generator().manual_seed(1))
    assert idx is None
    assert x1.shape == (500, 3) and x1.dtype == torch.float64
    assert bool(box.contains(x1).all())
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert bool((x1[:, 2] == 2.0).all())
    # uniform: the mean is near the centre (std of the mean of 500 uniforms ~ width/77)
    torch.testing.assert_close(
        x1[:, :2].mean(0), torch.tensor([0.0, 0.25], dtype=torch.float64), rtol=0, atol=0.05
    )


def test_between_points_lie_on_segments_between_batch_points() -> None:
    batch = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # every segment is on the x-axis in [0, 1]
    x, idx = cg.Between(n=64).points(batch, None, torch.Generator().manual_seed(0))
    assert idx is None and x.shape == (64, 2)
    assert bool((x[:, 1] == 0).all()) and bool(((x[:, 0] >= 0) & (x[:, 0] <= 1)).all())
    assert not x.requires_grad


def test_atpoints_subsets_keep_their_ids() -> None:
    data = torch.arange(20.0).reshape(10, 2)
    source = cg.AtPoints(data, batch_size=4)
    x, idx = source.points(torch.zeros(3, 2), None, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and idx.shape == (4,) and len(set(idx.tolist())) == 4
    assert torch.equal(x, data[idx])
    x_all, idx_all = cg.AtPoints(data).points(torch.zeros(3, 2, dtype=torch.float64), None, None)
    assert torch.equal(idx_all, torch.arange(10)) and x_all.dtype == torch.float64
    assert source.num_points == 10


def test_check_batch_index_messages() -> None:
    source = cg.OnBatch(num_points=5)
    with pytest.raises(
        InputValidationError,
        match=r"mono: pointwise reduction on the batch needs "
        r"each sample's index, but the loader yields "
        r"none\. Wrap the dataset with "
        r"constrained_grad\.with_indices\(dataset\)",
    ):
        check_batch_index(None, source, "mono")
    with pytest.raises(InputValidationError, match=r"sample indices must be torch.long"):
        check_batch_index(torch.tensor([0.0, 1.0]), source, "mono")
    with pytest.raises(
        InputValidationError,
        match=r"sample index out of range \[0, 5\) \(got "
        r"0\.\.7\)\. Set OnBatch\(num_points="
        r"len\(dataset\)\)",
    ):
        check_batch_index(torch.tensor([0, 7]), source, "mono")
    check_batch_index(torch.tensor([0, 4]), source, "mono")


def test_box_around_and_project() -> None:
    x = torch.tensor([[0.0, -2.0], [1.0, 2.0]])
    box = cg.Box.around(x, pad=0.5)
    torch.testing.assert_close(box.low, torch.tensor([-0.5, -4.0], dtype=torch.float64))
    torch.testing.assert_close(box.high, torch.tensor([1.5, 4.0], dtype=torch.float64))
    projected = box.project(torch.tensor([[9.0, -9.0]]))
    torch.testing.assert_close(projected, torch.tensor([[1.5, -4.0]]))


def test_box_project_snaps_categorical_values_and_one_hot_groups() -> None:
    # feature 0 continuous, 1 categorical (values given unsorted), 2..4 one category
    # with off/on values -0.5 and 2.0 (standardised columns)
    box = cg.Box(
        [-1.0, -1.0, -0.5, -0.5, -0.5],
        [1.0, 5.0, 2.0, 2.0, 2.0],
        categorical={1: [5.0, -1.0, 2.0]},
        one_hot=[[2, 3, 4]],
    )
    x = torch.tensor([[3.0, 0.4, 0.1, 1.5, 0.3], [-0.2, 9.0, 3.0, -1.0, 0.0]])
    before = x.clone()
    projected = box.project(x)
    torch.testing.assert_close(
        projected, torch.tensor([[1.0, -1.0, -0.5, 2.0, -0.5], [-0.2, 5.0, 2.0, -0.5, -0.5]])
    )
    assert projected.dtype == x.dtype
    torch.testing.assert_close(x, before)  # not modified in place
    # one point (shape (d,)) works as a row
    torch.testing.assert_close(box.project(x[1]), projected[1])
    # points of the domain stay where they are
    drawn = box.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(box.project(drawn), drawn)
    assert bool(box.contains(projected).all())


def test_box_contains_checks_categories_and_one_hot_groups() -> None:
    box = cg.Box(
        [-1.0, -1.0, -0.5, -0.5, -0.5],
        [1.0, 5.0, 2.0, 2.0, 2.0],
        categorical={1: [5.0, -1.0, 2.0]},
        one_hot=[[2, 3, 4]],
    )
    drawn = box.sample(256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert bool(box.contains(drawn).all())
    good = torch.tensor([0.3, 2.0, -0.5, 2.0, -0.5], dtype=torch.float64)
    assert bool(box.contains(good))  # one point of shape (d,): a 0-d answer
    bad = {
        "outside the bounds": [1.5, 2.0, -0.5, 2.0, -0.5],
        "not a listed category": [0.3, 1.0, -0.5, 2.0, -0.5],
        "two columns on": [0.3, 2.0, 2.0, 2.0, -0.5],
        "no column on": [0.3, 2.0, -0.5, -0.5, -0.5],
        "a column between off and on": [0.3, 2.0, -0.5, 2.0, 0.7],
    }
    rows = torch.tensor(list(bad.values()), dtype=torch.float64)
    assert box.contains(rows).tolist() == [False] * len(bad)
    # within atol of a listed value or of the on/off values counts as in the domain
    near = good + torch.tensor([0.0, 1e-7, 1e-7, -1e-7, 0.0], dtype=torch.float64)
    assert not bool(box.contains(near)) and bool(box.contains(near, atol=1e-6))
    # (n, m, d) batches keep their leading shape
    assert box.contains(drawn.reshape(4, 64, 5)).shape == (4, 64)
