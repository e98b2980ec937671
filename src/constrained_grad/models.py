r"""Model building blocks that the exact certifier understands.

:class:`Ensemble` is a positive combination of member networks,

.. math:: f(x) = b + \sum_k w_k f_k(x), \qquad w_k > 0,

so :math:`\partial f/\partial x_j = \sum_k w_k\, \partial f_k/\partial x_j`: if every member
satisfies :math:`\partial f_k/\partial x_j \ge L` and the weights sum to :math:`s`, the
ensemble satisfies :math:`\ge sL` (monotone members give a monotone ensemble). For ReLU
members of equal depth the certifier encodes the ensemble exactly, as one block-diagonal
network (:func:`constrained_grad.certify_monotonic`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from constrained_grad.errors import InputValidationError


class Ensemble(nn.Module):
    r"""``f(x) = bias + sum_k weights[k] * members[k](x)`` with positive weights.

    Args:
        members: the member networks (all map ``(B, d)`` to the same output shape).
        weights: one positive finite weight per member; default ``1/K`` (the mean).
        bias: a constant added to the output (e.g. to undo per-member target scaling).

    >>> import torch, constrained_grad as cg
    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> ens = cg.Ensemble([a, b])
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(ens(x), (a(x) + b(x)) / 2)
    True
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        bias: float = 0.0,
    ) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            kinds = [type(m).__name__ for m in members]
            raise InputValidationError(
                f"Ensemble: members must be a non-empty list of nn.Module (got {kinds}). "
                "Pass e.g. [net_a, net_b]."
            )
        if weights is None:
            weights = [1.0 / len(members)] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise InputValidationError(
                f"Ensemble: weights must be one positive finite number per member (got "
                f"{weights} for {len(members)} members). Positive weights keep a monotone "
                "ensemble monotone; leave weights=None for the mean."
            )
        if not math.isfinite(float(bias)):
            raise InputValidationError(f"Ensemble: bias must be finite (got {bias}).")
        self.members = nn.ModuleList(members)
        self.weights = tuple(weights)
        self.bias = float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [member(x) for member in self.members]
        shapes = [tuple(o.shape) for o in outs]
        if len(set(shapes)) > 1:  # a sum would broadcast silently
            raise InputValidationError(
                f"Ensemble: members give outputs of different shapes (got {shapes}). Every "
                "member must map the input to the same output shape."
            )
        out = outs[0] * self.weights[0] + self.bias
        for w, o in zip(self.weights[1:], outs[1:], strict=True):
            out = out + w * o
        return out

    def extra_repr(self) -> str:
        return f"weights={[round(w, 6) for w in self.weights]}, bias={self.bias:g}"
