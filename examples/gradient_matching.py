r"""Learn a function from samples of its gradient: V(x) = x^T P x from grad V only.

The question (Stack Overflow): approximate :math:`V:\mathbb{R}^2\to\mathbb{R}_+` with an MLP
when only :math:`N` samples of :math:`\nabla V` are available; the loss should be the MSE
between the samples ``S`` and the network's input gradient. The asker used
``torch.autograd.functional.jacobian(model, x)`` and the loss did not decrease: that Jacobian
is computed without ``create_graph``, so it does not depend on the weights
(``requires_grad`` is False; calling ``requires_grad_()`` on it only hides the problem).

The answer: take the input gradient with the graph kept (``torch.autograd.grad(...,
create_graph=True)``, which :func:`constrained_grad.input_gradient` does and checks), and
declare the fit as :class:`constrained_grad.GradientMatch`: "mean squared gradient error at
most 1e-4 of the mean squared gradient" (1 % relative RMS). With no other loss, the
Lagrange multiplier plays the role of the loss weight and is learned.

Two details matter in practice, and the script handles both:

* ``V`` is only determined up to a constant, so it is compared as ``V(x) - V(0)``;
* the gradients here reach about 500, so the targets are divided by their RMS and the
  predictions multiplied back: a tanh network starts with outputs of order one.

Run: ``python examples/gradient_matching.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import constrained_grad as cg

P = torch.tensor([[20.1892, -26.6218], [-26.6218, 38.0375]])


def samples(points_per_axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid on [-3, 3]^2 (as in the question), V(x) = x^T P x and grad V(x) = 2 P x."""
    g = torch.linspace(-3.0, 3.0, points_per_axis)
    x = torch.cartesian_prod(g, g)
    return x, ((x @ P) * x).sum(dim=1), 2 * x @ P


def seed_mistake_keeps_no_graph(model: nn.Module, x: torch.Tensor) -> bool:
    """The question's approach: does its Jacobian depend on the weights? (It does not.)"""
    jac = torch.autograd.functional.jacobian(model, x)
    return jac.requires_grad


def main(steps: int = 1000, out_dir: str | Path | None = None, seed: int = 0) -> dict:
    x, _, s = samples(10)  # the question's 100 gradient samples
    scale = float(s.pow(2).mean().sqrt())
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    graph_kept_by_seed = seed_mistake_keeps_no_graph(model, x[:4])
    graph_kept_by_cg = cg.input_gradient(model, x[:4]).requires_grad  # create_graph=True

    match = cg.GradientMatch(targets="y", normalize=True, tolerance=1e-4, name="grad_match")
    problem = cg.DerivativeProblem(model, None, [match], seed=seed)  # no other loss
    loader = [(x, s / scale)]  # one full batch of (points, gradient samples)
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        dual_lr=1.0,
        epochs=steps,
        progress=False,
    )

    # held-out check on a finer grid, in the original units
    x_test, v_test, s_test = samples(41)
    grad = cg.input_gradient(model, x_test, create_graph=False) * scale
    with torch.no_grad():
        v = (model(x_test) - model(torch.zeros(1, 2))).squeeze(1) * scale
    metrics = {
        "seed_jacobian_requires_grad": float(graph_kept_by_seed),
        "cg_gradient_requires_grad": float(graph_kept_by_cg),
        "train_relative_mse": result.history.column("grad_match/violation_mean")[-1] + 1e-4,
        "heldout_gradient_rel_error": float((grad - s_test).norm() / s_test.norm()),
        "heldout_value_rel_error": float((v - v_test).norm() / v_test.norm()),
        "final_multiplier": result.history.column("grad_match/multiplier_max")[-1],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.history.save_json(out / "gradient_matching_history.json")
        cg.plot_history(result.history, path=out / "gradient_matching_history.png")
    print(
        f"the question's Jacobian depends on the weights: {bool(graph_kept_by_seed)}; "
        f"cg.input_gradient's does: {bool(graph_kept_by_cg)}"
    )
    grad_pct = 100 * metrics["heldout_gradient_rel_error"]
    value_pct = 100 * metrics["heldout_value_rel_error"]
    print(
        f"held-out (41 x 41 grid): gradient error {grad_pct:.2f}%, V(x) - V(0) error "
        f"{value_pct:.2f}% (relative)"
    )
    return metrics


if __name__ == "__main__":
    main()
