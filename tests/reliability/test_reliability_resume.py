"""Crash safety: a training process killed with SIGKILL — between steps or in the middle of
a checkpoint write — resumes in a new process to exactly the run it would have been.

The child (``resume_child.py``, copied to ``tmp_path`` and run with the interpreter of this
test) trains a dropout MLP on a shuffled ``DataLoader`` with its own generator, numpy and
Python noise in the dataset, a ``Monotonic`` constraint at random ``InBox`` points and a
``vjp_sphere`` ``JacobianNormBound`` (random projections), checkpointing every few steps.
The oracle is the same run, uninterrupted, in this process: parameters and multipliers must
be bit-for-bit equal (``torch.equal``; CPU, one thread) and every history column except
``wall_time`` identical.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import resume_child
import torch

import constrained_grad as cg
from constrained_grad.errors import CheckpointError
from constrained_grad.training import checkpoint

STEPS = 13  # 5 batches per epoch: the run crosses two epoch boundaries
TIMEOUT = 240.0  # seconds for one child (a loaded 2-core machine imports torch slowly)
TEMP_GLOB = ".checkpoint.pt.*.tmp"


@functools.cache
def _reference(update: str = "simultaneous") -> dict[str, Any]:
    """The uninterrupted run, in-process (no checkpoints)."""
    return resume_child.run(None, steps=STEPS, every=None, update=update)


def _diff(a: Any, b: Any, path: str = "") -> str | None:
    """First difference between two nested containers (NaN equals NaN), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            d = _diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return None if torch.equal(a, b) else f"{path}: tensors differ"
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    if type(a) is not type(b) or a != b:
        return f"{path}: {a!r} != {b!r}"
    return None


def _without_wall_time(history: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in history.items() if k != "wall_time"}


def assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["steps"] == want["steps"]
    assert got["params"].keys() == want["params"].keys()
    for name, value in want["params"].items():
        assert torch.equal(got["params"][name], value), f"parameter {name} differs"
    assert got["multipliers"].keys() == want["multipliers"].keys()
    for name, value in want["multipliers"].items():
        assert got["multipliers"][name].dtype == value.dtype
        assert torch.equal(got["multipliers"][name], value), f"multiplier {name} differs"
    diff = _diff(_without_wall_time(got["history"]), _without_wall_time(want["history"]))
    assert diff is None, f"history differs at {diff}"


def assert_history_prefix(saved: dict[str, Any], want: dict[str, Any], steps: int) -> None:
    """The history in a checkpoint is the reference history's first ``steps`` rows."""
    cut = cg.History.from_dict(want).copy()
    cut.truncate(steps - 1)  # history steps count from 0
    diff = _diff(_without_wall_time(saved), _without_wall_time(cut.to_dict()))
    assert diff is None, f"checkpointed history differs at {diff}"


class Child:
    """``resume_child.py`` in a subprocess; output and log in ``tmp_path``."""

    def __init__(self, tmp_path: Path, tag: str, ckpt: Path, *args: str) -> None:
        script = tmp_path / "train_child.py"
        if not script.exists():
            shutil.copy(Path(resume_child.__file__), script)
        self.out = tmp_path / f"{tag}.pt"
        self.signal = Path(f"{self.out}.hang")
        self.log_path = tmp_path / f"{tag}.log"
        src = str(Path(cg.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    "--ckpt",
                    str(ckpt),
                    "--out",
                    str(self.out),
                    "--steps",
                    str(STEPS),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_for(self, condition: Callable[[], bool], what: str, poll: float = 0.002) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"child exited ({self.proc.returncode}) before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.log()}")
            time.sleep(poll)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def finish(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child timed out:\n{self.log()}")
        assert code == 0, f"child failed ({code}):\n{self.log()}"
        return torch.load(self.out, weights_only=True)


def _reached(path: Path, step: int) -> bool:
    return _progress(path) >= step


def _progress(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_sigkill_during_checkpoint_write_keeps_last_good_and_resume_is_exact(
    tmp_path: Path,
) -> None:
    """Killed after the 4th save (step 8) wrote its temp file but before the rename: the
    checkpoint is still step 6, loads, and the resumed run equals the uninterrupted one."""
    ckpt, go = tmp_path / "ckpt", tmp_path / "go"
    child = Child(tmp_path, "killed", ckpt, "--every", "2", "--hang-at-save", "4")
    # the resuming process starts now (imports overlap) and trains once told to
    resumer = Child(tmp_path, "resumed", ckpt, "--every", "2", "--wait-for", str(go))
    try:
        child.wait_for(child.signal.exists, "the 4th checkpoint write")
        temps = sorted(ckpt.glob(TEMP_GLOB))
        assert len(temps) == 1
        child.kill()
    finally:
        go.touch()  # never leave the resumer waiting
    # the temp file is the complete step-8 state that never replaced checkpoint.pt
    assert checkpoint.load(temps[0])["step"] == 8
    last = checkpoint.load(ckpt / "checkpoint.pt")
    assert last["step"] == 6 and (last["epoch"], last["batch_in_epoch"]) == (1, 1)
    want = _reference()
    assert_history_prefix(last["history"], want["history"], 6)

    resumed = resumer.finish()
    assert_same_run(resumed, want)
    assert not list(ckpt.glob(TEMP_GLOB))  # the stale temp file was cleared on resume
    final = checkpoint.load(ckpt / "checkpoint.pt")
    assert final["step"] == STEPS and len(final["history"]["step"]) == STEPS


@pytest.mark.slow
def test_sigkill_during_first_checkpoint_write_restarts_from_scratch(tmp_path: Path) -> None:
    """No good checkpoint yet: only a temp file is left, and the rerun starts afresh."""
    ckpt = tmp_path / "ckpt"
    child = Child(tmp_path, "killed", ckpt, "--every", "1", "--hang-at-save", "1")
    child.wait_for(child.signal.exists, "the first checkpoint write")
    child.kill()
    assert not (ckpt / "checkpoint.pt").exists()
    assert len(list(ckpt.glob(TEMP_GLOB))) == 1
    resumed = Child(tmp_path, "rerun", ckpt, "--every", "1").finish()
    assert_same_run(resumed, _reference())
    assert not list(ckpt.glob(TEMP_GLOB))


@pytest.mark.slow
@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_repeated_sigkill_between_steps_then_resume_is_exact(tmp_path: Path, update: str) -> None:
    """Two kills at arbitrary moments, most likely inside a step (every forward pass
    pauses), with checkpoints every 3 steps so each resume redoes up to three steps; then
    a run to the end."""
    ckpt, every = tmp_path / "ckpt", 3
    for round_, kill_at in enumerate((5, 10)):
        progress = tmp_path / f"progress{round_}"
        child = Child(
            tmp_path,
            f"killed{round_}",
            ckpt,
            "--every",
            str(every),
            "--update",
            update,
            "--progress",
            str(progress),
            "--forward-sleep",
            "0.02",
        )
        child.wait_for(functools.partial(_reached, progress, kill_at), f"step {kill_at}")
        child.kill()
        done = _progress(progress)
        last = checkpoint.load(ckpt / "checkpoint.pt")
        # checkpoints are saved before the step is reported: the last one is the newest
        # multiple of `every` reported, or the next one if the kill fell in between
        assert last["step"] % every == 0 and done - every < last["step"] <= done + 1
        assert_history_prefix(last["history"], _reference(update)["history"], last["step"])
    resumed = Child(tmp_path, "resumed", ckpt, "--every", str(every), "--update", update).finish()
    assert_same_run(resumed, _reference(update))


@pytest.mark.slow
def test_sigkill_at_random_moments_with_a_large_checkpoint(tmp_path: Path) -> None:
    """A 64 MB buffer makes each write long; the parent kills as soon as a temp file has
    its first bytes (a real race, no patching: typically a few KB of 64 MB are written).
    The checkpoint left must load and resume exactly; a partial temp file is unreadable
    and is cleared by the resumed run."""
    ckpt = tmp_path / "ckpt"
    child = Child(tmp_path, "killed", ckpt, "--every", "1", "--buffer-mb", "64")
    child.wait_for((ckpt / "checkpoint.pt").exists, "the first checkpoint", poll=0.01)
    child.wait_for(functools.partial(_writing, ckpt), "a checkpoint write", poll=0.0005)
    child.kill()
    last = checkpoint.load(ckpt / "checkpoint.pt")  # never a CheckpointError
    assert 1 <= last["step"] < STEPS
    assert last["model"]["ballast"].shape == (64 * 2**20 // 4,)
    assert_history_prefix(last["history"], _reference()["history"], last["step"])
    full = (ckpt / "checkpoint.pt").stat().st_size
    for temp in ckpt.glob(TEMP_GLOB):  # the write the kill interrupted, if not yet renamed
        if temp.stat().st_size < full:
            with pytest.raises(CheckpointError, match="not a readable checkpoint"):
                checkpoint.load(temp)
    resumed = Child(tmp_path, "resumed", ckpt, "--every", "4", "--buffer-mb", "64").finish()
    assert_same_run(resumed, _reference())
    assert not list(ckpt.glob(TEMP_GLOB))


def _writing(ckpt: Path) -> bool:
    """A checkpoint write has put its first bytes in a temp file."""
    for temp in ckpt.glob(TEMP_GLOB):
        try:
            if temp.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed meanwhile
            pass
    return False


def test_reference_run_is_deterministic_in_process(tmp_path: Path) -> None:
    """Sanity of the oracle: a second in-process run, checkpointing every step, is
    bit-identical, and the multipliers moved (so comparing them means something)."""
    want = _reference()
    again = resume_child.run(str(tmp_path), steps=STEPS, every=1)
    assert_same_run(again, want)
    assert all(float(m.max()) > 0 for m in want["multipliers"].values())


def test_resume_of_a_continued_history_is_exact_and_shifts_epochs_once(tmp_path: Path) -> None:
    """``fit(epochs=2, history=...)`` continuing a 3-step fit (cut in epoch 0) trains epochs
    1 and 2; interrupted mid-epoch and called again, it resumes to the uninterrupted run,
    epochs and epoch budget included (the checkpoint's history already holds this call's
    epochs: they are not shifted a second time)."""
    args: dict[str, Any] = {"steps": 100, "epochs": 2, "first_steps": 3}  # epochs end the run
    want = resume_child.run(None, every=None, **args)
    assert want["steps"] == 13
    assert want["history"]["epoch"] == [0] * 3 + [1] * 5 + [2] * 5

    def interrupt(info: cg.StepInfo) -> None:
        if info.step == 9:  # step 8 done: batch 1 of epoch 2
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        resume_child.run(str(ckpt), every=4, callbacks=(interrupt,), **args)
    last = checkpoint.load(ckpt / "checkpoint.pt")
    assert last["step"] == 9 and (last["epoch"], last["batch_in_epoch"]) == (2, 1)
    assert_history_prefix(last["history"], want["history"], 9)
    resumed = resume_child.run(str(ckpt), every=4, **args)
    assert_same_run(resumed, want)
