"""Shared plumbing of the derivative engine: calling the model, batched VJPs, fallbacks.

Conventions used throughout :mod:`constrained_grad.derivatives`:

* ``f`` maps a batch ``x`` of shape ``(B, *in_shape)`` to ``(B, *out_shape)`` and treats the
  samples independently (row ``b`` of the output depends on row ``b`` of the input only).
* Inputs and outputs are indexed *per sample, flattened*: ``d = prod(in_shape)`` inputs and
  ``m = prod(out_shape)`` outputs; for tabular data that is just the column index.
* ``J_b = ∂f(x)_b / ∂x_b`` is the ``(m, d)`` per-sample Jacobian.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from constrained_grad.derivatives.diagnostics import grad as checked_grad
from constrained_grad.errors import GraphCutError, InputValidationError

Fn = Callable[[torch.Tensor], torch.Tensor]


class FallbackWarning(UserWarning):
    """The engine left its preferred path for a slower one; the message says why."""


@dataclass
class Forward:
    """A forward pass kept for reuse: inputs that require grad and flattened outputs."""

    x: torch.Tensor  # (B, *in_shape), requires grad, is what ``y`` was computed from
    y: torch.Tensor  # (B, m) view of the model output
    out_shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def n_inputs(self) -> int:
        return math.prod(self.x.shape[1:])

    @property
    def n_outputs(self) -> int:
        return self.y.shape[1]


def check_batch(x: torch.Tensor, who: str) -> None:
    """Validate a batch of inputs for differentiation."""
    if not isinstance(x, torch.Tensor):
        raise InputValidationError(f"{who}: inputs must be a torch.Tensor (got {type(x).__name__}). "
                                   "Convert with torch.as_tensor(x, dtype=torch.float32).")
    if x.dim() < 2:
        raise InputValidationError(f"{who}: inputs must be batched, shape (B, d) or (B, *in_shape) "
                                   f"(got shape {tuple(x.shape)}). Add a batch dimension with "
                                   "x.unsqueeze(0) or x.reshape(-1, 1).")
    if not x.is_floating_point():
        raise InputValidationError(f"{who}: inputs must be floating point to be differentiated "
                                   f"(got dtype {x.dtype}). Cast with x.float() or x.double().")
    if x.shape[0] == 0:
        raise InputValidationError(f"{who}: batch is empty (got shape {tuple(x.shape)}). "
                                   "Pass at least one sample.")


def forward(f: Fn, x: torch.Tensor, who: str) -> Forward:
    """Run ``f`` on a fresh leaf copy of ``x`` that requires grad, keeping the graph."""
    check_batch(x, who)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(x)
    return wrap_forward(x, y, who)


def wrap_forward(x: torch.Tensor, y: torch.Tensor, who: str) -> Forward:
    """Wrap an existing pair ``y = f(x)`` (``x`` requiring grad) for reuse by the engine."""
    if not isinstance(y, torch.Tensor):
        raise InputValidationError(f"{who}: model must return a tensor (got {type(y).__name__}). "
                                   "Wrap the model so it returns the tensor to constrain.")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"{who}: model output must keep the batch dimension (got output shape "
            f"{tuple(y.shape)} for input shape {tuple(x.shape)}). Do not reduce over the batch "
            "inside the model.")
    out_shape = tuple(y.shape[1:])
    return Forward(x=x, y=y.reshape(y.shape[0], -1), out_shape=out_shape)


def check_indices(indices: list[int], size: int, what: str, who: str) -> list[int]:
    """Normalise and validate flat per-sample indices (negative indices allowed)."""
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise InputValidationError(f"{who}: {what} indices must be ints "
                                       f"(got {i!r}). Pass e.g. [0, 5].")
        if not -size <= i < size:
            raise InputValidationError(f"{who}: {what} index {i} is out of range for {size} "
                                       f"{what}s. Use an index in [0, {size - 1}].")
        out.append(i % size)
    if not out:
        raise InputValidationError(f"{who}: no {what} indices given (got []). Name at least one.")
    return out


def batched_vjp(
    fwd: Forward, vectors: torch.Tensor, *, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    """Vector-Jacobian products ``v_k^T J_b`` for ``vectors`` of shape ``(K, B, m)``.

    Returns ``(K, B, *in_shape)`` and the path that ran: one vmapped backward pass
    (``"reverse_vmap"``) or, where the backward graph cannot be vmapped, a loop.
    """
    grad_outputs = vectors.reshape(vectors.shape[0], *fwd.y.shape)
    if vectors.shape[0] == 1:
        g = checked_grad(fwd.y, fwd.x, grad_outputs[0], create_graph=create_graph, who=who)
        return g.unsqueeze(0), "reverse"
    try:
        g = checked_grad(fwd.y, fwd.x, grad_outputs, create_graph=create_graph, batched=True,
                         who=who)
        return g, "reverse_vmap"
    except GraphCutError:
        raise
    except RuntimeError as err:
        warn_fallback(who, "vmapped backward", "loop of backward passes", err)
        gs = [checked_grad(fwd.y, fwd.x, v, create_graph=create_graph, who=who)
              for v in grad_outputs]
        return torch.stack(gs), "reverse_loop"


def warn_fallback(who: str, preferred: str, used: str, err: BaseException) -> None:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(f"{who}: {preferred} is not available for this model ({first_line}); "
                  f"used {used} instead.", FallbackWarning, stacklevel=3)


def has_train_mode_batchnorm(f: object) -> bool:
    """True if ``f`` is a module holding a BatchNorm layer in training mode."""
    if not isinstance(f, torch.nn.Module):
        return False
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
               for m in f.modules())


def unit_vectors(indices: list[int], size: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``e_i`` for ``i`` in ``indices``: shape ``(len(indices), size)``."""
    eye = torch.zeros(len(indices), size, dtype=like.dtype, device=like.device)
    eye[torch.arange(len(indices)), torch.tensor(indices)] = 1
    return eye
