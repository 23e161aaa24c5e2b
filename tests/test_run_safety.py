"""Run folders are safe to share and to reuse: loading never executes code, nothing is overwritten or raced.

Each test is one fault a user can meet: a planted ``imports`` entry, a folder that is not a run, two
processes on one run, a damaged ``config.yaml``, a diverging run resumed with a lower rate, a checkpoint that
does not fit, a full disk. Every error is one line (exit status 2 through the CLI) and nothing is lost.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import attnmeta
from attnmeta.cli import main
from attnmeta.errors import UserError, is_user_error
from attnmeta.train import CheckpointError, RunConfig, RunLock, RunLockedError, train
from attnmeta.train.checkpoint import FILES, _sha256, save_checkpoint
from attnmeta.train.run_folder import RunExistsError
from attnmeta.train.trainer import final_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def tiny(run_dir: Path, **changes) -> RunConfig:
    values = dict(benchmark="sinusoid", algo="maml", steps=4, meta_batch=2, eval_every=2, eval_episodes=3,
                  test_episodes=3, checkpoint_every=2, run_dir=str(run_dir), plot=False, threads=1)
    return RunConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("shared") / "run"
    train(tiny(run), quiet=True, print_fn=lambda _: None)
    return run


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


def plant_imports(run: Path, module_file: Path, algo: str | None = None) -> None:
    """What an attacker can do to a shared run: name a module in config.yaml and in every checkpoint's
    state.json, and recompute the manifest so that the checksums match."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["imports"] = [str(module_file)]
    if algo:
        config["algo"] = algo
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for ckpt in (run / "checkpoints").glob("step-*"):
        state = json.loads((ckpt / "state.json").read_text())
        state["config"]["imports"] = [str(module_file)]
        if algo:
            state["config"]["algo"] = algo
        (ckpt / "state.json").write_text(json.dumps(state))
        manifest = json.loads((ckpt / "manifest.json").read_text())
        for name in FILES:
            manifest["files"][name] = {"bytes": (ckpt / name).stat().st_size, "sha256": _sha256(ckpt / name)}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))


def evil_module(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "EXECUTED"
    module = tmp_path / "evil.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return module, marker


def error_lines(err: str) -> str:
    """The CLI's error lines of ``err`` (Python warnings printed on the way, e.g. of a diverging inner loop
    during validation, are not errors)."""
    return "".join(line + "\n" for line in err.splitlines() if line.startswith("attnmeta "))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


# -- no code execution on load --------------------------------------------------------------------------
def test_planted_imports_are_never_executed_by_load_eval_resume_or_predict(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    module, marker = evil_module(tmp_path)
    plant_imports(run, module)
    predictor = attnmeta.load(run)  # the run's own learner is built in: it loads, without the import
    assert predictor.task_type == "regression"
    assert run_cli(["eval", str(run), "--episodes", "2", "--quiet"], capsys)[0] == 0
    assert run_cli(["train", "--resume", str(run), "--steps", "6", "--quiet"], capsys)[0] == 0
    code, err = run_cli(["predict", str(run), "--support", str(tmp_path), "--query", str(tmp_path)], capsys)
    assert code == 2 and "regression run" in err
    assert not marker.exists()


def test_a_run_with_a_custom_learner_asks_for_an_explicit_import(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    module, marker = evil_module(tmp_path)
    plant_imports(run, module, algo="evil-learner")
    expected = (f"the run uses learner 'evil-learner' from '{module}', which attnmeta never imports from a "
                f"run folder or checkpoint; if you trust that code, pass --import {module} (CLI) or "
                f"attnmeta.load(path, imports=['{module}']) (Python)")
    with pytest.raises(UserError) as error:
        attnmeta.load(run)
    assert str(error.value) == expected
    for args in (["eval", str(run)], ["train", "--resume", str(run)],
                 ["predict", str(run), "--support", str(tmp_path), "--query", str(tmp_path)]):
        code, err = run_cli(args, capsys)
        assert (code, err.strip()) == (2, f"attnmeta {args[0]}: error: {expected}")
    assert not marker.exists()


# -- nothing overwritten, nothing raced ---------------------------------------------------------------------
def test_a_folder_that_is_not_a_run_is_refused_and_left_untouched(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "config.yml").write_text("mine")
    (folder / "notes.txt").write_text("mine")
    code, err = run_cli(["train", "sinusoid", "--steps", "2", "--run-dir", str(folder), "--quiet"], capsys)
    assert code == 2
    assert err.strip() == (f"attnmeta train: error: --run-dir '{folder}' is not empty (config.yml, "
                           "notes.txt) and is not an attnmeta run; choose a new or empty folder so that "
                           "nothing in it is overwritten")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yml", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_run_without_checkpoints_is_not_restarted_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tiny(run).to_dict()))
    with pytest.raises(RunExistsError, match=r"already holds a run; continue it with `attnmeta train --resu"):
        train(tiny(run), quiet=True)


def test_a_locked_run_folder_is_refused_naming_the_process(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunLockedError) as error:
            train(tiny(run), quiet=True)
        assert str(error.value) == (f"run folder '{run}' is in use by process {os.getpid()}; wait for it to "
                                    "finish (or stop it), or choose another --run-dir")
        with pytest.raises(RunLockedError):
            train(tiny(run), resume=True, quiet=True)
    assert not (run / "checkpoints").exists()
    train(tiny(run), quiet=True, print_fn=lambda _: None)  # released: the run starts


def test_a_second_process_gets_one_line_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    script = (f"import time; from attnmeta.train import RunLock; RunLock({str(run)!r}).acquire(); "
              "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "attnmeta", "train", "sinusoid", "--run-dir",
                                 str(run)], env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert (second.returncode, second.stderr.strip()) == (
        2, f"attnmeta train: error: run folder '{run}' is in use by process {holder.pid}; wait for it to "
           "finish (or stop it), or choose another --run-dir")
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_kill_9_with_the_lock_held_then_resume_is_bit_identical(tmp_path):
    """Through the CLI, MAML on sinusoid: SIGKILL while the run holds its lock; the kernel drops the lock
    with the process, so ``--resume`` starts at once and ends with the weights of an uninterrupted run."""
    common = ["sinusoid", "--algo", "maml", "--steps", "40", "--meta-batch", "2", "--eval-episodes", "3",
              "--test-episodes", "3", "--set", "checkpoint_every=1", "--set", "plot=false"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", *common, "--run-dir", str(reference), "--quiet"]) == 0
    first = subprocess.Popen([sys.executable, "-m", "attnmeta", "train", *common, "--run-dir", str(run),
                              "--quiet"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert first.poll() is None, "the run ended before the kill"
        time.sleep(0.0005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (run / ".lock").read_text() == str(first.pid)
    resumed = subprocess.run([sys.executable, "-m", "attnmeta", "train", "--resume", str(run), "--quiet"],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(reference), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- config.yaml: atomic, with a fallback -------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "truncated", "yaml-tag"])
def test_resume_and_eval_fall_back_to_the_checkpoint_config(trained_run, tmp_path, capsys, damage):
    run = copy_run(trained_run, tmp_path / "run")
    path = run / "config.yaml"
    if damage == "missing":
        path.unlink()
        problem = f"'{path}' is missing"
    elif damage == "truncated":
        path.write_text(path.read_text()[:25])
        problem = f"'{path}' is not a valid run config"
    else:
        path.write_text("!!python/object/apply:os.system ['touch PWNED']\n")
        problem = f"'{path}' is not plain YAML (line 1)"
    code, err = run_cli(["eval", str(run), "--episodes", "2", "--quiet"], capsys)
    assert code == 0 and f"attnmeta eval: note: {problem}" in err and "using the config saved in" in err
    code, err = run_cli(["train", "--resume", str(run), "--steps", "5", "--quiet"], capsys)
    assert code == 0 and problem in err
    assert yaml.safe_load(path.read_text())["steps"] == 5  # rewritten whole
    assert not Path("PWNED").exists()


def test_config_yaml_is_replaced_atomically(trained_run, tmp_path, monkeypatch):
    from attnmeta.train import run_folder

    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "config.yaml").read_text()

    def crash(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder.yaml, "safe_dump", lambda *a, **k: "steps: 9\n" + "x" * 10)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        run_folder.write_config(run, tiny(run))
    monkeypatch.undo()
    assert (run / "config.yaml").read_text() == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".config")] == []


# -- divergence and safe overrides on resume ----------------------------------------------------------------
NAN_PLUGIN = """
import os
from attnmeta.learners import build, register

@register("maml-nan-at-3", head=True)
def build_nan(model, task_type, ways=None, **options):
    learner = build("maml", model=model, task_type=task_type, ways=ways, **options)
    calls, original = [0], learner.meta_loss

    def meta_loss(batch):
        out, calls[0] = original(batch), calls[0] + 1
        if calls[0] == 3 and not os.environ.get("NO_NAN"):
            out.loss, out.metrics["loss"] = out.loss * float("nan"), float("nan")
        return out

    learner.meta_loss = meta_loss
    return learner
"""

SHORT = ["--set", "checkpoint_every=1", "--set", "eval_every=1", "--set", "eval_episodes=2", "--set",
         "test_episodes=2", "--set", "plot=false", "--quiet"]


def test_divergence_message_is_true(tmp_path, capsys):
    """A rate of 1e6 wrecks the weights at step 1: the message says the newest checkpoint may be heading the
    same way, and resuming from it as suggested diverges again, again in one line, checkpoints unchanged."""
    run = tmp_path / "run"
    code, err = run_cli(["train", "sinusoid", "--steps", "8", "--lr", "1e6", "--run-dir", str(run), *SHORT],
                        capsys)
    err = error_lines(err)
    assert code == 2 and err.count("\n") == 1
    assert ("no update was applied; checkpoints on disk are unchanged; the newest (step 1) had a finite "
            "loss, but its weights may already be heading the same way") in err
    suggestion = err.split("`")[1]
    assert suggestion == f"attnmeta train --resume {run} --lr 100000"
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, err = run_cli([*suggestion.split()[1:], "--quiet"], capsys)
    err = error_lines(err)
    assert code == 2 and err.count("\n") == 1 and "became nan at step 2" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == saved


def test_resume_with_a_lower_rate_continues_and_is_recorded(tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    run = tmp_path / "run"
    code, err = run_cli(["train", "sinusoid", "--algo", "maml-nan-at-3", "--import", str(plugin), "--steps",
                         "6", "--run-dir", str(run), *SHORT], capsys)
    assert code == 2 and "became nan at step 3" in err
    suggestion = err.split("`")[1].split()[1:]
    monkeypatch.setenv("NO_NAN", "1")
    assert run_cli([*suggestion, "--import", str(plugin), "--quiet"], capsys)[0] == 0
    history = (run / "history.log").read_text().splitlines()
    assert history[0].endswith("start: maml-nan-at-3 on sinusoid, 6 steps")
    assert history[1].endswith("resume with lr=0.0003")
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 3e-4


@pytest.mark.parametrize(("flags", "refused"), [
    (["--ways", "3"], "ways"), (["--algo", "anil"], "algo"),
    (["--set", "algo_options.inner_lr=1"], "algo_options.inner_lr")])
def test_resume_refuses_changes_that_redefine_the_run(trained_run, tmp_path, capsys, flags, refused):
    run = copy_run(trained_run, tmp_path / "run")
    code, err = run_cli(["train", "--resume", str(run), *flags], capsys)
    assert code == 2
    assert err.startswith(f"attnmeta train: error: --resume continues the run as it was defined; it cannot "
                          f"change {refused} (a resume may change steps, lr, schedule,")


def test_resume_past_the_end_needs_more_steps(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    code, err = run_cli(["train", "--resume", str(run), "--steps", "2", "--quiet"], capsys)
    assert code == 2 and "is at step 4, past the run's 2 steps; resume with --steps 5 or more" in err


# -- checkpoints that do not load ---------------------------------------------------------------------------
def test_a_checkpoint_of_another_model_is_one_line(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    other = tmp_path / "other"
    train(tiny(other, algo="meta-sgd"), quiet=True, print_fn=lambda _: None)
    for step in ("step-00000004",):
        import shutil

        shutil.rmtree(run / "checkpoints" / step)
        shutil.copytree(other / "checkpoints" / step, run / "checkpoints" / step)
    code, err = run_cli(["eval", str(run), "--checkpoint", "latest", "--quiet"], capsys)
    assert code == 2
    assert f"checkpoint '{run / 'checkpoints' / 'step-00000004'}' does not fit this model: " in err
    assert "does not fit this model: 6 unexpected (first 'rule.lrs.head:bias') tensors; it was trained" in err
    assert "trained with another algorithm, backbone or number of ways" in err


@pytest.mark.parametrize("damage", ["safetensors", "missing-tensor"])
def test_damaged_files_behind_a_matching_manifest_are_one_line(trained_run, tmp_path, damage):
    run = copy_run(trained_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000004"
    if damage == "safetensors":
        (ckpt / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}{}")
        expected = "holds a malformed safetensors file"
    else:
        state = json.loads((ckpt / "state.json").read_text())
        state["optimizer"] = {"__tensor__": "t999"}
        (ckpt / "state.json").write_text(json.dumps(state))
        expected = "has a damaged state.json (no tensor 't999')"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in FILES:
        manifest["files"][name] = {"bytes": (ckpt / name).stat().st_size, "sha256": _sha256(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        attnmeta.load(ckpt)


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones(tmp_path, monkeypatch):
    from attnmeta.train import checkpoint

    good = save_checkpoint(tmp_path / "ckpts" / "step-00000001", {"w": torch.ones(2)}, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(tmp_path / "ckpts" / "step-00000002", {"w": torch.ones(2)}, {"step": 2})
    assert str(error.value) == (f"could not write checkpoint '{tmp_path / 'ckpts' / 'step-00000002'}': No "
                                "space left on device; the earlier checkpoints are intact (free space or fix "
                                "the folder, then continue with --resume)")
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step-00000001"]
    assert good.is_dir()


def test_eval_checks_the_run_folder_is_writable_before_evaluating(trained_run, tmp_path, capsys, monkeypatch):
    from attnmeta.train import checkpoint

    run = copy_run(trained_run, tmp_path / "run")
    real_write = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.parent == run:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a: pytest.fail("evaluated before checking"))
    code, err = run_cli(["eval", str(run), "--quiet"], capsys)
    assert (code, err.strip()) == (2, f"attnmeta eval: error: cannot write the evaluation results in "
                                      f"'{run}' (Read-only file system); make the folder writable or copy "
                                      "the run to a writable place")


# -- the CLI's handler: user errors are one line, bugs keep their traceback --------------------------------
def test_a_bug_keeps_its_traceback_and_debug_shows_every_traceback(monkeypatch, capsys):
    import attnmeta.cli.parser as cli

    def buggy(args):
        return int("not a number")  # a ValueError from a library call, not a deliberate raise

    monkeypatch.setattr(cli, "cmd_plot", buggy)
    with pytest.raises(ValueError, match="invalid literal"):
        main(["plot", "x"])
    with pytest.raises(UserError):
        main(["eval", "no/such/run", "--debug"])


def test_which_errors_are_the_users():
    def deliberate():
        raise ValueError("bad input")

    for error, expected in [(lambda: deliberate(), False), (lambda: int("x"), False),
                            (lambda: RunConfig(lr=-1.0), True), (lambda: open("/no/such/file"), True)]:
        try:
            error()
        except Exception as caught:  # noqa: BLE001
            assert is_user_error(caught) is expected, caught
