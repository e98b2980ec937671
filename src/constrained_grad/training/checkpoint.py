"""Checkpoints that resume a primal-dual run exactly, written so a crash cannot corrupt them.

A checkpoint holds everything the next step depends on: model parameters and buffers,
primal and dual optimizer states (the dual state with the constraint names of its parameter
groups, never by position), multipliers and penalty coefficients (by constraint name), the
history so far, the step/epoch/batch counters (with the first epoch of the ``fit`` call,
which may continue a history), and every random state that decides what comes next —
torch's global generator, numpy's and Python's, the problem's own generator (random points
and projections), and the state that decided the current epoch's data order.

Files are written to a temporary file in the same folder, flushed and fsynced, then renamed
over the old one (atomic on POSIX), so a kill at any moment leaves the previous checkpoint
intact. They are read with ``torch.load(weights_only=True)``: plain tensors and containers
only, no code from the file runs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from constrained_grad.errors import CheckpointError
from constrained_grad.history.record import atomic_writer

FORMAT = "constrained_grad.checkpoint/1"


def _register_cooper_safe_globals() -> None:
    """nuPI optimizer states hold an enum that ``weights_only`` loading must be told about."""
    try:
        from cooper.optim import nuPIInitType
    except ImportError:  # older/newer Cooper without nuPI: nothing to register
        return
    torch.serialization.add_safe_globals([nuPIInitType])


def capture_rng() -> dict[str, Any]:
    """Global random states (torch CPU, CUDA if present, numpy, Python) as plain data."""
    np_state: Any = np.random.get_state()  # noqa: NPY002 (the legacy global state users seed)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loader_generator(loader: Any) -> torch.Generator | None:
    """The generator deciding a DataLoader's order (its own or its sampler's), if any."""
    gen = getattr(loader, "generator", None)
    if gen is None:
        gen = getattr(getattr(loader, "sampler", None), "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as fh:
        torch.save(obj, fh)


def prepare_dir(folder: Any) -> Path:
    """Create the checkpoint folder now, so a bad path fails before any training step."""
    if not isinstance(folder, (str, os.PathLike)):
        raise CheckpointError(f"fit: checkpoint_dir must be a path (got {type(folder).__name__}).")
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"fit: cannot use {str(path)!r} as the checkpoint folder "
            f"({type(err).__name__}: {err}). Name a writable folder."
        ) from err
    return path


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that writes of ``path`` killed before their rename left."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def require_keys(state: dict[str, Any], keys: tuple[str, ...], source: Any) -> None:
    """Raise :class:`CheckpointError` naming the entries a checkpoint lacks."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"load_checkpoint: {source} lacks the entries {missing}. It was not "
            "written by this version of constrained_grad.fit; start a new run "
            "directory."
        )


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its format."""
    _register_cooper_safe_globals()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated/corrupted files raise assorted errors
        raise CheckpointError(
            f"load_checkpoint: {path} is not a readable checkpoint "
            f"({type(err).__name__}: {err}). It may be truncated or corrupted; "
            "resume from an older copy or start afresh."
        ) from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"load_checkpoint: {path} is not a constrained_grad checkpoint "
            f"(got format {got!r}, expected {FORMAT!r})."
        )
    return obj


def constraint_signature(problem: Any) -> dict[str, dict[str, Any]]:
    """What must match for a checkpoint to fit a problem: per-constraint kind and sizes."""
    sig = {}
    for name, spec in problem.specs.items():
        cons = problem._constraints[name]
        sig[name] = {
            "kind": type(spec).__name__,
            "components": spec.n_components,
            "reduction": spec.reduction,
            "formulation": type(spec.formulation).__name__,
            "multipliers": None if cons.multiplier is None else int(cons.multiplier.weight.numel()),
        }
    return sig


def check_signature(saved: dict[str, dict[str, Any]], problem: Any, path: Any) -> None:
    """Raise :class:`CheckpointError` naming what differs between saved and current problem."""
    current = constraint_signature(problem)
    if saved == current:
        return
    lines = []
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            lines.append(f"'{name}' is in the checkpoint but not in the problem")
        elif name not in saved:
            lines.append(f"'{name}' is in the problem but not in the checkpoint")
        else:
            for key in current[name]:
                if saved[name].get(key) != current[name][key]:
                    lines.append(
                        f"'{name}'.{key}: checkpoint {saved[name].get(key)!r}, problem "
                        f"{current[name][key]!r}"
                    )
    raise CheckpointError(
        f"load_checkpoint: {path} was written for other constraints ("
        + "; ".join(lines)
        + "). Resume with the same constraint declarations "
        "or start a new run directory."
    )
