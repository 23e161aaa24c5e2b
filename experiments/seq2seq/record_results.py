"""Record the SIGMORPHON 2018 results (docs/guides/seq2seq.md) from finished runs.

For each run folder, its ``summary.json`` (the final test on the 20 held-out languages: per-language
accuracy and Levenshtein distance, training CPU time, machine) becomes
``docs/results/seq2seq/<name>.json`` (``<name>``: the recipe without its ``sigmorphon2018-`` prefix, else the
learner); ``python docs/gen_results.py`` then rewrites the per-language table
and the paired comparisons. The shared task's baseline comes from ``shared_task_baseline.py`` (its JSON is in
the same folder). Nobody types a figure by hand.

    python experiments/seq2seq/record_results.py runs/sigmorphon2018-maml runs/sigmorphon2018-transfer ...
    python experiments/seq2seq/record_results.py RUN --eval RUN/eval-test-20tasks-beam1-hallucinate1000.json
    python experiments/seq2seq/record_results.py RUN --recipes-at fa949ea   # a run of older recipes: history/
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "results" / "seq2seq"
#: ``--recipes-at COMMIT``: the run used the recipes of that commit (the row goes to ``OUT / "history"``).
RECIPES_AT: str | None = None


def recipe_config(name: str) -> dict:
    """A recipe's config as it is now, or as it was at ``RECIPES_AT``."""
    if RECIPES_AT is None:
        from attnmeta.train import recipes

        return recipes.load(name).config
    path = f"{RECIPES_AT}:src/attnmeta/train/recipes/{name}.yaml"
    shown = subprocess.run(["git", "show", path], cwd=ROOT, capture_output=True, text=True, check=True)
    return yaml.safe_load(shown.stdout)["config"]


def recipe_changes(config: dict) -> dict:
    """The learner options a recipe run set beyond its recipe's (``--set algo_options.K=V``); a run without a
    recipe: every option it set."""
    if not config.get("recipe"):
        return dict(config.get("algo_options") or {})
    own = recipe_config(config["recipe"]).get("algo_options") or {}
    return {k: v for k, v in (config.get("algo_options") or {}).items() if own.get(k, None) != v}


def setting_changes(config: dict) -> dict:
    """The run settings (other than the learner's options, the data and the folders) a recipe run changed."""
    own = recipe_config(config["recipe"])
    skip = {"algo_options", "init_from", "run_dir", "root", "recipe"}
    return {k: config[k] for k in own if k not in skip and k in config and config[k] != own[k]}


def train_command(config: dict) -> str:
    """The command of the run; a run started from another run than its recipe's ``init_from`` is preceded
    by that run's command (``--run-dir runs/start``)."""
    if not config.get("recipe"):
        return (f"attnmeta train sigmorphon2018 --algo {config['algo']} --root DATA/text/sigmorphon2018"
                + "".join(f" --set algo_options.{k}={v}" for k, v in recipe_changes(config).items()))
    options = config.get("algo_options") or {}
    if set(recipe_config(config["recipe"]).get("algo_options") or {}) - set(options):  # options removed
        sets = " --set 'algo_options={" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}'"
    else:
        sets = "".join(f" --set algo_options.{k}={v}" for k, v in recipe_changes(config).items())
    sets += "".join(f" --set {k}={v}" for k, v in setting_changes(config).items())
    sets += f" --seed {config['seed']}" if config.get("seed", 0) else ""
    command = f"attnmeta train --recipe {config['recipe']} --root DATA/text/sigmorphon2018{sets}"
    start = start_config(config)
    if start is not None:
        command = f"{train_command(start)} --run-dir runs/start; {command} --set init_from=runs/start"
    return command


LABELS = {"pretrain": "transfer, 30 CPU-min", "transfer": "transfer, 30 CPU-min from pre-training",
          "maml": "MAML, 30 CPU-min from pre-training", "reptile": "Reptile, 30 CPU-min from pre-training",
          "context": "task vector (context), 30 CPU-min from pre-training", "scratch": "scratch"}
#: Up to commit fa949ea the transfer recipe was 60 CPU-minutes from a random start.
OLD_LABELS = {**LABELS, "transfer": "transfer, 60 CPU-min"}


#: The LSTM recipes are the Transformer recipes with these options set (in this order in the names).
LSTM_OPTIONS = ("edits", "architecture", "dropout")


def as_transformer_recipe(config: dict) -> dict:
    """A run of a ``sigmorphon2018-lstm-*`` recipe as its Transformer recipe with the LSTM's options set, so
    that it shares its name and label with the same run made by ``--set`` (a repeat's row pairs with it)."""
    recipe = config.get("recipe") or ""
    if not recipe.startswith("sigmorphon2018-lstm-"):
        return config
    options = config.get("algo_options") or {}
    ordered = {k: options[k] for k in LSTM_OPTIONS if k in options}
    return {**config, "recipe": recipe.replace("-lstm-", "-"), "algo_options": {**ordered, **options}}


def names(config: dict) -> tuple[str, str]:
    """The file name and the table label of a run (its recipe and the options it changed; a run started
    from another pre-training than its recipe's, made with the same options, says "both stages")."""
    config = as_transformer_recipe(config)
    recipe = config.get("recipe")
    name = (recipe or config["algo"]).removeprefix("sigmorphon2018-")
    if recipe and config["algo"] != recipe_config(recipe).get("algo"):  # another learner on its settings
        name = config["algo"]
    changes = recipe_changes(config)
    labels = LABELS if RECIPES_AT is None else OLD_LABELS
    label = labels.get(name, name)
    if random_start(config):
        name, label = name + "-random-start", label.replace(" from pre-training", "") + " from a random start"
    label += "".join(f", {k}={v}" for k, v in changes.items())
    name += "".join(f"-{k.replace('_', '-')}-{v}" for k, v in changes.items())
    start = start_config(config)
    if start is not None:
        same = recipe_changes(start) == changes
        start_name = names(start)[0]
        name += "-both-stages" if same else f"-from-{start_name}"
        label += " (both stages)" if same else f", from {start_name}"
    if config.get("seed", 0):  # a repeat with another seed: its own row
        name, label = name + f"-seed-{config['seed']}", label + f", seed {config['seed']}"
    return name, label


def random_start(config: dict) -> bool:
    """Whether a run of a recipe that starts from a pre-training started from random weights instead
    (``--set init_from=null``)."""
    recipe = config.get("recipe")
    return bool(recipe and recipe_config(recipe).get("init_from") and not config.get("init_from"))


def start_config(config: dict) -> dict | None:
    """The config of the run a recipe run started from, when it is not its recipe's ``init_from``."""
    start = config.get("init_from")
    if not config.get("recipe") or not start:
        return None
    if start == recipe_config(config["recipe"]).get("init_from"):
        return None
    path = Path(start) / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


TEST_TIME = ("finetune_steps", "hallucinate", "hallucinated_share", "explore", "finetune_explore", "ensemble")


def with_evaluation(summary: dict, evaluation: dict) -> tuple[dict, dict]:
    """The run's summary with its test replaced by an ``attnmeta eval`` file's, and the test-time options
    that file was made with (``--finetune-steps``, ``--hallucinate``, ``--hallucinated-share``,
    ``--explore``)."""
    if evaluation.get("beam", 1) != 1:
        raise SystemExit("the tables are greedy: --eval takes an evaluation with --beam 1")
    # `attnmeta eval --explore` wrote "explore" before the option was named finetune_explore: one name
    options = {("explore" if k == "finetune_explore" else k): evaluation[k]
               for k in TEST_TIME if k in evaluation}
    summary = {**summary, "per_task": evaluation["per_task"], "test": evaluation["accuracy"],
               "levenshtein": evaluation["levenshtein"]}
    return summary, options


def record(run_dir: Path, evaluation: Path | None = None) -> Path:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    if summary.get("benchmark") != "sigmorphon2018" or not summary.get("per_task"):
        raise SystemExit(f"{run_dir} is not a finished sigmorphon2018 run")
    options: dict = {}
    if evaluation is not None:
        summary, options = with_evaluation(summary, json.loads(evaluation.read_text()))
    machine = summary.get("machine") or {}
    name, label = names(config)
    base = name
    learner_options = config.get("algo_options") or {}
    test_time = {k: learner_options[k] for k in TEST_TIME if k in learner_options}
    test_time.update(options)
    if options:
        name += "-test" + "".join(f"-{k.replace('_', '-')}-{v}" for k, v in options.items())
        label += ", test-time " + ", ".join(f"{k}={v}" for k, v in options.items())
    init = summary.get("init_from") or {}
    row = {
        "name": name, "run": base, "label": label, "algo": config["algo"], "recipe": config.get("recipe"),
        "test_time": test_time,
        "model": {k: learner_options[k] for k in ("architecture", "edits", "copy") if k in learner_options},
        "init_from": init.get("run"), "init_train_cpu_seconds": init.get("train_cpu_seconds"),
        "start": names(start)[0] if (start := start_config(config)) is not None else None,
        "random_start": random_start(config),
        "languages": {name: {"accuracy": 100 * r["accuracy"], "levenshtein": r["levenshtein"]}
                      for name, r in summary["per_task"].items()},
        "accuracy": {k: 100 * summary["test"][k] for k in ("mean", "ci95")},
        "levenshtein": {k: summary["levenshtein"][k] for k in ("mean", "ci95")},
        "steps": summary["steps"],
        "train_cpu_seconds": summary["train_cpu_seconds"] if summary.get("meta_trained", True) else None,
        "machine": f"{machine.get('processor', '?')}, {machine.get('torch_threads', '?')} thread(s), "
                   f"flags {' '.join(machine.get('cpu_flags', [])) or '-'}",
        "command": train_command(config) + (
            "; attnmeta eval RUN" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in options.items())
            if options else ""),
    }
    folder = OUT if RECIPES_AT is None else OUT / "history"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    out.write_text(json.dumps(row, indent=1) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="sigmorphon2018 run folders")
    parser.add_argument("--eval", type=Path, help="an `attnmeta eval` file of the (one) run to record "
                        "instead of its final test (test-time options such as --hallucinate)")
    parser.add_argument("--recipes-at", metavar="COMMIT", help="the runs used the recipes of this commit: "
                        "names and commands are relative to them, rows go to docs/results/seq2seq/history")
    args = parser.parse_args()
    global RECIPES_AT
    RECIPES_AT = args.recipes_at
    if args.eval is not None and len(args.runs) != 1:
        raise SystemExit("--eval records one run: name one run folder")
    for run_dir in args.runs:
        print(f"wrote {record(run_dir, args.eval)}")


if __name__ == "__main__":
    main()
