r"""Small data sets shipped inside the package (no download, no path outside the package).

:func:`load_auto_mpg` reads ``constrained_grad/data/auto_mpg.csv`` (UCI Auto MPG, CC BY 4.0;
attribution: Quinlan, R. (1993). Auto MPG. UCI Machine Learning Repository; see the README
in that folder) through :mod:`importlib.resources`, so it works from a source tree, an
installed wheel or a zip.

Standardisation uses the training rows only (no information from validation or test
rows): :math:`z = (x - \mu_{train}) / \sigma_{train}` with the population standard
deviation, per feature and for the target.

>>> from constrained_grad.datasets import load_auto_mpg
>>> data = load_auto_mpg(seed=0)
>>> data.x_train.shape, data.y_test.shape
(torch.Size([251, 7]), torch.Size([78, 1]))
>>> data.feature_names[1:4]
('displacement', 'horsepower', 'weight')
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch

from constrained_grad.constraints import Box
from constrained_grad.errors import InputValidationError

__all__ = [
    "AUTO_MPG_DECREASING",
    "AUTO_MPG_FEATURES",
    "RegressionData",
    "load_auto_mpg",
    "read_auto_mpg",
]

AUTO_MPG_FEATURES = (
    "cylinders",
    "displacement",
    "horsepower",
    "weight",
    "acceleration",
    "model_year",
    "origin",
)
#: Features mpg is expected to decrease in (the monotonicity used in the literature).
AUTO_MPG_DECREASING = ("displacement", "horsepower", "weight")
_AUTO_MPG_FILE = "auto_mpg.csv"
_AUTO_MPG_ROWS = 392


@dataclass(frozen=True)
class RegressionData:
    """A seeded train/validation/test split of a regression table.

    Attributes:
        x_train, x_val, x_test: features ``(n, d)`` (standardised if ``standardized``).
        y_train, y_val, y_test: targets ``(n, 1)`` (standardised if ``standardized``).
        feature_names: the ``d`` feature names, in column order.
        target_name: name of the target.
        x_mean, x_std: ``(d,)`` training-row statistics of the raw features.
        y_mean, y_std: training-row statistics of the raw target (floats).
        standardized: whether the tensors above are standardised.
        x_low, x_high: ``(d,)`` per-feature minimum and maximum over *all* rows (features
            only, no targets), in the units of the tensors: the input domain.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: tuple[str, ...]
    target_name: str
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float
    standardized: bool
    x_low: torch.Tensor
    x_high: torch.Tensor

    def feature_index(self, name: str) -> int:
        """Column of feature ``name``."""
        try:
            return self.feature_names.index(name)
        except ValueError:
            raise InputValidationError(
                f"RegressionData.feature_index: unknown feature {name!r}. Use one of "
                f"{list(self.feature_names)}."
            ) from None

    @property
    def box(self) -> Box:
        """The input domain :class:`~constrained_grad.Box` (feature ranges over all rows)."""
        return Box(self.x_low, self.x_high)

    def x_to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Features back in their original units (identity if not standardised)."""
        if not self.standardized:
            return x
        return x * self.x_std.to(x) + self.x_mean.to(x)

    def x_from_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features in the units of the tensors (identity if not standardised)."""
        if not self.standardized:
            return x
        return (x - self.x_mean.to(x)) / self.x_std.to(x)

    def y_to_raw(self, y: torch.Tensor) -> torch.Tensor:
        """Targets (or predictions) back in their original units."""
        return y * self.y_std + self.y_mean if self.standardized else y

    @property
    def mse_scale(self) -> float:
        """Factor turning an MSE in the tensors' units into the target's squared units."""
        return self.y_std**2 if self.standardized else 1.0


def read_auto_mpg() -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The raw shipped table: features ``(392, 7)`` and ``mpg`` ``(392,)`` in float64."""
    who = "read_auto_mpg"
    text = resources.files("constrained_grad").joinpath("data", _AUTO_MPG_FILE).read_text("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else []
    expected = ["mpg", *AUTO_MPG_FEATURES]
    if header != expected:
        raise InputValidationError(
            f"{who}: the shipped {_AUTO_MPG_FILE} has columns {header} (expected {expected}). "
            "Reinstall constrained_grad; the package data is damaged."
        )
    values = torch.tensor([[float(v) for v in r] for r in rows[1:]], dtype=torch.float64)
    if values.shape != (_AUTO_MPG_ROWS, len(expected)):
        raise InputValidationError(
            f"{who}: the shipped {_AUTO_MPG_FILE} has shape {tuple(values.shape)} (expected "
            f"({_AUTO_MPG_ROWS}, {len(expected)})). Reinstall constrained_grad."
        )
    return values[:, 1:].contiguous(), values[:, 0].contiguous(), AUTO_MPG_FEATURES


def _split_sizes(split: Sequence[float], n: int, who: str) -> tuple[int, int, int]:
    try:
        fr = [float(f) for f in split]
    except (TypeError, ValueError):
        raise InputValidationError(
            f"{who}: split must be three fractions (train, val, test) (got {split!r})."
        ) from None
    if len(fr) != 3 or not all(math.isfinite(f) and f >= 0 for f in fr):
        raise InputValidationError(
            f"{who}: split must be three non-negative fractions (train, val, test) (got "
            f"{split!r}). Use e.g. (0.64, 0.16, 0.2)."
        )
    if abs(sum(fr) - 1.0) > 1e-6:
        raise InputValidationError(
            f"{who}: split fractions must sum to 1 (got {split!r}, sum {sum(fr):g})."
        )
    n_train, n_val = round(fr[0] * n), round(fr[1] * n)
    n_test = n - n_train - n_val
    if n_train < 2 or n_test < 0:
        raise InputValidationError(
            f"{who}: split {split!r} leaves {n_train} training rows of {n}; need at least 2 to "
            "standardise. Give the training part a larger fraction."
        )
    return n_train, n_val, n_test


def load_auto_mpg(
    standardize: bool = True,
    seed: int = 0,
    split: Sequence[float] = (0.64, 0.16, 0.2),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RegressionData:
    """Auto MPG (392 complete rows), seeded split, standardised with training statistics.

    Args:
        standardize: standardise features and target with the training rows' mean and
            (population) standard deviation; the statistics are returned either way.
        seed: seeds the row permutation (``torch.Generator``), so splits are reproducible.
        split: fractions ``(train, val, test)`` summing to 1; sizes are rounded, the test
            part takes the remainder (default 251 / 63 / 78 rows).
        dtype, device: of the returned tensors.

    Returns:
        :class:`RegressionData` with features in the order of :data:`AUTO_MPG_FEATURES`.
    """
    who = "load_auto_mpg"
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputValidationError(f"{who}: seed must be an int (got {seed!r}).")
    x, y, names = read_auto_mpg()
    n_train, n_val, _ = _split_sizes(split, x.shape[0], who)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    parts = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    x_mean, y_mean = x[parts[0]].mean(0), float(y[parts[0]].mean())
    x_std = x[parts[0]].std(0, unbiased=False)
    x_std = torch.where(x_std > 0, x_std, torch.ones_like(x_std))
    y_std = float(y[parts[0]].std(unbiased=False)) or 1.0
    if standardize:
        x = (x - x_mean) / x_std
        y = (y - y_mean) / y_std

    def out(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype=dtype, device=device)

    return RegressionData(
        x_train=out(x[parts[0]]),
        y_train=out(y[parts[0]].unsqueeze(1)),
        x_val=out(x[parts[1]]),
        y_val=out(y[parts[1]].unsqueeze(1)),
        x_test=out(x[parts[2]]),
        y_test=out(y[parts[2]].unsqueeze(1)),
        feature_names=names,
        target_name="mpg",
        x_mean=x_mean.to(dtype),
        x_std=x_std.to(dtype),
        y_mean=y_mean,
        y_std=y_std,
        standardized=bool(standardize),
        x_low=x.min(0).values.to(dtype),
        x_high=x.max(0).values.to(dtype),
    )
