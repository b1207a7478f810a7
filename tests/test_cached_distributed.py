"""The documented torchrun example: DDP + gather_across_devices + cached steps on CPU (gloo).

``--check`` makes the script compare the DDP-averaged parameter gradients of
its first step (float64, dropout off, cached in chunks of 4, symmetric, hard
negatives) with one process on the concatenated global batch, uncached;
``--deferred`` uses ``cached_loss`` + ``loss.backward()`` instead of ``cached_step``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
SCRIPT = os.path.join(ROOT, "docs", "examples", "train_ddp.py")


@pytest.mark.parametrize("mode", ["cached_step", "cached_loss"])
def test_torchrun_example_two_processes_check(mode):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
           "--check", "--steps", "2", "--batch-size", "6", "--mini-batch-size", "4", "--symmetric",
           "--hard-negatives", "3"] + (["--deferred"] if mode == "cached_loss" else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        pytest.fail(f"torchrun example did not finish in 240 s; output so far:\n"
                    f"{(text(exc.stdout) + text(exc.stderr))[-4000:]}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "check passed" in out, out[-4000:]
    assert "step 1: loss" in out
