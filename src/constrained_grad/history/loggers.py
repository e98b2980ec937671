"""Stream a training history to TensorBoard or to a CSV file while training runs.

Both loggers are callbacks for :func:`constrained_grad.fit` (``fit(..., callbacks=[logger])``)
and are also callable with a :class:`~constrained_grad.history.record.History` directly (e.g.
``logger(trainer.history)`` after each :meth:`Trainer.step`). On every call they write the
history rows they have not written yet (normally just the newest one) whose step is a
multiple of ``every``; they always return ``None``, so they never stop training.

* :class:`TensorBoardLogger` writes one scalar per history column at global step = history
  step, tag ``"{prefix}/{column}"``: ``cg/loss``, ``cg/lagrangian``,
  ``cg/<constraint>/violation_max``, ``cg/<constraint>/multiplier_max``, ..., the epoch as
  ``cg/epoch``, the individual multipliers of small constraints as
  ``cg/<constraint>/multiplier[k]`` and evaluation metrics as ``cg/eval/<metric>`` (at the
  step the evaluation was recorded with). TensorBoard is an optional dependency, imported
  when the logger is built.
* :class:`CSVLogger` appends one row per step with exactly the columns and number format of
  :meth:`History.save_csv`, appended to the file at every call, after the same first line
  with the history's ``meta``.

Resuming: the first call for a history (a new History object, or one whose newest step is
older than what the logger saw before, i.e. truncated) makes the destination hold the
records of steps before the history's first step, followed by the whole history: records at
or after the history's first step, left by an earlier or interrupted run, are discarded, and
rows the interrupted run never wrote are caught up. After ``fit`` resumes from a checkpoint
(which restores the history), the CSV file therefore equals ``history.save_csv`` of the
continued run, and TensorBoard shows each step once. A run started again from step 0 in the
same place replaces the old one. This costs one pass over the history, once per resume.

Under ``torch.distributed`` only the main process (global rank 0) writes; other ranks do
nothing.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.history.record import (
    _INDEX_COLUMNS,
    History,
    _csv_meta_line,
    _split_csv_meta,
    atomic_writer,
)
from constrained_grad.parallel import is_main_process

__all__ = ["CSVLogger", "TensorBoardLogger"]


def _check_every(every: Any, who: str) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InputValidationError(
            f"{who}: every must be a positive int (got {every!r}). Pass every=1 to log "
            "every step, every=10 for every tenth."
        )
    return every


def _history_of(info: Any, who: str) -> History:
    """The history of a ``cg.fit`` StepInfo (duck-typed: ``info.history``) or a History."""
    h = info if isinstance(info, History) else getattr(info, "history", None)
    if not isinstance(h, History):
        raise InputValidationError(
            f"{who}: expected a cg.fit StepInfo (with .history) or a History "
            f"(got {type(info).__name__}). Pass the logger to fit(..., callbacks=[logger]) "
            "or call logger(trainer.history)."
        )
    return h


class _StepTracker:
    """Which history rows are new since the last call, and whether a run (re)started."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.history: History | None = None
        self.seen = -1  # newest history step already considered

    def restarted(self, h: History) -> bool:
        """True for a new history object, or one whose newest step went back (truncated)."""
        return h is not self.history or (bool(h._steps) and h._steps[-1] < self.seen)

    def new_rows(self, h: History, after: int | None) -> list[int]:
        """Indices of rows with step > ``after`` (default: the last seen) and step % every == 0.

        Marks every row up to the newest as seen.
        """
        steps = h._steps
        bound = self.seen if after is None else after
        i = len(steps)
        while i > 0 and steps[i - 1] > bound:
            i -= 1
        if steps:
            self.seen = steps[-1]
        return [j for j in range(i, len(steps)) if steps[j] % self.every == 0]


_Logger = TypeVar("_Logger", bound="_HistoryLogger")


class _HistoryLogger:
    """What both loggers share: the call on each step, the resume rule, ``with`` blocks.

    Subclasses set ``self._track`` and implement ``_start`` (a new or restarted history),
    ``_resume_writing`` (a call after ``close()``), ``_write`` (the new rows) and ``close``.
    """

    _track: _StepTracker

    def __call__(self, info: Any) -> None:
        """Write the new rows of ``info.history`` (or of a History) on the main process."""
        h = _history_of(info, type(self).__name__)
        if not is_main_process() or not h._steps:
            return None
        if self._track.restarted(h):
            self._start(h)
            rows = self._track.new_rows(h, after=h._steps[0] - 1)  # the whole history
        else:
            self._resume_writing()
            rows = self._track.new_rows(h, after=None)
        self._write(h, rows)
        return None

    def _start(self, h: History) -> None:
        raise NotImplementedError

    def _resume_writing(self) -> None:
        """Called before appending to a history already being logged."""

    def _write(self, h: History, rows: list[int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Logger) -> _Logger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- TensorBoard
_TB_SUFFIX = ".cg"  # names this logger's event files, so a resume can tell them apart


def _import_tensorboard(who: str) -> tuple[Any, Any, Any, Any]:
    """``(FileWriter, Summary, Event, SessionLog)``, or an ImportError saying what to install."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (checks the tensorboard version)
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.writer import FileWriter
    except ImportError as err:
        raise ImportError(
            f"{who}: TensorBoard logging needs the tensorboard package, which could not be "
            f"imported ({err}). How to fix: pip install tensorboard"
        ) from err
    return FileWriter, Summary, Event, SessionLog


class TensorBoardLogger(_HistoryLogger):
    """Write history rows as TensorBoard scalars (see the module doc for the tag names).

    Args:
        log_dir: folder for the event files (created on first write, on rank 0 only).
        every: log steps whose history step is a multiple of ``every``.
        prefix: first part of every tag (``""`` for none).
        multiplier_values: also log the individual multipliers that the history holds
            (constraints with at most 32 multipliers) as ``<constraint>/multiplier[k]``.
        flush_secs: TensorBoard's background flush interval; :meth:`flush` and
            :meth:`close` flush at once.

    Each step's scalars go out as one event; values are stored as float32 by TensorBoard.
    Event files are named ``...tfevents...cg``. On the first call for a history (see the
    module doc) the whole history is written to a new event file; if the folder already
    holds files of this logger, the new file starts with TensorBoard's purge marker (what
    ``SummaryWriter(purge_step=first_step)`` writes), so the Python event reader drops the
    older events at or after the history's first step. That marker applies to every tag in
    the folder: give the logger a folder of its own (its own TensorBoard run).
    Evaluations recorded after the last callback (``fit`` logs its final evaluation after
    the last step) are written by :meth:`close`, so use the logger as a context manager::

        with cg.TensorBoardLogger("runs/exp1") as tb:
            cg.fit(problem, loader, optimizer, callbacks=[tb])

    Raises:
        ImportError: when tensorboard is not installed (on every rank, when built).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        every: int = 1,
        prefix: str = "cg",
        *,
        multiplier_values: bool = True,
        flush_secs: float = 30.0,
    ) -> None:
        who = "TensorBoardLogger"
        if not isinstance(log_dir, (str, os.PathLike)):
            raise InputValidationError(
                f"{who}: log_dir must be a path (got {type(log_dir).__name__}). "
                "Pass e.g. 'runs/experiment1'."
            )
        if not isinstance(prefix, str):
            raise InputValidationError(
                f"{who}: prefix must be a string (got {prefix!r}). Pass e.g. 'cg' or ''."
            )
        if (
            isinstance(flush_secs, bool)
            or not isinstance(flush_secs, (int, float))
            or not flush_secs > 0
        ):
            raise InputValidationError(
                f"{who}: flush_secs must be a positive number (got {flush_secs!r})."
            )
        self.log_dir = Path(log_dir)
        self.every = _check_every(every, who)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.multiplier_values = bool(multiplier_values)
        self.flush_secs = float(flush_secs)
        self._file_writer_cls, self._summary, self._event, self._session_log = _import_tensorboard(
            who
        )
        self._writer: Any = None
        self._track = _StepTracker(self.every)
        self._tags: dict[str, str] = {}
        self._n_evals = 0  # evaluations of the tracked history already written

    # ------------------------------------------------------------------ writing
    def _resume_writing(self) -> None:
        if self._writer is None:  # closed, then called again: a new file, no purge
            self._open()

    def _write(self, h: History, rows: list[int]) -> None:
        """The new rows, then the evaluations not yet written."""
        for i in rows:
            self._write_row(h, i)
        self._write_evals(h)

    def _start(self, h: History) -> None:
        """Open a new event file; after an earlier run of this logger, purge from the start.

        When the folder already holds event files of this logger (``*.cg`` suffix), the new
        file starts with what ``SummaryWriter(purge_step=first_step)`` writes: TensorBoard's
        Python reader then drops older events at steps >= the history's first step. (The
        Rust data server ignores that marker; it drops a tag's older records as soon as the
        tag's steps go back, which rewriting the whole history does anyway.)
        """
        self._close_writer()
        first = h._steps[0]
        earlier = self.log_dir.is_dir() and any(self.log_dir.glob(f"*tfevents*{_TB_SUFFIX}"))
        self._open()
        if earlier:
            self._writer.add_event(self._event(step=first, file_version="brain.Event:2"))
            start = self._session_log(status=self._session_log.START)
            self._writer.add_event(self._event(step=first, session_log=start))
        self._track.history = h
        self._track.seen = -1
        self._tags = {c: f"{self.prefix}{c}" for c in h._columns}
        self._n_evals = next((k for k, e in enumerate(h._evals) if e.step >= first), len(h._evals))

    def _open(self) -> None:
        self._writer = self._file_writer_cls(
            str(self.log_dir),
            max_queue=64,
            flush_secs=self.flush_secs,
            filename_suffix=_TB_SUFFIX,
        )

    def _write_row(self, h: History, i: int) -> None:
        value = self._summary.Value
        values = [value(tag=f"{self.prefix}epoch", simple_value=float(h._epochs[i]))]
        values.extend(
            value(tag=self._tags[c], simple_value=v)
            for c, v in zip(h._columns, h._rows[i], strict=True)
        )
        mults = h._mults[i]
        if self.multiplier_values and mults:
            for name, vals in mults.items():
                values.extend(
                    value(tag=f"{self.prefix}{name}/multiplier[{k}]", simple_value=v)
                    for k, v in enumerate(vals)
                )
        self._writer.add_summary(self._summary(value=values), h._steps[i])

    def _write_evals(self, h: History) -> None:
        evals = h._evals
        if len(evals) <= self._n_evals:
            return
        value = self._summary.Value
        for e in evals[self._n_evals :]:
            if e.metrics:
                summary = self._summary(
                    value=[
                        value(tag=f"{self.prefix}eval/{k}", simple_value=v)
                        for k, v in e.metrics.items()
                    ]
                )
                self._writer.add_summary(summary, e.step)
        self._n_evals = len(evals)

    # ---------------------------------------------------------------- lifecycle
    def flush(self) -> None:
        """Write buffered events to disk now."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Write evaluations recorded since the last call, flush and close the event file.

        Calling the logger again afterwards continues in a new event file.
        """
        h = self._track.history
        if self._writer is not None and h is not None:
            self._write_evals(h)
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return (
            f"TensorBoardLogger(log_dir={os.fspath(self.log_dir)!r}, every={self.every}, "
            f"prefix={self.prefix.rstrip('/')!r})"
        )


# ----------------------------------------------------------------------------------- CSV
def _csv_header(columns: Sequence[str], widths: dict[str, int]) -> list[str]:
    header = [*_INDEX_COLUMNS, *columns]
    for name, w in widths.items():
        header.extend(f"{name}/multiplier[{k}]" for k in range(w))
    return header


def _parse_widths(extra: list[str], names: Sequence[str]) -> dict[str, int] | None:
    """Multiplier widths from the header's extra columns, or None when they are malformed."""
    widths: dict[str, int] = {}
    for col in extra:
        name, sep, rest = col.rpartition("/multiplier[")
        if not sep or name not in names or rest != f"{widths.get(name, 0)}]":
            return None
        if widths and name not in widths and names.index(name) < names.index(list(widths)[-1]):
            return None  # blocks must follow the constraint order
        widths[name] = widths.get(name, 0) + 1
    return widths


def _relayout(cells: list[str], n_base: int, old: dict[str, int], new: dict[str, int]) -> list[str]:
    """Move a row's multiplier cells from the ``old`` column widths to the ``new`` ones."""
    out = cells[:n_base]
    blocks: dict[str, list[str]] = {}
    pos = n_base
    for name, w in old.items():
        blocks[name] = cells[pos : pos + w]
        pos += w
    for name, w in new.items():
        b = blocks.get(name, [])
        out.extend(b)
        out.extend([""] * (w - len(b)))
    return out


class CSVLogger(_HistoryLogger):
    """Append history rows to a CSV file as training runs (columns as in ``History.save_csv``).

    Args:
        path: the CSV file (its folder is created when first needed).
        every: log steps whose history step is a multiple of ``every``.

    The header is ``step, epoch, wall_time``, the history columns, then
    ``<constraint>/multiplier[k]`` for the individual multipliers the history holds; floats
    are written with ``repr`` and the file loads with :meth:`History.load_csv`. Before the
    header, as in :meth:`History.save_csv`, a ``#`` line holds the history's ``meta`` (with
    the constraint kinds ``fit`` records) as it is on the first call for the history. Each
    call opens the file, appends its rows and closes it again, so a crash of the training
    process loses nothing and no file handle stays open; :meth:`flush`/:meth:`close` also
    ``fsync`` (against a crash of the machine). Evaluations are not part of the CSV (save
    the history as JSON for those).

    Resuming (the first call for a history, see the module doc): an existing file must have
    the header of this history's constraints (else :class:`CheckpointError`, the file is left
    alone); its rows of steps before the history's first step are kept, later rows are
    replaced by the history's, and its meta line becomes this history's. A half-written last
    line (killed while writing) is dropped. Should a later row carry more multiplier values
    than the header has columns for, the file is rewritten once with the wider header.
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 1) -> None:
        who = "CSVLogger"
        if not isinstance(path, (str, os.PathLike)):
            raise InputValidationError(
                f"{who}: path must be a file path (got {type(path).__name__}). "
                "Pass e.g. 'runs/history.csv'."
            )
        self.path = Path(path)
        self.every = _check_every(every, who)
        self._track = _StepTracker(self.every)
        self._columns: tuple[str, ...] = ()
        self._widths: dict[str, int] = {}
        self._meta_line: str | None = None

    # ------------------------------------------------------------------ writing

    def _read(
        self, names: Sequence[str]
    ) -> tuple[dict[str, int], list[list[str]], bool, str | None]:
        """Widths, rows, whether the file needs rewriting (half-written last line), meta line."""
        with open(self.path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        source = repr(os.fspath(self.path))
        meta_line, _, text = _split_csv_meta(text, "CSVLogger", source)
        first = 1 if meta_line is None else 2  # the file's line number of the header
        lines = list(csv.reader(text.splitlines(keepends=True)))
        header, rows = (lines[0], lines[1:]) if lines else ([], [])
        base = [*_INDEX_COLUMNS, *self._columns]
        widths = _parse_widths(header[len(base) :], names)
        if header[: len(base)] != base or widths is None:
            raise CheckpointError(
                f"CSVLogger: {os.fspath(self.path)!r} has a different header than this run "
                f"writes (expected {base} + multiplier columns, got {header}). It was written "
                "for other constraints or is not a history CSV. How to fix: log to a new "
                "path, or delete the file."
            )
        damaged = False
        if rows and (not text.endswith("\n") or len(rows[-1]) != len(header)):
            rows.pop()  # the process died while writing this line
            damaged = True
        for k, cells in enumerate(rows, start=first + 1):
            if len(cells) != len(header):
                raise CheckpointError(
                    f"CSVLogger: line {k} of {source} has {len(cells)} cells, "
                    f"the header has {len(header)}. The file is damaged; log to a new path."
                )
            try:
                int(cells[0])
            except ValueError:
                raise CheckpointError(
                    f"CSVLogger: line {k} of {source} has a step that is not an integer (got "
                    f"{cells[0]!r}). The file is damaged; log to a new path."
                ) from None
        return widths, rows, damaged, meta_line

    def _start(self, h: History) -> None:
        """First call for this history: check the file, keep its rows before the history."""
        first = h._steps[0]
        names = list(h._names)
        self._columns = h._columns
        self._meta_line = _csv_meta_line(h.meta, "CSVLogger")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        widths: dict[str, int] = {}
        kept: list[list[str]] = []
        rewrite = not exists
        if exists:
            widths, rows, rewrite, meta_line = self._read(names)
            rewrite = rewrite or meta_line != self._meta_line
            for cells in rows:
                if int(cells[0]) < first:  # an integer: checked by _read
                    kept.append(cells)
                else:
                    rewrite = True
        self._track.history = h
        self._track.seen = -1
        # room for every multiplier the history holds, so the header rarely has to grow
        new_widths = self._grown(widths, names, h._mults)
        if new_widths != widths:
            n_base = len(_INDEX_COLUMNS) + len(self._columns)
            kept = [_relayout(c, n_base, widths, new_widths) for c in kept]
            rewrite = True
        self._widths = new_widths
        if rewrite:
            self._rewrite(kept)

    @staticmethod
    def _grown(
        widths: dict[str, int], names: Sequence[str], mults: Sequence[dict[str, list[float]] | None]
    ) -> dict[str, int]:
        need = dict(widths)
        for m in mults:
            if m:
                for name, vals in m.items():
                    if len(vals) > need.get(name, 0):
                        need[name] = len(vals)
        return {n: need[n] for n in names if need.get(n, 0)}

    def _rewrite(self, rows: list[list[str]]) -> None:
        with atomic_writer(self.path) as fh:
            if self._meta_line is not None:
                fh.write(self._meta_line + "\n")
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(_csv_header(self._columns, self._widths))
            w.writerows(rows)

    def _write(self, h: History, rows: list[int]) -> None:
        if not rows:
            return
        grown = self._grown(self._widths, list(h._names), [h._mults[i] for i in rows])
        if grown != self._widths:  # rare: more multiplier values than the header holds
            n_base = len(_INDEX_COLUMNS) + len(self._columns)
            old = self._widths
            _, existing, _, _ = self._read(list(h._names))
            self._widths = grown
            self._rewrite([_relayout(c, n_base, old, grown) for c in existing])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for i in rows:
            cells = [str(h._steps[i]), str(h._epochs[i]), repr(h._walls[i])]
            cells.extend(map(repr, h._rows[i]))
            m = h._mults[i]
            for name, width in self._widths.items():
                vals = m.get(name, []) if m else []
                cells.extend(map(repr, vals))
                cells.extend([""] * (width - len(vals)))
            writer.writerow(cells)
        # open, write, close: the rows reach the OS at once and no file handle is left open
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())

    # ---------------------------------------------------------------- lifecycle
    def flush(self) -> None:
        """``fsync`` the file (rows already reach the operating system when written)."""
        if self._track.history is not None and self.path.exists() and is_main_process():
            with open(self.path, "a", encoding="utf-8") as fh:
                os.fsync(fh.fileno())

    def close(self) -> None:
        """Same as :meth:`flush`: the logger holds no open file between calls."""
        self.flush()

    def __repr__(self) -> str:
        return f"CSVLogger(path={os.fspath(self.path)!r}, every={self.every})"
