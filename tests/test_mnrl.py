"""sentence-transformers' MultipleNegativesRankingLoss (6.3) in gradsurg's chunked engine.

Oracle: ``MultipleNegativesRankingLoss(...).compute_loss_from_embeddings`` (plain autograd of
its dense formula), for every valid combination of directions, partition_mode and
hardness_mode, with 0, 1 and 2 hard-negative columns; loss and the gradients of every
column. Tolerances: float64 1e-10 absolute (values are O(1)), float32 1e-5 relative.
Chunks of a few rows (``chunk_bytes``) make every case cross chunk boundaries.
"""
from __future__ import annotations

import itertools
import os
import sys
import warnings

import pytest
import torch

import gradsurg
from gradsurg.engine import dispatch

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking")
MNRL = st_losses.MultipleNegativesRankingLoss

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
HARDNESS = [(None, 0.0), ("in_batch_negatives", 5.0), ("hard_negatives", 9.0), ("all_negatives", 5.0)]


def valid_combinations():
    out = []
    for r in range(4):
        for extra in itertools.combinations(ALL[1:], r):
            dirs = ("query_to_doc",) + extra
            for pm in ("joint", "per_direction"):
                if pm == "per_direction" and set(dirs) & {"query_to_query", "doc_to_doc"}:
                    continue
                out.append((dirs, pm))
    return out


COMBOS = valid_combinations()


def batch(n=7, d=5, k=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    p = a + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    negs = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(k)]
    return [t.to(dtype).requires_grad_() for t in [a, p, *negs]]


def reference(cols, scale=20.0, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = MNRL(None, scale=scale, **kw).compute_loss_from_embeddings(cols, None)
    return loss, torch.autograd.grad(loss, cols)


def ours(cols, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = gradsurg.info_nce(cols[0], cols[1], cols[2:], chunk_bytes=kw.pop("chunk_bytes", 300), **kw)
    return loss, torch.autograd.grad(loss, cols)


@pytest.mark.parametrize("dirs,pm", COMBOS, ids=lambda v: "+".join(x.split("_to_")[0][0] + x.split("_to_")[1][0]
                                                                   for x in v) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("hm,hs", HARDNESS, ids=lambda v: str(v))
@pytest.mark.parametrize("k", [0, 1, 2])
def test_every_valid_combination_float64(dirs, pm, hm, hs, k):
    cols = batch(k=k, seed=k)
    kw = dict(directions=dirs, partition_mode=pm, hardness_mode=hm, hardness_strength=hs)
    l_ref, g_ref = reference(cols, **kw)
    l_us, g_us = ours(cols, **kw)
    assert abs(float((l_ref - l_us).detach())) < 1e-10
    for a, b in zip(g_us, g_ref):
        assert float((a - b).abs().max()) < 1e-10


@pytest.mark.parametrize("dirs,pm", [COMBOS[0], COMBOS[-1], (("query_to_doc", "doc_to_query"), "per_direction")])
def test_float32(dirs, pm):
    cols = batch(n=9, k=2, dtype=torch.float32, seed=3)
    kw = dict(directions=dirs, partition_mode=pm, hardness_mode="all_negatives", hardness_strength=5.0)
    l_ref, g_ref = reference(cols, **kw)
    l_us, g_us = ours(cols, **kw)
    assert rel_err(l_us, l_ref) < 1e-5
    for a, b in zip(g_us, g_ref):
        assert rel_err(a, b) < 1e-5


def test_one_column_tensor_and_list_agree_and_scale():
    cols = batch(k=1)
    l1 = gradsurg.info_nce(cols[0], cols[1], cols[2], directions=("query_to_doc",), scale=10.0)
    l2 = gradsurg.info_nce(cols[0], cols[1], [cols[2]], temperature=0.1)
    l3 = gradsurg.info_nce(cols[0], cols[1], hard_negatives=[cols[2]], scale=10.0)
    l_ref, _ = reference(cols, scale=10.0)
    for value in (l1, l2, l3):
        assert abs(float((value - l_ref).detach())) < 1e-12


def test_plain_structured_equals_the_paradigm_engine():
    """The structured engine with one block is the existing InfoNCE (the same numbers, another path)."""
    cols = batch(k=2)
    structured = gradsurg.info_nce(cols[0], cols[1], list(cols[2:]), temperature=0.07)
    g_s = torch.autograd.grad(structured, cols)
    plain = gradsurg.info_nce(cols[0], cols[1], torch.cat(cols[2:]), temperature=0.07)
    g_p = torch.autograd.grad(plain, cols)
    assert abs(float((structured - plain).detach())) < 1e-12
    for a, b in zip(g_s, g_p):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("k", [0, 2])
def test_symmetric_is_st_per_direction_and_the_old_symmetric(k):
    cols = batch(k=k)
    l_ref, g_ref = reference(cols, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    l_us, g_us = ours(cols, symmetric=True, hardness_strength=0.0)
    assert abs(float((l_us - l_ref).detach())) < 1e-10
    for a, b in zip(g_us, g_ref):
        assert float((a - b).abs().max()) < 1e-10
    if k == 0:  # gradsurg's own symmetric InfoNCE: the same loss
        old = gradsurg.info_nce(cols[0], cols[1], symmetric=True)
        assert abs(float((old - l_ref).detach())) < 1e-10


def test_reduction_none_and_sum():
    cols = batch(k=1)
    kw = dict(directions=ALL, hardness_mode="hard_negatives", hardness_strength=9.0)
    rows = gradsurg.info_nce(cols[0], cols[1], [cols[2]], reduction="none", **kw)
    mean = gradsurg.info_nce(cols[0], cols[1], [cols[2]], **kw)
    total = gradsurg.info_nce(cols[0], cols[1], [cols[2]], reduction="sum", **kw)
    assert rows.shape == (7,)
    assert abs(float((rows.mean() - mean).detach())) < 1e-12 and abs(float((rows.sum() - total).detach())) < 1e-12
    w = torch.rand(7, dtype=torch.float64)
    g_rows = torch.autograd.grad(rows, cols, w)
    rows2 = gradsurg.info_nce(cols[0], cols[1], [cols[2]], reduction="none", **kw)
    g_ref = torch.autograd.grad((rows2.detach() * 0 + rows2 * w).sum(), cols)
    for a, b in zip(g_rows, g_ref):
        assert rel_err(a, b) < 1e-12


def test_no_grad_gives_the_value():
    cols = batch(k=1)
    with torch.no_grad():
        value = gradsurg.info_nce(cols[0], cols[1], [cols[2]], directions=ALL)
    l_ref, _ = reference(cols, directions=ALL)
    assert abs(float((value - l_ref).detach())) < 1e-12


def test_memory_is_chunked():
    """No (N, M) buffer: a 1-row chunk budget still gives the same numbers."""
    cols = batch(n=12, k=2)
    l1, g1 = ours(cols, directions=ALL, chunk_bytes=1)
    l2, g2 = ours(cols, directions=ALL, chunk_bytes=10**8)
    assert abs(float((l1 - l2).detach())) < 1e-12
    for a, b in zip(g1, g2):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("kw,match", [
    (dict(directions=()), "at least one direction"),
    (dict(directions=("doc_to_doc",)), "'query_to_doc' direction is required"),
    (dict(directions=("query_to_doc", "sideways")), "invalid directions"),
    (dict(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"), "per_direction"),
    (dict(partition_mode="both"), "partition_mode must be"),
    (dict(hardness_mode="hardest"), "hardness_mode must be one of"),
    (dict(hardness_mode="hard_negatives", hardness_strength=-1.0), "non-negative"),
    (dict(scale=0.0, directions=("query_to_doc",)), "scale must be a"),
    (dict(directions=ALL, labels=torch.zeros(7, dtype=torch.long)), "labels= is defined for"),
])
def test_st_rules_as_clear_errors(kw, match):
    cols = batch(k=1)
    with pytest.raises(ValueError, match=match):
        gradsurg.info_nce(cols[0], cols[1], [cols[2]], **kw)


def test_zero_strength_warns_as_st():
    cols = batch(k=1)
    with pytest.warns(UserWarning, match="hardness_strength=0.0"):
        gradsurg.info_nce(cols[0], cols[1], [cols[2]], hardness_mode="hard_negatives")


def test_bad_columns():
    cols = batch(k=1)
    with pytest.raises(ValueError, match=r"hard_negatives\[0\] must have the shape of anchors"):
        gradsurg.info_nce(cols[0], cols[1], [cols[2][:3]], directions=ALL)
    with pytest.raises(TypeError, match="learnable"):
        gradsurg.info_nce(cols[0], cols[1], [cols[2]], scale=torch.tensor(20.0))


def test_triton_is_refused_with_the_reason_and_auto_names_it():
    cols = batch(k=1)
    with pytest.raises(ValueError, match="only the chunked torch engine"):
        gradsurg.info_nce(cols[0], cols[1], [cols[2]], directions=ALL, backend="triton")
    assert "Triton does not cover this" in dispatch.explain_structured()
    from gradsurg.doctor import report

    assert any(line.startswith("structured candidates") for line in report(["float32"], [64]))


def test_w_telemetry_from_the_row_statistics():
    """stats=: W's entropy, effective negatives exp(H) and max weight per anchor (mean and quantiles),
    against W formed densely: the joint softmax off the positive, renormalised."""
    import torch.nn.functional as F

    cols = batch(n=9, k=1, seed=8)
    stats = {}
    gradsurg.info_nce(cols[0], cols[1], [cols[2]], directions=("query_to_doc", "query_to_query"),
                      hardness_mode="all_negatives", hardness_strength=5.0, stats=stats, chunk_bytes=300)
    q, p, z = (F.normalize(c.detach(), dim=1) for c in cols)
    docs = torch.cat([p, z])
    s_qd, s_qq = q @ docs.T, q @ q.T
    eye = torch.eye(9, dtype=torch.bool)
    l_qd = 20 * s_qd + 5 * s_qd * torch.cat([~eye, torch.ones(9, 9, dtype=torch.bool)], 1)
    l_qq = (20 * s_qq).masked_fill(eye, -torch.inf)
    l = torch.cat([l_qd, l_qq], 1)
    l[torch.arange(9), torch.arange(9)] = -torch.inf  # W lives off the positive
    w = torch.softmax(l, dim=1)
    h = -(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum(1)
    assert abs(stats["entropy_mean"] - float(h.mean())) < 1e-10
    assert abs(stats["effective_negatives_mean"] - float(h.exp().mean())) < 1e-10
    assert abs(stats["max_weight_mean"] - float(w.max(1).values.mean())) < 1e-10
    assert abs(stats["entropy_q50"] - float(h.quantile(0.5))) < 1e-10
    assert stats["effective_negatives_q90"] <= 9 + 18 - 2


def test_trainer_collector_reports_w_telemetry():
    """The trainer's per-step statistics (StatsCollector) carry the same W summary, from the W it forms."""
    from gradsurg.analysis import StatsCollector

    cols = batch(n=9, k=0, seed=2)
    stats = {}
    gradsurg.info_nce(cols[0], cols[1], [], temperature=0.05, stats=stats)
    row = StatsCollector()(cols[0], cols[1])
    for key in ("entropy_mean", "effective_negatives_q50", "max_weight_q90"):
        assert abs(row[key] - stats[key]) < 1e-9, key


def test_gradcheck_all_directions_with_masks_and_guide():
    """The set gradient against finite differences (float64): every block, keys and a guide (the hardness
    offset alpha sg(s) is a stop-gradient, which finite differences do not see: checked against ST above)."""
    g = torch.Generator().manual_seed(11)
    cols = [torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)]
    guide = [torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(3)]
    keys = [torch.tensor([0, 1, 2, 0]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 5, 10, 11])]

    def f(a, p, z):
        return gradsurg.info_nce(a, p, [z], directions=ALL, keys=keys, guide=guide, margin=-0.3, temperature=0.5,
                                 chunk_bytes=100)

    assert torch.autograd.gradcheck(f, tuple(cols))
    sym = lambda a, p, z: gradsurg.info_nce(a, p, [z], symmetric=True, temperature=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(sym, tuple(cols))


def test_half_precision_inputs_compute_in_float32():
    cols = batch(k=1)
    ref = gradsurg.info_nce(cols[0], cols[1], [cols[2]], directions=ALL)
    low = [c.detach().to(torch.bfloat16).requires_grad_() for c in cols]
    value = gradsurg.info_nce(low[0], low[1], [low[2]], directions=ALL)
    grads = torch.autograd.grad(value, low)
    assert value.dtype == torch.bfloat16 and all(gr.dtype == torch.bfloat16 for gr in grads)
    assert abs(float(value.detach()) - float(ref.detach())) < 5e-2


# -- which configurations are one paradigm (structured.mnrl_route) ----------------------------------------

ROUTES = [  # directions, partition_mode, hardness_mode, strength, hard-negative columns, paradigm or reason
    (("query_to_doc",), "joint", "all_negatives", 5.0, 2, "info_nce_hardness"),
    (("query_to_doc",), "per_direction", "all_negatives", 5.0, 0, "info_nce_hardness"),
    (("query_to_doc",), "joint", "in_batch_negatives", 5.0, 0, "info_nce_hardness"),
    (("query_to_doc",), "joint", "hard_negatives", 9.0, 0, "info_nce"),
    (("query_to_doc",), "joint", None, 0.0, 2, "info_nce"),
    (("query_to_doc", "doc_to_query"), "per_direction", None, 0.0, 2, "info_nce symmetric"),
    (("query_to_doc",), "joint", "in_batch_negatives", 5.0, 1, "not the row's own hard negatives"),
    (("query_to_doc",), "joint", "hard_negatives", 9.0, 2, "only the row's own hard negatives"),
    (("query_to_doc", "doc_to_query"), "per_direction", "all_negatives", 5.0, 0, "would need two paradigms"),
    (("query_to_doc", "doc_to_query"), "joint", None, 0.0, 0, "partition_mode='joint' puts several"),
    (ALL, "joint", "all_negatives", 5.0, 1, "partition_mode='joint' puts several"),
]


@pytest.mark.parametrize("dirs,pm,hm,hs,k,expect", ROUTES, ids=[r[-1] for r in ROUTES])
def test_route_to_the_one_engine_or_the_reason(dirs, pm, hm, hs, k, expect):
    """A configuration that is one paradigm runs gradsurg's op (either backend) and equals
    sentence-transformers (float64 1e-10); one that is not says why when Triton is asked for."""
    from gradsurg.structured import mnrl_route

    paradigm, symmetric, why = mnrl_route(20.0, dirs, pm, hm, hs, k)
    cols = batch(k=k, seed=k + 5)
    kw = dict(directions=dirs, partition_mode=pm, hardness_mode=hm, hardness_strength=hs)
    l_ref, g_ref = reference(cols, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = gradsurg.info_nce(cols[0], cols[1], cols[2:], **kw)
    if expect.startswith("info_nce"):
        assert why is None and paradigm.loss_name == expect.split()[0] and symmetric == expect.endswith("symmetric")
        if paradigm.loss_name == "info_nce_hardness":
            assert paradigm.weight.temperature == pytest.approx(1.0 / (20.0 + hs), rel=1e-14)
        assert type(loss.grad_fn).__name__ != "StructuredLossBackward"  # the paradigm engine's op
    else:
        assert paradigm is None and expect in why
        assert type(loss.grad_fn).__name__ == "StructuredLossBackward"
        with pytest.raises(ValueError, match="backend='triton' cannot run these inputs: .*" + expect):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gradsurg.info_nce(cols[0], cols[1], cols[2:], backend="triton", **kw)
        assert expect in dispatch.explain_structured(why)
    assert abs(float((loss - l_ref).detach())) < 1e-10
    for a, b in zip(torch.autograd.grad(loss, cols), g_ref):
        assert float((a - b).abs().max()) < 1e-10


def test_per_entry_options_keep_the_structured_engine_and_say_so():
    cols = batch(k=1)
    kw = dict(hardness_mode="all_negatives", hardness_strength=5.0)
    mask = torch.zeros(7, 14, dtype=torch.bool)
    mask[0, 3] = True
    loss = gradsurg.info_nce(cols[0], cols[1], [cols[2]], negative_mask=mask, **kw)
    assert type(loss.grad_fn).__name__ == "StructuredLossBackward"
    with pytest.raises(ValueError, match="negative_mask= drops or re-targets candidates"):
        gradsurg.info_nce(cols[0], cols[1], [cols[2]], negative_mask=mask, backend="triton", **kw)
    stats = {}
    gradsurg.info_nce(cols[0], cols[1], [cols[2]], stats=stats, **kw)
    assert "entropy_mean" in stats  # the telemetry is the structured engine's


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_with_hardness_runs_the_preset(reduction):
    """InfoNCELoss(hardness_mode=..., hardness_strength=...) takes the same route: equal to
    sentence-transformers in float32 (1e-5), and to the preset on paradigm_loss."""
    cols = batch(n=9, k=2, dtype=torch.float32, seed=4)
    module = gradsurg.InfoNCELoss(scale=20.0, hardness_mode="all_negatives", hardness_strength=5.0,
                                  reduction=reduction)
    loss = module(cols[0], cols[1], list(cols[2:]))
    preset = gradsurg.paradigm_loss(cols[0], cols[1], torch.cat(cols[2:]), reduction=reduction,
                                    paradigm=gradsurg.paradigm.info_nce_hardness(1 / 20.0, 5.0))
    assert rel_err(loss, preset) < 1e-6
    if reduction == "mean":
        l_ref, g_ref = reference(cols, hardness_mode="all_negatives", hardness_strength=5.0)
        assert rel_err(loss, l_ref) < 1e-5
        for a, b in zip(torch.autograd.grad(loss, cols), g_ref):
            assert rel_err(a, b) < 1e-5


# -- backend options and distributed= on the route (structured.mnrl: routed or refused by name) ----------

TILT = dict(hardness_mode="all_negatives", hardness_strength=5.0)


def test_backend_options_reach_the_paradigm_engine_on_the_route():
    """normalize=False (dot products) passes through: equal to sentence-transformers with dot_score
    (float64 1e-10), and to the preset on paradigm_loss; chunk_bytes too (several chunks)."""
    from sentence_transformers import util

    cols = batch(k=2, seed=11)
    cols = [(c.detach() * 0.3).requires_grad_() for c in cols]  # dot products of O(1)
    l_ref, g_ref = reference(cols, similarity_fct=util.dot_score, **TILT)
    loss = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, normalize=False, chunk_bytes=200, **TILT)
    assert type(loss.grad_fn).__name__ != "StructuredLossBackward"
    assert abs(float((loss - l_ref).detach())) < 1e-10
    for a, b in zip(torch.autograd.grad(loss, cols), g_ref):
        assert float((a - b).abs().max()) < 1e-10
    preset = gradsurg.paradigm_loss(cols[0], cols[1], torch.cat(cols[2:]), normalize=False,
                                    paradigm=gradsurg.paradigm.info_nce_hardness(1 / 20.0, 5.0))
    torch.testing.assert_close(loss, preset, rtol=1e-12, atol=0)
    cosine = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, **TILT)
    assert abs(float((cosine - loss).detach())) > 1e-3  # the option changed the numbers


def test_triton_options_reach_the_kernels_on_the_route():
    """backend='triton' with path= (interpreted on CPU) equals the torch backend (float32, 1e-5)."""
    from gradsurg.engine.dispatch import triton_problem

    if triton_problem():
        pytest.skip(triton_problem())
    cols = batch(n=6, k=1, dtype=torch.float32, seed=12)
    want = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, backend="torch", **TILT)
    g_want = torch.autograd.grad(want, cols)
    for path in ("fused", "chunked"):
        got = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, backend="triton", path=path, **TILT)
        assert rel_err(got, want) < 1e-5
        for a, b in zip(torch.autograd.grad(got, cols), g_want):
            assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("kw,match", [
    (dict(path="fused"), r"^info_nce: backend 'torch' does not accept option\(s\) path; accepted: chunk_bytes"),
    (dict(block_n=4), r"^info_nce: backend 'torch' does not accept option\(s\) block_n"),
    (dict(chunk_bytes=0), r"^info_nce: chunk_bytes must be a positive int"),
    (dict(normalize="no"), r"^info_nce: normalize must be a bool"),  # the torch backend's own check
])
def test_a_bad_backend_option_on_the_route_is_named(kw, match):
    cols = batch(k=1)
    with pytest.raises(ValueError, match=match):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], backend="torch", **kw, **TILT)


@pytest.mark.parametrize("option", [dict(normalize=False), dict(path="fused"), dict(block_m=16)])
def test_the_structured_engine_refuses_backend_options_by_name(option):
    """Where the options are not one paradigm the backend option cannot be honoured: a ValueError names
    it and the reason (not a TypeError from a fixed signature, not a silent drop)."""
    cols = batch(k=1)
    name = next(iter(option))
    kw = dict(hardness_mode="hard_negatives", hardness_strength=9.0)  # tilts the row's own column only
    with pytest.raises(ValueError, match=rf"^info_nce: the backend option {name}= reaches the paradigm engine only"
                                         r".*only the row's own hard negatives.*takes chunk_bytes="):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], **option, **kw)
    gradsurg.info_nce(cols[0], cols[1], cols[2:], chunk_bytes=300, **kw)  # the engine option it does take


def test_front_door_arguments_are_not_options():
    cols = batch(k=1)
    with pytest.raises(TypeError, match="^info_nce: unexpected keyword argument.*learn"):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], learn={"temperature": torch.tensor(0.1)}, **TILT)


def test_distributed_without_a_process_group():
    """distributed='gather' / 'ring' with no process group is the local loss on the route; the structured
    engine gathers ('gather') but refuses the ring, naming the reason."""
    cols = batch(k=1)
    plain = gradsurg.info_nce(cols[0], cols[1], cols[2:], **TILT)
    for how in ("gather", "ring"):
        torch.testing.assert_close(gradsurg.info_nce(cols[0], cols[1], cols[2:], distributed=how, **TILT), plain,
                                   rtol=0, atol=0)
    kw = dict(hardness_mode="hard_negatives", hardness_strength=9.0)
    local = gradsurg.info_nce(cols[0], cols[1], cols[2:], **kw)
    torch.testing.assert_close(gradsurg.info_nce(cols[0], cols[1], cols[2:], distributed="gather", **kw), local,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^info_nce: distributed='ring' runs the paradigm engine only.*"
                                         r"only the row's own hard negatives.*use distributed='gather'"):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], distributed="ring", **kw)
    with pytest.raises(ValueError, match=r"^InfoNCELoss: distributed must be None"):
        gradsurg.InfoNCELoss(distributed="allgather", **TILT)
    module = gradsurg.InfoNCELoss(scale=20.0, distributed="ring", **TILT)
    torch.testing.assert_close(module(cols[0], cols[1], cols[2:]), plain, rtol=0, atol=0)
