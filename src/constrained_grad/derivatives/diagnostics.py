"""Diagnostics for the graph mistakes users make when differentiating through derivatives.

The forum threads this project grew from show the same few bugs again and again:

* ``.data`` or ``.detach()`` inside the model or on its output cuts the graph, so the
  penalty has no gradient with respect to the weights and training silently ignores it;
* inputs tiled or repeated *after* the forward pass are not the tensors the outputs were
  computed from, so ``autograd.grad`` reports them unused;
* ``create_graph=False`` (the default of ``autograd.grad``) gives a derivative that is a
  constant for the optimiser;
* ``.backward()`` used to get an input gradient accumulates stray gradients in ``.grad``.

The functions here turn those situations into :class:`~constrained_grad.errors.GraphCutError`
with the likely cause spelled out, instead of training on zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from constrained_grad.errors import CompiledModelError, GraphCutError

UNUSED_INPUT_HINT = (
    "The outputs were not computed from these input tensors. Common causes: the inputs were "
    "tiled/repeated/concatenated *after* the forward pass (build the input first, then call the "
    "model on it), the model reads `.data` or calls `.detach()` on its input, or the input was "
    "re-created (e.g. torch.tensor(x)) inside the model."
)

NO_GRAPH_HINT = (
    "The output does not require grad with respect to its inputs. Common causes: the model or "
    "loss ran under torch.no_grad()/torch.inference_mode(), the output was detached "
    "(`.detach()`, `.data`, `.numpy()`, `.item()`), or the input tensor was not marked "
    "requires_grad before the forward pass."
)

PARAMETER_CUT_HINT = (
    "The derivative does not depend on the trainable parameters, so a penalty on it would "
    "never change the weights. Common causes: `.data` or `.detach()` inside the model, "
    "derivatives taken with create_graph=False, or parameters with requires_grad=False. "
    "Remove the detach, or freeze nothing you want constrained."
)


LOSS_CUT_HINT = (
    "Training would follow the constraints alone and ignore the data. Common causes: the "
    "loss reads `.detach()`ed or `.data` outputs, converts them (`.item()`, `.numpy()`), or "
    "is computed from the targets only. Compute it from the outputs it is given."
)

CONSTRAINT_CUT_HINT = (
    "A multiplier would climb forever while the weights never move the violation. Common "
    "causes: the constraint's function uses `.data`/`.detach()`/`.item()` on the derivative "
    "values, or builds new tensors from them. Compute it with differentiable tensor ops."
)


def require_graph(outputs: torch.Tensor, who: str) -> None:
    """Raise :class:`GraphCutError` if ``outputs`` carries no autograd graph."""
    if not outputs.requires_grad:
        raise GraphCutError(
            f"{who}: outputs carry no autograd graph (got requires_grad=False). " + NO_GRAPH_HINT
        )


# torch's errors for a backward through torch.compile'd code that must keep its graph
_COMPILED_BACKWARD = ("donated buffers", "does not currently support double backward")
COMPILED_PROBLEM = (
    "the derivative runs through torch.compile'd code, whose backward can be neither "
    "differentiated again (every derivative constraint needs that) nor repeated"
)
COMPILED_FIX = (
    "Pass the uncompiled module: a torch.compile'd model given directly is unwrapped to "
    "compiled._orig_mod (same parameters), but a compiled submodule, a function calling a "
    "compiled module, or outputs computed by one cannot be; compile for inference after "
    "training."
)


def raise_if_compiled(err: BaseException, who: str) -> None:
    """Raise :class:`CompiledModelError` if ``err`` is torch's refusal to differentiate (or
    repeat) the backward of torch.compile'd code; return otherwise."""
    if any(marker in str(err) for marker in _COMPILED_BACKWARD):
        first = str(err).strip().splitlines()[0]
        raise CompiledModelError(
            f"{who}: {COMPILED_PROBLEM} (got: {first}). {COMPILED_FIX}"
        ) from err


def grad(
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    grad_outputs: torch.Tensor,
    *,
    create_graph: bool,
    batched: bool = False,
    who: str = "derivatives",
) -> torch.Tensor:
    """``torch.autograd.grad`` of one output/input pair, with the seeds' mistakes diagnosed.

    A dependency that exists but is locally constant (a dead ReLU) gives zeros, as it should;
    an input tensor the graph never saw raises :class:`GraphCutError` naming the likely cause.
    With ``batched=True`` the leading dimension of ``grad_outputs`` is vmapped over.
    """
    require_graph(outputs, who)
    try:
        (g,) = torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=grad_outputs,
            create_graph=create_graph,
            retain_graph=True,
            is_grads_batched=batched,
        )
    except RuntimeError as err:
        if "appears to not have been used in the graph" in str(err):
            raise GraphCutError(f"{who}: {UNUSED_INPUT_HINT}") from err
        raise_if_compiled(err, who)
        raise
    return g


def _reaches(value: torch.Tensor, targets: Sequence[torch.Tensor]) -> bool:
    """Whether the autograd graph of ``value`` has a leaf among ``targets`` (a graph walk)."""
    ids = {id(t) for t in targets}
    if id(value) in ids:
        return True
    stack = [value.grad_fn]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        leaf = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if leaf is not None and id(leaf) in ids:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def check_depends_on_parameters(
    value: torch.Tensor,
    parameters: Iterable[torch.nn.Parameter],
    who: str,
    *,
    what: str = "derivative",
    hint: str = PARAMETER_CUT_HINT,
) -> None:
    """Raise :class:`GraphCutError` when ``value`` cannot carry gradients to ``parameters``.

    Only trainable parameters count; a model without any passes trivially. The check is
    structural: ``requires_grad``, then a walk of the autograd graph of ``value`` looking for
    the parameters (a derivative usually requires grad through the inputs alone, so
    ``requires_grad`` by itself would miss parameters detached inside the model). It costs
    one pass over the graph nodes, no arithmetic.
    """
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        return
    if not value.requires_grad:
        raise GraphCutError(
            f"{who}: {what} has no path to the {len(trainable)} trainable "
            f"parameter tensor(s) (got requires_grad=False). {hint}"
        )
    if not _reaches(value, trainable):
        raise GraphCutError(
            f"{who}: {what} has no path to the {len(trainable)} trainable "
            f"parameter tensor(s) (got a graph that reaches none of them). {hint}"
        )


def check_independent_of_parameters_numerically(
    value: torch.Tensor, parameters: Sequence[torch.nn.Parameter], who: str
) -> None:
    """Slow, thorough check: the gradient of ``value.sum()`` w.r.t. the parameters is non-zero.

    Use it in tests or when debugging a model whose derivative training makes no progress;
    it catches a ``.detach()`` that keeps ``requires_grad`` (e.g. on a bias-only path).
    """
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        return
    check_depends_on_parameters(value, trainable, who)
    grads = torch.autograd.grad(value.sum(), trainable, retain_graph=True, allow_unused=True)
    if all(g is None or not bool(torch.any(g != 0)) for g in grads):
        raise GraphCutError(
            f"{who}: gradient of the derivative w.r.t. every parameter is zero "
            f"(got {len(trainable)} parameter tensors). {PARAMETER_CUT_HINT}"
        )
