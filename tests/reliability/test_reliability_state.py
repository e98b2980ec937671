"""Saved state that is hostile, stale, shared or unwritable: every case ends in a named
error within 5 s (never a hang, a raw torch/json/csv error, or a silently different run),
and nothing trained is lost.

Hostile checkpoints are built from a good one: bytes cut or flipped, FIFOs and folders in
its place, and fields replaced by wrong types *with a valid checksum* (so the field checks,
not the checksum, must catch them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.cli import main as cli_main
from constrained_grad.errors import CheckpointError, HistoryError, InputValidationError
from constrained_grad.training import checkpoint

D, M, N = 3, 2, 16


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, D, generator=g) * 2 - 1, torch.rand(N, M, generator=g)


def _problem(constraints: list[Any] | None = None) -> cg.DerivativeProblem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, M))
    if constraints is None:
        constraints = [cg.Monotonic(inputs=[0], name="mono")]
    return cg.DerivativeProblem(model, nn.functional.mse_loss, constraints, seed=3)


def _loader(batch_size: int = 8, n: int = N) -> DataLoader:
    x, y = _data()
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size)


def _fit(problem: cg.DerivativeProblem, **kw: Any) -> cg.FitResult:
    kw.setdefault("steps", 4)
    kw.setdefault("epochs", 5)
    loader = kw.pop("loader", None) or _loader()
    opt = torch.optim.SGD(problem.model.parameters(), lr=0.1)
    return cg.fit(problem, loader, opt, dual_lr=0.5, progress=False, **kw)


def _within(seconds: float, fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in a thread; fail if it has not ended after ``seconds``."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as err:
            box[0] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    return box[0]


# ----------------------------------------------------------------- hostile checkpoints
@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    _fit(_problem(), checkpoint_dir=folder, steps=3)
    return folder / "checkpoint.pt"


def _rewrite(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` with a *valid* checksum (as a careful attacker would)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    path.write_bytes(checkpoint.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
    with path.open("ab") as fh:
        fh.write(payload)


def _field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state[key] = value

    return edit


def _rng_edit(state: dict[str, Any]) -> None:
    state["rng"]["python"]["internal"] = [1, 2, 3]


def _torch_rng_edit(state: dict[str, Any]) -> None:
    state["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)


FIELD_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "step_is_text": (_field("step", "x"), "'step'"),
    "step_negative": (_field("step", -3), "'step'"),
    "epoch_is_float": (_field("epoch", 1.5), "'epoch'"),
    "batch_is_none": (_field("batch_in_epoch", None), "'batch_in_epoch'"),
    "model_is_list": (_field("model", [1, 2]), "'model'"),
    "optimizer_is_int": (_field("primal_optimizer", 3), "'primal_optimizer'"),
    "history_is_text": (_field("history", "rows"), "'history'"),
    "history_rows_wrong": (_field("history", {"format": "x"}), "History"),
    "generator_short": (
        _field("problem_generator", torch.zeros(5, dtype=torch.uint8)),
        "'problem_generator'",
    ),
    "python_rng_short": (_rng_edit, "'rng'"),
    "torch_rng_short": (_torch_rng_edit, "'rng.torch'"),
    "epoch_rng_text": (_field("epoch_rng", "abc"), "'epoch_rng'"),
    "constraints_list": (_field("constraints", [1]), "'constraints'"),
    "point_sources_list": (_field("point_sources", [1]), "'point_sources'"),
    "dual_names_ints": (_field("dual_optimizer", {"names": [1], "state": {}}), "'dual_optimizer'"),
}


@pytest.mark.parametrize("case", list(FIELD_CASES), ids=list(FIELD_CASES))
def test_tampered_field_with_a_valid_checksum_names_the_field(
    case: str, good: Path, tmp_path: Path
) -> None:
    edit, fragment = FIELD_CASES[case]
    state = checkpoint.load(good)
    edit(state)
    _rewrite(state, tmp_path / "checkpoint.pt")
    err = _within(5, lambda: _fit(_problem(), checkpoint_dir=tmp_path, steps=6))
    assert isinstance(err, CheckpointError), repr(err)
    assert fragment in str(err)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


BYTE_CASES: dict[str, tuple[Callable[[bytes], bytes | None], str]] = {
    "bit_flip_in_weights": (lambda d: _flip(d, len(d) - 2000), "does not match"),
    "bit_flip_in_checksum": (lambda d: _flip(d, len(checkpoint.MAGIC) + 3), "does not match"),
    "truncated_half": (lambda d: d[: len(d) // 2], "truncated or corrupted"),
    "truncated_header": (lambda d: d[:40], "checksum line is incomplete"),
    "empty": (lambda d: b"", "empty file"),
    "other_bytes": (lambda d: b"\x00\xff" * 50, "not a constrained_grad checkpoint"),
    "json_text": (lambda d: b'{"step": 3}', "not a constrained_grad checkpoint"),
}


@pytest.mark.parametrize("case", list(BYTE_CASES), ids=list(BYTE_CASES))
def test_damaged_checkpoint_bytes_are_named(case: str, good: Path, tmp_path: Path) -> None:
    make, fragment = BYTE_CASES[case]
    (tmp_path / "checkpoint.pt").write_bytes(make(good.read_bytes()) or b"")
    err = _within(5, lambda: _fit(_problem(), checkpoint_dir=tmp_path, steps=6))
    assert isinstance(err, CheckpointError), repr(err)
    assert fragment in str(err)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("resume", [True, False])
def test_fifo_or_folder_named_checkpoint_is_refused_before_training(
    kind: str, resume: bool, tmp_path: Path
) -> None:
    target = tmp_path / "checkpoint.pt"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    calls: list[int] = []
    err = _within(
        5,
        lambda: _fit(_problem(), checkpoint_dir=tmp_path, resume=resume, callbacks=[calls.append]),
    )
    assert isinstance(err, CheckpointError), repr(err)
    assert ("a directory" if kind == "directory" else "FIFO") in str(err)
    assert calls == []  # refused before any step
    err = _within(5, lambda: checkpoint.load(target))
    assert isinstance(err, CheckpointError)


# ----------------------------------------------------------------- declarations (item 8)
@pytest.mark.parametrize(
    ("other", "field"),
    [
        (cg.Monotonic(inputs=[0], direction="decreasing", name="mono"), "direction"),
        (cg.Monotonic(inputs=[1], name="mono"), "inputs"),
        (cg.Monotonic(inputs=[0], margin=0.1, name="mono"), "margin"),
        (cg.Monotonic(inputs=[0], tolerance=0.1, name="mono"), "tolerance"),
        (cg.Monotonic(inputs=[0], where=cg.InBox(([-1.0] * D, [1.0] * D)), name="mono"), "where"),
    ],
)
def test_resume_into_another_declaration_with_the_same_name_is_refused(
    other: Any, field: str, tmp_path: Path
) -> None:
    _fit(_problem(), checkpoint_dir=tmp_path, steps=3)
    with pytest.raises(CheckpointError, match=rf"'mono'\.{field}: checkpoint"):
        _fit(_problem([other]), checkpoint_dir=tmp_path, steps=6)


def test_resume_with_a_negative_index_for_the_same_input_is_accepted(tmp_path: Path) -> None:
    _fit(_problem([cg.Monotonic(inputs=[D - 1], name="mono")]), checkpoint_dir=tmp_path, steps=3)
    result = _fit(_problem([cg.Monotonic(inputs=[-1], name="mono")]), checkpoint_dir=tmp_path)
    assert result.steps == 4


# ----------------------------------------------------------------- changed loader (item 14)
@pytest.mark.parametrize(
    ("loader", "what"),
    [(_loader(batch_size=4), "batch_size 8 -> 4"), (_loader(n=12), "dataset_length 16 -> 12")],
)
def test_resume_with_a_changed_loader_says_what_changed(
    loader: DataLoader, what: str, tmp_path: Path
) -> None:
    _fit(_problem(), checkpoint_dir=tmp_path, steps=3)  # stops mid-epoch 1
    with pytest.raises(CheckpointError, match=what):
        _fit(_problem(), checkpoint_dir=tmp_path, steps=6, loader=loader)


# ----------------------------------------------------------------- one-shot loaders (item 16)
def test_generator_loader_with_several_epochs_is_refused_up_front() -> None:
    calls: list[int] = []
    batches = (b for b in _loader())
    with pytest.raises(InputValidationError, match="one-shot iterator"):
        _fit(_problem(), loader=batches, epochs=2, steps=None, callbacks=[calls.append])
    assert calls == []
    result = _fit(_problem(), loader=iter(_loader()), epochs=1, steps=None)
    assert result.steps == 2  # one epoch of a generator is fine


# ----------------------------------------------------------------- Counterexamples (item 15)
def _cex_run(folder: Path | None, stop_at: int | None = None) -> dict[str, Any]:
    box = cg.Box([-1.0] * D, [1.0] * D)
    cex = cg.Counterexamples(box, capacity=16, every=2, starts=8, steps=5, seed=1)
    problem = _problem([cg.Monotonic(inputs=[0], where=cex, reduction="pointwise", name="mono")])

    def stop(info: cg.StepInfo) -> None:
        if info.step == stop_at:
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        _fit(problem, checkpoint_dir=folder, steps=8, epochs=4, callbacks=[stop])
    return {
        "params": [p.detach().clone() for p in problem.model.parameters()],
        "mult": problem.multiplier_values()["mono"].clone(),
        "rounds": cex.rounds,
        "buffer": cex.buffer.clone(),
    }


def test_counterexample_buffer_is_saved_and_resume_is_exact(tmp_path: Path) -> None:
    want = _cex_run(None)
    _cex_run(tmp_path, stop_at=3)
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["point_sources"]["mono"]["rounds"] == 2
    got = _cex_run(tmp_path)
    assert got["rounds"] == want["rounds"] == 4
    assert torch.equal(got["buffer"], want["buffer"])
    assert torch.equal(got["mult"], want["mult"])
    assert all(torch.equal(a, b) for a, b in zip(got["params"], want["params"], strict=True))


# ----------------------------------------------------------------- lock (item 12)
def test_second_writer_of_a_checkpoint_folder_is_refused(tmp_path: Path) -> None:
    busy = pytest.raises(CheckpointError, match=f"in use by process {os.getpid()}")
    with checkpoint.folder_lock(tmp_path), busy:  # a run in progress holds the folder
        _fit(_problem(), checkpoint_dir=tmp_path)
    assert _fit(_problem(), checkpoint_dir=tmp_path).steps == 4  # free again afterwards


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # a run that died
        os._exit(0)
    os.waitpid(pid, 0)
    (tmp_path / checkpoint.LOCK_NAME).write_text(f"{pid}\n")
    assert _fit(_problem(), checkpoint_dir=tmp_path).steps == 4
    assert (tmp_path / checkpoint.LOCK_NAME).read_text().strip() == str(os.getpid())


# ----------------------------------------------------------------- unwritable/full (item 11)
def _enospc(*args: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_found_before_training(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(os, "fsync", _enospc)
    calls: list[int] = []
    with pytest.raises(CheckpointError, match=r"disk is full \(ENOSPC"):
        _fit(_problem(), checkpoint_dir=tmp_path / "run", callbacks=[calls.append])
    assert calls == []


def test_disk_full_while_training_names_it_and_hands_the_result_over(
    tmp_path: Path, monkeypatch: Any
) -> None:
    def fill_disk(info: cg.StepInfo) -> None:
        if info.step == 2:
            monkeypatch.setattr(os, "fsync", _enospc)

    problem = _problem()
    with pytest.raises(CheckpointError, match=r"disk is full \(ENOSPC.*\.result") as info:
        _fit(problem, checkpoint_dir=tmp_path, checkpoint_every=1, callbacks=[fill_disk])
    result = info.value.result  # type: ignore[attr-defined]
    assert isinstance(result, cg.FitResult) and result.model is problem.model
    assert result.steps == 3 and len(result.history) == 3
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 2  # the last good one


# ----------------------------------------------------------------- hostile histories (item 17)
def _deep_json(p: Path) -> None:
    p.write_text("[" * 100_000 + "]" * 100_000)


def _huge_int_json(p: Path) -> None:
    p.write_text(
        '{"format": "constrained_grad.History", "version": 1, "step": [' + "9" * 5000 + "]}"
    )


def _latin1(p: Path) -> None:
    p.write_bytes(b'{"format": "caf\xe9"}')


def _huge_csv_field(p: Path) -> None:
    p.write_text("step,epoch,wall_time,loss\n" + "1" * 200_000 + ",0,0,0\n")


def _huge_int_csv(p: Path) -> None:
    cg.History(["c"]).save_csv(p)
    cols = len(p.read_text().splitlines()[0].split(","))
    with p.open("a") as fh:
        fh.write("9" * 5000 + "," + ",".join(["0"] * (cols - 1)) + "\n")


def _nul_csv(p: Path) -> None:
    p.write_bytes(b"step,epoch\x00,wall_time\n")


def _dir(p: Path) -> None:
    p.mkdir()


HISTORY_CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "deep_json": ("json", _deep_json, "nested too deeply"),
    "huge_int_json": ("json", _huge_int_json, "not valid JSON"),
    "undecodable_json": ("json", _latin1, "not UTF-8"),
    "truncated_json": ("json", lambda p: p.write_text('{"format": "constrained_'), "not valid"),
    "json_directory": ("json", _dir, "a directory"),
    "json_fifo": ("json", os.mkfifo, "FIFO"),
    "huge_csv_field": ("csv", _huge_csv_field, "not a readable CSV"),
    "huge_int_csv": ("csv", _huge_int_csv, "must be an integer"),
    "undecodable_csv": ("csv", _latin1, "not UTF-8"),
    "nul_csv": ("csv", _nul_csv, "History.save_csv"),
    "csv_directory": ("csv", _dir, "a directory"),
    "csv_fifo": ("csv", os.mkfifo, "FIFO"),
}


@pytest.mark.parametrize("case", list(HISTORY_CASES), ids=list(HISTORY_CASES))
def test_hostile_history_file_raises_one_history_error(case: str, tmp_path: Path) -> None:
    suffix, make, fragment = HISTORY_CASES[case]
    path = tmp_path / f"history.{suffix}"
    make(path)
    load = cg.History.load_json if suffix == "json" else cg.History.load_csv
    err = _within(5, lambda: load(path))
    assert isinstance(err, HistoryError), repr(err)
    assert fragment in str(err) and len(str(err)) < 400


@pytest.mark.parametrize("case", ["json_directory", "json_fifo", "deep_json", "huge_csv_field"])
def test_diagnose_cli_on_a_hostile_file_exits_2_with_one_line(
    case: str, tmp_path: Path, capsys: Any
) -> None:
    suffix, make, fragment = HISTORY_CASES[case]
    path = tmp_path / f"history.{suffix}"
    make(path)
    box: list[int] = []
    assert _within(5, lambda: box.append(cli_main(["diagnose", str(path)]))) is None
    err = capsys.readouterr().err
    assert box == [2] and fragment in err and "no such file" not in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- demo CLI (item 18)
@pytest.mark.parametrize("name", ["history.json", "model.pt", "report.md"])
def test_demo_refuses_a_folder_where_it_writes_a_file(
    name: str, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / name).mkdir()
    assert cli_main(["demo", "--steps", "1", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and "a folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "history.csv").exists()  # nothing trained


@pytest.mark.parametrize("seed", ["1" * 30, "-1", str(2**32)])
def test_demo_refuses_a_seed_out_of_range(seed: str, tmp_path: Path, capsys: Any) -> None:
    code = cli_main(["demo", "--steps", "1", "--seed", seed, "--out", str(tmp_path)])
    assert code == 2 and "--seed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_demo_refuses_the_meta_device(tmp_path: Path, capsys: Any) -> None:
    code = cli_main(["demo", "--steps", "1", "--device", "meta", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "meta" in err and len(err.splitlines()) == 1
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
