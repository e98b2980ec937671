"""The policy units :func:`fit` composes, each against an oracle of its own: the data order
of :class:`Epochs` (a resumed run sees the batches an uninterrupted one would) and the stop
rules' patience."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from cg_train_helpers import line_data, linear_model
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.training.epochs import Epochs, Position, Start
from constrained_grad.training.stopping import StopRules


def _loader(seed: int) -> DataLoader:
    data = TensorDataset(torch.arange(10.0))
    return DataLoader(
        data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def _run(
    loader: DataLoader, start: Start, stop_after: int | None = None
) -> list[tuple[int, int, list[float]]]:
    seen = []
    batches = Epochs(loader, 3, start, go_on=lambda: True, capture=True)
    for epoch, index, (x,) in batches:
        seen.append((epoch, index, x.tolist()))
        batches.position.batch_in_epoch = index + 1
        if stop_after is not None and len(seen) == stop_after:
            break
    return seen


@pytest.mark.parametrize("stop_after", [1, 4, 6])  # mid-epoch, mid-epoch, epoch boundary
def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(stop_after: int) -> None:
    torch.manual_seed(3)
    whole = _run(_loader(7), Start(Position(0, 0, None, 0)))
    assert len(whole) == 12  # 3 epochs of 4 batches
    assert [x for e, _, x in whole if e == 0] != [x for e, _, x in whole if e == 1]  # shuffled

    torch.manual_seed(3)
    first_loader = _loader(7)
    first = Epochs(
        first_loader, 3, Start(Position(0, 0, None, 0)), go_on=lambda: True, capture=True
    )
    seen = []
    for epoch, index, (x,) in first:
        seen.append((epoch, index, x.tolist()))
        first.position.batch_in_epoch = index + 1
        if len(seen) == stop_after:
            break
    saved = Position(**first.position.as_dict())
    loader_rng = first.generator.get_state() if first.generator is not None else None
    torch.manual_seed(99)  # the new process starts from other random states
    resumed = _run(_loader(123), Start(saved, rng=None, loader_rng=loader_rng))
    assert seen + resumed == whole


def test_an_empty_loader_is_refused() -> None:
    batches = Epochs([], 1, Start(Position(0, 0, None, 0)), go_on=lambda: True, capture=False)
    with pytest.raises(InputValidationError, match="yielded no batch"):
        list(batches)


def test_a_spent_budget_starts_no_epoch() -> None:
    batches = Epochs([1, 2], 5, Start(Position(0, 0, None, 0)), go_on=lambda: False, capture=False)
    assert list(batches) == []
    assert batches.remaining() == 10


def test_feasible_stop_needs_patience_consecutive_steps() -> None:
    rules = StopRules(["a"], steps=None, stop_tolerance=0.1, patience=3, callbacks=())
    worst = [0.0, 0.05, 0.2, 0.0, 0.1, 0.05]  # the run of 3 restarts after 0.2
    stops = [rules.after_step(None, 0, [0.0], w) for w in worst]  # type: ignore[arg-type]
    assert stops == [False, False, False, False, False, True]
    assert rules.stopped == "feasible"
    assert rules.worst([0.0, 0.0, 0.0, 0.3, 0.0, 0.0]) == 0.3
    assert math.isnan(
        StopRules([], steps=1, stop_tolerance=None, patience=1, callbacks=()).worst([0.0])
    )


def test_a_refused_resume_releases_the_folder_at_once(tmp_path: Path) -> None:
    x, y = line_data(32)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]

    def run(upper: float) -> cg.FitResult:
        model = linear_model()
        problem = cg.DerivativeProblem(
            model,
            torch.nn.functional.mse_loss,
            [cg.DerivativeBound(inputs=[0], upper=upper, name="slope")],
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return cg.fit(problem, batches, opt, epochs=1, progress=False, checkpoint_dir=tmp_path)

    run(1.0)
    with pytest.raises(CheckpointError, match="upper") as refused:
        run(2.0)  # another declaration under the same name
    # the error (and its traceback) is still alive here: the lock must not be
    assert refused.value is not None
    assert run(1.0).steps == 2  # resumed at the end of the first run: no new step
