"""Per-step summaries of a constraint's violations and multipliers, as one flat tensor.

All statistics of a step are stacked into a single tensor and moved to Python with one
``tolist()`` (one device sync per step, whatever the number of constraints).
"""

from __future__ import annotations

import torch

FIELDS = ("violation_mean", "violation_max", "fraction_violated", "multiplier_mean",
          "multiplier_max", "multiplier_min", "multiplier_q50", "multiplier_q90")
SMALL_MULTIPLIER = 32
_Q = torch.tensor([0.5, 0.9])


def constraint_stats(violations: torch.Tensor, multiplier: torch.Tensor | None) -> torch.Tensor:
    """The 8 :data:`FIELDS` for one constraint (NaN for multiplier stats without one)."""
    g = violations.reshape(-1)
    head = torch.stack([g.mean(), g.max(), (g > 0).to(g.dtype).mean()])
    if multiplier is None or multiplier.numel() == 0:
        tail = torch.full((5,), float("nan"), dtype=g.dtype, device=g.device)
    else:
        m = multiplier.reshape(-1).to(g.dtype)
        if m.numel() == 1:
            tail = m.expand(5)
        else:
            q = torch.quantile(m, _Q.to(m), interpolation="linear")
            tail = torch.cat([torch.stack([m.mean(), m.max(), m.min()]), q])
    return torch.cat([head, tail])
