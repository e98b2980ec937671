"""The bridge to Cooper (the only layer, with training, that imports it)."""

from constrained_grad.problem.batch import Batch, IndexedDataset, as_batch, with_indices
from constrained_grad.problem.cmp import ConstraintEval, DerivativeProblem
from constrained_grad.problem.sync import RankSync

__all__ = [
    "Batch",
    "ConstraintEval",
    "DerivativeProblem",
    "IndexedDataset",
    "RankSync",
    "as_batch",
    "with_indices",
]
