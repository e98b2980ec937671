"""Shared plumbing of the derivative engine: calling the model, batched VJPs, fallbacks.

Conventions used throughout :mod:`constrained_grad.derivatives`:

* ``f`` maps a batch ``x`` of shape ``(B, *in_shape)`` to ``(B, *out_shape)`` and treats the
  samples independently (row ``b`` of the output depends on row ``b`` of the input only).
* Inputs and outputs are indexed *per sample, flattened*: ``d = prod(in_shape)`` inputs and
  ``m = prod(out_shape)`` outputs; for tabular data that is just the column index.
* ``J_b = ∂f(x)_b / ∂x_b`` is the ``(m, d)`` per-sample Jacobian.
* A model that *couples* the samples (BatchNorm in training mode: every output depends on
  every input of the batch through the batch statistics) has the batch Jacobian
  ``∂f(x)_{b'}/∂x_b`` with non-zero off-diagonal blocks. The engine then returns the
  diagonal blocks ``J_b = ∂f(x)_b/∂x_b`` exactly (other samples held fixed), which costs one
  backward pass per sample (see :func:`diagonal_vjp`). The batched shortcuts (a cotangent or
  tangent shared by all samples) would return the sums ``Σ_{b'} ∂f_{b'}/∂x_b`` instead, which
  for BatchNorm cancel to zero along every normalised direction.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
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
    coupled: bool = False  # samples interact (train-mode BatchNorm): use diagonal blocks

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
        raise InputValidationError(
            f"{who}: inputs must be a torch.Tensor (got {type(x).__name__}). "
            "Convert with torch.as_tensor(x, dtype=torch.float32)."
        )
    if x.dim() < 2:
        raise InputValidationError(
            f"{who}: inputs must be batched, shape (B, d) or (B, *in_shape) "
            f"(got shape {tuple(x.shape)}). Add a batch dimension with "
            "x.unsqueeze(0) or x.reshape(-1, 1)."
        )
    if not x.is_floating_point():
        raise InputValidationError(
            f"{who}: inputs must be floating point to be differentiated "
            f"(got dtype {x.dtype}). Cast with x.float() or x.double()."
        )
    if x.shape[0] == 0:
        raise InputValidationError(
            f"{who}: batch is empty (got shape {tuple(x.shape)}). Pass at least one sample."
        )


def unwrap_compiled(f: Fn) -> Fn:
    """The module a ``torch.compile`` wrapper compiles (``_orig_mod``), else ``f`` itself.

    ``torch.compile(module)`` returns an ``OptimizedModule`` holding the original module
    and sharing its parameters. Its backward cannot be differentiated again (aot_autograd
    has no double backward, and inductor donates its buffers), which every derivative
    constraint needs, so the engine runs the original module eagerly: same parameters,
    same outputs, and the optimizer built on the compiled module's parameters still steps
    the right tensors.
    """
    while isinstance(f, torch.nn.Module):
        inner = getattr(f, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        f = inner
    return f


def forward(f: Fn, x: torch.Tensor, who: str) -> Forward:
    """Run ``f`` on a fresh leaf copy of ``x`` that requires grad, keeping the graph."""
    f = unwrap_compiled(f)
    check_batch(x, who)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), watch_coupling() as seen:
        try:
            y = f(x)
        except RuntimeError as err:
            if not any(word in str(err) for word in ("shape", "size", "channels")):
                raise
            raise InputValidationError(
                f"{who}: the model fails on inputs of shape {tuple(x.shape)} ({err}). "
                "Pass a batch of the per-sample shape the model takes."
            ) from err
    return wrap_forward(x, y, who, coupled=bool(seen) or has_train_mode_batchnorm(f))


def wrap_forward(x: torch.Tensor, y: torch.Tensor, who: str, *, coupled: bool = False) -> Forward:
    """Wrap an existing pair ``y = f(x)`` (``x`` requiring grad) for reuse by the engine.

    Pass ``coupled=has_train_mode_batchnorm(f)`` when ``f`` may couple the samples.
    """
    require_tensor(y, who)
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"{who}: model output must keep the batch dimension (got output shape "
            f"{tuple(y.shape)} for input shape {tuple(x.shape)}). Do not reduce over the batch "
            "inside the model."
        )
    out_shape = tuple(y.shape[1:])
    flat = y if y.dim() == 2 else y.reshape(y.shape[0], -1)  # no view (graph node) if flat
    return Forward(x=x, y=flat, out_shape=out_shape, coupled=coupled)


def require_tensor(y: object, who: str) -> None:
    """Raise :class:`InputValidationError` unless the model's output ``y`` is a tensor."""
    if not isinstance(y, torch.Tensor):
        raise InputValidationError(
            f"{who}: model must return a tensor (got {type(y).__name__}). Wrap the model so "
            "it returns the tensor to constrain, e.g. lambda x: model(x)['key']."
        )


def check_indices(indices: list[int], size: int, what: str, who: str) -> list[int]:
    """Normalise and validate flat per-sample indices (negative indices allowed)."""
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise InputValidationError(
                f"{who}: {what} indices must be ints (got {i!r}). Pass e.g. [0, 5]."
            )
        if not -size <= i < size:
            raise InputValidationError(
                f"{who}: {what} index {i} is out of range for {size} "
                f"{what}s. Use an index in [0, {size - 1}]."
            )
        out.append(i % size)
    if not out:
        raise InputValidationError(f"{who}: no {what} indices given (got []). Name at least one.")
    return out


def stacked_grads(
    y: torch.Tensor, x: torch.Tensor, grad_outputs: torch.Tensor, *, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    """``(K, *x.shape)`` gradients of ``y`` for the ``K`` cotangents ``grad_outputs``.

    One vmapped backward pass (``"reverse_vmap"``; plain ``"reverse"`` when ``K == 1``), or a
    loop (``"reverse_loop"``, with a :class:`FallbackWarning`) where the backward graph cannot
    be vmapped.
    """
    if grad_outputs.shape[0] == 1:
        g = checked_grad(y, x, grad_outputs[0], create_graph=create_graph, who=who)
        return g.unsqueeze(0), "reverse"
    try:
        g = checked_grad(y, x, grad_outputs, create_graph=create_graph, batched=True, who=who)
        return g, "reverse_vmap"
    except GraphCutError:
        raise
    except RuntimeError as err:
        # an error the loop repeats (an op without a double backward) propagates unwarned
        gs = [checked_grad(y, x, v, create_graph=create_graph, who=who) for v in grad_outputs]
        warn_fallback(who, "vmapped backward", "loop of backward passes", err)
        return torch.stack(gs), "reverse_loop"


def batched_vjp(
    fwd: Forward, vectors: torch.Tensor, *, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    """Vector-Jacobian products ``v_k^T J_b`` for ``vectors`` of shape ``(K, B, m)``.

    Returns ``(K, B, *in_shape)`` and the path that ran (see :func:`stacked_grads`); for a
    forward pass that couples the samples, exact diagonal blocks (path ``"diagonal_" + ...``,
    see :func:`diagonal_vjp`).
    """
    if fwd.coupled:
        return diagonal_vjp(fwd, vectors, create_graph=create_graph, who=who)
    grad_outputs = vectors.reshape(vectors.shape[0], *fwd.y.shape)
    return stacked_grads(fwd.y, fwd.x, grad_outputs, create_graph=create_graph, who=who)


#: Upper bound on the elements of one chunk of per-sample gradients in :func:`diagonal_vjp`.
DIAGONAL_CHUNK_ELEMENTS = 2**22


def diagonal_vjp(
    fwd: Forward, vectors: torch.Tensor, *, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    r"""Exact per-sample products ``v_{k,b}^T ∂f(x)_b/∂x_b`` for samples that interact.

    The cotangent ``v_{k,b}`` is placed on sample ``b`` alone (``K·B`` cotangents, vmapped
    in chunks), and of each resulting gradient only sample ``b`` is kept:
    :math:`g_{k,b} = \sum_i v_{k,b,i}\, \partial f_{b,i} / \partial x_b`. Cost: ``B`` times
    :func:`batched_vjp`. Returns ``(K, B, *in_shape)`` and the path.
    """
    warnings.warn(
        f"{who}: the model couples the samples of the batch (got a BatchNorm layer in training "
        "mode), so per-sample derivatives cannot be batched; computed the exact per-sample "
        "blocks ∂f(x)_b/∂x_b with one backward pass per sample instead (B times slower). Call "
        "model.eval() to differentiate with fixed running statistics.",
        FallbackWarning,
        stacklevel=3,
    )
    n_vec, batch, m = vectors.shape
    total = n_vec * batch
    flat = vectors.reshape(total, m)  # seed s = k * B + b belongs to sample b
    chunk = max(1, min(total, DIAGONAL_CHUNK_ELEMENTS // (batch * max(fwd.n_inputs, m))))
    parts, path = [], "reverse"
    for start in range(0, total, chunk):
        ids = torch.arange(start, min(start + chunk, total), device=vectors.device)
        rows = torch.arange(len(ids), device=vectors.device)
        owner = ids % batch
        seeds = torch.zeros(len(ids), batch, m, dtype=vectors.dtype, device=vectors.device)
        seeds[rows, owner] = flat[ids]
        g, path = stacked_grads(fwd.y, fwd.x, seeds, create_graph=create_graph, who=who)
        parts.append(g.reshape(len(ids), batch, -1)[rows, owner])
    return torch.cat(parts).reshape(n_vec, batch, *fwd.x.shape[1:]), "diagonal_" + path


_forward_ad_ready = False


def prepare_forward_ad() -> None:
    """Load torch's forward-AD decompositions once, silencing the deprecation warning they emit.

    On first use, ``torch.func.jvp`` imports ``torch._decomp.decompositions_for_jvp``, which
    calls ``torch.jit.script`` and so emits a ``DeprecationWarning`` (torch 2.9+). Under
    ``-W error`` that warning aborts the import and every later forward-mode call.
    """
    global _forward_ad_ready
    if _forward_ad_ready:
        return
    # ImportError: torch moved the module; jvp then loads what it needs itself.
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    _forward_ad_ready = True


def check_func_result(
    f: Fn, x: torch.Tensor, value: torch.Tensor, *, create_graph: bool, who: str
) -> None:
    """Turn a silently-zero torch.func result into :class:`GraphCutError` when the graph is cut.

    torch.func returns zeros, not an error, when the output does not depend on the input
    (``.detach()``/``.data`` in the model) and respects ``torch.no_grad()`` inside ``f`` only
    in reverse mode. When the result is all zeros, or has no graph although ``create_graph``
    was asked for, one autograd forward/backward pass of ``f`` tells a cut graph (raises)
    from a genuinely zero or parameter-free derivative (returns).
    """
    if (create_graph and not value.requires_grad) or not bool(torch.any(value.detach() != 0)):
        fwd = forward(f, x, who)
        checked_grad(fwd.y, fwd.x, torch.ones_like(fwd.y), create_graph=False, who=who)


def warn_fallback(who: str, preferred: str, used: str, err: BaseException) -> None:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(
        f"{who}: {preferred} is not available for this model ({first_line}); used {used} instead.",
        FallbackWarning,
        stacklevel=3,
    )


def _is_train_batchnorm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training


def has_train_mode_batchnorm(f: object) -> bool:
    """True if ``f`` is a module holding a BatchNorm layer in training mode."""
    if not isinstance(f, torch.nn.Module):
        return False
    return any(_is_train_batchnorm(m) for m in f.modules())


COUPLING_MESSAGE = "BatchNorm in training mode couples the samples and cannot run under torch.func"


@contextlib.contextmanager
def watch_coupling(*, refuse: bool = False) -> Iterator[list[bool]]:
    """Record (or, with ``refuse=True``, stop) calls of train-mode BatchNorm layers.

    :func:`has_train_mode_batchnorm` only sees a module passed as ``f``; this global forward
    pre-hook also catches one called inside a plain function or lambda. With ``refuse=True``
    it raises ``RuntimeError`` before the layer runs, so a torch.func path falls back to
    autograd instead of returning sums of Jacobian blocks (or updating running statistics).
    """
    seen: list[bool] = []

    def hook(module: torch.nn.Module, args: object) -> None:
        if _is_train_batchnorm(module):
            seen.append(True)
            if refuse:
                raise RuntimeError(COUPLING_MESSAGE)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with warnings.catch_warnings():
            # torch warns whenever a compiled module runs while any global hook exists;
            # this hook only looks for train-mode BatchNorm, so running twice is harmless
            warnings.filterwarnings("ignore", message=_COMPILE_HOOK_WARNING, category=UserWarning)
            yield seen
    finally:
        handle.remove()


_COMPILE_HOOK_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def unit_vectors(indices: list[int], size: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``e_i`` for ``i`` in ``indices``: shape ``(len(indices), size)``."""
    if len(indices) == size and indices == list(range(size)):
        return torch.eye(size, dtype=like.dtype, device=like.device)
    eye = torch.zeros(len(indices), size, dtype=like.dtype, device=like.device)
    eye[torch.arange(len(indices)), torch.tensor(indices)] = 1
    return eye


_COTANGENTS: dict[tuple[tuple[int, ...], int, torch.dtype, torch.device], torch.Tensor] = {}
_COTANGENTS_MAX = 64


def unit_cotangents(indices: list[int], size: int, like: torch.Tensor) -> torch.Tensor:
    """:func:`unit_vectors`, built once per selection, dtype and device and then shared.

    Only for read-only uses such as the ``grad_outputs`` of a backward pass: the same few
    selections recur every training step, and building them costs kernels each time.
    """
    key = (tuple(indices), size, like.dtype, like.device)
    eye = _COTANGENTS.get(key)
    if eye is None:
        if len(_COTANGENTS) >= _COTANGENTS_MAX:
            _COTANGENTS.clear()
        eye = _COTANGENTS[key] = unit_vectors(indices, size, like)
    return eye
