"""Record the detection results table (docs/guides/detection.md) from finished runs and their evaluations.

For each run folder: its ``summary.json`` (learner, training CPU time, machine) and every
``eval-<N>w<K>s<Q>q-<E>ep-seed<S>.json`` that ``attnmeta eval RUN --ways N --shots K --episodes E`` wrote
(and the run's own final test, for its training shape when no eval file has it) become
``docs/results/detection/<benchmark>-<learner>-<N>w<K>s.json``; ``python docs/gen_results.py`` then
rewrites the table. Nobody types a figure by hand.

    python experiments/detection/record_results.py runs/omniglot-scenes-attention-detector-5w1s ...
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "results" / "detection"
EVAL_FILE = re.compile(r"eval-(\d+)w(\d+)s(\d+)q-(\d+)ep-seed(\d+)\.json")


def learner_defaults(algo: str) -> dict:
    """The constructor defaults of detector ``algo`` (the options a run's config leaves out)."""
    import inspect

    from attnmeta.learners.detection.registry import DETECTORS

    parameters = inspect.signature(DETECTORS[algo].load().__init__).parameters
    return {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}


def train_command(config: dict) -> str:
    options = " ".join(f"--set algo_options.{k}={v}" for k, v in (config.get("algo_options") or {}).items()
                       if config.get("recipe") is None)
    if config.get("recipe"):  # the options the run changed from its recipe's
        from attnmeta.train import recipes

        recipe_options = recipes.load(config["recipe"]).config.get("algo_options") or {}
        own = config.get("algo_options") or {}
        options = {**learner_defaults(config["algo"]), **own}
        changed = {k: v for k, v in options.items() if k in recipe_options and recipe_options[k] != v}
        changed.update({k: v for k, v in own.items() if k not in recipe_options})
        extra = "".join(f" --set algo_options.{k}={json.dumps(v)}" for k, v in changed.items())
        return f"attnmeta train --recipe {config['recipe']} --root DATA/omniglot{extra}"
    budget = (f"--budget {config['budget_minutes']:g}m --budget-clock {config.get('budget_clock', 'wall')} "
              f"--threads {config.get('threads', 1)} "
              if config.get("budget_minutes") and config["algo"] != "template-matching" else "")
    command = (f"attnmeta train {config['benchmark']} --algo {config['algo']} --root DATA/omniglot "
               f"{budget}{options}")
    return command.strip()


def label(config: dict) -> str:
    """The learner's name, with the options that tell its variants apart."""
    options = config.get("algo_options") or {}
    if config["algo"] == "attention-detector":
        prior = options.get("template_prior")
        name = "attention-detector" + (f" + template prior {prior:g}" if prior else " (learned only)")
        return name + (" + distractor negatives" if options.get("distractor_negatives") else "")
    if config["algo"] == "prototype-detector":
        weight = options.get("episode_weight", 1.0)
        return "prototype-detector" + (f" + episodic loss {weight:g}" if weight else " (base training only)")
    return config["algo"]


def rows(run_dir: Path) -> list[dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    machine = summary.get("machine") or {}
    results = []
    for path in sorted(run_dir.glob("eval-*.json")):
        match = EVAL_FILE.fullmatch(path.name)
        if match is not None:
            ways, shots, _queries, episodes, seed = (int(g) for g in match.groups())
            results.append((ways, shots, episodes, seed, json.loads(path.read_text()), True))
    if summary.get("test") and (summary["ways"], summary["shots"]) not in {r[:2] for r in results}:
        # the final test of the run itself (its fixed test episodes, seed config.test_seed)
        own = {"map50": summary["test"], "map": summary["map"], "ms_per_image": summary["ms_per_image"]}
        results.append((summary["ways"], summary["shots"], summary["test"]["n"], config.get("test_seed", 0),
                        own, False))
    out = []
    for ways, shots, episodes, seed, result, evaluated in results:
        evaluation = (f"; attnmeta eval RUN --ways {ways} --shots {shots} --episodes {episodes} --seed {seed}"
                      if evaluated else " (its final test)")
        out.append({
            "benchmark": summary["benchmark"], "algo": label(config), "ways": ways, "shots": shots,
            "map50": {k: v for k, v in result["map50"].items() if k != "per_episode"},
            "map": {k: v for k, v in result["map"].items() if k != "per_episode"},
            "ms_per_image": result["ms_per_image"],
            "train_cpu_seconds": summary.get("train_cpu_seconds") if summary.get("trained", True) else None,
            "machine": f"{machine.get('processor', '?')}, {machine.get('torch_threads', '?')} thread(s), "
                       f"flags {' '.join(machine.get('cpu_flags', [])) or '-'}",
            "command": f"{train_command(config)}{evaluation}",
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="detection run folders")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for run_dir in args.runs:
        for row in rows(run_dir):
            slug = re.sub(r"[^a-z0-9]+", "-", row["algo"].lower()).strip("-")
            name = f"{row['benchmark']}-{slug}-{row['ways']}w{row['shots']}s.json"
            (OUT / name).write_text(json.dumps(row, indent=2) + "\n")
            print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
