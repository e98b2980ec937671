"""Every example's ``main`` runs and returns sane metrics; its key claim is checked where cheap.

Quick runs (few steps) are in the default suite; the full runs that establish each example's
headline claim (monotone everywhere found, bound held, gradients matched) are marked slow.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The examples' models are tiny: one thread is fastest, and robust to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_finite(metrics: dict) -> None:
    assert metrics, "main() must return its key metrics"
    for key, value in metrics.items():
        assert isinstance(value, float), key
        assert math.isfinite(value), key


def test_every_example_has_main_with_the_common_signature() -> None:
    import inspect

    names = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert names == [
        "auto_mpg_monotone",
        "cooper_own_loop",
        "distributed_training",
        "gradient_matching",
        "jacobian_norm_1000_outputs",
        "monotone_every_output",
        "per_sample_jacobians",
    ]
    for name in names:
        params = inspect.signature(load(name).main).parameters
        assert list(params)[:3] == ["steps", "out_dir", "seed"], name
        assert params["out_dir"].default is None and params["seed"].default == 0, name
        text = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
        assert 'if __name__ == "__main__":\n    main()' in text, name


def test_monotone_every_output_quick() -> None:
    m = load("monotone_every_output").main(steps=20)
    check_finite(m)
    assert m["column_max_abs_error"] < 1e-5  # one column == the autograd Jacobian's column
    for key in ("fraction_violating", "baseline_fraction_violating"):
        assert 0.0 <= m[key] <= 1.0


@pytest.mark.slow
def test_monotone_every_output_full(tmp_path: Path) -> None:
    m = load("monotone_every_output").main(out_dir=tmp_path)
    assert (tmp_path / "monotone_every_output_pd_z.png").stat().st_size > 0
    assert m["baseline_fraction_violating"] > 0.0  # the question is real: it does decrease
    assert m["fraction_violating"] == 0.0 and m["max_violation"] <= 0.0
    assert m["test_mse"] < 2 * m["baseline_test_mse"]


def test_gradient_matching_quick() -> None:
    ex = load("gradient_matching")
    short, longer = ex.main(steps=2), ex.main(steps=150)
    for m in (short, longer):
        check_finite(m)
        assert m["seed_jacobian_requires_grad"] == 0.0  # the question's bug, reproduced
        assert m["cg_gradient_requires_grad"] == 1.0
    assert longer["heldout_gradient_rel_error"] < 0.5 * short["heldout_gradient_rel_error"]


@pytest.mark.slow
def test_gradient_matching_full() -> None:
    m = load("gradient_matching").main()
    assert m["heldout_gradient_rel_error"] < 0.02  # analytic oracle: grad V = 2 P x
    assert m["heldout_value_rel_error"] < 0.02  # V(x) - V(0) = x^T P x


def test_jacobian_norm_quick() -> None:
    m = load("jacobian_norm_1000_outputs").main(steps=4)
    check_finite(m)
    assert m["estimator_rel_error_64_projections"] < 0.1  # unbiased projections vs exact
    assert 0.0 <= m["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_jacobian_norm_full() -> None:
    m = load("jacobian_norm_1000_outputs").main()
    assert m["baseline_heldout_rms_jacobian_fro"] > 1.5 * m["max_norm"]  # the bound is active
    assert m["heldout_rms_jacobian_fro"] <= 1.05 * m["max_norm"]  # exact norm, held out
    assert m["test_accuracy"] > 0.8
    assert m["seconds_projection"] < m["seconds_exact"]


def test_per_sample_jacobians(tmp_path: Path) -> None:
    m = load("per_sample_jacobians").main(steps=4, out_dir=tmp_path)
    check_finite(m)
    assert m["cnn_jacobian_numel"] == 10 * 4 * 25 and m["cnn_nonzero_fraction"] > 0.0
    for key in (
        "cnn_max_abs_error",
        "rnn_step_max_abs_error",
        "forum_loop_max_abs_error",
        "rnn_chain_rule_max_abs_error",
    ):
        assert m[key] < 1e-10, key
    saved = torch.load(tmp_path / "per_sample_jacobians.pt", weights_only=True)
    assert saved["rnn_total"].shape == (6, 8, 8)


def test_auto_mpg_monotone_quick() -> None:
    m = load("auto_mpg_monotone").main(steps=10)
    check_finite(m)
    assert 0.0 < m["test_mse_mpg2"] < 200.0 and 0.0 < m["baseline_test_mse_mpg2"] < 200.0


@pytest.mark.slow
def test_auto_mpg_monotone_full(tmp_path: Path) -> None:
    m = load("auto_mpg_monotone").main(out_dir=tmp_path)
    assert m["baseline_fraction_violating"] > 0.1  # unconstrained: not monotone
    assert m["fraction_violating"] == 0.0 and m["max_violation"] <= 0.0
    assert m["test_mse_mpg2"] < 12.0
    assert torch.load(tmp_path / "auto_mpg_model.pt", weights_only=True)


def test_cooper_own_loop_matches_fit() -> None:
    m = load("cooper_own_loop").main(steps=40)
    check_finite(m)
    assert m["dual_groups_in_registration_order"] == 1.0
    assert m["max_param_diff_vs_fit"] < 1e-6  # same simultaneous update as cg.fit
    assert m["max_multiplier_diff_vs_fit"] < 1e-6


def test_distributed_training_runs_in_one_process(tmp_path: Path) -> None:
    """Without torchrun the example is a plain single-process run (the 2-process run is
    tests/training/test_distributed.py); it writes its checkpoint, history and plot."""
    m = load("distributed_training").main(steps=30, out_dir=tmp_path)
    check_finite(m)
    assert m["world_size"] == 1.0 and m["steps"] == 30.0
    for name in ("checkpoint/checkpoint.pt", "history.json", "history.png"):
        assert (tmp_path / name).is_file(), name
    history = __import__("constrained_grad").History.load_json(tmp_path / "history.json")
    assert history.column("loss")[-1] == pytest.approx(m["loss"])
