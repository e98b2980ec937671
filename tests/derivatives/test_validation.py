"""Bad input is refused with InputValidationError saying who, what and how to fix it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from derivative_oracles import batch, mlp

from constrained_grad.derivatives.columns import jacobian_columns
from constrained_grad.derivatives.jacobian import batch_jacobian
from constrained_grad.derivatives.norms import input_gradient_norm, jacobian_fro_norm_sq
from constrained_grad.derivatives.rows import input_gradient, jacobian_rows
from constrained_grad.derivatives.second import second_derivatives
from constrained_grad.errors import InputValidationError

NET = mlp(3, 2)
SCALAR = mlp(3, 1)

# every public entry point (and every method that validates on its own path), as x -> value
ENTRY_POINTS: dict[str, Callable[[object], torch.Tensor]] = {
    **{
        f"jacobian_columns[{m}]": (lambda x, m=m: jacobian_columns(NET, x, [0], method=m))
        for m in ("double_backward", "forward", "reverse", "auto")
    },
    "jacobian_rows": lambda x: jacobian_rows(NET, x),
    "input_gradient": lambda x: input_gradient(SCALAR, x),
    **{
        f"batch_jacobian[{m}]": (lambda x, m=m: batch_jacobian(NET, x, mode=m))
        for m in ("forward", "reverse", "autograd", "auto")
    },
    **{
        f"jacobian_fro_norm_sq[{e}]": (lambda x, e=e: jacobian_fro_norm_sq(NET, x, estimator=e))
        for e in ("exact", "vjp_sphere", "jvp_gaussian")
    },
    "input_gradient_norm": lambda x: input_gradient_norm(NET, x),
    **{
        f"second_derivatives[{m}]": (lambda x, m=m: second_derivatives(NET, x, [0], method=m))
        for m in ("forward", "autograd", "auto")
    },
}


def _who(name: str) -> str:
    return name.split("[")[0]


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_non_tensor(name: str) -> None:
    with pytest.raises(
        InputValidationError,
        match=rf"^{_who(name)}: inputs must be a torch.Tensor \(got list\)\. "
        r"Convert with torch.as_tensor",
    ):
        ENTRY_POINTS[name]([[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_unbatched_input(name: str) -> None:
    with pytest.raises(
        InputValidationError,
        match=rf"^{_who(name)}: inputs must be batched.*\(got shape \(3,\)\)"
        r".*x\.unsqueeze\(0\)",
    ):
        ENTRY_POINTS[name](torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_integer_dtype(name: str) -> None:
    with pytest.raises(
        InputValidationError,
        match=rf"^{_who(name)}: inputs must be floating point.*torch.int64.*"
        r"x\.float\(\)",
    ):
        ENTRY_POINTS[name](torch.zeros(4, 3, dtype=torch.int64))


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_empty_batch(name: str) -> None:
    with pytest.raises(
        InputValidationError,
        match=rf"^{_who(name)}: batch is empty \(got shape \(0, 3\)\)\. "
        "Pass at least one sample",
    ):
        ENTRY_POINTS[name](torch.zeros(0, 3, dtype=torch.float64))


@pytest.mark.parametrize("method", ["double_backward", "forward", "reverse", "auto"])
@pytest.mark.parametrize("bad", [3, -4, 10])
def test_column_index_out_of_range(method: str, bad: int) -> None:
    with pytest.raises(
        InputValidationError,
        match=rf"jacobian_columns: input index {bad} is out of range for 3 inputs"
        r"\. Use an index in \[0, 2\]",
    ):
        jacobian_columns(NET, batch(2, 3), [0, bad], method=method)


@pytest.mark.parametrize("method", ["forward", "autograd", "auto"])
def test_second_index_out_of_range(method: str) -> None:
    with pytest.raises(InputValidationError, match=r"second_derivatives: input index 7 is out"):
        second_derivatives(NET, batch(2, 3), [7], method=method)


def test_row_index_out_of_range() -> None:
    with pytest.raises(
        InputValidationError, match=r"jacobian_rows: output index 2 is out of range for 2 outputs"
    ):
        jacobian_rows(NET, batch(2, 3), [2])


@pytest.mark.parametrize("bad", [1.0, True, "0", torch.tensor(0)])
def test_index_of_wrong_type(bad: object) -> None:
    with pytest.raises(InputValidationError, match=r"input indices must be ints \(got .*\)\. "):
        jacobian_columns(NET, batch(2, 3), [bad])  # type: ignore[list-item]


def test_empty_index_lists() -> None:
    with pytest.raises(InputValidationError, match=r"no input indices given \(got \[\]\)"):
        jacobian_columns(NET, batch(2, 3), [])
    with pytest.raises(InputValidationError, match=r"no output indices given"):
        jacobian_rows(NET, batch(2, 3), [])


def test_unknown_method_names() -> None:
    x = batch(2, 3)
    with pytest.raises(
        InputValidationError,
        match=r"jacobian_columns: unknown method 'fwd'\. Choose one of .*"
        r"'double_backward'",
    ):
        jacobian_columns(NET, x, [0], method="fwd")  # type: ignore[arg-type]
    with pytest.raises(
        InputValidationError,
        match=r"batch_jacobian: unknown mode 'jacrev'\. Choose one of .*'reverse'",
    ):
        batch_jacobian(NET, x, mode="jacrev")  # type: ignore[arg-type]
    with pytest.raises(
        InputValidationError,
        match=r"jacobian_fro_norm_sq: unknown estimator 'hutchinson'\. Choose "
        r"one of .*'vjp_sphere'",
    ):
        jacobian_fro_norm_sq(NET, x, estimator="hutchinson")  # type: ignore[arg-type]
    with pytest.raises(
        InputValidationError,
        match=r"second_derivatives: unknown method 'hessian'\. Choose 'auto', "
        r"'forward' or 'autograd'",
    ):
        second_derivatives(NET, x, [0], method="hessian")  # type: ignore[arg-type]


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_bad_sample_counts(samples: object) -> None:
    with pytest.raises(InputValidationError, match=r"samples must be a positive int \(got "):
        jacobian_fro_norm_sq(NET, batch(2, 3), estimator="vjp_sphere", samples=samples)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk_size", [0, -2, 1.0, False])
def test_bad_chunk_size(chunk_size: object) -> None:
    with pytest.raises(
        InputValidationError, match=r"batch_jacobian: chunk_size must be a positive int or None"
    ):
        batch_jacobian(NET, batch(2, 3), chunk_size=chunk_size)  # type: ignore[arg-type]


def test_input_gradient_needs_one_output() -> None:
    with pytest.raises(
        InputValidationError,
        match=r"input_gradient: model has 2 outputs per sample \(got output shape "
        r"\(4, 2\)\)\. Use jacobian_rows",
    ):
        input_gradient(NET, batch(4, 3))


def test_model_reducing_over_the_batch() -> None:
    with pytest.raises(
        InputValidationError,
        match=r"model output must keep the batch dimension \(got output shape "
        r"\(2,\) for input shape \(4, 3\)\)",
    ):
        jacobian_rows(lambda z: NET(z).sum(0), batch(4, 3))
    with pytest.raises(InputValidationError, match=r"got output shape \(\)"):
        jacobian_columns(lambda z: NET(z).sum(), batch(4, 3), [0])


def test_model_returning_a_tuple() -> None:
    with pytest.raises(
        InputValidationError, match=r"model must return a tensor \(got tuple\)\. Wrap the model"
    ):
        jacobian_rows(lambda z: (NET(z), z), batch(4, 3))
