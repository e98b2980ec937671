"""Command line: ``constrained-grad demo`` (also ``python -m constrained_grad demo``) and
``constrained-grad diagnose HISTORY`` (what each constraint and its multiplier did).

Exit codes: 0 success, 2 bad arguments (unknown option, bad number, unusable ``--out`` or
``--device``, unreadable history), 1 a failure while running (``diagnose --strict``: some
constraint ``runaway``, ``violated`` or ``non-finite``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

PROG = "constrained-grad"

_DEMO_DESCRIPTION = """\
Train a network under constraints on its input derivatives, verify it, and write the
artefacts into --out:

  history.json, history.csv   per-step loss, constraint violations and Lagrange multipliers
  history.png                 the same, plotted
  partial_dependence_*.png    average prediction and slope along each constrained input
  proof.png                   certified training (auto-mpg): cells, cells whose bound holds,
                              worst bound, and the Prover's checks
  model.pt                    trained state_dict (torch.load(path, weights_only=True))
  report.md, report.json      setup, test metrics, each constraint's violations, and the
                              verification: the property searched over the whole input box
                              (Sobol' sampling + adversarial gradient ascent) and a
                              certificate: auto-mpg trains with certified cells and is proved
                              from them; other scenarios with --certify-seconds

With no option: the auto-mpg scenario, an MLP 7-64-64-1 on the Auto MPG data shipped in
the package (UCI, CC BY 4.0) with mpg decreasing in displacement, horsepower and weight,
trained under certified training (cg.Cells, cg.Prover) and proved monotone over the whole
data box, in under a minute on a laptop CPU.
"""


def _scenarios_epilog() -> str:
    from constrained_grad.demo import SCENARIOS

    lines = ["scenarios (--scenario NAME; default steps in brackets):"]
    for s in SCENARIOS.values():
        lines.append(f"  {s.name:<23} {s.title} [{s.default_steps}]")
    lines += [
        "",
        "examples:",
        f"  {PROG} demo",
        f"  {PROG} demo --steps 50 --out /tmp/quick --no-progress",
        f"  {PROG} demo --scenario jacobian-norm --device cuda",
        f"  {PROG} demo --certify-seconds 60   # a larger certificate budget",
        f"  {PROG} demo --scenario monotone-every-output --certify-seconds 30   # interval",
    ]
    return "\n".join(lines)


def _number(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], wanted: str
) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` the text, then require ``ok``; else "expected ..."."""

    def parse(text: str) -> Any:
        def shown() -> str:  # a 5000-digit argument is cut short
            return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"

        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted} (got {shown()})") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {wanted} (got {shown()})")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_seed = _number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")
_seconds = _number(float, lambda v: 0 <= v < math.inf, "a finite number of seconds >= 0")
_fraction = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
_non_negative = _number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")


#: statuses that make ``diagnose --strict`` exit with 1
FAILING = ("runaway", "violated", "non-finite")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from constrained_grad import __version__
    from constrained_grad.demo import DEFAULT_OUT_DIR, SCENARIOS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train neural networks under constraints on their input derivatives "
        "(monotonicity, derivative bounds, gradient matching, Jacobian norms), solved with "
        "Lagrangian methods on Cooper.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train, plot, save and verify a constrained model end to end",
        description=_DEMO_DESCRIPTION,
        epilog=_scenarios_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="auto-mpg",
        help="which demo to run (default: auto-mpg; list below)",
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="training steps (default: the scenario's; use e.g. 20 for a quick run)",
    )
    demo.add_argument(
        "--out",
        default=DEFAULT_OUT_DIR,
        metavar="DIR",
        help=f"output folder, created if missing (default: ./{DEFAULT_OUT_DIR})",
    )
    demo.add_argument(
        "--device",
        default="cpu",
        metavar="D",
        help="torch device: cpu, cuda, cuda:1, mps, ... (default: cpu)",
    )
    demo.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="seeds the data split, initialisation, data order and constraint points (default: 0)",
    )
    demo.add_argument(
        "--no-progress", action="store_true", help="do not show the training progress bar"
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default: 1; the demo's small models run fastest on one "
        "thread, especially when other processes share the CPU)",
    )
    demo.add_argument(
        "--search-points",
        type=_positive_int,
        default=2**14,
        metavar="N",
        help="Sobol' points sampled in the verification search; the adversarial search "
        "starts from N/128 of them (default: 16384)",
    )
    demo.add_argument(
        "--certify-seconds",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="time budget of the certificate of monotonicity over the whole box: auto-mpg "
        "always certifies (interval bounds from its training cells; default 20 s); the "
        "monotone-every-output scenario certifies only when S > 0 (interval branch and bound; "
        "default: 0 = skip)",
    )
    diag = sub.add_parser(
        "diagnose",
        help="read a saved history: what each constraint and its multiplier did",
        description="Print cg.diagnose's reading of a saved History (history.json or "
        "history.csv, e.g. from the demo or History.save_json): per constraint one of "
        "inactive, satisfied, boundary, converging, runaway, violated, non-finite, too-short, "
        "with the "
        "numbers and what to try. Both files carry the constraint kinds (in a CSV, its "
        "first '#' line); a CSV without that line, written by an older version, reads exact "
        "equalities as inequalities.",
    )
    diag.add_argument("history", metavar="HISTORY", help="path of history.json or history.csv")
    diag.add_argument(
        "--window",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="fraction of the logged steps, from the end, that is read (default: 0.5)",
    )
    diag.add_argument(
        "--tolerance",
        type=_non_negative,
        default=0.0,
        metavar="T",
        help="violations up to T count as met (default: 0)",
    )
    diag.add_argument(
        "--strict",
        action="store_true",
        help=f"exit with 1 if a constraint reads {', '.join(FAILING)} (for scripts and CI)",
    )
    return parser


def _diagnose(args: argparse.Namespace) -> int:
    from pathlib import Path

    from constrained_grad.errors import ConstrainedGradError
    from constrained_grad.history import History, diagnose

    path = Path(args.history)
    who = f"{PROG} diagnose: error"
    if path.suffix not in (".json", ".csv"):
        print(f"{who}: HISTORY must be a .json or .csv file (got {path}).", file=sys.stderr)
        return 2
    if not path.exists():  # a directory or FIFO is named by the loader (never opened)
        print(f"{who}: no such file {path}. Pass the history.json a run saved.", file=sys.stderr)
        return 2
    try:
        history = History.load_json(path) if path.suffix == ".json" else History.load_csv(path)
        report = diagnose(history, window=args.window, tolerance=args.tolerance)
    except (ConstrainedGradError, OSError, ValueError) as err:
        print(f"{who}: cannot read {path}: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {len(history)} steps, {len(report)} constraint(s)")
    for health in report.values():
        print(f"  {health}")
    failing = [n for n, h in report.items() if h.status in FAILING]
    return 1 if args.strict and failing else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``constrained-grad`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "diagnose":
        return _diagnose(args)

    from constrained_grad.demo import check_device, prepare_out_dir, run_demo
    from constrained_grad.errors import ConstrainedGradError, InputValidationError

    demo_parser_prog = f"{PROG} demo"
    try:  # argument problems found before any work: exit code 2, like argparse
        check_device(args.device)
        prepare_out_dir(args.out)
    except InputValidationError as err:
        print(f"{demo_parser_prog}: error: {str(err).removeprefix('demo: ')}", file=sys.stderr)
        return 2
    try:
        result = run_demo(
            args.scenario,
            steps=args.steps,
            out_dir=args.out,
            device=args.device,
            seed=args.seed,
            progress=not args.no_progress,
            certify_seconds=args.certify_seconds,
            threads=args.threads,
            search_points=args.search_points,
        )
    except KeyboardInterrupt:
        print(f"{demo_parser_prog}: interrupted", file=sys.stderr)
        return 130
    except ConstrainedGradError as err:
        print(f"{demo_parser_prog}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print()
    for line in result.summary:
        print(line)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
