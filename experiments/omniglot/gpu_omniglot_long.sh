#!/usr/bin/env bash
# Longer Omniglot 5-way 1-shot runs on one lent CUDA GPU, three processes side by side (each is bound by
# kernel launches, not by the GPU): MAML as in its paper (second order, meta-batch 32, 15 queries, vmap,
# exact batch norm), SNAIL with its own loss, and SNAIL with the auxiliary ProtoNets loss; each with Adam and
# a cosine schedule over its wall-time budget (--schedule cosine-budget).
#
#   bash experiments/omniglot/gpu_omniglot_long.sh DATA_PT OUT_DIR [WALL_MINUTES]
#
# DATA_PT: the tensors written by `omniglot_time_to_accuracy.py --export-data` (the archives need not be
# there). Logs and JSON land in OUT_DIR. Copy the JSON files to experiments/omniglot/results/gpu/
# afterwards. DEVICE=cpu with a fraction of a minute is a dry run.
set -u
data=${1:?DATA_PT}
out=${2:?OUT_DIR}
minutes=${3:-6}
mkdir -p "$out"
run() {
    local name=$1
    shift
    PYTHONUNBUFFERED=1 ${PYTHON:-python3} experiments/omniglot/omniglot_time_to_accuracy.py --data-pt "$data" --device "${DEVICE:-cuda}" \
        --threads 2 --schedule cosine-budget --episodes 1000000 --cpu-minutes 1e9 --wall-minutes "$minutes" \
        --eval-episodes 300 --out-dir "$out" --name "$name" "$@" >"$out/$name.log" 2>&1 &
}
run omniglot_maml_gpu_long --algo maml --train-ways 5 --train-shots 1 --train-queries 15 --meta-batch 32 \
    --lr 1e-3 --norm meta --eval-every 1500 \
    --learner-options '{"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3}'
run omniglot_snail_gpu --algo snail --train-ways 5 --train-shots 1 --train-queries 1 --meta-batch 32 \
    --lr 1e-3 --eval-every 1500 --learner-options '{"shots": 1}'
run omniglot_snail_protoaux_gpu --algo snail --train-ways 5 --train-shots 1 --train-queries 1 \
    --meta-batch 32 --lr 1e-3 --eval-every 1500 \
    --learner-options '{"shots": 1, "prototype_loss_weight": 1.0, "prototype_loss_scope": "batch"}'
wait
tail -n 12 "$out"/*.log
