r"""Squared Frobenius norm :math:`\|J_b\|_F^2` of per-sample Jacobians, exact or estimated.

Estimators (``estimator=``), each unbiased and averaged over ``samples`` projections:

``"exact"``
    Builds :math:`J_b` (forward or reverse mode by shape) and sums its squares.
``"vjp_sphere"``
    :math:`\|v^\top J_b\|^2` with :math:`v = \sqrt{m}\, u/\|u\|`, :math:`u \sim N(0, I_m)`.
    Since :math:`E[v v^\top] = I_m`, :math:`E\|v^\top J\|^2 = \operatorname{tr}(J^\top J)`.
    One backward pass per projection however many outputs: the answer to "penalise the
    Jacobian of a 1000-output network without 1000 backward passes". Its variance is lower
    than the Gaussian one because ``|v|`` is fixed.
``"jvp_gaussian"``
    :math:`\|J_b t\|^2` with :math:`t \sim N(0, I_d)`: :math:`E\|J t\|^2 = \|J\|_F^2`. One
    forward-mode pass per projection; best when inputs are few.

With a batch, the noise of one projection per sample averages out across samples, so
``samples=1`` is usually enough for a penalty or a constraint on the batch mean.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.func import jvp, vmap

from constrained_grad.derivatives._common import (
    COUPLING_MESSAGE,
    Fn,
    Forward,
    batched_vjp,
    check_batch,
    check_func_result,
    forward,
    has_train_mode_batchnorm,
    prepare_forward_ad,
    unwrap_compiled,
    warn_fallback,
    watch_coupling,
)
from constrained_grad.derivatives.jacobian import jacobian_with_path
from constrained_grad.derivatives.rows import rows_from_forward
from constrained_grad.errors import GraphCutError, InputValidationError

Estimator = Literal["exact", "vjp_sphere", "jvp_gaussian"]
ESTIMATORS = ("exact", "vjp_sphere", "jvp_gaussian")


def sphere_vectors(
    samples: int, batch: int, m: int, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    r"""``(samples, batch, m)`` vectors uniform on the sphere of radius :math:`\sqrt{m}`."""
    u = torch.randn(samples, batch, m, generator=generator, dtype=like.dtype, device="cpu")
    u = u.to(like.device)
    return u * (math.sqrt(m) / u.norm(dim=-1, keepdim=True))


def gaussian_tangents(
    samples: int, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``(samples, *x.shape)`` standard normal tangents (drawn on CPU for reproducibility)."""
    t = torch.randn(samples, *x.shape, generator=generator, dtype=x.dtype, device="cpu")
    return t.to(x.device)


def validate_estimator(estimator: str, samples: int, who: str) -> None:
    if estimator not in ESTIMATORS:
        raise InputValidationError(
            f"{who}: unknown estimator {estimator!r}. Choose one of {ESTIMATORS}."
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputValidationError(
            f"{who}: samples must be a positive int (got {samples!r}). "
            "One projection per sample is usually enough."
        )


def fro_sq_with_path(
    f: Fn,
    x: torch.Tensor,
    *,
    estimator: str,
    samples: int,
    generator: torch.Generator | None,
    create_graph: bool,
    fwd: Forward | None = None,
) -> tuple[torch.Tensor, str]:
    """Per-sample ``(B,)`` estimate of :math:`\\|J_b\\|_F^2` and the path that ran."""
    who = "jacobian_fro_norm_sq"
    f = unwrap_compiled(f)
    validate_estimator(estimator, samples, who)
    check_batch(x, who)
    if estimator == "exact":
        if fwd is not None and fwd.n_outputs <= fwd.n_inputs:  # reverse mode on the kept pass
            rows, path = rows_from_forward(
                fwd, list(range(fwd.n_outputs)), create_graph=create_graph, who=who
            )
            return rows.pow(2).sum(dim=(1, 2)), path
        jac, path = jacobian_with_path(f, x, create_graph=create_graph, fwd=fwd)
        return jac.reshape(jac.shape[0], -1).pow(2).sum(dim=1), path
    if estimator == "jvp_gaussian" and not has_train_mode_batchnorm(f):
        prepare_forward_ad()
        x = x.contiguous()  # forward AD cannot pair a tangent with an expanded primal
        tangents = gaussian_tangents(samples, x, generator)
        try:
            with watch_coupling(refuse=True):
                out = vmap(lambda t: jvp(f, (x,), (t,))[1])(tangents)  # (S, B, *out)
        except GraphCutError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            warn_fallback(who, "forward-mode AD", "the vjp_sphere estimator", err)
        else:
            est = out.reshape(samples, x.shape[0], -1).pow(2).sum(-1).mean(0)
            check_func_result(f, x, est, create_graph=create_graph, who=who)
            return (est if create_graph else est.detach()), "jvp_gaussian"
    elif estimator == "jvp_gaussian":
        warn_fallback(
            who, "forward-mode AD", "the vjp_sphere estimator", RuntimeError(COUPLING_MESSAGE)
        )
    if fwd is None:
        fwd = forward(f, x, who)
    v = sphere_vectors(samples, fwd.batch, fwd.n_outputs, fwd.y, generator)
    g, path = batched_vjp(fwd, v, create_graph=create_graph, who=who)
    return g.reshape(samples, fwd.batch, -1).pow(2).sum(-1).mean(0), "vjp_sphere_" + path


def jacobian_fro_norm_sq(
    f: Fn,
    x: torch.Tensor,
    *,
    estimator: Estimator = "exact",
    samples: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    r"""Per-sample :math:`\|\partial f(x)_b/\partial x_b\|_F^2`, shape ``(B,)``.

    Args:
        estimator: ``"exact"``, ``"vjp_sphere"`` or ``"jvp_gaussian"`` (module docstring).
        samples: number of random projections averaged per sample (estimators only).
        generator: a ``torch.Generator`` (CPU) to make the projections reproducible.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> fro = jacobian_fro_norm_sq(lin, torch.randn(4, 3))
        >>> torch.allclose(fro, lin.weight.pow(2).sum().expand(4))
        True
    """
    return fro_sq_with_path(
        f, x, estimator=estimator, samples=samples, generator=generator, create_graph=create_graph
    )[0]


def input_gradient_norm(f: Fn, x: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    r"""Per-sample, per-output :math:`\|\nabla_x f_i(x_b)\|_2`, shape ``(B, m)``.

    The quantity a Lipschitz bound :math:`\|\nabla_x f_i\| \le L` constrains.
    """
    fwd = forward(f, x, "input_gradient_norm")
    rows, _ = rows_from_forward(
        fwd, list(range(fwd.n_outputs)), create_graph=create_graph, who="input_gradient_norm"
    )
    return rows.pow(2).sum(-1).clamp_min(torch.finfo(rows.dtype).tiny).sqrt()
