#!/bin/bash
# Measure Omniglot learners' presets (5-way and 20-way 1-shot) and the transductive methods on one ProtoNets
# checkpoint, then record them for the docs. One torch thread per job; run at most two jobs at once.
#
#   bash experiments/omniglot/measure_methods.sh presets DATA/omniglot OUT relationnet r2d2 maml:rule=adam ...
#   (ALGO:KEY=VALUE,... adds --set algo_options.KEY=VALUE and records it as omniglot-ALGO-KEY-VALUE.json)
#   bash experiments/omniglot/measure_methods.sh transductive DATA/omniglot OUT
#   python experiments/omniglot/record_methods.py --preset-runs OUT/runs/* ...   # see its --help
#   python docs/gen_results.py
set -euo pipefail
mode=$1 data=$2 out=$3
shift 3
export OMP_NUM_THREADS=1
mkdir -p "$out/runs"

preset() {  # the whole `attnmeta train` command under /usr/bin/time -v, in docs/results/presets' format
  local spec=$1 algo=${1%%:*} name=$1 options="" before after cmd pair
  if [[ $spec == *:* ]]; then
    name=$algo
    for pair in ${spec#*:}; do options+=" --set algo_options.$pair"; name+="-${pair/=/-}"; done
  fi
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  cmd="attnmeta train omniglot --algo $algo --root $data --budget 3m --budget-clock cpu --threads 1$options --run-dir $out/runs/$name --quiet"
  /usr/bin/time -v -o "$out/$name.time" $cmd > "$out/$name.log" 2>&1
  after=$(cut -d' ' -f1-3 /proc/loadavg)
  python - "$name" "$cmd" "$before" "$after" "$out" "$algo${options:+ (${spec#*:})}" <<'PY'
import json, re, sys
name, cmd, before, after, out, label = sys.argv[1:]
t = open(f"{out}/{name}.time").read()
def field(name):
    return re.search(re.escape(name) + r": (.*)", t).group(1).strip()
wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
summary = json.load(open(f"{out}/runs/{name}/summary.json"))
record = {"algo": summary["algo"], "label": label, "command": cmd, "total_wall_seconds": round(seconds, 1),
          "max_rss_mib": round(int(field("Maximum resident set size (kbytes)")) / 1024, 1),
          "user_seconds": float(field("User time (seconds)")), "system_seconds": float(field("System time (seconds)")),
          "load_average_before_after": [before, after], "summary": summary}
json.dump(record, open(f"docs/results/presets/omniglot-{name}.json", "w"), indent=2)
PY
  attnmeta eval "$out/runs/$name" --ways 20 --episodes 600 --seed 0 --quiet || true  # fixed heads refuse
}

case $mode in
  presets)
    for spec in "$@"; do preset "${spec//,/ }"; done ;;
  transductive)
    attnmeta train omniglot --algo protonet --root "$data" --budget 3m --budget-clock cpu --threads 1 \
        --run-dir "$out/runs/transductive-protonet" --quiet
    for ways in 5 20; do
      attnmeta eval "$out/runs/transductive-protonet" --ways $ways --episodes 600 --seed 0 --quiet
      for method in bd-cspn laplacianshot pt-map tim finetune; do
        attnmeta eval "$out/runs/transductive-protonet" --ways $ways --episodes 600 --seed 0 --quiet \
            --transductive $method
      done
    done ;;
  *) echo "usage: $0 presets|transductive DATA_DIR OUT_DIR [ALGO ...]" >&2; exit 2 ;;
esac
