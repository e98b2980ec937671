"""Checkpoints that resume a primal-dual run exactly, written so a crash cannot corrupt them.

A checkpoint holds everything the next step depends on: model parameters and buffers,
primal and dual optimizer states (the dual state with the constraint names of its parameter
groups, never by position), multipliers and penalty coefficients (by constraint name), the
history so far, the step/epoch/batch counters (with the first epoch of the ``fit`` call,
which may continue a history), and every random state that decides what comes next —
torch's global generator, numpy's and Python's, the problem's own generator (random points
and projections), and the state that decided the current epoch's data order.

A file is one header line carrying the SHA-256 of the payload, then the payload (what
``torch.save`` writes). It is serialised in memory first, then written to a temporary file
in the same folder, flushed and fsynced, and renamed over the old one (atomic on POSIX), so
a kill at any moment leaves the previous checkpoint intact and a full disk is an ``OSError``
naming itself, not a half-written archive. Reading refuses anything but a regular file
(a FIFO or a directory named ``checkpoint.pt`` is never opened), checks the checksum (a
flipped bit is a :class:`~constrained_grad.errors.CheckpointError`, never silently other
weights), loads with ``torch.load(weights_only=True)`` (plain tensors and containers only,
no code from the file runs), and checks the type of every field before using it.

A folder written to by a run holds an advisory lock file (``checkpoint.lock``, with the
writer's pid) for as long as the run lasts, so a second run pointed at the same folder is
refused instead of overwriting the first one's checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import random
import stat
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from constrained_grad.constraints.points import PointSource
from constrained_grad.errors import CheckpointError
from constrained_grad.history.record import atomic_writer

try:  # POSIX advisory locks; elsewhere a pid file checked for liveness
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

FORMAT = "constrained_grad.checkpoint/1"
#: first bytes of a checksummed checkpoint file; the hex digest and a newline follow
MAGIC = b"constrained_grad checkpoint sha256="
LOCK_NAME = "checkpoint.lock"


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


def _os_error_text(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return f"the disk is full (ENOSPC: {err.strerror})"
    if err.errno == errno.EDQUOT:
        return f"the disk quota is exceeded (EDQUOT: {err.strerror})"
    return f"{type(err).__name__}: {err}"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Checksummed ``torch.save`` of ``obj`` to a temporary file, fsync, rename over ``path``.

    Raises :class:`CheckpointError` naming the cause (e.g. a full disk) if the write fails;
    the previous file at ``path`` is then left as it was.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, "wb") as fh:
            fh.write(header)
            fh.write(payload)
    except OSError as err:
        raise CheckpointError(
            f"save_checkpoint: cannot write {str(path)!r}: {_os_error_text(err)}. The previous "
            "checkpoint there is intact; free space or point checkpoint_dir elsewhere."
        ) from err


def prepare_dir(folder: Any) -> Path:
    """Create the checkpoint folder and prove it writable now, before any training step."""
    if not isinstance(folder, (str, os.PathLike)):
        raise CheckpointError(f"fit: checkpoint_dir must be a path (got {type(folder).__name__}).")
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path / ".write_test", "wb") as fh:  # a real write, fsync, rename
            fh.write(b"constrained_grad write test\n" * 64)
        (path / ".write_test").unlink()
    except OSError as err:
        raise CheckpointError(
            f"fit: cannot use {str(path)!r} as the checkpoint folder ({_os_error_text(err)}). "
            "Name a writable folder with free space as checkpoint_dir."
        ) from err
    target = path / "checkpoint.pt"
    _check_regular(target, "fit", missing_ok=True)
    return path


def _check_regular(path: Path, who: str, missing_ok: bool = False) -> bool:
    """Raise unless ``path`` is a regular file (stat only: a FIFO is never opened).

    Returns False if it does not exist and ``missing_ok``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if missing_ok:
            return False
        raise
    except OSError as err:
        raise CheckpointError(f"{who}: cannot read {str(path)!r} ({_os_error_text(err)}).") from err
    if not stat.S_ISREG(mode):
        what = (
            "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        )
        raise CheckpointError(
            f"{who}: {str(path)!r} is {what}, not a checkpoint. Remove it or use another "
            "checkpoint_dir."
        )
    return True


# -- the folder lock -------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) < 12 else None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/checkpoint.lock`` (with this pid) while the block runs.

    With ``fcntl`` (POSIX) the lock is an advisory ``flock`` the system drops when the
    holder dies, so a lock file left by a dead run is simply taken over. Without it the
    file's pid is checked for liveness. A live holder raises :class:`CheckpointError`.
    """
    path = folder / LOCK_NAME
    if fcntl is None:  # pragma: no cover (Windows)
        yield from _pid_lock(path)
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(
            f"fit: cannot create the lock file {str(path)!r} ({_os_error_text(err)}). Name a "
            "writable folder as checkpoint_dir."
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise CheckpointError(
                    f"fit: cannot lock {str(path)!r} ({_os_error_text(err)})."
                ) from err
            _raise_locked(path, _read_pid(path))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _raise_locked(path: Path, pid: int | None) -> None:
    holder = "another process" if pid is None else f"process {pid}"
    raise CheckpointError(
        f"fit: {str(path.parent)!r} is in use by {holder}, which holds {path.name}. Two runs "
        "writing one checkpoint folder would overwrite each other: give this run its own "
        "checkpoint_dir, or wait for the other run to end."
    )


def _pid_lock(path: Path) -> Iterator[None]:  # pragma: no cover (Windows)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _read_pid(path)
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                _raise_locked(path, pid)
            path.unlink(missing_ok=True)  # stale: its writer is gone
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    _raise_locked(path, _read_pid(path))


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


def _read_payload(path: Path) -> bytes:
    """The checked payload of a checkpoint file (or a whole file of the unchecked format)."""
    _check_regular(path, "load_checkpoint")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise CheckpointError(
            f"load_checkpoint: cannot read {str(path)!r} ({_os_error_text(err)})."
        ) from err
    if not data:
        raise _unreadable(path, "an empty file")
    if data.startswith(MAGIC):
        head, sep, payload = data.partition(b"\n")
        digest = head[len(MAGIC) :].decode("ascii", errors="replace")
        if not sep or len(digest) != 64:
            raise _unreadable(path, "its checksum line is incomplete")
        if hashlib.sha256(payload).hexdigest() != digest:
            raise _unreadable(
                path, f"the SHA-256 of its payload does not match the stored {digest[:12]}..."
            )
        return payload
    if data.startswith(b"PK"):  # written before checksums: a bare torch.save archive
        return data
    raise CheckpointError(
        f"load_checkpoint: {str(path)!r} is not a constrained_grad checkpoint (it starts "
        f"with {data[:16]!r}). Point checkpoint_dir at a folder fit wrote, or start afresh."
    )


def _unreadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"load_checkpoint: {str(path)!r} is not a readable checkpoint ({why}): it was "
        "truncated or corrupted. Resume from an older copy or start a new run directory."
    )


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely (regular file, checksum, ``weights_only=True``), check its
    format and the type of every field."""
    _register_cooper_safe_globals()
    payload = _read_payload(Path(path))
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
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
    validate(obj, path)
    return obj


# -- field validation ---------------------------------------------------------------------
def _bad(source: Any, field: str, want: str, got: Any) -> CheckpointError:
    shown = type(got).__name__ if not isinstance(got, (int, float, str, type(None))) else got
    return CheckpointError(
        f"load_checkpoint: field {field!r} of {source} must be {want} (got {shown!r}). The "
        "file was altered or not written by this version of constrained_grad.fit; resume "
        "from an older copy or start a new run directory."
    )


def _count(state: dict[str, Any], key: str, source: Any, field: str | None = None) -> None:
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(source, field or key, "a non-negative int", v)


def _generator_state(v: Any, source: Any, field: str) -> None:
    if not isinstance(v, torch.Tensor) or v.dtype != torch.uint8:
        raise _bad(source, field, "a torch.uint8 generator state", v)
    try:
        torch.Generator().set_state(v)
    except Exception as err:
        raise CheckpointError(
            f"load_checkpoint: field {field!r} of {source} is not a valid generator state "
            f"({type(err).__name__}: {err}). Resume from an older copy or start afresh."
        ) from err


def check_rng(state: Any, source: Any, field: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` can be given to :func:`restore_rng`
    (tried on scratch generators, so nothing global changes)."""
    if not isinstance(state, dict):
        raise _bad(source, field, "a dict of random states", state)
    _generator_state(state.get("torch"), source, f"{field}.torch")
    try:
        n, p = state["numpy"], state["python"]
        np.random.RandomState().set_state(
            (
                n["kind"],
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
        random.Random().setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    except Exception as err:
        raise CheckpointError(
            f"load_checkpoint: field {field!r} of {source} is not a valid numpy/Python random "
            f"state ({type(err).__name__}: {err}). Resume from an older copy or start afresh."
        ) from err


def _str_keyed(v: Any, source: Any, field: str, values: str = "dict") -> None:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _bad(source, field, "a dict keyed by name", v)
    if values == "dict" and not all(isinstance(x, dict) for x in v.values()):
        raise _bad(source, field, "a dict of dicts keyed by constraint name", v)


def validate(state: dict[str, Any], source: Any) -> None:
    """Check the type of every field a resume reads; a :class:`CheckpointError` names the
    first bad one. (Whether they fit the current problem is checked when loading.)"""
    for key in ("step", "skipped", "epoch", "batch_in_epoch", "first_epoch", "world_size"):
        if key in state:
            _count(state, key, source)
    if "constraints" in state:
        _str_keyed(state["constraints"], source, "constraints")
    for key in ("declarations", "point_sources"):
        if state.get(key) is not None:
            _str_keyed(state[key], source, key)
    if "loader" in state and state["loader"] is not None and not isinstance(state["loader"], dict):
        raise _bad(source, "loader", "a dict", state["loader"])
    model = state.get("model")
    if model is not None and not (
        isinstance(model, dict) and all(isinstance(t, torch.Tensor) for t in model.values())
    ):
        raise _bad(source, "model", "a state dict of tensors", model)
    opt = state.get("primal_optimizer")
    if "primal_optimizer" in state and not (
        isinstance(opt, dict)
        and isinstance(opt.get("state"), dict)
        and isinstance(opt.get("param_groups"), list)
    ):
        raise _bad(source, "primal_optimizer", "an optimizer state dict", opt)
    dual = state.get("dual_optimizer")
    if dual is not None and not (
        isinstance(dual, dict)
        and isinstance(dual.get("names"), list)
        and all(isinstance(n, str) for n in dual["names"])
        and isinstance(dual.get("state"), dict)
    ):
        raise _bad(source, "dual_optimizer", "None or {'names': [...], 'state': {...}}", dual)
    if "cmp" in state and not isinstance(state["cmp"], dict):
        raise _bad(source, "cmp", "a dict", state["cmp"])
    if "history" in state and not isinstance(state["history"], dict):
        raise _bad(source, "history", "a dict", state["history"])
    if "problem_generator" in state:
        _generator_state(state["problem_generator"], source, "problem_generator")
    ranks = state.get("ranks")
    if ranks is not None and not (
        isinstance(ranks, list) and all(isinstance(r, dict) for r in ranks)
    ):
        raise _bad(source, "ranks", "None or a list of per-rank dicts", ranks)
    for label, part in [("", state)] + [(f"ranks[{i}].", r) for i, r in enumerate(ranks or [])]:
        if "rng" in part:
            check_rng(part["rng"], source, label + "rng")
        if part.get("loader_rng") is not None:
            _generator_state(part["loader_rng"], source, label + "loader_rng")
        epoch_rng = part.get("epoch_rng")
        if epoch_rng is not None:
            if not isinstance(epoch_rng, dict):
                raise _bad(source, label + "epoch_rng", "None or a dict", epoch_rng)
            check_rng(epoch_rng.get("global"), source, label + "epoch_rng.global")
            if epoch_rng.get("loader") is not None:
                _generator_state(epoch_rng["loader"], source, label + "epoch_rng.loader")


# -- what must match on resume ------------------------------------------------------------
def _canonical(value: Any) -> Any:
    """Plain, comparable form of a declaration field."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        digest = hashlib.sha256(
            t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes()
        ).hexdigest()[:16]
        return f"tensor{tuple(t.shape)} {t.dtype} sha256:{digest}"
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, _ROUTINES) or (callable(value) and not hasattr(value, "__dict__")):
        return _qualname(value)
    if hasattr(value, "__dict__"):  # a point source, formulation, box, ... : type and fields
        state = value.state_dict() if isinstance(value, PointSource) else {}
        fields = {
            k: _canonical(v)
            for k, v in sorted(vars(value).items())
            if not k.startswith("_") and k not in state
        }
        return {"type": type(value).__name__, **fields}
    return repr(value)


_ROUTINES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)


def _qualname(value: Any) -> str:
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', None) or '?'}.{name}"


#: fields that are hyperparameters or bookkeeping, not what a constraint means
_NOT_DECLARATION = {"name", "dual_lr", "n_components", "n_inputs", "n_outputs"}


def declaration(spec: Any) -> dict[str, Any]:
    """A constraint's full declaration as plain data: its kind and every public field
    (inputs/outputs as resolved against the model, bounds, direction, margin, where,
    reduction, tolerance, formulation, ...). Tensors appear as shape, dtype and a hash."""
    out: dict[str, Any] = {"kind": type(spec).__name__}
    fields = vars(spec)
    for key, value in sorted(fields.items()):
        if key.startswith("_") or key in _NOT_DECLARATION:
            continue
        resolved = fields.get("_" + key)
        out[key] = _canonical(value if resolved is None else resolved)
    return out


def check_declarations(saved: Any, problem: Any, source: Any) -> None:
    """Raise :class:`CheckpointError` naming each field where a constraint's declaration
    differs from the one the checkpoint was written with."""
    if saved is None:  # checkpoints of older versions: the signature check only
        return
    lines = []
    for name, spec in problem.specs.items():
        before, now = saved.get(name), declaration(spec)
        if before is None:
            continue  # reported by the signature check
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                lines.append(
                    f"'{name}'.{key}: checkpoint {before.get(key)!r}, problem {now.get(key)!r}"
                )
    if lines:
        raise CheckpointError(
            f"load_checkpoint: {source} was written for other constraint declarations with "
            "the same names (" + "; ".join(lines) + "). Its multipliers belong to those; "
            "resume with the same declarations or start a new run directory."
        )


def point_source_states(problem: Any) -> dict[str, dict[str, Any]]:
    """Each stateful point source's :meth:`state_dict`, by the name of its constraint."""
    out = {}
    for name, spec in problem.specs.items():
        state = spec.where.state_dict()
        if state:
            out[name] = state
    return out


def load_point_source_states(saved: Any, problem: Any, source: Any) -> None:
    """Inverse of :func:`point_source_states`; a stateful source without a saved state
    (or the reverse) is a :class:`CheckpointError`."""
    saved = {} if saved is None else saved
    for name, spec in problem.specs.items():
        has_state = bool(spec.where.state_dict())
        if name not in saved:
            if has_state:
                raise CheckpointError(
                    f"load_checkpoint: {source} holds no state for the points of '{name}' "
                    f"({spec.where!r}), which keeps state between steps. It was written for "
                    "another declaration; start a new run directory."
                )
            continue
        try:
            spec.where.load_state_dict(saved[name])
        except Exception as err:
            raise CheckpointError(
                f"load_checkpoint: field 'point_sources'['{name}'] of {source} does not fit "
                f"{spec.where!r} ({type(err).__name__}: {err}). Resume with the same "
                "declarations or start a new run directory."
            ) from err
    extra = sorted(set(saved) - set(problem.specs))
    if extra:
        raise CheckpointError(
            f"load_checkpoint: {source} holds point states of constraints {extra} that the "
            "problem lacks. Resume with the same constraints or start a new run directory."
        )


def loader_signature(loader: Any) -> dict[str, Any]:
    """What decides the batches of an epoch: number of batches, batch size, dataset length."""

    def size(obj: Any) -> int | None:
        try:
            n = len(obj)
        except Exception:
            return None
        return n if isinstance(n, int) else None

    dataset = getattr(loader, "dataset", None)
    batch_size = getattr(loader, "batch_size", None)
    return {
        "batches": size(loader),
        "batch_size": batch_size if isinstance(batch_size, int) else None,
        "dataset_length": None if dataset is None else size(dataset),
    }


def check_loader(saved: Any, loader: Any, source: Any) -> None:
    """Raise :class:`CheckpointError` saying what changed in the loader since ``saved``."""
    if saved is None:
        return
    now = loader_signature(loader)
    changed = [
        f"{key} {saved.get(key)} -> {now[key]}"
        for key in now
        if saved.get(key) is not None and now[key] is not None and saved.get(key) != now[key]
    ]
    if changed:
        raise CheckpointError(
            f"load_checkpoint: {source} was written for another loader ("
            + ", ".join(changed)
            + "); resuming would replay other batches. Resume with the same loader (batch "
            "size and dataset), or start a new run directory."
        )


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
    _str_keyed(saved, path, "constraints")
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
