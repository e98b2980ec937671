"""Plots: the drawn data equals the history / the analytic partial dependence; files are valid."""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from constrained_grad.errors import InputValidationError
from constrained_grad.history.health import diagnose as cg_diagnose
from constrained_grad.history.plots import (
    auto_scale,
    partial_dependence,
    plot_history,
    plot_partial_dependence,
    sign_runs,
)
from constrained_grad.history.record import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_history(n: int = 30, seed: int = 0) -> History:
    """'many' has several distinct multipliers (min < max); 'one' a single multiplier."""
    rng = random.Random(seed)
    h = History(["many", "one"])
    for s in range(n):
        row = [math.nan if s < 2 else 1.0 / (s + 1), 2.0 / (s + 1)]
        for name in ("many", "one"):
            vmean = rng.gauss(0.0, 1.0) * math.exp(-s / 10)
            lam = 0.1 * s + rng.random()
            lo, hi = (0.0, 2 * lam) if name == "many" else (lam, lam)
            row += [vmean, vmean + rng.random(), rng.random(), lam, hi, lo, lam, hi]
        h.log_step(3 * s, s // 10, 0.5 * s, row)
    return h


def lines_by_label(ax) -> dict:
    return {ln.get_label(): ln for ln in ax.get_lines()}


def collections_by_label(ax) -> dict:
    return {c.get_label(): c for c in ax.collections}


def test_history_plot_draws_exactly_the_recorded_series():
    h = make_history()
    fig = plot_history(h)
    assert isinstance(fig, Figure)
    ax_loss, ax_mult, ax_viol = fig.axes[:3]
    steps = np.array(h.steps, dtype=float)

    loss = lines_by_label(ax_loss)
    np.testing.assert_array_equal(loss["loss"].get_xdata(), steps)
    np.testing.assert_array_equal(loss["loss"].get_ydata(), h.column("loss"))  # NaN too
    np.testing.assert_array_equal(loss["lagrangian"].get_ydata(), h.column("lagrangian"))

    mult = lines_by_label(ax_mult)
    viol = lines_by_label(ax_viol)
    for name in ("many", "one"):
        c = h.constraint(name)
        np.testing.assert_array_equal(mult[f"{name} mean multiplier"].get_xdata(), steps)
        np.testing.assert_array_equal(
            mult[f"{name} mean multiplier"].get_ydata(), c["multiplier_mean"]
        )
        np.testing.assert_array_equal(viol[f"{name} max violation"].get_ydata(), c["violation_max"])
        np.testing.assert_array_equal(
            viol[f"{name} mean violation"].get_ydata(), c["violation_mean"]
        )
        # one colour per constraint across panels
        assert (
            mult[f"{name} mean multiplier"].get_color() == viol[f"{name} max violation"].get_color()
        )

    # min–max band only for the constraint with several, different multipliers
    bands = collections_by_label(ax_mult)
    assert set(bands) == {"many multiplier min–max"}
    verts = bands["many multiplier min–max"].get_paths()[0].vertices
    c = h.constraint("many")
    assert np.isclose(verts[:, 1].max(), max(c["multiplier_max"]))
    assert np.isclose(verts[:, 1].min(), min(c["multiplier_min"]))

    zero = viol["feasible (≤ 0)"]
    np.testing.assert_array_equal(zero.get_ydata(), [0.0, 0.0])
    for ax in (ax_loss, ax_mult, ax_viol):
        assert ax.get_legend() is not None and ax.get_title()
    assert ax_viol.get_xlabel() == "step"
    assert fig.get_suptitle() == "Training history"


def test_multiplier_legend_title_gives_the_diagnosis():
    h = make_history()
    expected = {n: r.status for n, r in cg_diagnose(h).items()}
    title = plot_history(h).axes[1].get_legend().get_title().get_text()
    assert title.splitlines() == ["last half of the run (cg.diagnose):"] + [
        f"{n}: {expected[n]}" for n in h.constraint_names
    ]
    # a run too short to judge gets no title rather than "too-short" for every constraint
    short = History(["c"])
    short.log_step(0, 0, 0.0, [1.0, 1.0, 0.1, 0.2, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert plot_history(short).axes[1].get_legend().get_title().get_text() == ""


def test_history_plot_x_axis_subset_and_log():
    h = make_history()
    fig = plot_history(
        h, constraints=["one"], x="wall_time", log=True, panels=("violations", "multipliers")
    )
    ax_viol, ax_mult = fig.axes[:2]
    viol = lines_by_label(ax_viol)
    assert "many max violation" not in viol
    np.testing.assert_array_equal(viol["one max violation"].get_xdata(), h.wall_times)
    assert ax_viol.get_yscale() == "symlog"  # violations can be negative
    assert ax_mult.get_yscale() == "log"  # 'one' multipliers are all positive
    assert ax_mult.get_xlabel() == "wall time [s]"

    fig = plot_history(h, log=True, panels=("loss", "multipliers"))
    assert fig.axes[0].get_yscale() == "log"  # loss/lagrangian positive (NaN ignored)
    assert fig.axes[1].get_yscale() == "symlog"  # 'many' has multipliers equal to 0


def test_history_plot_into_given_axes():
    h = make_history(5)
    fig = Figure()
    axs = fig.subplots(1, 3)
    out = plot_history(h, axes=axs, x="epoch")
    assert out is fig
    np.testing.assert_array_equal(lines_by_label(axs[2])["one max violation"].get_xdata(), h.epochs)
    fig1 = Figure()
    ax = fig1.subplots()
    assert plot_history(h, ax=ax, panels=["loss"]) is fig1
    assert set(lines_by_label(ax)) == {"loss", "lagrangian"}


def test_history_plot_without_loss_draws_lagrangian_only():
    h = History(["c"])
    for s in range(3):
        h.log_step(s, 0, 0.0, [math.nan, 1.0 + s] + [0.5] * 8)
    ax = plot_history(h).axes[0]
    assert set(lines_by_label(ax)) == {"lagrangian"}
    assert "no loss" in ax.get_title()  # says so instead of an empty NaN series
    assert "no loss" not in plot_history(make_history()).axes[0].get_title()


def test_png_and_svg_export(tmp_path):
    h = make_history()
    png = tmp_path / "history.png"
    fig = plot_history(h, path=png, dpi=50)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(png)
    width, height = fig.get_size_inches() * 50
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert abs(img.shape[0] - height) <= 1 and abs(img.shape[1] - width) <= 1

    svg = tmp_path / "history.SVG"
    plot_history(h, path=svg)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "many max violation" in svg.read_text()  # legend text is in the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.SVG", "history.png"]


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda h: plot_history(History(["a"])), "history is empty"),
        (lambda h: plot_history(h, constraints=["nope"]), "unknown constraint"),
        (lambda h: plot_history(h, constraints="many"), "unknown constraint"),
        (lambda h: plot_history(h, x="time"), "x must be one of"),
        (lambda h: plot_history(h, panels=["loss", "loss"]), "panels must be distinct"),
        (lambda h: plot_history(h, panels=["weights"]), "panels must be distinct"),
        (lambda h: plot_history(h, ax=Figure().subplots()), "expected 3 matplotlib Axes"),
        (lambda h: plot_history(h, path="history.xyz"), "cannot infer an image format"),
        (lambda h: plot_history(h.to_dict()), "expected a History"),
    ],
)
def test_history_plot_errors(call, pattern):
    with pytest.raises(InputValidationError, match=pattern):
        call(make_history(4))


# ------------------------------------------------------------------ partial dependence
def linear_model(weight: list[float], bias: float = 0.25) -> torch.nn.Linear:
    lin = torch.nn.Linear(len(weight), 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([weight], dtype=torch.float64))
        lin.bias.fill_(bias)
    return lin


@pytest.mark.parametrize("w1", [-1.5, 0.75])
def test_partial_dependence_of_linear_model_is_analytic(w1):
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    w = [0.5, w1, -2.0]
    model = linear_model(w)
    fig = plot_partial_dependence(model, x, 1, grid=25, feature_name="dose")
    ax_pd, ax_d = fig.axes[:2]
    g = np.linspace(x[:, 1].min().item(), x[:, 1].max().item(), 25)
    # PD(v) = w1 v + mean_n(w0 x_n0 + w2 x_n2) + b
    offset = (0.5 * x[:, 0] - 2.0 * x[:, 2]).mean().item() + 0.25
    pd_line = lines_by_label(ax_pd)["output 0 partial dependence"]
    np.testing.assert_allclose(pd_line.get_xdata(), g, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pd_line.get_ydata(), w1 * g + offset, rtol=0, atol=1e-12)
    slope = lines_by_label(ax_d)["output 0 mean derivative"]
    np.testing.assert_allclose(slope.get_ydata(), np.full(25, w1), rtol=0, atol=1e-12)
    assert ax_d.get_xlabel() == "dose"

    spans = [p for p in ax_pd.patches if p.get_gid() in ("slope_negative", "slope_nonnegative")]
    assert len(spans) == 1  # constant slope: one region over the whole range
    expected_gid = "slope_negative" if w1 < 0 else "slope_nonnegative"
    assert spans[0].get_gid() == expected_gid
    assert spans[0].get_x() == pytest.approx(g[0]) and spans[0].get_width() == pytest.approx(
        g[-1] - g[0]
    )
    overlay = lines_by_label(ax_pd).get("output 0 slope < 0")
    assert (overlay is not None) == (w1 < 0)
    if overlay is not None:
        np.testing.assert_array_equal(overlay.get_ydata(), pd_line.get_ydata())
    assert ("output 0 slope < 0" in collections_by_label(ax_d)) == (w1 < 0)
    np.testing.assert_array_equal(lines_by_label(ax_d)["zero slope"].get_ydata(), [0.0, 0.0])


class Quadratic(torch.nn.Module):
    """f(x) = (x_0 - c)^2 + x_1: slope 2 (v - c) along input 0, negative for v < c."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return (self.scale * (x[:, :1] - self.c) ** 2 + x[:, 1:2]).squeeze(1)


def test_sign_shading_follows_the_slope_of_a_quadratic():
    torch.manual_seed(1)
    x = torch.randn(10, 2, dtype=torch.float64)
    c = 0.3
    fig = plot_partial_dependence(Quadratic(c), x, 0, low=-1.0, high=2.0, grid=31)
    ax_pd, ax_d = fig.axes[:2]
    g = np.linspace(-1.0, 2.0, 31)
    np.testing.assert_allclose(
        lines_by_label(ax_d)["output 0 mean derivative"].get_ydata(),
        2 * (g - c),
        rtol=0,
        atol=1e-12,
    )
    overlay = lines_by_label(ax_pd)["output 0 slope < 0"].get_ydata()
    np.testing.assert_array_equal(np.isfinite(overlay), 2 * (g - c) < 0)
    spans = sorted((p for p in ax_pd.patches if p.get_gid()), key=lambda p: p.get_x())
    assert [p.get_gid() for p in spans] == ["slope_negative", "slope_nonnegative"]
    boundary = spans[0].get_x() + spans[0].get_width()
    assert spans[1].get_x() == pytest.approx(boundary)
    # the sign changes between the grid points around c = 0.3 (0.2 and 0.3 -> midpoint 0.25)
    assert boundary == pytest.approx(0.25)
    assert spans[0].get_x() == pytest.approx(-1.0)
    assert spans[1].get_x() + spans[1].get_width() == pytest.approx(2.0)


def test_sign_runs():
    g = np.arange(6.0)
    s = np.array([-1.0, -2.0, 0.0, 1.0, np.nan, -1.0])
    assert sign_runs(g, s) == [(0.0, 1.5, True), (1.5, 3.5, False), (4.5, 5.0, True)]
    assert sign_runs(g, s, tol=1.5) == [
        (0.0, 0.5, False),
        (0.5, 1.5, True),
        (1.5, 3.5, False),
        (4.5, 5.0, False),
    ]


def test_partial_dependence_of_mlp_matches_brute_force_and_finite_differences():
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    ).double()
    x = torch.randn(15, 3, dtype=torch.float64)
    res = partial_dependence(model, x, 2, output_index=None, grid=41, low=-1.0, high=1.0)
    assert res.outputs == [0, 1] and res.mean.shape == (41, 2) and res.slope.shape == (41, 2)
    with torch.no_grad():
        for k in (0, 17, 40):
            xv = x.clone()
            xv[:, 2] = res.grid[k]
            np.testing.assert_allclose(res.mean[k], model(xv).mean(0).numpy(), rtol=0, atol=1e-12)
    # the mean derivative is the derivative of the mean: compare with central differences
    eps = 1e-6
    for k in (3, 20, 37):
        plus, minus = x.clone(), x.clone()
        plus[:, 2] = res.grid[k] + eps
        minus[:, 2] = res.grid[k] - eps
        with torch.no_grad():
            fd = ((model(plus) - model(minus)).mean(0) / (2 * eps)).numpy()
        np.testing.assert_allclose(res.slope[k], fd, rtol=0, atol=1e-7)
    # chunking does not change the result
    small = partial_dependence(
        model, x, 2, output_index=None, grid=41, low=-1.0, high=1.0, chunk_size=20
    )
    np.testing.assert_array_equal(small.mean, res.mean)
    np.testing.assert_allclose(small.slope, res.slope, rtol=0, atol=1e-14)
    # all outputs are drawn
    fig = plot_partial_dependence(model, x, 2, output_index=None, grid=41, low=-1.0, high=1.0)
    labels = set(lines_by_label(fig.axes[0]))
    assert {"output 0 partial dependence", "output 1 partial dependence"} <= labels
    np.testing.assert_array_equal(
        lines_by_label(fig.axes[1])["output 1 mean derivative"].get_ydata(), res.slope[:, 1]
    )
    assert not any(p.get_gid() for p in fig.axes[0].patches)  # no background for many outputs


class ModeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 1)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training or self.inner.training)
        return self.inner(x)


def test_model_runs_in_eval_mode_and_modes_are_restored(tmp_path):
    model = ModeRecorder()
    model.train()
    model.inner.eval()  # mixed modes must come back exactly
    x = torch.randn(5, 2)
    path = tmp_path / "pd.png"
    plot_partial_dependence(model, x, 0, grid=5, path=path)
    assert model.seen and not any(model.seen)
    assert model.training and not model.inner.training
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert all(p.grad is None for p in model.parameters())  # no stray gradients

    def broken(x):
        raise RuntimeError("boom")

    class Failing(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    failing = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        plot_partial_dependence(failing, x, 0)
    assert failing.training  # restored on error too
    with pytest.raises(RuntimeError, match="boom"):
        plot_partial_dependence(broken, x, 0)


def test_partial_dependence_svg(tmp_path):
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    plot_partial_dependence(linear_model([1.0, -1.0]).float(), x, 1, path=tmp_path / "pd.svg")
    assert ET.parse(tmp_path / "pd.svg").getroot().tag.endswith("svg")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"x_reference": np.zeros((4, 2))}, "must be a torch.Tensor"),
        ({"x_reference": torch.zeros(4)}, r"shape \(N, d\)"),
        ({"x_reference": torch.zeros(0, 2)}, r"shape \(N, d\)"),
        ({"x_reference": torch.zeros(4, 2, dtype=torch.long)}, "floating point"),
        ({"input_index": 2}, "out of range for 2 inputs"),
        ({"input_index": 1.0}, "input_index must be an int"),
        ({"output_index": 1}, "out of range for a model with 1 output"),
        ({"grid": 1}, "grid must be an int >= 2"),
        ({"low": 1.0, "high": 1.0}, "finite low < high"),
        ({"x_reference": torch.ones(4, 2)}, "feature may be constant"),
        ({"path": "pd.txt"}, "cannot infer an image format"),
        ({"axes": [Figure().subplots()]}, "expected 2 matplotlib Axes"),
    ],
)
def test_partial_dependence_errors(kwargs, pattern):
    args = {
        "model": linear_model([1.0, 2.0]).float(),
        "x_reference": torch.randn(4, 2, generator=torch.Generator().manual_seed(0)),
        "input_index": 0,
    }
    args.update(kwargs)
    with pytest.raises(InputValidationError, match=pattern):
        plot_partial_dependence(**args)


def test_partial_dependence_rejects_batch_reducing_model():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputValidationError, match="must map"):
        plot_partial_dependence(lambda t: t.sum(), x, 0)


# ----------------------------------------------------------- legends and default y scales
def _drawn(fig: Figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _legends(fig: Figure) -> list:
    return [*fig.legends, *(a.get_legend() for a in fig.axes if a.get_legend() is not None)]


def _label_boxes(ax, renderer) -> list:
    texts = [ax.xaxis.label, ax.yaxis.label, ax.title]
    texts += [t.label1 for t in ax.yaxis.get_major_ticks() if t.label1.get_visible()]
    texts += [t.label1 for t in ax.xaxis.get_major_ticks() if t.label1.get_visible()]
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]


def test_partial_dependence_legend_of_eight_outputs_covers_no_axes_or_labels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    x = torch.randn(200, 3)
    fig = plot_partial_dependence(model, x, 2, output_index=None)
    renderer = _drawn(fig)
    legends = _legends(fig)
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))
        for label in _label_boxes(ax, renderer):
            assert not box.overlaps(label), label
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert [f"output {i}" for i in range(8)] == texts[:8]  # one entry per output colour
    assert "slope < 0 (any output)" in texts


def test_partial_dependence_legend_into_given_axes_stands_beside_them():
    fig = Figure(figsize=(9, 6), layout="constrained")
    axes = fig.subplots(2, 1)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(2))
    plot_partial_dependence(linear_model([1.0, -1.0]).float(), x, 1, axes=axes)
    renderer = _drawn(fig)
    (legend,) = _legends(fig)
    for ax in axes:
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_history_legends_stand_outside_the_panels():
    h = History(["a", "b", "c"])
    for s in range(100):  # violations largest at the start, where an inside legend sat
        row = [1.0 / (s + 1), 2.0 / (s + 1)]
        for k in range(3):
            v = (2.0 + k) * math.exp(-s / 15) - 0.3
            lam = 0.05 * min(s, 40) * (k + 1)
            row += [v, v + 0.5, 0.1, lam, lam, lam, lam, lam]
        h.log_step(s, 0, 0.1 * s, row)
    fig = plot_history(h)
    renderer = _drawn(fig)
    legends = _legends(fig)
    assert len(legends) == 3
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert fig.bbox.contains(box.x1, box.y1)
        assert not any(box.overlaps(b) for b in boxes)


def _matching_history(n: int = 200, tol: float = 1e-4) -> History:
    """A gradient-matching run: error mse falls 1 -> 1e-6, violation mse - tol settles at -tol."""
    h = History(["grad_match"])
    for s in range(n):
        mse = 10.0 ** (-6.0 * s / (n - 1))
        lam = 8.0 * (1.0 - math.exp(-s / 5))
        h.log_step(
            s, 0, 0.0, [mse, mse + lam * (mse - tol), mse - tol, 2 * mse - tol, 0.0] + [lam] * 5
        )
    return h


def test_gradient_matching_history_gets_log_scales_by_default():
    fig = plot_history(_matching_history())
    ax_loss, ax_mult, ax_viol = fig.axes[:3]
    assert ax_loss.get_yscale() == "symlog"  # the Lagrangian ends at about -8 * tol
    loss_only = plot_history(_matching_history(), panels=("loss",))
    assert loss_only.axes[0].get_yscale() == "symlog"
    assert auto_scale([np.asarray(_matching_history().column("loss"))]) == ("log", None)
    assert ax_mult.get_yscale() == "linear"  # rises to 8 and levels off
    assert ax_viol.get_yscale() == "symlog"  # 1 -> about -1e-4: decades, then around 0
    assert ax_viol.yaxis.get_transform().linthresh == pytest.approx(1e-4)
    lo, hi = ax_viol.get_ylim()  # limits follow the data in the new scale
    assert lo < -9e-5 and lo > -1e-3 and hi >= 2.0
    # forced choices still win
    assert plot_history(_matching_history(), log=False).axes[2].get_yscale() == "linear"
    assert plot_history(make_history()).axes[2].get_yscale() == "linear"  # no decades
    with pytest.raises(InputValidationError, match="log must be True, False or None"):
        plot_history(make_history(), log="yes")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([np.geomspace(1.0, 1e-3, 50)], ("log", None)),  # max/min = 1000
        ([np.geomspace(1.0, 0.02, 50)], ("linear", None)),  # max/min = 50
        ([np.r_[np.geomspace(3.0, 1e-3, 25), np.full(25, -2e-3)]], ("symlog", 1e-3)),
        ([np.r_[np.linspace(3.0, -0.3, 25), np.full(25, -0.3)]], ("linear", None)),  # slack
        ([np.r_[np.linspace(3.0, 0.0, 25), np.zeros(25)]], ("linear", None)),  # exactly 0
        ([np.array([np.nan, 5.0])], ("linear", None)),
    ],
)
def test_auto_scale_rule(values, expected):
    scale, linthresh = auto_scale(values)
    assert scale == expected[0]
    assert linthresh == (None if expected[1] is None else pytest.approx(expected[1]))


def test_auto_scale_on_a_real_gradient_matching_fit():
    import constrained_grad as cg

    torch.manual_seed(0)
    x = torch.cartesian_prod(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8))
    grads = torch.stack([2 * x[:, 0], -x[:, 1]], dim=1)  # V = x0^2 - x1^2 / 2
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    match = cg.GradientMatch(targets="y", normalize=True, tolerance=1e-4, name="match")
    problem = cg.DerivativeProblem(model, None, [match], seed=0)
    result = cg.fit(
        problem,
        [(x, grads)],
        torch.optim.Adam(model.parameters(), lr=1e-2),
        dual_lr=1.0,
        epochs=300,
        progress=False,
    )
    viol = np.asarray(result.history.constraint("match")["violation_max"], dtype=float)
    assert viol[0] > 100 * np.abs(viol[len(viol) // 2 :]).max()  # the run does span decades
    assert plot_history(result.history).axes[2].get_yscale() in ("log", "symlog")
