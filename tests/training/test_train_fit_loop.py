"""The fit loop: one history row per step, budgets and stops, fit-time errors, non-finite
values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from cg_train_helpers import line_data, linear_model, mlp, slope_problem
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import InputValidationError, NonFiniteError


def _batches(n_batches: int = 4, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=g), torch.randn(size, 2, generator=g))
        for _ in range(n_batches)
    ]


def _mono_problem(model: nn.Module | None = None) -> cg.DerivativeProblem:
    model = model if model is not None else mlp(3, 2, hidden=8)
    return cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0], name="mono")]
    )


def _sgd(problem: cg.DerivativeProblem, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD(problem.model.parameters(), lr=lr)


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Sequential order; records the epochs ``fit`` passes to ``set_epoch``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


# -- history rows --------------------------------------------------------------------------------


def test_history_has_one_row_per_step_with_step_and_epoch_numbers() -> None:
    problem = _mono_problem()
    seen = []

    def record(info: cg.StepInfo) -> None:
        seen.append((info.step, info.epoch, info.problem.last_evals["mono"].violations.clone()))

    result = cg.fit(
        problem, _batches(), _sgd(problem), epochs=3, callbacks=[record], progress=False
    )
    h = result.history
    assert result.steps == 12 and result.stopped == "budget" and len(h) == 12
    assert h.steps == list(range(12))
    assert h.epochs == [0] * 4 + [1] * 4 + [2] * 4
    assert [s for s, _, _ in seen] == list(range(1, 13))  # callbacks see the count after
    assert [e for _, e, _ in seen] == h.epochs
    walls = h.wall_times
    assert all(b >= a for a, b in itertools.pairwise(walls))
    # the violation columns summarise exactly the violations of that step
    for t, (_, _, g) in enumerate(seen):
        assert h.column("mono/violation_max")[t] == pytest.approx(g.max().item(), abs=1e-6)
        assert h.column("mono/violation_mean")[t] == pytest.approx(g.mean().item(), abs=1e-6)
        assert h.column("mono/fraction_violated")[t] == pytest.approx(
            (g > 0).float().mean().item(), abs=1e-6
        )


def test_history_loss_is_the_loss_at_the_start_of_each_step() -> None:
    x, y = line_data()
    model = linear_model()
    w0, b0 = model.weight.item(), model.bias.item()
    problem = slope_problem(model)
    result = cg.fit(problem, [(x, y)], _sgd(problem), epochs=2, progress=False)
    assert result.history.column("loss")[0] == pytest.approx(
        float(((w0 * x + b0 - y) ** 2).mean()), abs=1e-12
    )
    lagr = result.history.column("lagrangian")[0]
    assert lagr == pytest.approx(result.history.column("loss")[0], abs=1e-12)  # lambda_0 = 0


def test_step_budget_cuts_an_epoch_and_a_continued_history_keeps_counting() -> None:
    problem = _mono_problem()
    opt = _sgd(problem)
    first = cg.fit(problem, _batches(), opt, epochs=5, steps=10, progress=False)
    assert first.steps == 10 and len(first.history) == 10
    assert first.history.epochs == [0] * 4 + [1] * 4 + [2] * 2
    more = cg.fit(
        problem, _batches(), opt, epochs=5, steps=14, history=first.history, progress=False
    )
    assert more.steps == 14 and more.history.steps == list(range(14))
    # the continued fit starts a new epoch after the last recorded one (2, cut short)
    assert more.history.epochs == [0] * 4 + [1] * 4 + [2] * 2 + [3] * 4


def test_continued_history_continues_the_epoch_count(capsys: pytest.CaptureFixture[str]) -> None:
    """fit twice, 2 + 2 epochs: the second fit records epochs 2 and 3, not 0 and 1 again, in
    the history, in its callbacks, in its sampler's ``set_epoch`` and in its progress bar."""
    shuffles = _EpochSampler(32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(32, 3), torch.randn(32, 2)),
        batch_size=8,
        sampler=shuffles,
    )
    problem = _mono_problem()
    opt = _sgd(problem)
    first = cg.fit(problem, loader, opt, epochs=2, progress=False)
    seen: list[tuple[int, int]] = []
    capsys.readouterr()
    more = cg.fit(
        problem,
        loader,
        opt,
        epochs=2,  # two more epochs
        history=first.history,
        callbacks=[lambda info: seen.append((info.step, info.epoch))],
        progress=True,
    )
    h = more.history
    assert h is first.history and more.steps == 16 and h.steps == list(range(16))
    assert h.epochs == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert seen == [(s + 1, e) for s, e in zip(h.steps[8:], h.epochs[8:], strict=True)]
    assert shuffles.epochs == [0, 1, 2, 3]
    assert "16/16" in capsys.readouterr().err  # the bar counts the continued steps too


def test_a_logged_history_with_step_gaps_can_be_continued(tmp_path: object) -> None:
    """A CSVLogger(every=2) file holds steps 0, 2, 4, ...: fit continues after its last step
    and epoch (it used to number on from the row count and refuse the non-increasing step)."""
    path = tmp_path / "log.csv"  # type: ignore[operator]
    problem = _mono_problem()
    opt = _sgd(problem)
    cg.fit(
        problem, _batches(), opt, epochs=2, callbacks=[cg.CSVLogger(path, every=2)], progress=False
    )
    logged = cg.History.load_csv(path)
    assert logged.steps == [0, 2, 4, 6]  # 8 steps, every second one logged
    more = cg.fit(problem, _batches(), opt, epochs=1, history=logged, progress=False)
    assert more.history.steps == [0, 2, 4, 6, 7, 8, 9, 10]
    assert more.history.epochs == [0, 0, 1, 1, 2, 2, 2, 2]
    assert more.steps == 11
    budget = cg.fit(problem, _batches(), opt, epochs=5, steps=13, history=logged, progress=False)
    assert budget.history.steps[-3:] == [10, 11, 12]  # the step budget counts step numbers


def test_resume_keeps_the_checkpointed_history_meta(tmp_path: object) -> None:
    """A run recorded its settings in history.meta; resuming it from its checkpoint with a
    fresh history (a new process) gets them back, and this call's own entries win."""
    ckpt = tmp_path / "run"  # type: ignore[operator]
    problem = _mono_problem()
    first = cg.History(list(problem.specs), meta={"seed": 3, "note": "first"})
    cg.fit(
        problem,
        _batches(),
        _sgd(problem),
        epochs=1,
        history=first,
        checkpoint_dir=ckpt,
        progress=False,
    )
    again = _mono_problem()
    mine = cg.History(list(again.specs), meta={"note": "resumed"})
    out = cg.fit(
        again, _batches(), _sgd(again), epochs=2, history=mine, checkpoint_dir=ckpt, progress=False
    )
    assert out.history.meta["seed"] == 3 and out.history.meta["note"] == "resumed"
    assert "constraint_kinds" in out.history.meta
    assert out.history.steps == list(range(8))  # resumed after the 4 checkpointed steps


def test_callback_and_feasibility_stops() -> None:
    problem = _mono_problem()
    result = cg.fit(
        problem,
        _batches(),
        _sgd(problem),
        epochs=10,
        callbacks=[lambda info: info.step >= 6],
        progress=False,
    )
    assert result.stopped == "callback" and result.steps == 6

    easy = cg.DerivativeProblem(
        mlp(3, 2, hidden=8),
        nn.functional.mse_loss,
        [cg.DerivativeBound(inputs=[0], upper=100.0, name="easy")],
    )
    result = cg.fit(
        easy, _batches(), _sgd(easy), epochs=10, stop_tolerance=0.0, patience=5, progress=False
    )
    assert result.stopped == "feasible" and result.steps == 5


def test_threads_apply_during_the_fit_and_are_restored_even_on_error() -> None:
    import inspect

    assert "threads" in inspect.signature(cg.fit).parameters  # help(cg.fit) shows it
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    seen: list[int] = []
    problem = _mono_problem()
    cg.fit(
        problem,
        _batches(),
        _sgd(problem),
        callbacks=[lambda info: seen.append(torch.get_num_threads())],
        progress=False,
        threads=target,
    )
    assert seen == [target] * 4 and torch.get_num_threads() == before

    def boom(info: cg.StepInfo) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        cg.fit(problem, _batches(), _sgd(problem), callbacks=[boom], progress=False, threads=target)
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputValidationError, match=r"^fit: threads must be a positive int"):
            cg.fit(problem, _batches(), _sgd(problem), progress=False, threads=bad)
    assert torch.get_num_threads() == before


def test_eval_fn_is_logged_every_n_steps_and_at_the_end() -> None:
    problem = _mono_problem()
    calls = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        calls.append(1)
        return {"calls": float(len(calls))}

    result = cg.fit(
        problem, _batches(), _sgd(problem), epochs=2, eval_fn=evaluate, eval_every=3, progress=False
    )
    steps, values = result.history.eval_series("calls")
    assert steps == [3, 6, 8] and values == [1.0, 2.0, 3.0]


# -- fit-time errors ----------------------------------------------------------------------------


def test_wrong_batch_shape_is_named_at_fit_time() -> None:
    problem = _mono_problem()
    with pytest.raises(
        InputValidationError,
        match=r"DerivativeProblem: batch inputs have shape "
        r"\(8, 4\) but the model takes \(B, 3\)\. "
        r"Check the loader\.",
    ):
        cg.fit(problem, [(torch.randn(8, 4), torch.randn(8, 2))], _sgd(problem), progress=False)


def test_empty_loader_is_an_error() -> None:
    problem = _mono_problem()
    with pytest.raises(
        InputValidationError,
        match=r"fit: the loader yielded no batch\. Check the "
        r"dataset is not empty and drop_last",
    ):
        cg.fit(problem, [], _sgd(problem), progress=False)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*_batches(1)[0]), batch_size=16, drop_last=True
    )
    with pytest.raises(InputValidationError, match=r"fit: the loader yielded no batch"):
        cg.fit(problem, loader, _sgd(problem), progress=False)


def test_integer_inputs_are_refused() -> None:
    problem = _mono_problem()
    x = torch.ones(8, 3, dtype=torch.long)
    with pytest.raises(
        InputValidationError,
        match=r"batch inputs must be floating point to be "
        r"differentiated \(got torch.int64\)\. Cast "
        r"with \.float\(\)",
    ):
        cg.fit(problem, [(x, torch.randn(8, 2))], _sgd(problem), progress=False)


def test_bad_fit_arguments() -> None:
    problem = _mono_problem()
    data = _batches(1)
    opt = _sgd(problem)
    cases = [
        ({"epochs": 0}, r"fit: epochs must be a positive int \(got 0\)"),
        ({"steps": -1}, r"fit: steps must be a positive int \(got -1\)"),
        ({"update": "jacobi"}, r"fit: update must be 'simultaneous' or 'alternating'"),
        ({"on_nonfinite": "ignore"}, r"fit: on_nonfinite must be 'raise' or 'skip'"),
        ({"dual_lr": -0.1}, r"fit: dual_lr must be a finite number >= 0 \(got -0.1\)"),
        (
            {"dual_optimizer": "rmsprop"},
            r"fit: unknown dual_optimizer 'rmsprop'\. Use 'sgd', "
            r"'adam' or a factory",
        ),
        (
            {"dual_optimizer": lambda groups: torch.optim.SGD(groups, lr=0.1)},
            r"fit: the dual optimizer factory must build an optimizer with maximize=True",
        ),
        ({"checkpoint_every": 5}, r"fit: checkpoint_every needs checkpoint_dir"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(InputValidationError, match=pattern):
            cg.fit(problem, data, opt, progress=False, **kwargs)
    with pytest.raises(
        InputValidationError,
        match=r"fit: primal_optimizer must be a "
        r"torch\.optim\.Optimizer \(got list\)",
    ):
        cg.fit(problem, data, list(problem.model.parameters()), progress=False)
    with pytest.raises(InputValidationError, match=r"fit: problem must be a cg\.DerivativeProblem"):
        cg.fit(problem.model, data, opt, progress=False)
    with pytest.raises(
        InputValidationError,
        match=r"backward must be a function \(tensor\) -> None or None \(got str\)",
    ):
        cg.Trainer(problem, opt, backward="manual")  # type: ignore[arg-type]


def test_non_scalar_loss_is_named() -> None:
    problem = cg.DerivativeProblem(
        mlp(3, 2, hidden=8), lambda out, y: (out - y) ** 2, [cg.Monotonic(inputs=[0])]
    )
    with pytest.raises(
        InputValidationError,
        match=r"DerivativeProblem: loss must return a scalar "
        r"tensor \(got torch.Size\(\[8, 2\]\)\)",
    ):
        cg.fit(problem, _batches(1), _sgd(problem), progress=False)


def test_dual_factory_and_adam_step_aggregate_multipliers() -> None:
    for dual in ("adam", lambda groups: torch.optim.Adagrad(groups, lr=0.1, maximize=True)):
        problem = cg.DerivativeProblem(
            mlp(3, 2, hidden=8),
            nn.functional.mse_loss,
            [cg.Monotonic(inputs=[0], margin=1.0, name="mono")],
        )
        result = cg.fit(
            problem, _batches(), _sgd(problem), dual_optimizer=dual, epochs=2, progress=False
        )
        assert min(result.history.column("mono/violation_max")) > 0  # violated throughout
        assert result.dual_optimizer is not None
        assert [g["name"] for g in result.dual_optimizer.param_groups] == ["mono"]
        assert problem.multiplier_values()["mono"].max() > 0


# -- non-finite values -------------------------------------------------------------------------


def test_nan_in_targets_raises_naming_quantity_and_step() -> None:
    data = _batches()
    data[2][1][0, 0] = float("nan")
    problem = _mono_problem()
    with pytest.raises(
        NonFiniteError,
        match=r"fit: non-finite value at step 2 \(epoch 0\) in "
        r"loss, Lagrangian\. Lower the learning rates, check "
        r"the data for NaN/inf, or pass on_nonfinite='skip'",
    ):
        cg.fit(problem, data, _sgd(problem), progress=False)


def test_nan_in_inputs_names_the_constraint_statistics() -> None:
    data = _batches()
    data[1][0][3, 0] = float("nan")
    problem = _mono_problem()
    with pytest.raises(
        NonFiniteError,
        match=r"at step 1 \(epoch 0\) in loss, Lagrangian, "
        r"mono/violation_mean, mono/violation_max",
    ):
        cg.fit(problem, data, _sgd(problem), progress=False)


def test_nan_parameter_is_named() -> None:
    problem = _mono_problem()
    with torch.no_grad():
        problem.model[0].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"at step 0 \(epoch 0\) in .*parameter 0\.weight"):
        cg.fit(problem, _batches(), _sgd(problem), progress=False)


def test_skip_drops_the_bad_step_as_if_the_batch_were_absent() -> None:
    data = _batches()
    bad = (data[1][0], data[1][1].clone())
    bad[1][0, 1] = float("nan")
    with_bad = [data[0], bad, data[2], data[3]]
    without = [data[0], data[2], data[3]]
    runs = []
    seen: dict[str, list[tuple[int, float]]] = {"skip": [], "raise": []}
    for batches, mode in ((with_bad, "skip"), (without, "raise")):
        problem = _mono_problem(mlp(3, 2, hidden=8, seed=1))
        result = cg.fit(
            problem,
            batches,
            _sgd(problem),
            dual_lr=0.5,
            epochs=2,
            on_nonfinite=mode,
            progress=False,
            callbacks=[lambda info, m=mode: seen[m].append((info.step, info.loss))],
            eval_fn=lambda model, m=mode: {"calls": float(len(seen[m]))},
            eval_every=2,
        )
        runs.append((problem, result))
    # callbacks and evaluations see the steps that happened, never the skipped ones
    assert seen["skip"] == seen["raise"] and len(seen["skip"]) == 6
    assert runs[0][1].history.evals == runs[1][1].history.evals
    (p_skip, r_skip), (p_ref, r_ref) = runs
    assert r_skip.extras["skipped_steps"] == 2 and r_ref.extras["skipped_steps"] == 0
    assert r_skip.steps == 6 and r_skip.history.steps == list(range(6))
    for a, b in zip(p_skip.model.parameters(), p_ref.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(p_skip.multiplier_values()["mono"], p_ref.multiplier_values()["mono"])
    assert all(math.isfinite(v) for v in r_skip.history.column("loss"))
    assert r_skip.history.column("loss") == r_ref.history.column("loss")
