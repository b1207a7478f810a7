#!/usr/bin/env bash
# after runs/gnorm-study.sh: the control (batch normaliser with InfoNCE's softmax W and a constant GD = 1/tau,
# i.e. the global normaliser's gradient with u = the batch's own estimate, gamma = 1), then seed 3
while pgrep -f gnorm-study.sh >/dev/null; do sleep 20; done
. .venv/bin/activate; export OMP_NUM_THREADS=1
run() {  # $1 store, $2 batch, $3 seed, rest: extra args
  local out=$1 b=$2 seed=$3; shift 3
  gradsurg ablate --preset report --no-progress --out "$out" --seeds $seed \
    --set max_train_sentences=2000 --set epochs=2 --set max_steps=null --set patience=null \
    --set batch_size=$b --set eval_every=$((1024 / b)) "$@"
}
G="--loss info_nce --set loss_params.normalizer=global"
C="--loss paradigm --set loss_params.dissipation=constant --set loss_params.gd_value=20 --set loss_params.weight=softmax --set loss_params.temperature=0.05 --set loss_params.ratio=1.0"
lane_a() { for s in 1 2; do run runs/gn-a 16 $s $C; done; run runs/gn-a 16 3 --loss info_nce; run runs/gn-a 16 3 $G --param gamma=0.9,0.5; }
lane_b() { for s in 1 2; do run runs/gn-b 64 $s $C; done; run runs/gn-b 64 3 --loss info_nce; run runs/gn-b 64 3 $G --param gamma=0.9; run runs/gn-b 256 3 --loss info_nce; }
lane_a > runs/gn-lane-a2.log 2>&1 &
lane_b > runs/gn-lane-b2.log 2>&1 &
wait
