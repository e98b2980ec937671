"""Ctrl-C and SIGTERM deferred to a step boundary, so a checkpoint never holds half a step.

While :func:`~constrained_grad.fit` runs in the main thread of a single process, SIGINT
and SIGTERM only set a flag; the loop reads it between steps (one attribute test per
step), saves the last consistent state and then raises ``KeyboardInterrupt`` (SIGINT) or
``SystemExit`` with code ``128 + signum`` (SIGTERM). A second signal before that boundary
is an emergency exit: it raises at once (outside a checkpoint write, which always
completes: a write is a temporary file renamed at the end, so the previous checkpoint
stays intact either way) and nothing more is saved. The handlers that were installed
before are restored when ``fit`` returns or raises.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


class DeferredSignals:
    """Context manager installing the deferring handlers (main thread only; elsewhere it
    installs nothing and :attr:`signum` stays 0)."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received, 0 for none: what the loop tests
        self.count = 0
        self.emergency = False
        self._writing = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # e.g. an embedded interpreter
                    continue
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Give the signals back to the handlers that were installed before."""
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if not self.signum:
            self.signum = signum
            return
        if not self._writing:
            self.raise_now(emergency=True)

    def raise_now(self, emergency: bool = False) -> None:
        """Raise what the first signal asks for (``KeyboardInterrupt`` or ``SystemExit``)."""
        self.emergency = self.emergency or emergency
        self.restore()  # a further Ctrl-C goes to the previous handler
        if self.signum == signal.SIGINT or not self.signum:
            raise KeyboardInterrupt
        raise SystemExit(128 + self.signum)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A checkpoint write: even a second signal waits until it is complete."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self.count >= 2:
            self.raise_now(emergency=True)
