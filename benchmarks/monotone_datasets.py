r"""Monotone regression and classification on public datasets, with verification.

Datasets (``/work/shared/datasets``, see its README): Auto-MPG (regression, mpg decreasing in
displacement, horsepower, weight; metric test MSE in mpg²), Heart (classification, risk
increasing in ``trestbps`` and ``chol``; accuracy; the nominal codes cp, restecg, slope, ca
and thal one-hot encoded unless ``--heart-encoding ordinal``) and COMPAS (classification,
recidivism increasing in the four count features; accuracy).

Protocols (scikit-learn does the splitting, scaling, encoding and grids):

``clean``  ``--seeds`` seeded 80/20 splits of all rows (``train_test_split``); 20% of the train
           part is held out for validation (fold 0 of a seeded 5-fold ``KFold``, so that
           ``--ensemble`` members validate on the other folds); both cuts stratified on the
           label for Heart and COMPAS. Epochs AND hyper-parameters are chosen on validation
           only (the test rows are scored once, for the selected model); mean ± std of the
           test metric.
``comet``  the fixed COMET train/test files (Auto-MPG, Heart); validation carved (20%, seeded,
           the same ``KFold``) from the train file; mean ± std over seeds of the carve and of
           the initialisation.

Features are standardised by a ``StandardScaler`` fitted on the train part (features only); a
regression target by one fitted on the labels of the training rows. Heart's nominal codes and
COMPAS's race and sex are one-hot encoded (``OneHotEncoder`` over fixed category lists).

Model selection (validation only): for every seed and method, each point of the grid spanned
by the list-valued options (a ``ParameterGrid``: ``--hidden``, ``--lr``, ``--weight-decay``,
``--margin``, ``--dual-lr``, ``--lipschitz``; ``--tune`` fills the ones not given from
``TUNE_GRID``) is trained; its checkpoint is the epoch with the best validation score among
the eligible ones; the grid point with the best such score wins (eligible first;
classification ties on accuracy are broken by the validation log-loss).

Methods:

``unconstrained``  ReLU MLP d→``--hidden``→1 (default one hidden layer of 32).
``constrained``    the same MLP trained with :class:`constrained_grad.Monotonic` on every batch
                   (mean hinge), at ``--box-points`` uniform points of the data box and at
                   counterexamples (:class:`constrained_grad.Counterexamples`, pointwise
                   multipliers, margin ``--margin``), Lagrangian formulation. A
                   :class:`constrained_grad.Prover` runs the exact MILP every
                   ``--milp-every`` epochs (``--select-time-limit`` seconds), feeds its
                   counterexamples to that source, and keeps the proved state with the best
                   validation score (none proved: the run is not eligible).
``certified``      certified training: a ``--certified-hidden`` (default 64-64) ReLU MLP with
                   ``Monotonic`` on every batch (margin ``--margin``) and over
                   :class:`constrained_grad.Cells` of the box (a sound bound of the derivative
                   on each cell, one multiplier per cell, refined where violated; the cells'
                   bounds clear the constraint by ``--cells-slack`` in training), AdamW with
                   cosine decay; a ``Prover`` certifies over the cells every ``--milp-every``
                   epochs and keeps the proved state with the best validation score.
``lmn``            Lipschitz monotonic network (``monotonicnetworks`` package, GroupSort,
                   ``--lmn-hidden``, default 64-64), monotone by construction; skipped with a
                   message if the package is missing.
``linear``, ``gbm``, ``gbm_monotone``
                   scikit-learn references on the same splits (``reference_learners``): a
                   logistic / ridge regression (monotonicity decided exactly from its
                   coefficients), gradient boosting, and gradient boosting monotone by
                   construction; each with its own grid chosen on validation, no ensembles.

Every trained ReLU model is verified with :func:`constrained_grad.verify` over the box spanned
by the standardised feature values of all rows (unlabelled feature ranges only), first by
sampling + adversarial search, then by the exact MILP (``--time-limit`` seconds per MILP);
certified-trained nets by the interval certificate over their cells (``--time-limit``).
``max_violation`` is the largest derivative of the wrong sign found (standardised units, mpg or
logit per standard deviation; ≤ 0 means none), ``certified`` is True (MILP proof), False (a
violation was confirmed) or None (no proof within the time limit); the MILP seconds are kept.
``--one-hot-domain`` declares the one-hot columns (Heart codes, COMPAS race and sex) as groups
of that box (``cg.Box(one_hot=...)``), for training points, search and MILP alike.

``--local-rows N`` adds local certificates (:func:`constrained_grad.verify_local`) of each ReLU
method's selected model on the first N test rows of each seed: monotonicity along each
monotone feature over its whole range, the other features held at the row's values, over the
same box (``--local-time-limit`` seconds for all N rows of one model). Recorded per seed and
method (``local``: rows, proved, violated, unknown, median and max seconds per row) and
summarised in a table.

Run: ``python benchmarks/monotone_datasets.py --dataset auto-mpg --quick --local-rows 10 --json
out.json``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import KFold, ParameterGrid, StratifiedKFold, train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
import reference_learners as refs
from _cells import add_cell_options, cells_from

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = ("auto-mpg", "heart", "compas")
METHODS = ("unconstrained", "constrained", "certified", "lmn")  # nets trained by this script
# how each method's monotonicity is known when it is not verified here
NOT_VERIFIED = {
    "lmn": "by construction",
    "gbm_monotone": "by construction",
    "gbm": "not checked (piecewise constant)",
}
MPG_FEATURES = [
    "cylinders",
    "displacement",
    "horsepower",
    "weight",
    "acceleration",
    "model year",
    "origin",
]
HEART_FEATURES = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
]
# nominal codes (chest-pain type, rest ECG, ST slope, vessel count, thal): one-hot by default
HEART_NOMINAL = ["cp", "restecg", "slope", "ca", "thal"]
HEART_ENCODINGS = ("onehot", "ordinal")
COMPAS_COUNTS = ["priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"]
FOLDS = 5  # train part cut into 5: one fold validates, 4 train
COMPAS_RACES = ["African-American", "Asian", "Caucasian", "Hispanic", "Native American", "Other"]
COMPAS_SEXES = ["Male", "Female"]


@dataclass
class Table:
    """Raw features ``x`` (n, d), targets ``y`` (n,), monotone feature indices and direction."""

    x: np.ndarray
    y: np.ndarray
    names: list[str]
    monotone: list[int]
    direction: str  # "increasing" | "decreasing"
    task: str  # "regression" | "classification"
    groups: list[list[int]] = field(default_factory=list)  # one-hot columns of one category


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _table(
    rows: list[dict[str, str]],
    features: list[str],
    target: str,
    monotone: list[str],
    direction: str,
    task: str,
) -> Table:
    x = np.array([[float(r[f]) for f in features] for r in rows], dtype=np.float64)
    y = np.array([float(r[target]) for r in rows], dtype=np.float64)
    return Table(x, y, features, [features.index(m) for m in monotone], direction, task)


def load_auto_mpg(part: str | None = None) -> Table:
    """All 392 complete rows (``part=None``) or the COMET ``"train"``/``"test"`` file."""
    mono = ["displacement", "horsepower", "weight"]
    if part is None:
        rows = [r for r in _read(DATA_DIR / "auto-mpg.csv") if "?" not in r["horsepower"]]
        return _table(rows, MPG_FEATURES, "mpg", mono, "decreasing", "regression")
    rows = _read(DATA_DIR / f"auto-mpg_comet_{part}.csv")
    rows = [{k.lower(): v for k, v in r.items()} for r in rows]
    return _table(rows, MPG_FEATURES, "mpg", mono, "decreasing", "regression")


def load_heart(part: str | None = None, encoding: str = "onehot") -> Table:
    """Both files stacked (``part=None``) or the COMET ``"train"``/``"test"`` file.

    ``encoding="onehot"``: :data:`HEART_NOMINAL` one-hot over the codes seen in either file
    (the code vocabulary only, no labels), so train and test files get the same columns;
    ``"ordinal"``: the raw integer codes, as in the files."""
    if encoding not in HEART_ENCODINGS:
        raise ValueError(
            f"load_heart: encoding must be one of {HEART_ENCODINGS} (got {encoding!r})"
        )
    parts = ["train", "test"] if part is None else [part]
    rows = [r for p in parts for r in _read(DATA_DIR / f"heart_{p}.csv")]
    mono = ["trestbps", "chol"]
    table = _table(rows, HEART_FEATURES, "target", mono, "increasing", "classification")
    if encoding == "ordinal":
        return table
    vocab = [r for p in ("train", "test") for r in _read(DATA_DIR / f"heart_{p}.csv")]
    codes = {n: sorted({float(r[n]) for r in vocab}) for n in HEART_NOMINAL}
    return one_hot(table, codes)


def one_hot(table: Table, codes: dict[str, list[float]]) -> Table:
    """``table`` with each feature named in ``codes`` replaced, in place, by one 0/1 column
    per listed code (``"name=code"``, scikit-learn's ``OneHotEncoder`` over exactly these
    categories: a code never seen gives a zero column); monotone indices follow."""
    missing = sorted(set(codes) - set(table.names))
    if missing:
        raise ValueError(f"one_hot: no such features {missing} (have {table.names})")
    if any(table.names[j] in codes for j in table.monotone):
        raise ValueError("one_hot: a monotone feature cannot be one-hot encoded")
    cols: list[np.ndarray] = []
    names: list[str] = []
    groups: list[list[int]] = []
    for j, name in enumerate(table.names):
        if name not in codes:
            cols.append(table.x[:, j : j + 1])
            names.append(name)
            continue
        enc = OneHotEncoder(categories=[codes[name]], sparse_output=False, dtype=np.float64)
        cols.append(enc.fit_transform(table.x[:, j : j + 1]))
        groups.append(list(range(len(names), len(names) + len(codes[name]))))
        names += [f"{name}={code:g}" for code in codes[name]]
    monotone = [names.index(table.names[j]) for j in table.monotone]
    return Table(np.hstack(cols), table.y, names, monotone, table.direction, table.task, groups)


def load_compas() -> Table:
    """ProPublica's filter; the four counts, age, one-hot race (6) and sex (2). (Age needs no
    scaling here: :func:`make_split` standardises every feature.)"""
    rows = []
    for r in _read(DATA_DIR / "compas_scores_two_years.csv"):
        if r["days_b_screening_arrest"] == "" or abs(float(r["days_b_screening_arrest"])) > 30:
            continue
        if r["is_recid"] == "-1" or r["c_charge_degree"] == "O" or r["score_text"] == "N/A":
            continue
        rows.append(r)
    numeric = np.array([[float(r[c]) for c in [*COMPAS_COUNTS, "age"]] for r in rows])
    enc = OneHotEncoder(categories=[COMPAS_RACES, COMPAS_SEXES], sparse_output=False)
    nominal = enc.fit_transform(np.array([[r["race"], r["sex"]] for r in rows]))
    names = [*COMPAS_COUNTS, "age", *enc.get_feature_names_out(["race", "sex"])]
    y = np.array([float(r["two_year_recid"]) for r in rows])
    first = numeric.shape[1]
    groups = [list(range(first, first + len(COMPAS_RACES)))]
    groups.append(list(range(groups[0][-1] + 1, len(names))))  # sex
    x = np.hstack([numeric, nominal])
    return Table(x, y, names, list(range(4)), "increasing", "classification", groups)


@dataclass
class Split:
    """Standardised tensors (float32) of one train/validation/test split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    box: cg.Box  # per-feature [min, max] of all standardised rows
    y_scale: float  # standard deviation of the regression target (1 for classification)
    y_shift: float = 0.0  # mean of the regression target (0 for classification)
    x_test64: torch.Tensor | None = None  # the test rows in float64 (local certificates)


def make_split(
    train: Table,
    test: Table | None,
    seed: int,
    fold: int = 0,
    folds: int = FOLDS,
    one_hot_domain: bool = False,
) -> Split:
    """``test=None``: seeded 80/20 ``train_test_split`` of ``train``; then the train part is
    cut by a seeded ``KFold`` into ``folds`` parts and part ``fold`` is held out for validation
    (default: 5 parts, 20 %). Classification: both cuts are stratified on the label.

    The test rows depend on ``seed`` only, so every fold of one seed shares them. Features are
    standardised by a ``StandardScaler`` fitted on the whole train part (features only, no
    labels), so all folds of a seed share one input space and one box; a regression target
    by one fitted on the labels of the fold's own training rows (``y_shift``, ``y_scale``).
    The box is the range of the standardised features of all rows (unlabelled).

    ``one_hot_domain``: the box declares the table's one-hot groups (``cg.Box(one_hot=...)``:
    exactly one column of a group on), so sampling, search and certificates see real
    categories only; otherwise each column ranges over its interval."""
    if not 0 <= fold < folds:
        raise ValueError(f"make_split: fold must be in [0, {folds}) (got {fold})")
    classify = train.task == "classification"
    if test is None:
        x_part, x_te, y_part, y_te = train_test_split(
            train.x, train.y, test_size=0.2, random_state=seed,
            stratify=train.y if classify else None,
        )  # fmt: skip
    else:
        x_part, y_part, x_te, y_te = train.x, train.y, test.x, test.y
    cut = (StratifiedKFold if classify else KFold)(folds, shuffle=True, random_state=seed)
    tr, va = list(cut.split(x_part, y_part))[fold]
    scaler = StandardScaler().fit(x_part)
    y_scaler = StandardScaler(with_mean=not classify, with_std=not classify)
    y_scaler.fit(y_part[tr, None])

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(scaler.transform(a), dtype=torch.float32)

    def ty(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(y_scaler.transform(a[:, None]), dtype=torch.float32)

    z = scaler.transform(np.concatenate([x_part, x_te]))
    low, high = z.min(0), z.max(0)
    high = np.maximum(high, low + 1e-6)  # constant features: keep the box non-degenerate
    y_sd = 1.0 if classify else float(y_scaler.scale_[0])
    y_mu = 0.0 if classify else float(y_scaler.mean_[0])
    return Split(
        tx(x_part[tr]),
        ty(y_part[tr]),
        tx(x_part[va]),
        ty(y_part[va]),
        tx(x_te),
        ty(y_te),
        cg.Box(low.tolist(), high.tolist(), one_hot=train.groups if one_hot_domain else None),
        y_sd,
        y_mu,
        torch.tensor(scaler.transform(x_te), dtype=torch.float64),
    )


def mean_ensemble(members: list[nn.Module], splits: list[Split], units: Split) -> cg.Ensemble:
    """The mean of the members in target units, expressed in the standardised units of
    ``units``: ``(mean_k (shift_k + scale_k f_k(x)) - shift_u) / scale_u``, i.e. a
    :class:`constrained_grad.Ensemble` with weights ``scale_k / (K scale_u)`` (positive, so
    monotone members give a monotone ensemble) and bias ``(mean_k shift_k - shift_u) /
    scale_u``."""
    if not members or len(members) != len(splits):
        raise ValueError(
            f"mean_ensemble: need one split per member (got {len(members)} members, "
            f"{len(splits)} splits)"
        )
    k = len(members)
    weights = [s.y_scale / (k * units.y_scale) for s in splits]
    bias = (statistics.fmean(s.y_shift for s in splits) - units.y_shift) / units.y_scale
    return cg.Ensemble(members, weights=weights, bias=bias)


def mlp(d: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """ReLU MLP ``d → hidden[0] → … → 1``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


def lmn_model(
    d: int, monotone: list[int], direction: str, lipschitz: float, hidden: tuple[int, ...]
) -> nn.Module | None:
    """Lipschitz monotonic network (Kitouni et al.), or None if the package is missing."""
    try:
        import monotonicnetworks as lmn
    except ImportError:
        return None
    sign = 1.0 if direction == "increasing" else -1.0
    flags = [sign if j in monotone else 0.0 for j in range(d)]
    layers: list[nn.Module] = []
    for k, width in enumerate(hidden):
        kind = "one-inf" if k == 0 else "inf"
        kw = {"lipschitz_const": lipschitz} if k == 0 else {}
        layers += [lmn.LipschitzLinear(d, width, kind=kind, **kw), lmn.GroupSort(width // 2)]
        d = width
    layers.append(lmn.LipschitzLinear(d, 1, kind="inf"))
    body = nn.Sequential(*layers)
    return lmn.MonotonicWrapper(body, lipschitz_const=lipschitz, monotonic_constraints=flags)


@dataclass(frozen=True)
class Config:
    """One point of the hyper-parameter grid."""

    hidden: tuple[int, ...]
    lr: float
    weight_decay: float
    margin: float = 0.0  # constrained only
    dual_lr: float = 0.0  # constrained only
    lipschitz: float = 0.0  # lmn only

    def label(self) -> str:
        parts = [
            f"hidden={'-'.join(map(str, self.hidden))}",
            f"lr={self.lr:g}",
            f"wd={self.weight_decay:g}",
        ]
        if self.dual_lr:
            parts += [f"margin={self.margin:g}", f"dual_lr={self.dual_lr:g}"]
        if self.lipschitz:
            parts.append(f"lipschitz={self.lipschitz:g}")
        return " ".join(parts)


def grid(method: str, cfg: argparse.Namespace) -> list[Config]:
    """The Cartesian product (``ParameterGrid``) of the list-valued options that matter to
    ``method``."""
    space: dict[str, list[Any]] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if method == "lmn":
        space.update(hidden=[cfg.lmn_hidden], lipschitz=cfg.lipschitz)
    else:
        space["hidden"] = [cfg.certified_hidden] if method == "certified" else cfg.hidden
    if method in ("constrained", "certified"):
        space.update(margin=cfg.margin, dual_lr=cfg.dual_lr)
    return [Config(**point) for point in ParameterGrid(space)]


def loss_fn(task: str) -> Any:
    return F.mse_loss if task == "regression" else F.binary_cross_entropy_with_logits


def metric(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, y_scale: float) -> float:
    """MSE in target units² (regression) or accuracy (classification)."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    if task == "regression":
        return float(F.mse_loss(out, y)) * y_scale**2
    return float(((out > 0).float() == y).float().mean())


def val_score(model: nn.Module, split: Split, task: str) -> tuple[float, float]:
    """Validation score, higher is better: (−MSE, 0) for regression; (accuracy, −log-loss)
    for classification (the log-loss breaks the frequent accuracy ties of small sets)."""
    acc = metric(model, split.x_val, split.y_val, task, split.y_scale)
    if task == "regression":
        return (-acc, 0.0)
    model.eval()
    with torch.no_grad():
        bce = float(F.binary_cross_entropy_with_logits(model(split.x_val), split.y_val))
    model.train()
    return (acc, -bce)


def certify_box(
    model: nn.Module,
    table: Table,
    split: Split,
    cfg: argparse.Namespace,
    seed: int = 0,
    time_limit: float | None = None,
) -> Any:
    """The exact MILP over the box (``time_limit`` seconds per MILP, default
    ``--select-time-limit``): the monotone report."""
    con = cg.Monotonic(table.monotone, table.direction, name="monotone")
    rep = cg.verify(
        model,
        [con],
        split.box,
        samples=0,
        adversarial=False,
        certify="auto",
        time_limit=cfg.select_time_limit if time_limit is None else time_limit,
        seed=seed,
        progress=False,
    )["monotone"]
    model.train()
    return rep


def test_selected_score(model: nn.Module, split: Split, task: str) -> float:
    """DIAGNOSTIC ONLY (``--test-selected``), the published protocol's score of one checkpoint:
    test MSE, or the best test accuracy over decision thresholds on the logit in [-1, 1]
    (as in the Lipschitz-monotonic-network experiment code). Never used for selection."""
    if task == "regression":
        return metric(model, split.x_test, split.y_test, task, split.y_scale)
    model.eval()
    with torch.no_grad():
        logits = model(split.x_test)
    model.train()
    thresholds = torch.linspace(-1.0, 1.0, 101)
    hits = ((logits > thresholds).float() == split.y_test).float().mean(0)
    return float(hits.max())


@dataclass
class Trained:
    """A checkpoint chosen on validation for one grid point."""

    model: nn.Module
    score: tuple[float, float]  # validation score (higher is better)
    eligible: bool  # False: no checkpoint passed the eligibility test (last state kept)
    seconds: float
    test_selected: float | None = None  # --test-selected diagnostic: best test score of any
    # certified (constrained, certified) / any (other methods) epoch; None when not asked for
    cells: int | None = None  # certified: cells of the final partition
    spec: cg.Monotonic | None = None  # certified: the constraint over cells (its partition)


def constraints_for(
    method: str, table: Table, split: Split, seed: int, conf: Config, cfg: argparse.Namespace
) -> tuple[list[cg.Monotonic], cg.Counterexamples | None]:
    """The declared constraints of ``method`` (none for unconstrained / LMN), and the
    counterexample source the Prover feeds (constrained only)."""
    mono, direction = table.monotone, table.direction
    if method == "constrained":
        source = cg.Counterexamples(
            split.box,
            capacity=cfg.ce_capacity,
            every=cfg.ce_every,
            starts=cfg.ce_starts,
            steps=cfg.ce_steps,
            seed=seed,
        )
        cons = [
            cg.Monotonic(mono, direction, name="on_batch"),
            cg.Monotonic(
                mono, direction, margin=conf.margin, where=source, reduction="pointwise",
                name="monotone",
            ),
        ]  # fmt: skip
        if cfg.box_points:
            where = cg.InBox(split.box, n=cfg.box_points)
            cons.append(
                cg.Monotonic(mono, direction, margin=conf.margin, where=where, name="in_box")
            )
        return cons, source
    if method == "certified":
        cells = cells_from(split.box, cfg)
        return [
            cg.Monotonic(mono, direction, margin=conf.margin, name="on_batch"),
            cg.Monotonic(mono, direction, where=cells, dual_lr=cfg.cells_dual_lr, name="monotone"),
        ], None
    return [], None


def train(
    method: str,
    table: Table,
    split: Split,
    seed: int,
    conf: Config,
    cfg: argparse.Namespace,
    test_selected: bool = False,
) -> Trained | None:
    """Train one model and keep the checkpoint with the best validation score among the
    eligible ones. Unconstrained / LMN: every epoch is eligible. Constrained / certified: a
    :class:`constrained_grad.Prover` certifies the constraint named ``monotone`` every
    ``--milp-every`` epochs (constrained: the exact MILP, its counterexamples fed to the
    ``Counterexamples`` source; certified: the interval certificate over the constraint's
    cells) and keeps the proved state with the best validation score; a run with no proved
    check ends not eligible (last state kept). ``test_selected``: also compute the
    ``--test-selected`` diagnostic. None: LMN missing."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    d = split.x_train.shape[1]
    task = table.task
    model: nn.Module | None
    if method == "lmn":
        model = lmn_model(d, table.monotone, table.direction, conf.lipschitz, conf.hidden)
        if model is None:
            return None
    else:
        model = mlp(d, conf.hidden)
    constraints, source = constraints_for(method, table, split, seed, conf, cfg)
    problem = cg.DerivativeProblem(model, loss_fn(task), constraints, seed=seed)
    loader = DataLoader(
        TensorDataset(split.x_train, split.y_train),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    steps = cfg.epochs * len(loader)
    callbacks: list[Any] = []
    if method == "certified":  # cosine decay to 0: the weights settle on a proved state
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
        )
        callbacks.append(lambda _: sched.step())
    else:
        opt = torch.optim.Adam(model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)

    def score(m: nn.Module) -> float:  # the Prover's: lower is better
        acc, tie = val_score(m, split, task)
        return -(acc + 1e-3 * tie)

    prover = None
    if constraints:
        prover = cg.Prover(
            split.box,
            every=max(1, cfg.milp_every) * len(loader),
            constraints=["monotone"],
            time_limit=cfg.select_time_limit if method == "constrained" else cfg.prove_time_limit,
            samples=1024 if method == "constrained" else 0,
            feed=source,
            score=score,
            restore=True,
        )
        callbacks.append(prover)
    # unconstrained / LMN: the best epoch on validation
    best: dict[str, Any] = {"score": None, "state": None, "oracle": None}

    def per_epoch(info: Any) -> None:
        if info.step % len(loader):
            return
        if prover is None:
            got = val_score(model, split, task)
            if best["score"] is None or got > best["score"]:
                best["score"], best["state"] = got, copy.deepcopy(model.state_dict())
        if test_selected and (
            prover is None or certify_box(model, table, split, cfg, seed).status == "certified"
        ):  # diagnostic: nothing is fed back, the training is the same as without it
            got_t = test_selected_score(model, split, task)
            better = min if task == "regression" else max
            best["oracle"] = got_t if best["oracle"] is None else better(best["oracle"], got_t)

    cg.fit(
        problem,
        loader,
        opt,
        dual_lr=conf.dual_lr or 1.0,
        epochs=cfg.epochs,
        callbacks=[*callbacks, per_epoch],
        progress=False,
    )
    if prover is None and best["state"] is not None:
        model.load_state_dict(best["state"])
    if prover is not None and prover.proved_state is not None:  # the best proved by score
        model.load_state_dict(prover.proved_state)
    ok = prover is None or prover.status == "proved"
    model.eval()
    cells = constraints[-1].where if method == "certified" else None
    return Trained(
        model,
        val_score(model, split, task),
        ok,
        time.perf_counter() - t0,
        best["oracle"],
        cells.n if isinstance(cells, cg.Cells) else None,
        constraints[-1] if method == "certified" else None,
    )


def search_box(
    model: nn.Module, table: Table, split: Split, cfg: argparse.Namespace, seed: int
) -> Any:
    """Sobol' sampling + adversarial search for a monotonicity violation over the data box
    (``--verify-samples``, ``--verify-starts``, ``--verify-steps``): the monotone report."""
    con = cg.Monotonic(table.monotone, table.direction, name="monotone")
    return cg.verify(
        model,
        [con],
        split.box,
        samples=cfg.verify_samples,
        starts=cfg.verify_starts,
        steps=cfg.verify_steps,
        certify=False,
        seed=seed,
        progress=False,
    )["monotone"]


def check(
    model: nn.Module, table: Table, split: Split, cfg: argparse.Namespace, seed: int
) -> tuple[float | None, bool | None, float]:
    """Verify monotonicity over the data box: (max violation, certified, MILP seconds)."""
    r = search_box(model, table, split, cfg, seed)
    if r.status == "violated":  # confirmed by autograd; no MILP needed
        return r.max_violation, False, 0.0
    proof = certify_box(model, table, split, cfg, seed, time_limit=cfg.time_limit)
    secs = sum(m.seconds for m in proof.methods if m.method == "milp")
    viol = max(v for v in (r.max_violation, proof.max_violation) if v is not None)
    return viol, {"certified": True, "violated": False}.get(proof.status), secs


def check_cells(
    model: nn.Module, spec: cg.Monotonic, split: Split, cfg: argparse.Namespace, seed: int
) -> tuple[float | None, bool | None, float]:
    """Certify a net trained over cells: ``cg.verify(certify=True)`` on its constraint over
    ``cg.Cells``, whose partition seeds the interval certificate (float64, branch and bound
    further where needed); (max violation, certified, certificate seconds)."""
    t0 = time.perf_counter()
    rep = cg.verify(
        model, [spec], split.box, samples=cfg.verify_samples, starts=cfg.verify_starts,
        steps=cfg.verify_steps, certify=True, time_limit=cfg.time_limit, seed=seed,
        progress=False,
    )[spec.name]  # fmt: skip
    model.eval()
    status = {"certified": True, "violated": False}.get(rep.status)
    return rep.max_violation, status, time.perf_counter() - t0


def check_local(
    model: nn.Module, table: Table, split: Split, cfg: argparse.Namespace
) -> dict[str, Any] | None:
    """Local certificates (``cg.verify_local``) of monotonicity on the first ``--local-rows``
    test rows: along each monotone feature over its whole range, the other features held at
    the row's values, over the data box (``--local-time-limit`` seconds for all rows). None
    when ``--local-rows`` is 0."""
    if cfg.local_rows <= 0:
        return None
    assert split.x_test64 is not None
    con = cg.Monotonic(table.monotone, table.direction, name="monotone")
    rep = cg.verify_local(
        model,
        [con],
        split.box,
        split.x_test64[: cfg.local_rows],
        time_limit=cfg.local_time_limit,
        progress=False,
    )
    model.eval()
    times = rep.seconds_per_row
    return {
        "rows": len(rep.rows),
        "proved": rep.n_certified,
        "violated": rep.n_violated,
        "unknown": rep.n_unknown,
        "median_s": times["median"],
        "max_s": times["max"],
        "seconds": [r.seconds for r in rep.rows],
        "method": rep.method,
    }


def local_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The local certificates of all seeds together: rows, proved, violated, unknown, the
    fraction proved and the median / max seconds over every row checked."""
    if not per_seed:
        return None
    times = [t for loc in per_seed for t in loc["seconds"]]
    out = {k: sum(loc[k] for loc in per_seed) for k in ("rows", "proved", "violated", "unknown")}
    out.update(
        fraction_proved=out["proved"] / out["rows"],
        median_s=statistics.median(times),
        max_s=max(times),
    )
    return out


def summarise(dataset: str, protocol: str, method: str, runs: list[dict[str, Any]]) -> dict:
    """One record per (dataset, protocol, method): mean ± std over seeds and verification."""
    scores = [r["test"] for r in runs]
    viols = [r["max_violation"] for r in runs if r["max_violation"] is not None]
    certs = [r["certified"] for r in runs]
    certified: bool | None
    if method.split("+")[0] in NOT_VERIFIED:
        certified = None
    elif all(c is True for c in certs):
        certified = True
    elif any(c is False for c in certs):
        certified = False
    else:
        certified = None
    milp = [r["milp_seconds"] for r in runs if r["milp_seconds"] is not None]
    oracle = [r["test_selected"] for r in runs if r.get("test_selected") is not None]
    return {
        "dataset": dataset,
        "protocol": protocol,
        "method": method,
        "metric": runs[0]["metric"],
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "max_violation": max(viols) if viols else None,
        "certified": certified,
        "certified_runs": f"{sum(c is True for c in certs)}/{len(certs)}",
        "seeds": len(scores),
        "milp_seconds_max": max(milp) if milp else None,
        "cells_max": max((r.get("cells") or 0 for r in runs), default=0) or None,
        "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
        "grid_size": runs[0]["grid_size"],
        "test_selected_mean": statistics.fmean(oracle) if oracle else None,
        "test_selected_std": statistics.stdev(oracle) if len(oracle) > 1 else None,
        "local": local_summary([r["local"] for r in runs if r.get("local")]),
        "runs": runs,
    }


def select(
    method: str, table: Table, split: Split, seed: int, cfg: argparse.Namespace, tag: str
) -> tuple[Config, Trained, float, int, float | None] | None:
    """Train the grid of ``method`` on ``split``; the best (eligible first, then validation
    score) grid point, the training seconds summed over the grid, the grid size and the
    ``--test-selected`` diagnostic over the whole grid (None if not asked for). None: the LMN
    package is missing."""
    confs = grid(method, cfg)
    chosen: tuple[Config, Trained] | None = None
    train_s = 0.0
    oracles: list[float] = []
    for conf in confs:
        got = train(method, table, split, seed, conf, cfg, test_selected=cfg.test_selected)
        if got is None:
            return None
        train_s += got.seconds
        if got.test_selected is not None:
            oracles.append(got.test_selected)
        if len(confs) > 1:
            print(
                f"{tag} seed {seed} {method} {conf.label()}: val {got.score[0]:.4g} "
                f"eligible {got.eligible} ({got.seconds:.0f}s)",
                flush=True,
            )
        if chosen is None or (got.eligible, got.score) > (chosen[1].eligible, chosen[1].score):
            chosen = (conf, got)
    assert chosen is not None
    oracle = None
    if oracles:
        oracle = min(oracles) if table.task == "regression" else max(oracles)
    return chosen[0], chosen[1], train_s, len(confs), oracle


def check_ensemble(
    method: str, ens: cg.Ensemble, table: Table, split: Split, cfg: argparse.Namespace, seed: int
) -> tuple[float | None, bool | None, float | None]:
    """Verify an ensemble: search for violations on the ensemble itself; certified iff every
    member is MILP-certified (a positive combination of monotone functions is monotone)."""
    if method == "lmn":  # every member monotone by construction
        return None, None, None
    found = search_box(ens, table, split, cfg, seed)
    if found.status == "violated":
        return found.max_violation, False, 0.0
    certs = []
    secs = 0.0
    for member in ens.members:
        _, c, t = check(member, table, split, cfg, seed)
        certs.append(c)
        secs += t
    return found.max_violation, (True if all(c is True for c in certs) else None), secs


def reference_row(
    method: str, table: Table, split: Split, seed: int, cfg: argparse.Namespace
) -> dict[str, Any] | None:
    """One scikit-learn reference (see ``reference_learners``) selected on validation and
    scored once on test, as a record row; None without scikit-learn. The linear model's
    monotonicity is decided exactly from its coefficients."""
    data = {
        k: getattr(split, k).double().numpy().reshape(len(getattr(split, k)), -1)
        for k in ("x_train", "x_val", "x_test")
    }
    data.update(
        {k: getattr(split, k).double().numpy().reshape(-1) for k in ("y_train", "y_val", "y_test")}
    )
    task, scale = table.task, split.y_scale
    got = refs.fit_reference(
        method, task, table.monotone, table.direction, data, seed, scale, cfg.test_selected
    )
    if got is None:
        return None
    viol = cert = None
    if method == "linear":
        viol = refs.linear_violation(got.model, table.monotone, table.direction)
        cert = viol <= 0
    # The test rows are touched here, once, after the selection.
    return {
        "test": refs.score(got.model, data["x_test"], data["y_test"], task, scale),
        "val": got.val[0] * (scale**2 if task == "regression" else 1.0),
        "eligible": True,
        "max_violation": viol,
        "certified": cert,
        "milp_seconds": None,
        "train_seconds": got.seconds,
        "test_selected": got.test_selected,
        "config": got.label,
        "grid_size": got.grid_size,
    }


def run_one(dataset: str, protocol: str, cfg: argparse.Namespace) -> list[dict[str, Any]]:
    """Every seed and method: select on validation over the grid, then test once; with
    ``--ensemble K``, K − 1 more members at the selected grid point, one per remaining fold of
    the train part (each member picks its checkpoint on its own fold), averaged."""
    heart = functools.partial(load_heart, encoding=cfg.heart_encoding)
    if protocol == "comet":
        loader = load_auto_mpg if dataset == "auto-mpg" else heart
        train_t, test_t = loader("train"), loader("test")
    else:
        train_t = {"auto-mpg": load_auto_mpg, "heart": heart, "compas": load_compas}[dataset]()
        test_t = None
    metric_name = "test_mse_mpg2" if train_t.task == "regression" else "test_accuracy"
    runs: dict[str, list[dict[str, Any]]] = {}
    tag = f"[{dataset}/{protocol}]"

    def record(name: str, seed: int, **row: Any) -> None:
        print(
            f"{tag} seed {seed} {name} [{row['config']}]: {metric_name} {row['test']:.4f} "
            f"(val {row['val']:.4g}, eligible {row['eligible']}) max_violation "
            f"{row['max_violation']} certified {row['certified']} (train "
            f"{row['train_seconds']:.0f}s, MILP {row['milp_seconds']}s)",
            flush=True,
        )
        if row.get("local"):
            loc = row["local"]
            print(
                f"{tag} seed {seed} {name} local certificates: {loc['proved']}/{loc['rows']} "
                f"test rows proved, {loc['violated']} violated, {loc['unknown']} unknown; "
                f"{loc['median_s']:.3g} s median, {loc['max_s']:.3g} s max per row",
                flush=True,
            )
        runs.setdefault(name, []).append({"seed": seed, "metric": metric_name, **row})

    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        split = make_split(train_t, test_t, seed, one_hot_domain=cfg.one_hot_domain)
        for method in cfg.methods:
            if method in refs.REFERENCES:
                row = reference_row(method, train_t, split, seed, cfg)
                if row is None:
                    print(
                        f"{tag} {method}: scikit-learn not installed, skipped (pip install "
                        "scikit-learn)"
                    )
                else:
                    record(method, seed, **row)
                continue
            picked = select(method, train_t, split, seed, cfg, tag)
            if picked is None:
                print(
                    f"{tag} {method}: package 'monotonicnetworks' not installed, skipped "
                    "(pip install monotonicnetworks)"
                )
                continue
            conf, got, train_s, n_grid, oracle = picked
            # The test rows are touched here, once per model, after the selection.
            score = metric(got.model, split.x_test, split.y_test, train_t.task, split.y_scale)
            viol: float | None
            cert: bool | None
            milp_s: float | None
            if method == "lmn":  # monotone by construction; not Linear+ReLU
                viol, cert, milp_s = None, None, None
            elif got.spec is not None:  # certified: the certificate over its cells
                viol, cert, milp_s = check_cells(got.model, got.spec, split, cfg, seed)
            else:
                viol, cert, milp_s = check(got.model, train_t, split, cfg, seed)
            common = {"config": conf.label(), "grid_size": n_grid, "cells": got.cells}
            record(
                method,
                seed,
                test=score,
                val=got.score[0],
                eligible=got.eligible,
                max_violation=viol,
                certified=cert,
                milp_seconds=milp_s,
                train_seconds=train_s,
                test_selected=oracle,
                local=None if method == "lmn" else check_local(got.model, train_t, split, cfg),
                **common,
            )
            if cfg.ensemble < 2:
                continue
            members, splits, vals, oks = [got.model], [split], [got.score[0]], [got.eligible]
            member_s = 0.0
            for fold in range(1, cfg.ensemble):
                fsplit = make_split(
                    train_t, test_t, seed, fold=fold, one_hot_domain=cfg.one_hot_domain
                )
                m = train(method, train_t, fsplit, seed + 1000 * fold, conf, cfg)
                assert m is not None
                member_s += m.seconds
                members.append(m.model)
                splits.append(fsplit)
                vals.append(m.score[0])
                oks.append(m.eligible)
            if any(oks):  # members without an eligible checkpoint stay out (training-side rule)
                keep = [k for k, ok in enumerate(oks) if ok]
                members = [members[k] for k in keep]
                splits = [splits[k] for k in keep]
                vals = [vals[k] for k in keep]
            ens = mean_ensemble(members, splits, units=split).eval()
            score = metric(ens, split.x_test, split.y_test, train_t.task, split.y_scale)
            viol, cert, milp_s = check_ensemble(method, ens, train_t, split, cfg, seed)
            record(
                f"{method}+ens{cfg.ensemble}",
                seed,
                test=score,
                val=statistics.fmean(vals),
                eligible=any(oks),
                members=len(members),
                max_violation=viol,
                certified=cert,
                milp_seconds=milp_s,
                train_seconds=train_s + member_s,
                test_selected=None,
                **common,
            )
    records = [summarise(dataset, protocol, m, rows) for m, rows in runs.items()]
    for rec in records:
        rec["domain"] = "one-hot groups" if cfg.one_hot_domain and train_t.groups else "box"
        rec["features"] = (
            f"{len(train_t.names)} ({cfg.heart_encoding})"
            if dataset == "heart"
            else str(len(train_t.names))
        )
    return records


def print_table(records: list[dict[str, Any]]) -> None:
    print(
        "| dataset | protocol | method | metric | mean ± std | seeds | grid | max violation | "
        "certified (runs) | MILP s (max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        v = "—" if r["max_violation"] is None else f"{r['max_violation']:+.3g}"
        base = r["method"].split("+")[0]
        c = NOT_VERIFIED.get(base) or f"{r['certified']} ({r['certified_runs']})"
        t = "—" if r["milp_seconds_max"] is None else f"{r['milp_seconds_max']:.2g}"
        print(
            f"| {r['dataset']} | {r['protocol']} | {r['method']} | {r['metric']} | "
            f"{r['mean']:.4g} ± {r['std']:.3g} | {r['seeds']} | {r['grid_size']} | {v} | {c} | "
            f"{t} |"
        )
    local = [r for r in records if r.get("local")]
    if local:
        print("\nLocal certificates on the test rows (cg.verify_local, every seed together)")
        print(
            "| dataset | protocol | method | rows | proved | violated | unknown | "
            "s/row median / max |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in local:
            loc = r["local"]
            print(
                f"| {r['dataset']} | {r['protocol']} | {r['method']} | {loc['rows']} | "
                f"{loc['proved']} ({100 * loc['fraction_proved']:.0f} %) | {loc['violated']} | "
                f"{loc['unknown']} | {loc['median_s']:.3g} / {loc['max_s']:.3g} |"
            )
    diag = [r for r in records if r.get("test_selected_mean") is not None]
    if diag:
        print("\nDIAGNOSTIC, not a result: the published protocol (test-selected epoch/threshold)")
        print("| dataset | protocol | method | metric | test-selected mean ± std |")
        print("|---|---|---|---|---|")
        for r in diag:
            std = r["test_selected_std"] or 0.0
            print(
                f"| {r['dataset']} | {r['protocol']} | {r['method']} | {r['metric']} | "
                f"{r['test_selected_mean']:.4g} ± {std:.3g} |"
            )


def widths(text: str) -> tuple[int, ...]:
    """``"128"`` → (128,); ``"32,32"`` → (32, 32)."""
    try:
        out = tuple(int(w) for w in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(
            f"hidden widths must be positive ints separated by commas (got {text!r})"
        )
    return out


# Hyper-parameter grid searched on validation by --tune (each option can also be given as a list).
TUNE_GRID: dict[str, list[Any]] = {
    "hidden": [(16,), (32,)],
    "lr": [3e-3, 1e-2],
    "weight_decay": [1e-4],
    "margin": [0.02],
    "dual_lr": [1.0],
    "lipschitz": [1.0, 2.0],
}
DEFAULTS: dict[str, list[Any]] = {
    "hidden": [(32,)],
    "lr": [3e-3],
    "weight_decay": [1e-4],
    "margin": [0.02],
    "dual_lr": [1.0],
    "lipschitz": [1.0],
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--dataset", choices=DATASETS, action="append", help="repeatable; default: all three"
    )
    p.add_argument(
        "--protocol",
        choices=("clean", "comet"),
        action="append",
        help="repeatable; default: both (COMPAS has clean only)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS + refs.REFERENCES,
        default=list(METHODS + refs.REFERENCES),
        help="nets (unconstrained, constrained, lmn) and scikit-learn references (linear, gbm, "
        "gbm_monotone; their own grids, no ensembles); default: all",
    )
    p.add_argument("--quick", action="store_true", help="2 seeds, fewer epochs, small searches")
    p.add_argument(
        "--tune",
        action="store_true",
        help="validation grid search over TUNE_GRID for the options not given explicitly",
    )
    p.add_argument("--seeds", type=int, default=None, help="default 5 (2 with --quick)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    grid_help = " (list: searched on validation)"
    p.add_argument(
        "--hidden",
        type=widths,
        nargs="+",
        default=None,
        help="hidden widths of the ReLU MLP, e.g. 32 or 16,16; default 32" + grid_help,
    )
    p.add_argument("--lr", type=float, nargs="+", default=None, help="default 3e-3" + grid_help)
    p.add_argument(
        "--weight-decay", type=float, nargs="+", default=None, help="default 1e-4" + grid_help
    )
    p.add_argument("--dual-lr", type=float, nargs="+", default=None, help="default 1" + grid_help)
    p.add_argument(
        "--margin",
        type=float,
        nargs="+",
        default=None,
        help="margin at the counterexample and box points (standardised units); default 0.02"
        + grid_help,
    )
    p.add_argument(
        "--lipschitz",
        type=float,
        nargs="+",
        default=None,
        help="LMN Lipschitz constant" + grid_help,
    )
    p.add_argument("--lmn-hidden", type=widths, default=(64, 64), help="LMN widths (default 64,64)")
    p.add_argument(
        "--box-points", type=int, default=256, help="uniform box points per step (0: none)"
    )
    p.add_argument("--ce-capacity", type=int, default=256)
    p.add_argument("--ce-every", type=int, default=20)
    p.add_argument("--ce-starts", type=int, default=64)
    p.add_argument("--ce-steps", type=int, default=20)
    p.add_argument(
        "--certified-hidden",
        type=widths,
        default=(64, 64),
        help="certified: hidden widths (default 64,64)",
    )
    p.add_argument(
        "--prove-time-limit", type=float, default=10.0, help="certified: seconds per Prover check"
    )
    add_cell_options(p)
    p.add_argument(
        "--cells-dual-lr", type=float, default=0.05, help="certified: dual step of the cells"
    )
    p.add_argument(
        "--milp-every",
        type=int,
        default=5,
        help="constrained / certified: a cg.Prover certifies every N epochs (constrained: MILP, "
        "counterexamples fed back; certified: over the cells) and keeps the best proved state",
    )
    p.add_argument("--select-time-limit", type=float, default=2.0, help="seconds per Prover check")
    p.add_argument("--verify-samples", type=int, default=None)
    p.add_argument("--verify-starts", type=int, default=64)
    p.add_argument("--verify-steps", type=int, default=50)
    p.add_argument("--time-limit", type=float, default=None, help="seconds per MILP")
    p.add_argument(
        "--local-rows",
        type=int,
        default=0,
        help="local certificates (cg.verify_local) of each ReLU method's selected model on the "
        "first N test rows of each seed (default 0: none)",
    )
    p.add_argument(
        "--local-time-limit",
        type=float,
        default=60.0,
        help="seconds for all the local certificates of one model (default 60)",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help=f"K > 1: also report the mean of K members, one per fold of the train part "
        f"(K ≤ {FOLDS}; members at the grid point selected on fold 0; default 1: no ensemble)",
    )
    p.add_argument(
        "--test-selected",
        action="store_true",
        help="DIAGNOSTIC: also report the published protocol's number (best test score over "
        "epochs, grid points and, for accuracy, thresholds; constrained: MILP-certified epochs "
        "only). Never used for selection; costs one MILP per epoch",
    )
    p.add_argument(
        "--heart-encoding",
        choices=HEART_ENCODINGS,
        default="onehot",
        help="Heart's nominal features (cp, restecg, slope, ca, thal): one 0/1 column per "
        "code (default) or the raw integer codes",
    )
    p.add_argument(
        "--one-hot-domain",
        action="store_true",
        help="declare one-hot columns (Heart codes, COMPAS race and sex) as groups of the box "
        "(exactly one on) for training points, search and MILP; default: each column ranges "
        "over its interval",
    )
    p.add_argument("--json", type=Path, default=None)
    cfg = p.parse_args(argv)
    for key, default in DEFAULTS.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, TUNE_GRID[key] if cfg.tune else default)
    if not 1 <= cfg.ensemble <= FOLDS:
        p.error(f"--ensemble must be between 1 and {FOLDS} (got {cfg.ensemble})")
    cfg.seeds = cfg.seeds or (2 if cfg.quick else 5)
    cfg.epochs = cfg.epochs or (60 if cfg.quick else 200)
    cfg.verify_samples = cfg.verify_samples or (4096 if cfg.quick else 16384)
    cfg.time_limit = cfg.time_limit or (30.0 if cfg.quick else 60.0)
    return cfg


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    cfg = parse(argv)
    torch.set_num_threads(1)
    datasets = cfg.dataset or (["auto-mpg"] if cfg.quick else list(DATASETS))
    protocols = cfg.protocol or ["clean", "comet"]
    records: list[dict[str, Any]] = []
    for ds in datasets:
        for protocol in protocols:
            if protocol == "comet" and ds == "compas":
                continue
            records += run_one(ds, protocol, cfg)
            if cfg.json is not None:  # after each part, so that a long run leaves results
                cfg.json.write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
    print_table(records)
    return records


if __name__ == "__main__":
    main()
