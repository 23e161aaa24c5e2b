"""Attention-MAML ablation: MAML, +task, +feature, +parameter attention, all three; task selection.

Benchmarks (regression, MLP 1-40-40-1, 1 inner step, inner lr 0.01, Adam 1e-3, meta-batch 10):
  sinusoid K=5/10/20, multimodal (5 kinds, K=10), corrupted sinusoid (30% of training tasks' targets
  replaced by noise, K=10, tested on clean tasks), attentive task selection on the multimodal family
  (target kind "sinusoid": selected vs uniform meta-batches from a pool, tested on that kind), ``param5``
  (sinusoid K=5: MAML and parameter attention, each also with a learned inner rate) and ``param5x5`` (the
  same with 5 inner steps), and ``omniglot`` (5-way 1-shot, Conv-4, first order; needs ../shared/data).
Task attention's look-ahead uses 20 trusted clean tasks of the family (``HELDOUT_TASKS``; never test tasks);
``+task`` weighs tasks with per-task gates (the default), ``+task(softmax)`` with one softmax over the
meta-batch; the softmax variants ``+task(loo)`` (leave-one-out alignment instead of the trusted tasks),
``+task(raw)`` / ``+task(sf)`` (no batch standardisation / scale-free losses) are kept for the README's
analysis (see ``attnmeta.learners.task_attention``).
Every method of a benchmark is tested on the same 600 fixed test tasks (seed 1234); mean +/- 95% CI of the
per-task MSE (Omniglot: accuracy), training CPU seconds (process time, one thread), meta-steps done. A run
stops at ``--steps`` meta-steps or ``--time-budget`` CPU seconds of training, whichever comes first.

    python experiments/attention/attention_ablation.py --steps 5000 --time-budget 300 --jobs 2
    python experiments/attention/attention_ablation.py --only sinusoid5 --steps 200      # quick look
    python experiments/attention/attention_ablation.py --timing-only  # CPU ms per meta-step

Writes ``experiments/attention/results/attention_ablation_run.json`` (``--out``; the runs the research notes
cite are the other ``attention_ablation_*.json`` there) and prints the table.

Every run trains through the library's one trainer (``attnmeta.train.trainer.train``, ``bench=`` the built
regression benchmark; Omniglot via ``attnmeta.compare``): methods are ``attention-maml`` learners from plain
options, or where they need Python objects (task attention's held-out tasks, the selector's targets, the
oracle's task weights) the plugin learner ``attention-ablation`` this script registers (``AblationMAML``; its
runs record ``imports: [this file]``). The plugin records the per-step task weights and the kinds it trained
on; they are read from it after training. The seconds-per-meta-step timings are trainer runs too
(``metrics.csv``'s CPU seconds after the warm-up steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from attnmeta import learners  # noqa: E402
from attnmeta.learners.attention_config import attention_options  # noqa: E402
from attnmeta.learners.attention_maml import AttentionMAML  # noqa: E402
from attnmeta.learners.base import MetaOutput  # noqa: E402
from attnmeta.learners.task_attention import MetaBatchWeighting, TaskSelector  # noqa: E402
from attnmeta.tasks.episode import TaskBatch  # noqa: E402

METHODS = {
    "maml": {},
    "+task": {"task_attention": True},  # per-task gates (the default weighting mode)
    "+task(softmax)": {"task_attention": {"mode": "softmax"}},
    "+task(loo)": {"task_attention": {"mode": "softmax"}, "heldout": False},
    "+task(raw)": {"task_attention": {"standardize": False, "mode": "softmax"}},
    "+task(sf)": {"task_attention": {"standardize": False, "scale_free": True, "mode": "softmax"}},
    "oracle": {},  # plain MAML whose outer loss skips the corrupted tasks (knows info["corrupted"]): a bound
    "+feature": {"feature_attention": True},
    "+feature(context)": {"feature_attention": {"mode": "context"}},
    "+param": {"param_attention": True},
    "+param(lr)": {"param_attention": True, "learn_inner_lr": True},  # attention weights x a learned rate
    "maml(lr)": {"learn_inner_lr": True},  # control for +param(lr): MAML with the same learned rate
    "all three": {"task_attention": True, "feature_attention": True, "param_attention": True},
}
FIVE = ["maml", "+task", "+feature", "+param", "all three"]
BENCHMARKS = {
    "sinusoid5": dict(family="sinusoid", shots=5, methods=FIVE),
    "sinusoid10": dict(family="sinusoid", shots=10, methods=FIVE),
    "sinusoid20": dict(family="sinusoid", shots=20, methods=FIVE),
    "param5": dict(family="sinusoid", shots=5, methods=["maml", "maml(lr)", "+param", "+param(lr)"]),
    "param5x5": dict(family="sinusoid", shots=5, inner_steps=5, methods=["maml", "+param"]),
    "multimodal": dict(family="multimodal", shots=10,
                       methods=["maml", "+task", "+feature", "+feature(context)", "+param", "all three"]),
    "corrupted": dict(family="sinusoid", shots=10, corrupt=0.3,
                      methods=["maml", "+task", "+task(softmax)", "+task(loo)", "+task(raw)", "+task(sf)",
                               "oracle", "all three"]),
    "selection": dict(family="multimodal", shots=10, methods=["uniform", "attentive"],
                      target_kind="sinusoid"),
    "omniglot": dict(family="omniglot", shots=1, methods=FIVE),
}
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
# Omniglot 5-way 1-shot: Conv-4-64, first-order, 1 inner step (inner lr 0.4), meta-batch 4, Adam 1e-3
OMNIGLOT_OPTIONS = {"inner_lr": 0.4, "inner_steps": 1, "first_order": True, "strategy": "loop"}
CONTEXT_LR = 1.0  # CAVIA's inner rate for the context vector
HELDOUT_TASKS = 20  # trusted clean tasks for task attention's look-ahead (learning-to-reweight style)


def make_family(spec: dict, *, seed: int, clean: bool = False, kinds=None):
    from attnmeta.tasks.regression import Multimodal, Sinusoid

    corrupt = 0.0 if clean else spec.get("corrupt", 0.0)
    if spec["family"] == "sinusoid":
        return Sinusoid(shots=spec["shots"], queries=10, corrupt_fraction=corrupt, seed=seed)
    kw = {"kinds": kinds} if kinds else {}
    return Multimodal(shots=spec["shots"], queries=10, corrupt_fraction=corrupt, seed=seed, **kw)


def test_kinds(bench: str) -> tuple[str, ...] | None:
    """The kinds of the benchmark's validation/test tasks (``selection``: its target kind only)."""
    spec = BENCHMARKS[bench]
    return (spec["target_kind"],) if "target_kind" in spec else None


def regression_benchmark(bench: str) -> SimpleNamespace:
    """The built benchmark ``attnmeta.train.trainer.train(bench=...)`` trains on: the (possibly corrupted)
    family (seed 1) for training, clean families for validation (seed 3) and test (seed 2; the fixed test
    tasks depend on ``test_seed`` alone), the MAML sinusoid net MLP 1-40-40-1."""
    spec, kinds = BENCHMARKS[bench], test_kinds(bench)
    return SimpleNamespace(name=f"ablation-{bench}", task_type="regression", train=make_family(spec, seed=1),
                           val=make_family(spec, seed=3, clean=True, kinds=kinds),
                           test=make_family(spec, seed=2, clean=True, kinds=kinds), input_shape=(1,),
                           default_backbone={"name": "mlp", "options": {"hidden": [40, 40]}})


# -- the plugin learner: methods that need Python objects (held-out tasks, selector targets, the oracle) --
PLUGIN = "attention-ablation"


class AblationMAML(AttentionMAML):
    """``AttentionMAML`` whose Python objects come from the ablation's benchmark ``benchmark``, built from
    plain (storable) options:

    * ``task_attention`` (a ``MetaBatchWeighting``) gets ``HELDOUT_TASKS`` trusted clean tasks of the
      family (seed 6, never test tasks) for its look-ahead, unless ``heldout=False`` (leave-one-out);
    * ``task_attention`` with ``kind: selector`` (a ``TaskSelector``) gets the benchmark's target tasks
      (5 tasks of its target kind, seed 99): it selects ``keep`` tasks within each meta-batch;
    * ``oracle=True``: plain MAML whose outer loss weighs each training task by ``1 - corrupted``
      (``task.info["corrupted"]``, known only to this oracle), normalised to sum 1.

    In training it records each step's task weights with the tasks' corruption flags (``weights_log``) and
    the kinds of the tasks it trained on (``trained_kinds``).
    """

    def __init__(self, model: nn.Module, task_type: str = "regression", *, benchmark: str,
                 oracle: bool = False, heldout: bool = True, ways: int | None = None, **options) -> None:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"{PLUGIN}: unknown benchmark {benchmark!r}; choose from {list(BENCHMARKS)}")
        spec = BENCHMARKS[benchmark]
        options = attention_options(options)
        tasks = options.get("task_attention")
        if isinstance(tasks, MetaBatchWeighting) and heldout:
            trusted = make_family(spec, seed=6, clean=True).fixed_tasks(HELDOUT_TASKS, seed=6)
            options["task_attention"] = dataclasses.replace(tasks, heldout=trusted)
        if isinstance(tasks, TaskSelector) and tasks.targets is None:
            tasks.targets = make_family(spec, seed=4, kinds=test_kinds(benchmark)).fixed_tasks(5, seed=99)
        super().__init__(model, task_type, ways=ways, **options)
        self.oracle = bool(oracle)
        self.weights_log: list[tuple[float, bool]] = []
        self.trained_kinds: dict[str, int] = {}

    def meta_loss(self, batch: TaskBatch, task_weights: Tensor | None = None) -> MetaOutput:
        if self.oracle and self.training and task_weights is None:
            clean = torch.tensor([not info.get("corrupted", False) for info in batch.infos],
                                 dtype=batch.query_y.dtype, device=batch.query_y.device)
            clean = clean if clean.sum() > 0 else torch.ones_like(clean)
            task_weights = clean / clean.sum()
        self.last_selected = None
        out = super().meta_loss(batch, task_weights)
        if self.training:
            infos = list(batch.infos)
            if self.last_selected is not None:  # a TaskSelector trained on these tasks of the batch
                infos = [infos[i] for i in self.last_selected.tolist()]
            for info in infos:
                if "kind" in info:
                    self.trained_kinds[info["kind"]] = self.trained_kinds.get(info["kind"], 0) + 1
            if self.last_task_weights is not None:
                self.weights_log += [(float(w), bool(i.get("corrupted", False)))
                                     for w, i in zip(self.last_task_weights, infos)]
        return out


def build_ablation(model: nn.Module, task_type: str = "regression", ways: int | None = None,
                   **options) -> AblationMAML:
    learner = AblationMAML(model, task_type, ways=ways, **options)
    build_ablation.built.append(learner)  # type: ignore[attr-defined]  # read back by run_one
    return learner


build_ablation.built = []  # type: ignore[attr-defined]  # the learners this builder made, newest last
if PLUGIN not in learners.available():  # the script may be imported again (``imports=``, tests)
    learners.register(PLUGIN, head=True, nested=("task_attention", "feature_attention", "param_attention"),
                      description="attention-maml with the ablation's held-out tasks / selector "
                                  "targets / oracle weights (experiments/attention/attention_ablation.py)",
                      )(build_ablation)


def method_options(method: str, bench: str | None, *, inner_lr: float = 0.01,
                   meta_batch: int = 10) -> tuple[str, dict]:
    """``(algo, algo_options)`` of ``method`` on regression benchmark ``bench``: ``attention-maml`` from
    plain options, or the plugin learner where the method needs Python objects (task attention's held-out
    tasks, the selector's targets, the oracle's weights)."""
    flags = dict(METHODS.get(method, {}))
    heldout = flags.pop("heldout", True)
    spec = BENCHMARKS[bench] if bench else {}
    lr = CONTEXT_LR if context_mode(flags) else inner_lr
    options = {"inner_lr": lr, "inner_steps": spec.get("inner_steps", 1), "strategy": "vmap", **flags}
    plugin = {"benchmark": bench}
    if flags.get("task_attention"):
        task = dict(flags["task_attention"]) if isinstance(flags["task_attention"], dict) else {}
        if os.environ.get("ATTN_WEIGHTING_ENTROPY"):
            task["entropy"] = float(os.environ["ATTN_WEIGHTING_ENTROPY"])
        options["task_attention"] = task
        plugin["heldout"] = heldout
    if method == "oracle":
        plugin["oracle"] = True
    if method == "attentive":  # keeps meta_batch tasks of each pool of 10 x meta_batch
        options["task_attention"] = {"kind": "selector", "temperature": 0.02, "uniform_share": 0.1,
                                     "keep": meta_batch}
    plain = not flags.get("task_attention") and method not in ("oracle", "attentive", "uniform")
    if bench is None or plain:
        return "attention-maml", options
    return PLUGIN, {**options, **plugin}


def context_mode(flags: dict) -> bool:
    """Whether ``flags`` adapt only feature attention's context vector (CAVIA's inner rate applies)."""
    feature = flags.get("feature_attention")
    return isinstance(feature, dict) and feature.get("mode") == "context"


def run_omniglot(method: str, steps: int, time_budget: float, episodes: int) -> dict:
    """Omniglot 5w1s (background -> evaluation alphabets) for one method: train through ``attnmeta.train``
    (via ``attnmeta.compare``, no presets: meta-batch 4, Adam 1e-3) for ``time_budget`` CPU seconds (or
    ``steps``), evaluate on ``benchmark.test.fixed_tasks(episodes, seed=0)``."""
    torch.set_num_threads(1)
    from attnmeta.compare import compare

    bench = omniglot_benchmark()
    flags = {k: v for k, v in METHODS[method].items() if k != "heldout"}
    result = compare(bench, ["attention-maml"], ways=5, shots=1, queries=15, steps=steps,
                     budget_seconds=time_budget, meta_batch=4, lr=1e-3, episodes=episodes, eval_seed=0,
                     algo_options={"attention-maml": {**OMNIGLOT_OPTIONS, **flags}}, presets=False,
                     overrides={"device": "cpu"}, print_fn=None)
    row = result.rows[0]
    return {"benchmark": "omniglot", "method": method, "steps": row.train_steps,
            "train_seconds": row.train_cpu_s,
            "seconds_per_step": row.train_cpu_s / max(row.train_steps, 1),
            "mse": None, "accuracy": row.mean, "ci95": row.ci95, "per_task": row.per_episode}


def omniglot_benchmark():
    from attnmeta.data.benchmarks import make_benchmark
    from attnmeta.data.omniglot import Omniglot

    data = tuple(Omniglot(str(OMNIGLOT), background=b) for b in (True, False))
    return make_benchmark("omniglot", ways=5, shots=1, queries=15, data=data)


def train_run(bench, algo: str, options: dict, run_dir: Path, *, steps: int, meta_batch: int,
              time_budget: float | None = None, test_count: int = 600, evaluate_test: bool = True,
              **config):
    """One run of the library's trainer on the built benchmark ``bench`` (Adam 1e-3, one thread, CPU,
    validated and checkpointed only at the end, so the test uses the final weights)."""
    from attnmeta.train.config import RunConfig
    from attnmeta.train.trainer import train

    run = RunConfig(benchmark=bench.name, algo=algo, algo_options=options, meta_batch=meta_batch, steps=steps,
                    optimizer="adam", lr=1e-3, seed=0, device="cpu", threads=1, plot=False,
                    budget_minutes=None if time_budget is None else time_budget / 60, budget_clock="cpu",
                    eval_every=steps, checkpoint_every=steps, eval_episodes=20, test_episodes=test_count,
                    test_seed=1234, run_dir=str(run_dir),
                    imports=[str(Path(__file__).resolve())] if algo == PLUGIN else [], **config)
    return train(run, bench=bench, quiet=True, print_fn=lambda _: None, evaluate_test=evaluate_test)


def run_one(bench: str, method: str, steps: int, time_budget: float, meta_batch: int,
            test_count: int = 600) -> dict:
    """Train ``method`` on ``bench`` with ``attnmeta.train.trainer.train`` and report its test score."""
    torch.set_num_threads(1)
    if bench == "omniglot":
        return run_omniglot(method, steps, time_budget, test_count)
    from attnmeta.train.builders import build_learner
    from attnmeta.train.checkpoint import load_weights
    from attnmeta.train.run import benchmark_parts
    from attnmeta.train.trainer import final_weights

    spec = BENCHMARKS[bench]
    algo, options = method_options(method, bench, meta_batch=meta_batch)
    pool = 10 * meta_batch if method == "attentive" else meta_batch  # the selector keeps meta_batch of them
    parts = regression_benchmark(bench)
    built = learners.spec(PLUGIN).builder.built  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="ablation-") as folder:
        result = train_run(parts, algo, options, Path(folder) / "run", steps=steps, meta_batch=pool,
                           time_budget=time_budget, test_count=test_count)
        trained = built.pop() if algo == PLUGIN else None
        built.clear()
        # the trained weights in a fresh learner of the same config (plot_data records into it)
        learner = build_learner(result.config, benchmark_parts(parts))
        load_weights(learner, final_weights(result.run_dir), result.run_dir)
        built.clear()
    train_seconds = result.summary["train_cpu_seconds"]
    record = {"benchmark": bench, "method": method, "steps": result.steps, "train_seconds": train_seconds,
              "seconds_per_step": train_seconds / max(result.steps, 1), "mse": result.test.mean,
              "ci95": result.test.ci95, "per_task": result.test.per_episode}
    weights_log = trained.weights_log if trained is not None else []
    if weights_log:  # mean weights over the second half of training
        corrupted = [w for w, c in weights_log[len(weights_log) // 2:] if c]
        clean = [w for w, c in weights_log[len(weights_log) // 2:] if not c]
        record["weight_corrupted"] = sum(corrupted) / max(len(corrupted), 1)
        record["weight_clean"] = sum(clean) / max(len(clean), 1)
        record["weight_clean_std"] = float(torch.tensor(clean).std()) if len(clean) > 1 else 0.0
        record["weights_log"] = weights_log[-2000:]
    if bench == "selection" and trained is not None:
        record["selected_kinds"] = trained.trained_kinds
    record["plot_data"] = plot_data(learner, bench, spec)
    return record


def plot_data(learner, bench: str, spec: dict) -> dict:
    """Raw numbers for attnmeta.attention_plots: gates per task, parameter weights per step."""
    data: dict = {}
    probe = make_family(spec, seed=5, clean=True).fixed_tasks(30, seed=7)
    learner.eval()
    if learner.feature_attention:
        learner.model.record = True
        gates, kinds = [], []
        for task in sorted(probe, key=lambda t: t.info["kind"]):
            learner.predict(task)
            gates.append(learner.model.last_gates["layers.0"].reshape(-1).tolist())
            kinds.append(task.info["kind"])
        learner.model.record = False
        data["gates"], data["gate_kinds"] = gates, kinds
    if learner.param_attention:
        learner.strategy = "loop"
        learner.rule.record, learner.rule.history = True, []
        for task in probe:
            learner.adapt_task(task)
        learner.rule.record = False
        names = list(learner.rule.history[0])
        data["param_names"] = names
        data["param_weights"] = [[h[n].item() for n in names] for h in learner.rule.history]
    return data


def seconds_per_step(run_dir: Path, warmup: int) -> float:
    """CPU seconds per training step of a finished run after its first ``warmup`` steps (``metrics.csv``)."""
    from attnmeta.train.trainer import read_metrics

    rows = [r for r in read_metrics(Path(run_dir) / "metrics.csv") if r["phase"] == "train"]
    cpu = {int(r["step"]): float(r["cpu_seconds"]) for r in rows}
    last = max(cpu)
    return (cpu[last] - cpu[warmup]) / (last - warmup)


def timing(meta_batch: int, repeats: int = 20) -> dict:
    """CPU seconds per meta-step (trainer steps after 3 warm-up steps, 1 thread) of feature attention
    adapting everything vs only the context, on the multimodal family."""
    torch.set_num_threads(1)
    out = {}
    for method in ("maml", "+feature", "+feature(context)"):
        for strategy in ("vmap", "loop"):
            algo, options = method_options(method, None)
            options["strategy"] = strategy
            with tempfile.TemporaryDirectory(prefix="ablation-timing-") as folder:
                result = train_run(regression_benchmark("multimodal"), algo, options, Path(folder) / "run",
                                   steps=3 + repeats, meta_batch=meta_batch, evaluate_test=False)
                out[f"{method}/{strategy}"] = seconds_per_step(result.run_dir, 3)
    return out


def timing_omniglot(meta_batch: int = 4, repeats: int = 5) -> dict:
    """CPU seconds per Omniglot 5w1s meta-step (Conv-4-64, loop strategy, 1 inner step of 0.4, 1 thread;
    trainer steps after 1 warm-up step) of MAML, feature attention adapting everything, and feature attention
    adapting only the context vector, first and second order. Empty when the Omniglot archives are absent."""
    if not OMNIGLOT.exists():
        return {}
    torch.set_num_threads(1)
    bench = omniglot_benchmark()
    out = {}
    for method in ("maml", "+feature", "+feature(context)"):
        for first_order in (True, False):
            flags = {k: v for k, v in METHODS[method].items() if k != "heldout"}
            options = {**OMNIGLOT_OPTIONS, "first_order": first_order, **flags}
            if context_mode(flags):
                options["inner_lr"] = CONTEXT_LR
            with tempfile.TemporaryDirectory(prefix="ablation-timing-") as folder:
                result = train_run(bench, "attention-maml", options, Path(folder) / "run", steps=1 + repeats,
                                   meta_batch=meta_batch, evaluate_test=False, ways=5, shots=1, queries=15)
                order = "first" if first_order else "second"
                out[f"{method}/{order}-order"] = seconds_per_step(result.run_dir, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--time-budget", type=float, default=300.0, help="training seconds per run (cap)")
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="*", default=None, help=f"benchmarks among {list(BENCHMARKS)}")
    parser.add_argument("--methods", nargs="*", default=None, help="restrict to these methods")
    parser.add_argument("--weighting-entropy", type=float, default=None,
                        help="entropy weight of task attention's look-ahead objective (default: the "
                             "weighting mode's default, 0.03 for gates, 0.1 for the softmax)")
    parser.add_argument("--no-timing", action="store_true", help="skip the seconds-per-step measurement")
    parser.add_argument("--timing-only", action="store_true",
                        help="only measure seconds per meta-step (regression and Omniglot), then exit")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "attention" / "results" /
                                             "attention_ablation_run.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # read by method_options in the worker processes
    entropy = args.weighting_entropy
    os.environ["ATTN_WEIGHTING_ENTROPY"] = "" if entropy is None else str(entropy)
    if args.timing_only:
        speed = {f"regression (multimodal, meta-batch {args.meta_batch})": timing(args.meta_batch),
                 "omniglot 5w1s (meta-batch 4)": timing_omniglot()}
        for name, rows in speed.items():
            print(name)
            for key, seconds in rows.items():
                print(f"  {key:34s} {seconds * 1000:9.1f} ms per meta-step")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "seconds_per_step": speed}, indent=1))
        return
    benches = args.only or list(BENCHMARKS)
    unknown = [b for b in benches if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    jobs = [(b, m) for b in benches for m in BENCHMARKS[b]["methods"]
            if args.methods is None or m in args.methods]
    jobs.sort(key=lambda j: j[1] not in ("all three", "+feature", "+task"))  # heavy runs first
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        run_args = (args.steps, args.time_budget, args.meta_batch, args.test_tasks)
        futures = {pool.submit(run_one, *job, *run_args): job for job in jobs}
        records = []
        partial = Path(args.out).with_suffix(".partial.jsonl")
        partial.parent.mkdir(parents=True, exist_ok=True)
        for future in as_completed(futures):
            job = futures[future]
            try:
                records.append(future.result())
            except Exception as error:  # keep the other runs
                records.append({"benchmark": job[0], "method": job[1], "error": repr(error)})
            with partial.open("a") as stream:
                stream.write(json.dumps(records[-1]) + "\n")
            print_table({"records": records[-1:]}, header=len(records) == 1)
    speed = {} if args.no_timing else timing(args.meta_batch)
    summary = {"args": vars(args), "wall_seconds": time.time() - started, "timing_seconds_per_step": speed,
               "records": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rounded(summary)))
    print_table(summary)


def rounded(value, digits: int = 5):
    """``value`` with every float rounded to ``digits`` significant digits (per-task results and weight logs
    are thousands of floats; full precision made a results file over 1 MiB)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def print_table(summary: dict, header: bool = True) -> None:
    if header:
        print(f"{'benchmark':<12} {'method':<18} {'test MSE (95% CI)':<22} {'steps':>6} {'train s':>8}  "
              "notes", flush=True)
    for r in summary["records"]:
        if "error" in r:
            print(f"{r['benchmark']:<12} {r['method']:<18} ERROR {r['error']}")
            continue
        extra = ""
        if r.get("weights_log") and any(c for _, c in r["weights_log"]):
            extra = (f"weight corrupted {r['weight_corrupted']:.3f} / clean {r['weight_clean']:.3f} "
                     f"(clean std {r.get('weight_clean_std', float('nan')):.3f})")
        if "selected_kinds" in r:
            extra = " ".join(f"{k}:{v}" for k, v in sorted(r["selected_kinds"].items()))
        score = r["mse"] if r.get("mse") is not None else r["accuracy"]
        print(f"{r['benchmark']:<12} {r['method']:<18} {score:.3f} +/- {r['ci95']:.3f}{'':<6} "
              f"{r['steps']:>6} {r['train_seconds']:>8.0f}  {extra}", flush=True)
    if summary.get("timing_seconds_per_step"):
        print("seconds per meta-step (1 thread):",
              {k: round(v, 4) for k, v in summary["timing_seconds_per_step"].items()})


if __name__ == "__main__":
    main()
