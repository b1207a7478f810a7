"""Ahead-of-time compilation of the kernels for sm_90a and sm_80 (no GPU needed).

Runs ``python -m gradsurg_kernels.inspect`` in a fresh process (the compiler,
not the interpreter) on a representative subset: bf16, d = 128 (fused path)
and d = 768 (chunked path), the default paradigm and SigLIP (the sigmoid weight
kind). Fails on a compile error, on
any spill instruction (STL/LDL in the SASS), or on a fused kernel without
tensor-core instructions. The full matrix (d in 64..4096, bf16/fp16/fp32,
every weight kind) is run by the command itself; results in
benchmarks/results/kernels_inspect_triton*.jsonl and docs/kernels.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_kernels_compile_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "gradsurg_kernels.inspect", "--arch", "90", "80", "--dtype", "bf16",
           "--d", "128", "768", "--variants", "info_nce", "siglip", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "kernels.jsonl").read_text().splitlines()]
    kernels = {(r["arch"], r["d"], r["kernel"]) for r in records}
    assert {v for r in records for v in r["variants"]} == {"info_nce", "siglip"}, report
    for arch in ("sm_90a", "sm_80"):
        assert {(arch, 128, k) for k in ("fused_rows", "fused_finish", "fused_cols")} <= kernels, report
        assert (arch, 768, "chunk_weights") in kernels, report
    for r in records:
        assert r["error"] is None, report
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['arch']} d={r['d']} {r['kernel']} spills\n{report}"
        if r["kernel"] in ("fused_rows", "fused_cols"):
            assert r["tensor_core_instructions"] > 0, f"{r['arch']} {r['kernel']}: no tensor cores\n{report}"
        assert (tmp_path / r["cubin"]).stat().st_size > 0
    assert proc.returncode == 0, report
