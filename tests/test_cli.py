"""The ``constrained-grad demo`` job end to end: artefacts exist, parse and agree with oracles."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import constrained_grad as cg
from constrained_grad import cli
from constrained_grad.datasets import load_auto_mpg
from constrained_grad.demo import SCENARIOS, run_demo

SRC = Path(cg.__file__).resolve().parent.parent
AUTO_MPG_CONSTRAINTS = ("mpg_decreasing_on_data", "mpg_decreasing_proved")
COMMON_FILES = {
    "history.json",
    "history.csv",
    "history.png",
    "model.pt",
    "report.md",
    "report.json",
}
PD_FILES = {f"partial_dependence_{n}.png" for n in ("displacement", "horsepower", "weight")}
QUICK = ["--no-progress", "--search-points", "256"]


@pytest.fixture(scope="module")
def auto_mpg_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One in-process run of the default scenario with a tiny budget, shared by the checks."""
    out = tmp_path_factory.mktemp("demo") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["demo", "--steps", "6", "--out", str(out), *QUICK])
    assert code == 0
    return out, buf.getvalue()


def _mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(7, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )


def check_common_artefacts(out: Path, steps: int, constraint_names: tuple[str, ...]) -> dict:
    """Every common artefact exists and parses; returns report.json."""
    for name in COMMON_FILES:
        assert (out / name).is_file(), name
    image = mpimg.imread(out / "history.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    from_json = cg.History.load_json(out / "history.json")
    from_csv = cg.History.load_csv(out / "history.csv")
    assert from_json.constraint_names == list(constraint_names)
    assert from_csv.constraint_names == list(constraint_names)
    assert from_json.steps == from_csv.steps == list(range(steps))
    for column in ("loss", "lagrangian", f"{constraint_names[0]}/violation_max"):
        np.testing.assert_array_equal(from_csv.column(column), from_json.column(column))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == steps
    assert [c["name"] for c in report["constraints"]] == list(constraint_names)
    # the training reading in the report is cg.diagnose of the saved history
    health = cg.diagnose(from_json)
    assert [c["training"]["status"] for c in report["constraints"]] == [
        health[n].status for n in constraint_names
    ]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for name in constraint_names:
        assert f"`{name}`" in markdown
    assert "## Verification" in markdown and report["verification"]["verdict"] in markdown
    state = torch.load(out / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    return report


def test_demo_in_process_writes_every_artefact(auto_mpg_run: tuple[Path, str]) -> None:
    out, printed = auto_mpg_run
    assert {p.name for p in out.iterdir()} == COMMON_FILES | PD_FILES | {"proof.png"}
    report = check_common_artefacts(out, 6, AUTO_MPG_CONSTRAINTS)
    for name in PD_FILES:
        assert mpimg.imread(out / name).shape[0] > 100
    assert report["scenario"] == "auto-mpg" and report["seed"] == 0
    for line in ("test MSE", "max violation found", "multipliers", str(out.resolve())):
        assert line in printed


def test_demo_model_file_reproduces_reported_test_mse(auto_mpg_run: tuple[Path, str]) -> None:
    """Oracle: reload model.pt into a fresh MLP and recompute the test MSE in mpg^2."""
    out, _ = auto_mpg_run
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    model = _mlp()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    data = load_auto_mpg(seed=0)
    with torch.no_grad():
        pred = model(data.x_test) * data.y_std + data.y_mean
    truth = data.y_test * data.y_std + data.y_mean
    mse = float(((pred - truth) ** 2).mean())
    assert report["metrics"]["test_mse_mpg2"] == pytest.approx(mse, rel=1e-5)


def test_demo_verification_is_reproducible_from_model_file(auto_mpg_run: tuple[Path, str]) -> None:
    """Re-verifying the saved weights with the same settings gives the reported numbers, and
    every reported counterexample is confirmed by float64 autograd."""
    out, _ = auto_mpg_run
    ver = json.loads((out / "report.json").read_text(encoding="utf-8"))["verification"]
    model = _mlp()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    box = cg.Box(ver["domain"]["low"], ver["domain"]["high"])
    again = cg.verify(
        model,
        [cg.Monotonic([1, 2, 3], "decreasing", name="p")],
        box,
        samples=256,
        starts=8,
        steps=40,
        certify=False,
        seed=0,
    )["p"]
    assert again.max_violation == pytest.approx(ver["max_violation"], rel=1e-6, abs=1e-7)
    # the default scenario always certifies, from the cells of its certified training
    assert [c["method"] for c in ver["checks"]] == ["sobol", "adversarial", "interval"]
    assert ver["status"] in ("certified", "violated", "unknown")
    if again.status == "violated":  # a violation the search finds is in the report too
        assert ver["status"] == "violated"
    m64 = _mlp().double()
    m64.load_state_dict(model.state_dict())
    for ce in ver["counterexamples"]:
        x = torch.tensor(ce["x"], dtype=torch.float64)
        grad = torch.autograd.functional.jacobian(lambda v: m64(v[None])[0, 0], x)
        assert float(grad[[1, 2, 3]].max()) == pytest.approx(ce["violation"], abs=1e-5)


@pytest.mark.slow
def test_demo_certify_option_sets_the_certificate_budget(tmp_path: Path) -> None:
    """The default scenario's certificate (interval bounds from its training cells) runs
    within --certify-seconds, one branch and bound per constrained input."""
    out = tmp_path / "cert"
    argv = ["demo", "--steps", "2", "--out", str(out), *QUICK, "--certify-seconds", "0.5"]
    assert cli.main(argv) == 0
    ver = json.loads((out / "report.json").read_text(encoding="utf-8"))["verification"]
    cert = [c for c in ver["checks"] if c["method"] == "interval"]
    assert len(cert) == 1 and cert[0]["detail"].split(",")[0] in (
        "certified",
        "unknown",
        "violated",
    )
    assert cert[0]["seconds"] < 5.0  # the 0.5 s budget, with slack for a loaded machine
    assert ver["certificate"].count("∂f[0]/∂x[") == 3


def test_demo_certify_option_runs_the_interval_certificate_on_the_tanh_scenario(
    tmp_path: Path,
) -> None:
    """The tanh network of monotone-every-output gets the interval certificate: one branch and
    bound per output, an honest verdict within the budget, never a silent skip."""
    out = tmp_path / "interval"
    argv = ["demo", "--scenario", "monotone-every-output", "--steps", "3", "--out", str(out)]
    assert cli.main([*argv, *QUICK, "--certify-seconds", "0.2"]) == 0
    ver = json.loads((out / "report.json").read_text(encoding="utf-8"))["verification"]
    methods = [c["method"] for c in ver["checks"]]
    assert methods == ["sobol", "adversarial", "interval"]
    assert ver["status"] in ("certified", "unknown", "violated")
    assert ver["certificate"].count("∂f[") == 7  # one per output, by the constrained z
    if ver["status"] == "violated":  # a counterexample the sampled search confirms
        assert ver["counterexamples"] and ver["max_violation"] > 0


@pytest.mark.parametrize(
    ("scenario", "names"),
    [
        ("monotone-every-output", ("z_on_data", "z_in_box")),
        ("gradient-matching", ("grad_match",)),
        ("jacobian-norm", ("jacobian_fro",)),
    ],
)
def test_other_scenarios_write_their_artefacts(
    tmp_path: Path, scenario: str, names: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / scenario
    code = cli.main(["demo", "--scenario", scenario, "--steps", "3", "--out", str(out), *QUICK])
    assert code == 0
    report = check_common_artefacts(out, 3, names)
    assert report["scenario"] == scenario
    assert all(v is None or isinstance(v, (int, float)) for v in report["metrics"].values())
    assert "max violation found" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--steps", "many"], "--steps"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--scenario", "nope"], "--scenario"),
        (["demo", "--certify-seconds", "soon"], "--certify-seconds"),
        (["demo", "--frobnicate"], "unrecognized arguments"),
        (["demo", "--device", "not-a-device"], "invalid device"),
        (["demo", "--device", "cuda:99"], "not available"),
        ([], "usage"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--out", str(tmp_path / "never")] if argv else []
    assert cli.main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not (tmp_path / "never" / "report.json").exists()


def test_unwritable_out_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        assert cli.main(["demo", "--out", str(out), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert "output" in err and str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_help_lists_every_scenario_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in text
    for option in (
        "--steps",
        "--out",
        "--device",
        "--seed",
        "--no-progress",
        "--scenario",
        "--certify-seconds",
        "--threads",
        "--search-points",
    ):
        assert option in text
    for artefact in COMMON_FILES:
        assert artefact in text


def test_run_demo_restores_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    run_demo("gradient-matching", steps=1, out_dir=tmp_path, progress=False, threads=1, log=None)
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_demo_as_subprocess(tmp_path: Path) -> None:
    """``python -m constrained_grad demo`` in a fresh interpreter (the README's command)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "constrained_grad",
            "demo",
            "--steps",
            "20",
            "--out",
            "tmp",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "tmp"
    check_common_artefacts(out, 20, AUTO_MPG_CONSTRAINTS)
    assert "test MSE" in proc.stdout and str(out.resolve()) in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "constrained_grad", "demo", "--device", "gpu-please"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "invalid device" in bad.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, constrained_grad.cli, constrained_grad.demo; "
            "sys.exit('matplotlib' in sys.modules)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, "cli/demo must not import matplotlib at import time"


# ------------------------------------------------------------------ diagnose
def _runaway_history() -> cg.History:
    """'box' keeps a 0.05 violation while its multiplier climbs; 'data' is met throughout."""
    h = cg.History(["box", "data"])
    for k in range(40):
        lam = 0.1 * k
        box = [0.0, 0.05, 0.01] + [lam] * 5
        data = [-0.3, -0.1, 0.0] + [0.0] * 5
        h.log_step(k, 0, float(k), [1.0, 1.0, *box, *data])
    return h


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_diagnose_prints_the_reading_and_strict_fails_on_runaway(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = _runaway_history()
    path = tmp_path / f"history{suffix}"
    h.save_json(path) if suffix == ".json" else h.save_csv(path)
    expected = cg.diagnose(h)
    assert cli.main(["diagnose", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 40 steps, 2 constraint(s)" in out
    for health in expected.values():
        assert str(health) in out
    assert expected["box"].status == "runaway" and expected["data"].status == "inactive"
    assert cli.main(["diagnose", str(path), "--strict"]) == 1
    # a tolerance above the violation makes 'box' met, so --strict passes
    assert cli.main(["diagnose", str(path), "--strict", "--tolerance", "0.1"]) == 0
    assert "box: satisfied" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_diagnose_reads_an_equality_as_an_equality_from_either_file(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Signed h alternates in sign and shrinks: converging as an equality; its largest
    value stays >= 0.3, which an inequality reading would not call converging."""
    h = cg.History(["eq"], meta={"constraint_kinds": {"eq": "equality"}})
    for k in range(40):
        mean = (-1) ** k * 0.5 * 0.9**k
        h.log_step(k, 0, float(k), [1.0, 1.0, mean, abs(mean) + 0.3, 1.0] + [-1 - 0.01 * k] * 5)
    expected = cg.diagnose(h)["eq"]
    assert expected.status == "converging"
    assert cg.diagnose(h, kinds={"eq": "inequality"})["eq"].status != "converging"
    path = tmp_path / f"history{suffix}"
    h.save_json(path) if suffix == ".json" else h.save_csv(path)
    assert cli.main(["diagnose", str(path)]) == 0
    assert f"  {expected}" in capsys.readouterr().out


def test_diagnose_reads_the_demo_history(auto_mpg_run: tuple[Path, str], capsys) -> None:
    out, _ = auto_mpg_run
    assert cli.main(["diagnose", str(out / "history.json")]) == 0
    printed = capsys.readouterr().out
    for name in AUTO_MPG_CONSTRAINTS:
        assert f"  {name}: too-short" in printed  # 6 steps are too few to judge


def test_diagnose_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "history.json"
    corrupt.write_text("{not json", encoding="utf-8")
    cases = [
        ([str(tmp_path / "missing.json")], "no such file"),
        ([str(tmp_path / "history.txt")], "must be a .json or .csv file"),
        ([str(corrupt)], "cannot read"),
    ]
    for argv, message in cases:
        assert cli.main(["diagnose", *argv]) == 2
        assert message in capsys.readouterr().err
    for bad in (["--window", "0"], ["--window", "1.5"], ["--tolerance", "-1"]):
        assert cli.main(["diagnose", str(corrupt), *bad]) == 2
        assert "diagnose: error: argument" in capsys.readouterr().err


@pytest.mark.slow
def test_default_demo_ends_with_a_proof_and_a_clean_diagnosis(tmp_path: Path) -> None:
    """The README's first command: the default scenario, full budget, certifies the declared
    monotonicity over the whole box, and `diagnose --strict` on its history exits 0."""
    out = tmp_path / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["demo", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "certified"
    assert "certified" in buf.getvalue()
    assert "certified" in (out / "report.md").read_text(encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["diagnose", "--strict", str(out / "history.json")]) == 0
