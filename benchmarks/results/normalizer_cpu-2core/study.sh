#!/usr/bin/env bash
# The global-normaliser study (docs/reports/global-normalizer-study.md), in the four stages it ran in,
# from the repository root:
#   bash benchmarks/results/normalizer_cpu-2core/study.sh 1   seeds 1 2: batch 16 (InfoNCE; global gamma 0.9, 0.5),
#                                                             batch 64 (InfoNCE; global gamma 0.9), batch 256
#   ... study.sh 2   the constant-GD control (seeds 1 2), then seed 3 of stage 1
#   ... study.sh 3   keep_dissipation=true, gamma 0.9, batch 16 and 64, seeds 1-3
#   ... study.sh 4   plain InfoNCE at half the learning rate (1.5e-5), batch 16 and 64, seeds 1-3
# Two processes at a time (one torch thread each), one store each: runs/gn-a (batch 16), runs/gn-b (64, 256);
# (DRY_RUN=1: list the runs and whether the stores hold them, train nothing);
# then: python benchmarks/normalizer_study.py runs/gn-a runs/gn-b --out benchmarks/results/normalizer_cpu-2core
set -u
. .venv/bin/activate
export OMP_NUM_THREADS=1
run() {  # $1 store, $2 batch, $3 seed, rest: the loss and its parameters
  local out=$1 b=$2 seed=$3; shift 3
  gradsurg ablate --preset report --no-progress --out "$out" --seeds "$seed" \
    --set max_train_sentences=2000 --set epochs=2 --set max_steps=null --set patience=null \
    --set batch_size="$b" --set eval_every=$((1024 / b)) ${DRY_RUN:+--dry-run} "$@"
}
PLAIN="--loss info_nce"
GLOBAL="--loss info_nce --set loss_params.normalizer=global"
KEPT="$GLOBAL --set loss_params.keep_dissipation=true --param gamma=0.9"
CONTROL="--loss paradigm --set loss_params.dissipation=constant --set loss_params.gd_value=20 \
  --set loss_params.weight=softmax --set loss_params.temperature=0.05 --set loss_params.ratio=1.0"
case "${1:?stage 1, 2, 3 or 4}" in
  1) lane_a() { for s in 1 2; do run runs/gn-a 16 $s $PLAIN; run runs/gn-a 16 $s $GLOBAL --param gamma=0.9,0.5; done; }
     lane_b() { for s in 1 2; do run runs/gn-b 64 $s $PLAIN; run runs/gn-b 64 $s $GLOBAL --param gamma=0.9
                                 run runs/gn-b 256 $s $PLAIN; done; } ;;
  2) lane_a() { for s in 1 2; do run runs/gn-a 16 $s $CONTROL; done
                run runs/gn-a 16 3 $PLAIN; run runs/gn-a 16 3 $GLOBAL --param gamma=0.9,0.5; }
     lane_b() { for s in 1 2; do run runs/gn-b 64 $s $CONTROL; done
                run runs/gn-b 64 3 $PLAIN; run runs/gn-b 64 3 $GLOBAL --param gamma=0.9; run runs/gn-b 256 3 $PLAIN; } ;;
  3) lane_a() { for s in 1 2 3; do run runs/gn-a 16 $s $KEPT; done; }
     lane_b() { for s in 1 2 3; do run runs/gn-b 64 $s $KEPT; done; } ;;
  4) lane_a() { for s in 1 2 3; do run runs/gn-a 16 $s $PLAIN --set lr=1.5e-5; done; }
     lane_b() { for s in 1 2 3; do run runs/gn-b 64 $s $PLAIN --set lr=1.5e-5; done; } ;;
  *) echo "study.sh: stage must be 1, 2, 3 or 4, got $1" >&2; exit 2 ;;
esac
lane_a > "runs/gn-lane-a-stage$1.log" 2>&1 &
lane_b > "runs/gn-lane-b-stage$1.log" 2>&1 &
wait
