"""Named recipes: the configurations behind the published figures, shipped as YAML files in this package.

``attnmeta train --recipe NAME`` trains one (``--config``, flags and ``--set`` still apply on top);
``attnmeta recipes`` lists them with the figure each reached, read from the run summary committed under
``results/NAME.json`` (written by ``record``, never typed by hand); ``attnmeta recipes show NAME`` prints
its config as a YAML file that ``--config`` reads.

A recipe file holds ``title``, ``paper`` (``{value, source}`` of the published figure, or ``null``) and
``config`` (``RunConfig`` keys).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attnmeta.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = RECIPE_DIR / "results"


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    paper: dict[str, Any] | None
    config: dict[str, Any]

    @property
    def command(self) -> str:
        data = {"omniglot": " --root DATA/omniglot", "omniglot-scenes": " --root DATA/omniglot",
                "clinc150": " --root DATA/text/clinc150"}
        return f"attnmeta train --recipe {self.name}" + data.get(self.config.get("benchmark", ""), "")


def names() -> list[str]:
    """Recipe names, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load(name: str) -> Recipe:
    """The recipe ``name``; an unknown name is a one-line error listing the recipes."""
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown recipe {name!r}{hint}; recipes: {', '.join(names())}")
    values = yaml.safe_load(path.read_text())
    return Recipe(name, values["title"], values.get("paper"), dict(values["config"]))


def result(name: str) -> dict[str, Any] | None:
    """The committed results of recipe ``name`` (``results/NAME.json``), or ``None`` if it was not run yet."""
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def show(name: str) -> str:
    """The recipe's config as a YAML file for ``attnmeta train --config`` (with a comment header)."""
    recipe = load(name)
    header = f"# {recipe.name}: {recipe.title}\n# attnmeta train --config THIS_FILE\n"
    return header + yaml.safe_dump(recipe.config, sort_keys=False)


def format_figure(test: dict[str, Any] | None) -> str:
    """``98.81 +/- 0.21%`` for accuracy, ``0.0123 +/- 0.0010`` for MSE, ``-18.52 +/- 1.40`` for a meta-RL
    return, ``-`` when missing."""
    if not test:
        return "-"
    if test["metric"] == "accuracy":
        return f"{100 * test['mean']:.2f} +/- {100 * test['ci95']:.2f}%"
    if test["metric"] == "map50":
        return f"mAP@0.5 {100 * test['mean']:.2f} +/- {100 * test['ci95']:.2f}%"
    if test["metric"] == "return":
        return f"{test['mean']:.2f} +/- {test['ci95']:.2f}"
    return f"{test['mean']:.4f} +/- {test['ci95']:.4f}"


def table() -> list[dict[str, str]]:
    """One row per recipe: name, benchmark, learner, figure reached, paper, cost, command."""
    rows = []
    for name in names():
        recipe, done = load(name), result(name)
        paper = recipe.paper
        cost = "not run yet"
        if done is not None:
            clock = "CPU" if done.get("cpu_seconds") is not None else "wall"
            seconds = done.get("cpu_seconds") or done["train_seconds"]
            cost = f"{seconds / 60:.1f} {clock}-min ({done.get('device', 'cpu')})"
        rows.append({
            "recipe": name,
            "benchmark": recipe.config.get("benchmark", "sinusoid"),
            "learner": recipe.config.get("algo", "maml"),
            "reached": format_figure(done["test"]) if done else "-",
            "paper": "-" if paper is None else (f"{100 * paper['value']:.1f}%" if paper["value"] <= 1
                                                else f"{paper['value']:g}"),
            "cost": cost,
            "command": recipe.command,
        })
    return rows


def record(run_dir: str | Path, name: str | None = None, out_dir: str | Path = RESULTS_DIR) -> Path:
    """Write ``out_dir/NAME.json`` from a finished recipe run's ``summary.json`` and ``config.yaml``."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{str(run_dir)!r} has no summary.json; record a finished recipe run")
    summary = json.loads(summary_path.read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    name = name or config.get("recipe")
    if not name:
        raise UserError(f"{str(run_dir)!r} was not trained from a recipe; pass the recipe's name")
    recipe = load(name)
    if summary.get("test") is None:
        raise UserError(f"{str(run_dir)!r} has no test result (the run stopped before its final test)")
    machine = summary.get("machine") or {}
    entry = {
        "recipe": name, "benchmark": summary["benchmark"], "algo": summary["algo"], "ways": summary["ways"],
        "shots": summary["shots"], "test": summary["test"], "train_seconds": summary["train_seconds"],
        "cpu_seconds": summary.get("train_cpu_seconds"), "device": summary.get("device", "cpu"),
        "machine": f"{machine.get('processor', '?')}, {machine.get('torch_threads', '?')} thread(s), "
                   f"flags {' '.join(machine.get('cpu_flags', [])) or '-'}",
        "paper": recipe.paper, "command": recipe.command, "steps": summary["steps"],
        "time_to": summary.get("time_to"), "seed": config.get("seed"),
    }
    if summary.get("adaptation") is not None:  # meta-RL: the return over adaptation steps
        entry["adaptation"] = summary["adaptation"]
    for key in ("map", "ms_per_image", "levenshtein"):  # detection: mAP@[.5:.95], time; seq2seq: distance
        if key in summary:
            entry[key] = summary[key]
    if summary.get("per_task"):  # sequence runs: the test tasks are languages (or domains), not episodes
        held_out = f"{len(summary['per_task'])} held-out " + (
            "languages, low setting (100 pairs)" if summary["benchmark"] == "sigmorphon2018" else "tasks")
        entry["task"] = held_out
    out = Path(out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entry, indent=2) + "\n")
    return out
