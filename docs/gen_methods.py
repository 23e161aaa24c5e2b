"""Tables of every Omniglot learner, the transductive methods and the frozen-text baselines, generated from
committed measurements.

``docs/gen_results.py`` calls these for the presets page (``docs/results/presets/README.md``), the results
page's Omniglot section and the transductive guide. The JSON files are written by
``experiments/omniglot/record_methods.py`` from the run folders and ``attnmeta eval`` files of
``experiments/omniglot/measure_methods.sh``:

* ``docs/results/presets/omniglot-<algo>.json``: ``{"algo", "command", "total_wall_seconds", "max_rss_mib",
  "user_seconds", "system_seconds", "load_average_before_after", "summary"}`` (the run's summary.json and
  ``/usr/bin/time -v`` of the whole command), optionally ``"eval_20way": {"mean", "ci95", "n",
  "seconds_per_task", "command"}`` (``attnmeta eval RUN --ways 20`` of the same checkpoint);
* ``docs/results/transductive/omniglot-protonet.json``: ``{"train_command", "steps", "best_step", "machine",
  "rows": [{"ways", "shots", "method", "mean", "ci95", "n", "seconds_per_task", "command"}]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRESETS_DIR = Path("docs") / "results" / "presets"
PRESETS_START, PRESETS_END = "<!-- presets:start -->", "<!-- presets:end -->"
TRANSDUCTIVE_JSON = Path("docs") / "results" / "transductive" / "omniglot-protonet.json"
TRANSDUCTIVE_PAGE = Path("docs") / "guides" / "transductive.md"
TRANSDUCTIVE_START, TRANSDUCTIVE_END = "<!-- transductive:start -->", "<!-- transductive:end -->"
FIXED_HEAD_NOTE = ("-: the learner classifies with a fixed 5-output head (the MAML family, Reptile, "
                   "Meta-LSTM, SNAIL), so `attnmeta eval --ways 20` refuses it; a 20-way figure needs a "
                   "20-way training run.")
METHOD_ORDER = ("inductive", "bd-cspn", "laplacianshot", "pt-map", "tim", "finetune")


def _percent(entry: dict[str, Any] | None, episodes: int | None = None) -> str:
    """``mean +/- ci95`` in percent, with the number of episodes where it is not ``episodes``."""
    if not entry:
        return "-"
    n = "" if episodes is None or entry["n"] == episodes else f" ({entry['n']} episodes)"
    return f"{100 * entry['mean']:.2f} +/- {100 * entry['ci95']:.2f}{n}"


def load_presets(folder: Path) -> list[dict[str, Any]]:
    """Every ``omniglot-<algo>.json`` of ``folder``, best 5-way accuracy first."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("omniglot-*.json"))]
    return sorted(runs, key=lambda r: -r["summary"]["test"]["mean"])


def presets_table(folder: Path) -> str:
    """One row per measured preset: the whole ``attnmeta train`` command's cost and both test figures."""
    lines = ["| learner | 5-way 1-shot % (95% CI) | 20-way 1-shot % (95% CI) | steps | train CPU min | "
             "total wall min | max RSS MiB | load at start |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in load_presets(folder):
        summary = run["summary"]
        lines.append(
            f"| {run.get('label', run['algo'])} | {_percent(summary['test'])} | "
            f"{_percent(run.get('eval_20way'))} | {summary['steps']:,} | "
            f"{summary['train_cpu_seconds'] / 60:.1f} | "
            f"{run['total_wall_seconds'] / 60:.1f} | {run['max_rss_mib']:.0f} | "
            f"{run['load_average_before_after'][0].split()[0]} |")
    return "\n".join([*lines, "", FIXED_HEAD_NOTE])


def _data_relative(command: str) -> str:
    """A measured command as users type it: the data folder as ``DATA``, without the run folder options."""
    words = command.split()
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--run-dir":
            skip = True
            continue
        if word == "--quiet":
            continue
        out.append(word.replace("/work/shared/data", "DATA"))
    return " ".join(out)


def learners_section(folder: Path) -> str:
    """The results page's Omniglot subsection: every learner's preset at 5-way and 20-way 1-shot."""
    runs = load_presets(folder)
    if not runs:
        return ""
    lines = ["", "### Every learner's preset (a 3-minute budget)", "",
             "Each learner's `attnmeta train omniglot --algo NAME` preset for 3 minutes of training (CPU "
             "or wall clock, as its command says), tested on the 600 fixed 5-way 1-shot episodes of the run "
             "and, with "
             "`attnmeta eval RUN --ways 20 --episodes 600`, on 600 fixed 20-way 1-shot episodes of the same "
             "checkpoint. These say how far each method gets on a small budget, not what it reaches; the "
             "[presets page](results/presets/README.md) adds memory and wall time.", "",
             "| learner | 5-way 1-shot % (95% CI) | 20-way 1-shot % (95% CI) | steps | train CPU min |",
             "| --- | --- | --- | --- | --- |"]
    for run in runs:
        summary = run["summary"]
        lines.append(f"| {run.get('label', run['algo'])} | {_percent(summary['test'])} | "
                     f"{_percent(run.get('eval_20way'))} | "
                     f"{summary['steps']:,} | {summary['train_cpu_seconds'] / 60:.1f} |")
    lines += ["", FIXED_HEAD_NOTE, "",
              "Commands (then `attnmeta eval RUN --ways 20 --episodes 600` for the 20-way column):", ""]
    lines += [f"- `{run.get('label', run['algo'])}`: `{_data_relative(run['command'])}`" for run in runs]
    return "\n".join(lines) + "\n"


def transductive_table(path: Path) -> str:
    """Inductive vs transductive accuracy of one ProtoNets checkpoint, 5-way and 20-way 1-shot."""
    if not path.is_file():
        return "No transductive measurement is committed yet."
    data = json.loads(path.read_text(encoding="utf-8"))
    cells: dict[tuple[str, int], dict[str, Any]] = {(r["method"], r["ways"]): r for r in data["rows"]}
    ways = sorted({w for _, w in cells})
    methods = [m for m in METHOD_ORDER if any((m, w) in cells for w in ways)]
    head = " | ".join(f"{w}-way 1-shot % (95% CI) | s per episode" for w in ways)
    lines = [f"| method | {head} |", "| --- |" + " --- | --- |" * len(ways)]
    for method in methods:
        row = []
        for w in ways:
            r = cells.get((method, w))
            row.append(f"{_percent(r, 600)} | {r['seconds_per_task']:.3f}" if r else "not measured | -")
        name = "inductive (nearest prototype)" if method == "inductive" else f"`{method}`"
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", f"One checkpoint ({data['steps']} training steps, best validation at step "
              f"{data['best_step']}), 600 fixed test episodes (seed 0, 15 queries per class) per column, or "
              "the first N of them where a cell says N episodes (the slowest methods); machine: "
              f"{data['machine']}. Seconds per episode are `evaluate`'s wall clock (embedding included), on "
              "one thread while other jobs shared the two cores, so they are rough.", "", "Commands:", "",
              f"- training: `{_data_relative(data['train_command'])}`"]
    lines += sorted({f"- `{r['command']}`" for r in data["rows"]})
    return "\n".join(lines)


def transductive_section(path: Path) -> str:
    """The results page's Omniglot subsection on transductive inference."""
    if not path.is_file():
        return ""
    return ("\n### Transductive inference on one ProtoNets embedding\n\n"
            "`attnmeta eval RUN --transductive METHOD` (see the "
            "[transductive guide](guides/transductive.md)):\n\n"
            + transductive_table(path) + "\n")


TEXT_TRANSFORMS_JSON = Path("experiments") / "text" / "results" / "frozen_transforms.json"
TEXT_PAGE = Path("docs") / "guides" / "text.md"
TEXT_START, TEXT_END = "<!-- text-transforms:start -->", "<!-- text-transforms:end -->"


def text_transforms_table(path: Path) -> str:
    """Training-free classifiers on frozen sentence embeddings (``experiments/text/frozen_transforms.py``)."""
    if not path.is_file():
        return "Not measured yet (`python experiments/text/frozen_transforms.py`)."
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    shapes = list(dict.fromkeys((r["ways"], r["shots"], r["episodes"]) for r in rows))
    cells = {(r["method"], r["ways"], r["shots"]): r for r in rows}
    head = " | ".join(f"{w}-way {s}-shot ({e} episodes)" for w, s, e in shapes)
    lines = [f"| frozen MiniLM + | {head} |", "| --- |" + " --- |" * len(shapes)]
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [cells.get((method, w, s)) for w, s, _ in shapes]
        shown = ("-" if v is None else f"{100 * v['accuracy']:.2f} +/- {100 * v['ci95']:.2f}" for v in values)
        lines.append(f"| {method} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


TEXT_RUNS_DIR = Path("experiments") / "text" / "results" / "encoder_runs"
TEXT_RUNS_START, TEXT_RUNS_END = "<!-- text-encoder-runs:start -->", "<!-- text-encoder-runs:end -->"
TEXT_SHAPES = ((5, 1, 600), (5, 5, 600), (5, 5, 2000), (45, 10, 200))


def _eval_file(folder: Path, ways: int, shots: int, episodes: int, kind: str = "",
               suffix: str = "") -> dict[str, Any] | None:
    path = folder / f"eval-{kind}{ways}w{shots}s-{episodes}ep-seed0{suffix}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def text_encoder_runs_table(folder: Path, paired_difference: Any) -> str:
    """Accuracy of each text run (a sub-folder of ``attnmeta eval`` files, listed in ``runs.json`` with its
    label and command) on the same fixed CLINC150 test episodes, each run's paired difference with the
    ``baseline`` run (``paired_difference(a, b) -> (mean, half-width)``), the OOS AUROC of its
    nearest-prototype distance and its transductive PT-MAP accuracy."""
    manifest = folder / "runs.json"
    if not manifest.is_file():
        return "Not measured yet (`experiments/text/results/encoder_runs/runs.json`)."
    runs = json.loads(manifest.read_text(encoding="utf-8"))
    head = " | ".join(f"{w}-way {s}-shot" + (f", {e:,} episodes" if e != 600 and w == 5 else "")
                      for w, s, e in TEXT_SHAPES)
    lines = [f"| run | {head} | OOS AUROC 1-shot / 5-shot (distance) | PT-MAP 1-shot / 5-shot |",
             "| --- |" + " --- |" * (len(TEXT_SHAPES) + 2)]
    base = {shape: _eval_file(folder / runs["baseline"], *shape) for shape in TEXT_SHAPES}
    for run in runs["runs"]:
        cells = []
        for shape in TEXT_SHAPES:
            result, reference = _eval_file(folder / run["folder"], *shape), base[shape]
            if result is None:
                cells.append("-")
                continue
            cell = f"{100 * result['mean']:.2f} +/- {100 * result['ci95']:.2f}"
            if run["folder"] != runs["baseline"] and reference and "per_episode" in result:
                diff, half = paired_difference(result["per_episode"], reference["per_episode"])
                cell += f" ({100 * diff:+.2f} +/- {100 * half:.2f})"
            cells.append(cell)
        oos = [_eval_file(folder / run["folder"], w, s, e, "oos-") for w, s, e in TEXT_SHAPES[:2]]
        aurocs = " / ".join("-" if o is None else f"{100 * o['scores']['distance']['auroc']:.2f}"
                            for o in oos)
        pt_map = [_eval_file(folder / run["folder"], w, s, e, suffix="-pt-map")
                  for w, s, e in TEXT_SHAPES[:2]]
        transductive = " / ".join("-" if t is None else f"{100 * t['mean']:.2f} +/- {100 * t['ci95']:.2f}"
                                  for t in pt_map)
        lines.append(f"| {run['label']} | " + " | ".join(cells) + f" | {aurocs} | {transductive} |")
    lines += ["", "In brackets: the paired difference with the first row on the same episodes (mean +/- 95% "
              "CI). PT-MAP: `attnmeta eval RUN --transductive pt-map`, the episode's queries labelled "
              "together (transductive)."]
    lines += ["", "Commands:", "", "```bash"] + [c for run in runs["runs"] for c in run["commands"]] + ["```"]
    return "\n".join(lines)


TEXT_BENCH_JSON = Path("benchmarks") / "results" / "bench_sentence_finetune.json"
TEXT_BENCH_START, TEXT_BENCH_END = "<!-- text-finetune-bench:start -->", "<!-- text-finetune-bench:end -->"


def text_finetune_bench_line(path: Path) -> str:
    """What ``finetune_layers`` costs, as measured by ``benchmarks/bench_sentence.py``."""
    if not path.is_file():
        return f"Not measured yet (`python benchmarks/bench_sentence.py --out {path}`)."
    report = json.loads(path.read_text(encoding="utf-8"))
    frozen, tuned = report["results"][0], report["finetune"]
    return (f"On {tuned['texts']:,} held-out utterances, one thread ({report['cpu']}, torch "
            f"{report['torch']}): pooled embeddings encode at {frozen['sentences_per_s']:.0f} sentences/s "
            "and "
            f"the token states entering the last {tuned['layers']} layers at "
            f"{tuned['state_encoding_sentences_per_s']:.0f}/s; a cached text's states take "
            f"{tuned['state_bytes_per_text'] / 1024:.1f} KiB (its embedding 1.5 KiB); the trainable layers "
            f"run at {tuned['forward_sentences_per_s']:.0f} sentences/s forward and "
            f"{tuned['train_sentences_per_s']:.0f}/s forward and backward (batches of 150). Peak resident "
            f"memory: {report['peak_rss_mib']['model_loaded']:.0f} MiB with the model, "
            f"{tuned['peak_rss_mib']['after_state_encoding']:.0f} MiB after encoding the states, "
            f"{tuned['peak_rss_mib']['after_steps']:.0f} MiB after the training steps.")
