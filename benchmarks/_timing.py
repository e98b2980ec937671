"""Shared helpers of the benchmark scripts: interleaved timing, machine facts, memory, output.

Timing protocol (:func:`interleaved`): every method is warmed up, then timed in *rounds*; in
each round every method runs one block of consecutive steps, in an order that rotates from
round to round (round-robin), so a slow phase of the machine hits all methods alike. A
block's time divided by its number of steps is one sample; the reported figure is the
median over the rounds.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Step = Callable[[], Any]

OMP_POLICIES = ("passive", "active", "unset")


def preconfigure(argv: Sequence[str], default_policy: str = "passive") -> str:
    """Set ``OMP_WAIT_POLICY`` from ``--omp-wait-policy`` in ``argv``; call before importing torch.

    With ``active`` (OpenMP's spin-waiting, the usual default) torch's 2-thread kernels slow
    down by 5-50x as soon as another process competes for the cores; ``passive`` threads sleep
    instead and keep timings meaningful on a shared machine. Returns the policy used.
    """
    policy = default_policy
    for i, arg in enumerate(argv):
        if arg == "--omp-wait-policy" and i + 1 < len(argv):
            policy = argv[i + 1]
        elif arg.startswith("--omp-wait-policy="):
            policy = arg.split("=", 1)[1]
    if policy not in OMP_POLICIES:
        raise SystemExit(f"--omp-wait-policy must be one of {OMP_POLICIES} (got {policy!r}).")
    if "torch" in sys.modules:
        raise RuntimeError("preconfigure: call before torch is imported.")
    if policy != "unset":
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return policy


@dataclass
class Method:
    """One timed method: ``step()`` runs one step; ``max_rounds`` (and ``warmup_steps``)
    cap the timed rounds (and warm-up steps) of very slow methods."""

    name: str
    step: Step
    max_rounds: int | None = None
    warmup_steps: int | None = None


@dataclass
class Timing:
    """Per-step times (ms) of one method, one value per round it ran in."""

    name: str
    samples_ms: list[float] = field(default_factory=list)
    steps_per_block: int = 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def spread_pct(self) -> float:
        """Half the inter-quartile range relative to the median (a noise indicator), in %."""
        if len(self.samples_ms) < 4:
            return float("nan")
        q = statistics.quantiles(self.samples_ms, n=4)
        return 50.0 * (q[2] - q[0]) / self.median_ms


def _time_block(step: Step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def interleaved(
    methods: Sequence[Method],
    *,
    rounds: int,
    warmup_steps: int = 3,
    block_seconds: float = 0.05,
    max_block_steps: int = 200,
    steps_per_block: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Median-of-rounds per-step time of each method, measured round-robin in one process.

    Args:
        rounds: number of timed rounds (each method runs one block per round).
        warmup_steps: untimed steps per method first (also used to size the blocks).
        block_seconds: target duration of one block when ``steps_per_block`` is None.
        steps_per_block: fixed number of steps per block for every method.
        max_rounds (per method): a very slow method runs only in that many rounds, spread
            evenly over the ``rounds`` (still interleaved with the others).
    """
    sizes: dict[str, int] = {}
    for m in methods:
        warm = warmup_steps if m.warmup_steps is None else m.warmup_steps
        for _ in range(max(0, warm - 1)):
            m.step()
        per_step = _time_block(m.step, 1)  # the last warm-up step sizes the block
        if steps_per_block is not None:
            sizes[m.name] = steps_per_block
        else:
            sizes[m.name] = max(1, min(max_block_steps, math.ceil(block_seconds / per_step)))
        if log:
            log(f"  warm-up {m.name}: {1e3 * per_step:.2f} ms/step, {sizes[m.name]} steps/block")
    active: dict[str, set[int]] = {}
    for m in methods:
        k = rounds if m.max_rounds is None else max(1, min(rounds, m.max_rounds))
        active[m.name] = {round(i * rounds / k) for i in range(k)}
    out = {m.name: Timing(m.name, steps_per_block=sizes[m.name]) for m in methods}
    for r in range(rounds):
        order = list(methods[r % len(methods) :]) + list(methods[: r % len(methods)])
        gc.collect()  # once per round: a full collection can take 0.1 s with torch loaded
        for m in order:
            if r not in active[m.name]:
                continue
            n = sizes[m.name]
            out[m.name].samples_ms.append(1e3 * _time_block(m.step, n) / n)
    return out


def set_threads(n: int) -> None:
    """Fix torch's intra-op threads (and one inter-op thread) for reproducible timings."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set once parallel work has started
        torch.set_num_interop_threads(1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mb() -> float:
    """Resident memory of this process (VmRSS from /proc/self/status), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("rss_mb: no VmRSS line in /proc/self/status (Linux only).")


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether ``src/`` has uncommitted changes (None if no git)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "src_dirty": None}
    return {"git_commit": head, "src_dirty": bool(dirty)}


def machine_info(threads: int, **extra: Any) -> dict[str, Any]:
    """The metadata record written first in every JSON output."""
    import torch

    return {
        "scenario": "metadata",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "threads_requested": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **git_state(),
        **extra,
    }


def write_json(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(records, indent=1) + "\n")


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows`` with ``(key, header, format)`` columns."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
