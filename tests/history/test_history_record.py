"""History records: layout, validation, resume helpers and exact JSON/CSV round trips."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.history.record import (
    MAX_LOGGED_MULTIPLIERS,
    STATS,
    EvalRecord,
    History,
    history_columns,
)

NAMES = ["mono", "lip/x0"]  # a "/" inside a name must not confuse the file layouts
SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1]


def canon(h: History) -> str:
    """Exact, NaN-aware fingerprint: repr of every stored float (repr round-trips floats)."""
    d = h.to_dict()
    return repr(
        (
            d["constraint_names"],
            d["step"],
            d["epoch"],
            d["wall_time"],
            d["values"],
            [h.multiplier_values(n) for n in h.constraint_names],
        )
    )


def make_history(n_steps: int = 12, seed: int = 0) -> History:
    rng = random.Random(seed)
    h = History(NAMES, meta={"seed": seed, "model": "mlp", "lr": 1e-3, "tags": ["a", "b"]})
    for s in range(n_steps):
        values = [rng.uniform(-3, 3) for _ in h.columns]
        values[s % len(values)] = SPECIAL[s % len(SPECIAL)]
        if s == 0:
            values[0] = math.nan  # no loss
        mult = None
        if s % 3 != 1:
            mult = {"mono": [rng.uniform(0, 2) for _ in range(3 + s % 2)]}
            mult["mono"][0] = SPECIAL[(s + 3) % len(SPECIAL)]
            if s % 4 == 0:
                mult["lip/x0"] = [rng.uniform(0, 1)]
        h.log_step(2 * s, s // 5, 0.25 * s + rng.random(), values, mult)
        if s % 5 == 4:
            h.log_eval(2 * s, {"val_loss": rng.random(), "val_violation": math.inf})
    return h


def test_columns_follow_the_documented_layout():
    h = History(["a", "b"])
    expected = ["loss", "lagrangian"]
    for n in ("a", "b"):
        expected += [
            f"{n}/violation_mean",
            f"{n}/violation_max",
            f"{n}/fraction_violated",
            f"{n}/multiplier_mean",
            f"{n}/multiplier_max",
            f"{n}/multiplier_min",
            f"{n}/multiplier_q50",
            f"{n}/multiplier_q90",
        ]
    assert h.columns == expected == history_columns(["a", "b"])
    assert len(h) == 0 and h.last() is None and h.steps == []
    h.columns.append("x")  # a copy: the layout cannot be changed from outside
    assert len(h.columns) == len(expected)


def test_accessors_return_what_was_logged():
    h = History(["a", "b"])
    rows = []
    for s in range(4):
        row = [float(10 * s + i) for i in range(len(h.columns))]
        rows.append(row)
        h.log_step(s + 1, s, 0.5 * s, row, {"b": [1.0 * s, 2.0 * s]} if s % 2 else None)
    assert len(h) == 4
    assert h.steps == [1, 2, 3, 4] and h.epochs == [0, 1, 2, 3]
    assert h.wall_times == [0.0, 0.5, 1.0, 1.5]
    for i, c in enumerate(h.columns):
        assert h.column(c) == [r[i] for r in rows]
    assert h.column("step") == [1.0, 2.0, 3.0, 4.0]
    a = h.constraint("a")
    assert list(a) == list(STATS)
    assert a["violation_max"] == [r[3] for r in rows]
    assert h.constraint("b")["multiplier_q90"] == [r[17] for r in rows]
    assert h.multiplier_values("b") == [[], [1.0, 2.0], [], [3.0, 6.0]]
    assert h.multiplier_values("a") == [[], [], [], []]
    last = h.last()
    assert last is not None
    assert last["step"] == 4 and last["epoch"] == 3 and last["wall_time"] == 1.5
    assert [last[c] for c in h.columns] == rows[-1]


def test_records_are_detached_plain_floats():
    h = History(["a"])
    values = [torch.tensor(1.0, dtype=torch.float64)] + [float(i) for i in range(9)]
    mult = {"a": [0.1, 0.2]}
    h.log_step(0, 0, 0.0, values, mult)
    values[1] = 123.0
    mult["a"][0] = 99.0
    assert h.column("loss") == [1.0] and type(h.column("loss")[0]) is float
    assert h.column("lagrangian") == [0.0]
    assert h.multiplier_values("a") == [[0.1, 0.2]]
    got = h.multiplier_values("a")
    got[0][0] = -1.0  # accessors hand out copies
    assert h.multiplier_values("a") == [[0.1, 0.2]]


def test_wrong_number_of_values_names_expected_and_got():
    h = History(["a", "b"])
    with pytest.raises(InputValidationError, match=r"expected 18 values.*got 17"):
        h.log_step(0, 0, 0.0, [0.0] * 17)
    with pytest.raises(InputValidationError, match=r"expected 18 values.*got 19"):
        h.log_step(0, 0, 0.0, [0.0] * 19)
    assert len(h) == 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"values": ["x"] + [0.0] * 9}, "real numbers"),
        ({"step": 1.5}, "step must be an integer"),
        ({"epoch": "0"}, "epoch must be an integer"),
        ({"multipliers": {"nope": [1.0]}}, "unknown constraint 'nope'"),
        ({"multipliers": {"a": [0.0] * (MAX_LOGGED_MULTIPLIERS + 1)}}, "at most 32"),
        ({"multipliers": {"a": [None]}}, "multiplier values of 'a'"),
    ],
)
def test_log_step_rejects_bad_input(kwargs, pattern):
    h = History(["a"])
    args = {"step": 0, "epoch": 0, "wall_time": 0.0, "values": [0.0] * 10}
    args.update(kwargs)
    with pytest.raises(InputValidationError, match=pattern):
        h.log_step(**args)
    assert len(h) == 0  # nothing half-appended


@pytest.mark.parametrize(
    "names", [["a", "a"], ["a", ""], "abc", [1]], ids=["dup", "empty", "str", "int"]
)
def test_constructor_rejects_bad_names(names):
    with pytest.raises(InputValidationError):
        History(names)


def test_steps_must_increase_and_truncate_allows_resume():
    h = make_history(10)  # steps 0, 2, ..., 18; evals at 8 and 18
    with pytest.raises(InputValidationError, match=r"strictly increase.*truncate"):
        h.log_step(18, 0, 0.0, [0.0] * len(h.columns))
    before = canon(h)
    assert h.truncate(100) == 0 and canon(h) == before
    assert h.truncate(9) == 5
    assert h.steps == [0, 2, 4, 6, 8]
    assert [e.step for e in h.evals] == [8]
    assert h.truncate(7) == 1
    assert h.evals == []
    h.log_step(8, 1, 9.0, [1.0] * len(h.columns))
    assert h.steps[-1] == 8 and h.column("loss")[-1] == 1.0
    assert h.truncate(-1) == 5 and len(h) == 0


def test_extend_joins_runs_and_checks_layout_and_order():
    full = make_history(10)
    head = full.copy()
    head.truncate(9)
    cut = full.steps.index(10)
    tail = History(NAMES)  # the records after step 9, logged again
    for i in range(cut, len(full)):
        row = [full.column(c)[i] for c in full.columns]
        mult = {n: full.multiplier_values(n)[i] for n in NAMES if full.multiplier_values(n)[i]}
        tail.log_step(full.steps[i], full.epochs[i], full.wall_times[i], row, mult or None)
    for e in full.evals:
        if e.step > 9:
            tail.log_eval(e.step, e.metrics)
    head.extend(tail)
    assert canon(head) == canon(full)
    assert [(e.step, repr(e.metrics)) for e in head.evals] == [
        (e.step, repr(e.metrics)) for e in full.evals
    ]
    with pytest.raises(InputValidationError, match="starts at step 10"):
        head.extend(tail)
    with pytest.raises(InputValidationError, match="layouts differ"):
        head.extend(History(["other"]))


def test_evals():
    h = History(["a"])
    h.log_eval(0, {"acc": 0.5})
    h.log_eval(0, {"loss": 1.0})
    h.log_eval(3, {"acc": 0.75, "loss": torch.tensor(0.25)})
    assert h.evals == [
        EvalRecord(0, {"acc": 0.5}),
        EvalRecord(0, {"loss": 1.0}),
        EvalRecord(3, {"acc": 0.75, "loss": 0.25}),
    ]
    assert h.eval_series("acc") == ([0, 3], [0.5, 0.75])
    with pytest.raises(InputValidationError, match="Known metrics"):
        h.eval_series("f1")
    with pytest.raises(InputValidationError, match="must not decrease"):
        h.log_eval(2, {"acc": 1.0})
    with pytest.raises(InputValidationError, match="real number"):
        h.log_eval(4, {"acc": "high"})


def test_unknown_names_in_accessors():
    h = make_history(3)
    with pytest.raises(InputValidationError, match="unknown column 'loss2'"):
        h.column("loss2")
    with pytest.raises(InputValidationError, match="unknown constraint 'x'"):
        h.constraint("x")
    with pytest.raises(InputValidationError, match="unknown constraint 'x'"):
        h.multiplier_values("x")


def test_json_round_trip_is_exact(tmp_path):
    h = make_history(20)
    path = tmp_path / "h.json"
    h.save_json(path)
    text = path.read_text()

    def reject(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(text, parse_constant=reject)  # strict JSON: no NaN/Infinity literals
    back = History.load_json(path)
    assert canon(back) == canon(h)
    assert back.meta == h.meta
    assert repr(back.evals) == repr(h.evals)
    assert back.columns == h.columns
    # -0.0, inf, nan and subnormals survived bit-for-bit (repr distinguishes -0.0)
    assert any(repr(v) == "-0.0" for c in h.columns for v in back.column(c))
    assert any(math.isnan(v) for v in back.column("loss"))
    # dict round trip (in memory) is exact too
    assert canon(History.from_dict(h.to_dict())) == canon(h)


def test_csv_round_trip_is_exact(tmp_path):
    h = make_history(20)
    path = tmp_path / "h.csv"
    h.save_csv(path)
    meta_line, header_line, *_ = path.read_text().splitlines()
    assert meta_line.startswith("# ") and json.loads(meta_line[2:]) == {
        "format": "constrained_grad.History",
        "version": 1,
        "meta": h.meta,
    }
    header = header_line.split(",")
    assert header[:5] == ["step", "epoch", "wall_time", "loss", "lagrangian"]
    assert header[-5:] == [
        "mono/multiplier[0]",
        "mono/multiplier[1]",
        "mono/multiplier[2]",
        "mono/multiplier[3]",
        "lip/x0/multiplier[0]",
    ]
    back = History.load_csv(path)
    assert canon(back) == canon(h)
    assert back.constraint_names == NAMES
    assert back.meta == h.meta and back.evals == []  # the step table and the meta only
    with_meta = History.load_csv(path, meta={"run": 1}, constraint_names=NAMES)
    assert with_meta.meta == {"run": 1} and canon(with_meta) == canon(h)
    # a file without the meta line (an older version's) still loads, with an empty meta
    old = tmp_path / "old.csv"
    old.write_text(path.read_text().split("\n", 1)[1])
    assert not old.read_text().startswith("#")
    back = History.load_csv(old)
    assert back.meta == {} and canon(back) == canon(h)


def test_csv_meta_line_must_be_a_history_meta_line(tmp_path):
    h = make_history(3)
    h.save_csv(tmp_path / "h.csv")
    meta_line, rest = (tmp_path / "h.csv").read_text().split("\n", 1)
    for bad, match in [
        ("# just a note", "not the meta line of a saved History"),
        ('# {"format": "other", "meta": {}}', "not the meta line of a saved History"),
        (meta_line.replace('"version": 1', '"version": 7'), "format version 7"),
        (meta_line.replace('"meta": {', '"meta": [{').replace("}}", "}]}"), "must be an object"),
    ]:
        (tmp_path / "bad.csv").write_text(bad + "\n" + rest)
        with pytest.raises(CheckpointError, match=match):
            History.load_csv(tmp_path / "bad.csv")
    h.meta["tensor"] = torch.zeros(1)
    with pytest.raises(InputValidationError, match="save_csv: meta must be JSON-compatible"):
        h.save_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text() == meta_line + "\n" + rest  # left as it was


def test_csv_of_history_without_multipliers(tmp_path):
    h = History(["a"])
    h.log_step(5, 1, 1.5, [math.inf, -math.inf] + [math.nan] * 8)
    h.save_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines() == [
        ",".join(["step", "epoch", "wall_time", *h.columns]),
        "5,1,1.5,inf,-inf," + ",".join(["nan"] * 8),
    ]
    assert canon(History.load_csv(tmp_path / "h.csv")) == canon(h)


def test_empty_history_round_trips(tmp_path):
    h = History(["a", "b"], meta={"x": 1})
    h.save_json(tmp_path / "e.json")
    h.save_csv(tmp_path / "e.csv")
    for back in (History.load_json(tmp_path / "e.json"), History.load_csv(tmp_path / "e.csv")):
        assert len(back) == 0 and back.constraint_names == ["a", "b"]


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(floats, min_size=10, max_size=10), min_size=1, max_size=6),
    mults=st.lists(
        st.one_of(st.none(), st.lists(floats, min_size=0, max_size=5)), min_size=6, max_size=6
    ),
    walls=st.lists(floats, min_size=6, max_size=6),
)
def test_round_trips_are_exact_for_any_floats(rows, mults, walls, tmp_path_factory):
    h = History(["c"])
    for i, row in enumerate(rows):
        m = mults[i]
        h.log_step(3 * i, i, walls[i], row, {"c": m} if m is not None else None)
    d = tmp_path_factory.mktemp("rt")
    h.save_json(d / "h.json")
    h.save_csv(d / "h.csv")
    assert canon(History.load_json(d / "h.json")) == canon(h)
    assert canon(History.load_csv(d / "h.csv")) == canon(h)


def test_loading_a_different_layout_fails_clearly(tmp_path):
    h = make_history(5)
    h.save_json(tmp_path / "h.json")
    h.save_csv(tmp_path / "h.csv")
    with pytest.raises(
        CheckpointError,
        match=r"records constraints \['mono', 'lip/x0'\], "
        r"expected \['mono'\]",
    ):
        History.load_json(tmp_path / "h.json", constraint_names=["mono"])
    with pytest.raises(CheckpointError, match="expected"):
        History.load_csv(tmp_path / "h.csv", constraint_names=["lip/x0", "mono"])

    data = json.loads((tmp_path / "h.json").read_text())
    data["columns"] = data["columns"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="different layout"):
        History.load_json(tmp_path / "bad.json")

    data = json.loads((tmp_path / "h.json").read_text())
    data["values"]["loss"] = data["values"]["loss"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="different lengths"):
        History.load_json(tmp_path / "short.json")

    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a saved History"):
        History.load_json(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        History.load_json(tmp_path / "broken.json")

    meta, header, row, *_ = (tmp_path / "h.csv").read_text().splitlines()
    (tmp_path / "renamed.csv").write_text(
        "\n".join([meta, header.replace("mono/fraction_violated", "mono/frac"), row])
    )
    with pytest.raises(CheckpointError, match="does not match the layout"):
        History.load_csv(tmp_path / "renamed.csv")
    (tmp_path / "cells.csv").write_text("\n".join([meta, header, row + ",1.0"]))
    with pytest.raises(CheckpointError, match="line 3"):  # line 1 is the meta line
        History.load_csv(tmp_path / "cells.csv")
    (tmp_path / "cells.csv").write_text("\n".join([header, row + ",1.0"]))
    with pytest.raises(CheckpointError, match="line 2"):
        History.load_csv(tmp_path / "cells.csv")
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CheckpointError, match="does not start with columns"):
        History.load_csv(tmp_path / "foreign.csv")
    (tmp_path / "text.csv").write_text(
        "\n".join([meta, header, row.replace(row.split(",")[3], "abc", 1)])
    )
    with pytest.raises(CheckpointError, match="not a float"):
        History.load_csv(tmp_path / "text.csv")


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "h.json"
    path.write_text("old content")
    h = make_history(3)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        h.save_json(path)
    with pytest.raises(OSError, match="disk full"):
        h.save_csv(path)
    monkeypatch.undo()
    assert path.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]  # no temp files left
    h.save_json(path)
    assert canon(History.load_json(path)) == canon(h)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


def test_meta_must_be_json_compatible(tmp_path):
    h = History(["a"], meta={"fn": print})
    with pytest.raises(InputValidationError, match="meta must be JSON-compatible"):
        h.save_json(tmp_path / "h.json")
    assert not (tmp_path / "h.json").exists()
    with pytest.raises(InputValidationError, match="meta must be a dict"):
        History(["a"], meta=[1, 2])  # type: ignore[arg-type]


def test_to_columns_and_to_pandas(monkeypatch):
    h = make_history(4)
    cols = h.to_columns()
    assert list(cols)[:3] == ["step", "epoch", "wall_time"]
    assert cols["step"] == h.steps
    assert repr(cols["mono/violation_max"]) == repr(h.column("mono/violation_max"))
    mono = h.multiplier_values("mono")
    width = max(len(v) for v in mono)
    for k in range(width):
        want = [v[k] if k < len(v) else math.nan for v in mono]
        assert repr(cols[f"mono/multiplier[{k}]"]) == repr(want)

    fake = types.ModuleType("pandas")
    fake.DataFrame = lambda data: ("frame", data)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", fake)
    kind, data = h.to_pandas()
    assert kind == "frame" and repr(data) == repr(cols)

    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(ImportError, match=r"needs pandas.*pip install pandas"):
        h.to_pandas()
