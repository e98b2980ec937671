# Bad inputs on purpose: arguments of the wrong type are the point of these cases.
# mypy: disable-error-code="arg-type,call-arg,return-value,func-returns-value,list-item"
"""Bad inputs across the public API: each raises one of constrained_grad's own errors, of
the expected class, with a message that names what is wrong — never a raw traceback from
torch or Cooper.

Every case is a function of a small context (a fresh folder and a good checkpoint to
tamper with) and is run under ``pytest.raises(cls, match=fragment)``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.derivatives.bounds import column_bounds, network_layers
from constrained_grad.errors import (
    CertificationError,
    CheckpointError,
    CompiledModelError,
    ConstrainedGradError,
    ConstraintSpecError,
    GraphCutError,
    InputValidationError,
)
from constrained_grad.training import checkpoint
from constrained_grad.verify.interval import certify_interval

D, M, N = 3, 2, 16


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, D, generator=g), torch.rand(N, M, generator=g)


X, Y = _data()


def _model(hidden: int = 8, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, hidden), act(), nn.Linear(hidden, M))


def _nan_weights(model: nn.Sequential) -> nn.Sequential:
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


def _mono(**kw: Any) -> cg.Monotonic:
    return cg.Monotonic(inputs=[0], name="mono", **kw)


def _problem(
    constraints: Any = None, *, model: Any = None, loss: Any = nn.functional.mse_loss, **kw: Any
) -> cg.DerivativeProblem:
    return cg.DerivativeProblem(
        model if model is not None else _model(),
        loss,
        [_mono()] if constraints is None else constraints,
        **kw,
    )


def _with_compiled_layer() -> nn.Sequential:
    """A model one of whose layers is torch.compile'd (no double backward, not unwrappable)."""
    torch.manual_seed(0)
    inner = torch.compile(nn.Sequential(nn.Linear(D, 8), nn.Tanh()), backend="aot_eager")
    return nn.Sequential(inner, nn.Linear(8, M))


def _loader(*tensors: torch.Tensor, **kw: Any) -> DataLoader:
    return DataLoader(TensorDataset(*(tensors or (X, Y))), batch_size=8, **kw)


def _fit(
    problem: cg.DerivativeProblem, loader: Any = None, opt: Any = None, **kw: Any
) -> cg.FitResult:
    kw.setdefault("steps", 2)
    kw.setdefault("progress", False)
    opt = opt if opt is not None else torch.optim.SGD(problem.model.parameters(), lr=0.1)
    return cg.fit(problem, _loader() if loader is None else loader, opt, **kw)


def _ckpt_constraints() -> list[cg.DerivativeConstraint]:
    return [_mono(), cg.JacobianNormBound(1.0, estimator="vjp_sphere", name="jac")]


@dataclass
class Ctx:
    tmp: Path
    good: Path  # folder holding a good checkpoint of a 2-step run with _ckpt_constraints()

    def copy(self) -> Path:
        """A fresh copy of the good checkpoint folder."""
        dst = self.tmp / "run"
        shutil.copytree(self.good, dst)
        return dst

    def tampered(self, data: bytes) -> Path:
        run = self.copy()
        (run / "checkpoint.pt").write_bytes(data)
        return run

    def resume(
        self,
        run: Path,
        constraints: Any = None,
        model: Any = None,
        opt: Any = torch.optim.SGD,
    ) -> cg.FitResult:
        problem = _problem(_ckpt_constraints() if constraints is None else constraints, model=model)
        return _fit(
            problem, opt=opt(problem.model.parameters(), lr=0.1), steps=4, checkpoint_dir=run
        )


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    _fit(_problem(_ckpt_constraints()), checkpoint_dir=folder, checkpoint_every=1)
    return folder


def _without(key: str) -> Callable[[Ctx], Any]:
    def case(c: Ctx) -> Any:
        run = c.copy()
        state = checkpoint.load(run / "checkpoint.pt")
        del state[key]
        checkpoint.atomic_save(state, run / "checkpoint.pt")
        return c.resume(run)

    return case


def _file_as_checkpoint_dir(c: Ctx) -> Any:
    (c.tmp / "afile").write_text("not a folder")
    return _fit(_problem(), checkpoint_dir=c.tmp / "afile", checkpoint_every=1)


def _good_bytes(c: Ctx) -> bytes:
    return (c.good / "checkpoint.pt").read_bytes()


def _flipped(data: bytes) -> bytes:
    return data[:64] + bytes(b ^ 0xFF for b in data[64:1024]) + data[1024:]


GM = "gm"
VERIFY_BOX = cg.Box([0.0] * D, [1.0] * D)
Case = tuple[Callable[[Ctx], Any], type[Exception], str]

CASES: dict[str, Case] = {
    # --- data: shapes and dtypes ---------------------------------------------------------
    "inputs_wrong_width": (
        lambda c: _fit(_problem(), [(torch.rand(N, 4), Y)]),
        InputValidationError,
        r"batch inputs have shape \(16, 4\) but the model takes \(B, 3\)",
    ),
    "inputs_unbatched": (
        lambda c: _fit(_problem(), [(X[:, 0], Y)]),
        InputValidationError,
        r"batch inputs have shape \(16,\)",
    ),
    "inputs_integer": (
        lambda c: _fit(_problem(), [(X.long(), Y)]),
        InputValidationError,
        r"must be floating point .*torch\.int64",
    ),
    "inputs_float64_for_float32_model": (
        lambda c: _fit(_problem(), [(X.double(), Y)]),
        InputValidationError,
        r"dtype torch\.float64 .*parameters are torch\.float32",
    ),
    "inputs_not_a_tensor": (
        lambda c: _fit(_problem(), [(X.tolist(), Y)]),
        InputValidationError,
        r"batch inputs must be a tensor \(got list\)",
    ),
    "empty_batch": (
        lambda c: _fit(_problem(), [(X[:0], Y[:0])]),
        InputValidationError,
        r"empty batch",
    ),
    "targets_wrong_shape": (
        lambda c: _fit(_problem(), [(X, torch.rand(N, 5))]),
        InputValidationError,
        r"outputs of shape \(16, 2\) and targets of shape \(16, 5\)",
    ),
    "targets_missing": (
        lambda c: _fit(_problem(), [X]),
        InputValidationError,
        r"no targets: yield \(x, y\)",
    ),
    "batch_of_strings": (
        lambda c: _fit(_problem(), ["abc"]),
        InputValidationError,
        r"cannot read a batch of type str",
    ),
    # --- derivative targets (GradientMatch) ----------------------------------------------
    "gradient_targets_wrong_size": (
        lambda c: _fit(
            _problem([cg.GradientMatch("2", name=GM)], loss=None), [(X, Y, torch.rand(N, 5))]
        ),
        InputValidationError,
        r"gm: targets of shape \(16, 5\) do not match the derivatives .* = \(16, 2, 3\)",
    ),
    "gradient_targets_transposed": (
        lambda c: _fit(
            _problem([cg.GradientMatch("2", name=GM)], loss=None), [(X, Y, torch.rand(N, D, M))]
        ),
        InputValidationError,
        r"targets of shape \(16, 3, 2\) do not match",
    ),
    "gradient_targets_missing_field": (
        lambda c: _fit(_problem([cg.GradientMatch("grads", name=GM)], loss=None)),
        InputValidationError,
        r"gm: the batch has no field 'grads'",
    ),
    "gradient_targets_not_numeric": (
        lambda c: _fit(_problem([cg.GradientMatch(lambda b: ["a"] * N, name=GM)], loss=None)),
        InputValidationError,
        r"gm: targets must be numeric",
    ),
    "gradient_tensor_targets_wrong_rows": (
        lambda c: cg.GradientMatch(torch.rand(5, M, D), where=cg.AtPoints(torch.rand(6, D))),
        ConstraintSpecError,
        r"targets have 5 rows but the points number 6",
    ),
    "gradient_tensor_targets_wrong_shape": (
        lambda c: _fit(
            _problem(
                [
                    cg.GradientMatch(
                        torch.rand(6, M, 4), name=GM, where=cg.AtPoints(torch.rand(6, D))
                    )
                ]
            )
        ),
        InputValidationError,
        r"targets of shape \(6, 2, 4\) do not match",
    ),
    # --- indices out of range / inputs the model does not take ---------------------------
    "input_index_out_of_range": (
        lambda c: _problem([cg.Monotonic(inputs=[3])]),
        ConstraintSpecError,
        r"monotonic_0: .*input index 3 is out of range: the model has 3",
    ),
    "negative_input_index_out_of_range": (
        lambda c: _problem([cg.Monotonic(inputs=[-4])]),
        ConstraintSpecError,
        r"input index -4 is out of range",
    ),
    "output_index_out_of_range": (
        lambda c: _problem([cg.Lipschitz(1.0, outputs=[2], name="lip")]),
        ConstraintSpecError,
        r"lip: output index 2 is out of range: the model has 2 outputs",
    ),
    "custom_needs_out_of_range": (
        lambda c: _problem([cg.Custom(lambda v: v.x, needs=cg.Needs(columns=frozenset({7})))]),
        ConstraintSpecError,
        r"input index 7 is out of range",
    ),
    "box_of_other_width": (
        lambda c: _problem([_mono(where=cg.InBox(cg.Box([0, 0], [1, 1]), n=4))]),
        ConstraintSpecError,
        r"mono: InBox box has 2 features but the model takes 3",
    ),
    "points_of_other_width": (
        lambda c: _problem([_mono(where=cg.AtPoints(torch.rand(5, 4)))]),
        ConstraintSpecError,
        r"AtPoints points have 4 features",
    ),
    "integer_points": (
        lambda c: cg.AtPoints(torch.ones(5, D, dtype=torch.long)),
        ConstraintSpecError,
        r"points must be floating point",
    ),
    "pointwise_index_out_of_range": (
        lambda c: _fit(
            _problem([_mono(where=cg.OnBatch(num_points=4), reduction="pointwise")]),
            _loader_with_indices(),
        ),
        InputValidationError,
        r"mono: sample index out of range \[0, 4\)",
    ),
    "pointwise_without_index": (
        lambda c: _fit(_problem([_mono(where=cg.OnBatch(num_points=N), reduction="pointwise")])),
        InputValidationError,
        r"needs each sample's index",
    ),
    "violations_of_unknown_constraint": (
        lambda c: _problem().violations("nope", X),
        InputValidationError,
        r"no constraint named 'nope'",
    ),
    # --- loaders --------------------------------------------------------------------------
    "empty_dataloader": (
        lambda c: _fit(_problem(), _loader(X[:0], Y[:0])),
        InputValidationError,
        r"the loader yielded no batch",
    ),
    "drop_last_drops_everything": (
        lambda c: _fit(_problem(), _loader(X[:3], Y[:3], drop_last=True)),
        InputValidationError,
        r"the loader yielded no batch",
    ),
    "loader_not_iterable": (
        lambda c: _fit(_problem(), 5),
        InputValidationError,
        r"loader must be an iterable of batches",
    ),
    # --- integer inputs to the derivative engine, bad engine calls -----------------------
    "engine_integer_inputs": (
        lambda c: cg.jacobian_columns(_model(), X.long(), [0]),
        InputValidationError,
        r"jacobian_columns: inputs must be floating",
    ),
    "engine_index_out_of_range": (
        lambda c: cg.jacobian_columns(_model(), X, [5]),
        InputValidationError,
        r"input index 5 is out of range for 3",
    ),
    "engine_unbatched": (
        lambda c: cg.jacobian_rows(_model(), X[0]),
        InputValidationError,
        r"jacobian_rows: inputs must be batched",
    ),
    "engine_unknown_estimator": (
        lambda c: cg.jacobian_fro_norm_sq(_model(), X, estimator="x"),
        InputValidationError,
        r"unknown estimator 'x'",
    ),
    "engine_zero_samples": (
        lambda c: cg.jacobian_fro_norm_sq(_model(), X, estimator="vjp_sphere", samples=0),
        InputValidationError,
        r"samples must be a positive int \(got 0\)",
    ),
    "engine_unknown_mode": (
        lambda c: cg.batch_jacobian(_model(), X, mode="sideways"),
        InputValidationError,
        r"unknown mode 'sideways'",
    ),
    "engine_second_out_of_range": (
        lambda c: cg.second_derivatives(_model(), X, [4]),
        InputValidationError,
        r"input index 4 is out of range",
    ),
    "engine_detached_model": (
        lambda c: cg.jacobian_columns(lambda x: x.detach() * 2, X, [0]),
        GraphCutError,
        r"outputs carry no autograd graph",
    ),
    "compiled_submodule": (
        lambda c: _fit(_problem(model=_with_compiled_layer())),
        CompiledModelError,
        r"torch\.compile'd code.*\(got: .*\)\. Pass the uncompiled module",
    ),
    "engine_closure_over_the_batch": (  # (B, B, ...) blocks before: issue 15, item 4
        lambda c: cg.batch_jacobian(lambda h: _model()(X) + h, torch.rand(N, M), mode="forward"),
        InputValidationError,
        r"batch_jacobian: f returns 16 rows for 1 input row .*mode='autograd'",
    ),
    "engine_function_mixing_samples": (
        lambda c: cg.batch_jacobian(lambda x: _model()(x - x.mean(0)), X),
        InputValidationError,
        r"batch_jacobian: output row 0 depends on input row 1 .*mixes the samples",
    ),
    "engine_input_gradient_of_vector_output": (
        lambda c: cg.input_gradient(_model(), X),
        InputValidationError,
        r"model has 2 outputs",
    ),
    # --- checkpoints ----------------------------------------------------------------------
    "checkpoint_with_constraint_dropped": (
        lambda c: c.resume(c.copy(), [_mono()]),
        CheckpointError,
        r"other constraints \('jac' is in the checkpoint but not in the problem\)",
    ),
    "checkpoint_with_constraint_renamed": (
        lambda c: c.resume(
            c.copy(), [_mono(), cg.JacobianNormBound(1.0, estimator="vjp_sphere", name="jac2")]
        ),
        CheckpointError,
        r"'jac' is in the checkpoint but not in the problem; 'jac2' is in the problem but not",
    ),
    "checkpoint_with_other_inputs": (
        lambda c: c.resume(
            c.copy(),
            [
                cg.Monotonic(inputs=[0, 1], name="mono"),
                cg.JacobianNormBound(1.0, estimator="vjp_sphere", name="jac"),
            ],
        ),
        CheckpointError,
        r"'mono'\.components: checkpoint 2, problem 4",
    ),
    "checkpoint_with_other_reduction": (
        lambda c: c.resume(
            c.copy(),
            [_mono(reduction="max"), cg.JacobianNormBound(1.0, estimator="vjp_sphere", name="jac")],
        ),
        CheckpointError,
        r"'mono'\.reduction: checkpoint 'mean_hinge', problem 'max'",
    ),
    "checkpoint_of_other_model": (
        lambda c: c.resume(c.copy(), model=_model(hidden=16)),
        CheckpointError,
        r"the model weights in .* do not fit",
    ),
    "checkpoint_of_other_optimizer": (
        lambda c: c.resume(c.copy(), opt=torch.optim.Adam),
        CheckpointError,
        r"holds a SGD state but this run's primal optimizer is Adam",
    ),
    "checkpoint_corrupted": (
        lambda c: c.resume(c.tampered(_flipped(_good_bytes(c)))),
        CheckpointError,
        r"is not a readable checkpoint",
    ),
    "checkpoint_truncated": (
        lambda c: c.resume(c.tampered(_good_bytes(c)[: len(_good_bytes(c)) // 2])),
        CheckpointError,
        r"is not a readable checkpoint .*truncated or corrupted",
    ),
    "checkpoint_empty_file": (
        lambda c: c.resume(c.tampered(b"")),
        CheckpointError,
        r"is not a readable checkpoint \(an empty file\)",
    ),
    "checkpoint_of_something_else": (
        lambda c: (
            torch.save(torch.zeros(3), c.tmp / "t.pt"),
            c.resume(c.tampered((c.tmp / "t.pt").read_bytes())),
        ),
        CheckpointError,
        r"is not a constrained_grad checkpoint \(got format 'Tensor'",
    ),
    "checkpoint_missing_entries": (
        _without("rng"),
        CheckpointError,
        r"lacks the entries \['rng'\]",
    ),
    "checkpoint_dir_is_a_file": (
        _file_as_checkpoint_dir,
        CheckpointError,
        r"cannot use .*afile' as the checkpoint folder",
    ),
    # --- boxes ----------------------------------------------------------------------------
    "box_low_above_high": (
        lambda c: cg.Box([0, 1], [1, 0]),
        InputValidationError,
        r"low > high for feature 1",
    ),
    "box_shapes_differ": (
        lambda c: cg.Box([0, 0], [1]),
        InputValidationError,
        r"low and high differ in shape \(got \(2,\) and \(1,\)\)",
    ),
    "box_nan_bound": (
        lambda c: cg.Box([0, float("nan")], [1, 1]),
        InputValidationError,
        r"bounds must be finite",
    ),
    "box_empty": (lambda c: cg.Box([], []), InputValidationError, r"no features"),
    "box_not_numbers": (
        lambda c: cg.Box("ab", "cd"),
        InputValidationError,
        r"low and high must be sequences of numbers",
    ),
    "box_fixed_index_out_of_range": (
        lambda c: cg.Box([0], [1], fixed={3: 0.5}),
        InputValidationError,
        r"fixed feature index 3 is out of",
    ),
    # --- verify ---------------------------------------------------------------------------
    "verify_domain_not_a_box": (
        lambda c: cg.verify(_model(), [_mono()], ([0] * D, [1] * D)),
        InputValidationError,
        r"verify: domain must be a cg\.Box",
    ),
    "verify_box_of_wrong_width": (
        lambda c: cg.verify(_model(), [_mono()], cg.Box([0.0] * (D + 1), [1.0] * (D + 1))),
        InputValidationError,
        r"verify: the model fails on an input of shape .*Give the Box one bound per model input",
    ),
    "engine_data_of_wrong_width": (
        lambda c: cg.jacobian_columns(torch.nn.Linear(3, 2), torch.randn(4, 5), [0]),
        InputValidationError,
        r"jacobian_columns: the model fails on inputs of shape \(4, 5\)",
    ),
    "verify_seed_not_int": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, seed="a"),
        InputValidationError,
        r"verify: seed must be an int in \[0, 2\*\*64\) \(got 'a'\)",
    ),
    "verify_bad_certify": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, certify="yes"),
        InputValidationError,
        r"certify must be True, False or 'auto'",
    ),
    "verify_negative_tol": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, tol=-1.0),
        InputValidationError,
        r"tol must be a finite number >= 0",
    ),
    "verify_not_constraints": (
        lambda c: cg.verify(_model(), ["mono"], VERIFY_BOX),
        InputValidationError,
        r"constraints must be declared constraints",
    ),
    "verify_index_out_of_range": (
        lambda c: cg.verify(
            _model(), [cg.Monotonic(inputs=[5])], VERIFY_BOX, samples=8, adversarial=False
        ),
        ConstraintSpecError,
        r"input index 5 is out",
    ),
    "verify_unknown_sampler": (
        lambda c: cg.verify(
            _model(), [_mono()], VERIFY_BOX, samples=8, sampler="grid", adversarial=False
        ),
        InputValidationError,
        r"unknown method 'grid'",
    ),
    "verify_zero_starts": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, samples=0, starts=0),
        InputValidationError,
        r"no starting points",
    ),
    "verify_zero_max_boxes": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, samples=8, max_boxes=0),
        InputValidationError,
        r"verify: max_boxes must be an int >= 1 \(got 0\)",
    ),
    "verify_negative_time_limit": (
        lambda c: cg.verify(_model(), [_mono()], VERIFY_BOX, samples=8, time_limit=-1.0),
        InputValidationError,
        r"verify: time_limit must be a positive number of seconds",
    ),
    "certify_interval_nan_weights": (
        lambda c: cg.certify_interval(
            _nan_weights(_model()), VERIFY_BOX.low, VERIFY_BOX.high, input_index=0, lower=0.0
        ),
        InputValidationError,
        r"certify_interval: the model has non-finite weights or biases",
    ),
    "certify_interval_float_batch": (
        lambda c: cg.certify_interval(
            _model(), VERIFY_BOX.low, VERIFY_BOX.high, input_index=0, lower=0.0, batch=2.5
        ),
        InputValidationError,
        r"certify_interval: batch must be an int >= 1 \(got 2\.5\)",
    ),
    "box_contains_wrong_width": (
        lambda c: VERIFY_BOX.contains(torch.zeros(3, D + 1)),
        InputValidationError,
        rf"Box.contains: points must be a tensor of shape \(\.\.\., {D}\)",
    ),
    "box_project_not_a_tensor": (
        lambda c: VERIFY_BOX.project([0.0] * D),
        InputValidationError,
        r"Box.project: points must be a tensor .*\(got list\)",
    ),
    "verify_certify_unboundable_net": (
        lambda c: cg.verify(
            _model(act=nn.SiLU), [_mono()], VERIFY_BOX, samples=8, adversarial=False, certify=True
        ),
        CertificationError,
        r"layer 1 \(SiLU\)",
    ),
    # --- certified training: Cells, Prover, Counterexamples.add ---------------------------
    "cells_model_with_silu": (
        lambda c: _problem([_mono(where=cg.Cells(VERIFY_BOX))], model=_model(act=nn.SiLU)),
        CertificationError,
        r"mono: layer 1 \(SiLU\) cannot be bounded",
    ),
    "cells_model_with_gelu": (
        lambda c: _problem([_mono(where=cg.Cells(VERIFY_BOX))], model=_model(act=nn.GELU)),
        CertificationError,
        r"mono: layer 1 \(GELU\) cannot be bounded",
    ),
    "cells_splits_not_a_list": (
        lambda c: cg.Cells(VERIFY_BOX, splits="2"),
        ConstraintSpecError,
        r"Cells: splits must be an int or a list of ints.*\(got '2'\)",
    ),
    "bounds_column_out_of_range": (
        lambda c: column_bounds(
            network_layers(_model(), D, who="t"), torch.zeros(1, D), torch.ones(1, D), [D]
        ),
        InputValidationError,
        r"column_bounds: inputs must be a non-empty list of column indices in \[0, 3\) "
        r"\(got \[3\]\)",
    ),
    "cells_box_nan": (
        lambda c: cg.Cells(cg.Box([float("nan"), 0.0, 0.0], [1.0] * D)),
        InputValidationError,
        r"Box: bounds must be finite \(got low=\[nan",
    ),
    "cells_box_unbounded": (
        lambda c: cg.Cells(cg.Box([0.0] * D, [1.0, float("inf"), 1.0])),
        InputValidationError,
        r"Box: bounds must be finite \(got high=\[1\.0, inf",
    ),
    "cells_not_a_box": (
        lambda c: cg.Cells([[0.0] * D, [1.0] * D]),
        ConstraintSpecError,
        r"Cells: box must be a cg\.Box \(got list\)",
    ),
    "cells_box_wrong_width": (
        lambda c: _problem([_mono(where=cg.Cells(cg.Box([0.0, 0.0], [1.0, 1.0])))]),
        ConstraintSpecError,
        r"Cells box has 2 features but the model takes 3 inputs",
    ),
    "cells_grid_over_budget": (
        lambda c: cg.Cells(VERIFY_BOX, splits=10, max_cells=100),
        ConstraintSpecError,
        r"initial grid has 1000 cells, more than max_cells=100",
    ),
    "cells_on_convex": (
        lambda c: _problem([cg.Convex(inputs=[0], where=cg.Cells(VERIFY_BOX), name="cvx")]),
        ConstraintSpecError,
        r"cvx: where=Cells\(\.\.\.\) bounds first derivatives .*\(got Convex\)",
    ),
    "cells_on_jacobian_norm": (
        lambda c: _problem([cg.JacobianNormBound(1.0, where=cg.Cells(VERIFY_BOX), name="jac")]),
        ConstraintSpecError,
        r"jac: where=Cells.*\(got JacobianNormBound\)",
    ),
    "cells_on_gradient_match": (
        lambda c: _problem([cg.GradientMatch("2", where=cg.Cells(VERIFY_BOX), name=GM)]),
        ConstraintSpecError,
        r"gm: where=Cells.*\(got GradientMatch\)",
    ),
    "cells_on_callable_bound": (
        lambda c: _problem(
            [
                cg.DerivativeBound(
                    inputs=[0], lower=lambda x: x[:, :1], where=cg.Cells(VERIFY_BOX), name="b"
                )
            ]
        ),
        ConstraintSpecError,
        r"b: where=Cells.*DerivativeBound with number bounds \(got DerivativeBound\)",
    ),
    "counterexamples_add_wrong_width": (
        lambda c: cg.Counterexamples(VERIFY_BOX).add(torch.rand(4, 2)),
        InputValidationError,
        r"Counterexamples\.add: points must be finite with 3 features \(got shape \(4, 2\)\)",
    ),
    "counterexamples_add_nan": (
        lambda c: cg.Counterexamples(VERIFY_BOX).add(torch.tensor([[float("nan"), 0.0, 0.0]])),
        InputValidationError,
        r"Counterexamples\.add: points must be finite",
    ),
    "counterexamples_add_one_point_unbatched": (
        lambda c: cg.Counterexamples(VERIFY_BOX).add(torch.rand(D)),
        InputValidationError,
        r"Counterexamples\.add: points must be an \(N, 3\) tensor",
    ),
    "prover_domain_not_a_box": (
        lambda c: cg.Prover([0.0, 1.0]),
        InputValidationError,
        r"Prover: domain must be a cg\.Box \(got list\)",
    ),
    "prover_every_zero": (
        lambda c: cg.Prover(VERIFY_BOX, every=0),
        InputValidationError,
        r"Prover: every must be a positive int \(got 0\)",
    ),
    "prover_feed_not_counterexamples": (
        lambda c: cg.Prover(VERIFY_BOX, feed=cg.InBox(VERIFY_BOX, n=4)),
        InputValidationError,
        r"Prover: feed must be a cg\.Counterexamples point source \(got InBox\)",
    ),
    "prover_unknown_constraint": (
        lambda c: _fit(_problem(), callbacks=[cg.Prover(VERIFY_BOX, every=1, constraints=["x"])]),
        InputValidationError,
        r"Prover: no constraint named \['x'\]",
    ),
    "certify_interval_cells_wrong_width": (
        lambda c: certify_interval(
            _model().double(),
            VERIFY_BOX.low,
            VERIFY_BOX.high,
            input_index=0,
            output_index=0,
            lower=0.0,
            cells=(torch.zeros(2, 2), torch.ones(2, 2)),
        ),
        InputValidationError,
        r"certify_interval: cells must be two non-empty \(N, 3\) tensors \(got \(2, 2\)",
    ),
    # --- fit arguments --------------------------------------------------------------------
    "fit_negative_dual_lr": (
        lambda c: _fit(_problem(), dual_lr=-1.0),
        InputValidationError,
        r"dual_lr must be a finite number >= 0 \(got -1\.0\)",
    ),
    "fit_nan_dual_lr": (
        lambda c: _fit(_problem(), dual_lr=float("nan")),
        InputValidationError,
        r"dual_lr must be a finite number",
    ),
    "fit_unknown_update": (
        lambda c: _fit(_problem(), update="gauss-seidel"),
        InputValidationError,
        r"update must be 'simultaneous' or 'alternat",
    ),
    "fit_zero_steps": (
        lambda c: _fit(_problem(), steps=0),
        InputValidationError,
        r"steps must be a positive int \(got 0\)",
    ),
    "fit_zero_epochs": (
        lambda c: _fit(_problem(), epochs=0),
        InputValidationError,
        r"epochs must be a positive int \(got 0\)",
    ),
    "fit_checkpoint_every_without_dir": (
        lambda c: _fit(_problem(), checkpoint_every=5),
        InputValidationError,
        r"checkpoint_every needs checkpoint_dir",
    ),
    "fit_checkpoint_every_zero": (
        lambda c: _fit(_problem(), checkpoint_every=0, checkpoint_dir=c.tmp),
        InputValidationError,
        r"checkpoint_every must be a positive int \(got 0\)",
    ),
    "fit_unknown_on_nonfinite": (
        lambda c: _fit(_problem(), on_nonfinite="ignore"),
        InputValidationError,
        r"on_nonfinite must be 'raise' or 'skip'",
    ),
    "fit_unknown_dual_optimizer": (
        lambda c: _fit(_problem(), dual_optimizer="rmsprop"),
        InputValidationError,
        r"unknown dual_optimizer 'rmsprop'",
    ),
    "fit_dual_factory_minimizes": (
        lambda c: _fit(_problem(), dual_optimizer=lambda g: torch.optim.SGD(g, lr=0.1)),
        InputValidationError,
        r"must build an optimizer with maximize=True",
    ),
    "fit_dual_factory_returns_junk": (
        lambda c: _fit(_problem(), dual_optimizer=lambda g: 3),
        InputValidationError,
        r"must return a torch\.optim\.Optimizer \(got int\)",
    ),
    "fit_adam_for_pointwise": (
        lambda c: _fit(
            _problem([_mono(where=cg.AtPoints(torch.rand(4, D)), reduction="pointwise")]),
            dual_optimizer="adam",
        ),
        InputValidationError,
        r"'adam' cannot step pointwise multipliers",
    ),
    "fit_primal_optimizer_not_an_optimizer": (
        lambda c: _fit(_problem(), opt="sgd"),
        InputValidationError,
        r"primal_optimizer must be a torch\.optim",
    ),
    "fit_problem_not_a_problem": (
        lambda c: cg.fit(_model(), _loader(), torch.optim.SGD(_model().parameters(), lr=0.1)),
        InputValidationError,
        r"problem must be a cg\.DerivativeProblem \(got Sequential\)",
    ),
    "fit_unknown_device": (
        lambda c: _fit(_problem(), device="tpu"),
        InputValidationError,
        r"cannot move the model to device 'tpu'",
    ),
    "fit_callback_not_callable": (
        lambda c: _fit(_problem(), callbacks=[1]),
        InputValidationError,
        r"callbacks and eval_fn must be callable",
    ),
    "fit_stop_tolerance_not_a_number": (
        lambda c: _fit(_problem(), stop_tolerance="0.1"),
        InputValidationError,
        r"stop_tolerance must be a number",
    ),
    # --- declarations and problems --------------------------------------------------------
    "negative_tolerance": (
        lambda c: _mono(tolerance=-0.1),
        ConstraintSpecError,
        r"Monotonic: tolerance must be >= 0\.0 \(got -0\.1\)",
    ),
    "nan_tolerance": (
        lambda c: _mono(tolerance=float("nan")),
        ConstraintSpecError,
        r"tolerance must be a finite number \(got nan\)",
    ),
    "unknown_reduction": (
        lambda c: _mono(reduction="sum"),
        ConstraintSpecError,
        r"unknown reduction 'sum'",
    ),
    "equality_with_hinge": (
        lambda c: cg.Custom(
            lambda v: v.x, needs=cg.Needs(), kind="equality", reduction="mean_hinge"
        ),
        ConstraintSpecError,
        r"reduction 'mean_hinge' makes no sense for an equality",
    ),
    "biased_projected_norm": (
        lambda c: cg.JacobianNormBound(1.0, estimator="vjp_sphere", reduction="max"),
        ConstraintSpecError,
        r"reduction 'max' of a random estimate",
    ),
    "zero_augmented_penalty": (
        lambda c: cg.AugmentedLagrangian(penalty=0.0),
        ConstraintSpecError,
        r"penalty must be a finite positive number",
    ),
    "bound_lower_above_upper": (
        lambda c: cg.DerivativeBound(inputs=[0], lower=1.0, upper=0.0),
        ConstraintSpecError,
        r"lower > upper",
    ),
    "duplicate_names": (
        lambda c: _problem([_mono(), cg.Monotonic(inputs=[1], name="mono")]),
        ConstraintSpecError,
        r"two constraints are named 'mono'",
    ),
    "pointwise_without_multiplier": (
        lambda c: _problem(
            [
                _mono(
                    where=cg.AtPoints(torch.rand(4, D)),
                    reduction="pointwise",
                    formulation=cg.QuadraticPenalty(),
                )
            ]
        ),
        ConstraintSpecError,
        r"pointwise reduction needs a multiplier",
    ),
    "single_constraint_not_in_a_list": (
        lambda c: _problem(_mono()),
        InputValidationError,
        r"constraints must be a list .*\[cg\.Monotonic",
    ),
    "seed_not_an_int": (
        lambda c: _problem(seed="a"),
        InputValidationError,
        r"seed must be an int \(got 'a'\)",
    ),
    "nothing_to_optimise": (
        lambda c: cg.DerivativeProblem(_model(), None, []),
        InputValidationError,
        r"nothing to optimise",
    ),
    # --- issue 15, item 19: raw errors before ---------------------------------------------
    "seed_beyond_64_bits": (
        lambda c: _problem(seed=2**70),
        InputValidationError,
        r"DerivativeProblem: seed must fit in 64 bits.*got 1180591620717411303424",
    ),
    "model_on_meta_device": (
        lambda c: _problem(model=_model().to("meta")),
        InputValidationError,
        r"parameters are on the meta device .*to_empty",
    ),
    "fit_on_meta_device": (
        lambda c: _fit(_problem(), device="meta"),
        InputValidationError,
        r"fit: cannot train on the meta device",
    ),
    "model_returning_a_dict": (
        lambda c: _problem(model=_DictModel()),
        InputValidationError,
        r"the model must return a tensor \(got dict\)\. Wrap it .*model\(x\)\['key'\]",
    ),
    "engine_model_returning_a_dict": (
        lambda c: cg.batch_jacobian(_DictModel(), X),
        InputValidationError,
        r"batch_jacobian: model must return a tensor \(got dict\)",
    ),
    "engine_second_of_a_dict": (
        lambda c: cg.second_derivatives(_DictModel(), X, [0]),
        InputValidationError,
        r"second_derivatives: model must return a tensor \(got dict\)",
    ),
    "model_of_two_inputs": (
        lambda c: _problem(model=_TwoInputModel()),
        InputValidationError,
        r"forward takes 2 inputs .*Wrap it as a one-input module",
    ),
    "gradient_violations_without_batch": (
        lambda c: _problem([cg.GradientMatch("grads", name=GM)], loss=None).violations(GM, X),
        InputValidationError,
        r"gm: the derivative targets come from the batch field 'grads', but no batch",
    ),
    "fit_huge_dual_lr": (
        lambda c: _fit(_problem(), dual_lr=1e39),
        InputValidationError,
        r"dual step size of 'mono' does not fit its torch\.float32 multipliers \(got 1e\+39",
    ),
    "fit_history_not_a_history": (
        lambda c: _fit(_problem(), history={}),
        InputValidationError,
        r"fit: history must be a cg\.History or None \(got dict\)",
    ),
    "diagnose_nan_tolerance": (
        lambda c: cg.diagnose(cg.History(["mono"]), tolerance=float("nan")),
        InputValidationError,
        r"diagnose: tolerance must be a finite number >= 0 \(got nan\)",
    ),
    "constraint_rebound_to_another_model_size": (  # issue 15, item 7
        lambda c: (
            (m := cg.Monotonic(inputs=[-1], name="m")),
            _problem([m]),
            cg.verify(nn.Linear(4, 1), [m], cg.Box([0.0] * 4, [1.0] * 4), samples=4),
        ),
        ConstraintSpecError,
        r"m: already bound to a model of 3 inputs and 2 outputs per sample \(got 4 and 1\)",
    ),
    "custom_constraint_detached": (  # issue 15, item 2: trained nothing, multiplier climbed
        lambda c: _fit(
            _problem(
                [
                    cg.Custom(
                        lambda v: 2.0 - v.columns([0]).detach()[:, :1, 0],
                        needs=cg.Needs(columns=frozenset({0})),
                        name="c",
                    )
                ]
            )
        ),
        GraphCutError,
        r"constraint 'c' has no path to the 4 trainable parameter tensor\(s\)",
    ),
    "custom_constraint_detached_but_input_dependent": (
        lambda c: _fit(
            _problem(
                [
                    cg.Custom(
                        lambda v: v.columns([0]).data[:, :1, 0] * v.x[:, :1],
                        needs=cg.Needs(columns=frozenset({0})),
                        name="c",
                    )
                ]
            )
        ),
        GraphCutError,
        r"constraint 'c' has no path .*got a graph that reaches none of them",
    ),
    "loss_of_detached_outputs": (  # issue 15, item 3: trained on the constraints alone
        lambda c: _fit(_problem(loss=lambda o, y: nn.functional.mse_loss(o.detach(), y))),
        GraphCutError,
        r"the loss has no path to the 4 trainable parameter tensor\(s\).*ignore the data",
    ),
    "convex_on_a_relu_net": (  # issue 15, item 1: curvature zero a.e., read as met
        lambda c: _problem([cg.Convex(inputs=[0], name="cvx")], model=_model(act=nn.ReLU)),
        ConstraintSpecError,
        r"cvx: Convex constrains second derivatives, but the model is piecewise linear "
        r"\(got layer 1 \(ReLU\)\)",
    ),
    "concave_on_a_leaky_relu_net": (
        lambda c: _problem([cg.Concave(inputs=[1])], model=_model(act=nn.LeakyReLU)),
        ConstraintSpecError,
        r"concave_0: Concave constrains .*piecewise linear .*nn\.Softplus",
    ),
    "model_fails_on_example": (
        lambda c: _problem(example_input=torch.rand(1, 4)),
        InputValidationError,
        r"the model fails on an input of shape",
    ),
}


class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, M)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.lin(x)}


class _TwoInputModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, M)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.lin(x1) + x2


def _loader_with_indices() -> DataLoader:
    return DataLoader(cg.with_indices(TensorDataset(X, Y)), batch_size=8)


def test_the_table_is_large_and_covers_every_error_class() -> None:
    assert len(CASES) >= 25
    used = {exc for _, exc, _ in CASES.values()}
    assert {
        InputValidationError,
        ConstraintSpecError,
        CheckpointError,
        GraphCutError,
        CertificationError,
    } <= used


@pytest.mark.parametrize(("make", "exc", "fragment"), list(CASES.values()), ids=list(CASES))
def test_bad_input_raises_a_named_error(
    make: Callable[[Ctx], Any],
    exc: type[Exception],
    fragment: str,
    tmp_path: Path,
    good_checkpoint: Path,
) -> None:
    with pytest.raises(exc, match=fragment) as info:
        make(Ctx(tmp_path, good_checkpoint))
    assert isinstance(info.value, ConstrainedGradError)
    message = str(info.value)
    assert len(message) > 30 and message[0] != " "
