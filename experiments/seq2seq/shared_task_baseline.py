"""Run the CoNLL-SIGMORPHON 2018 task 1 baseline, unmodified, on our 20 held-out languages (low setting).

The shared task's non-neural baseline (``baseline/baseline.py``, prefix/suffix rules from Levenshtein
alignments, by Mans Hulden) trains on ``<PATH><lang>-train-<quantity>`` and predicts
``<PATH><lang>-dev``. To make it predict the TEST set, this script builds a temporary folder holding,
for each language of the "test" key of ``src/attnmeta/data/splits/sigmorphon2018.json``, a copy of
``<lang>-train-low`` and, under the name ``<lang>-dev``, a copy of the official ``<lang>-test`` file.
Only these 20 languages and only the low files are there, so the baseline runs exactly our setting.
It is run by path with ``-o -p <tmpdir>/``, from its own folder; its outputs ``<lang>-low-out`` are
scored against the gold test files by the official scorer ``baseline/evalm.py`` (task 1: exact-match
accuracy in % and mean Levenshtein distance, both rounded to 2 decimals by the scorer).

The baseline is Python 2 code (``xrange``, ``string.lstrip``, ``dict.iteritems``), so it needs a
Python 2 interpreter (``--python2``); the scorer needs numpy and runs under this script's Python.
With no medium/high files, the baseline's final summary divides by zero (``Average[medium]``) AFTER
writing every output file; this exit status and its stderr are recorded, and a language is scored
only if its output file is complete (one line per test line).

    .venv/bin/python experiments/seq2seq/shared_task_baseline.py
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "text" / "sigmorphon2018"
SPLIT_FILE = ROOT / "src/attnmeta/data/splits/sigmorphon2018.json"
OUT_JSON = ROOT / "docs/results/seq2seq/shared-task-baseline.json"


def find_python2() -> str:
    """A working Python 2 interpreter: ``python2`` on PATH, else one installed by pyenv."""
    candidates = [shutil.which("python2") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.*/bin/python2")))
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[0])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.strip() == b"2":
            return exe
    raise SystemExit("no Python 2 interpreter found; pass --python2")


def score(gold: Path, guess: Path) -> dict[str, float]:
    """Official task 1 scores of one language, parsed from evalm.py's output."""
    cmd = [sys.executable, "evalm.py", "--gold", str(gold), "--guess", str(guess), "--task", "1"]
    out = subprocess.run(cmd, cwd=DATA / "baseline", capture_output=True, text=True, check=True).stdout
    # evalm prints "acccuracy:\t<x>\nlevenshtein:\t<y>" (sic, three c's)
    values = dict(line.split(":\t") for line in out.strip().splitlines())
    return {"accuracy": float(values["acccuracy"]), "levenshtein": float(values["levenshtein"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python2", default=None, help="Python 2 interpreter for baseline.py")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    python2 = args.python2 or find_python2()

    split = json.loads(SPLIT_FILE.read_text())
    langs: list[str] = split["test"]
    assert len(langs) == 20 == len(set(langs)), langs
    assert not set(langs) & (set(split["train"]) | set(split["val"])), "test overlaps train/val"
    all_dir = DATA / "task1/all"

    wall0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="sigmorphon-baseline-") as tmp:
        for lang in langs:
            shutil.copyfile(all_dir / f"{lang}-train-low", Path(tmp) / f"{lang}-train-low")
            shutil.copyfile(all_dir / f"{lang}-test", Path(tmp) / f"{lang}-dev")  # so it predicts test
        cmd = [python2, "baseline.py", "-o", "-p", f"{tmp}/"]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, cwd=DATA / "baseline", capture_output=True, text=True)
        baseline_wall = time.perf_counter() - t0
        for lang in langs:
            gold, guess = all_dir / f"{lang}-test", Path(tmp) / f"{lang}-low-out"
            n_gold = len(gold.read_text(encoding="utf-8").splitlines())
            if not guess.exists():
                results[lang] = {"error": f"no output file (baseline exit {run.returncode})"}
            elif len(guess.read_text(encoding="utf-8").splitlines()) != n_gold:
                results[lang] = {"error": f"incomplete output file (baseline exit {run.returncode})"}
            else:
                results[lang] = {**score(gold, guess), "n_test": n_gold}
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - wall0
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    scored = [r for r in results.values() if "accuracy" in r]
    # the baseline prints its own exact-match accuracy, "<lang>[task 1/low]: 0.59", truncated to 7 characters
    own_lines = [ln for ln in run.stdout.splitlines() if "/low]: " in ln]
    own = {ln.split("[")[0]: 100 * float(ln.split(": ")[1]) for ln in own_lines}
    agrees = all(abs(own[k] - float(r["accuracy"])) < 0.01 for k, r in results.items() if "accuracy" in r)
    report = {
        "setting": "low",
        "split_file": str(SPLIT_FILE.relative_to(ROOT)),
        "command": "python experiments/seq2seq/shared_task_baseline.py (runs: cd DATA/text/sigmorphon2018/"
        "baseline && python2 baseline.py -o -p TMP/, TMP holding the 20 test languages' <lang>-train-low "
        "and <lang>-dev = a copy of <lang>-test)",
        "python2": subprocess.run([python2, "--version"], capture_output=True, text=True).stderr.strip(),
        "scorer": "baseline/evalm.py",
        "eval_set": "official <lang>-test (1000 lines each), via evalm.py --task 1",
        "notes": "baseline.py is Python 2 only (under python3 it stops at xrange: NameError); it ran under "
        "Python 2. With only low files present its final summary line divides by zero (Average[medium]), "
        "so it exits 1 AFTER writing every <lang>-low-out; outputs were checked complete (one line per test "
        "line) before scoring.",
        "baseline_exit_code": run.returncode,
        "baseline_stderr_tail": run.stderr.strip().splitlines()[-1:] if run.returncode else [],
        "baseline_stdout": run.stdout.strip().splitlines(),
        "baseline_own_accuracy_agrees_with_evalm": agrees,
        "languages": results,
        "n_scored": len(scored),
        "mean_accuracy": round(sum(float(r["accuracy"]) for r in scored) / len(scored), 2),
        "mean_levenshtein": round(sum(float(r["levenshtein"]) for r in scored) / len(scored), 3),
        "seconds": {
            "wall_total": round(wall, 2),
            "cpu_total_children": round(cpu, 2),
            "baseline_wall": round(baseline_wall, 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    for lang, r in results.items():
        print(f"{lang:12s} {r}")
    print(f"mean accuracy {report['mean_accuracy']}  mean levenshtein {report['mean_levenshtein']}")
    print(f"seconds {report['seconds']}  baseline exit {run.returncode}  -> {args.out}")


if __name__ == "__main__":
    main()
