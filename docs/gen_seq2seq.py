"""The SIGMORPHON 2018 tables of ``docs/guides/seq2seq.md``, from ``docs/results/seq2seq/*.json``.

``docs/gen_results.py`` writes ``seq2seq_table(SEQ2SEQ_DIR)`` between ``<!-- seq2seq:start -->`` and
``<!-- seq2seq:end -->`` (the current recipes' runs, written by ``experiments/seq2seq/record_results.py``)
and ``seq2seq_table(SEQ2SEQ_DIR / "history")`` between ``<!-- seq2seq-history:start -->`` and
``<!-- seq2seq-history:end -->`` (runs recorded before the recipes last changed; their commands name the
recipes of the commit in ``history/README.md``). The shared task's baseline and scratch training do not
depend on a recipe: both tables compare with the main folder's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SEQ2SEQ_DIR = Path("docs") / "results" / "seq2seq"
SEQ2SEQ_PAGE = Path("docs") / "guides" / "seq2seq.md"
SEQ2SEQ_START, SEQ2SEQ_END = "<!-- seq2seq:start -->", "<!-- seq2seq:end -->"
HISTORY_START, HISTORY_END = "<!-- seq2seq-history:start -->", "<!-- seq2seq-history:end -->"
#: Rows that do not depend on a recipe, read from the main folder by the history table too.
SHARED_ROWS = ("shared-task-baseline", "scratch")
SEQ2SEQ_ORDER = ("scratch", "pretrain", "transfer", "reptile", "maml", "context")
SEQ2SEQ_NOT_RUNS = ("shared-task-baseline", "published-low")
META_LEARNERS = ("maml", "reptile", "context")


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired values and the half-width of its 95% CI (Student's t, n - 1 df)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 if n > 1 else float("nan")
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / n ** 0.5 if n > 1 else float("nan")


def decoding_line(path: Path) -> str:
    """The decoding throughput ``benchmarks/bench_decode.py`` measured, as one sentence."""
    if not path.is_file():
        return "Decoding throughput: not measured yet (`python benchmarks/bench_decode.py RUN`)."
    d = json.loads(path.read_text(encoding="utf-8"))
    runs = d.get("runs") or [{**d, "network": "Seq2SeqTransformer"}]  # one run before the LSTM existed
    rates = "; ".join(f"{r['network']} (`{r['run']}`) " + ", ".join(
        f"{name} {row['words_per_cpu_second']:.0f}" for name, row in r["results"].items()) for r in runs)
    return (f"Decoding throughput (`benchmarks/bench_decode.py {' '.join(r['run'] for r in runs)}`, "
            f"{runs[0]['words']} {runs[0]['task']} words, {d['threads']} thread, flags "
            f"{' '.join(d['cpu_flags'])}): words per CPU-second, {rates}.")


def _seq2seq_results(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """Recorded rows by file name (the shared task's baseline first, then ``SEQ2SEQ_ORDER``) and the
    languages (the baseline's order); a folder without the baseline (``history``) takes the baseline and
    scratch rows of its parent."""
    results: dict[str, dict] = {}
    main = folder if (folder / "shared-task-baseline.json").is_file() else folder.parent
    baseline = main / "shared-task-baseline.json"
    if baseline.is_file():
        results["shared-task-baseline"] = {"label": "shared-task baseline",
                                           **json.loads(baseline.read_text(encoding="utf-8"))}
    runs = [p for p in folder.glob("*.json") if p.stem not in SEQ2SEQ_NOT_RUNS]
    runs += [main / f"{n}.json" for n in SHARED_ROWS[1:] if main != folder and (main / f"{n}.json").is_file()]
    rank = {name: i for i, name in enumerate(SEQ2SEQ_ORDER)}
    for path in sorted(runs, key=lambda p: (rank.get(p.stem, len(rank)), p.stem)):
        row = json.loads(path.read_text(encoding="utf-8"))
        results[path.stem] = {"label": path.stem, **row}
    languages = list(results["shared-task-baseline"]["languages"]) if baseline.is_file() else []
    return results, languages


def _published(main: Path) -> dict:
    """``published-low.json`` of the main folder (the shared task's published results per language), or
    ``{}`` when there is none."""
    path = main / "published-low.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def published_columns(published: dict, languages: list[str]) -> tuple[list[str], dict[str, list[str]], str]:
    """Headers, per-language cells and a closing sentence for the published 2018 results beside ours (the
    official baseline and the best submission of each language); nothing when a language is missing."""
    rows = published.get("languages") or {}
    if not languages or any(lang not in rows for lang in languages):
        return [], {}, ""
    cells = {lang: [f"{rows[lang]['baseline']:.1f}", f"{rows[lang]['best']:.1f} {rows[lang]['best_system']}"]
             for lang in languages}

    def mean(key: str) -> float:
        return sum(rows[lang][key] for lang in languages) / len(languages)

    sentence = (f"Published 2018 figures (test accuracy %, `docs/results/seq2seq/published-low.json`: the "
                f"organisers' results sheet), means over these {len(languages)} languages: official baseline "
                f"{mean('baseline'):.2f}, UZH-01 (the best run on the 103-language average) "
                f"{mean('uzh-01'):.2f}, the best submission of each language {mean('best'):.2f}.")
    return ["published baseline 2018", "best 2018 submission"], cells, sentence


def architecture(row: dict) -> str:
    """The network of a recorded run (rows recorded before the LSTM existed are Transformers)."""
    return (row.get("model") or {}).get("architecture", "transformer")


def best_scratch(results: dict[str, dict], network: str | None = None) -> str | None:
    """The most accurate row trained from scratch (of that ``network`` only, when given)."""
    rows = [n for n, r in results.items() if r.get("algo") == "scratch"
            and network in (None, architecture(r))]
    languages = results[rows[0]]["languages"] if rows else {}

    def mean(name: str) -> float:
        return sum(results[name]["languages"][lang]["accuracy"] for lang in languages) / len(languages)

    return max(rows, key=mean, default=None)


def repeated(name: str) -> tuple[str, int]:
    """A row's name without its ``-seed-N`` and the seed N (0 when the name has none)."""
    match = re.fullmatch(r"(.*)-seed-(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def pooled_alike(name: str, results: dict[str, dict]) -> list[str]:
    """The pooled-training (``transfer``) rows from a random start of the same network, test-time options and
    seed as row ``name``."""
    row = results[name]
    return [n for n, r in results.items() if r.get("algo") == "transfer" and r.get("start") is None
            and not r.get("init_from") and architecture(r) == architecture(row)
            and (r.get("test_time") or {}) == (row.get("test_time") or {})
            and repeated(n)[1] == repeated(name)[1]]


def _seq2seq_against(name: str, results: dict[str, dict]) -> list[str]:
    """What a meta-learner's run is compared with: the issue's three baselines (scratch: the best from-scratch
    run of the same network; transfer: the run of the same start, test-time options and seed when one is
    recorded, the row named `transfer` otherwise) and its start; a meta-learner trained from a random start:
    the baseline, scratch and pooled training from a random start (``pooled_alike``)."""
    row = results[name]
    test_time, start = row.get("test_time") or {}, row.get("start")
    if row.get("random_start"):  # against pooled training of the same network from a random start
        return [n for n in dict.fromkeys(["shared-task-baseline", best_scratch(results, architecture(row)),
                                          *pooled_alike(name, results)]) if n in results]
    same = [n for n, r in results.items() if r.get("algo") == "transfer" and start is not None
            and r.get("start") == start and (r.get("test_time") or {}) == test_time
            and repeated(n)[1] == repeated(name)[1]]
    own_start = [n for n, r in results.items() if test_time and r.get("run") == start
                 and (r.get("test_time") or {}) == test_time]
    scratch = best_scratch(results, architecture(row)) or "scratch"
    against = ["shared-task-baseline", scratch, *(same or ["transfer"]),
               *(own_start or [start or "pretrain"])]
    return [n for n in dict.fromkeys(against) if n in results]


def _seed_means(results: dict[str, dict], languages: list[str]) -> list[str]:
    """Paired differences of a meta-learner repeated with several seeds against the transfer run of the same
    start repeated with the same seeds, each language's accuracy first averaged over the seeds."""
    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(repeated(name)[0], []).append(name)
    lines = []
    for base, members in groups.items():
        if len(members) < 2 or base not in results or results[base].get("algo") not in META_LEARNERS:
            continue
        transfer = [n for n in _seq2seq_against(base, results)
                    if results[n].get("algo") == "transfer" and results[n].get("start") is not None]
        others = groups[repeated(transfer[0])[0]] if transfer else []
        if sorted(repeated(n)[1] for n in others) != sorted(repeated(n)[1] for n in members):
            continue

        def seed_mean(names: list[str], lang: str) -> float:
            return sum(results[n]["languages"][lang]["accuracy"] for n in names) / len(names)

        diff, half = paired_difference([seed_mean(members, lang) for lang in languages],
                                       [seed_mean(others, lang) for lang in languages])
        verdict = "excludes 0" if abs(diff) > half else "includes 0"
        lines.append(f"- {results[base]['label']} - {results[transfer[0]]['label']}, each averaged over "
                     f"seeds {', '.join(str(repeated(n)[1]) for n in members)}: {diff:+.2f} +/- {half:.2f} "
                     f"({verdict})")
    return ["", "Averaged over seeds (each language's accuracy first averaged over a run's repeats):", "",
            *lines] if lines else []


def seq2seq_table(folder: Path) -> str:
    """Every recorded learner's average, the per-language accuracy (Levenshtein) of the baselines and the best
    transfer and meta-learning runs, and the paired 95% CIs of the meta-learners' differences
    (``docs/results/seq2seq``)."""
    results, languages = _seq2seq_results(folder)
    if len(results) < 2 or not languages:
        return "No sequence-to-sequence results are recorded yet."

    def mean(row: dict, key: str) -> float:
        return sum(row["languages"][lang][key] for lang in languages) / len(languages)

    def cpu(row: dict) -> str:
        seconds = row.get("train_cpu_seconds")
        return "-" if not seconds else f"{(seconds + (row.get('init_train_cpu_seconds') or 0)) / 60:.0f}"

    lines = ["| run | accuracy % (95% CI over languages) | Levenshtein | training CPU-minutes (with "
             "pre-training) |", "| --- | --- | --- | --- |"]
    for row in results.values():
        ci = row.get("accuracy", {}).get("ci95")
        lines.append(f"| {row['label']} | {mean(row, 'accuracy'):.2f}"
                     + (f" +/- {ci:.2f}" if ci is not None else "") + f" | {mean(row, 'levenshtein'):.3f} | "
                     f"{cpu(row)} |")
    best = {algo: max((n for n, r in results.items() if r.get("algo") == algo),
                      key=lambda n: mean(results[n], "accuracy"), default=None)
            for algo in ("transfer", *META_LEARNERS)}
    shown = [n for n in ("shared-task-baseline", best_scratch(results), *best.values()) if n in results]
    main = folder if (folder / "shared-task-baseline.json").is_file() else folder.parent
    extra, published, published_line = published_columns(_published(main), languages)
    headers = [results[n]["label"] for n in shown] + extra
    lines += ["", "Per language, accuracy % (mean Levenshtein distance), the baselines and the best run of "
              "each kind:", "", "| language | " + " | ".join(headers) + " |",
              "| --- |" + " --- |" * len(headers)]
    for lang in languages:
        cells = [f"{results[n]['languages'][lang]['accuracy']:.1f} "
                 f"({results[n]['languages'][lang]['levenshtein']:.2f})" for n in shown]
        lines.append(f"| {lang} | " + " | ".join(cells + published.get(lang, [])) + " |")
    if published_line:
        lines += ["", published_line]
    lines += ["", "Paired differences in accuracy (points; mean over the languages and its 95% CI, "
              "Student's t) of each meta-learner against the issue's three baselines and against the "
              "pre-training it started from:", ""]
    for name in [n for n, r in results.items() if r.get("algo") in META_LEARNERS]:
        for other in _seq2seq_against(name, results):
            a = [results[name]["languages"][lang]["accuracy"] for lang in languages]
            b = [results[other]["languages"][lang]["accuracy"] for lang in languages]
            diff, half = paired_difference(a, b)
            verdict = "excludes 0" if abs(diff) > half else "includes 0"
            lines.append(f"- {results[name]['label']} - {results[other]['label']}: {diff:+.2f} +/- "
                         f"{half:.2f} ({verdict})")
    lines += _seed_means(results, languages)
    machines = sorted({r["machine"] for r in results.values() if "machine" in r})
    commands = sorted({f"`{r['command']}`" for r in results.values() if "machine" in r})
    if (folder / "shared-task-baseline.json").is_file():
        lines += ["", decoding_line(folder.parents[2] / "benchmarks" / "results" / "bench_decode.json")]
    baseline = results.get("shared-task-baseline")
    return "\n".join([*lines, "", f"Machine: {'; '.join(machines) or '-'}.", "", "Commands:", "",
                       *(f"- {c}" for c in commands),
                       f"- shared-task baseline: `{baseline['command']}`" if baseline else ""])
