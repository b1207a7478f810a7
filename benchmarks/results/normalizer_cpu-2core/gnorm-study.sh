#!/usr/bin/env bash
# issue 23 item 3: batch 16 / 64 with and without the global normaliser vs batch 256 without (report preset
# on 2000 sentences, 2 epochs, evaluation every 1024 examples on the 300 dev pairs, no early stop)
. .venv/bin/activate; export OMP_NUM_THREADS=1
run() {  # $1 store, $2 batch, $3 seed, rest: extra args
  local out=$1 b=$2 seed=$3; shift 3
  gradsurg ablate --preset report --loss info_nce --no-progress --out "$out" --seeds $seed \
    --set max_train_sentences=2000 --set epochs=2 --set max_steps=null --set patience=null \
    --set batch_size=$b --set eval_every=$((1024 / b)) "$@"
}
G="--set loss_params.normalizer=global"
lane_a() { for s in $SEEDS; do run runs/gn-a 16 $s; run runs/gn-a 16 $s $G --param gamma=0.9,0.5; done; }
lane_b() { for s in $SEEDS; do run runs/gn-b 64 $s; run runs/gn-b 64 $s $G --param gamma=0.9; run runs/gn-b 256 $s; done; }
lane_a > runs/gn-lane-a.log 2>&1 &
lane_b > runs/gn-lane-b.log 2>&1 &
wait
