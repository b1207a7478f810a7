"""GPU smoke test at scale: the Triton backend at N = M = 262144 (one H100/H200), bf16.

    python benchmarks/gpu_large.py [N] [d]      # defaults 262144 768

Eager would need an N x N matrix (128 GiB in bf16 at N = 262144); the Triton
backend needs one chunk of similarities (large d) or nothing of that size
(fused path, small d) plus O((N + M) d). Prints time, the kernel path, peak
memory and finiteness as one JSON line.
"""
import json
import sys
import time

import torch

import gradsurg
from gradsurg_kernels import launch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 262144
d = int(sys.argv[2]) if len(sys.argv) > 2 else 768
x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
y = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
base = torch.cuda.memory_allocated()
t = time.perf_counter()
loss = gradsurg.paradigm_loss(x, y, paradigm=gradsurg.paradigm.info_nce(), backend="triton", check_finite=False)
loss.backward()
torch.cuda.synchronize()
print(json.dumps(dict(n=n, d=d, dtype="bf16", path=launch.choose_path(torch.bfloat16, d)[0],
                      seconds=time.perf_counter() - t, loss=float(loss),
                      finite=bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()),
                      peak_extra_mb=(torch.cuda.max_memory_allocated() - base) / 2**20,
                      card=torch.cuda.get_device_name())))
