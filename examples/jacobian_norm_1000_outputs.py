r"""Bound the end-to-end Jacobian norm of a classifier with 1000 outputs, cheaply.

The question (PyTorch forum): train with cross-entropy plus a penalty on the Frobenius norm
of :math:`\nabla_x f(x)` when ``f`` has about 1000 outputs. ``yhat.backward(ones)`` gives the
*sum* of the Jacobian's rows (a vector-Jacobian product), not the Jacobian, and it
accumulates into ``.grad``; the full Jacobian costs one backward pass per output, "10 * 1000
backward passes per gradient step".

The answer: the penalty needs only :math:`\|J\|_F^2 = \operatorname{tr}(J^\top J)`, and for
``v`` uniform on the sphere of radius :math:`\sqrt{m}` we have :math:`E[vv^\top] = I`, so
:math:`E\|v^\top J\|^2 = \|J\|_F^2`: **one** vector-Jacobian product per sample is an unbiased
estimate, whatever the number of outputs. :class:`constrained_grad.JacobianNormBound` with
``estimator="vjp_sphere"`` bounds the batch mean of that estimate (``reduction="mean"``,
the unbiased choice), computed with ``autograd.grad(create_graph=True)`` so that the bound
trains the weights. The script checks the estimator against the exact norm, trains with and
without the bound, and measures the exact norm of the result on held-out points.

Run: ``python examples/jacobian_norm_1000_outputs.py``.
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

CLASSES, DIM, MAX_NORM = 1000, 32, 40.0


def make_data(n_per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters (std 0.7) around fixed random centres, one per class."""
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(3))
    y = torch.arange(CLASSES).repeat_interleave(n_per_class)
    return centres[y] + 0.7 * torch.randn(len(y), DIM, generator=generator), y


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 256), nn.ReLU(), nn.Linear(256, CLASSES))


def estimator_check(model: nn.Module, x: torch.Tensor, samples: int, seed: int) -> float:
    """Relative error of the averaged projection estimate against the exact ||J||_F^2."""
    exact = cg.jacobian_fro_norm_sq(model, x, estimator="exact", create_graph=False)
    gen = torch.Generator().manual_seed(seed)
    est = cg.jacobian_fro_norm_sq(
        model, x, estimator="vjp_sphere", samples=samples, generator=gen, create_graph=False
    )
    return float((est.mean() - exact.mean()).abs() / exact.mean())


def cost(model: nn.Module, x: torch.Tensor, estimator: str) -> float:
    """Seconds for one estimate on the batch plus the backward pass to the weights."""
    start = time.perf_counter()
    cg.jacobian_fro_norm_sq(model, x, estimator=estimator).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(steps: int = 300, out_dir: str | Path | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = make_data(8, gen)
    x_test, y_test = make_data(1, gen)
    metrics: dict[str, float] = {}
    for label, bounded in (("baseline_", False), ("", True)):
        torch.manual_seed(seed)
        model = make_model()
        constraints = (
            [cg.JacobianNormBound(MAX_NORM, estimator="vjp_sphere", samples=1, name="jacobian_fro")]
            if bounded
            else []
        )
        problem = cg.DerivativeProblem(model, F.cross_entropy, constraints, seed=seed)
        loader = DataLoader(
            TensorDataset(x_train, y_train),
            batch_size=256,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        result = cg.fit(
            problem,
            loader,
            torch.optim.Adam(model.parameters(), lr=1e-3),
            dual_lr=1e-3,
            epochs=math.ceil(steps / len(loader)),
            steps=steps,
            progress=False,
        )
        with torch.no_grad():
            metrics[f"{label}test_accuracy"] = float(
                (model(x_test).argmax(1) == y_test).float().mean()
            )
        fro = cg.jacobian_fro_norm_sq(model, x_test[:500], create_graph=False)  # exact
        metrics[f"{label}heldout_rms_jacobian_fro"] = float(fro.mean().sqrt())
        if bounded:
            metrics["max_norm"] = MAX_NORM
            metrics["estimator_rel_error_64_projections"] = estimator_check(
                model, x_test[:64], 64, seed
            )
            metrics["seconds_exact"] = cost(model, x_test[:256], "exact")
            metrics["seconds_projection"] = cost(model, x_test[:256], "vjp_sphere")
            if out_dir is not None:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                result.history.save_json(out / "jacobian_norm_history.json")
                cg.plot_history(result.history, path=out / "jacobian_norm_history.png")
    print(
        f"unbounded: accuracy {100 * metrics['baseline_test_accuracy']:.1f}%, RMS ||J||_F "
        f"{metrics['baseline_heldout_rms_jacobian_fro']:.1f}"
    )
    print(
        f"bounded:   accuracy {100 * metrics['test_accuracy']:.1f}%, RMS ||J||_F "
        f"{metrics['heldout_rms_jacobian_fro']:.1f} (bound {MAX_NORM:g}, exact, held-out)"
    )
    print(
        f"one estimate + backward on 256 points: exact {metrics['seconds_exact']:.3f} s, one "
        f"projection {metrics['seconds_projection']:.3f} s"
    )
    return metrics


if __name__ == "__main__":
    main()
