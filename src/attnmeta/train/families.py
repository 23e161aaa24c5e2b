"""The task families of ``attnmeta train``: which benchmarks belong to which family, which learners each
family takes, and the one-line refusal of a learner from another family. Each family's lists are kept in
step with its registry by a test."""

from __future__ import annotations

REGRESSION_BENCHMARKS = ("sinusoid", "multimodal")
#: Meta-RL benchmarks and learners (``attnmeta.rl.registry``; kept in step by a test).
RL_BENCHMARKS = ("navigation", "halfcheetah-dir", "halfcheetah-vel")
RL_ALGOS = ("maml-rl", "snail-rl")
#: Few-shot detection benchmarks and detectors (``attnmeta.data.detection_benchmarks``,
#: ``attnmeta.learners.detection.registry``; kept in step by a test).
DETECTION_BENCHMARKS = ("omniglot-scenes", "coco")
DETECTION_ALGOS = ("attention-detector", "protonet-windows", "template-matching", "transfer-detector",
                  "prototype-detector")
#: Few-shot sequence-to-sequence benchmarks and learners (``attnmeta.data.seq2seq_benchmarks``,
#: ``attnmeta.learners.seq2seq.registry``; kept in step by a test). ``maml``, ``reptile`` and ``transfer``
#: also name classification learners: the benchmark decides which one a run builds.
SEQ2SEQ_BENCHMARKS = ("sigmorphon2018", "parallel")
SEQ2SEQ_ALGOS = ("maml", "reptile", "context", "transfer", "scratch")


def task_type_of(benchmark: str) -> str:
    """``"rl"``, ``"detection"``, ``"seq2seq"``, ``"regression"`` or ``"classification"``."""
    if benchmark in RL_BENCHMARKS:
        return "rl"
    if benchmark in DETECTION_BENCHMARKS:
        return "detection"
    if benchmark in SEQ2SEQ_BENCHMARKS:
        return "seq2seq"
    return "regression" if benchmark in REGRESSION_BENCHMARKS else "classification"


def check_family(benchmark: str, algo: str, task_type: str) -> None:
    """Meta-RL benchmarks take meta-RL learners, detection benchmarks detectors, sequence benchmarks
    sequence learners, the others none of these."""
    if task_type == "seq2seq" and algo not in SEQ2SEQ_ALGOS:
        raise ValueError(f"benchmark {benchmark!r} is sequence-to-sequence: choose --algo "
                         f"{', '.join(SEQ2SEQ_ALGOS)} (not {algo!r})")
    if task_type != "seq2seq" and algo == "scratch":
        raise ValueError(f"learner 'scratch' is for the sequence-to-sequence benchmarks "
                         f"({', '.join(SEQ2SEQ_BENCHMARKS)}), not {benchmark!r}; choose another --algo or "
                         "benchmark")
    for family, algos, benchmarks in (("rl", RL_ALGOS, RL_BENCHMARKS),
                                      ("detection", DETECTION_ALGOS, DETECTION_BENCHMARKS)):
        kind = "meta-RL" if family == "rl" else "detection"
        if task_type == family and algo not in algos:
            raise ValueError(f"benchmark {benchmark!r} is {kind}: choose --algo {' or '.join(algos)} "
                             f"(not {algo!r})")
        if task_type != family and algo in algos:
            raise ValueError(f"learner {algo!r} is for the {kind} benchmarks ({', '.join(benchmarks)}), "
                             f"not {benchmark!r}; choose another --algo or benchmark")
