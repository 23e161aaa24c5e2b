"""Sequence-to-sequence runs end to end: `attnmeta train parallel`, resume, `attnmeta eval` (per-task table),
`attnmeta predict`, the predictor (`attnmeta.load(run).fit(...).generate(...)`) and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import attnmeta
from attnmeta.cli import main
from attnmeta.errors import UserError
from attnmeta.seq2seq_predictor import FewShotSeq2Seq
from detection_run_helpers import error_of
from seq2seq_fixtures import TINY, affix_pairs, write_affix_tsv

SPLIT = {"val_tasks": ["t9"], "test_tasks": ["t10", "t11"]}


def _train_args(tsv: Path, run_dir: Path, *extra: str, algo: str = "maml") -> list[str]:
    options = [f"--set=algo_options.{k}={json.dumps(v)}" for k, v in TINY.items()]
    if algo in ("maml", "reptile"):
        options.append("--set=algo_options.eval_inner_steps=2")
    return ["train", "parallel", "--root", str(tsv), "--algo", algo, "--shots", "5", "--queries", "5",
            "--meta-batch", "2", "--steps", "4", "--run-dir", str(run_dir), "--quiet",
            "--set", f"benchmark_options={json.dumps(SPLIT)}", "--set", "eval_every=2", "--set", "threads=1",
            *options, *extra]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The affix data set and a 4-step MAML run on it."""
    folder = tmp_path_factory.mktemp("seq2seq")
    tsv = write_affix_tsv(folder / "affix.tsv")
    run_dir = folder / "run"
    assert main(_train_args(tsv, run_dir)) == 0
    return tsv, run_dir


def test_train_writes_a_run_with_per_task_results(files):
    _, run_dir = files
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["benchmark"] == "parallel" and summary["steps"] == 4 and summary["meta_trained"]
    assert list(summary["per_task"]) == ["t10", "t11"]
    assert summary["test"]["metric"] == "accuracy" and summary["test"]["n"] == 2
    assert set(summary["levenshtein"]) >= {"mean", "ci95", "n"}
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["task_type"] == "seq2seq" and run_info["source_format"] == "chars"
    assert run_info["vocabulary"]["spare"] == 96


def test_resume_continues_exactly(files, tmp_path: Path):
    tsv, _ = files
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_train_args(tsv, straight, "--schedule", "constant")) == 0
    assert main(_train_args(tsv, resumed, "--steps", "2", "--schedule", "constant")) == 0
    assert main(["train", "--resume", str(resumed), "--steps", "4", "--quiet"]) == 0
    rows = [(run / "metrics.csv").read_text().splitlines() for run in (straight, resumed)]
    losses = [[line.split(",")[2] for line in r if ",train," in line] for r in rows]
    assert losses[0] == losses[1]


def test_eval_prints_the_per_task_table_and_writes_json(files, capsys):
    _, run_dir = files
    assert main(["eval", str(run_dir), "--beam", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "accuracy", "levenshtein", "queries", "unknown"]
    assert "t10" in out and "average" in out
    result = json.loads((run_dir / "eval-test-2tasks-beam2.json").read_text())
    assert result["beam"] == 2 and list(result["per_task"]) == ["t10", "t11"]


def test_eval_refuses_classification_flags(files, capsys):
    _, run_dir = files
    assert error_of(["eval", str(run_dir), "--ways", "5"], capsys) == (
        2, "attnmeta eval: error: --ways do not apply to sequence-to-sequence runs; use --episodes (test "
           "tasks), --beam, --finetune-steps, --hallucinate, --hallucinated-share, --explore, --ensemble and "
           "--root\n")
    assert error_of(["eval", str(run_dir), "--inner-steps", "3"], capsys) == (
        2, f"attnmeta eval: error: --inner-steps applies to classification and regression runs of the MAML "
           f"family; {run_dir} is a seq2seq run (use --finetune-steps)\n")
    assert error_of(["eval", str(run_dir), "--hallucinate", "-1"], capsys) == (
        2, "attnmeta eval: error: --hallucinate must be >= 0, got -1\n")
    for share in ("1.5", "-0.5"):
        assert error_of(["eval", str(run_dir), "--hallucinated-share", share], capsys) == (
            2, f"attnmeta eval: error: --hallucinated-share must be in [0, 1], got {share}\n")
    assert error_of(["eval", str(run_dir), "--explore", "2"], capsys) == (
        2, "attnmeta eval: error: --explore must be in [0, 1], got 2.0\n")
    assert error_of(["eval", str(run_dir), "--explore", "0.3"], capsys) == (
        2, "attnmeta eval: error: --explore is imitation learning of edit actions: this run was trained "
           "without them (algo_options.edits)\n")
    assert error_of(["eval", str(run_dir), "--ensemble", "0"], capsys) == (
        2, "attnmeta eval: error: --ensemble must be >= 1 (fine-tuned copies per test task), got 0\n")


def test_eval_with_other_test_time_adaptation_writes_its_own_file(files):
    _, run_dir = files
    assert main(["eval", str(run_dir), "--hallucinate", "20", "--finetune-steps", "3", "--quiet"]) == 0
    result = json.loads((run_dir / "eval-test-2tasks-beam1-finetune_steps3-hallucinate20.json").read_text())
    assert result["hallucinate"] == 20 and result["finetune_steps"] == 3 and len(result["per_task"]) == 2
    assert main(["eval", str(run_dir), "--hallucinate", "20", "--finetune-steps", "3", "--hallucinated-share",
                 "0.75", "--quiet"]) == 0
    shared = run_dir / "eval-test-2tasks-beam1-finetune_steps3-hallucinate20-hallucinated_share0.75.json"
    assert json.loads(shared.read_text())["hallucinated_share"] == 0.75


def test_predictor_fits_pairs_and_generates(files):
    _, run_dir = files
    model = attnmeta.load(run_dir)
    assert isinstance(model, FewShotSeq2Seq)
    pairs = affix_pairs(10, 8, seed=5)
    outputs = model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]]).generate(
        [s for s, _ in pairs[5:]] + ["ab€"], beam=2)
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)
    assert model.unknown_ == 1 and model.unknown_symbols_ == ["€"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.generate(["abc"]), "call fit(sources, targets) with the task's pairs before generate()"),
    (lambda m: m.fit(["abc", ""], ["xabc", "x"]), "fit(): source 1 must be a non-empty string, got ''"),
    (lambda m: m.fit(["abc"], ["x", "y"]),
     "fit() needs as many targets as sources (at least one pair); got 1 sources and 2 targets"),
    (lambda m: m.fit(["a" * 20], ["b"]),
     "fit(): a sequence of 20 tokens is longer than the model's limit of 16: 'aaaaaaaaaaaaaaaaaaaa'"),
    (lambda m: m.fit(["abc"], ["xabc"]).generate(["abc"], beam=0), "beam must be an int >= 1, got 0"),
])
def test_predictor_bad_inputs_are_one_line(files, call, message: str):
    model = attnmeta.load(files[1])
    with pytest.raises(attnmeta.errors.UserError) as error:
        call(model)
    assert str(error.value) == message


def test_predict_cli_prints_source_and_generated_target(files, tmp_path: Path, capsys):
    tsv, run_dir = files
    support = tmp_path / "support.tsv"
    support.write_text("".join(f"{s}\t{t}\n" for s, t in affix_pairs(11, 5, seed=3)), encoding="utf-8")
    query = tmp_path / "query.txt"
    query.write_text("abc\n\ncdef\n", encoding="utf-8")
    assert main(["predict", str(run_dir), "--support", str(support), "--query", str(query)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["abc", "cdef"]


@pytest.mark.parametrize(("args", "message"), [
    (["train", "sigmorphon2018", "--algo", "protonet", "--root", "x"],
     "attnmeta train: error: benchmark 'sigmorphon2018' is sequence-to-sequence: choose --algo maml, "
     "reptile, context, transfer, scratch (not 'protonet')\n"),
    (["train", "omniglot", "--algo", "scratch"],
     "attnmeta train: error: learner 'scratch' is for the sequence-to-sequence benchmarks (sigmorphon2018, "
     "parallel), not 'omniglot'; choose another --algo or benchmark\n"),
    (["train", "parallel", "--algo", "maml", "--root", "x.tsv", "--ways", "5"],
     "attnmeta train: error: config key 'ways' is for classification runs; sequence benchmark 'parallel' "
     "does not use it: drop it\n"),
    (["train", "sigmorphon2018", "--algo", "maml"],
     "attnmeta train: error: benchmark sigmorphon2018 needs its data: --root FOLDER (the folder holding "
     "task1/all of the CoNLL-SIGMORPHON 2018 data), or set ATTNMETA_DATA\n"),
])
def test_bad_train_requests_are_one_line(args: list[str], message: str, tmp_path: Path, capsys,
                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ATTNMETA_DATA", raising=False)
    assert error_of([*args, "--run-dir", str(tmp_path / "run")], capsys) == (2, message)
    assert not (tmp_path / "run").exists()


def test_init_from_starts_from_another_runs_weights(files, tmp_path: Path, capsys):
    tsv, pretrained = files
    run_dir = tmp_path / "from-pretrained"
    assert main(_train_args(tsv, run_dir, "--set", f"init_from={pretrained}", "--set",
                            "algo_options.eval_inner_steps=null", algo="reptile")) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    best = json.loads((pretrained / "summary.json").read_text())["best"]["step"]
    assert summary["init_from"]["run"] == str(pretrained) and summary["init_from"]["step"] == best
    other = tmp_path / "other.tsv"
    other.write_text("".join(f"{s}\t{t}\tt{k}\n" for k in range(12) for s, t in
                             [("mnop", "MNOP")] * 12), encoding="utf-8")
    assert error_of(_train_args(other, tmp_path / "refused", "--set", f"init_from={pretrained}"), capsys) == (
        2, f"attnmeta train: error: init_from {str(pretrained)!r} was trained with another vocabulary "
           "(another benchmark or data); start from a run of the same benchmark\n")
    assert error_of(["train", "omniglot", "--set", f"init_from={pretrained}"], capsys) == (
        2, "attnmeta train: error: config key 'init_from' is for the sequence-to-sequence benchmarks "
           "(sigmorphon2018, parallel), not 'omniglot'\n")


def test_the_context_learner_starts_from_a_run_without_a_task_vector_and_predicts(files, tmp_path: Path):
    """``init_from`` a MAML run (no ``task_context``): the model's weights are that run's, the task vector
    starts at zero; the trained run then evaluates and its predictor adapts with the support pairs' vector."""
    tsv, pretrained = files
    run_dir = tmp_path / "context"
    assert main(_train_args(tsv, run_dir, "--set", f"init_from={pretrained}", "--set",
                            "algo_options.task_dim=16", algo="context")) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "context" and summary["steps"] == 4
    assert summary["init_from"]["run"] == str(pretrained)
    model = attnmeta.load(run_dir)
    pairs = affix_pairs(10, 8, seed=5)
    model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]])
    outputs = model.generate([s for s, _ in pairs[5:]])
    assert len(outputs) == 3 and all(isinstance(o, str) for o in outputs)


def test_scratch_trains_nothing_and_tests_once(files, tmp_path: Path):
    tsv, _ = files
    run_dir = tmp_path / "scratch"
    assert main(_train_args(tsv, run_dir, "--set", "algo_options.finetune_steps=3", algo="scratch")) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 0 and not summary["meta_trained"] and summary["best"] is None
    assert list(summary["per_task"]) == ["t10", "t11"]
    assert "val" not in (run_dir / "metrics.csv").read_text()  # nothing to choose: no validation


def test_an_edit_action_run_trains_evaluates_and_predicts(files, tmp_path: Path, capsys):
    """``algo_options.edits``: the model writes edit actions; every command reads and writes its runs."""
    tsv, _ = files
    run_dir = tmp_path / "edits"
    assert main(_train_args(tsv, run_dir, "--set", "algo_options.edits=true")) == 0
    assert list(json.loads((run_dir / "summary.json").read_text())["per_task"]) == ["t10", "t11"]
    assert main(["eval", str(run_dir), "--beam", "2"]) == 0
    assert main(["eval", str(run_dir), "--explore", "0.5", "--finetune-steps", "2", "--quiet"]) == 0
    explored = json.loads((run_dir / "eval-test-2tasks-beam1-finetune_explore0.5-finetune_steps2.json")
                          .read_text())
    assert explored["finetune_explore"] == 0.5 and len(explored["per_task"]) == 2
    assert main(["eval", str(run_dir), "--ensemble", "2", "--finetune-steps", "2", "--quiet"]) == 0
    ensembled = json.loads((run_dir / "eval-test-2tasks-beam1-ensemble2-finetune_steps2.json").read_text())
    assert ensembled["ensemble"] == 2 and len(ensembled["per_task"]) == 2
    model = attnmeta.load(run_dir)
    pairs = affix_pairs(10, 8, seed=5)
    outputs = model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]]).generate(["ab€", "cd"], beam=2)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs) and model.unknown_ == 1
    assert len(model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]], ensemble=2)._params or []) == 2
    with pytest.raises(UserError, match=r"^ensemble must be an int >= 1, got 0$"):
        model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]], ensemble=0)
    query = tmp_path / "query.txt"
    query.write_text("abc\n", encoding="utf-8")
    support = tmp_path / "support.tsv"
    support.write_text("".join(f"{s}\t{t}\n" for s, t in pairs[:5]), encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--support", str(support), "--query", str(query)]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "abc"


def test_an_lstm_run_trains_evaluates_predicts_and_starts_others(files, tmp_path: Path, capsys):
    """``algo_options.architecture=lstm``: the LSTM transducer through every command; a Transformer run
    cannot start from its weights (one line)."""
    tsv, pretrained = files
    lstm = ["--set", "algo_options.edits=true", "--set", "algo_options.architecture=lstm"]
    run_dir = tmp_path / "lstm"
    assert main(_train_args(tsv, run_dir, *lstm, "--set", "algo_options.explore=0.3", algo="transfer")) == 0
    assert list(json.loads((run_dir / "summary.json").read_text())["per_task"]) == ["t10", "t11"]
    assert main(["eval", str(run_dir), "--beam", "2", "--ensemble", "2", "--finetune-steps", "2",
                 "--quiet"]) == 0
    context = tmp_path / "context"
    assert main(_train_args(tsv, context, *lstm, "--set", f"init_from={run_dir}", "--set",
                            "algo_options.task_dim=16", algo="context")) == 0
    model = attnmeta.load(context)
    pairs = affix_pairs(10, 8, seed=5)
    outputs = model.fit([s for s, _ in pairs[:5]], [t for _, t in pairs[:5]]).generate(["ab€", "cd"], beam=2)
    assert "ab€" in outputs[0] and model.unknown_ == 1  # a character never seen, copied all the same
    assert error_of(_train_args(tsv, tmp_path / "refused", "--set", f"init_from={run_dir}"), capsys) == (
        2, f"attnmeta train: error: init_from {str(run_dir)!r} has another model (architecture or size); use "
           "the same architecture, edits, dim, heads, layers, ff_dim and max_length\n")
    refused = _train_args(tsv, tmp_path / "refused", "--set", "algo_options.architecture=lstm")
    assert error_of(refused, capsys) == (
        2, "attnmeta train: error: architecture=lstm is a transducer of edit actions: it needs edits=true\n")
