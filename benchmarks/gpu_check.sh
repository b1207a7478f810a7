#!/usr/bin/env bash
# The one prepared GPU check of the fused kernels (issue 3), sized to finish in about 8 minutes:
#   1. correctness: tests/test_kernels.py compiled on the GPU (no interpreter), ~1-2 min with compilation;
#   2. scale: N = M = 262144, d = 768, bf16 through the Triton backend (must fit one H100);
#   3. benchmark: bench_kernels.py --matrix check, stopped after a time budget.
# Results (logs, JSON, PNG) go to $OUT if set, else benchmarks/results.
# Usage: bash benchmarks/gpu_check.sh   (from the repository root, on a machine with a GPU)
set -u
cd "$(dirname "$0")/.."
RES="${OUT:-benchmarks/results}"
mkdir -p "$RES"
unset TRITON_INTERPRET
export GRADSURG_TEST_DEVICE=cuda
[ -f /work/venv/bin/activate ] && source /work/venv/bin/activate
pip install -q -e . --no-deps >/dev/null 2>&1 || true
python - <<'PY' | tee "$RES/gpu_env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "card", torch.cuda.get_device_name())
PY
echo "== 1. correctness on the GPU"
timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -25 | tee "$RES/gpu_tests.txt"
echo "== 2. N = M = 262144, d = 768, bf16"
timeout 90 python benchmarks/gpu_large.py 262144 768 2>&1 | tail -5 | tee "$RES/gpu_large.txt"
echo "== 3. benchmark subset"
timeout 300 python benchmarks/bench_kernels.py --matrix check --budget-s 200 --out "$RES" 2>&1 | tail -60 | tee "$RES/gpu_bench.txt"
echo "== done: $RES"
