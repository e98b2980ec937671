r"""Figures of a training history and of a model's partial dependence on one input.

This is the only module of constrained_grad that imports matplotlib. Figures are built as
:class:`matplotlib.figure.Figure` objects (never through ``pyplot`` state, never shown), so
they work under any backend, including ``Agg`` on a headless machine, and do not pile up in
pyplot's figure manager. Jupyter displays a returned figure directly.

Partial dependence of output :math:`f_i` on input :math:`x_j` over reference rows
:math:`x^{(1)}, \dots, x^{(N)}`:

.. math::
    \mathrm{PD}(v) = \frac1N \sum_n f_i\big(x^{(n)}_{j \leftarrow v}\big), \qquad
    \mathrm{PD}'(v) = \frac1N \sum_n \partial_j f_i\big(x^{(n)}_{j \leftarrow v}\big),

where :math:`x_{j \leftarrow v}` is :math:`x` with feature :math:`j` set to :math:`v`. The
slope is taken from the derivative engine (exact autograd, not finite differences); a
monotonicity constraint :math:`\partial_j f_i \ge 0` that holds on the data shows as a
partial dependence without shaded (negative-slope) regions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from constrained_grad.derivatives import jacobian_columns
from constrained_grad.errors import InputValidationError
from constrained_grad.history.health import diagnose
from constrained_grad.history.record import History, atomic_writer
from constrained_grad.parallel import is_main_process

__all__ = [
    "PartialDependence",
    "auto_scale",
    "partial_dependence",
    "plot_history",
    "plot_partial_dependence",
    "sign_runs",
]

PANELS = ("loss", "multipliers", "violations")
_X_LABELS = {"step": "step", "epoch": "epoch", "wall_time": "wall time [s]"}
_NEG_COLOR = "tab:red"
_POS_COLOR = "tab:green"


# ----------------------------------------------------------------------------- helpers
def _colors() -> list[str]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    return list(cycle)


def _root_figure(ax: Axes) -> Figure:
    fig = ax.figure
    while isinstance(fig, SubFigure):
        fig = fig.figure
    if not isinstance(fig, Figure):  # pragma: no cover - axes always live in a figure
        raise InputValidationError("plot: the given axes are not attached to a figure.")
    return fig


def _resolve_axes(ax: Any, axes: Any, n: int, who: str, names: Sequence[str]) -> list[Axes] | None:
    if ax is not None and axes is not None:
        raise InputValidationError(f"{who}: pass either ax= or axes=, not both.")
    given = ax if ax is not None else axes
    if given is None:
        return None
    lst = [given] if isinstance(given, Axes) else list(np.ravel(np.asarray(given, dtype=object)))
    if len(lst) != n or not all(isinstance(a, Axes) for a in lst):
        raise InputValidationError(
            f"{who}: expected {n} matplotlib Axes, one per panel {list(names)} "
            f"(got {len(lst)} object(s)). Pass axes=fig.subplots({n}, 1) or choose fewer panels."
        )
    return lst


def _save(fig: Figure, path: str | os.PathLike[str] | None, who: str, dpi: float) -> None:
    if path is None:
        return
    fmt = Path(path).suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InputValidationError(
            f"{who}: cannot infer an image format from {os.fspath(path)!r} (got suffix "
            f"{fmt!r}). Use one of {sorted(supported)}, e.g. 'history.png' or 'history.svg'."
        )
    if not is_main_process():  # under torch.distributed only rank 0 writes files
        return
    with atomic_writer(path, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=dpi)


def _set_log_scale(ax: Axes, arrays: Sequence[np.ndarray]) -> None:
    """Log scale when every finite value is positive, symlog otherwise (zeros, negatives)."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
        return
    nonzero = np.abs(finite[finite != 0])
    linthresh = 10.0 ** math.floor(math.log10(float(nonzero.min()))) if nonzero.size else 1.0
    ax.set_yscale("symlog", linthresh=linthresh)


DECADES = 100.0  # "values span decades": the largest value is this many times the settled level


def auto_scale(arrays: Sequence[np.ndarray]) -> tuple[str, float | None]:
    """The y scale ``plot_history(log=None)`` picks for series drawn on one panel.

    * ``("log", None)`` when every finite value is positive and ``max / min > DECADES``
      (a loss or a matching error that falls by orders of magnitude);
    * ``("symlog", linthresh)`` when the run starts large and *settles* near zero: the last
      half of every series stays within ``max / DECADES`` of 0 without being all zero (a
      gradient-matching error ``mse − τ`` that ends around ±τ, or a Lagrangian of such a
      run). ``linthresh`` is the power of ten nearest the median settled magnitude, so the
      settled values are read on the linear part around 0 and the descent above it in
      decades;
    * ``("linear", None)`` otherwise (e.g. a monotonicity violation settling at a slack
      comparable to its start, or multipliers that rise and level off).
    """
    series = [np.asarray(a, dtype=float) for a in arrays]
    finite = np.concatenate([a[np.isfinite(a)] for a in series]) if series else np.array([])
    if finite.size < 2:
        return "linear", None
    top = float(np.max(np.abs(finite)))
    if np.all(finite > 0):
        return ("log", None) if top / float(finite.min()) > DECADES else ("linear", None)
    late = np.concatenate([a[len(a) // 2 :] for a in series])
    late = np.abs(late[np.isfinite(late)])
    if top <= 0 or not late.size or float(late.max()) > top / DECADES:
        return "linear", None
    settled = late[late > 0]
    if not settled.size:
        return "linear", None
    return "symlog", 10.0 ** round(math.log10(float(np.median(settled))))


def _outside_right(ax: Axes, **kwargs: Any) -> None:
    """The axes' legend to the right of the axes (constrained layout makes room for it)."""
    ax.legend(
        fontsize="small",
        title_fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        **kwargs,
    )


# ------------------------------------------------------------------------ history plot
def plot_history(
    history: History,
    *,
    constraints: Sequence[str] | None = None,
    log: bool | None = None,
    ax: Any = None,
    axes: Any = None,
    path: str | os.PathLike[str] | None = None,
    x: str = "step",
    panels: Sequence[str] = PANELS,
    title: str | None = None,
    dpi: float = 120,
) -> Figure:
    """Loss, multipliers and violations of a training run, one panel each.

    * ``"loss"``: ``loss`` (if any was recorded) and ``lagrangian``.
    * ``"multipliers"``: per constraint a line ``"{name} mean multiplier"``, and a shaded
      band ``"{name} multiplier min–max"`` when the constraint has several multipliers
      that differ; the legend title gives each constraint's :func:`diagnose` status
      (``runaway``, ``satisfied``, ...) once the run is long enough to judge.
    * ``"violations"``: per constraint ``"{name} max violation"`` (solid) and
      ``"{name} mean violation"`` (dashed), with the feasibility line at 0.

    Each panel's legend stands to the right of its axes, so that it never hides the start
    of a run (where violations and losses are largest).

    Args:
        history: the records to draw.
        constraints: subset of constraint names (default: all).
        log: ``True`` for logarithmic y axes on every panel (``symlog`` where values may be
            zero or negative), ``False`` for linear ones. ``None`` (default) decides per
            panel from the drawn values (:func:`auto_scale`): a logarithmic axis when they
            span decades, e.g. the error of a gradient-matching run falling from 1 to
            1e-4, a linear one otherwise.
        ax, axes: existing Axes, one per panel (otherwise a new figure is made).
        path: also save the figure; the format comes from the suffix (``.png``, ``.svg``, ...).
            Under ``torch.distributed`` only rank 0 writes; other ranks return the figure
            without writing.
        x: ``"step"``, ``"epoch"`` or ``"wall_time"``.
        panels: which panels to draw, in order.
        title: figure title (only set on a new figure).
        dpi: resolution of raster exports.

    Returns:
        The figure holding the panels.
    """
    who = "plot_history"
    if not isinstance(history, History):
        raise InputValidationError(
            f"{who}: expected a History (got {type(history).__name__}). Pass trainer.history."
        )
    if len(history) == 0:
        raise InputValidationError(
            f"{who}: the history is empty (got 0 records). Train for at least one step first."
        )
    if x not in _X_LABELS:
        raise InputValidationError(f"{who}: x must be one of {list(_X_LABELS)} (got {x!r}).")
    if log is not None and not isinstance(log, bool):
        raise InputValidationError(
            f"{who}: log must be True, False or None for a per-panel choice (got {log!r})."
        )
    panels = list(panels)
    bad = [p for p in panels if p not in PANELS]
    if bad or not panels or len(set(panels)) != len(panels):
        raise InputValidationError(
            f"{who}: panels must be distinct names from {list(PANELS)} (got {panels})."
        )
    all_names = history.constraint_names
    names = list(all_names) if constraints is None else list(constraints)
    unknown = [n for n in names if n not in all_names]
    if unknown or isinstance(constraints, str):
        raise InputValidationError(
            f"{who}: unknown constraint(s) {unknown or [constraints]}. Pass a list drawn from "
            f"{all_names}."
        )

    given = _resolve_axes(ax, axes, len(panels), who, panels)
    if given is None:
        fig = Figure(figsize=(8.0, 2.8 * len(panels) + 0.4), layout="constrained")
        axs = list(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
        fig.suptitle(title if title is not None else "Training history")
    else:
        axs = given
        fig = _root_figure(axs[0])

    xs = np.asarray(history.column(x), dtype=float)
    colors = _colors()
    color_of = {n: colors[all_names.index(n) % len(colors)] for n in names}

    try:
        status = {n: h.status for n, h in diagnose(history).items()}
    except InputValidationError:  # e.g. unreadable constraint kinds in a loaded history's meta
        status = {}
    for panel, a in zip(panels, axs, strict=True):
        drawn: list[np.ndarray] = []
        legend_title = None
        if panel == "loss":
            loss = np.asarray(history.column("loss"), dtype=float)
            lag = np.asarray(history.column("lagrangian"), dtype=float)
            if np.any(np.isfinite(loss)):
                a.plot(xs, loss, color="k", label="loss")
                drawn.append(loss)
            a.plot(xs, lag, color="tab:gray", linestyle="--", label="lagrangian")
            drawn.append(lag)
            has_loss = bool(np.any(np.isfinite(loss)))
            a.set_title("Objective" if has_loss else "Objective (no loss: constraints only)")
            a.set_ylabel("value")
        elif panel == "multipliers":
            for n in names:
                s = history.constraint(n)
                mean = np.asarray(s["multiplier_mean"], dtype=float)
                lo = np.asarray(s["multiplier_min"], dtype=float)
                hi = np.asarray(s["multiplier_max"], dtype=float)
                a.plot(xs, mean, color=color_of[n], label=f"{n} mean multiplier")
                drawn.append(mean)
                ok = np.isfinite(lo) & np.isfinite(hi)
                if np.any(lo[ok] != hi[ok]):
                    a.fill_between(
                        xs,
                        lo,
                        hi,
                        color=color_of[n],
                        alpha=0.2,
                        linewidth=0,
                        label=f"{n} multiplier min–max",
                    )
                    drawn.extend([lo, hi])
            a.set_title("Lagrange multipliers")
            a.set_ylabel("multiplier")
            read = [f"{n}: {status[n]}" for n in names if status.get(n, "too-short") != "too-short"]
            if read:
                legend_title = "\n".join(["last half of the run (cg.diagnose):", *read])
        else:
            for n in names:
                s = history.constraint(n)
                vmax = np.asarray(s["violation_max"], dtype=float)
                vmean = np.asarray(s["violation_mean"], dtype=float)
                a.plot(xs, vmax, color=color_of[n], label=f"{n} max violation")
                a.plot(
                    xs,
                    vmean,
                    color=color_of[n],
                    linestyle="--",
                    alpha=0.8,
                    label=f"{n} mean violation",
                )
                drawn.extend([vmax, vmean])
            a.axhline(0.0, color="k", linewidth=0.8, linestyle=":", label="feasible (≤ 0)")
            a.set_title("Constraint violations (feasible ≤ 0)")
            a.set_ylabel("violation")
        if log and drawn:
            _set_log_scale(a, drawn if panel != "violations" else [*drawn, np.zeros(1)])
        elif log is None and drawn:
            scale, linthresh = auto_scale(drawn)
            if scale == "log":
                a.set_yscale("log")
            elif scale == "symlog":
                a.set_yscale("symlog", linthresh=linthresh)
        if a.get_yscale() != "linear":
            a.autoscale_view()  # the limits were set in linear units (margins, clipped tops)
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            _outside_right(a, title=legend_title)
    for a in axs if given is not None else axs[-1:]:
        a.set_xlabel(_X_LABELS[x])
    _save(fig, path, who, dpi)
    return fig


# -------------------------------------------------------------------- partial dependence
class PartialDependence(NamedTuple):
    """Partial dependence curves: ``grid (G,)``, ``mean (G, k)``, ``slope (G, k)``."""

    grid: np.ndarray
    mean: np.ndarray
    slope: np.ndarray
    outputs: list[int]
    input_index: int


def _module_modes(model: Any) -> dict[torch.nn.Module, bool]:
    if isinstance(model, torch.nn.Module):
        return {m: m.training for m in model.modules()}
    return {}


def partial_dependence(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_reference: torch.Tensor,
    input_index: int,
    *,
    output_index: int | None = 0,
    grid: int = 100,
    low: float | None = None,
    high: float | None = None,
    chunk_size: int = 65536,
) -> PartialDependence:
    r"""Average output and average derivative along input ``input_index`` (see module doc).

    For each of ``grid`` equally spaced values :math:`v \in [\text{low}, \text{high}]`
    (default: the range of the feature in ``x_reference``) feature ``j`` of every reference
    row is set to :math:`v`; the outputs (under ``torch.no_grad``) and the column
    :math:`\partial f/\partial x_j` (``jacobian_columns``, ``create_graph=False``) are averaged
    over the rows. The model runs in eval mode; the modes of all its modules are restored.
    At most ``chunk_size`` rows are evaluated at once.
    """
    who = "plot_partial_dependence"
    if not isinstance(x_reference, torch.Tensor):
        raise InputValidationError(
            f"{who}: x_reference must be a torch.Tensor of shape (N, d) "
            f"(got {type(x_reference).__name__}). Convert with torch.as_tensor(x)."
        )
    if x_reference.dim() != 2 or x_reference.shape[0] == 0 or x_reference.shape[1] == 0:
        raise InputValidationError(
            f"{who}: x_reference must have shape (N, d) with N, d >= 1 "
            f"(got {tuple(x_reference.shape)}). Pass a batch of reference rows."
        )
    if not x_reference.is_floating_point():
        raise InputValidationError(
            f"{who}: x_reference must be floating point (got {x_reference.dtype}). "
            "Cast with x.float()."
        )
    n_rows, d = x_reference.shape
    if isinstance(input_index, bool) or not isinstance(input_index, int):
        raise InputValidationError(f"{who}: input_index must be an int (got {input_index!r}).")
    if not -d <= input_index < d:
        raise InputValidationError(
            f"{who}: input_index {input_index} is out of range for {d} inputs. "
            f"Use an index in [0, {d - 1}]."
        )
    j = input_index % d
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise InputValidationError(f"{who}: grid must be an int >= 2 (got {grid!r}).")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputValidationError(
            f"{who}: chunk_size must be a positive int (got {chunk_size!r})."
        )
    x = x_reference.detach()
    col = x[:, j]
    lo = float(col.min()) if low is None else float(low)
    hi = float(col.max()) if high is None else float(high)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise InputValidationError(
            f"{who}: need finite low < high for the grid of input {j} (got low={lo}, "
            f"high={hi}). Pass low= and high= explicitly (the feature may be constant)."
        )
    values = torch.linspace(lo, hi, grid, dtype=x.dtype, device=x.device)
    per_chunk = max(1, chunk_size // n_rows)

    modes = _module_modes(model)
    for m in modes:
        m.eval()
    means: list[torch.Tensor] = []
    slopes: list[torch.Tensor] = []
    outs: list[int] = []
    try:
        for start in range(0, grid, per_chunk):
            v = values[start : start + per_chunk]
            c = v.shape[0]
            xb = x.unsqueeze(0).repeat(c, 1, 1)
            xb[:, :, j] = v[:, None]
            xb = xb.reshape(c * n_rows, d)
            with torch.no_grad():
                y = model(xb)
            if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != c * n_rows:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise InputValidationError(
                    f"{who}: the model must map (B, d) to (B, ...) (got output {shape} for "
                    f"input {(c * n_rows, d)}). Do not reduce over the batch inside the model."
                )
            y = y.reshape(c * n_rows, -1)
            if not outs:
                outs = _check_outputs(output_index, y.shape[1], who)
            means.append(y[:, outs].reshape(c, n_rows, -1).mean(dim=1))
            cols = jacobian_columns(model, xb, [j], create_graph=False)  # (cN, m, 1)
            slopes.append(cols.detach()[:, outs, 0].reshape(c, n_rows, -1).mean(dim=1))
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return PartialDependence(
        grid=_to_numpy(values),
        mean=_to_numpy(torch.cat(means)),
        slope=_to_numpy(torch.cat(slopes)),
        outputs=outs,
        input_index=j,
    )


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _check_outputs(output_index: int | None, m: int, who: str) -> list[int]:
    if output_index is None:
        return list(range(m))
    if isinstance(output_index, bool) or not isinstance(output_index, int):
        raise InputValidationError(
            f"{who}: output_index must be an int or None for all outputs (got {output_index!r})."
        )
    if not -m <= output_index < m:
        raise InputValidationError(
            f"{who}: output_index {output_index} is out of range for a model with {m} "
            f"output(s). Use an index in [0, {m - 1}] or None for all outputs."
        )
    return [output_index % m]


def sign_runs(
    grid: np.ndarray, slope: np.ndarray, tol: float = 0.0
) -> list[tuple[float, float, bool]]:
    """Contiguous runs ``(x0, x1, negative)`` of slope sign along ``grid``.

    A grid point is *negative* when ``slope < -tol`` and *non-negative* when
    ``slope >= -tol``; NaN slopes belong to no run. Runs meet halfway between grid points.
    """
    cat = np.where(np.isnan(slope), -1, (slope < -tol).astype(int))
    runs: list[tuple[float, float, bool]] = []
    g = len(grid)
    a = 0
    while a < g:
        b = a
        while b + 1 < g and cat[b + 1] == cat[a]:
            b += 1
        if cat[a] >= 0:
            x0 = grid[0] if a == 0 else 0.5 * (grid[a - 1] + grid[a])
            x1 = grid[-1] if b == g - 1 else 0.5 * (grid[b] + grid[b + 1])
            runs.append((float(x0), float(x1), bool(cat[a] == 1)))
        a = b + 1
    return runs


def _pd_legend_entries(
    ax_pd: Axes, ax_d: Axes, outputs: Sequence[int], colors: Sequence[str]
) -> tuple[list[Any], list[str]]:
    """Legend entries of both panels, once each; with several outputs one entry per output
    (its colour is the same in both panels) and one for the forbidden slope sign."""
    handles: list[Any] = []
    labels: list[str] = []
    for a in (ax_pd, ax_d):
        for handle, label in zip(*a.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if len(outputs) == 1:
        return handles, labels
    per_output = [
        (Line2D([], [], color=colors[c % len(colors)]), f"output {i}")
        for c, i in enumerate(outputs)
    ]
    forbidden = sorted({lab.split(" ", 2)[2] for lab in labels if " slope " in lab})
    sign = [
        (Line2D([], [], color=_NEG_COLOR, linewidth=4, alpha=0.45), f"{bad} (any output)")
        for bad in forbidden
    ]
    rest = [
        (h, lab) for h, lab in zip(handles, labels, strict=True) if not lab.startswith("output ")
    ]
    entries = [*per_output, *sign, *rest]
    return [h for h, _ in entries], [lab for _, lab in entries]


def plot_partial_dependence(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_reference: torch.Tensor,
    input_index: int,
    *,
    output_index: int | None = 0,
    grid: int = 100,
    low: float | None = None,
    high: float | None = None,
    path: str | os.PathLike[str] | None = None,
    feature_name: str | None = None,
    axes: Any = None,
    tol: float = 0.0,
    chunk_size: int = 65536,
    dpi: float = 120,
    direction: str = "increasing",
) -> Figure:
    """Partial dependence of the model on one input, with the sign of its slope.

    Top panel: one line ``"output {i} partial dependence"`` per output; where the mean
    slope is negative the curve is overdrawn (``"output {i} slope < 0"``) and, for a single
    output, the background is shaded red (negative slope, gid ``"slope_negative"``) or green
    (non-negative, gid ``"slope_nonnegative"``). A rug marks the reference values of the
    feature. Bottom panel: the mean derivative ``"output {i} mean derivative"`` with the
    zero line and its negative part filled.

    The legend stands below both panels (beside the top one when ``axes`` are given), so
    that it covers neither curves nor axis labels; with several outputs it has one entry
    per output colour, shared by both panels.

    Args:
        model: module or function mapping ``(B, d)`` to ``(B, ...)``.
        x_reference: reference rows ``(N, d)`` (e.g. a data sample).
        input_index: the feature ``j`` to vary.
        output_index: the (flattened) output to show, or None for all.
        grid, low, high: the grid of feature values (default range: the data's).
        path: also save the figure; the format comes from the suffix. Under
            ``torch.distributed`` only rank 0 writes; other ranks return the figure without
            writing.
        feature_name: axis label for the feature (default ``x[j]``).
        axes: two existing Axes (partial dependence, derivative).
        tol: slopes in ``[-tol, 0)`` count as non-negative.
        chunk_size: most rows evaluated at once.
        dpi: resolution of raster exports.
        direction: the sign the constraint asks for. ``"increasing"`` (default) marks
            negative slopes in red as violations; ``"decreasing"`` marks positive slopes
            (labels ``"output {i} slope > 0"``) and shades negative runs green.
    """
    if direction not in ("increasing", "decreasing"):
        raise InputValidationError(
            f"plot_partial_dependence: direction must be 'increasing' "
            f"or 'decreasing' (got {direction!r})."
        )
    decreasing = direction == "decreasing"
    who = "plot_partial_dependence"
    given = _resolve_axes(None, axes, 2, who, ["partial dependence", "derivative"])
    pd = partial_dependence(
        model,
        x_reference,
        input_index,
        output_index=output_index,
        grid=grid,
        low=low,
        high=high,
        chunk_size=chunk_size,
    )
    j = pd.input_index
    feature = feature_name if feature_name is not None else f"x[{j}]"
    if given is None:
        fig = Figure(figsize=(7.0, 5.5), layout="constrained")
        ax_pd, ax_d = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        fig.suptitle(f"Partial dependence on {feature}")
    else:
        ax_pd, ax_d = given
        fig = _root_figure(ax_pd)
    colors = _colors()
    single = len(pd.outputs) == 1
    for c, i in enumerate(pd.outputs):
        color = colors[c % len(colors)]
        mean, slope = pd.mean[:, c], pd.slope[:, c]
        neg = slope > tol if decreasing else slope < -tol  # the sign the constraint forbids
        bad = "slope > 0" if decreasing else "slope < 0"
        ax_pd.plot(pd.grid, mean, color=color, label=f"output {i} partial dependence")
        if np.any(neg):
            ax_pd.plot(
                pd.grid,
                np.where(neg, mean, np.nan),
                color=_NEG_COLOR,
                linewidth=4,
                alpha=0.45,
                solid_capstyle="round",
                zorder=1.9,
                label=f"output {i} {bad}",
            )
        ax_d.plot(pd.grid, slope, color=color, label=f"output {i} mean derivative")
        if np.any(neg):
            ax_d.fill_between(
                pd.grid,
                0.0,
                slope,
                where=neg,
                interpolate=True,
                color=_NEG_COLOR,
                alpha=0.3,
                linewidth=0,
                label=f"output {i} {bad}",
            )
    if single:
        seen: set[bool] = set()
        for x0, x1, negative in sign_runs(pd.grid, pd.slope[:, 0], tol):
            label = ("slope < 0" if negative else "slope ≥ 0") if negative not in seen else None
            seen.add(negative)
            span = ax_pd.axvspan(
                x0,
                x1,
                color=_NEG_COLOR if negative != decreasing else _POS_COLOR,
                alpha=0.12 if negative != decreasing else 0.07,
                linewidth=0,
                label=label if label is not None else "_nolegend_",
            )
            span.set_gid("slope_negative" if negative else "slope_nonnegative")
    xj = x_reference.detach()[:, j].to("cpu", torch.float64).numpy()
    xj = xj[(xj >= pd.grid[0]) & (xj <= pd.grid[-1])]
    if xj.size > 2000:
        xj = xj[np.linspace(0, xj.size - 1, 2000).astype(int)]
    if xj.size:
        ax_pd.plot(
            xj,
            np.zeros_like(xj),
            "|",
            color="k",
            alpha=0.3,
            markersize=8,
            transform=ax_pd.get_xaxis_transform(),
            label="reference data",
        )
    ax_d.axhline(0.0, color="k", linewidth=0.8, linestyle=":", label="zero slope")
    ax_pd.set_ylabel("mean output")
    ax_pd.set_title(f"Average model output as {feature} varies")
    ax_d.set_ylabel(f"mean ∂f/∂{feature}")
    ax_d.set_xlabel(feature)
    for a in (ax_pd, ax_d):
        a.grid(True, alpha=0.3)
    handles, labels = _pd_legend_entries(ax_pd, ax_d, pd.outputs, colors)
    ncols = min(3 if single else 4, len(labels))
    if given is None:  # our own figure: one legend for both panels, below them
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")
    else:  # the caller's layout: beside the top panel, never over the data or the labels
        ax_pd.legend(
            handles,
            labels,
            fontsize="small",
            ncols=1,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
        )
    ax_pd.set_xlim(pd.grid[0], pd.grid[-1])
    _save(fig, path, who, dpi)
    return fig


# --------------------------------------------------------------------- certified training
def plot_proof(
    history: History,
    *,
    path: str | os.PathLike[str] | None = None,
    dpi: float = 120,
) -> Figure:
    """Certified training over time: per constraint over :class:`~constrained_grad.Cells`,
    the number of cells and of cells whose training bound holds (top), and the worst bound
    violation over the cells (bottom, ``<= 0``: every cell holds), with the steps at which
    :class:`~constrained_grad.Prover` checks proved the constraints marked.

    Reads the ``cells/<name>/...`` and ``proof/certified`` evaluations the prover logs.

    Raises:
        InputValidationError: the history has no such evaluations (train with a
            ``cg.Prover`` callback and a constraint ``where=cg.Cells(...)``).
    """
    who = "plot_proof"
    if not isinstance(history, History):
        raise InputValidationError(f"{who}: expects a cg.History (got {type(history).__name__}).")
    keys = sorted({k for e in history.evals for k in e.metrics if k.startswith("cells/")})
    names = sorted({k.split("/")[1] for k in keys})
    if not names:
        raise InputValidationError(
            f"{who}: the history has no cell statistics. Train with a constraint "
            "where=cg.Cells(box) and a cg.Prover(...) callback, which logs them."
        )
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    colors = _colors()
    for k, name in enumerate(names):
        c = colors[k % len(colors)]
        s, n = history.eval_series(f"cells/{name}/cells")
        top.plot(s, n, color=c, label=f"{name}: cells")
        s, p = history.eval_series(f"cells/{name}/proved")
        top.plot(s, p, color=c, linestyle="--", label=f"{name}: bound holds")
        s, w = history.eval_series(f"cells/{name}/worst_bound")
        bottom.plot(s, w, color=c, label=name)
    steps, proved = history.eval_series("proof/certified")
    for step, ok in zip(steps, proved, strict=True):
        for ax in (top, bottom):
            ax.axvline(step, color="tab:green" if ok else "tab:red", alpha=0.25, linewidth=1)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    top.set_ylabel("cells")
    bottom.set_ylabel("worst bound violation")
    bottom.set_xlabel("step")
    top.set_title("Certified training (green: proved at a check, red: not proved)")
    _outside_right(top)
    _outside_right(bottom)
    _save(fig, path, who, dpi)
    return fig
