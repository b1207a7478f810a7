"""The documented torchrun example: DDP + gather_across_devices + cached steps on CPU (gloo).

``--check`` makes the script compare the DDP-averaged parameter gradients of
its first step (float64, dropout off, cached in chunks of 4, symmetric, hard
negatives) with one process on the concatenated global batch, uncached;
``--deferred`` uses ``cached_loss`` + ``loss.backward()`` instead of ``cached_step``.
"""
from __future__ import annotations

import os
import signal
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
    # own session, so that a hung run's workers are killed with torchrun (not left behind)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun example did not finish in 240 s; output:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    assert "check passed" in out, out[-4000:]
    assert "step 1: loss" in out
