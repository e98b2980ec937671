"""Ctrl-C and SIGTERM: real signals at random moments of training are deferred to a step
boundary, the state of that boundary is saved, and resuming from it equals the run that
was never interrupted (parameters and multipliers ``torch.equal``).

The signals are real (``os.kill`` of this process from a timer thread, handled in the main
thread as a terminal's Ctrl-C would be), at uniformly random times over a run whose every
forward pass pauses 3 ms, so most land inside a step: between its random draws, between
the primal and the dual update, or inside a checkpoint write.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import resume_child
from test_reliability_resume import assert_same_run

import constrained_grad as cg
from constrained_grad.training import checkpoint

STEPS = 13
SLEEP = 0.003


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], float]:
    resume_child.run(None, steps=STEPS, every=None, forward_sleep=SLEEP)  # warm up
    t0 = time.perf_counter()
    want = resume_child.run(None, steps=STEPS, every=None, forward_sleep=SLEEP)
    return want, time.perf_counter() - t0


def _run_with_signal(ckpt: Path, delay: float, sig: int, every: int | None) -> str:
    """One run that receives ``sig`` after ``delay`` s; returns how it ended."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
    timer.start()
    try:
        try:
            resume_child.run(str(ckpt), steps=STEPS, every=every, forward_sleep=SLEEP)
            ended = "finished"
        finally:
            timer.join()
            time.sleep(0.01)  # a signal sent after fit returned is handled here
    except KeyboardInterrupt:
        ended = "KeyboardInterrupt"
    except SystemExit as exit_:
        assert exit_.code == 128 + signal.SIGTERM
        ended = "SystemExit"
    return ended


@pytest.mark.slow
def test_sigint_at_random_moments_saves_a_step_boundary_and_resumes_exactly(
    tmp_path: Path, reference: tuple[dict[str, Any], float]
) -> None:
    want, duration = reference
    rng = random.Random(0)
    handler = signal.getsignal(signal.SIGINT)
    interrupted_mid_run = 0
    for trial in range(24):
        ckpt = tmp_path / f"trial{trial}"
        every = None if trial % 2 else 3  # only the interrupt's save, or periodic ones too
        ended = _run_with_signal(ckpt, rng.uniform(0.0, duration), signal.SIGINT, every)
        assert signal.getsignal(signal.SIGINT) is handler  # fit restored the handler
        if (ckpt / "checkpoint.pt").exists():
            saved = checkpoint.load(ckpt / "checkpoint.pt")  # never a CheckpointError
            if ended == "KeyboardInterrupt" and saved["step"] < STEPS:
                interrupted_mid_run += 1
        resumed = resume_child.run(str(ckpt), steps=STEPS, every=every, forward_sleep=SLEEP)
        assert_same_run(resumed, want)
    assert interrupted_mid_run >= 15  # the signals did land inside the runs


def test_sigterm_saves_then_exits_and_resume_is_exact(
    tmp_path: Path, reference: tuple[dict[str, Any], float]
) -> None:
    want, duration = reference
    handler = signal.getsignal(signal.SIGTERM)
    ended = _run_with_signal(tmp_path, duration / 2, signal.SIGTERM, None)
    assert ended == "SystemExit"
    assert signal.getsignal(signal.SIGTERM) is handler
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert 0 < saved["step"] < STEPS
    assert_same_run(resume_child.run(str(tmp_path), steps=STEPS, every=None), want)


def test_second_ctrl_c_is_an_emergency_exit_that_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    """Two Ctrl-C inside one step: the second raises at once (no waiting for the step to
    end), nothing half-done is saved, and the checkpoint of the step before stays."""

    def twice(info: cg.StepInfo) -> None:
        if info.step == 4:  # during step 4's forward passes
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        resume_child.run(str(tmp_path), steps=STEPS, every=1, forward_sleep=0.2, callbacks=(twice,))
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
