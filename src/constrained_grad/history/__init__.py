"""Plain, detached records of a training run, and their plots (matplotlib lives in plots)."""

from constrained_grad.history.health import ConstraintHealth, diagnose
from constrained_grad.history.loggers import CSVLogger, TensorBoardLogger
from constrained_grad.history.record import History

__all__ = [
    "CSVLogger",
    "ConstraintHealth",
    "History",
    "TensorBoardLogger",
    "diagnose",
    "plot_history",
    "plot_partial_dependence",
]


def plot_history(*args, **kwargs):
    """Plot multiplier and violation histories (see :func:`history.plots.plot_history`)."""
    from constrained_grad.history.plots import plot_history as _plot

    return _plot(*args, **kwargs)


def plot_partial_dependence(*args, **kwargs):
    """Partial-dependence plot with the derivative sign (see ``history.plots``)."""
    from constrained_grad.history.plots import plot_partial_dependence as _plot

    return _plot(*args, **kwargs)
