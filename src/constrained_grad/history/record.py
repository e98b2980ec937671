r"""Plain, detached records of a primal-dual training run.

A :class:`History` keeps one row of floats per training step in a fixed column order,

``["loss", "lagrangian"] + [f"{n}/{stat}" for n in constraint_names for stat in STATS]``

with ``STATS = (violation_mean, violation_max, fraction_violated, multiplier_mean,
multiplier_max, multiplier_min, multiplier_q50, multiplier_q90)``. For a constraint ``n``
with violations :math:`g_k` (feasible when :math:`g_k \le 0`) and multipliers
:math:`\lambda_k \ge 0` the training loop reports :math:`\operatorname{mean}_k g_k`,
:math:`\max_k g_k`, :math:`|\{k: g_k > 0\}| / K` and the mean, max, min, median and 90 %
quantile of :math:`\lambda`. Small constraints may also log every multiplier value.

Records are plain Python lists of floats (no tensors, no pandas), so appending costs about
a microsecond and a history survives the process that made it: it saves to JSON (strict
JSON: non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``) or CSV (one row per step, floats written with ``repr``, after a first
``#`` line holding ``meta`` as JSON), and both round trips are exact, NaN, infinities and
``-0.0`` included; only JSON keeps the evaluations. Files are written atomically, and under
``torch.distributed`` by rank 0 only.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import csv
import io
import itertools
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from constrained_grad.errors import HistoryError, InputValidationError
from constrained_grad.parallel import is_main_process

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_LOGGED_MULTIPLIERS",
    "STATS",
    "EvalRecord",
    "History",
    "history_columns",
]

FORMAT_NAME = "constrained_grad.History"
FORMAT_VERSION = 1

#: Per-constraint statistics, in column order.
STATS: tuple[str, ...] = (
    "violation_mean",
    "violation_max",
    "fraction_violated",
    "multiplier_mean",
    "multiplier_max",
    "multiplier_min",
    "multiplier_q50",
    "multiplier_q90",
)

#: Largest number of individual multiplier values a step may carry per constraint.
MAX_LOGGED_MULTIPLIERS = 32

_HEAD = ("loss", "lagrangian")
_INDEX_COLUMNS = ("step", "epoch", "wall_time")
_MULT_COLUMN = re.compile(r"^(?P<name>.+)/multiplier\[(?P<k>\d+)\]$")


def history_columns(constraint_names: Sequence[str]) -> list[str]:
    """The value columns of a history over ``constraint_names``, in logging order."""
    cols = list(_HEAD)
    for n in constraint_names:
        cols.extend(f"{n}/{s}" for s in STATS)
    return cols


class EvalRecord(NamedTuple):
    """One evaluation: the training step it belongs to and its named metrics."""

    step: int
    metrics: dict[str, float]


def _check_names(names: Sequence[str], who: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise InputValidationError(
            f"{who}: constraint_names must be a list of strings (got {type(names).__name__}). "
            "Pass e.g. ['monotone_age', 'lipschitz']."
        )
    out = list(names)
    for n in out:
        if not isinstance(n, str) or not n:
            raise InputValidationError(
                f"{who}: every constraint name must be a non-empty string (got {n!r}). "
                "Give each constraint a name."
            )
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise InputValidationError(
            f"{who}: constraint names must be unique (got duplicates {dup}). "
            "Rename the constraints so each name appears once."
        )
    return out


def _encode_float(v: float) -> float | str:
    """Strict-JSON form of a float: non-finite values become strings."""
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def _encode_list(values: list[float]) -> Sequence[float | str]:
    """Strict-JSON form of a float list (the list itself when every value is finite)."""
    if all(map(math.isfinite, values)):
        return values
    return [_encode_float(v) for v in values]


def _short(v: Any) -> str:
    """``repr`` of a stored value, cut short (a damaged file can hold megabyte fields)."""
    text = (
        repr(v)
        if not isinstance(v, int) or abs(v) < 10**40
        else f"<int of ~{v.bit_length() * 0.30103:.0f} digits>"
    )
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _as_floats(values: Sequence[Any], where: str, source: str) -> list[float]:
    """Decode a stored float series; fast path, precise error on the first bad entry."""
    try:
        return list(map(float, values))
    except (TypeError, ValueError):
        return [_as_float(v, where, source) for v in values]


def _as_float(v: Any, where: str, source: str) -> float:
    """Decode a stored float (number or one of the non-finite strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise HistoryError(
            f"History.load: {where} must be a number (got {_short(v)}) in {source}. "
            "The file is damaged or was not written by History.save_json/save_csv."
        )
    try:
        return float(v)
    except ValueError:
        raise HistoryError(
            f"History.load: {where} is not a float (got {_short(v)}) in {source}. "
            "The file is damaged or was not written by History.save_json/save_csv."
        ) from None


def _as_int(v: Any, where: str, source: str) -> int:
    if isinstance(v, bool):
        raise HistoryError(
            f"History.load: {where} must be an integer (got {_short(v)}) in {source}."
        )
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise HistoryError(
        f"History.load: {where} must be an integer (got {_short(v)}) in {source}. "
        "The file is damaged or was not written by History.save_json/save_csv."
    )


def _json_text(obj: Any, who: str, indent: int | None = None) -> str:
    """Strict JSON of ``obj``; an ``InputValidationError`` blaming the meta otherwise."""
    try:
        return json.dumps(obj, allow_nan=False, indent=indent)
    except (TypeError, ValueError) as err:
        raise InputValidationError(
            f"{who}: meta must be JSON-compatible with finite floats ({err}). "
            "Store strings, numbers, lists and dicts in history.meta."
        ) from None


def _csv_meta_line(meta: Mapping[str, Any], who: str) -> str | None:
    """The first line of a history CSV: ``# {"format": ..., "version": ..., "meta": {...}}``.

    None for an empty ``meta`` (the file then starts with its header, as before meta was
    kept). One line of strict JSON without its newline; see :func:`_split_csv_meta`.
    """
    if not meta:
        return None
    data = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": dict(meta)}
    return "# " + _json_text(data, who)


def _split_csv_meta(text: str, who: str, source: str) -> tuple[str | None, dict[str, Any], str]:
    """``(meta line, meta, rest)`` of a history CSV's text; ``(None, {}, text)`` without one.

    A first line starting with ``#`` must be a meta line written by :func:`_csv_meta_line`.
    """
    if not text.startswith("#"):
        return None, {}, text
    line, _, rest = text.partition("\n")
    line = line.removesuffix("\r")
    try:
        data = json.loads(line[1:])
    except (ValueError, RecursionError) as err:  # bad JSON, >4300-digit ints, deep nesting
        data, detail = None, f" ({'nested too deeply' if isinstance(err, RecursionError) else err})"
    else:
        detail = ""
    _check_format(
        data,
        who,
        source,
        f"line 1 of {source} starts with '#' but is not the meta line of a saved History"
        f"{detail}. Load a file written by History.save_csv, or delete that line.",
    )
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise HistoryError(f"{who}: 'meta' on line 1 of {source} must be an object.")
    return line, meta, rest


def _read_text(path: str | os.PathLike[str], who: str) -> str:
    """The UTF-8 text of a history file; :class:`HistoryError` for anything else.

    Only regular files are opened (a directory or FIFO is refused after ``stat``, never
    opened, so it cannot hang); undecodable bytes name their position.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputValidationError(f"{who}: path must be a str or os.PathLike (got {path!r}).")
    shown = repr(os.fspath(path))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise HistoryError(f"{who}: no such file {shown}. Check the path.") from None
    except OSError as err:
        raise HistoryError(f"{who}: cannot read {shown} ({err.strerror}).") from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO or device)"
        raise HistoryError(
            f"{who}: {shown} is {what}. Name a file written by History.save_json/save_csv."
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise HistoryError(f"{who}: cannot read {shown} ({err.strerror}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HistoryError(
            f"{who}: {shown} is not UTF-8 text (byte {err.start} is "
            f"{data[err.start : err.start + 1]!r}). Load a file written by History.save_json/"
            "save_csv."
        ) from None
    return text


def _check_format(data: Any, who: str, source: str, not_a_history: str) -> None:
    """Raise ``HistoryError`` unless ``data`` is a mapping of this format and version."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
        raise HistoryError(f"{who}: {not_a_history}")
    if data.get("version") != FORMAT_VERSION:
        raise HistoryError(
            f"{who}: {source} has format version {data.get('version')!r}; this version of "
            f"constrained_grad reads version {FORMAT_VERSION}."
        )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and ``os.replace`` it.

    Readers never see a half-written file: either the old file or the complete new one.
    ``mode`` is ``"w"`` (text, UTF-8, no newline translation) or ``"wb"``.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
    try:
        if mode == "wb":
            fh: IO[Any] = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable (POSIX)
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


class History:
    """Per-step records of a constrained training run, addressed by constraint name.

    Args:
        constraint_names: the constraints whose statistics each step carries, in order.
        meta: free-form, JSON-compatible run information (model, seed, settings, ...), kept
            by both :meth:`save_json` and :meth:`save_csv`.

    Example:
        >>> h = History(["mono"])
        >>> h.columns[:4]
        ['loss', 'lagrangian', 'mono/violation_mean', 'mono/violation_max']
        >>> h.log_step(0, 0, 0.01, [1.0, 1.2] + [0.5, 0.9, 0.25, 0.1, 0.3, 0.0, 0.1, 0.2])
        >>> h.constraint("mono")["violation_max"]
        [0.9]
    """

    __slots__ = (
        "_columns",
        "_epochs",
        "_evals",
        "_index",
        "_mults",
        "_n_values",
        "_names",
        "_rows",
        "_steps",
        "_walls",
        "meta",
    )

    def __init__(self, constraint_names: Sequence[str], meta: Mapping[str, Any] | None = None):
        self._names: tuple[str, ...] = tuple(_check_names(constraint_names, "History"))
        self._columns: tuple[str, ...] = tuple(history_columns(self._names))
        self._index: dict[str, int] = {c: i for i, c in enumerate(self._columns)}
        self._n_values = len(self._columns)
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._walls: list[float] = []
        self._rows: list[list[float]] = []
        self._mults: list[dict[str, list[float]] | None] = []
        self._evals: list[EvalRecord] = []
        if meta is not None and not isinstance(meta, Mapping):
            raise InputValidationError(
                f"History: meta must be a dict (got {type(meta).__name__}). "
                "Pass e.g. {'seed': 0, 'model': 'mlp'}."
            )
        self.meta: dict[str, Any] = dict(meta) if meta is not None else {}

    # ------------------------------------------------------------------ layout
    @property
    def constraint_names(self) -> list[str]:
        return list(self._names)

    @property
    def columns(self) -> list[str]:
        """Value columns in the order :meth:`log_step` expects them."""
        return list(self._columns)

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        span = f"steps {self._steps[0]}..{self._steps[-1]}" if self._steps else "empty"
        return (
            f"History(constraints={list(self._names)}, {len(self)} records, {span}, "
            f"{len(self._evals)} evals)"
        )

    # ----------------------------------------------------------------- logging
    def log_step(
        self,
        step: int,
        epoch: int,
        wall_time: float,
        values: Sequence[float],
        multipliers: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Append one training step; ``values`` follows :attr:`columns` exactly.

        ``multipliers`` optionally maps constraint names to all their multiplier values
        (at most :data:`MAX_LOGGED_MULTIPLIERS` each). Steps must strictly increase; use
        :meth:`truncate` before logging again after a resume.
        """
        if len(values) != self._n_values:
            raise InputValidationError(
                f"History.log_step: expected {self._n_values} values in the order of "
                f"History.columns (got {len(values)}). Build the row from history.columns: "
                f"2 (loss, lagrangian) + {len(STATS)} per constraint for {len(self._names)} "
                "constraint(s)."
            )
        if type(step) is not int:
            step = self._int_arg(step, "step")
        if type(epoch) is not int:
            epoch = self._int_arg(epoch, "epoch")
        if self._steps and step <= self._steps[-1]:
            raise InputValidationError(
                f"History.log_step: steps must strictly increase (got step {step} after "
                f"step {self._steps[-1]}). After resuming, call history.truncate(step) first."
            )
        try:
            row = list(map(float, values))
            wall = float(wall_time)
        except (TypeError, ValueError) as err:
            raise InputValidationError(
                f"History.log_step: values and wall_time must be real numbers ({err}). "
                "Convert tensors with .item() or .tolist()."
            ) from None
        mult = self._check_multipliers(multipliers) if multipliers else None
        self._steps.append(step)
        self._epochs.append(epoch)
        self._walls.append(wall)
        self._rows.append(row)
        self._mults.append(mult)

    @staticmethod
    def _int_arg(v: Any, what: str) -> int:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise InputValidationError(
                f"History.log_step: {what} must be an integer (got {v!r}). Pass an int."
            )
        return int(v.__index__())

    def _check_multipliers(
        self, multipliers: Mapping[str, Sequence[float]]
    ) -> dict[str, list[float]] | None:
        out: dict[str, list[float]] = {}
        for name, vals in multipliers.items():
            if name not in self._names:
                raise InputValidationError(
                    f"History.log_step: multipliers given for unknown constraint {name!r}. "
                    f"Use one of {list(self._names)}."
                )
            if len(vals) > MAX_LOGGED_MULTIPLIERS:
                raise InputValidationError(
                    f"History.log_step: at most {MAX_LOGGED_MULTIPLIERS} multiplier values per "
                    f"constraint may be logged (got {len(vals)} for {name!r}). Log only the "
                    "summary statistics for large constraints."
                )
            if len(vals):
                try:
                    out[name] = list(map(float, vals))
                except (TypeError, ValueError) as err:
                    raise InputValidationError(
                        f"History.log_step: multiplier values of {name!r} must be real numbers "
                        f"({err}). Convert tensors with .tolist()."
                    ) from None
        return out or None

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record evaluation metrics (e.g. validation loss) belonging to training ``step``.

        Evaluation steps must not decrease; several evaluations may share a step.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise InputValidationError(
                f"History.log_eval: step must be an int (got {step!r}). Pass the training step."
            )
        if self._evals and step < self._evals[-1].step:
            raise InputValidationError(
                f"History.log_eval: evaluation steps must not decrease (got step {step} after "
                f"{self._evals[-1].step}). After resuming, call history.truncate(step) first."
            )
        if not isinstance(metrics, Mapping):
            raise InputValidationError(
                f"History.log_eval: metrics must be a dict of name -> float "
                f"(got {type(metrics).__name__})."
            )
        clean: dict[str, float] = {}
        for k, v in metrics.items():
            if not isinstance(k, str):
                raise InputValidationError(
                    f"History.log_eval: metric names must be strings (got {k!r})."
                )
            try:
                clean[k] = float(v)
            except (TypeError, ValueError):
                raise InputValidationError(
                    f"History.log_eval: metric {k!r} must be a real number (got {v!r}). "
                    "Convert tensors with .item()."
                ) from None
        self._evals.append(EvalRecord(step, clean))

    # ---------------------------------------------------------------- reading
    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    @property
    def epochs(self) -> list[int]:
        return list(self._epochs)

    @property
    def wall_times(self) -> list[float]:
        return list(self._walls)

    @property
    def evals(self) -> list[EvalRecord]:
        """Evaluation records ``(step, metrics)`` in logging order (copies)."""
        return [EvalRecord(e.step, dict(e.metrics)) for e in self._evals]

    def eval_series(self, metric: str) -> tuple[list[int], list[float]]:
        """Steps and values of one evaluation metric (evaluations lacking it are skipped)."""
        pairs = [(e.step, e.metrics[metric]) for e in self._evals if metric in e.metrics]
        if not pairs and self._evals:
            known = sorted({k for e in self._evals for k in e.metrics})
            raise InputValidationError(
                f"History.eval_series: no evaluation logged metric {metric!r}. "
                f"Known metrics: {known}."
            )
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def column(self, name: str) -> list[float]:
        """One series: a value column, or ``"step"``, ``"epoch"``, ``"wall_time"``."""
        i = self._index.get(name)
        if i is not None:
            return [r[i] for r in self._rows]
        if name == "step":
            return [float(s) for s in self._steps]
        if name == "epoch":
            return [float(e) for e in self._epochs]
        if name == "wall_time":
            return list(self._walls)
        raise InputValidationError(
            f"History.column: unknown column {name!r}. Use one of "
            f"{list(_INDEX_COLUMNS) + list(self._columns)}."
        )

    def _check_constraint(self, name: str, who: str) -> None:
        if name not in self._names:
            raise InputValidationError(
                f"History.{who}: unknown constraint {name!r}. Use one of {list(self._names)}."
            )

    def constraint(self, name: str) -> dict[str, list[float]]:
        """All series of one constraint, keyed by statistic (``"violation_max"``, ...)."""
        self._check_constraint(name, "constraint")
        return {s: self.column(f"{name}/{s}") for s in STATS}

    def multiplier_values(self, name: str) -> list[list[float]]:
        """Per step, the individual multipliers of ``name`` (``[]`` where none were logged)."""
        self._check_constraint(name, "multiplier_values")
        return [list(m[name]) if m is not None and name in m else [] for m in self._mults]

    def last(self) -> dict[str, float] | None:
        """The newest step as ``{"step", "epoch", "wall_time", *columns}``; None if empty."""
        if not self._steps:
            return None
        out: dict[str, float] = {
            "step": self._steps[-1],
            "epoch": self._epochs[-1],
            "wall_time": self._walls[-1],
        }
        out.update(zip(self._columns, self._rows[-1], strict=True))
        return out

    def to_columns(self) -> dict[str, list[float]]:
        """Columnar copy: index columns, value columns and ``n/multiplier[k]`` columns.

        Multiplier cells of steps that did not log them are NaN.
        """
        out: dict[str, list[Any]] = {
            "step": list(self._steps),
            "epoch": list(self._epochs),
            "wall_time": list(self._walls),
        }
        out.update(zip(self._columns, self._value_columns(), strict=True))
        for name, width in self._multiplier_widths().items():
            series = self.multiplier_values(name)
            for k in range(width):
                out[f"{name}/multiplier[{k}]"] = [v[k] if k < len(v) else math.nan for v in series]
        return out

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of :meth:`to_columns` (one row per step)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "History.to_pandas needs pandas, which is not installed. Install it with "
                "`pip install pandas`, or use History.to_columns() / save_csv() instead."
            ) from err
        return pd.DataFrame(self.to_columns())

    def _value_columns(self) -> list[list[float]]:
        """The rows transposed: one list per value column."""
        if not self._rows:
            return [[] for _ in self._columns]
        return [list(c) for c in zip(*self._rows, strict=True)]

    def _multiplier_widths(self) -> dict[str, int]:
        widths = dict.fromkeys(self._names, 0)
        for m in self._mults:
            if m:
                for name, vals in m.items():
                    if len(vals) > widths[name]:
                        widths[name] = len(vals)
        return {n: w for n, w in widths.items() if w}

    # ------------------------------------------------------------ resume/edit
    def extend(self, other: History) -> None:
        """Append the records and evaluations of ``other`` (same constraints, later steps)."""
        if not isinstance(other, History):
            raise InputValidationError(
                f"History.extend: expected a History (got {type(other).__name__})."
            )
        if other._names != self._names:
            raise InputValidationError(
                f"History.extend: constraint layouts differ (got {list(other._names)}, "
                f"expected {list(self._names)}). Only histories of the same problem can be "
                "joined."
            )
        if self._steps and other._steps and other._steps[0] <= self._steps[-1]:
            raise InputValidationError(
                f"History.extend: the other history starts at step {other._steps[0]}, not after "
                f"this one's last step {self._steps[-1]}. Call truncate({other._steps[0] - 1}) "
                "first."
            )
        if self._evals and other._evals and other._evals[0].step < self._evals[-1].step:
            raise InputValidationError(
                f"History.extend: the other history's evaluations start at step "
                f"{other._evals[0].step}, before this one's last evaluation at step "
                f"{self._evals[-1].step}. Call truncate first."
            )
        self._steps.extend(other._steps)
        self._epochs.extend(other._epochs)
        self._walls.extend(other._walls)
        self._rows.extend(list(r) for r in other._rows)
        self._mults.extend(
            None if m is None else {k: list(v) for k, v in m.items()} for m in other._mults
        )
        self._evals.extend(EvalRecord(e.step, dict(e.metrics)) for e in other._evals)

    def truncate(self, step: int) -> int:
        """Drop every step and evaluation after ``step`` (keep ``<= step``); return rows dropped.

        Use it when resuming from a checkpoint taken at ``step``.
        """
        cut = bisect.bisect_right(self._steps, step)
        dropped = len(self._steps) - cut
        for lst in (self._steps, self._epochs, self._walls, self._rows, self._mults):
            del lst[cut:]
        ecut = bisect.bisect_right([e.step for e in self._evals], step)
        del self._evals[ecut:]
        return dropped

    def copy(self) -> History:
        """An independent copy."""
        new = History(self._names, self.meta)
        new.extend(self)
        new.meta = copy.deepcopy(self.meta)
        return new

    # ------------------------------------------------------------- dict/JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain, columnar dict of everything (floats kept as Python floats, NaN included)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "constraint_names": list(self._names),
            "columns": list(self._columns),
            "meta": copy.deepcopy(self.meta),
            "step": list(self._steps),
            "epoch": list(self._epochs),
            "wall_time": list(self._walls),
            "values": dict(zip(self._columns, self._value_columns(), strict=True)),
            "multipliers": {
                n: [list(m[n]) if m is not None and n in m else None for m in self._mults]
                for n in self._multiplier_widths()
            },
            "evals": [{"step": e.step, "metrics": dict(e.metrics)} for e in self._evals],
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        constraint_names: Sequence[str] | None = None,
        source: str = "dict",
    ) -> History:
        """Rebuild a history from :meth:`to_dict` output (or parsed JSON).

        With ``constraint_names`` the stored layout must match it exactly.
        Raises :class:`~constrained_grad.errors.HistoryError` on any layout mismatch.
        """
        _check_format(
            data,
            "History.load",
            source,
            f"{source} is not a saved History (missing format={FORMAT_NAME!r}). Load files "
            "written by History.save_json.",
        )
        names = data.get("constraint_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HistoryError(
                f"History.load: {source} has no valid 'constraint_names' list (got {names!r})."
            )
        _expect_layout(names, constraint_names, source)
        expected_cols = history_columns(names)
        if data.get("columns") != expected_cols:
            raise HistoryError(
                f"History.load: {source} has columns {data.get('columns')!r} but constraints "
                f"{names} need {expected_cols}. The file was written with a different layout."
            )
        meta = data.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise HistoryError(f"History.load: 'meta' in {source} must be an object.")
        h = cls(names, meta)
        steps, epochs, walls = data.get("step"), data.get("epoch"), data.get("wall_time")
        values = data.get("values")
        if not (isinstance(steps, list) and isinstance(epochs, list) and isinstance(walls, list)):
            raise HistoryError(f"History.load: {source} needs lists 'step', 'epoch', 'wall_time'.")
        n = len(steps)
        if not isinstance(values, Mapping) or list(values) != expected_cols:
            raise HistoryError(
                f"History.load: 'values' in {source} must map each of the {len(expected_cols)} "
                "columns, in order, to a list."
            )
        series = [values[c] for c in expected_cols]
        if (
            len(epochs) != n
            or len(walls) != n
            or any(not isinstance(s, list) or len(s) != n for s in series)
        ):
            raise HistoryError(
                f"History.load: series in {source} have different lengths (expected {n} steps)."
            )
        h._steps = [_as_int(s, "step", source) for s in steps]
        h._epochs = [_as_int(e, "epoch", source) for e in epochs]
        h._walls = _as_floats(walls, "wall_time", source)
        cols = [_as_floats(s, c, source) for c, s in zip(expected_cols, series, strict=True)]
        h._rows = [list(r) for r in zip(*cols, strict=True)]
        _check_increasing(h._steps, source)
        mults: list[dict[str, list[float]] | None] = [None] * n
        raw_mults = data.get("multipliers") or {}
        if not isinstance(raw_mults, Mapping):
            raise HistoryError(f"History.load: 'multipliers' in {source} must be an object.")
        for name, per_step in raw_mults.items():
            if name not in names:
                raise HistoryError(
                    f"History.load: {source} has multipliers of unknown constraint {name!r} "
                    f"(constraints: {names})."
                )
            if not isinstance(per_step, list) or len(per_step) != n:
                raise HistoryError(
                    f"History.load: multipliers of {name!r} in {source} must list one entry "
                    f"per step ({n})."
                )
            for i, vals in enumerate(per_step):
                if vals is None or vals == []:
                    continue
                if not isinstance(vals, list):
                    raise HistoryError(
                        f"History.load: multipliers of {name!r} at row {i} in {source} must "
                        f"be a list or null (got {vals!r})."
                    )
                row = mults[i]
                if row is None:
                    row = mults[i] = {}
                row[name] = _as_floats(vals, f"{name}/multiplier", source)
        # keep the per-step dicts in constraint order, as log_step would have built them
        h._mults = [None if m is None else {k: m[k] for k in names if k in m} for m in mults]
        evals = data.get("evals") or []
        if not isinstance(evals, list):
            raise HistoryError(f"History.load: 'evals' in {source} must be a list.")
        for e in evals:
            if not isinstance(e, Mapping) or not isinstance(e.get("metrics"), Mapping):
                raise HistoryError(
                    f"History.load: each eval in {source} needs 'step' and 'metrics' (got {e!r})."
                )
            h._evals.append(
                EvalRecord(
                    _as_int(e.get("step"), "eval step", source),
                    {str(k): _as_float(v, f"eval {k}", source) for k, v in e["metrics"].items()},
                )
            )
        for a, b in itertools.pairwise(h._evals):
            if b.step < a.step:
                raise HistoryError(
                    f"History.load: evaluation steps in {source} must not decrease "
                    f"(got {b.step} after {a.step})."
                )
        return h

    def save_json(self, path: str | os.PathLike[str], *, indent: int | None = None) -> None:
        """Write strict JSON atomically (non-finite floats as ``"NaN"``/``"Infinity"``).

        Under ``torch.distributed`` only rank 0 writes; other ranks return without writing.
        """
        if not is_main_process():
            return
        d = self.to_dict()
        d["wall_time"] = _encode_list(d["wall_time"])
        d["values"] = {c: _encode_list(s) for c, s in d["values"].items()}
        d["multipliers"] = {
            n: [None if v is None else _encode_list(v) for v in per]
            for n, per in d["multipliers"].items()
        }
        d["evals"] = [
            {"step": e["step"], "metrics": {k: _encode_float(v) for k, v in e["metrics"].items()}}
            for e in d["evals"]
        ]
        text = _json_text(d, "History.save_json", indent)
        with atomic_writer(path) as fh:
            fh.write(text)

    @classmethod
    def load_json(
        cls, path: str | os.PathLike[str], *, constraint_names: Sequence[str] | None = None
    ) -> History:
        """Read a file written by :meth:`save_json` (optionally checking the layout)."""
        text = _read_text(path, "History.load_json")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, >4300-digit ints
            detail = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise HistoryError(
                f"History.load_json: {os.fspath(path)!r} is not valid JSON ({detail}). "
                "Load a file written by History.save_json."
            ) from None
        return cls.from_dict(data, constraint_names=constraint_names, source=repr(os.fspath(path)))

    # --------------------------------------------------------------------- CSV
    def _csv_header(self) -> tuple[list[str], dict[str, int]]:
        widths = self._multiplier_widths()
        header = list(_INDEX_COLUMNS) + list(self._columns)
        for name, w in widths.items():
            header.extend(f"{name}/multiplier[{k}]" for k in range(w))
        return header, widths

    def save_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per step: step, epoch, wall_time, the columns, then ``n/multiplier[k]``.

        Floats are written with ``repr`` (``nan``, ``inf``, ``-inf`` included); empty cells
        mean "not logged". A non-empty :attr:`meta` (e.g. the constraint kinds ``fit``
        records, which :func:`~constrained_grad.diagnose` reads) comes first, as one line
        ``# {"format": "constrained_grad.History", "version": 1, "meta": {...}}``, and must be
        JSON-compatible as for :meth:`save_json`; skip that line when reading the file with
        other tools (``pandas.read_csv(path, skiprows=1)``, or
        ``History.load_csv(path).to_pandas()``). Evaluations are not part of the CSV (use
        JSON for those). Under ``torch.distributed`` only rank 0 writes; other ranks return
        without writing.
        """
        if not is_main_process():
            return
        header, widths = self._csv_header()
        buf = io.StringIO()
        meta_line = _csv_meta_line(self.meta, "History.save_csv")
        if meta_line is not None:
            buf.write(meta_line + "\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for i in range(len(self._steps)):
            cells = [str(self._steps[i]), str(self._epochs[i]), repr(self._walls[i])]
            cells.extend(map(repr, self._rows[i]))
            m = self._mults[i]
            for name, width in widths.items():
                vals = m.get(name, []) if m else []
                cells.extend(map(repr, vals))
                cells.extend([""] * (width - len(vals)))
            w.writerow(cells)
        with atomic_writer(path) as fh:
            fh.write(buf.getvalue())

    @classmethod
    def load_csv(
        cls,
        path: str | os.PathLike[str],
        *,
        constraint_names: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> History:
        """Read a file written by :meth:`save_csv`; constraint names come from the header.

        With ``constraint_names`` the header must match that layout exactly. The meta is
        the file's (``{}`` for a file without the meta line, e.g. written by an older
        version); a ``meta`` given here replaces it.
        """
        source = repr(os.fspath(path))
        text = _read_text(path, "History.load_csv")
        meta_line, stored, text = _split_csv_meta(text, "History.load_csv", source)
        first = 1 if meta_line is None else 2  # the file's line number of the header
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as err:  # e.g. a field larger than the field limit, a NUL byte
            raise HistoryError(
                f"History.load_csv: {source} is not a readable CSV ({err}). Load a file "
                "written by History.save_csv."
            ) from None
        if not rows:
            raise HistoryError(f"History.load_csv: {source} is empty (no header).")
        header = rows[0]
        names = _names_from_header(header, source)
        _expect_layout(names, constraint_names, source)
        base = list(_INDEX_COLUMNS) + history_columns(names)
        if header[: len(base)] != base:
            raise HistoryError(
                f"History.load_csv: header of {source} does not match the layout of constraints "
                f"{names} (expected {base}, got {header[: len(base)]})."
            )
        widths: dict[str, int] = {}
        for col in header[len(base) :]:
            m = _MULT_COLUMN.match(col)
            name = m.group("name") if m else None
            if m is None or name not in names or int(m.group("k")) != widths.get(name, 0):
                raise HistoryError(
                    f"History.load_csv: unexpected column {col!r} in {source}. Extra columns "
                    "must be '<constraint>/multiplier[k]' with k = 0, 1, ... in order."
                )
            assert name is not None
            widths[name] = widths.get(name, 0) + 1
        h = cls(names, stored if meta is None else meta)
        nv = len(h._columns)
        for line, cells in enumerate(rows[1:], start=first + 1):
            if len(cells) != len(header):
                raise HistoryError(
                    f"History.load_csv: line {line} of {source} has {len(cells)} cells, the "
                    f"header has {len(header)}."
                )
            where = f"line {line}"
            h._steps.append(_as_int(cells[0], f"step ({where})", source))
            h._epochs.append(_as_int(cells[1], f"epoch ({where})", source))
            h._walls.append(_as_float(cells[2], f"wall_time ({where})", source))
            h._rows.append(_as_floats(cells[3 : 3 + nv], f"value ({where})", source))
            pos = 3 + nv
            mult: dict[str, list[float]] = {}
            for name, width in widths.items():
                block = cells[pos : pos + width]
                pos += width
                filled = [c for c in block if c != ""]
                if block[: len(filled)] != filled:
                    raise HistoryError(
                        f"History.load_csv: multiplier cells of {name!r} on {where} of {source} "
                        "have gaps; values must be contiguous from multiplier[0]."
                    )
                if filled:
                    mult[name] = _as_floats(filled, f"{name}/multiplier ({where})", source)
            h._mults.append(mult or None)
        _check_increasing(h._steps, source)
        return h


def _names_from_header(header: list[str], source: str) -> list[str]:
    if header[: len(_INDEX_COLUMNS) + len(_HEAD)] != [*_INDEX_COLUMNS, *_HEAD]:
        raise HistoryError(
            f"History.load_csv: {source} does not start with columns "
            f"{[*_INDEX_COLUMNS, *_HEAD]} (got {header[:5]}). Load a file written by "
            "History.save_csv."
        )
    names: list[str] = []
    suffix = "/" + STATS[0]
    i = len(_INDEX_COLUMNS) + len(_HEAD)
    while i < len(header) and header[i].endswith(suffix):
        names.append(header[i][: -len(suffix)])
        i += len(STATS)
    return names


def _expect_layout(names: list[str], expected: Sequence[str] | None, source: str) -> None:
    if expected is not None and list(expected) != list(names):
        raise HistoryError(
            f"History.load: {source} records constraints {names}, expected "
            f"{list(expected)}. The history was written for a different problem; load it "
            "without constraint_names or rebuild the problem with the same constraints."
        )


def _check_increasing(steps: list[int], source: str) -> None:
    for a, b in itertools.pairwise(steps):
        if b <= a:
            raise HistoryError(
                f"History.load: steps in {source} must strictly increase (got {b} after {a})."
            )
