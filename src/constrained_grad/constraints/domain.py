"""Input domains: where a constraint must hold and where verification searches."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from constrained_grad.errors import InputValidationError

OneHotGroups = tuple[tuple[int, ...], ...]


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


class Box:
    r"""An axis-aligned box :math:`\{x : low \le x \le high\}` of per-sample inputs.

    Args:
        low, high: per-feature bounds (sequences or tensors of the same shape).
        fixed: features held at one value (``{index: value}``), e.g. a scenario.
        categorical: features restricted to a finite set (``{index: [values]}``); samplers
            draw among them and gradient search never moves them.
        one_hot: groups of columns that encode one category (``[[2, 3, 4], ...]``): exactly
            one column of a group is at its ``high`` ("on"), the others at their ``low``
            ("off"), e.g. 1 and 0, or the standardised values of 1 and 0. Samplers draw the
            category, gradient search never moves it and the MILP certificate encodes it
            exactly, so no verdict rests on inputs that cannot occur.

    Example:
        >>> Box([0.0, -1.0], [1.0, 1.0]).width
        tensor([1., 2.])
    """

    def __init__(
        self,
        low: Sequence[float] | torch.Tensor,
        high: Sequence[float] | torch.Tensor,
        *,
        fixed: dict[int, float] | None = None,
        categorical: dict[int, Sequence[float]] | None = None,
        one_hot: Sequence[Sequence[int]] | None = None,
    ) -> None:
        try:
            lo = torch.as_tensor(low, dtype=torch.float64).detach().clone().reshape(-1)
            hi = torch.as_tensor(high, dtype=torch.float64).detach().clone().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputValidationError(
                f"Box: low and high must be sequences of numbers (got "
                f"{type(low).__name__} and {type(high).__name__}: {err}). "
                "Give one bound per feature."
            ) from err
        if lo.shape != hi.shape:
            raise InputValidationError(
                f"Box: low and high differ in shape (got {tuple(lo.shape)} "
                f"and {tuple(hi.shape)}). Give one bound per feature."
            )
        if lo.numel() == 0:
            raise InputValidationError(
                "Box: no features (got empty bounds). Give one bound per feature."
            )
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise InputValidationError(
                "Box: bounds must be finite (got NaN or inf). Clip the "
                "domain to the range the data lives in."
            )
        bad = (lo > hi).nonzero().flatten().tolist()
        if bad:
            j = bad[0]
            raise InputValidationError(
                f"Box: low > high for feature {j} (got low={lo[j].item()}, "
                f"high={hi[j].item()}). Swap or correct the bounds."
            )
        self.fixed = {int(k): float(v) for k, v in (fixed or {}).items()}
        self.categorical = {int(k): [float(c) for c in v] for k, v in (categorical or {}).items()}
        for name, mapping in (("fixed", self.fixed), ("categorical", self.categorical)):
            for k in mapping:
                if not 0 <= k < lo.numel():
                    raise InputValidationError(
                        f"Box: {name} feature index {k} is out of range "
                        f"for {lo.numel()} features. Use 0..{lo.numel() - 1}."
                    )
        for k, v in self.fixed.items():
            lo[k] = hi[k] = v
        for k, values in self.categorical.items():
            if not values:
                raise InputValidationError(
                    f"Box: categorical feature {k} has no values (got []). List the allowed values."
                )
            lo[k], hi[k] = min(values), max(values)
        taken = set(self.fixed) | set(self.categorical)
        self.one_hot: OneHotGroups = check_one_hot(one_hot, lo, hi, taken, "Box")
        self.low, self.high = lo, hi

    @property
    def dim(self) -> int:
        return self.low.numel()

    @property
    def width(self) -> torch.Tensor:
        return (self.high - self.low).to(torch.get_default_dtype())

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

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp ``x`` into the box, feature by feature (categorical values and one-hot
        groups are not snapped; the verifiers' own projection does that)."""
        return torch.maximum(torch.minimum(x, self.high.to(x)), self.low.to(x))

    def contains(self, x: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Per-row membership test."""
        lo, hi = self.low.to(x), self.high.to(x)
        return ((x >= lo - atol) & (x <= hi + atol)).all(dim=-1)

    def __repr__(self) -> str:
        extra = f", one_hot={[list(g) for g in self.one_hot]}" if self.one_hot else ""
        return f"Box(low={self.low.tolist()}, high={self.high.tolist()}{extra})"
