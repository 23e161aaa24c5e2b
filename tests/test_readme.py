"""The README stays true: its commands run as written, its results table is generated, it stays short.

Every line of the README's ```bash blocks is one of:

* a setup command (``python -m venv ...``, ``pip ...``, ``python -m pytest``): checked against ``.ci/run``,
  which must run the same install and test commands, not run here;
* a long command, marked by a trailing comment that contains ``(minutes)``: parsed by the real argument
  parsers (``attnmeta.cli.build_parser``, ``attnmeta.compare.main`` with training stubbed out), and every
  repository path it names must exist;
* anything else: run as written, in order, in a scratch folder, and it must exit 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LONG = "(minutes)"
SETUP_PREFIXES = ("python -m venv", "pip ", "python -m pytest")
INSTALL = 'pip install torch==2.13.0 -e ".[dev]"'


def _gen_results():
    spec = importlib.util.spec_from_file_location("gen_results", ROOT / "docs" / "gen_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_commands() -> list[tuple[str, str]]:
    """``(command, comment)`` for every command line of the README's bash blocks (continuations joined)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            command, _, comment = line.partition("  #")
            commands.append((command.strip(), comment.strip()))
    return commands


def _attnmeta_args(command: str) -> list[str] | None:
    """The arguments after ``attnmeta`` (or ``torchrun ... -m attnmeta``), or None for other commands."""
    words = shlex.split(command)
    if words[0] == "attnmeta":
        return words[1:]
    if words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "attnmeta":
        return words[words.index("-m") + 2:]
    return None


def _check_repo_paths(args: list[str]) -> None:
    for arg in args:
        if arg.startswith(("examples/", "docs/", "src/", "benchmarks/", "experiments/")):
            assert (ROOT / arg).exists(), f"the README names {arg}, which does not exist"


def _parse(args: list[str], monkeypatch) -> None:
    """Parse ``attnmeta ARGS`` as the CLI would, without running it."""
    if args[0] == "compare":
        import attnmeta.compare as compare

        seen = {}
        monkeypatch.setattr(compare, "compare", lambda *a, **k: seen.setdefault("call", (a, k)))
        assert compare.main(args[1:]) == 0
        assert seen, "attnmeta compare did not reach compare()"
        return
    from attnmeta.cli import build_parser

    namespace = build_parser().parse_args([a for a in args if a != "--debug"])
    assert namespace.command == args[0]
    train_config = getattr(importlib.import_module("attnmeta.cli"), "_train_config", None)
    if args[0] == "train" and not namespace.resume and train_config is not None:
        train_config(namespace)  # every setting validated as `attnmeta train` does before it starts


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    long_lines = [i + 1 for i, line in enumerate(lines) if len(line) > 300]
    assert not long_lines, f"README lines over 300 characters: {long_lines}"


def test_readme_names_every_built_in_learner():
    from attnmeta.learners import registry

    builtin = [n for n in registry.available()
               if registry.spec(n).builder.__module__.startswith("attnmeta.learners.")]
    text = README.read_text(encoding="utf-8")
    start = text.index("`attnmeta.learners.available()` lists them:")
    listed = text[start:text.index("## Command-line tour")]
    assert sorted(re.findall(r"`([a-z0-9+-]+)`", listed)) == sorted(builtin)


def test_ci_runs_the_readme_install_and_test_commands():
    commands = [c for c, _ in readme_commands()]
    assert any(INSTALL in c for c in commands), f"the README must install with: {INSTALL}"
    assert "python -m pytest" in commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert INSTALL in ci.replace("pip install --quiet", "pip install")
    assert "python -m pytest" in ci


def test_readme_results_table_is_generated():
    stale = _gen_results().generate(ROOT, check=True)
    assert not stale, f"out of date: {[str(p) for p in stale]}; run `python docs/gen_results.py`"


def test_readme_long_commands_parse(monkeypatch):
    long = [c for c, comment in readme_commands() if LONG in comment]
    assert long, "the README marks no long command; the tour should show at least the main job"
    for command in long:
        args = _attnmeta_args(command)
        assert args is not None, f"a long README command that is not attnmeta: {command}"
        _check_repo_paths(args)
        _parse(args, monkeypatch)


def test_readme_cheap_commands_run(tmp_path):
    cheap = [
        c for c, comment in readme_commands()
        if LONG not in comment and not c.startswith(SETUP_PREFIXES)
    ]
    assert cheap, "the README has no command that runs in seconds"
    for name in ("examples", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    for command in cheap:
        args = _attnmeta_args(command)
        assert args is not None, f"a README command the test does not know how to run: {command}"
        _check_repo_paths(args)
        result = subprocess.run([sys.executable, "-m", "attnmeta", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        output = f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert result.returncode == 0, f"`{command}` failed:\n{output}"


# -- the results generator, on a fixture -----------------------------------------------------------
def _summary(**changes):
    row = {
        "recipe": "protonet-omniglot-5w1s", "benchmark": "omniglot", "algo": "protonet", "ways": 5,
        "shots": 1, "test": {"metric": "accuracy", "mean": 0.98812, "ci95": 0.00204, "n": 600},
        "train_seconds": 1234.5, "cpu_seconds": 2400.0, "device": "cpu", "machine": "2-core CPU",
        "paper": {"value": 98.8, "source": "Snell et al. 2017"},
        "command": "attnmeta train --recipe protonet-omniglot-5w1s",
    }
    row.update(changes)
    return row


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text(
        "# x\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\nafter\n", encoding="utf-8"
    )
    return tmp_path


def test_generator_without_results(fake_repo):
    gen = _gen_results()
    assert len(gen.generate(fake_repo)) == 2
    readme = (fake_repo / "README.md").read_text(encoding="utf-8")
    assert gen.EMPTY in readme and "old table" not in readme and readme.endswith("after\n")
    assert gen.EMPTY in (fake_repo / "docs" / "results.md").read_text(encoding="utf-8")
    assert gen.generate(fake_repo, check=True) == []


def test_generator_tables(fake_repo):
    gen = _gen_results()
    results = fake_repo / "results"
    (results / "protonet-omniglot-5w1s.json").write_text(json.dumps(_summary()))
    (results / "maml-sinusoid.json").write_text(json.dumps(_summary(
        recipe="maml-sinusoid", benchmark="sinusoid", algo="maml", ways=None, shots=10,
        test={"metric": "mse", "mean": 0.58321, "ci95": 0.06612, "n": 600}, train_seconds=53.2,
        cpu_seconds=None, paper=None, command="attnmeta train --recipe maml-sinusoid")))
    # where `attnmeta recipes record` writes
    packaged = fake_repo / "src" / "attnmeta" / "train" / "recipes" / "results"
    packaged.mkdir(parents=True)
    (packaged / "matching-omniglot-5w1s.json").write_text(json.dumps(_summary(
        recipe="matching-omniglot-5w1s", algo="matching", paper={"value": 0.981, "source": "Vinyals"},
        steps=1200, seed=0)))  # extra keys are ignored
    assert gen.generate(fake_repo, check=True)  # stale before generating
    gen.generate(fake_repo)
    assert gen.generate(fake_repo, check=True) == []
    readme = (fake_repo / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(gen.START):readme.index(gen.END)]
    assert "| omniglot | 5-way 1-shot | protonet | 98.81 ± 0.20% | 98.80% (Snell et al. 2017) |" in table
    assert "98.10% (Vinyals)" in table  # a paper value given as a fraction
    assert "| sinusoid | 10-shot | maml | MSE 0.5832 ± 0.0661 | – | 53 s on cpu | `maml-sinusoid` |" in table
    assert table.index("| omniglot") < table.index("| sinusoid")  # sorted by benchmark
    page = (fake_repo / "docs" / "results.md").read_text(encoding="utf-8")
    assert page.count("\n## ") == 2 and "## omniglot" in page and "## sinusoid" in page
    assert "20.6 min / 40.0 min" in page and "53 s / –" in page
    assert "`attnmeta train --recipe maml-sinusoid`" in page


def test_generator_rejects_bad_files(fake_repo):
    gen = _gen_results()
    packaged = fake_repo / "src" / "attnmeta" / "train" / "recipes" / "results"
    packaged.mkdir(parents=True)
    for folder in (packaged, fake_repo / "results"):
        (folder / "twice.json").write_text(json.dumps(_summary(recipe="twice")))
    with pytest.raises(gen.ResultsError, match="also recorded"):
        gen.generate(fake_repo)
    (packaged / "twice.json").unlink()
    (fake_repo / "results" / "twice.json").unlink()
    (fake_repo / "results" / "bad.json").write_text(json.dumps({"recipe": "bad"}))
    with pytest.raises(gen.ResultsError, match="bad.json: missing"):
        gen.generate(fake_repo)
    (fake_repo / "results" / "bad.json").write_text(json.dumps(_summary(test={
        "metric": "f1", "mean": 0.5, "ci95": 0.1, "n": 10})))
    with pytest.raises(gen.ResultsError, match="accuracy"):
        gen.generate(fake_repo)
    (fake_repo / "README.md").write_text("no markers\n")
    (fake_repo / "results" / "bad.json").unlink()
    with pytest.raises(gen.ResultsError, match="results:start"):
        gen.generate(fake_repo)


def _gen_seq2seq():
    spec = importlib.util.spec_from_file_location("gen_seq2seq", ROOT / "docs" / "gen_seq2seq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _language_row(label, algo, accuracies, **extra):
    languages = {lang: {"accuracy": a, "levenshtein": 1.0} for lang, a in zip(("x", "y", "z"), accuracies)}
    return {"label": label, "algo": algo, "languages": languages, "machine": "cpu",
            "command": f"train {label}", **extra}


def test_seq2seq_tables_compare_with_the_baselines_and_keep_history_apart(tmp_path):
    gen = _gen_seq2seq()
    main = tmp_path / "docs" / "results" / "seq2seq"
    history = main / "history"
    history.mkdir(parents=True)
    baseline = {"languages": _language_row("b", None, (10, 20, 30))["languages"], "command": "baseline.py"}
    rows = {main / "shared-task-baseline.json": baseline,
            main / "scratch.json": _language_row("scratch", "scratch", (1, 2, 3)),
            main / "pretrain.json": _language_row("pre", "transfer", (10, 20, 31)),
            main / "transfer.json": _language_row("tr", "transfer", (12, 22, 32)),
            main / "maml.json": _language_row("ml", "maml", (13, 23, 34)),
            history / "maml.json": _language_row("old", "maml", (5, 6, 7))}
    for path, row in rows.items():
        path.write_text(json.dumps(row))
    table = gen.seq2seq_table(main)
    assert "| ml | 23.33 | 1.000 | - |" in table
    assert "- ml - tr: +1.33 +/- 1.43 (includes 0)" in table and "- ml - pre: +3.00 +/- 0.00" in table
    assert "- ml - scratch: +21.33" in table and "- ml - shared-task baseline: +3.33" in table
    assert "old" not in table and "Decoding throughput" in table
    assert "published baseline 2018" not in table  # no published-low.json: no published columns
    published = {lang: {"baseline": b, "best": b + 30, "best_system": "S", "uzh-01": b + 20}
                 for lang, b in zip(("x", "y", "z"), (9, 21, 30))}
    (main / "published-low.json").write_text(json.dumps({"languages": published}))
    table = gen.seq2seq_table(main)
    assert "| x | 10.0 (1.00) | 1.0 (1.00) | 12.0 (1.00) | 13.0 (1.00) | 9.0 | 39.0 S |" in table
    assert "official baseline 20.00, UZH-01 (the best run on the 103-language average) 40.00" in table
    (main / "published-low.json").write_text(json.dumps({"languages": {"x": published["x"]}}))
    assert "published baseline 2018" not in gen.seq2seq_table(main)  # a language missing: no columns
    old = gen.seq2seq_table(history)  # the baseline and scratch rows come from the main folder
    assert "| shared-task baseline | 20.00 |" in old and "| scratch | 2.00 |" in old
    assert "- old - scratch: +4.00" in old and "| ml |" not in old and "Decoding throughput" not in old
    # another network: its meta-learners are compared with its own best run from scratch
    lstm = {"model": {"architecture": "lstm", "edits": True}}
    (main / "scratch-lstm.json").write_text(json.dumps(_language_row("ls", "scratch", (8, 9, 10), **lstm)))
    (main / "context-lstm.json").write_text(json.dumps(_language_row("lc", "context", (14, 24, 34), **lstm)))
    table = gen.seq2seq_table(main)
    assert "- lc - ls: +15.00" in table and "- lc - scratch:" not in table
    assert "- ml - scratch: +21.33" in table and "- ml - ls:" not in table
    assert "| language | shared-task baseline | ls |" in table  # the best run from scratch of any network
    # repeats with another seed: compared seed with seed, then averaged over the seeds
    repeats = {"c": ("context", (14, 24, 34)), "c-seed-1": ("context", (16, 24, 34)),
               "t": ("transfer", (13, 23, 33)), "t-seed-1": ("transfer", (13, 25, 33))}
    for name, (algo, accuracies) in repeats.items():
        row = _language_row(name.replace("-seed-", "/"), algo, accuracies, start="p", **lstm)
        (main / f"{name}.json").write_text(json.dumps(row))
    table = gen.seq2seq_table(main)
    assert "- c - t: +1.00 +/- 0.00" in table and "- c/1 - t/1: +1.00 +/- 4.97 (includes 0)" in table
    assert "- c - t/1:" not in table and "- c/1 - t:" not in table
    assert "- c - t, each averaged over seeds 0, 1: +1.00 +/- 2.48 (includes 0)" in table
    # a meta-learner from a random start: against pooled training of its network from a random start
    pooled = _language_row("lp", "transfer", (10, 20, 30), **lstm)
    (main / "pretrain-lstm.json").write_text(json.dumps(pooled))
    alone = _language_row("cr", "context", (11, 22, 30), random_start=True, **lstm)
    (main / "context-lstm-random-start.json").write_text(json.dumps(alone))
    comparisons = [line for line in gen.seq2seq_table(main).splitlines() if line.startswith("- cr - ")]
    assert comparisons == ["- cr - shared-task baseline: +1.00 +/- 2.48 (includes 0)",
                           "- cr - ls: +12.00 +/- 21.22 (includes 0)",
                           "- cr - lp: +1.00 +/- 2.48 (includes 0)"]
