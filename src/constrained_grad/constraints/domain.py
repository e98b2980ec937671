r"""Input domains: where a constraint must hold and where verification searches.

A domain is the box :math:`\{x : low \le x \le high\}` in :math:`\mathbb{R}^d`, where

* a *fixed* feature ``i -> v`` is pinned to ``v`` (its box becomes ``[v, v]``; a feature with
  ``low_i == high_i`` is fixed as well);
* a *categorical* feature ``i -> [v_1, ..., v_K]`` only takes the listed values: samplers draw
  among them and gradient steps never move it. Its box becomes ``[min_k v_k, max_k v_k]``;
* a *one-hot group* ``(i_1, ..., i_K)`` encodes one category: exactly one of its features is
  at its ``high`` ("on"), the others at their ``low``. Samplers draw the category, gradient
  steps never move it.

Bounds are stored in float64 on the CPU; callers cast to the model's dtype and device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from constrained_grad.errors import InputValidationError

OneHotGroups = tuple[tuple[int, ...], ...]
BoundsLike = torch.Tensor | np.ndarray | Sequence[float]


def check_one_hot(
    groups: Sequence[Sequence[int]] | None,
    low: torch.Tensor,
    high: torch.Tensor,
    taken: set[int],
    who: str,
) -> OneHotGroups:
    """Validate one-hot groups: lists of >= 2 distinct feature indices, in range, in no other
    group and neither fixed nor categorical (``taken``), each with ``low < high`` (its "off"
    and "on" values). Returns them as tuples of non-negative indices."""
    if groups is None:
        return ()
    d = int(low.numel())
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise InputValidationError(
            f"{who}: one_hot must be a list of index lists (got {type(groups).__name__}). "
            "Pass e.g. one_hot=[[2, 3, 4]] for three columns of one category."
        )
    out: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for group in groups:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise InputValidationError(
                f"{who}: each one_hot group must be a list of feature indices (got {group!r})."
            )
        idx: list[int] = []
        for i in group:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not -d <= i < d:
                raise InputValidationError(
                    f"{who}: one_hot index {i!r} is not a feature index for {d} features. "
                    f"Use ints in [0, {d - 1}]."
                )
            idx.append(int(i) % d)
        if len(set(idx)) != len(idx) or len(idx) < 2:
            raise InputValidationError(
                f"{who}: a one_hot group needs at least 2 distinct indices (got {list(group)})."
            )
        clash = sorted((set(idx) & seen) | (set(idx) & taken))
        if clash:
            raise InputValidationError(
                f"{who}: features {clash} are in two one_hot groups or also fixed/categorical "
                f"(group {list(group)}). Give each feature one role."
            )
        flat = [i for i in idx if not float(low[i]) < float(high[i])]
        if flat:
            raise InputValidationError(
                f"{who}: one_hot features need low < high, their off and on values (got "
                f"low == high for {flat}). Use the column's two values as its bounds."
            )
        seen.update(idx)
        out.append(tuple(idx))
    return tuple(out)


def one_hot_rows(
    groups: OneHotGroups, low: torch.Tensor, high: torch.Tensor, pick: list[torch.Tensor]
) -> list[tuple[list[int], torch.Tensor]]:
    """For each group, its columns and the ``(n, k)`` block with column ``pick[g]`` of each row
    at ``high`` and the others at ``low`` (float64)."""
    blocks = []
    for group, chosen in zip(groups, pick, strict=True):
        cols = list(group)
        on = torch.nn.functional.one_hot(chosen.long(), len(cols)).to(torch.float64)
        blocks.append((cols, low[cols] + on * (high[cols] - low[cols])))
    return blocks


def _as_vector(value: BoundsLike, name: str, who: str) -> torch.Tensor:
    """``value`` as a fresh ``(d,)`` float64 CPU tensor of finite numbers, ``d >= 1``."""
    try:
        t = torch.as_tensor(
            value.detach().cpu() if isinstance(value, torch.Tensor) else value,
            dtype=torch.float64,
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputValidationError(
            f"{who}: low and high must be sequences of numbers (got {name} of type "
            f"{type(value).__name__}: {err}). Give one bound per feature, e.g. [0.0, 1.0]."
        ) from err
    if t.dim() != 1:
        raise InputValidationError(
            f"{who}: {name} must have shape (d,), one bound per feature (got shape "
            f"{tuple(t.shape)}). Pass a 1-D sequence or tensor, e.g. X.min(0).values."
        )
    if t.shape[0] == 0:
        raise InputValidationError(
            f"{who}: no features (got empty {name}). Give one bound per feature."
        )
    if not bool(torch.isfinite(t).all()):
        raise InputValidationError(
            f"{who}: bounds must be finite (got {name}={t.tolist()}). Clip the domain to the "
            "range the data lives in, e.g. X.min(0) / X.max(0)."
        )
    return t.clone()


def _as_mapping(value: object, name: str, example: str, who: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputValidationError(
            f"{who}: {name} must be a dict {{index: ...}} (got {type(value).__name__}). "
            f"Pass e.g. {name}={example}."
        )
    return value


def _check_index(i: object, d: int, what: str, taken: set[int], who: str) -> int:
    """A feature index in ``[-d, d)`` as a non-negative int not already in ``taken``."""
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise InputValidationError(
            f"{who}: {what} keys must be int feature indices (got {i!r}). Use e.g. {{0: ...}}."
        )
    if not -d <= int(i) < d:
        raise InputValidationError(
            f"{who}: {what} feature index {int(i)} is out of range for {d} features. "
            f"Use an index in [0, {d - 1}]."
        )
    j = int(i) % d
    if j in taken:
        raise InputValidationError(
            f"{who}: {what} gives feature {j} twice (index {int(i)} repeats it). "
            "Give each feature once."
        )
    return j


class Box:
    r"""An axis-aligned box :math:`\{x : low \le x \le high\}` of per-sample inputs.

    Args:
        low, high: per-feature bounds (1-D sequences, arrays or tensors of the same length,
            finite, ``low <= high``).
        fixed: features held at one value (``{index: value}``), e.g. a scenario. The value
            overrides the feature's bounds.
        categorical: features restricted to a finite set (``{index: [values]}``); samplers
            draw among them, gradient search never moves them and :meth:`project` snaps them
            to the nearest value. A feature cannot be both fixed and categorical.
        one_hot: groups of columns that encode one category (``[[2, 3, 4], ...]``): exactly
            one column of a group is at its ``high`` ("on"), the others at their ``low``
            ("off"), e.g. 1 and 0, or the standardised values of 1 and 0. Samplers draw the
            category, gradient search never moves it and the MILP certificate encodes it
            exactly, so no verdict rests on inputs that cannot occur.

    Indices may be negative (counted from the end), as in Python. ``low`` and ``high`` are
    float64 CPU tensors with fixed features pinned and categorical features spanning their
    values; ``categorical`` keeps the values in the order given.

    Raises:
        InputValidationError: on bounds of the wrong shape, non-finite or with
            ``low > high``; bad or repeated indices; a non-finite fixed value; an empty,
            non-numeric or non-finite list of categorical values; a feature both fixed and
            categorical; and bad one-hot groups.

    Example:
        >>> Box([0.0, -1.0], [1.0, 1.0]).width
        tensor([1., 2.])
        >>> box = Box([0.0, 0.0, 0.0], [5.0, 1.0, 1.0],
        ...           categorical={0: [0, 2, 5]}, one_hot=[[1, 2]])
        >>> box.project(torch.tensor([[1.2, 0.3, 0.6]]))
        tensor([[2., 0., 1.]])
    """

    low: torch.Tensor
    high: torch.Tensor
    fixed: dict[int, float]
    categorical: dict[int, list[float]]
    one_hot: OneHotGroups

    def __init__(
        self,
        low: BoundsLike,
        high: BoundsLike,
        *,
        fixed: Mapping[int, float] | None = None,
        categorical: Mapping[int, Sequence[float]] | None = None,
        one_hot: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self._setup(low, high, fixed, categorical, one_hot, "Box")

    def _setup(
        self,
        low: BoundsLike,
        high: BoundsLike,
        fixed: Mapping[int, float] | None,
        categorical: Mapping[int, Sequence[float]] | None,
        one_hot: Sequence[Sequence[int]] | None,
        who: str,
    ) -> None:
        lo = _as_vector(low, "low", who)
        hi = _as_vector(high, "high", who)
        if lo.shape != hi.shape:
            raise InputValidationError(
                f"{who}: low and high differ in shape (got {tuple(lo.shape)} and "
                f"{tuple(hi.shape)}). Give them the same shape, one bound per feature."
            )
        bad = (lo > hi).nonzero().flatten().tolist()
        if bad:
            j = bad[0]
            more = f" (also features {bad[1:]})" if len(bad) > 1 else ""
            raise InputValidationError(
                f"{who}: low > high for feature {j} (got low={lo[j].item()}, "
                f"high={hi[j].item()}). Swap or correct the bounds{more}, or fix the feature "
                "with low == high."
            )
        d = int(lo.shape[0])
        self.fixed = {}
        for key, value in _as_mapping(fixed, "fixed", "{0: 1.5}", who).items():
            i = _check_index(key, d, "fixed", set(self.fixed), who)
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                raise InputValidationError(
                    f"{who}: fixed value of feature {i} must be a finite number (got "
                    f"{value!r}). Pass a real number."
                )
            self.fixed[i] = lo[i] = hi[i] = v
        self.categorical = {}
        for key, values in _as_mapping(categorical, "categorical", "{0: [0.0, 1.0]}", who).items():
            i = _check_index(key, d, "categorical", set(self.categorical), who)
            if i in self.fixed:
                raise InputValidationError(
                    f"{who}: feature {i} is both fixed and categorical (got fixed="
                    f"{self.fixed[i]}, categorical={values!r}). Keep only one of the two."
                )
            try:
                vals = [float(v) for v in values]
            except (TypeError, ValueError) as err:
                raise InputValidationError(
                    f"{who}: categorical values of feature {i} must be numbers (got "
                    f"{values!r}). Pass e.g. [1.0, 2.0, 3.0]."
                ) from err
            if not vals or not all(math.isfinite(v) for v in vals):
                raise InputValidationError(
                    f"{who}: categorical values of feature {i} must be a non-empty list of "
                    f"finite numbers (got {values!r}). Pass e.g. [1.0, 2.0, 3.0]."
                )
            self.categorical[i] = vals
            lo[i], hi[i] = min(vals), max(vals)
        taken = set(self.fixed) | set(self.categorical)
        self.one_hot = check_one_hot(one_hot, lo, hi, taken, who)
        self.low, self.high = lo, hi

    @property
    def dim(self) -> int:
        return self.low.numel()

    @property
    def width(self) -> torch.Tensor:
        """``high - low`` in the default dtype (zero for fixed features)."""
        return (self.high - self.low).to(torch.get_default_dtype())

    @property
    def categorical_indices(self) -> list[int]:
        """The categorical features, in increasing order."""
        return sorted(self.categorical)

    @property
    def categorical_levels(self) -> dict[int, tuple[float, ...]]:
        """The allowed values of each categorical feature, sorted and without repeats."""
        return {i: tuple(sorted(set(vals))) for i, vals in self.categorical.items()}

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

    @classmethod
    def around(cls, x: torch.Tensor, pad: float = 0.0) -> Box:
        """The bounding box of data ``x`` (N, d), widened by ``pad`` times its width."""
        x = torch.as_tensor(x).detach().reshape(x.shape[0], -1).double()
        lo, hi = x.min(0).values, x.max(0).values
        w = hi - lo
        return cls(lo - pad * w, hi + pad * w)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` points uniform in the box (categorical features uniform over their values,
        one-hot groups uniform over their categories)."""
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.low + u * (self.high - self.low)
        for k, values in self.categorical.items():
            pick = torch.randint(len(values), (n,), generator=generator)
            x[:, k] = torch.tensor(values, dtype=torch.float64)[pick]
        picks = [torch.randint(len(g), (n,), generator=generator) for g in self.one_hot]
        for cols, block in one_hot_rows(self.one_hot, self.low, self.high, picks):
            x[:, cols] = block
        return x.to(dtype=dtype, device=device)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Map ``u`` in ``[0, 1)^{len(sampled)}`` (rows) to points of the domain, float64.

        Continuous coordinates are scaled affinely, categorical ones pick value
        ``floor(u K)`` of their ``K`` distinct values (sorted), one-hot groups switch on
        feature ``floor(u K)`` of their ``K``; all other features sit at ``low``.
        """
        n = u.shape[0]
        x = self.low.unsqueeze(0).expand(n, -1).clone()
        cont = self.continuous_free
        if cont:
            idx = torch.tensor(cont)
            width = self.high[idx] - self.low[idx]
            x[:, idx] = self.low[idx] + u[:, : len(cont)].to(torch.float64) * width
        levels = self.categorical_levels
        for col, i in enumerate(self.categorical_indices, start=len(cont)):
            values = torch.tensor(levels[i], dtype=torch.float64)
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
        """Map ``x`` (``(..., d)``) to a point of the domain: clamp each feature into
        ``[low, high]``, snap each categorical feature to its nearest allowed value and each
        one-hot group to its most switched-on feature (relative to its off and on values),
        which goes on while the others go off. Returns a new tensor, ``x``'s dtype and
        device; ``x`` is not modified."""
        self._check_points(x, "Box.project")
        x = torch.maximum(torch.minimum(x, self.high.to(x)), self.low.to(x))
        if not self.categorical and not self.one_hot:
            return x
        rows = x.reshape(-1, self.dim)
        for i, vals in self.categorical_levels.items():
            values = torch.tensor(vals, dtype=x.dtype, device=x.device)
            nearest = torch.argmin((rows[:, i : i + 1] - values).abs(), dim=1)
            rows[:, i] = values[nearest]
        if self.one_hot:
            low64, high64 = self.low.to(x.device), self.high.to(x.device)
            picks = []
            for group in self.one_hot:
                cols = list(group)
                level = (rows[:, cols].double() - low64[cols]) / (high64[cols] - low64[cols])
                picks.append(level.argmax(dim=1).cpu())
            for cols, block in one_hot_rows(self.one_hot, self.low, self.high, picks):
                rows[:, cols] = block.to(dtype=x.dtype, device=x.device)
        return rows.reshape(x.shape)

    def contains(self, x: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Per-row membership of the domain, each test within ``atol``: every feature inside
        its bounds, every categorical feature at one of its values, and in every one-hot
        group each column at its off or on value with exactly one on. ``x``: ``(..., d)``;
        returns a bool tensor of shape ``x.shape[:-1]``."""
        self._check_points(x, "Box.contains")
        lo, hi = self.low.to(x), self.high.to(x)
        inside = ((x >= lo - atol) & (x <= hi + atol)).all(dim=-1)
        for i, vals in self.categorical_levels.items():
            values = torch.tensor(vals, dtype=x.dtype, device=x.device)
            inside &= ((x[..., i : i + 1] - values).abs() <= atol).any(dim=-1)
        for group in self.one_hot:
            cols = list(group)
            on = (x[..., cols] - hi[cols]).abs() <= atol
            off = (x[..., cols] - lo[cols]).abs() <= atol
            inside &= (on | off).all(dim=-1) & ((on & ~off).sum(dim=-1) == 1)
        return inside

    def _check_points(self, x: object, who: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputValidationError(
                f"{who}: points must be a tensor of shape (..., {self.dim}), one value per "
                f"feature of the box (got {got}). Pass rows of the model's inputs."
            )

    def to_dict(self) -> dict[str, Any]:
        """The domain as plain data (for reports): dim, bounds, fixed, categorical, one-hot."""
        return {
            "dim": self.dim,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "fixed": self.fixed,
            "categorical": self.categorical,
            "one_hot": [list(g) for g in self.one_hot],
        }

    def __repr__(self) -> str:
        extra = f", one_hot={[list(g) for g in self.one_hot]}" if self.one_hot else ""
        return f"Box(low={self.low.tolist()}, high={self.high.tolist()}{extra})"


def as_box(
    low: BoundsLike,
    high: BoundsLike,
    *,
    fixed: Mapping[int, float] | None = None,
    categorical: Mapping[int, Sequence[float]] | None = None,
    one_hot: Sequence[Sequence[int]] | None = None,
    who: str,
) -> Box:
    """``Box(low, high, fixed=..., categorical=..., one_hot=...)`` with errors naming ``who``
    (the function of the caller that took the raw bounds) instead of ``Box``."""
    box = Box.__new__(Box)
    box._setup(low, high, fixed, categorical, one_hot, who)
    return box
