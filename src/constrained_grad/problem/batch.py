"""What a data loader yields, normalised: inputs, targets, point ids and extra fields.

Accepted batches: a tensor ``x``; a tuple/list ``(x,)``, ``(x, y)`` or ``(x, y, *extras)``
(extras are named by position, ``"2"``, ``"3"``, ...); or a dict with ``"x"`` (or
``"inputs"``), optional ``"y"`` (or ``"targets"``), optional ``"index"`` and any other
fields. :func:`with_indices` wraps a dataset so that each item also carries its index, which
pointwise multipliers on the batch need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from constrained_grad.errors import InputValidationError


@dataclass
class Batch:
    """A normalised batch (see the module docstring)."""

    x: torch.Tensor
    y: Any = None
    index: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def field(self, name: str, who: str = "Batch") -> Any:
        """A field by name: ``"x"``/``"inputs"``, ``"y"``/``"targets"``, ``"index"`` or an extra."""
        if name in ("x", "inputs"):
            return self.x
        if name in ("y", "targets"):
            if self.y is None:
                raise InputValidationError(
                    f"{who}: the batch has no targets field. Yield (x, y) from the loader."
                )
            return self.y
        if name == "index":
            return self.index
        if name not in self.extras:
            raise InputValidationError(
                f"{who}: the batch has no field {name!r} (got fields "
                f"{['x', 'y', *self.extras]}). Name an existing field."
            )
        return self.extras[name]

    def to(self, device: torch.device | str | None) -> Batch:
        if device is None:
            return self
        dev = torch.device(device)

        def stays(v: Any) -> bool:
            return not isinstance(v, torch.Tensor) or v.device == dev

        here = stays(self.x) and stays(self.y) and stays(self.index)
        if here and (not self.extras or all(stays(v) for v in self.extras.values())):
            return self  # everything is there already: no copy of the batch either

        def move(v: Any) -> Any:
            if stays(v):
                return v  # already there: no dispatch at all (a per-step cost otherwise)
            return v.to(dev, non_blocking=True)

        return Batch(
            move(self.x),
            move(self.y),
            move(self.index),
            {k: move(v) for k, v in self.extras.items()},
        )


def as_batch(item: Any, who: str = "DerivativeProblem") -> Batch:
    """Normalise whatever a loader yields into a :class:`Batch`."""
    if isinstance(item, Batch):
        batch = item
    elif type(item) is tuple and len(item) == 2:  # (x, y), the usual loader item
        batch = Batch(item[0], item[1])
    elif isinstance(item, torch.Tensor):
        batch = Batch(item)
    elif isinstance(item, Mapping):
        keys = set(item)
        xk = "x" if "x" in keys else "inputs" if "inputs" in keys else None
        if xk is None:
            raise InputValidationError(
                f"{who}: dict batch has no 'x' or 'inputs' key (got keys "
                f"{sorted(keys)}). Name the model inputs 'x'."
            )
        yk = "y" if "y" in keys else "targets" if "targets" in keys else None
        extras = {k: v for k, v in item.items() if k not in (xk, yk, "index")}
        batch = Batch(item[xk], item[yk] if yk else None, item.get("index"), extras)
    elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) >= 1:
        extras = {str(i): v for i, v in enumerate(item) if i >= 2}
        batch = Batch(item[0], item[1] if len(item) > 1 else None, None, extras)
    else:
        raise InputValidationError(
            f"{who}: cannot read a batch of type {type(item).__name__}. "
            "Yield a tensor x, a tuple (x, y, ...) or a dict with 'x'."
        )
    if not isinstance(batch.x, torch.Tensor):
        raise InputValidationError(
            f"{who}: batch inputs must be a tensor (got {type(batch.x).__name__})."
        )
    if batch.index is not None:
        batch.index = torch.as_tensor(batch.index)
    return batch


class IndexedDataset(Dataset):
    """A dataset whose items are dicts ``{"index": i, "x": ..., "y": ..., ...}``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        out: dict[str, Any] = {"index": torch.tensor(i, dtype=torch.long)}
        if isinstance(item, Mapping):
            out.update(item)
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            out["x"] = item[0]
            if len(item) > 1:
                out["y"] = item[1]
            for k, v in enumerate(item[2:], start=2):
                out[str(k)] = v
        else:
            out["x"] = item
        return out


def with_indices(dataset: Any) -> IndexedDataset:
    """Wrap ``dataset`` so each item carries its index (for pointwise multipliers)."""
    return IndexedDataset(dataset)
