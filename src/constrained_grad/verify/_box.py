r"""The input domain shared by every verifier: a box with optional fixed and categorical features.

A domain is the box :math:`\{x : low \le x \le high\}` in :math:`\mathbb{R}^d`, where

* a *fixed* feature ``i -> v`` is pinned to ``v`` (its box becomes ``[v, v]``; a feature with
  ``low_i == high_i`` is fixed as well);
* a *categorical* feature ``i -> [v_1, ..., v_K]`` only takes the listed values: samplers draw
  among them and gradient steps never move it. Its box becomes ``[min_k v_k, max_k v_k]``;
* a *one-hot group* ``(i_1, ..., i_K)`` encodes one category: exactly one of its features is
  at its ``high`` ("on"), the others at their ``low``. Samplers draw the category, gradient
  steps never move it.

Everything is stored in float64 on the CPU; callers cast to the model's dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from constrained_grad.constraints.domain import OneHotGroups, check_one_hot, one_hot_rows
from constrained_grad.errors import InputValidationError

BoundLike = torch.Tensor | np.ndarray | Sequence[float]


@dataclass(frozen=True)
class Box:
    """A validated input domain (see the module docstring)."""

    low: torch.Tensor  # (d,) float64 cpu, fixed features already pinned
    high: torch.Tensor  # (d,) float64 cpu
    fixed: dict[int, float] = field(default_factory=dict)
    categorical: dict[int, tuple[float, ...]] = field(default_factory=dict)
    one_hot: OneHotGroups = ()

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def width(self) -> torch.Tensor:
        """``high - low`` (zero for fixed features)."""
        return self.high - self.low

    @property
    def categorical_indices(self) -> list[int]:
        return sorted(self.categorical)

    @property
    def continuous_free(self) -> list[int]:
        """Indices that vary continuously: ``low < high``, not categorical, in no group."""
        grouped = {i for g in self.one_hot for i in g}
        return [
            i
            for i in range(self.dim)
            if i not in self.categorical
            and i not in grouped
            and float(self.high[i]) > float(self.low[i])
        ]

    @property
    def sampled(self) -> list[int]:
        """One per coordinate a sampler must draw: the continuous free features, the
        categorical ones, then each one-hot group (named by its first feature)."""
        return self.continuous_free + self.categorical_indices + [g[0] for g in self.one_hot]

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Map ``u`` in ``[0, 1)^{len(sampled)}`` (rows) to points of the domain, float64.

        Continuous coordinates are scaled affinely, categorical ones pick value
        ``floor(u K)`` of their ``K`` allowed values, one-hot groups switch on feature
        ``floor(u K)`` of their ``K``; all other features sit at ``low``.
        """
        n = u.shape[0]
        x = self.low.unsqueeze(0).expand(n, -1).clone()
        cont = self.continuous_free
        if cont:
            idx = torch.tensor(cont)
            x[:, idx] = self.low[idx] + u[:, : len(cont)].to(torch.float64) * self.width[idx]
        for col, i in enumerate(self.categorical_indices, start=len(cont)):
            values = torch.tensor(self.categorical[i], dtype=torch.float64)
            k = torch.clamp((u[:, col].to(torch.float64) * len(values)).long(), 0, len(values) - 1)
            x[:, i] = values[k]
        first = len(cont) + len(self.categorical)
        picks = [
            torch.clamp((u[:, first + g].to(torch.float64) * len(group)).long(), 0, len(group) - 1)
            for g, group in enumerate(self.one_hot)
        ]
        for cols, block in one_hot_rows(self.one_hot, self.low, self.high, picks):
            x[:, cols] = block
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp ``x`` (rows) into the box, snap categorical features to the nearest value and
        each one-hot group to its most switched-on feature."""
        low = self.low.to(dtype=x.dtype, device=x.device)
        high = self.high.to(dtype=x.dtype, device=x.device)
        x = torch.maximum(torch.minimum(x, high), low)
        for i, vals in self.categorical.items():
            values = torch.tensor(vals, dtype=x.dtype, device=x.device)
            nearest = torch.argmin((x[:, i : i + 1] - values).abs(), dim=1)
            x[:, i] = values[nearest]
        if self.one_hot:
            low64, high64 = self.low.to(x.device), self.high.to(x.device)
            picks = []
            for group in self.one_hot:
                cols = list(group)
                level = (x[:, cols].double() - low64[cols]) / (high64[cols] - low64[cols])
                picks.append(level.argmax(dim=1).cpu())
            for cols, block in one_hot_rows(self.one_hot, self.low, self.high, picks):
                x[:, cols] = block.to(dtype=x.dtype, device=x.device)
        return x


def _as_vector(value: BoundLike, name: str, who: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            value.detach().cpu() if isinstance(value, torch.Tensor) else value,
            dtype=torch.float64,
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputValidationError(
            f"{who}: {name} must be a 1-D tensor or sequence of numbers (got "
            f"{type(value).__name__}). Pass e.g. torch.tensor([0.0, 1.0])."
        ) from err
    if t.dim() != 1 or t.shape[0] == 0:
        raise InputValidationError(
            f"{who}: {name} must have shape (d,) with d >= 1 (got shape {tuple(t.shape)}). "
            "Give one bound per input feature."
        )
    if not bool(torch.isfinite(t).all()):
        raise InputValidationError(
            f"{who}: {name} must be finite (got {t.tolist()}). Use the data range, e.g. "
            "X.min(0) / X.max(0), instead of infinite bounds."
        )
    return t


def _check_index(i: object, d: int, what: str, who: str) -> int:
    if isinstance(i, bool) or not isinstance(i, int | np.integer):
        raise InputValidationError(
            f"{who}: {what} keys must be int feature indices (got {i!r}). Use e.g. {{0: 1.5}}."
        )
    i = int(i)
    if not -d <= i < d:
        raise InputValidationError(
            f"{who}: {what} index {i} is out of range for {d} input features. "
            f"Use an index in [0, {d - 1}]."
        )
    return i % d


def make_box(
    low: BoundLike,
    high: BoundLike,
    *,
    fixed: Mapping[int, float] | None = None,
    categorical: Mapping[int, Sequence[float]] | None = None,
    one_hot: Sequence[Sequence[int]] | None = None,
    who: str,
) -> Box:
    """Validate ``low``, ``high``, ``fixed``, ``categorical`` and ``one_hot`` into a :class:`Box`.

    Raises :class:`~constrained_grad.errors.InputValidationError` on wrong shapes, non-finite
    values, ``low > high``, bad indices, empty or non-finite categorical value lists, and a
    feature declared both fixed and categorical. A fixed value overrides the box of its feature.
    """
    lo = _as_vector(low, "low", who)
    hi = _as_vector(high, "high", who)
    if lo.shape != hi.shape:
        raise InputValidationError(
            f"{who}: low and high must have the same shape (got {tuple(lo.shape)} and "
            f"{tuple(hi.shape)}). Give one lower and one upper bound per feature."
        )
    bad = torch.nonzero(lo > hi).flatten().tolist()
    if bad:
        i = bad[0]
        raise InputValidationError(
            f"{who}: low > high for feature(s) {bad} (got low[{i}]={float(lo[i])}, "
            f"high[{i}]={float(hi[i])}). Swap the bounds or fix the feature with low == high."
        )
    d = int(lo.shape[0])
    fixed_out: dict[int, float] = {}
    for key, value in (fixed or {}).items():
        i = _check_index(key, d, "fixed", who)
        v = float(value)
        if not math.isfinite(v):
            raise InputValidationError(
                f"{who}: fixed value of feature {i} must be finite (got {value!r}). "
                "Pass a real number."
            )
        fixed_out[i] = v
    lo = lo.clone()
    hi = hi.clone()
    for i, v in fixed_out.items():
        lo[i] = v
        hi[i] = v
    cat_out: dict[int, tuple[float, ...]] = {}
    for key, values in (categorical or {}).items():
        i = _check_index(key, d, "categorical", who)
        if i in fixed_out:
            raise InputValidationError(
                f"{who}: feature {i} is both fixed and categorical (got fixed={fixed_out[i]}, "
                f"categorical={values!r}). Keep only one of the two."
            )
        try:
            vals = tuple(sorted({float(v) for v in values}))
        except (TypeError, ValueError) as err:
            raise InputValidationError(
                f"{who}: categorical values of feature {i} must be numbers (got {values!r}). "
                "Pass e.g. [1.0, 2.0, 3.0]."
            ) from err
        if not vals or not all(math.isfinite(v) for v in vals):
            raise InputValidationError(
                f"{who}: categorical values of feature {i} must be a non-empty list of finite "
                f"numbers (got {values!r}). Pass e.g. [1.0, 2.0, 3.0]."
            )
        cat_out[i] = vals
        lo[i] = vals[0]
        hi[i] = vals[-1]
    groups = check_one_hot(one_hot, lo, hi, set(fixed_out) | set(cat_out), who)
    return Box(low=lo, high=hi, fixed=fixed_out, categorical=cat_out, one_hot=groups)
