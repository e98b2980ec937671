"""Run by test_lightning.py: the Lightning integration under Lightning's own DDP strategy.

``python lightning_ddp_worker.py <records> <steps>`` starts a 2-process CPU (gloo) fit;
Lightning re-launches this script for rank 1. Each rank writes ``<records>/rank<r>.pt``
(a file of the test harness): the batches it saw, its multipliers after every step, its
final weights and history. Rank 0 also saves a Lightning checkpoint there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl
import test_lightning as helpers


class Recorded(helpers.Recording):
    def __init__(self) -> None:
        super().__init__()
        self.multipliers: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        values = self.constraint_problem.multiplier_values()
        self.multipliers.append({k: v.clone() for k, v in values.items()})


def main() -> None:
    records, steps = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    module = Recorded()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, helpers.loader())
    trainer.save_checkpoint(records / "last.ckpt")  # collective; rank 0 writes
    records.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "global_step": trainer.global_step,
            "seen": module.seen,
            "multipliers": module.multipliers,
            "params": [p.detach().clone() for p in module.net.parameters()],
            "history": module.constraint_history.to_dict(),
        },
        records / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main()
