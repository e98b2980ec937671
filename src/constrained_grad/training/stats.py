"""Per-step summaries of violations and multipliers, fetched with one device sync.

Everything a history row needs is packed into one flat tensor per step — loss, Lagrangian,
per constraint the violation mean, max and fraction violated, the five multiplier summaries
of large (pointwise) multipliers, and the raw values of small multipliers — and moved to
Python with a single ``tolist()``. Summaries of small multipliers are computed in Python
from their values, which are logged too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from constrained_grad.history.record import STATS

FIELDS = STATS  # the per-constraint columns of a history row, in order
SMALL_MULTIPLIER = 32
#: violation matrices up to this size are summarised in Python after the one sync
RAW_VIOLATIONS = 256
_NAN = float("nan")


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(values: Sequence[float]) -> list[float]:
    """mean, max, min, q50, q90 of a small list of multiplier values."""
    s = sorted(values)
    return [sum(s) / len(s), s[-1], s[0], _quantile(s, 0.5), _quantile(s, 0.9)]


class StepStats:
    """Packs and unpacks the per-step statistics of a fixed set of constraints."""

    def __init__(self, names: Sequence[str], weights: dict[str, torch.Tensor | None]) -> None:
        self.names = list(names)
        self.weights = weights
        self._raw: list[int] = []
        self._nans: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.kind = {}
        for name in self.names:
            w = weights[name]
            self.kind[name] = (
                "none"
                if w is None or w.numel() == 0
                else "small"
                if w.numel() <= SMALL_MULTIPLIER
                else "large"
            )

    def pack(
        self,
        loss: torch.Tensor | None,
        lagrangian: torch.Tensor | None,
        violations: dict[str, torch.Tensor],
        summaries: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One flat tensor; small violation matrices travel raw (summarised in Python).

        ``summaries`` (``[mean, max, fraction violated]`` per constraint, e.g. over every
        rank's points) replace the summaries of the local ``violations``.
        """
        with torch.no_grad():  # no detach() per part: each op counts on small problems
            return self._pack(loss, lagrangian, violations, summaries)

    def _nan(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        nan = self._nans.get(key)
        if nan is None:
            nan = self._nans[key] = torch.full((1,), _NAN, dtype=dtype, device=device)
        return nan

    def _pack(
        self,
        loss: torch.Tensor | None,
        lagrangian: torch.Tensor | None,
        violations: dict[str, torch.Tensor],
        summaries: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        ref = (
            next(iter(violations.values()))
            if violations
            else (loss if loss is not None else torch.zeros(()))
        )
        dtype, device = ref.dtype, ref.device

        def flat(t: torch.Tensor | None) -> torch.Tensor:
            if t is None:
                return self._nan(dtype, device)
            if t.dim() != 1:
                t = t.reshape(-1)
            return t if t.dtype == dtype else t.to(dtype)

        parts = [flat(loss), flat(lagrangian)]
        self._raw = []
        for name in self.names:
            if summaries is not None:
                self._raw.append(0)
                parts.append(flat(summaries[name]))
                continue
            g = flat(violations[name])
            if g.numel() <= RAW_VIOLATIONS:
                self._raw.append(g.numel())
                parts.append(g)
            else:
                self._raw.append(0)
                parts.append(torch.stack([g.mean(), g.max(), (g > 0).to(dtype).mean()]))
        for name in self.names:
            w = self.weights[name]
            if self.kind[name] == "small":
                parts.append(flat(w))
            elif self.kind[name] == "large":
                m = flat(w)
                q = torch.quantile(m, torch.tensor([0.5, 0.9], dtype=dtype, device=m.device))
                parts.append(torch.cat([torch.stack([m.mean(), m.max(), m.min()]), q]))
        return torch.cat(parts)

    def unpack(self, flat: list[float]) -> tuple[list[float], dict[str, list[float]] | None]:
        """The history row (``2 + 8 * constraints`` values) and the small multipliers."""
        row = flat[:2]
        pos = 2
        viol: list[list[float]] = []
        for n_raw in self._raw:
            if n_raw:
                g = flat[pos : pos + n_raw]
                mean = sum(g) / n_raw
                worst = _NAN if math.isnan(mean) else max(g)  # max() ignores NaN by accident
                viol.append([mean, worst, len([v for v in g if v > 0]) / n_raw])
                pos += n_raw
            else:
                viol.append(flat[pos : pos + 3])
                pos += 3
        small: dict[str, list[float]] = {}
        mult: dict[str, list[float]] = {}
        for name in self.names:
            kind = self.kind[name]
            if kind == "small":
                n = self.weights[name].numel()  # type: ignore[union-attr]
                small[name] = flat[pos : pos + n]
                mult[name] = summarise(small[name])
                pos += n
            elif kind == "large":
                mult[name] = flat[pos : pos + 5]
                pos += 5
            else:
                mult[name] = [_NAN] * 5
        for k, name in enumerate(self.names):
            row += viol[k] + mult[name]
        return row, (small or None)
