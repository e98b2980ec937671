"""TensorBoard / CSV loggers: what they write equals the history; resume; rank 0 only."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.history import loggers, plots, record
from constrained_grad.history.loggers import CSVLogger, TensorBoardLogger
from constrained_grad.history.record import STATS, History

needs_tb = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard is not installed (pip install tensorboard; the dev extras have it)",
)


# ----------------------------------------------------------------------------- helpers
def make_run(seed: int = 0):
    """Tiny MLP, y = x0 - x1^2 (not monotone in x1), increasing in x1 asked for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 2, generator=g) * 2 - 1
    y = x[:, :1] - x[:, 1:] ** 2
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    mono = cg.Monotonic(inputs=[1], direction="increasing", name="mono")
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [mono])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    return problem, opt, loader


def val_metric(model: nn.Module) -> dict[str, float]:
    return {"val": float(sum(p.detach().abs().sum() for p in model.parameters()))}


def fit(callbacks, *, steps=12, seed=0, **kwargs):
    problem, opt, loader = make_run(seed)
    return cg.fit(
        problem,
        loader,
        opt,
        epochs=10,
        steps=steps,
        dual_lr=0.5,
        callbacks=callbacks,
        progress=False,
        **kwargs,
    )


def read_tb(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def purge_markers(log_dir: Path) -> list[tuple[str, int]]:
    """(event file, step) of every SessionLog START in the folder, files in reading order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    out = []
    for f in sorted(log_dir.iterdir()):
        for e in EventFileLoader(str(f)).Load():
            if e.HasField("session_log") and e.session_log.status == SessionLog.START:
                out.append((f.name, e.step))
    return out


def f32(v: float) -> float:
    """What TensorBoard stores: the float32 nearest to v."""
    return float(np.float32(v))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_tb_equals_history(tb, h: History, *, every: int = 1, prefix: str = "cg/") -> None:
    """Every scalar equals the history value (as float32) at the history step; nothing else."""
    rows = [i for i, s in enumerate(h.steps) if s % every == 0]
    steps = [h.steps[i] for i in rows]
    expected: dict[str, list[float]] = {f"{prefix}epoch": [float(h.epochs[i]) for i in rows]}
    for c in h.columns:
        col = h.column(c)
        expected[f"{prefix}{c}"] = [col[i] for i in rows]
    for name in h.constraint_names:
        vals = h.multiplier_values(name)
        for k in range(max(len(v) for v in vals)):
            expected[f"{prefix}{name}/multiplier[{k}]"] = [vals[i][k] for i in rows]
    metrics = sorted({m for e in h.evals for m in e.metrics})
    for m in metrics:
        es, ev = h.eval_series(m)
        assert tb[f"{prefix}eval/{m}"] == [(s, f32(v)) for s, v in zip(es, ev, strict=True)]
    ours = {t for t in tb if t.startswith(prefix)}
    assert ours == set(expected) | {f"{prefix}eval/{m}" for m in metrics}
    for tag, values in expected.items():
        assert [s for s, _ in tb[tag]] == steps, tag
        got = [v for _, v in tb[tag]]
        assert all(same(g, f32(v)) for g, v in zip(got, values, strict=True)), tag


def csv_text(h: History, tmp_path: Path) -> str:
    ref = tmp_path / "reference.csv"
    h.save_csv(ref)
    return ref.read_text(encoding="utf-8")


def hand_history(names=("a",), n: int = 6, start: int = 0, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    h = History(list(names))
    for s in range(start, start + n):
        h.log_step(s, s // 4, 0.1 * s, rng.normal(size=len(h.columns)).tolist())
    return h


# -------------------------------------------------------------------- mirror the history
@needs_tb
def test_fit_with_both_loggers_writes_exactly_the_history(tmp_path):
    tb_dir, path = tmp_path / "tb", tmp_path / "h.csv"
    with TensorBoardLogger(tb_dir) as tb, CSVLogger(path) as csv_log:
        result = fit([tb, csv_log], steps=12, eval_fn=val_metric, eval_every=4)
    h = result.history
    assert result.steps == 12 and result.stopped == "budget"  # loggers never stop training
    assert len(h) == 12 and h.multiplier_values("mono")[0]  # one multiplier value per step
    assert max(h.column("mono/violation_max")) > 0  # the constraint is active
    # the final evaluation is logged after the last callback: close() writes it
    assert [e.step for e in h.evals] == [4, 8, 12, 12]
    assert_tb_equals_history(read_tb(tb_dir), h)
    assert path.read_text(encoding="utf-8") == csv_text(h, tmp_path)
    back = History.load_csv(path)
    assert back.steps == h.steps and back.to_columns() == h.to_columns()
    assert back.meta == h.meta  # for diagnose
    assert h.meta == {
        "constraint_kinds": {"mono": "inequality"},
        "constraint_reductions": {"mono": "mean_hinge"},
    }


@needs_tb
def test_every_and_prefix(tmp_path):
    h = hand_history(("a", "b"), n=10)
    part = History(h.constraint_names)  # a custom loop: one history, growing step by step
    with TensorBoardLogger(tmp_path / "tb", every=3, prefix="run1") as tb:
        log = CSVLogger(tmp_path / "new" / "h.csv", every=3)  # the folder is created
        for k in range(1, len(h) + 1):
            grow(part, h, k)
            tb(part)
            log(part)
        log.close()
    assert_tb_equals_history(read_tb(tmp_path / "tb"), h, every=3, prefix="run1/")
    back = History.load_csv(tmp_path / "new" / "h.csv")
    assert back.steps == [0, 3, 6, 9]
    cols = h.to_columns()
    assert back.to_columns() == {c: [v[i] for i in (0, 3, 6, 9)] for c, v in cols.items()}


def grow(target: History, full: History, k: int) -> History:
    """Append the rows of ``full`` up to ``k`` rows to ``target`` (the same object)."""
    cols = full.to_columns()
    for i in range(len(target), k):
        target.log_step(
            full.steps[i], full.epochs[i], full.wall_times[i], [cols[c][i] for c in full.columns]
        )
    return target


# --------------------------------------------------------------------------------- resume
def _next_second() -> None:
    """TensorBoard orders event files by name: integer seconds, then a per-process counter.
    Start the resumed run's file in a later second, as a real (new-process) resume would."""
    t = int(time.time())
    while int(time.time()) == t:
        time.sleep(0.02)


class Crash(Exception):
    pass


@needs_tb
@pytest.mark.parametrize("kind", ["crash_after_logging", "interrupt_before_logging"])
def test_interrupted_and_resumed_run_appends_without_duplicates(tmp_path, kind):
    """crash: the files hold steps 0..7 but the checkpoint is at 5 steps, so steps 5..7 are
    redone and must replace the stale records. interrupt: fit checkpoints after step 7 but
    the loggers never saw it, so the resumed run must catch row 7 up."""
    ckpt, tb_dir, path = tmp_path / "ckpt", tmp_path / "tb", tmp_path / "h.csv"

    def stop(info):
        if info.step == 8:
            raise Crash() if kind == "crash_after_logging" else KeyboardInterrupt()

    tb, csv_log = TensorBoardLogger(tb_dir), CSVLogger(path)
    cbs = [tb, csv_log, stop] if kind == "crash_after_logging" else [stop, tb, csv_log]
    with pytest.raises(Crash if kind == "crash_after_logging" else KeyboardInterrupt):
        fit(cbs, checkpoint_dir=ckpt, checkpoint_every=5)
    tb.close()  # what the process's death would leave: flushed files, no final writes
    csv_log.close()
    first = History.load_csv(path)
    assert first.steps == (list(range(8)) if kind == "crash_after_logging" else list(range(7)))

    _next_second()
    with TensorBoardLogger(tb_dir) as tb, CSVLogger(path) as csv_log:
        result = fit([tb, csv_log], checkpoint_dir=ckpt, checkpoint_every=5)
    h = result.history
    assert h.steps == list(range(12))
    kept = 5 if kind == "crash_after_logging" else 7  # restored from the checkpoint
    assert h.wall_times[:kept] == first.wall_times[:kept]
    if kind == "crash_after_logging":  # redone steps: the stale rows had other wall times
        assert h.wall_times[5:8] != first.wall_times[5:8]
    assert path.read_text(encoding="utf-8") == csv_text(h, tmp_path)
    assert_tb_equals_history(read_tb(tb_dir), h)
    files = sorted(f.name for f in tb_dir.iterdir())
    assert len(files) == 2 and all(f.endswith(".cg") for f in files)
    assert purge_markers(tb_dir) == [(files[1], 0)]  # only the resumed run's file has one


@needs_tb
def test_shared_fresh_folder_keeps_other_writers_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "tb") as own:  # the user's own scalars, written first
        for s in range(4):
            own.add_scalar("user/lr", 0.1 / (s + 1), s)
    with TensorBoardLogger(tmp_path / "tb") as tb:
        result = fit([tb], steps=4)
    got = read_tb(tmp_path / "tb")
    assert got["user/lr"] == [(s, f32(0.1 / (s + 1))) for s in range(4)]
    assert_tb_equals_history(got, result.history)
    assert purge_markers(tmp_path / "tb") == []  # nothing of ours to replace: no marker


@needs_tb
def test_new_run_in_the_same_files_replaces_the_old_one(tmp_path):
    old, new = hand_history(n=9, seed=1), hand_history(n=4, seed=2)
    for h in (old, new):
        if h is new:
            _next_second()
        with TensorBoardLogger(tmp_path / "tb") as tb, CSVLogger(tmp_path / "h.csv") as log:
            for k in range(1, len(h) + 1):
                part = History(h.constraint_names)
                grow(part, h, k)
                tb(part)  # a new History object each call counts as a restart
                log(part)
    assert (tmp_path / "h.csv").read_text(encoding="utf-8") == csv_text(new, tmp_path)
    assert_tb_equals_history(read_tb(tmp_path / "tb"), new)


def test_continuing_a_loaded_history_keeps_the_file(tmp_path):
    full = hand_history(n=8)
    path = tmp_path / "h.csv"
    head = History(full.constraint_names)
    grow(head, full, 5)
    head.save_csv(path)
    cont = History.load_csv(path)  # e.g. fit(history=History.load_json(...))
    log = CSVLogger(path)
    for k in (6, 7, 8):
        grow(cont, full, k)
        log(cont)
    log.close()
    assert path.read_text(encoding="utf-8") == csv_text(full, tmp_path)


def test_meta_line_is_written_and_added_to_a_file_without_one(tmp_path):
    full = hand_history(n=8)
    full.meta.update(constraint_kinds={"a": "equality"}, seed=3)
    path = tmp_path / "h.csv"
    part = History(full.constraint_names, full.meta)
    with CSVLogger(path) as log:
        for k in range(1, 6):
            log(grow(part, full, k))
    assert path.read_text(encoding="utf-8").startswith('# {"format": "constrained_grad.History"')
    assert History.load_csv(path).meta == full.meta
    # a file an older version wrote has no meta line: continuing it writes the history's
    old = History(full.constraint_names)
    grow(old, full, 5)
    old.save_csv(path)
    assert not path.read_text(encoding="utf-8").startswith("#")
    cont = History.load_csv(path, meta=full.meta)
    with CSVLogger(path) as log:
        for k in (6, 7, 8):
            log(grow(cont, full, k))
    assert path.read_text(encoding="utf-8") == csv_text(full, tmp_path)
    assert cg.diagnose(History.load_csv(path)) == cg.diagnose(full)


def test_half_written_last_line_is_dropped_and_the_gap_caught_up(tmp_path):
    h = hand_history(n=7)
    path = tmp_path / "h.csv"
    head = History(h.constraint_names)
    grow(head, h, 4)
    head.save_csv(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("4,1,0.4,0.12")  # killed while writing step 4
    with CSVLogger(path) as log:
        log(h)  # the history already holds steps 0..6
    assert path.read_text(encoding="utf-8") == csv_text(h, tmp_path)


def test_more_multiplier_values_widen_the_header(tmp_path):
    h = History(["a", "b"])
    path = tmp_path / "h.csv"
    log = CSVLogger(path)
    rng = np.random.default_rng(3)
    for s, mults in enumerate([{"b": [0.5]}, None, {"a": [1.0, 2.0], "b": [0.25, 4.0, 8.0]}]):
        h.log_step(s, 0, 0.1 * s, rng.normal(size=len(h.columns)).tolist(), mults)
        log(h)
    log.close()
    assert path.read_text(encoding="utf-8") == csv_text(h, tmp_path)
    assert History.load_csv(path).multiplier_values("b") == [[0.5], [], [0.25, 4.0, 8.0]]


def test_csv_of_other_constraints_is_refused(tmp_path):
    path = tmp_path / "h.csv"
    hand_history(("a",), n=3).save_csv(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"CSVLogger: .*different header.*new path"):
        CSVLogger(path)(hand_history(("b",), n=3))
    path.write_text("not,a,history\n1,2,3\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="different header"):
        CSVLogger(path)(hand_history(("a",), n=3))
    hand_history(("a",), n=3).save_csv(path)
    assert path.read_bytes() == before  # refused files are left alone


# --------------------------------------------------------------------------- bad inputs
@needs_tb
@pytest.mark.parametrize("every", [0, -1, 1.5, True, None])
def test_bad_every(tmp_path, every):
    with pytest.raises(InputValidationError, match="every must be a positive int"):
        CSVLogger(tmp_path / "h.csv", every=every)
    with pytest.raises(InputValidationError, match="every must be a positive int"):
        TensorBoardLogger(tmp_path / "tb", every=every)


@needs_tb
def test_called_with_something_else(tmp_path):
    for log in (CSVLogger(tmp_path / "h.csv"), TensorBoardLogger(tmp_path / "tb")):
        with pytest.raises(InputValidationError, match=r"StepInfo \(with .history\) or a History"):
            log({"loss": 1.0})
    assert list(tmp_path.iterdir()) == []


@needs_tb
def test_empty_history_writes_nothing(tmp_path):
    CSVLogger(tmp_path / "h.csv")(History(["a"]))
    TensorBoardLogger(tmp_path / "tb")(History(["a"]))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ optional dependency
def test_missing_tensorboard_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(
        ImportError, match=r"TensorBoardLogger: .*How to fix: pip install tensorboard"
    ):
        TensorBoardLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_package_below_torch(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard") as err:
        TensorBoardLogger(tmp_path / "tb")
    assert isinstance(err.value.__cause__, ImportError)
    CSVLogger(tmp_path / "h.csv")(hand_history(n=2))  # CSV needs nothing optional


@needs_tb
def test_tensorboard_is_imported_only_when_asked_for():
    code = (
        "import sys, constrained_grad, constrained_grad.history.loggers\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'tensorboard' "
        "or m.startswith('torch.utils.tensorboard')]\n"
        "assert not bad, bad\n"
        "constrained_grad.history.loggers.TensorBoardLogger('unused')\n"
        "assert 'torch.utils.tensorboard' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------ rank 0 only
@needs_tb
@pytest.mark.parametrize("main", [False, True])
def test_only_the_main_process_writes(tmp_path, monkeypatch, main):
    for module in (loggers, record, plots):
        monkeypatch.setattr(module, "is_main_process", lambda: main)
    out = tmp_path / "out"
    out.mkdir()
    with TensorBoardLogger(out / "tb") as tb, CSVLogger(out / "logs" / "h.csv") as log:
        result = fit([tb, log], steps=3)
    h = result.history
    h.save_json(out / "h.json")
    h.save_csv(out / "h2.csv")
    fig = cg.plot_history(h, path=out / "history.png")
    model = result.problem.model
    fig2 = plots.plot_partial_dependence(model, torch.rand(8, 2), 1, grid=5, path=out / "pd.svg")
    assert isinstance(fig, Figure) and isinstance(fig2, Figure)  # figures are still returned
    written = sorted(p.name for p in out.iterdir())
    if main:
        assert written == ["h.json", "h2.csv", "history.png", "logs", "pd.svg", "tb"]
        assert History.load_csv(out / "logs" / "h.csv").to_columns() == h.to_columns()
        assert History.load_json(out / "h.json").to_columns() == h.to_columns()
    else:
        assert written == []


@needs_tb
def test_tags_cover_every_statistic(tmp_path):
    h = hand_history(("mono",), n=2)
    with TensorBoardLogger(tmp_path / "tb") as tb:
        tb(h)
    tags = set(read_tb(tmp_path / "tb"))
    assert tags == {"cg/epoch", "cg/loss", "cg/lagrangian"} | {f"cg/mono/{s}" for s in STATS}
