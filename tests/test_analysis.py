"""Simulation surfaces, the statistics collector, figures and the ``gradsurg plot`` command."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import gradsurg
from gradsurg.analysis import StatsCollector, simulation as sim
from gradsurg.analysis.simulation import FirstColumnRows, gate
from gradsurg.cli import main as cli_main
from gradsurg.objectives import SG, VICReg

from conftest import rel_err


# ----------------------------------------------------------------------------- surfaces
def test_gd_surface_matches_a_direct_computation_on_the_same_samples():
    pos_means = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    neg_means = torch.tensor([0.3, 0.9, 1.5, 2.5], dtype=torch.float64)
    b, batch, tau = 7, 9, 0.05
    got = sim.gd_surface("info_nce", pos_means, neg_means, num_batches=b, batch_size=batch,
                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # replay the sampler: negatives (Q, B, K) first, then positives (P, B)
    g = torch.Generator().manual_seed(3)
    neg = torch.randn(4, b, batch - 1, generator=g, dtype=torch.float64) * 0.10 + neg_means[:, None, None]
    pos = torch.randn(3, b, generator=g, dtype=torch.float64) * 0.05 + pos_means[:, None]
    want = torch.empty(3, 4, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            lse = torch.logsumexp(neg[j].cos() / tau, dim=1)
            want[i, j] = torch.sigmoid(lse - pos[i].cos() / tau).mean()  # 1 - p_ii
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("name", list(sim.PRESETS))
def test_gd_surfaces_dissipate_where_the_positive_is_clearly_closer(name):
    pos = torch.tensor([0.1 * math.pi])
    neg = torch.tensor([0.1 * math.pi, 0.9 * math.pi])
    z = sim.gd_surface(name, pos, neg, num_batches=20, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 2)
    assert float(z[0, 0]) > 0.4 and float(z[0, 1]) < 0.01
    raw = sim.gd_surface(name, pos, neg, num_batches=20, batch_size=16, normalized=False,
                         generator=torch.Generator().manual_seed(0))
    assert bool((raw >= 0).all())


def test_cached_negative_statistics_are_reused_correctly():
    """set_positive must not leave a stale positive behind (guards the fast path of gd_surface)."""
    s = torch.rand(6, 5, dtype=torch.float64)
    rows = FirstColumnRows(s.clone())
    p = gradsurg.paradigm.arccon()
    _ = gate(p.dissipation, rows)  # fill the caches
    new = torch.rand(6, dtype=torch.float64)
    rows.set_positive(new)
    fresh = FirstColumnRows(torch.cat([new[:, None], s[:, 1:]], dim=1))
    for d in (p.dissipation, gradsurg.paradigm.met().dissipation, gradsurg.paradigm.mpt().dissipation):
        assert torch.allclose(gate(d, rows), gate(d, fresh))


def test_weight_curves_sharpen_as_the_temperature_falls():
    neg = torch.linspace(0.2, 1.2, 5)
    w = sim.weight_curves(neg, [0.3, 0.05, 0.01], num_batches=30, batch_size=32, pos_mean=0.1,
                          generator=torch.Generator().manual_seed(1))
    assert w.shape == (3, 5)
    finite = torch.isfinite(w)
    assert bool(finite[:, 0].all())
    assert float(w[0, 0]) < float(w[1, 0]) < float(w[2, 0]) <= 1.0
    assert bool((w[finite] >= 1.0 / 31 - 1e-6).all())
    # every batch dissipated at a tiny temperature and far negatives: no weight to report
    far = sim.weight_curves(torch.tensor([3.0]), [0.005], num_batches=5, batch_size=8, pos_mean=0.1)
    assert math.isnan(float(far[0, 0]))


def test_ratio_surfaces_match_closed_forms():
    tp = torch.tensor([0.3, 0.8, 1.2], dtype=torch.float64)
    tn = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    u = math.radians(10)
    r, mask = sim.ratio_surface("arccon", tp, tn, batch_size=16)
    assert rel_err(r, (torch.sin(tp + u) / torch.sin(tp))[:, None].expand(3, 3)) < 1e-12
    assert bool(mask[2, 0]) and bool(mask[1, 0])  # positive farther than the negatives
    r, mask = sim.ratio_surface("met", tp, tn, batch_size=16)
    d = lambda t: torch.sqrt(2 - 2 * torch.cos(t))  # noqa: E731
    assert rel_err(r, d(tn)[None, :] / d(tp)[:, None]) < 1e-12
    hinge_dead = (d(tn)[None, :] - d(tp)[:, None]) >= 0.45
    assert torch.equal(mask, hinge_dead | (tp[:, None] > tn[None, :]))


def test_simulation_errors():
    with pytest.raises(ValueError, match="batch_size"):
        sim.gd_surface("info_nce", [0.1], [0.2], batch_size=1)
    with pytest.raises(ValueError, match="paradigm"):
        sim.gd_surface("infonce", [0.1], [0.2])
    with pytest.raises(ValueError, match="temperatures"):
        sim.weight_curves([0.2], [0.0])
    with pytest.raises(ValueError, match="theta_pos"):
        sim.ratio_surface("met", [], [0.2])


# ----------------------------------------------------------------------------- statistics
def views(n=12, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x + 0.5 * torch.randn(n, d, generator=g)


def test_stats_collector_default_is_info_nce_and_values_are_right():
    x, y = views()
    out = StatsCollector()(x, y)
    keys = {"dissipated_share", "gd_mean", "hardest_weight", "ratio_mean", "pos_cos", "neg_cos", "alignment",
            "uniformity"}
    assert keys <= set(out) and all(isinstance(v, float) for v in out.values())
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    s = u @ v.T
    n = x.shape[0]
    gd, w, r = gradsurg.reference.components(gradsurg.paradigm.info_nce(0.05), s)
    assert math.isclose(out["gd_mean"], float(gd.mean()), rel_tol=1e-5)
    assert math.isclose(out["hardest_weight"], float(w.max(1).values.mean()), rel_tol=1e-5)
    assert out["ratio_mean"] == 1.0
    assert math.isclose(out["pos_cos"], float(s.diagonal().mean()), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(out["neg_cos"], float((s.sum() - s.diagonal().sum()) / (n * (n - 1))), abs_tol=1e-6)
    assert math.isclose(out["alignment"], float((u - v).pow(2).sum(1).mean()), rel_tol=1e-5)
    sq = torch.pdist(u).pow(2)
    assert math.isclose(out["uniformity"], float(sq.mul(-2).exp().mean().log()), rel_tol=1e-4)
    gap = torch.logsumexp(s.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf) / 0.05, 1) - s.diagonal() / 0.05
    assert math.isclose(out["dissipated_share"], float((torch.sigmoid(gap) < 0.01).float().mean()))


def test_stats_collector_reads_paradigms_modules_and_objectives():
    x, y = views(seed=1)
    z = torch.randn(4, x.shape[1])
    mpt = StatsCollector(gradsurg.paradigm.mpt())(x, y, z)
    assert 0.0 <= mpt["dissipated_share"] <= 1.0 and mpt["hardest_weight"] == 1.0
    loss = gradsurg.MPTLoss()
    assert StatsCollector(loss)(x, y, z) == mpt
    sg = StatsCollector(SG(ratio=1.3))(x, y)
    assert sg["ratio_mean"] == pytest.approx(1.3)
    vic = StatsCollector(VICReg(modified="w_gd,w_w,w_r"))(x, y)
    assert vic["ratio_mean"] == pytest.approx(1.5)
    x.requires_grad_(True)
    out = StatsCollector()(x, y)  # under no_grad: nothing to backpropagate, plain floats
    assert isinstance(out["gd_mean"], float)
    with pytest.raises(ValueError, match="positives"):
        StatsCollector()(x, y[:-1])


def test_stats_collector_hooks_into_the_trainer():
    from gradsurg.train.steplog import make_collector

    collect = make_collector(gradsurg.InfoNCELoss())
    assert collect is not None
    out = collect(*views(seed=2))
    assert "dissipated_share" in out and "hardest_weight" in out


# ----------------------------------------------------------------------------- figures and CLI
def test_figures_render_with_agg(tmp_path):
    from gradsurg.analysis.plots import make_figures

    paths = make_figures(str(tmp_path), grid=4, num_batches=3, batch_size=8)
    assert [os.path.basename(p) for p in paths] == ["gd_surface.png", "w_temperature.png", "r_surface.png"]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_command(tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli_main(["plot", "--out", str(out), "--grid", "3", "--num-batches", "2", "--batch-size", "6",
                     "--which", "gd,r"]) == 0
    assert sorted(os.listdir(out)) == ["gd_surface.png", "r_surface.png"]
    assert cli_main(["plot", "--out", str(out), "--which", "bogus"]) == 2
    assert "--which" in capsys.readouterr().err
