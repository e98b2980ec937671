"""Sound bounds of Jacobian columns over boxes (derivatives/bounds.py), against float64
autograd at dense samples of every cell: containment for ReLU, LeakyReLU, tanh, sigmoid and
softplus MLPs in float32 and float64, plain and sound; the intersection of the forward and
reverse enclosures (and the mean-value form) never looser than the forward one alone;
gradients of the bound reach every weight and match finite differences."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from constrained_grad.derivatives.bounds import (
    cell_values,
    column_bounds,
    network_layers,
)
from constrained_grad.errors import CertificationError, InputValidationError

D, M = 3, 2  # inputs, outputs
ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "leaky_relu_negative": lambda: nn.LeakyReLU(-0.3),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=2.0),  # the threshold is crossed
}


def _mlp(act: str, seed: int, width: int = 8, scale: float = 1.5) -> nn.Sequential:
    """A D-width-width-M MLP with weights scaled up so that activations reach their tails."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(D, width), ACTS[act](), nn.Linear(width, width), ACTS[act](), nn.Linear(width, M)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def _grid_cells(splits: int, low: float = -1.0, high: float = 1.0) -> tuple[torch.Tensor, ...]:
    """A splits^D grid partition of [low, high]^D, float64."""
    edges = torch.linspace(low, high, splits + 1, dtype=torch.float64)
    idx = torch.cartesian_prod(*[torch.arange(splits)] * D)
    return edges[idx], edges[idx + 1]


def _random_cells(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random boxes inside [-1, 1]^D of widths from 1e-3 to 2, float64."""
    g = torch.Generator().manual_seed(seed)
    width = 10 ** (torch.rand(n, D, generator=g, dtype=torch.float64) * 3 - 3) * 2
    lo = -1 + torch.rand(n, D, generator=g, dtype=torch.float64) * (2 - width)
    return lo, lo + width


def _samples(lo: torch.Tensor, hi: torch.Tensor, per: int, seed: int) -> torch.Tensor:
    """(N, per + 2^D, D): random points of each cell and its corners."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(lo.shape[0], per, D, generator=g, dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * D)
    u = torch.cat([u, corners.expand(lo.shape[0], -1, -1)], dim=1)
    return lo[:, None] + u * (hi - lo)[:, None]


def _jacobians(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(..., M, D) float64 autograd Jacobians of a float64 copy of ``net`` at ``x``."""
    net64 = _copy64(net)
    flat = x.reshape(-1, D).clone().requires_grad_(True)
    out = net64(flat)
    rows = [torch.autograd.grad(out[:, i].sum(), flat, retain_graph=True)[0] for i in range(M)]
    return torch.stack(rows, dim=1).reshape(*x.shape[:-1], M, D)


def _copy64(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).double()


def _bounds(
    net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, cols: list[int], **kw: object
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = next(net.parameters()).dtype
    layers = network_layers(net, D, who="test")
    b = column_bounds(layers, lo.to(dtype), hi.to(dtype), cols, **kw)  # type: ignore[arg-type]
    return b.lower.detach().double(), b.upper.detach().double()


# ------------------------------------------------------------------------------- containment


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize(
    ("dtype", "sound"),
    [(torch.float32, False), (torch.float64, False), (torch.float64, True)],
    ids=["float32", "float64", "float64-sound"],
)
def test_bound_contains_float64_autograd_derivatives_at_dense_samples_of_every_cell(
    act: str, dtype: torch.dtype, sound: bool
) -> None:
    cols = list(range(D))
    for seed in range(2):
        net = _mlp(act, seed).to(dtype)
        for lo, hi in (_grid_cells(3), _random_cells(40, seed)):
            lower, upper = _bounds(net, lo, hi, cols, sound=sound)  # (N, M, D)
            jac = _jacobians(net, _samples(lo, hi, 48, seed))  # (N, S, M, D)
            # float32 weights are exact in float64, so the oracle differentiates the same
            # network; float32 arithmetic in the bound itself earns a rounding tolerance
            tol = 1e-4 if dtype == torch.float32 else (1e-13 if sound else 1e-10)
            scale = 1 + jac.abs()
            assert (lower[:, None] <= jac + tol * scale).all(), (act, seed)
            assert (jac <= upper[:, None] + tol * scale).all(), (act, seed)
            # the worst case over the box: the smallest lower bound is below every sample
            assert lower.amin(dim=0).le(jac.amin(dim=(0, 1)) + tol * scale.amax()).all()


@pytest.mark.parametrize("act", list(ACTS))
def test_sound_bound_encloses_the_plain_float64_bound(act: str) -> None:
    """Rounding slack only widens: the certificate's bound contains the training bound,
    and by a rounding-sized amount (softplus here switches to the identity at a low
    threshold, 2, and the sound bound also covers that jump of torch's softplus, ~0.06)."""
    net = _mlp(act, 3).double()
    lo, hi = _random_cells(64, 3)
    pl, ph = _bounds(net, lo, hi, [0, 2])
    sl, sh = _bounds(net, lo, hi, [0, 2], sound=True)
    assert (sl <= pl).all() and (ph <= sh).all()
    if act != "softplus":
        assert ((pl - sl) < 1e-9 * (1 + pl.abs())).all()
        assert ((sh - ph) < 1e-9 * (1 + ph.abs())).all()


def test_sound_bounds_need_float64() -> None:
    net = _mlp("tanh", 0)
    lo, hi = _grid_cells(2)
    with pytest.raises(InputValidationError, match="sound bounds need float64"):
        _bounds(net, lo, hi, [0], sound=True)


# ------------------------------------------------------------------------------- tightness


@pytest.mark.parametrize("act", list(ACTS))
def test_intersections_are_never_looser_than_the_forward_enclosure_alone(act: str) -> None:
    net = _mlp(act, 4).double()
    lo, hi = _random_cells(200, 4)
    cols = list(range(D))
    fl, fh = _bounds(net, lo, hi, cols, reverse=False, mean_value=False)
    for kw in ({"reverse": True, "mean_value": False}, {"reverse": True, "mean_value": True}):
        gl, gh = _bounds(net, lo, hi, cols, **kw)
        assert (gl >= fl).all() and (gh <= fh).all(), kw
    # and the reverse pass does tighten somewhere: it is not a no-op
    rl, rh = _bounds(net, lo, hi, cols, reverse=True, mean_value=False)
    assert ((rl > fl + 1e-9) | (rh < fh - 1e-9)).any()


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus"])
def test_mean_value_form_shrinks_the_overestimate_quadratically_on_small_cells(act: str) -> None:
    """Around one point, a cell 4 times smaller leaves an overestimate (bound width minus
    the sampled range of the derivative) about 16 times smaller with the mean-value form;
    plain intervals only divide it by about 4."""
    net = _mlp(act, 5, scale=1.0).double()
    centre = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)

    def excess(r: float, mean_value: bool) -> float:
        lower, upper = _bounds(net, centre - r, centre + r, [1], mean_value=mean_value)
        jac = _jacobians(net, _samples(centre - r, centre + r, 2000, 0))[..., 1]
        return float(((upper - lower)[:, :, 0] - (jac.amax(1) - jac.amin(1))).max())

    assert excess(2.5e-3, True) < excess(1e-2, True) / 8
    assert excess(2.5e-3, False) > excess(1e-2, False) / 8


def test_a_cell_where_no_relu_unit_switches_is_bounded_exactly() -> None:
    """On a cell where every ReLU unit keeps its sign, the derivative is constant and both
    ends of the bound equal it (the oracle for the gradient test below)."""
    net = _mlp("relu", 6).double()
    lo, hi = _stable_relu_cell(net)
    lower, upper = _bounds(net, lo, hi, [0, 1, 2])
    jac = _jacobians(net, ((lo + hi) / 2)[:, None])[:, 0]
    torch.testing.assert_close(lower, jac, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, jac, rtol=1e-12, atol=1e-12)


def _relu_into_flat_region() -> nn.Sequential:
    """``f(x) = relu(x_0 + x_1 - 1) + 0.5 relu(x_0 - 3)`` (the second unit dead on [-2, 2]^3):
    ``df/dx_0`` is 0 where the first unit is off and 1 where it is on, so
    ``df/dx_0 >= 0`` holds with equality on part of the box."""
    net = nn.Sequential(nn.Linear(D, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([-1.0, -3.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 0.5]]))
        net[2].bias.zero_()
    return net


@pytest.mark.parametrize("sound", [False, True])
def test_a_derivative_that_is_zero_on_part_of_the_cell_keeps_a_lower_bound_of_exactly_zero(
    sound: bool,
) -> None:
    """The lower end is a sum of products with a zero factor (the unit's derivative interval
    [0, 1] times a positive column): exactly 0, also with rounding slack, so that
    "df/dx_0 >= 0" is provable where it holds with equality (it was -2e-15 before)."""
    net = _relu_into_flat_region()
    lo = torch.full((1, D), -2.0, dtype=torch.float64)
    b = column_bounds(network_layers(net, D, who="test"), lo, -lo, [0, 2], sound=sound)
    lower, upper = b.lower.detach(), b.upper.detach()
    assert float(lower[0, 0, 0]) == 0.0  # the true minimum, reached where unit 1 is off
    assert float(upper[0, 0, 0]) >= 1.0
    assert float(lower[0, 0, 1]) == 0.0 and float(upper[0, 0, 1]) == 0.0  # x_2 unused


def test_a_monotone_relu_net_with_a_flat_region_is_certified_at_tolerance_zero() -> None:
    import constrained_grad as cg

    net = _relu_into_flat_region()
    cert = cg.certify_interval(
        net, [-2.0] * D, [2.0] * D, input_index=0, lower=0.0, tol=0.0, time_limit=20
    )
    assert cert.status == "certified"
    flipped = _relu_into_flat_region()
    with torch.no_grad():
        flipped[2].weight.neg_()
    bad = cg.certify_interval(
        flipped, [-2.0] * D, [2.0] * D, input_index=0, lower=0.0, tol=0.0, time_limit=20
    )
    assert bad.status == "violated"


@pytest.mark.parametrize("sound", [False, True])
def test_a_network_without_activations_is_bounded_by_its_weights(sound: bool) -> None:
    """Affine layers only (no activation: no reverse pass to intersect, which crashed)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 4), nn.Linear(4, M)).double()
    lo, hi = _random_cells(5, seed=2)
    b = column_bounds(network_layers(net, D, who="test"), lo, hi, [0, 2], sound=sound)
    jac = (net[1].weight @ net[0].weight)[:, [0, 2]].detach().expand(5, M, 2)
    torch.testing.assert_close(b.lower.detach(), jac, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.upper.detach(), jac, rtol=1e-12, atol=1e-12)
    if sound:  # and encloses the float64 product
        assert (b.lower.detach() <= jac).all() and (b.upper.detach() >= jac).all()


@pytest.mark.parametrize("exponents", [(-8, 8), (-170, -150)])  # the second: underflow
def test_the_sound_affine_map_encloses_exact_rational_arithmetic(
    exponents: tuple[int, int],
) -> None:
    """``[lo, hi] W^T + b`` in sound float64 against the exact result in fractions, for
    intervals and weights spanning many magnitudes and both signs (and exact zeros), and
    products small enough to underflow."""
    from fractions import Fraction

    from constrained_grad.derivatives.bounds import Affine, _Ops

    g = torch.Generator().manual_seed(3)
    n, k, m = 40, 9, 5

    def draw(*shape: int) -> torch.Tensor:
        lo_e, hi_e = exponents
        u = torch.rand(*shape, generator=g, dtype=torch.float64)
        mag = 10 ** (u * (hi_e - lo_e) + lo_e)
        sign = torch.randint(0, 3, shape, generator=g).to(torch.float64) - 1  # -1, 0, 1
        return mag * sign

    a, b = draw(n, k), draw(n, k)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    w, bias = draw(m, k), draw(m)
    for tangent in (False, True):
        low, high = _Ops(sound=True).affine(lo, hi, Affine(w, bias), tangent=tangent)
        for r in range(n):
            for o in range(m):
                terms = [
                    min(Fraction(w[o, i].item()) * Fraction(lo[r, i].item()),
                        Fraction(w[o, i].item()) * Fraction(hi[r, i].item()))
                    for i in range(k)
                ]  # fmt: skip
                tops = [
                    max(Fraction(w[o, i].item()) * Fraction(lo[r, i].item()),
                        Fraction(w[o, i].item()) * Fraction(hi[r, i].item()))
                    for i in range(k)
                ]  # fmt: skip
                extra = 0 if tangent else Fraction(bias[o].item())
                assert Fraction(low[r, o].item()) <= sum(terms) + extra
                assert Fraction(high[r, o].item()) >= sum(tops) + extra
    c, d = draw(n, k), draw(n, k)
    plo, phi = _Ops(sound=True).product(lo, hi, torch.minimum(c, d), torch.maximum(c, d))
    for r in range(n):
        for i in range(k):
            ends = [Fraction(x.item()) * Fraction(y.item())
                    for x in (lo[r, i], hi[r, i])
                    for y in (torch.minimum(c, d)[r, i], torch.maximum(c, d)[r, i])]  # fmt: skip
            assert Fraction(plo[r, i].item()) <= min(ends)
            assert Fraction(phi[r, i].item()) >= max(ends)


# ------------------------------------------------------------------------------- gradients


def _stable_relu_cell(net: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """A small cell on which no hidden ReLU unit of ``net`` switches (checked)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        c = torch.rand(1, D, generator=g, dtype=torch.float64) * 2 - 1
        lo, hi = c - 1e-3, c + 1e-3
        b = column_bounds(network_layers(net, D, who="test"), lo, hi, [0])
        if int(b.unstable) == 0:
            return lo, hi
    raise AssertionError("no stable cell found")


@pytest.mark.parametrize("act", list(ACTS))
def test_gradients_of_the_bound_reach_every_weight(act: str) -> None:
    net = _mlp(act, 7)
    lo, hi = _grid_cells(2)
    low, high = cell_values(net, lo, hi, [0, 2])
    (low.columns([0, 2]).sum() - high.columns([0, 2]).sum()).backward()
    for name, p in net.named_parameters():
        # the output bias has no slope; a ReLU net's slopes are piecewise constant in the
        # hidden biases (they only choose the pattern of active units): no gradient there
        if name == f"{len(net) - 1}.bias" or ("relu" in act and name.endswith("bias")):
            assert p.grad is None or (p.grad == 0).all(), name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "softplus"])
def test_gradient_of_the_bound_matches_finite_differences(act: str) -> None:
    """d(bound)/d(weight) by autograd against central differences of the bound in float64,
    for one weight of every layer, on a cell where the bound is smooth in the weights (a
    stable-ReLU cell; a small cell of the smooth nets)."""
    net = _mlp(act, 8).double()
    if act == "relu":
        lo, hi = _stable_relu_cell(net)
    else:
        c = torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64)
        lo, hi = c - 0.05, c + 0.05

    def bound() -> torch.Tensor:
        low, high = cell_values(net, lo, hi, [1])
        return low.columns([1])[0, 0, 0] + 0.5 * high.columns([1])[0, 1, 0]

    for layer in (0, 2, 4):
        w = net[layer].weight
        net.zero_grad()
        bound().backward()
        assert w.grad is not None
        k = (1, 0) if layer < 4 else (1, 3)
        analytic = float(w.grad[k])
        h = 1e-6
        with torch.no_grad():
            w[k] += h
            up = float(bound())
            w[k] -= 2 * h
            down = float(bound())
            w[k] += h
        fd = (up - down) / (2 * h)
        assert abs(analytic - fd) <= 1e-6 * (1 + abs(fd)), (layer, analytic, fd)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layer", [nn.SiLU, nn.GELU, nn.ELU])
def test_an_unsupported_layer_is_named(layer: type[nn.Module]) -> None:
    net = nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, 4), layer(), nn.Linear(4, M))
    with pytest.raises(CertificationError, match=rf"layer 3 \({layer.__name__}\) cannot be"):
        network_layers(net, D, who="test")


def test_a_box_of_the_wrong_width_or_not_finite_is_refused() -> None:
    layers = network_layers(_mlp("tanh", 0), D, who="test")
    lo, hi = _grid_cells(2)
    with pytest.raises(InputValidationError, match=r"test: boxes must be two \(N, 3\)"):
        column_bounds(layers, lo[:, :2].float(), hi[:, :2].float(), [0], who="test")
    bad = lo.float().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputValidationError, match="must be finite"):
        column_bounds(layers, bad, hi.float(), [0], who="test")
    with pytest.raises(InputValidationError, match="lower corner above its upper"):
        column_bounds(layers, hi.float(), lo.float(), [0], who="test")
