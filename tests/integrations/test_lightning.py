"""The PyTorch Lightning integration: same steps as cg.fit, metrics, checkpoints, errors.

The oracle is constrained_grad's own loop (``cg.fit`` / ``cg.Trainer``) on the same seeded
model, batches and problem: a Lightning run must reproduce its weights, multipliers and
history bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip(
    "lightning",
    reason="the Lightning integration needs the optional dependency: "
    "pip install 'constrained-grad[lightning]'",
)

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger

import constrained_grad as cg
from constrained_grad.errors import InputValidationError
from constrained_grad.integrations.lightning import (
    CHECKPOINT_KEY,
    ConstrainedLightningModule,
)

pytestmark = [
    # Lightning's advice to use DataLoader workers does not apply to in-memory tensors
    pytest.mark.filterwarnings(
        "ignore:The '(train|val)_dataloader' does not have many workers:UserWarning"
    ),
    # Lightning 2.6 builds a torch pytree LeafSpec, which torch >= 2.10 deprecates
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]

N, BATCH = 48, 16  # 3 batches per epoch


@pytest.fixture(autouse=True)
def _one_thread_seeded() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def data() -> TensorDataset:
    """y decreases in x1 on [-1, 1]^2, so 'increasing in x1' is violated at first."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 2, generator=g) * 2 - 1
    y = x[:, :1] ** 2 - 0.8 * x[:, 1:] + 0.05 * torch.randn(N, 1, generator=g)
    return TensorDataset(x, y)


def loader(shuffle: bool = False) -> DataLoader:
    """Fixed order by default: Lightning draws from a shuffling loader's generator at other
    times than ``cg.fit`` does, and does not checkpoint it."""
    generator = torch.Generator().manual_seed(1) if shuffle else None
    return DataLoader(data(), batch_size=BATCH, shuffle=shuffle, generator=generator)


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def make_problem(net: torch.nn.Module) -> cg.DerivativeProblem:
    box = cg.Box(low=[-1, -1], high=[1, 1])
    return cg.DerivativeProblem(
        net,
        F.mse_loss,
        [
            cg.Monotonic(inputs=[1], direction="increasing", name="on_data"),
            cg.Monotonic(inputs=[1], where=cg.InBox(box, n=32), name="in_box"),
        ],
        seed=3,
    )


class Monotone(ConstrainedLightningModule):
    def __init__(self, lr: float = 2e-2, **options: Any) -> None:
        options.setdefault("dual_lr", 0.5)
        super().__init__(**options)
        self.lr = lr
        self.net = make_net()

    def build_problem(self) -> cg.DerivativeProblem:
        return make_problem(self.net)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def lightning_trainer(**kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def oracle(steps: int, dual_lr: float = 0.5, **kwargs: Any) -> cg.FitResult:
    """constrained_grad's own loop on the same model, problem and batches."""
    net = make_net()
    problem = make_problem(net)
    primal = torch.optim.Adam(net.parameters(), lr=2e-2)
    return cg.fit(
        problem,
        loader(),
        primal,
        dual_lr=dual_lr,
        epochs=100,
        steps=steps,
        progress=False,
        **kwargs,
    )


def assert_same_history(a: cg.History, b: cg.History) -> None:
    assert a.steps == b.steps
    assert a.epochs == b.epochs
    assert a.columns == b.columns
    for column in a.columns:
        np.testing.assert_array_equal(a.column(column), b.column(column), err_msg=column)
    for name in a.constraint_names:
        assert a.multiplier_values(name) == b.multiplier_values(name)


def assert_same_state(module: Monotone, result: cg.FitResult) -> None:
    for (name, p), q in zip(module.net.named_parameters(), result.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    ours = module.constraint_problem.multiplier_values()
    theirs = result.problem.multiplier_values()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert_same_history(module.constraint_history, result.history)


# -- 1. the same steps as cg.fit ---------------------------------------------------------------
@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_lightning_equals_cg_fit_bit_for_bit(update: str) -> None:
    steps = 7  # two epochs and a bit: crosses epoch boundaries
    module = Monotone(update=update)
    trainer = lightning_trainer(max_steps=steps)
    trainer.fit(module, loader())
    result = oracle(steps, update=update)
    assert trainer.global_step == steps  # the primal step went through Lightning
    assert len(module.constraint_history) == steps == result.steps
    assert module.constraint_history.epochs == [0, 0, 0, 1, 1, 1, 2]
    assert_same_state(module, result)
    # the run did something: the multipliers rose while the data were not monotone
    assert max(module.constraint_history.column("in_box/multiplier_max")) > 0


class Recording(Monotone):
    """Keeps the batches Lightning feeds, with their epochs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[tuple[int, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.seen.append((self.current_epoch, [t.clone() for t in batch]))
        super().training_step(batch, batch_idx)


def test_dual_adam_shuffled_max_epochs_match_cg_trainer() -> None:
    module = Recording(dual_optimizer="adam")
    trainer = lightning_trainer(max_epochs=2)
    trainer.fit(module, loader(shuffle=True))
    net = make_net()
    problem = make_problem(net)
    ref = cg.Trainer(
        problem, torch.optim.Adam(net.parameters(), lr=2e-2), dual_lr=0.5, dual_optimizer="adam"
    )
    for epoch, batch in module.seen:  # the same batches, in Lightning's shuffled order
        ref.step(batch, epoch)
    assert [e for e, _ in module.seen] == [0, 0, 0, 1, 1, 1]
    assert trainer.global_step == 2 * N // BATCH
    assert_same_state(module, cg.FitResult(ref.history, problem, ref.step_count, "budget"))
    ours = module.constraint_trainer.dual_optimizer
    assert ours is not None and ref.dual_optimizer is not None
    for a, b in zip(ours.state.values(), ref.dual_optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


# -- 2. metrics reach Lightning ----------------------------------------------------------------
class Recorder(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_metrics_reach_lightning_logger_and_callback_metrics() -> None:
    steps = 5
    recorder = Recorder()
    module = Monotone()
    trainer = lightning_trainer(max_steps=steps, logger=recorder, log_every_n_steps=1)
    trainer.fit(module, loader())
    history = module.constraint_history
    logged = [m for _, m in recorder.rows if "cg/lagrangian" in m]
    assert len(logged) == steps
    assert [s for s, m in recorder.rows if "cg/lagrangian" in m] == list(range(steps))
    for k, metrics in enumerate(logged):
        assert metrics["cg/loss"] == pytest.approx(history.column("loss")[k], rel=1e-6)
        assert metrics["cg/lagrangian"] == pytest.approx(history.column("lagrangian")[k], rel=1e-6)
        for name in ("on_data", "in_box"):
            for field in ("violation_max", "violation_mean", "multiplier_max"):
                expected = history.column(f"{name}/{field}")[k]
                assert metrics[f"cg/{name}/{field}"] == pytest.approx(expected, rel=1e-6, abs=0)
        worst = max(history.column(f"{n}/violation_max")[k] for n in ("on_data", "in_box"))
        assert metrics["cg/max_violation"] == pytest.approx(worst, rel=1e-6)
    last = history.last()
    assert last is not None
    callback = trainer.callback_metrics
    assert float(callback["cg/in_box/multiplier_max"]) == pytest.approx(
        last["in_box/multiplier_max"], rel=1e-6
    )
    assert float(callback["cg/loss"]) == pytest.approx(last["loss"], rel=1e-6)
    # the fields not asked for stay out of the logs (but are in the history)
    assert "cg/in_box/multiplier_q90" not in logged[-1]
    assert "in_box/multiplier_q90" in history.columns


def test_log_fields_and_prefix() -> None:
    module = Monotone(log_prefix="mono", log_fields=["fraction_violated"], prog_bar=False)
    trainer = lightning_trainer(max_steps=2)
    trainer.fit(module, loader())
    keys = set(trainer.callback_metrics)
    assert keys == {
        "mono/loss",
        "mono/lagrangian",
        "mono/max_violation",
        "mono/on_data/fraction_violated",
        "mono/in_box/fraction_violated",
    }
    assert trainer.progress_bar_metrics == {}


# -- 3. checkpoints ----------------------------------------------------------------------------
class OwnTrainStart(Monotone):
    def on_train_start(self) -> None:  # no super(): the state is then applied on first step
        self.started = True


@pytest.mark.parametrize("module_cls", [Monotone, OwnTrainStart])
def test_checkpoint_resume_continues_exactly(tmp_path: Path, module_cls: type[Monotone]) -> None:
    per_epoch = N // BATCH
    full = Monotone(dual_optimizer="adam")
    lightning_trainer(max_epochs=4).fit(full, loader())

    first = Monotone(dual_optimizer="adam")
    stopped = lightning_trainer(max_epochs=2)
    stopped.fit(first, loader())
    path = tmp_path / "half.ckpt"
    stopped.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert len(saved[CHECKPOINT_KEY]["history"]["step"]) == 2 * per_epoch

    torch.manual_seed(123)  # a different fresh start: everything must come from the file
    resumed = module_cls(dual_optimizer="adam")
    with torch.no_grad():
        for p in resumed.net.parameters():
            p.normal_()
    trainer = lightning_trainer(max_epochs=4)
    trainer.fit(resumed, loader(), ckpt_path=path)

    assert trainer.global_step == 4 * per_epoch
    ours, theirs = resumed.constraint_problem, full.constraint_problem
    for name, value in ours.multiplier_values().items():
        assert torch.equal(value, theirs.multiplier_values()[name]), name
    for p, q in zip(resumed.net.parameters(), full.net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_history(resumed.constraint_history, full.constraint_history)
    # InBox points: the problem's generator was restored too
    assert torch.equal(ours.generator.get_state(), theirs.generator.get_state())
    # the resumed half alone differs from the first half: the test can tell runs apart
    assert not torch.equal(
        ours.multiplier_values()["in_box"], first.constraint_problem.multiplier_values()["in_box"]
    )


def test_load_from_checkpoint_restores_history_and_multipliers(tmp_path: Path) -> None:
    module = Monotone()
    trainer = lightning_trainer(max_steps=4)
    trainer.fit(module, loader())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = Monotone.load_from_checkpoint(path, weights_only=True)
    assert_same_history(loaded.constraint_history, module.constraint_history)
    final = {k: v.clone() for k, v in module.constraint_problem.multiplier_values().items()}
    assert float(final["in_box"][0]) > 0
    lightning_trainer(max_steps=1).fit(loaded, loader())  # a new fit continues the state
    history = loaded.constraint_history
    assert history.steps == [0, 1, 2, 3, 4]
    assert history.epochs == [0, 0, 0, 1, 2]  # the new fit's first epoch follows the last
    assert history.column("in_box/multiplier_max")[4] == float(final["in_box"][0])


def test_second_fit_continues_constrained_state() -> None:
    module = Monotone(dual_optimizer="adam")
    lightning_trainer(max_epochs=1).fit(module, loader())
    after_first = {k: v.clone() for k, v in module.constraint_problem.multiplier_values().items()}
    lightning_trainer(max_epochs=1).fit(module, loader())  # a new Trainer: epochs restart
    per_epoch = N // BATCH
    history = module.constraint_history
    assert history.steps == list(range(2 * per_epoch))
    assert history.epochs == [0] * per_epoch + [1] * per_epoch  # ... but not the history's
    # the second fit starts from the first one's multipliers (a row holds the multipliers
    # before its dual step) and dual optimizer state
    assert history.column("in_box/multiplier_max")[per_epoch] == float(after_first["in_box"][0])
    assert float(after_first["in_box"][0]) > 0
    dual = module.constraint_trainer.dual_optimizer
    assert dual is not None
    assert [int(s["step"]) for s in dual.state.values()] == [2 * per_epoch] * 2


def test_resuming_a_second_fit_keeps_its_epoch_numbers(tmp_path: Path) -> None:
    """A checkpoint of a second fit (history epoch 1 = Lightning epoch 0) resumes with
    ``ckpt_path`` to the uninterrupted second fit, epochs shifted once, not twice."""
    per_epoch = N // BATCH
    full = Monotone()
    lightning_trainer(max_epochs=1).fit(full, loader())
    lightning_trainer(max_epochs=2).fit(full, loader())
    assert full.constraint_history.epochs == [0] * per_epoch + [1] * per_epoch + [2] * per_epoch

    half = Monotone()
    lightning_trainer(max_epochs=1).fit(half, loader())
    stopped = lightning_trainer(max_epochs=1)
    stopped.fit(half, loader())
    path = tmp_path / "second.ckpt"
    stopped.save_checkpoint(path)
    resumed = Monotone()
    lightning_trainer(max_epochs=2).fit(resumed, loader(), ckpt_path=path)
    assert_same_history(resumed.constraint_history, full.constraint_history)
    for p, q in zip(resumed.net.parameters(), full.net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_float64_precision_matches_cg_fit() -> None:
    steps = 4
    module = Monotone()
    trainer = lightning_trainer(max_steps=steps, precision="64-true")
    trainer.fit(module, loader())  # Lightning casts the float32 batches to float64
    net = make_net().double()
    problem = make_problem(net)
    x, y = data().tensors
    batches = DataLoader(TensorDataset(x.double(), y.double()), batch_size=BATCH)
    primal = torch.optim.Adam(net.parameters(), lr=2e-2)
    result = cg.fit(problem, batches, primal, dual_lr=0.5, epochs=2, steps=steps, progress=False)
    assert module.constraint_problem.multiplier_values()["in_box"].dtype == torch.float64
    assert_same_state(module, result)


class Clipped(Monotone):
    """Gradient clipping the manual-optimisation way: in on_before_optimizer_step."""

    def __init__(self) -> None:
        super().__init__()
        self.norms: list[tuple[float, float]] = []

    def _grad_norm(self) -> float:
        grads = [p.grad.norm() for p in self.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads)))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        before = self._grad_norm()
        self.clip_gradients(optimizer, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
        self.norms.append((before, self._grad_norm()))


def test_gradient_clipping_hook_applies() -> None:
    module = Clipped()
    lightning_trainer(max_steps=3).fit(module, loader())
    assert len(module.norms) == 3
    for before, after in module.norms:
        assert before > 1e-2  # clipping had something to do
        assert after == pytest.approx(1e-3, rel=1e-4)


# -- schedulers --------------------------------------------------------------------------------
class Scheduled(Monotone):
    def __init__(self, interval: str, **options: Any) -> None:
        super().__init__(**options)
        self.interval = interval

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


@pytest.mark.parametrize(("interval", "steps"), [("step", 4), ("epoch", 2 * N // BATCH)])
def test_schedulers_step_by_interval(interval: str, steps: int) -> None:
    module = Scheduled(interval)
    trainer = lightning_trainer(max_steps=steps)
    trainer.fit(module, loader())
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    expected = 0.1 * 0.5**steps if interval == "step" else 0.1 * 0.5**2
    assert lr == pytest.approx(expected, rel=1e-12)


# -- 4. errors ---------------------------------------------------------------------------------
class TwoOptimizers(Monotone):
    def configure_optimizers(self) -> Any:
        half = len(list(self.net.parameters())) // 2
        params = list(self.net.parameters())
        return [torch.optim.SGD(params[:half], lr=0.1), torch.optim.SGD(params[half:], lr=0.1)]


class Plateau(Monotone):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}


class WrongProblem(Monotone):
    def build_problem(self) -> Any:
        return self.net


class ForeignModel(Monotone):
    def build_problem(self) -> cg.DerivativeProblem:
        return make_problem(make_net())


class NoProblem(ConstrainedLightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class OwnFitStart(Monotone):
    def on_fit_start(self) -> None:  # forgot super().on_fit_start()
        pass


class Automatic(Monotone):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = True


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (TwoOptimizers(), r"configure_optimizers: must return one primal optimizer \(got 2\)"),
        (Plateau(), r"ReduceLROnPlateau needs a monitored metric.*step_schedulers=False"),
        (WrongProblem(), r"build_problem: must return a cg.DerivativeProblem \(got Sequential\)"),
        (ForeignModel(), r"build_problem: the problem's model .* is not a submodule"),
        (Automatic(), r"automatic_optimization must stay False \(got True\)"),
        (OwnFitStart(), r"constrained trainer was not built.*super\(\).on_fit_start\(\)"),
    ],
    ids=["two_optimizers", "plateau", "wrong_type", "foreign_model", "automatic", "no_super"],
)
def test_bad_setups_raise_clear_errors(module: ConstrainedLightningModule, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        lightning_trainer(max_steps=1).fit(module, loader())


def test_gradient_scaler_is_refused() -> None:
    from lightning.pytorch.plugins import MixedPrecision

    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(InputValidationError, match=r"precision with a gradient scaler is not"):
        lightning_trainer(max_steps=1, plugins=[scaler]).fit(Monotone(), loader())


def test_missing_build_problem() -> None:
    with pytest.raises(NotImplementedError, match=r"NoProblem.build_problem: not implemented"):
        lightning_trainer(max_steps=1).fit(NoProblem(), loader())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dual_lr": -1.0}, r"dual_lr must be a finite number >= 0 \(got -1.0\)"),
        ({"dual_lr": float("nan")}, r"dual_lr must be a finite number >= 0 \(got nan\)"),
        ({"update": "async"}, r"update must be 'simultaneous' or 'alternating' \(got 'async'\)"),
        ({"on_nonfinite": "ignore"}, r"on_nonfinite must be 'raise' or 'skip'"),
        ({"dual_optimizer": "rmsprop"}, r"unknown dual_optimizer 'rmsprop'\. Use 'sgd', 'adam'"),
        ({"log_fields": ["violation_p99"]}, r"unknown log_fields \['violation_p99'\]"),
        ({"log_fields": "violation_max"}, r"log_fields must be a list of field names"),
        ({"log_prefix": ""}, r"log_prefix must be a non-empty string"),
    ],
)
def test_bad_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        Monotone(**options)


def test_constraint_trainer_before_fit() -> None:
    with pytest.raises(InputValidationError, match=r"constraint_trainer: no fit has started"):
        _ = Monotone().constraint_trainer


def test_import_constrained_grad_does_not_import_lightning() -> None:
    import subprocess
    import sys

    code = (
        "import sys, constrained_grad, constrained_grad.integrations; "
        "print(any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Lightning's DDP strategy ------------------------------------------------------------------
@pytest.mark.slow
def test_lightning_ddp_two_processes_equal_single_process(tmp_path: Path) -> None:
    """2 CPU processes (gloo) under strategy="ddp": identical multipliers on both ranks after
    every step, and the result of one process stepping on the global batches."""
    import os
    import subprocess
    import sys

    steps = 5
    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(worker), str(tmp_path), str(steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["global_step"] == r1["global_step"] == steps
    assert len(r0["multipliers"]) == len(r1["multipliers"]) == steps
    for a, b in zip(r0["multipliers"], r1["multipliers"], strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # each rank saw its own shard (Lightning's DistributedSampler)
    assert not torch.equal(r0["seen"][0][1][0], r1["seen"][0][1][0])

    net = make_net()
    problem = make_problem(net)
    ref = cg.Trainer(problem, torch.optim.Adam(net.parameters(), lr=2e-2), dual_lr=0.5)
    per_step = []
    for (epoch, b0), (_, b1) in zip(r0["seen"], r1["seen"], strict=True):
        ref.step([torch.cat([b0[k], b1[k]]) for k in range(2)], epoch)  # the global batch
        per_step.append({k: v.clone() for k, v in problem.multiplier_values().items()})
    for ours, theirs in zip(r0["multipliers"], per_step, strict=True):
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    for p, q in zip(r0["params"], net.parameters(), strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
    history = cg.History.from_dict(r0["history"])
    np.testing.assert_allclose(history.column("loss"), ref.history.column("loss"), rtol=1e-5)
    assert max(history.column("in_box/multiplier_max")) > 0
    # the checkpoint (written by rank 0 only) carries the constrained state
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved[CHECKPOINT_KEY]["history"] == r0["history"]
