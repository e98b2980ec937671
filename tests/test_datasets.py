"""The Auto MPG data shipped in the package: content, split, standardisation, packaging."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch

from constrained_grad.datasets import (
    AUTO_MPG_DECREASING,
    AUTO_MPG_FEATURES,
    load_auto_mpg,
    read_auto_mpg,
)
from constrained_grad.errors import InputValidationError


def shipped_rows() -> list[list[str]]:
    """Oracle: the CSV read with the csv module only."""
    text = resources.files("constrained_grad").joinpath("data", "auto_mpg.csv").read_text()
    return list(csv.reader(text.splitlines()))


def test_shipped_file_is_the_documented_processing() -> None:
    rows = shipped_rows()
    assert rows[0] == ["mpg", *AUTO_MPG_FEATURES]
    body = rows[1:]
    assert len(body) == 392  # 398 rows minus the 6 with '?' horsepower
    assert all(len(r) == 8 and "?" not in r for r in body)
    assert body[0] == ["18", "8", "307", "130", "3504", "12", "70", "1"]  # chevrolet chevelle
    values = torch.tensor([[float(v) for v in r] for r in body])
    assert values[:, 0].min() >= 9 and values[:, 0].max() <= 46.6  # mpg range of the source
    assert set(values[:, 7].tolist()) == {1.0, 2.0, 3.0}  # origin
    assert values[:, 6].min() == 70 and values[:, 6].max() == 82  # model years
    readme = resources.files("constrained_grad").joinpath("data", "README.md").read_text()
    for needle in ("CC BY 4.0", "Quinlan, R. (1993). Auto MPG. UCI Machine Learning Repository"):
        assert needle in readme


def test_read_auto_mpg_matches_the_csv() -> None:
    x, y, names = read_auto_mpg()
    rows = shipped_rows()[1:]
    assert names == AUTO_MPG_FEATURES and x.dtype == torch.float64
    assert torch.equal(y, torch.tensor([float(r[0]) for r in rows], dtype=torch.float64))
    assert torch.equal(
        x, torch.tensor([[float(v) for v in r[1:]] for r in rows], dtype=torch.float64)
    )


def test_split_partitions_the_rows_and_is_seeded() -> None:
    raw = load_auto_mpg(standardize=False, seed=3)
    assert (len(raw.x_train), len(raw.x_val), len(raw.x_test)) == (251, 63, 78)
    rows = torch.cat(
        [
            torch.cat([x, y], dim=1).double()
            for x, y in (
                (raw.x_train, raw.y_train),
                (raw.x_val, raw.y_val),
                (raw.x_test, raw.y_test),
            )
        ]
    )
    x, y, _ = read_auto_mpg()
    full = torch.cat([x, y[:, None]], dim=1).float().double()

    # same multiset of rows: sort both lexicographically
    def lex(t: torch.Tensor) -> torch.Tensor:
        for k in reversed(range(t.shape[1])):
            t = t[torch.sort(t[:, k], stable=True).indices]
        return t

    assert torch.equal(lex(rows), lex(full))
    again = load_auto_mpg(standardize=False, seed=3)
    other = load_auto_mpg(standardize=False, seed=4)
    assert torch.equal(again.x_test, raw.x_test)
    assert not torch.equal(other.x_test, raw.x_test)


def test_standardisation_uses_training_rows_only() -> None:
    data = load_auto_mpg(seed=0)
    raw = load_auto_mpg(standardize=False, seed=0)
    assert torch.allclose(data.x_train.mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(data.x_train.std(0, unbiased=False), torch.ones(7), atol=1e-5)
    assert abs(float(data.y_train.mean())) < 1e-5
    assert torch.allclose(data.x_mean, raw.x_train.mean(0), rtol=1e-6)
    assert data.y_mean == pytest.approx(float(raw.y_train.double().mean()), rel=1e-6)
    assert torch.allclose(data.x_to_raw(data.x_test), raw.x_test, rtol=1e-5, atol=1e-3)
    assert torch.allclose(data.x_from_raw(raw.x_val), data.x_val, atol=1e-5)
    assert torch.allclose(data.y_to_raw(data.y_test), raw.y_test, atol=1e-4)
    assert data.mse_scale == pytest.approx(data.y_std**2)
    # the box spans every row of every split
    box = data.box
    for x in (data.x_train, data.x_val, data.x_test):
        assert bool(box.contains(x.double(), atol=1e-6).all())
    assert [data.feature_index(n) for n in AUTO_MPG_DECREASING] == [1, 2, 3]


@pytest.mark.parametrize(
    "split", [(0.5, 0.5), (0.7, 0.2, 0.2), (-0.1, 0.6, 0.5), (0.001, 0.0, 0.999), "abc"]
)
def test_bad_split_raises(split: object) -> None:
    with pytest.raises(InputValidationError, match="load_auto_mpg"):
        load_auto_mpg(split=split)  # type: ignore[arg-type]


def test_unknown_feature_name_raises() -> None:
    with pytest.raises(InputValidationError, match="unknown feature 'mass'"):
        load_auto_mpg().feature_index("mass")
