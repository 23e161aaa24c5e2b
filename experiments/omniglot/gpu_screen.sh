#!/usr/bin/env bash
# Screen Omniglot recipe variants on one lent GPU at the CPU targets' training lengths: each run trains for
# the number of episodes (ProtoNets) or meta-steps (SNAIL) that its configuration completes in the CPU
# budget of its target on one thread of this project's 2-core CPU (20 CPU-min ProtoNets, 30 SNAIL; costs
# per episode measured with `--cpu-minutes 0.6` runs), with the cosine schedule over exactly that length.
# The GPU changes the time a run takes, not what it learns, so a variant that wins here is then rerun on
# the CPU for the target. Workers pull runs from two queues in priority order until DEADLINE seconds.
#
#   bash experiments/omniglot/gpu_screen.sh DATA_PT OUT_DIR
#
# DEVICE=cpu SCALE=0.01 DEADLINE=120 is a dry run on the CPU. Copy OUT_DIR's JSON files to
# experiments/omniglot/results/gpu/screen/ (the table of every run: ../screen.md).
set -u
data=${1:?DATA_PT}
out=${2:?OUT_DIR}
scale=${SCALE:-1}
deadline=$(( $(date +%s) + ${DEADLINE:-500} ))
mkdir -p "$out"
steps() { python3 -c "print(max(2, round($1 * $scale)))"; }

PN='--algo protonet --train-ways 200 --train-shots 1 --train-queries 2 --lr 6e-3 --no-pool-last --eval-every 500 --learner-options {"distance":"l2"}'
SN='--algo snail --train-ways 5 --train-shots 1 --train-queries 1 --meta-batch 16 --lr 1e-3 --eval-every 1000'
SNO='{"shots":1,"prototype_loss_weight":1.0,"prototype_loss_scope":"batch"}'
protonet_runs=(
    "pn_ref 1346 --shift-pixels 2"
    "pn_aff10 1320 --shift-pixels 2 --affine 10,0.1,0,0"
    "pn_aff15_shear10 1320 --shift-pixels 2 --affine 15,0.15,10,0"
    "pn_affonly 1320 --affine 10,0.1,5,2"
    "pn_200w1q 2000 --shift-pixels 2 --train-queries 1"
    "pn_shift3 1346 --shift-pixels 3"
    "pn_lr1e2 1346 --shift-pixels 2 --lr 1e-2"
    "pn_300w1q 1346 --shift-pixels 2 --train-ways 300 --train-queries 1"
    "pn_aff10_seed1 1320 --shift-pixels 2 --affine 10,0.1,0,0 --seed 1"
    "pn_hidden96 545 --shift-pixels 2 --hidden 96"
    "pn_lr4e3 1346 --shift-pixels 2 --lr 4e-3"
    "pn_ref_seed1 1346 --shift-pixels 2 --seed 1"
)
snail_runs=(
    "snail_ref 6800 --shift-pixels 2"
    "snail_aff10 6700 --shift-pixels 2 --affine 10,0.1,0,0"
    "snail_nopool 5730 --shift-pixels 2 --no-pool-last"
    "snail_lr2e3 6800 --shift-pixels 2 --lr 2e-3"
    "snail_aff10_nopool 5650 --shift-pixels 2 --affine 10,0.1,0,0 --no-pool-last"
    "snail_protow2 6800 --shift-pixels 2 --proto-weight 2.0"
)
# PROTONET_RUNS / SNAIL_RUNS (one "name length options" per line) replace the queues above;
# PROTONET_WORKERS / SNAIL_WORKERS set how many processes work on each.
[[ -n ${PROTONET_RUNS:-} ]] && mapfile -t protonet_runs <<<"$PROTONET_RUNS"
[[ -n ${SNAIL_RUNS:-} ]] && mapfile -t snail_runs <<<"$SNAIL_RUNS"

worker() {  # worker QUEUE_NAME INDEX STRIDE
    local -n queue=$1
    local i=$2 stride=$3
    while (( i < ${#queue[@]} )); do
        read -r name length extra <<<"${queue[$i]}"
        local left=$(( deadline - $(date +%s) ))
        (( left > 20 )) || break
        local base options
        if [[ $name == pn_* ]]; then base=$PN; options=; else base=$SN; options=$SNO; fi
        if [[ $extra =~ --proto-weight\ ([0-9.]+) ]]; then  # SNAIL's auxiliary loss weight
            extra=${extra/${BASH_REMATCH[0]}/}; options=${SNO/:1.0,/:${BASH_REMATCH[1]},}
        fi
        # shellcheck disable=SC2086
        timeout "$left" env PYTHONUNBUFFERED=1 PYTHONPATH=src ${PYTHON:-python3} \
            experiments/omniglot/omniglot_time_to_accuracy.py --data-pt "$data" --device "${DEVICE:-cuda}" --threads 1 \
            --schedule cosine --episodes "$(steps "$length")" --cpu-minutes 1e9 --eval-episodes 200 \
            --out-dir "$out" --name "$name" $base ${options:+--learner-options "$options"} $extra \
            >"$out/$name.log" 2>&1
        i=$(( i + stride ))
    done
}
pw=${PROTONET_WORKERS:-4} sw=${SNAIL_WORKERS:-3}
for (( k = 0; k < pw; k++ )); do worker protonet_runs $k "$pw" & done
for (( k = 0; k < sw; k++ )); do worker snail_runs $k "$sw" & done
wait
grep -h "^final\|^[a-z_0-9]*: " "$out"/*.log | head -80
