"""Several positives and soft targets: gradsurg.supcon, info_nce(labels=...), info_nce(soft_targets=...).

Oracles: pytorch-metric-learning's SupConLoss (loss and gradient, float64 1e-10) and the plain
formulas written densely here with autograd; gradcheck of the set gradients (float64).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradsurg

from conftest import assert_same_loss

pml = pytest.importorskip("pytorch_metric_learning.losses")


def feats(n=10, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()


LABELS = [
    [0, 1, 0, 2, 1, 0, 3, 3, 2, 5],  # one singleton (no positive): left out of the mean
    [0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # no positive pair: zero loss
    [1] * 10,  # no negative pair: zero loss
]


@pytest.mark.parametrize("labels", LABELS, ids=["mixed", "pairs", "distinct", "same"])
@pytest.mark.parametrize("temperature", [0.1, 0.05, 1.0])
def test_supcon_equals_pml(labels, temperature):
    x = feats()
    lab = torch.tensor(labels)
    ref = pml.SupConLoss(temperature=temperature)(x, lab)
    g_ref = torch.autograd.grad(ref, x)[0] if ref.requires_grad else torch.zeros_like(x)
    ours = gradsurg.supcon(x, lab, temperature=temperature, chunk_bytes=200)
    g = torch.autograd.grad(ours, x, allow_unused=True)[0]
    g = torch.zeros_like(x) if g is None else g
    assert abs(float((ours - ref).detach())) < 1e-10
    assert float((g - g_ref).abs().max()) < 1e-10


def test_supcon_gradcheck_and_rows():
    x = feats(n=6, d=3)
    lab = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda t: gradsurg.supcon(t, lab, temperature=0.5), (x,))
    rows = gradsurg.supcon(x, lab, temperature=0.5, reduction="none")
    assert rows.shape == (6,)
    assert abs(float((rows.mean() - gradsurg.supcon(x, lab, temperature=0.5)).detach())) < 1e-12


def test_supcon_errors():
    x = feats()
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape"):
        gradsurg.supcon(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        gradsurg.supcon(x, torch.zeros(10, dtype=torch.long), temperature=0)


def dense_targets(a, cands, t, tau):
    """The plain formula: ``L_i = LSE_j(l_ij) - sum_j t_ij l_ij`` on dense cosine logits."""
    l = F.normalize(a, dim=1) @ F.normalize(cands, dim=1).T / tau
    return (torch.logsumexp(l, dim=1) - (t * l).sum(dim=1)).mean()


def paired(n=8, d=4, k=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2 + k)]
    return [c.requires_grad_() for c in cols]


def test_info_nce_labels_several_positives():
    cols = paired(k=1)
    lab = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])
    n = 8
    match = (lab[:, None] == lab[None, :]).double()
    t = torch.cat([match / match.sum(1, keepdim=True), torch.zeros(n, n, dtype=torch.float64)], dim=1)
    ref = dense_targets(cols[0], torch.cat(cols[1:]), t, 0.05)
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], labels=lab, chunk_bytes=100)
    assert_same_loss(ours, ref, cols, cols)
    # distinct labels: the plain InfoNCE
    plain = gradsurg.info_nce(cols[0], cols[1], cols[2:], labels=torch.arange(n))
    assert abs(float((plain - gradsurg.info_nce(cols[0], cols[1], torch.cat(cols[2:]))).detach())) < 1e-12


def test_info_nce_soft_targets_cross_entropy_and_gradcheck():
    cols = paired(k=2)
    n, m = 8, 24
    g = torch.Generator().manual_seed(5)
    t = torch.softmax(torch.randn(n, m, generator=g, dtype=torch.float64) * 2, dim=1)
    t[:, 5] = 0.0  # zeros allowed (a candidate the teacher never picks)
    t = t / t.sum(1, keepdim=True)
    ref = dense_targets(cols[0], torch.cat(cols[1:]), t, 0.1)
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], soft_targets=t, temperature=0.1, chunk_bytes=150)
    assert_same_loss(ours, ref, cols, cols)
    small = [c[:4, :3].detach().clone().requires_grad_() for c in cols]
    ts = torch.softmax(torch.randn(4, 12, generator=g, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(
        lambda a, p, z1, z2: gradsurg.info_nce(a, p, [z1, z2], soft_targets=ts, temperature=0.5), tuple(small))


def test_soft_targets_errors():
    cols = paired(k=0)
    with pytest.raises(ValueError, match="row-stochastic"):
        gradsurg.info_nce(cols[0], cols[1], soft_targets=torch.ones(8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(N, M\) = \(8, 8\)"):
        gradsurg.info_nce(cols[0], cols[1], soft_targets=torch.ones(8, 3))
    with pytest.raises(ValueError, match="labels= or soft_targets=, not both"):
        gradsurg.info_nce(cols[0], cols[1], soft_targets=torch.eye(8, dtype=torch.float64),
                          labels=torch.arange(8))
