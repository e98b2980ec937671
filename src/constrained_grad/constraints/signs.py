r"""The sign convention, stated once.

Cooper solves :math:`\min f(\theta)` subject to :math:`g(\theta) \le 0` and
:math:`h(\theta) = 0`. Every constraint in this package is turned into that form *here*:

* "``value`` at least ``bound``" (:math:`v \ge b`) becomes :math:`g = b - v \le 0`;
* "``value`` at most ``bound``" (:math:`v \le b`) becomes :math:`g = v - b \le 0`;
* "``value`` equal to ``target``" becomes :math:`h = v - t = 0`.

A positive :math:`g` is a violation of that size; a negative :math:`g` is slack.
"""

from __future__ import annotations

import torch


def at_least(value: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """``g`` for ``value >= bound``."""
    return bound - value


def at_most(value: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """``g`` for ``value <= bound``."""
    return value - bound


def equal_to(value: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """``h`` for ``value == target``."""
    return value - target
