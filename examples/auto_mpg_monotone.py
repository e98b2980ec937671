r"""Monotone regression on Auto MPG, verified over the whole input box, not only the data.

Fuel economy should fall when a car gets heavier, its engine bigger or more powerful:
mpg decreasing in ``weight``, ``displacement`` and ``horsepower``. A plain MLP fitted to 251
cars does not promise that, least of all between and beyond the data. This script

1. trains the same MLP 7-64-64-1 twice on the Auto MPG data shipped in the package
   (:func:`constrained_grad.datasets.load_auto_mpg`): unconstrained, and under
   :class:`constrained_grad.Monotonic` (``direction="decreasing"``, a small margin) enforced
   on every batch *and* at fresh uniform points of the data's bounding box every step;
2. reports the test MSE in mpg² for both (no model selection on the test rows);
3. verifies :math:`\partial\,\mathrm{mpg}/\partial x_j \le 0` (margin 0) over the whole box
   with :func:`constrained_grad.verify`: scrambled Sobol' points, then multi-start
   signed-gradient ascent from the worst of them, and, with ``certify_seconds > 0``, the
   exact MILP certificate for ReLU networks.

Searches are falsification: "no violation found" is evidence, not proof; a MILP
"certified" is a proof (up to solver tolerances), "unknown" means its time ran out.

Run: ``python examples/auto_mpg_monotone.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.datasets import AUTO_MPG_DECREASING, load_auto_mpg


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )


def step_each_time(scheduler: torch.optim.lr_scheduler.LRScheduler):
    """A cg.fit callback that steps a learning-rate scheduler after every training step."""
    return lambda _info: scheduler.step()


def main(
    steps: int = 600, out_dir: str | Path | None = None, seed: int = 0, certify_seconds: float = 0.0
) -> dict:
    data = load_auto_mpg(seed=seed)
    mono = [data.feature_index(n) for n in AUTO_MPG_DECREASING]
    box = data.box  # per-feature [min, max] over all rows, standardised
    metrics: dict[str, float] = {}
    for label, constrained in (("baseline_", False), ("", True)):
        torch.manual_seed(seed)
        model = make_model()
        constraints = (
            [
                cg.Monotonic(mono, "decreasing", margin=0.1, name="on_data"),
                cg.Monotonic(
                    mono, "decreasing", margin=0.1, where=cg.InBox(box, n=4096), name="in_box"
                ),
            ]
            if constrained
            else []
        )
        problem = cg.DerivativeProblem(model, F.mse_loss, constraints, seed=seed)
        loader = DataLoader(
            TensorDataset(data.x_train, data.y_train),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        # cosine decay to 0, stepped after every training step by a fit callback
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        )
        result = cg.fit(
            problem,
            loader,
            optimizer,
            dual_lr=2.0,
            epochs=math.ceil(steps / len(loader)),
            steps=steps,
            callbacks=[step_each_time(schedule)],
            progress=False,
        )
        model.eval()
        with torch.no_grad():
            mse = float(F.mse_loss(model(data.x_test), data.y_test)) * data.mse_scale
        metrics[f"{label}test_mse_mpg2"] = mse

        spec = cg.Monotonic(mono, "decreasing", name="mpg_decreasing")  # margin 0
        report = cg.verify(
            model,
            [spec],
            box,
            samples=2**14,
            starts=128,
            steps=40,
            certify="auto" if constrained and certify_seconds > 0 else False,
            time_limit=certify_seconds if certify_seconds > 0 else None,
            seed=seed,
        )
        result_v = report["mpg_decreasing"]
        sobol = next(m for m in result_v.methods if m.method == "sobol")
        metrics[f"{label}fraction_violating"] = float(sobol.fraction_violating or 0.0)
        metrics[f"{label}max_violation"] = float(result_v.max_violation)
        if constrained:
            metrics["certified"] = float(result_v.status == "certified")
            print(report.to_markdown())
        if constrained and out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            result.history.save_json(out / "auto_mpg_history.json")
            cg.plot_history(result.history, path=out / "auto_mpg_history.png")
            torch.save(model.state_dict(), out / "auto_mpg_model.pt")
    for label, name in (("baseline_", "unconstrained"), ("", "constrained")):
        print(
            f"{name:>13}: test MSE {metrics[f'{label}test_mse_mpg2']:.2f} mpg^2, "
            f"{100 * metrics[f'{label}fraction_violating']:.2f}% of box points violate, "
            f"largest slope found {metrics[f'{label}max_violation']:+.4f} (<= 0: monotone)"
        )
    return metrics


if __name__ == "__main__":
    main()
