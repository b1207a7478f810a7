"""The dispatcher: which backend runs, why, and that a broken Triton is never silently skipped."""
from __future__ import annotations

import warnings

import pytest
import torch

import gradsurg
from gradsurg import paradigm
from gradsurg.cli import main
from gradsurg.engine import dispatch, torch_backend


def test_auto_on_cpu_is_torch_with_the_reason():
    mod, why = dispatch.choose("auto", torch.randn(3, 4), paradigm.info_nce())
    assert mod is torch_backend and "not CUDA" in why
    mod, why = dispatch.choose("torch", torch.randn(3, 4), paradigm.info_nce())
    assert mod is torch_backend and "asked for" in why


def test_broken_triton_is_reported_once_and_refused_when_asked_for(monkeypatch):
    problem = "Triton is installed but gradsurg's Triton backend failed to import: ImportError: boom"
    monkeypatch.setattr(dispatch, "triton_problem", lambda: problem)
    monkeypatch.setattr(dispatch, "_on_cuda", lambda x: True)
    monkeypatch.setattr(dispatch, "_warned", False)
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="ImportError: boom"):
        mod, why = dispatch.choose("auto", x, paradigm.info_nce())
    assert mod is torch_backend and "boom" in why
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        dispatch.choose("auto", x, paradigm.info_nce())
    with pytest.raises(ValueError, match="backend='triton' is unavailable: .*boom"):
        dispatch.choose("triton", x, paradigm.info_nce())
    with pytest.raises(ValueError, match="boom"):
        gradsurg.info_nce(x, torch.randn(3, 4), backend="triton")


def test_triton_missing_is_not_a_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_problem", lambda: "Triton is not installed (pip install triton)")
    monkeypatch.setattr(dispatch, "_on_cuda", lambda x: True)
    monkeypatch.setattr(dispatch, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod, why = dispatch.choose("auto", torch.randn(3, 4), paradigm.info_nce())
    assert mod is torch_backend and "not installed" in why


def test_unsupported_inputs_explain_themselves():
    pytest.importorskip("triton")
    if dispatch.triton_problem():
        pytest.skip(dispatch.triton_problem())
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot run these inputs: the Triton kernels take"):
        dispatch.choose("triton", x, paradigm.info_nce())
    assert "float64" in dispatch.explain(torch.float64, 64, paradigm.info_nce(), "cuda")
    assert dispatch.explain(torch.float32, 64, paradigm.info_nce(), "cuda").startswith("triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unknown_options_are_rejected_alike(backend):
    if backend == "triton" and dispatch.triton_problem():
        pytest.skip(dispatch.triton_problem())
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=f"backend '{backend}' does not accept option\\(s\\) deterministic"):
        gradsurg.info_nce(x, y, backend=backend, deterministic=True)
    other = "block_n" if backend == "torch" else "num_warps"
    with pytest.raises(ValueError, match=f"does not accept option\\(s\\) {other}; accepted"):
        gradsurg.info_nce(x, y, backend=backend, **{other: 16})


def test_doctor(capsys):
    assert main(["doctor", "--dtype", "float32", "--d", "64"]) == 0
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out
    assert "backend='auto' on" in out and "d=64" in out


def test_explain_for_cuda_does_not_depend_on_this_machine(monkeypatch):
    """``doctor``'s CUDA rows describe what a GPU would run, whether or not Triton here is interpreted."""
    pytest.importorskip("triton")
    if dispatch.triton_problem():
        pytest.skip(dispatch.triton_problem())
    from gradsurg.engine import triton_backend

    launch = triton_backend._kernels()
    monkeypatch.setattr(launch, "interpreted", lambda: False)  # as on a GPU machine
    text = dispatch.explain(torch.bfloat16, 768, paradigm.info_nce(), "cuda")
    assert text.startswith("triton") and "chunked" in text
    assert "fused" in dispatch.explain(torch.bfloat16, 128, paradigm.info_nce(), "cuda")


def test_doctor_explains_mnrl_hardness():
    """The hardness tilt on every negative is a paradigm (the softmax kernels on a GPU where Triton imports);
    each configuration that is not says why in one line."""
    from gradsurg.doctor import MNRL_CASES, report

    lines = report(["bfloat16"], [768])
    at = next(i for i, line in enumerate(lines) if line.startswith("sentence-transformers' MNRL hardness"))
    rows = lines[at + 1: at + 1 + len(MNRL_CASES)]
    assert len(rows) == len(MNRL_CASES) and all("\n" not in r for r in rows)
    assert "InfoNCEHardness(temperature=0.05, strength=5.0)" in rows[0] and "Softmax(temperature=0.04)" in rows[0]
    if not dispatch.triton_problem():
        assert rows[0].endswith("softmax weight kind at temperature 0.04") and "-> triton:" in rows[0]
    for row in rows[2:]:
        assert "-> torch: Triton does not cover this:" in row
    assert "only the row's own hard negatives" in rows[3] and "two paradigms" in rows[4]
    assert "negative_mask=" in rows[6]
