"""The certified benchmarks' cell options: one declaration of ``--max-cells``,
``--refine-every``, ``--refine`` and ``--cells-slack``, and the :class:`constrained_grad.Cells`
they make."""

from __future__ import annotations

import argparse

import constrained_grad as cg


def add_cell_options(p: argparse.ArgumentParser) -> None:
    """The partition's options (the cells' ``dual_lr`` stays each script's: defaults differ)."""
    p.add_argument("--max-cells", type=int, default=64, help="certified: cell budget")
    p.add_argument("--refine-every", type=int, default=25, help="certified: steps per refine")
    p.add_argument("--refine", type=int, default=4, help="certified: cells split per round")
    p.add_argument(
        "--cells-slack",
        type=float,
        default=1e-4,
        help="certified: extra margin the cells' bounds must clear in training (cg.Cells slack; "
        "the certificate still proves the constraint at margin 0)",
    )


def cells_from(box: cg.Box, cfg: argparse.Namespace) -> cg.Cells:
    """``cg.Cells`` over ``box`` with the options of :func:`add_cell_options`."""
    return cg.Cells(
        box,
        max_cells=cfg.max_cells,
        refine_every=cfg.refine_every,
        refine=cfg.refine,
        slack=cfg.cells_slack,
    )
