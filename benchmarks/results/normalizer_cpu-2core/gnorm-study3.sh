#!/usr/bin/env bash
# the global normaliser with InfoNCE's dissipation kept (keep_dissipation=true), gamma 0.9, batch 16 and 64, seeds 1-3
. .venv/bin/activate; export OMP_NUM_THREADS=1
run() {  # $1 store, $2 batch, $3 seed, rest: extra args
  local out=$1 b=$2 seed=$3; shift 3
  gradsurg ablate --preset report --no-progress --out "$out" --seeds $seed \
    --set max_train_sentences=2000 --set epochs=2 --set max_steps=null --set patience=null \
    --set batch_size=$b --set eval_every=$((1024 / b)) "$@"
}
K="--loss info_nce --set loss_params.normalizer=global --set loss_params.keep_dissipation=true --param gamma=0.9"
lane_a() { for s in 1 2 3; do run runs/gn-a 16 $s $K; done; }
lane_b() { for s in 1 2 3; do run runs/gn-b 64 $s $K; done; }
lane_a > runs/gn-lane-a3.log 2>&1 &
lane_b > runs/gn-lane-b3.log 2>&1 &
wait
