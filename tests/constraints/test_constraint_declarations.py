"""Bad constraint declarations fail when built, with a message naming who and the fix."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.constraints.domain import as_box
from constrained_grad.errors import ConstraintSpecError, InputValidationError


def _mlp(d: int = 3, m: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, m))


def _problem(*constraints: cg.DerivativeConstraint, d: int = 3, m: int = 2) -> cg.DerivativeProblem:
    return cg.DerivativeProblem(_mlp(d, m), nn.functional.mse_loss, list(constraints))


# -- declaration time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (
            lambda: cg.DerivativeBound(inputs=[0], lower=2.0, upper=1.0),
            r"DerivativeBound: lower > upper \(got lower=2.0, upper=1.0\)\. Swap or correct",
        ),
        (
            lambda: cg.DerivativeBound(inputs=[0], lower=torch.ones(2), upper=torch.zeros(2)),
            r"DerivativeBound: lower > upper for some entries",
        ),
        (lambda: cg.DerivativeBound(inputs=[0]), r"DerivativeBound: give lower, upper or both"),
        (
            lambda: cg.DerivativeBound(inputs=[0], upper="1"),
            r"DerivativeBound: upper must be a number, a tensor or a function of x \(got str\)",
        ),
        (
            lambda: cg.Monotonic(inputs=[0], tolerance=-0.5),
            r"Monotonic: tolerance must be >= 0.0 \(got -0.5\)",
        ),
        (
            lambda: cg.Lipschitz(1.0, tolerance=float("nan")),
            r"Lipschitz: tolerance must be a finite number",
        ),
        (
            lambda: cg.Monotonic(inputs=[0], direction="up"),
            r"Monotonic: unknown direction 'up'\. Use 'increasing' or 'decreasing'",
        ),
        (lambda: cg.Monotonic(inputs=[0], margin=-1.0), r"Monotonic: margin must be >= 0.0"),
        (
            lambda: cg.Monotonic(inputs=[0], reduction="sum"),
            r"Monotonic: unknown reduction 'sum'\. Choose one of \('mean_hinge', 'max', 'mean', "
            r"'l2_hinge', 'pointwise'\)",
        ),
        (
            lambda: cg.Monotonic(inputs=[0], reduction="pointwise"),
            r"Monotonic: pointwise multipliers need points with stable ids \(got "
            r"where=OnBatch\(\)\)\. Use AtPoints\(points\) or "
            r"OnBatch\(num_points=len\(dataset\)\) with a loader over "
            r"constrained_grad\.with_indices\(dataset\)",
        ),
        (
            lambda: cg.JacobianNormBound(
                1.0, reduction="pointwise", where=cg.InBox(([0.0], [1.0]))
            ),
            r"JacobianNormBound: pointwise multipliers need points with stable ids",
        ),
        (lambda: cg.Monotonic(inputs=[]), r"Monotonic: inputs is empty"),
        (lambda: cg.Monotonic(inputs=[1, 1]), r"Monotonic: inputs has duplicates \(got \[1, 1\]\)"),
        (lambda: cg.Monotonic(inputs=[0.5]), r"Monotonic: inputs must be ints \(got 0.5"),
        (lambda: cg.Monotonic(inputs=[True]), r"Monotonic: inputs must be ints \(got True"),
        (lambda: cg.Monotonic(inputs=None), r"Monotonic: inputs must name at least one input"),
        (lambda: cg.Monotonic(inputs=[0], name="a/b"), r"Monotonic: name must be a non-empty"),
        (lambda: cg.Monotonic(inputs=[0], name=" "), r"Monotonic: name must be a non-empty"),
        (
            lambda: cg.Monotonic(inputs=[0], where="batch"),
            r"Monotonic: where must be OnBatch\(\), InBox\(\.\.\.\), Between\(\.\.\.\) or AtPoints",
        ),
        (
            lambda: cg.Monotonic(inputs=[0], formulation="lagrangian"),
            r"Monotonic: formulation must be Lagrangian\(\), AugmentedLagrangian",
        ),
        (lambda: cg.Monotonic(inputs=[0], dual_lr=-1.0), r"Monotonic: dual_lr must be >= 0.0"),
        (
            lambda: cg.GradientMatch(torch.zeros(4, 2)),
            r"GradientMatch: a targets tensor must be aligned with fixed points; use "
            r"where=AtPoints\(points\)",
        ),
        (
            lambda: cg.GradientMatch(torch.zeros(4, 2), where=cg.AtPoints(torch.zeros(5, 2))),
            r"GradientMatch: targets have 4 rows but the points number 5\. Give one target per "
            r"point",
        ),
        (
            lambda: cg.GradientMatch("targets", estimator="hutchinson"),
            r"GradientMatch: unknown estimator 'hutchinson'",
        ),
        (
            lambda: cg.JacobianNormBound(1.0, estimator="vjp_sphere", reduction="max"),
            r"JacobianNormBound: reduction 'max' of a random estimate is biased; use "
            r"reduction='mean'",
        ),
        (
            lambda: cg.JacobianNormBound(1.0, estimator="sketch"),
            r"JacobianNormBound: unknown estimator 'sketch'",
        ),
        (lambda: cg.JacobianNormBound(-1.0), r"JacobianNormBound: max_norm must be >= 0.0"),
        (
            lambda: cg.JacobianNormBound(1.0, estimator="vjp_sphere", samples=0),
            r"JacobianNormBound: samples must be a positive int \(got 0\)",
        ),
        (
            lambda: cg.Custom(lambda v: v.x, needs=cg.Needs(), kind="soft"),
            r"Custom: kind must be 'inequality' or 'equality'",
        ),
        (
            lambda: cg.Custom(lambda v: v.x, needs=cg.Needs(), n_components=0),
            r"Custom: n_components must be a positive int \(got 0\)",
        ),
        (lambda: cg.Custom(42, needs=cg.Needs()), r"Custom: fn must be callable \(got int\)"),
        (lambda: cg.Custom(lambda v: v.x, needs=None), r"Custom: needs must be a "),
        (
            lambda: cg.Custom(lambda v: v.x, needs=cg.Needs(), kind="equality", reduction="max"),
            r"Custom: reduction 'max' makes no sense for an equality constraint\. Use 'mean' or "
            r"'pointwise'",
        ),
        (
            lambda: cg.AugmentedLagrangian(0.0),
            r"AugmentedLagrangian: penalty must be a finite "
            r"positive number \(got 0.0\)",
        ),
        (
            lambda: cg.QuadraticPenalty(-1.0),
            r"QuadraticPenalty: coefficient must be a finite "
            r"positive number",
        ),
        (
            lambda: cg.FixedPenalty(float("inf")),
            r"FixedPenalty: weight must be a finite "
            r"non-negative number",
        ),
        (lambda: cg.AtPoints(torch.zeros(0, 3)), r"AtPoints: points must be a non-empty \(N, d\)"),
        (
            lambda: cg.AtPoints(torch.zeros(4, 3, dtype=torch.long)),
            r"AtPoints: points must be floating point \(got torch.int64\)\. Cast with points.float",
        ),
        (lambda: cg.InBox(([0.0], [1.0]), n=0), r"InBox: n must be a positive int \(got 0\)"),
        (lambda: cg.OnBatch(num_points=0), r"OnBatch: num_points must be a positive int"),
    ],
)
def test_bad_declaration_raises_naming_constraint_and_fix(build, pattern: str) -> None:
    with pytest.raises(ConstraintSpecError, match=pattern):
        build()


def test_equality_reduction_message_is_precise() -> None:
    """GradientMatch is an inequality (error <= tolerance): every reduction is accepted."""
    for reduction in ("mean", "max", "mean_hinge", "l2_hinge"):
        assert cg.GradientMatch("targets", reduction=reduction).reduction == reduction


def test_box_errors_name_the_feature() -> None:
    with pytest.raises(
        InputValidationError,
        match=r"Box: low > high for feature 1 \(got "
        r"low=2.0, high=1.0\)\. Swap or correct",
    ):
        cg.Box([0.0, 2.0], [1.0, 1.0])
    with pytest.raises(InputValidationError, match=r"Box: low and high differ in shape"):
        cg.Box([0.0, 0.0], [1.0])
    with pytest.raises(InputValidationError, match=r"Box: bounds must be finite"):
        cg.Box([0.0], [float("inf")])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"fixed": {0: float("nan")}},
            r"Box: fixed value of feature 0 must be a finite number \(got nan\)\. Pass a real",
        ),
        ({"fixed": {1: "x"}}, r"Box: fixed value of feature 1 must be a finite number"),
        (
            {"fixed": {0: 0.5}, "categorical": {0: [0.0, 1.0]}},
            r"Box: feature 0 is both fixed and categorical \(got fixed=0\.5, "
            r"categorical=\[0\.0, 1\.0\]\)\. Keep only one",
        ),
        (
            {"fixed": {-3: 0.5}, "categorical": {0: [0.0, 1.0]}},
            r"Box: feature 0 is both fixed and categorical",
        ),
        (
            {"categorical": {1: ["a", "b"]}},
            r"Box: categorical values of feature 1 must be numbers \(got \['a', 'b'\]\)",
        ),
        ({"categorical": {1: 2.0}}, r"Box: categorical values of feature 1 must be numbers"),
        ({"categorical": {1: []}}, r"Box: categorical values of feature 1 must be a non-empty"),
        ({"categorical": {1: [0.0, float("inf")]}}, r"non-empty list of finite numbers"),
        ({"fixed": {1.0: 0.5}}, r"Box: fixed keys must be int feature indices \(got 1\.0\)"),
        ({"categorical": {True: [0.0]}}, r"Box: categorical keys must be int feature indices"),
        ({"fixed": {-4: 0.5}}, r"Box: fixed feature index -4 is out of range for 3 features"),
        ({"fixed": {0: 0.5, -3: 0.2}}, r"Box: fixed gives feature 0 twice \(index -3"),
        ({"fixed": [0.5]}, r"Box: fixed must be a dict \{index: \.\.\.\} \(got list\)"),
    ],
)
def test_box_refuses_bad_fixed_and_categorical_features(kwargs: dict, pattern: str) -> None:
    with pytest.raises(InputValidationError, match=pattern):
        cg.Box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], **kwargs)


def test_box_refuses_bounds_that_are_not_one_dimensional() -> None:
    with pytest.raises(InputValidationError, match=r"Box: low must have shape \(d,\).*\(1, 2\)"):
        cg.Box([[0.0, 0.0]], [[1.0, 1.0]])


def test_box_takes_numpy_and_negative_indices() -> None:
    box = cg.Box(
        np.zeros(3), np.ones(3), fixed={np.int64(-1): 0.5}, categorical={np.int32(0): [1, 0]}
    )
    assert box.fixed == {2: 0.5}
    assert box.categorical == {0: [1.0, 0.0]}  # the order given
    assert box.categorical_levels == {0: (0.0, 1.0)}
    assert box.low.tolist() == [0.0, 0.0, 0.5] and box.high.tolist() == [1.0, 1.0, 0.5]


def test_verifier_boxes_name_their_caller() -> None:
    with pytest.raises(InputValidationError, match=r"^sample_search: fixed value of feature 0"):
        as_box([0.0], [1.0], fixed={0: float("inf")}, who="sample_search")


# -- binding to a model (DerivativeProblem build) ---------------------------------------------


def test_input_index_out_of_range_fails_at_problem_build() -> None:
    with pytest.raises(
        ConstraintSpecError,
        match=r"Monotonic: input index 3 is out of range: the model has 3 inputs "
        r"per sample\. Use an index in \[0, 2\] \(negative counts from the "
        r"end\)\.",
    ):
        _problem(cg.Monotonic(inputs=[3]))


def test_out_of_range_message_names_the_constraint_among_several() -> None:
    """With two unnamed constraints of one kind, the message names the failing one."""
    with pytest.raises(
        ConstraintSpecError,
        match=r"^monotonic_1: .*input index -4 is out of "
        r"range",
    ):
        _problem(cg.Monotonic(inputs=[0]), cg.Monotonic(inputs=[-4]))
    with pytest.raises(ConstraintSpecError, match=r"^z_mono: input index 7 is out of range"):
        _problem(cg.Monotonic(inputs=[7], name="z_mono"))


def test_output_index_out_of_range_fails_at_problem_build() -> None:
    with pytest.raises(
        ConstraintSpecError,
        match=r"output index 2 is out of range: the model "
        r"has 2 outputs per sample",
    ):
        _problem(cg.Lipschitz(1.0, outputs=[2]))
    with pytest.raises(ConstraintSpecError, match=r"output index 5 is out of range"):
        _problem(cg.DerivativeBound(inputs=[0], upper=1.0, outputs=[0, 5]))


def test_negative_indices_count_from_the_end() -> None:
    p = _problem(cg.Monotonic(inputs=[-1], outputs=[-2]))
    spec = p.specs["monotonic_0"]
    assert spec._inputs == [2]
    assert spec._outputs == [0]


def test_point_width_mismatch_fails_at_problem_build() -> None:
    with pytest.raises(
        ConstraintSpecError,
        match=r"InBox box has 2 features but the model takes "
        r"3 inputs per sample",
    ):
        _problem(cg.Monotonic(inputs=[0], where=cg.InBox(([0.0, 0.0], [1.0, 1.0]))))
    with pytest.raises(
        ConstraintSpecError,
        match=r"AtPoints points have 4 features but the "
        r"model takes 3",
    ):
        _problem(cg.Monotonic(inputs=[0], where=cg.AtPoints(torch.zeros(5, 4))))


def test_duplicate_names_fail() -> None:
    with pytest.raises(
        ConstraintSpecError,
        match=r"DerivativeProblem: two constraints are named "
        r"'a'\. Give each a unique name=",
    ):
        _problem(cg.Monotonic(inputs=[0], name="a"), cg.Lipschitz(1.0, name="a"))
    # an explicit name may not collide with a default one either
    with pytest.raises(ConstraintSpecError, match=r"two constraints are named 'monotonic_0'"):
        _problem(cg.Monotonic(inputs=[0]), cg.Monotonic(inputs=[1], name="monotonic_0"))


def test_default_names_count_per_kind() -> None:
    p = _problem(
        cg.Monotonic(inputs=[0]),
        cg.Lipschitz(2.0),
        cg.Monotonic(inputs=[1]),
        cg.DerivativeBound(inputs=[2], upper=1.0, name="slope"),
    )
    assert list(p.specs) == ["monotonic_0", "lipschitz_0", "monotonic_1", "slope"]


def test_pointwise_with_penalty_formulation_without_multiplier_fails() -> None:
    points = torch.zeros(4, 3)
    with pytest.raises(
        ConstraintSpecError,
        match=r"pointwise reduction needs a multiplier; "
        r"QuadraticPenalty has none\. Use an aggregate",
    ):
        _problem(
            cg.Monotonic(
                inputs=[0],
                reduction="pointwise",
                where=cg.AtPoints(points),
                formulation=cg.QuadraticPenalty(1.0),
            )
        )


def test_custom_needs_are_checked_against_the_model() -> None:
    c = cg.Custom(lambda v: v.columns([5])[:, 0, :], needs=cg.Needs(columns=frozenset({5})))
    with pytest.raises(ConstraintSpecError, match=r"input index 5 is out of range"):
        _problem(c)


def test_unresolved_constraint_says_how_to_resolve() -> None:
    c = cg.Monotonic(inputs=[0])
    with pytest.raises(
        ConstraintSpecError,
        match=re.escape("Monotonic: used before being resolved against a model"),
    ):
        _ = c.needs


def test_problem_rejects_non_constraints_and_empty_problems() -> None:
    model = _mlp()
    with pytest.raises(
        InputValidationError,
        match=r"constraints must be declared constraints "
        r"such as cg.Monotonic\(\.\.\.\) \(got dict\)",
    ):
        cg.DerivativeProblem(model, nn.functional.mse_loss, [{"inputs": [0]}])
    with pytest.raises(InputValidationError, match=r"nothing to optimise"):
        cg.DerivativeProblem(model, None, [])
    with pytest.raises(InputValidationError, match=r"loss must be a function"):
        cg.DerivativeProblem(model, "mse", [])
    with pytest.raises(
        InputValidationError,
        match=r"model must be a torch.nn.Module or a "
        r"function \(got int\)",
    ):
        cg.DerivativeProblem(3, nn.functional.mse_loss, [])


def test_problem_cannot_infer_size_without_a_linear_layer() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Tanh())
    with pytest.raises(
        InputValidationError,
        match=r"cannot infer the model's input size\. Pass "
        r"example_input=x\[:1\] or input_shape=\(d,\)",
    ):
        cg.DerivativeProblem(model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0])])
    p = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0])], input_shape=(4,)
    )
    assert p.n_inputs == 4
    assert p.n_outputs == 4
    with pytest.raises(
        InputValidationError,
        match=r"the model fails on an input of shape "
        r"\(1, 5\)",
    ):
        cg.DerivativeProblem(_mlp(), nn.functional.mse_loss, [], input_shape=(5,))
