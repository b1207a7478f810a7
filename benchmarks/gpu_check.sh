#!/usr/bin/env bash
# The prepared GPU checks, in three parts that each fit one device lease (15 minutes, start included):
#   kernels   (sections 0-4, about 10 minutes on an H100/H200), open_clip (section 5, <= 150 s),
#   precision (section 6, <= 6 minutes).
#   0. ahead-of-time compilation report with this machine's Triton (sm_80 + sm_90a, bf16, d = 128 / 768, InfoNCE and SigLIP), ~60 s;
#   1. correctness: tests/test_kernels.py compiled on the GPU (both paths, every combination), ~2 min;
#   2. scale: N = M = 262144, bf16, d = 768 (chunked path) and d = 128 (fused path), one GPU;
#   3. benchmark: bench_kernels.py --matrix check, then the fused/chunked crossover, within a time budget;
#   4. SigLIP: the same subset with --paradigm siglip, 25 s budget;
#   5. open_clip's losses beside gradsurg.integrations.open_clip (bf16, B = 16384 and 65536), 150 s budget;
#   6. mixed precision in the trainer: tests/test_precision.py on the GPU, then bench_precision.py
#      (fp32 / bf16 / fp16, eager and compiled, all-MiniLM-L6-v2, batch 64 x 2 views x 32 tokens), <= 6 min.
# Results (logs, JSON, PNG) go to $OUT if set, else benchmarks/results.
# Usage: bash benchmarks/gpu_check.sh [kernels] [open_clip] [precision]
#        (from the repository root, on a machine with a GPU; no argument: all three, about 18 minutes)
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
print("torch", torch.__version__, "triton", triton.__version__, "card", torch.cuda.get_device_name(),
      "capability", torch.cuda.get_device_capability())
PY
PARTS=" ${*:-kernels open_clip precision} "
if [[ "$PARTS" == *" kernels "* ]]; then
echo "== 0. ahead-of-time compilation (registers, spills, tensor cores)"
timeout 90 python -m gradsurg_kernels.inspect --arch 90 80 --dtype bf16 --d 128 768 --variants info_nce siglip \
    --out "$RES/inspect_gpu_machine" 2>&1 | tail -12 | tee "$RES/gpu_inspect.txt"
echo "== 1. correctness on the GPU"
timeout 210 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -25 | tee "$RES/gpu_tests.txt"
echo "== 2. N = M = 262144, bf16: d = 768 (chunked) and d = 128 (fused)"
timeout 45 python benchmarks/gpu_large.py 262144 768 2>&1 | tail -3 | tee "$RES/gpu_large.txt"
timeout 35 python benchmarks/gpu_large.py 262144 128 2>&1 | tail -3 | tee -a "$RES/gpu_large.txt"
echo "== 3. benchmark subset and the fused/chunked crossover"
timeout 120 python benchmarks/bench_kernels.py --matrix check --budget-s 90 --out "$RES" 2>&1 | tail -60 | tee "$RES/gpu_bench.txt"
timeout 45 python benchmarks/bench_kernels.py --matrix crossover --methods matmul,triton-fused,triton-chunked \
    --budget-s 30 --out "$RES" 2>&1 | tail -20 | tee -a "$RES/gpu_bench.txt"
echo "== 4. SigLIP (the sigmoid weight kind) against its eager and compiled forms"
timeout 60 python benchmarks/bench_kernels.py --matrix check --paradigm siglip --methods matmul,triton,eager,compile \
    --budget-s 25 --out "$RES" 2>&1 | tail -20 | tee -a "$RES/gpu_bench.txt"
fi
if [[ "$PARTS" == *" open_clip "* ]]; then
echo "== 5. open_clip's ClipLoss / SigLipLoss beside gradsurg's drop-ins (bf16, d = 512; anchors: siglip-kernel"
echo "     B = 65536 bf16 H100 48.8 ms / 1.4 GB, eager 102 ms / 33 GB; docs/benchmarks.md), 150 s budget"
timeout 150 python benchmarks/bench_open_clip.py --device cuda --dtype bfloat16 --worlds 1 --sizes 16384 65536 \
    --reps 5 --out "$RES" 2>&1 | tail -12 | tee "$RES/gpu_open_clip.txt"
fi
if [[ "$PARTS" == *" precision "* ]]; then
echo "== 6. mixed precision and torch.compile in the trainer (precision / compile config fields)"
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_precision.py 2>&1 | tail -8 | tee "$RES/gpu_precision_tests.txt"
timeout 200 python benchmarks/bench_precision.py --device cuda --batch 64 --max-len 32 --warmup 3 --rounds 20 \
    --budget-s 120 --machine "$(python -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')" \
    --out "$RES" 2>&1 | tail -12 | tee "$RES/gpu_precision.txt"
fi
echo "== done: $RES"
