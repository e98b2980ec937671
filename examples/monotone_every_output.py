r"""Every output non-decreasing in one input: NN([x1..x5, z])[i] non-decreasing in z for all i.

The question (a PyTorch forum thread): a network maps ``[x1, ..., x5, z]`` to 7 outputs and
every output must be non-decreasing in ``z``. ``torch.autograd.grad(y, z,
grad_outputs=torch.ones_like(y))`` returns the *sum* over outputs of ``dy_i/dz`` (shape
``(N, 1)``, not ``(N, 7)``), and a loop over the outputs costs one backward pass per output.

The answer: what is needed is one **column** of each sample's Jacobian, ``dy/dz`` for all 7
outputs at once. :func:`constrained_grad.jacobian_columns` gets it with one
forward-mode/double-backward pass whatever the number of outputs, differentiable with respect
to the weights. :class:`constrained_grad.Monotonic` turns ``dy_i/dz >= margin`` into a
constraint whose Lagrange multiplier is learned (no hand-tuned penalty weight), enforced on
the batch and at random points of the input box where the data never goes.
:func:`constrained_grad.verify` then searches the whole box (Sobol' points and gradient
ascent) for points where some output decreases in ``z``.

Run: ``python examples/monotone_every_output.py``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg

N_OUT = 7
Z = 5  # index of z among the 6 inputs


def make_data(n: int, generator: torch.Generator, noise: float) -> tuple[torch.Tensor, ...]:
    """Targets 0.5 sin(pi a_i.x / sqrt5) + c_i z^3 (+ noise): non-decreasing in z, flat at 0."""
    task = torch.Generator().manual_seed(1)
    a = torch.randn(N_OUT, 5, generator=task)
    c = torch.linspace(0.2, 1.0, N_OUT)
    x = torch.rand(n, 6, generator=generator) * 2 - 1
    y = 0.5 * torch.sin(math.pi * x[:, :5] @ a.T / math.sqrt(5)) + c * x[:, Z : Z + 1] ** 3
    return x, y + noise * torch.randn(n, N_OUT, generator=generator)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, N_OUT)
    )


def column_check(model: nn.Module, x: torch.Tensor) -> float:
    """Max |error| of jacobian_columns against the full float64 autograd Jacobian (oracle)."""
    cols = cg.jacobian_columns(model, x, inputs=[Z], create_graph=False)  # (B, 7, 1)
    m64 = make_model().double()
    m64.load_state_dict(model.state_dict())
    oracle = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: m64(v[None])[0], xb.double())[:, Z]
            for xb in x
        ]
    )  # (B, 7)
    return float((cols[:, :, 0].double() - oracle).abs().max())


def train(
    constrained: bool, steps: int, seed: int, x: torch.Tensor, y: torch.Tensor, box: cg.Box
) -> tuple[nn.Module, cg.FitResult, float]:
    torch.manual_seed(seed)
    model = make_model()
    constraints = []
    if constrained:
        constraints = [
            cg.Monotonic(inputs=[Z], direction="increasing", margin=0.05, name="z_on_data"),
            cg.Monotonic(inputs=[Z], margin=0.05, where=cg.InBox(box, n=2048), name="z_in_box"),
        ]
    problem = cg.DerivativeProblem(model, F.mse_loss, constraints, seed=seed)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=3e-3),
        dual_lr=1.0,
        epochs=math.ceil(steps / len(loader)),
        steps=steps,
        progress=False,
    )
    return model.eval(), result, (time.perf_counter() - start) / steps


def main(steps: int = 400, out_dir: str | Path | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = make_data(1024, gen, noise=0.2)
    x_test, y_test = make_data(1024, gen, noise=0.0)
    box = cg.Box([-1.0] * 6, [1.0] * 6)

    metrics: dict[str, float] = {}
    for label, constrained in (("baseline_", False), ("", True)):
        model, result, sec = train(constrained, steps, seed, x_train, y_train, box)
        with torch.no_grad():
            metrics[f"{label}test_mse"] = float(F.mse_loss(model(x_test), y_test))
        # the property itself (margin 0) over the whole box: Sobol' points + gradient ascent
        spec = cg.Monotonic(inputs=[Z], direction="increasing", name="z_monotone")
        report = cg.verify(
            model, [spec], box, samples=8192, starts=64, steps=30, certify=False, seed=seed
        )
        found = report["z_monotone"]
        sobol = next(m for m in found.methods if m.method == "sobol")
        metrics[f"{label}fraction_violating"] = float(sobol.fraction_violating or 0.0)
        metrics[f"{label}max_violation"] = float(found.max_violation)
        metrics[f"{label}seconds_per_step"] = sec
        if constrained:
            metrics["column_max_abs_error"] = column_check(model, x_test[:16])
            if out_dir is not None:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                result.history.save_json(out / "monotone_every_output_history.json")
                cg.plot_history(result.history, path=out / "monotone_every_output_history.png")
                cg.plot_partial_dependence(
                    model,
                    x_test,
                    Z,
                    output_index=None,
                    feature_name="z",
                    path=out / "monotone_every_output_pd_z.png",
                )

    print(
        f"dy/dz for all {N_OUT} outputs in one pass; max |error| vs autograd "
        f"{metrics['column_max_abs_error']:.2e}"
    )
    print(
        f"unconstrained: test MSE {metrics['baseline_test_mse']:.4f}, "
        f"{100 * metrics['baseline_fraction_violating']:.2f}% of box points decrease in z"
    )
    print(
        f"constrained:   test MSE {metrics['test_mse']:.4f}, "
        f"{100 * metrics['fraction_violating']:.2f}% of box points decrease in z, "
        f"worst -dy/dz found {metrics['max_violation']:+.4f} (<= 0: none)"
    )
    return metrics


if __name__ == "__main__":
    main()
