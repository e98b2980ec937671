"""Shared models and independent oracles for the derivative-engine tests (float64 throughout).

Oracles never go through the engine: per-sample blocks of the full batch Jacobian from
``torch.autograd.functional.jacobian``, Hessian diagonals from
``torch.autograd.functional.hessian``, and central finite differences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

Fn = Callable[[torch.Tensor], torch.Tensor]
DTYPE = torch.float64


def mlp(d: int, m: int, *, hidden: int = 6, seed: int = 0, act: type = nn.Tanh) -> nn.Sequential:
    """A small smooth MLP ``R^d -> R^m`` in float64 with seeded weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, m)
    ).to(DTYPE)


def batch(b: int, *in_shape: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, *in_shape, generator=gen, dtype=DTYPE)


def full_jacobian(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """The whole batch Jacobian ``(B, m, B, d)`` with inputs/outputs flattened per sample.

    Calls ``f`` exactly once, so a seeded dropout mask matches the engine's single pass.
    """
    jac = torch.autograd.functional.jacobian(f, x)
    return jac.reshape(x.shape[0], -1, x.shape[0], x[0].numel())


def oracle_jacobian(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """Per-sample blocks ``J_b = ∂f(x)_b/∂x_b``: the block diagonal of the batch Jacobian."""
    return full_jacobian(f, x).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (B, m, d)


def oracle_hessian_diagonal(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """``∂²f_{b,i}/∂x_{b,j}²`` as ``(B, m, d)`` from ``functional.hessian`` per sample/output."""
    b, d = x.shape[0], x[0].numel()
    m = f(x[:1]).numel()
    out = torch.empty(b, m, d, dtype=x.dtype)
    for s in range(b):
        for i in range(m):

            def scalar(z: torch.Tensor, i: int = i) -> torch.Tensor:
                return f(z.reshape(1, *x.shape[1:])).reshape(-1)[i]

            hess = torch.autograd.functional.hessian(scalar, x[s].reshape(-1))
            out[s, i] = hess.diagonal()
    return out


def finite_difference_columns(
    f: Fn, x: torch.Tensor, inputs: list[int], eps: float = 1e-6
) -> torch.Tensor:
    """Central differences ``(f(x + εe_j) - f(x - εe_j)) / 2ε``, all samples shifted at once
    (valid for models that treat samples independently). Returns ``(B, m, k)``."""
    cols = []
    flat = x.reshape(x.shape[0], -1)
    for j in inputs:
        shift = torch.zeros_like(flat)
        shift[:, j] = eps
        plus = f((flat + shift).reshape(x.shape)).reshape(x.shape[0], -1)
        minus = f((flat - shift).reshape(x.shape)).reshape(x.shape[0], -1)
        cols.append((plus - minus) / (2 * eps))
    return torch.stack(cols, dim=-1)


def parameter_map(
    net: nn.Module, quantity: Callable[[Fn], torch.Tensor]
) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
    """``params -> quantity(f_params)`` for gradcheck, with ``f_params`` a functional_call."""
    names = [n for n, _ in net.named_parameters()]

    def fn(*params: torch.Tensor) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return functional_call(net, dict(zip(names, params, strict=True)), (z,))

        return quantity(f)

    start = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    return fn, start
