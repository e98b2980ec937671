"""The real-data benchmark's grid, architecture and counterexample feedback (no data read)."""

from __future__ import annotations

import argparse

import pytest
import torch
from bench_scripts import load

import constrained_grad as cg

md = load("monotone_datasets")


def test_widths_parses_and_rejects() -> None:
    assert md.widths("128") == (128,)
    assert md.widths("32,16") == (32, 16)
    for bad in ("", "a", "32,0", "-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            md.widths(bad)


def test_mlp_has_the_requested_layers() -> None:
    net = md.mlp(7, (32, 16))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 32), (32, 16), (16, 1)]
    assert net(torch.zeros(5, 7)).shape == (5, 1)


def test_grid_is_the_product_of_the_relevant_options() -> None:
    cfg = md.parse(["--tune", "--hidden", "16", "8,8", "--margin", "0.0", "0.1"])
    assert cfg.hidden == [(16,), (8, 8)] and cfg.lr == md.TUNE_GRID["lr"]
    n_common = len(cfg.lr) * len(cfg.weight_decay)
    assert len(md.grid("unconstrained", cfg)) == 2 * n_common
    assert len(md.grid("constrained", cfg)) == 2 * n_common * 2 * len(cfg.dual_lr)
    assert len(md.grid("lmn", cfg)) == n_common * len(cfg.lipschitz)
    single = md.parse([])
    assert [len(md.grid(m, single)) for m in md.METHODS] == [1, 1, 1, 1]
    assert md.grid("certified", single)[0].hidden == (64, 64)


def _table(n: int = 53, task: str = "regression") -> object:
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=rng, dtype=torch.float64).numpy() * 10.0
    y = (x[:, 0] * 2.0 + 5.0) if task == "regression" else (x[:, 0] > 5.0).astype(float)
    return md.Table(x, y, ["a", "b", "c"], [0], "increasing", task)


def test_folds_partition_the_train_part_and_share_test_rows_and_box() -> None:
    table = _table()
    splits = [md.make_split(table, None, seed=3, fold=k) for k in range(md.FOLDS)]
    n_test = round(0.2 * 53)
    for s in splits:
        assert s.x_test.shape[0] == n_test
        assert torch.equal(s.x_test, splits[0].x_test)  # test rows depend on the seed only
        assert torch.equal(s.box.low, splits[0].box.low)
        assert torch.equal(s.box.high, splits[0].box.high)
        assert s.x_train.shape[0] + s.x_val.shape[0] == 53 - n_test
    vals = torch.cat([s.x_val for s in splits])
    # the validation folds are disjoint and together cover the train part exactly once
    assert vals.shape[0] == 53 - n_test
    assert torch.unique(vals, dim=0).shape[0] == vals.shape[0]
    together = torch.cat([splits[0].x_train, splits[0].x_val])
    assert torch.equal(torch.sort(vals[:, 0]).values, torch.sort(together[:, 0]).values)
    with pytest.raises(ValueError, match="fold must be in"):
        md.make_split(table, None, seed=3, fold=md.FOLDS)


def test_mean_ensemble_averages_in_target_units_and_stays_monotone() -> None:
    table = _table()
    splits = [md.make_split(table, None, seed=1, fold=k) for k in range(3)]
    assert len({s.y_shift for s in splits}) == 3  # each fold scales its own labels
    torch.manual_seed(0)
    members = [md.mlp(3, (8,)) for _ in splits]
    for m in members:  # non-negative weights + ReLU: non-decreasing in every input
        for lin in (m[0], m[2]):
            lin.weight.data.abs_()
    ens = md.mean_ensemble(members, splits, units=splits[0]).double()
    x = splits[0].x_test.double()
    raw = torch.stack(
        [s.y_shift + s.y_scale * m(x) for m, s in zip(members, splits, strict=True)]
    ).mean(0)
    expected = (raw - splits[0].y_shift) / splits[0].y_scale
    torch.testing.assert_close(ens(x), expected)
    # monotone members give a monotone ensemble: proved by the joint MILP over the box
    report = cg.verify(
        ens, [cg.Monotonic([0], "increasing", name="m")], splits[0].box, samples=512, seed=0
    )
    assert report["m"].status == "certified"
    with pytest.raises(ValueError, match="one split per member"):
        md.mean_ensemble(members, splits[:2], units=splits[0])


def test_ensemble_option_is_range_checked() -> None:
    assert md.parse(["--ensemble", "5"]).ensemble == 5
    for bad in ("0", str(md.FOLDS + 1)):
        with pytest.raises(SystemExit):
            md.parse(["--ensemble", bad])


def test_test_selected_score_is_the_best_threshold_accuracy() -> None:
    split = md.make_split(_table(60, "classification"), None, seed=2)
    torch.manual_seed(0)
    net = md.mlp(3, (4,))
    with torch.no_grad():
        logits = net(split.x_test)
    best = max(
        float(((logits > t).float() == split.y_test).float().mean())
        for t in torch.linspace(-1.0, 1.0, 101)
    )
    got = md.test_selected_score(net, split, "classification")
    assert got == best
    assert got >= md.metric(net, split.x_test, split.y_test, "classification", 1.0)
    reg = md.make_split(_table(), None, seed=2)
    assert md.test_selected_score(net, reg, "regression") == md.metric(
        net, reg.x_test, reg.y_test, "regression", reg.y_scale
    )


def test_one_hot_replaces_nominal_columns_and_follows_the_monotone_features() -> None:
    x = torch.tensor(
        [[1.0, 3.0, 10.0, 0.5], [2.0, 1.0, 20.0, 0.7], [1.0, 2.0, 30.0, 0.9]],
        dtype=torch.float64,
    ).numpy()
    table = md.Table(x, x[:, 0] * 0, ["a", "kind", "m", "b"], [2], "increasing", "regression")
    out = md.one_hot(table, {"kind": [1.0, 2.0, 3.0, 4.0]})
    assert out.names == ["a", "kind=1", "kind=2", "kind=3", "kind=4", "m", "b"]
    assert [out.names[j] for j in out.monotone] == ["m"]
    onehot = out.x[:, 1:5]
    assert (onehot.sum(1) == 1).all()  # one code per row; code 4 never seen: a zero column
    assert onehot[:, 3].sum() == 0
    assert onehot.argmax(1).tolist() == [2, 0, 1]  # codes 3, 1, 2
    assert (out.x[:, [0, 5, 6]] == x[:, [0, 2, 3]]).all()  # other columns untouched, in order
    with pytest.raises(ValueError, match="no such features"):
        md.one_hot(table, {"nope": [1.0]})
    with pytest.raises(ValueError, match="monotone feature"):
        md.one_hot(table, {"m": [10.0]})


def test_heart_encoding_option() -> None:
    assert md.parse([]).heart_encoding == "onehot"
    assert md.parse(["--heart-encoding", "ordinal"]).heart_encoding == "ordinal"
    with pytest.raises(SystemExit):
        md.parse(["--heart-encoding", "binary"])


def test_one_hot_domain_box_draws_the_standardised_categories() -> None:
    rng = torch.Generator().manual_seed(0)
    n = 80
    kind = torch.randint(1, 4, (n,), generator=rng).double()  # codes 1..3
    x = torch.stack([torch.rand(n, generator=rng, dtype=torch.float64), kind], dim=1).numpy()
    y = (x[:, 0] > 0.5).astype(float)
    base = md.Table(x, y, ["m", "kind"], [0], "increasing", "classification")
    table = md.one_hot(base, {"kind": [1.0, 2.0, 3.0]})
    assert table.groups == [[1, 2, 3]]
    plain = md.make_split(table, None, seed=0)
    assert plain.box.one_hot == ()
    split = md.make_split(table, None, seed=0, one_hot_domain=True)
    assert split.box.one_hot == ((1, 2, 3),)
    # every sampled category block is the standardised encoding of a real row's category
    rows = {
        tuple(r)
        for r in torch.cat([split.x_train, split.x_val, split.x_test])[:, 1:]
        .double()
        .round(decimals=5)
        .tolist()
    }
    drawn = split.box.sample(200, generator=rng, dtype=torch.float64)[:, 1:]
    assert {tuple(r) for r in drawn.round(decimals=5).tolist()} <= rows
    assert md.parse(["--one-hot-domain"]).one_hot_domain and not md.parse([]).one_hot_domain


@pytest.mark.slow  # ~15 s of training
def test_certified_method_ends_proved_by_the_public_prover() -> None:
    """A short certified run (Cells + cg.Prover) ends eligible, i.e. proved; the certificate
    over its cells agrees, and float64 autograd finds no decreasing slope at dense points."""
    table = _table(53)  # y = 2 a + 5: increasing in feature 0
    split = md.make_split(table, None, seed=0)
    cfg = md.parse(["--epochs", "40", "--certified-hidden", "16,16", "--milp-every", "1"])
    conf = md.grid("certified", cfg)[0]
    got = md.train("certified", table, split, 0, conf, cfg)
    assert got is not None and got.eligible and got.spec is not None
    assert got.cells is not None and got.cells >= 1
    _, cert, _ = md.check_cells(got.model, got.spec, split, cfg, seed=0)
    assert cert is True
    net = got.model.double()
    x = split.box.sample(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert float(grad[:, 0].min()) >= 0.0


def test_split_is_stratified_and_scaled_on_the_train_part_only() -> None:
    table = _table(200, "classification")
    split = md.make_split(table, None, seed=4)
    rate = float(table.y.mean())
    for y in (split.y_train, split.y_val, split.y_test):  # stratified: each part keeps the rate
        assert abs(float(y.mean()) - rate) <= 1.0 / len(y) + 1e-9
    part = torch.cat([split.x_train, split.x_val]).double()  # the scaler's rows: mean 0, std 1
    torch.testing.assert_close(part.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(part.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    assert split.x_test64 is not None and split.x_test64.dtype == torch.float64
    torch.testing.assert_close(split.x_test64.float(), split.x_test)
    assert bool(split.box.contains(split.x_test64).all())


def test_check_local_proves_a_monotone_net_and_finds_a_decreasing_one() -> None:
    table = _table()
    split = md.make_split(table, None, seed=0)
    torch.manual_seed(0)
    net = md.mlp(3, (8, 8))
    with torch.no_grad():  # non-negative weights + ReLU: non-decreasing in every input
        for lin in (net[0], net[2], net[4]):
            lin.weight.abs_()
    assert md.check_local(net, table, split, md.parse([])) is None  # --local-rows 0: none
    cfg = md.parse(["--local-rows", "4", "--local-time-limit", "30"])
    got = md.check_local(net, table, split, cfg)
    assert got is not None
    assert (got["rows"], got["proved"], got["violated"], got["unknown"]) == (4, 4, 0, 0)
    assert len(got["seconds"]) == 4 and got["max_s"] == max(got["seconds"])
    with torch.no_grad():
        net[4].weight.neg_()  # now non-increasing in every input
    bad = md.check_local(net, table, split, cfg)
    assert bad is not None and bad["violated"] + bad["unknown"] == 4 and bad["proved"] == 0
    total = md.local_summary([got, bad])
    assert total is not None
    assert (total["rows"], total["proved"], total["fraction_proved"]) == (8, 4, 0.5)
    assert total["max_s"] == max(got["max_s"], bad["max_s"])
    assert md.local_summary([]) is None
