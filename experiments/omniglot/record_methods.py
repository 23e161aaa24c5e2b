"""Record the Omniglot learner and transductive measurements for the docs (``docs/gen_methods.py``).

    python experiments/omniglot/record_methods.py --preset-runs RUN_DIR [RUN_DIR ...]
    python experiments/omniglot/record_methods.py --transductive-run RUN_DIR \
        --train-command "attnmeta train ..."

``--preset-runs``: for each run folder (``attnmeta train omniglot --algo A ...``) reads its 20-way 1-shot
evaluation (``eval-20w1s-600ep-seed0.json``, written by ``attnmeta eval RUN --ways 20 --episodes 600 --seed
0``) into the ``docs/results/presets/omniglot-*.json`` that records the run, as ``eval_20way``
(that file, the run's summary and ``/usr/bin/time -v``, is written by ``measure_methods.sh``).
``--transductive-run``: every ``eval-<W>w1s-<E>ep-seed0[-METHOD].json`` of one run (the most episodes per
cell) into ``docs/results/transductive/omniglot-protonet.json``.
Then ``python docs/gen_results.py`` regenerates the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "docs" / "results" / "presets"
TRANSDUCTIVE = ROOT / "docs" / "results" / "transductive" / "omniglot-protonet.json"
EVAL_FILE = re.compile(r"eval-(\d+)w1s-(\d+)ep-seed0(?:-([a-z-]+))?\.json")


def _eval_entry(path: Path, command: str) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data["shots"] != 1:
        raise SystemExit(f"{path}: expected 1-shot episodes, got {data['shots']}-shot")
    return {"mean": data["mean"], "ci95": data["ci95"], "n": data["n"],
            "seconds_per_task": data["seconds_per_task"], "step": data["step"], "command": command}


def record_presets(runs: list[Path]) -> None:
    records = {path: json.loads(path.read_text(encoding="utf-8"))
               for path in PRESETS.glob("omniglot-*.json")}
    for run in runs:
        found = [path for path, record in records.items() if record["summary"]["run_dir"] == str(run)]
        if not found:
            raise SystemExit(f"no file of {PRESETS} records the run {run}: measure it with "
                             "measure_methods.sh")
        target, record = found[0], records[found[0]]
        algo = record.get("label", record["algo"])
        record["eval_20way"] = _eval_entry(run / "eval-20w1s-600ep-seed0.json",
                                           "attnmeta eval RUN --ways 20 --episodes 600 --seed 0")
        target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"{algo}: 20-way {100 * record['eval_20way']['mean']:.2f}%")


def record_transductive(run: Path, train_command: str) -> None:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    best: dict[tuple[int, str], dict] = {}  # per (ways, method): the evaluation on the most episodes
    for path in sorted(run.glob("eval-*w1s-*ep-seed0*.json")):
        match = EVAL_FILE.fullmatch(path.name)
        if not match:
            continue
        ways, episodes, method = int(match.group(1)), int(match.group(2)), match.group(3) or "inductive"
        flag = "" if method == "inductive" else f" --transductive {method}"
        entry = _eval_entry(path, f"attnmeta eval RUN --ways {ways} --episodes {episodes} --seed 0{flag}")
        if (ways, method) not in best or entry["n"] > best[ways, method]["n"]:
            best[ways, method] = {"ways": ways, "shots": 1, "method": method, **entry}
    rows = [best[key] for key in sorted(best)]
    machine = summary["machine"]
    TRANSDUCTIVE.parent.mkdir(parents=True, exist_ok=True)
    TRANSDUCTIVE.write_text(json.dumps({
        "train_command": train_command, "steps": summary["steps"], "best_step": summary["best"]["step"],
        "machine": f"{machine['processor']}, {machine['torch_threads']} thread, flags "
                   f"{' '.join(machine['cpu_flags'])}, torch {machine['torch']}",
        "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"{len(rows)} rows -> {TRANSDUCTIVE.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset-runs", type=Path, nargs="*", default=[])
    parser.add_argument("--transductive-run", type=Path)
    parser.add_argument("--train-command", default="")
    args = parser.parse_args()
    record_presets(args.preset_runs)
    if args.transductive_run:
        if not args.train_command:
            parser.error("--transductive-run needs --train-command (the command that trained the run)")
        record_transductive(args.transductive_run, args.train_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
