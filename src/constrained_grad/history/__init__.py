"""Plain, detached records of a training run, and their plots (matplotlib lives in plots)."""

from typing import TYPE_CHECKING, Any

from constrained_grad.history.health import ConstraintHealth, diagnose
from constrained_grad.history.loggers import CSVLogger, TensorBoardLogger
from constrained_grad.history.record import History

if TYPE_CHECKING:  # for type checkers only: at run time, matplotlib loads on first use
    from constrained_grad.history.plots import plot_history, plot_partial_dependence, plot_proof

__all__ = [
    "CSVLogger",
    "ConstraintHealth",
    "History",
    "TensorBoardLogger",
    "diagnose",
    "plot_history",
    "plot_partial_dependence",
    "plot_proof",
]


def __getattr__(name: str) -> Any:
    """Load the plotting functions (and matplotlib) on first use, not at package import.

    The real functions are returned, so ``help()`` and ``inspect.signature`` show their own
    signatures and docstrings.
    """
    if name in ("plot_history", "plot_partial_dependence", "plot_proof"):
        from constrained_grad.history import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
