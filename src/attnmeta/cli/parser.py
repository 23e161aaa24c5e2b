"""The ``attnmeta`` argument parser: every command, flag and default in one place."""

from __future__ import annotations

import argparse
import re

from attnmeta.cli.commands import (  # noqa: F401  (TRAIN_FLAGS: re-exported)
    TRAIN_FLAGS,
    cmd_compare,
    cmd_plot,
    cmd_predict,
    cmd_recipes,
    cmd_train,
)
from attnmeta.cli.detection import cmd_detect
from attnmeta.cli.evaluate import cmd_eval

BENCHMARKS = ("sinusoid", "multimodal", "omniglot", "miniimagenet", "clinc150", "imagefolder", "cifar-fs",
              "fc100", "navigation", "halfcheetah-dir", "halfcheetah-vel", "omniglot-scenes", "coco",
              "sigmorphon2018", "parallel", "cub", "aircraft", "flowers", "dtd", "quickdraw",
              "tiered-imagenet")

def parse_budget(text: str) -> float:
    """``20m`` / ``1.5h`` / ``90s`` / ``20`` (minutes) -> minutes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use e.g. 20m, 1.5h or 90s")
    return float(match.group(1)) * {"s": 1 / 60, "m": 1.0, "": 1.0, "h": 60.0}[match.group(2)]


def _learner_names() -> list[str]:
    from attnmeta.learners import available

    return available()


def _rl_learner_names() -> list[str]:
    from attnmeta.train.config import RL_ALGOS

    return list(RL_ALGOS)


def _detector_names() -> list[str]:
    from attnmeta.train.config import DETECTION_ALGOS

    return list(DETECTION_ALGOS)


def _preset_help() -> str:
    """The presets, one line each, for ``attnmeta train --help``."""
    from attnmeta.train.presets import preset_lines

    return "\n\npresets (under anything you set):\n" + "\n".join(f"  {line}" for line in preset_lines())


def _add_import_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnmeta",
        description="Attention-based meta-learning: train, evaluate, plot and use few-shot "
        "learners. Run `attnmeta COMMAND --help` for each command. Errors in your input are one line "
        "(exit status 2); add --debug anywhere to see the traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="meta-train a learner, then evaluate it on the fixed test episodes",
        description="Meta-train a learner on a benchmark, validate on fixed episodes, keep the best "
        "checkpoint, then evaluate it on the fixed test episodes (mean +/- 95% CI). Settings "
        "come from defaults < the preset of (benchmark, learner), or --recipe instead < --config FILE < "
        "flags < --set key=value. Everything is written to the run folder (config.yaml, checkpoints/, "
        "metrics.csv, summary.json, learning_curves.png). Examples: attnmeta train sinusoid; attnmeta train "
        "--recipe omniglot-protonet --root DATA/omniglot. " + _preset_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("benchmark", nargs="?", help=f"one of {', '.join(BENCHMARKS)} (default sinusoid), or "
                   "multi:NAME,NAME,... for multi-domain episodes over several image benchmarks (variable "
                   "ways and shots; docs/guides/own-data.md)")
    t.add_argument("--recipe", help="start from a named recipe (`attnmeta recipes` lists them); --config, "
                   "flags and --set apply on top")
    t.add_argument("--algo", help=f"learner: {', '.join(_learner_names())} (default maml); meta-RL "
                   f"(navigation, halfcheetah-*): {', '.join(_rl_learner_names())} (default maml-rl); "
                   f"detection (omniglot-scenes, coco): {', '.join(_detector_names())} (default "
                   "prototype-detector); sequence-to-sequence (sigmorphon2018, parallel): maml, reptile, "
                   "transfer, scratch (default maml)")
    t.add_argument("--ways", type=int, help="N classes per task (classification; default 5)")
    t.add_argument("--shots", type=int, help="K support examples per class (regression: per task)")
    t.add_argument("--queries", type=int, help="query examples per class (regression: per task)")
    t.add_argument("--train-ways", type=int,
                   help="N of the training episodes only (default --ways; e.g. 60 for ProtoNets tested "
                        "5-way)")
    t.add_argument("--train-shots", type=int, help="K of the training episodes only (default --shots)")
    t.add_argument("--train-queries", type=int,
                   help="queries of the training episodes only (default --queries)")
    t.add_argument("--meta-batch", type=int, help="tasks per outer step (meta-RL: per TRPO/PPO iteration)")
    t.add_argument("--steps", type=int, help="outer steps")
    t.add_argument("--lr", type=float, help="outer learning rate")
    t.add_argument("--weight-decay", type=float, help="weight decay (decoupled with --optimizer adamw)")
    t.add_argument("--optimizer", help="adam, adamw (decoupled weight decay) or sgd")
    t.add_argument("--schedule", help="constant, cosine or step")
    t.add_argument("--backbone", help="conv4, resnet12 or mlp (default: the benchmark's)")
    t.add_argument("--root", help="data folder (default: $ATTNMETA_DATA/<omniglot|miniimagenet|cifar100|"
                   "text/clinc150> when ATTNMETA_DATA is set); cifar-fs, fc100: the folder of "
                   "cifar-100-binary/ or cifar-100-binary.tar.gz; imagefolder: your folder of class folders "
                   "of images (class split: --set benchmark_options.split_file=SPLIT.json); cub, aircraft, "
                   "flowers, dtd: the folder of the extracted release or its archive; quickdraw: the folder "
                   "of the <class>.npy numpy bitmaps; tiered-imagenet: the ImageNet folder holding "
                   "train/<wnid>/*.JPEG")
    t.add_argument("--download", action="store_const", const=True,
                   help="download the official archives (checksum-verified) into --root if missing "
                   "(Omniglot, CIFAR-100 for cifar-fs and fc100, cub, flowers, dtd)")
    t.add_argument("--budget", type=parse_budget, metavar="TIME",
                   help="stop after this much training time, e.g. 20m, 1.5h, 90s (CPU time unless "
                   "--budget-clock wall); the cosine schedule ends at the budget")
    t.add_argument("--budget-clock", help="cpu (process CPU time, default) or wall")
    t.add_argument("--shift", type=int, metavar="PIXELS",
                   help="augment training images by random shifts of up to PIXELS (RandomShift)")
    t.add_argument("--rotation-ensemble", action="store_const", const=True,
                   help="validate and test with the four rotations of each task (not the papers' protocol)")
    t.add_argument("--ema", type=float, metavar="DECAY",
                   help="validate, test and save an exponential moving average of the weights (e.g. 0.995)")
    t.add_argument("--split", help="benchmark split name")
    t.add_argument("--image-size", type=int, help="image side in pixels")
    t.add_argument("--eval-every", type=int, help="validate every this many steps")
    t.add_argument("--eval-episodes", type=int, help="fixed validation episodes")
    t.add_argument("--test-episodes", type=int, help="fixed test episodes at the end (default 600)")
    t.add_argument("--seed", type=int, help="seed of every RNG")
    t.add_argument("--device", help="auto, cpu or cuda")
    t.add_argument("--dtype", help="float32 or float64")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--run-dir", help="run folder (default runs/<benchmark>-<algo>-<shape>)")
    t.add_argument("--config", help="YAML or JSON file of config keys (see attnmeta.train.config.RunConfig)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set algo_options.inner_steps=5 (repeatable)",
    )
    _add_import_flag(t, "import a module or .py file first (to register a custom learner; also needed with "
                     "--resume: a run folder's own imports are never executed; repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bar; one log line per validation")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run on fixed test episodes",
        description="Evaluate a run's best checkpoint on fixed, seeded test episodes, possibly with "
        "another number of ways/shots than in training (where the learner allows it). Meta-RL runs: the "
        "average return on --episodes fixed tasks before and after each adaptation step (--adapt-steps). "
        "Example: attnmeta eval runs/omniglot-protonet-5w1s --ways 20 --shots 1",
    )
    e.add_argument("run_dir", help="run folder written by attnmeta train")
    e.add_argument("--ways", type=int, help="N classes per test task (default: as trained)")
    e.add_argument("--shots", type=int, help="K support examples per class (default: as trained)")
    e.add_argument("--queries", type=int, help="query examples per class (default: as trained)")
    e.add_argument("--episodes", type=int,
                   help="number of test episodes (default 600; meta-RL: test tasks, default 40)")
    e.add_argument("--adapt-steps", type=int, default=3,
                   help="meta-RL (maml-rl): policy-gradient steps of the adaptation curve (default 3)")
    e.add_argument("--inner-steps", type=int,
                   help="MAML family: inner-loop steps of each test task's adaptation (default: the run's "
                   "eval_inner_steps)")
    e.add_argument("--seed", type=int, default=0, help="seed of the fixed test episodes (default 0)")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best", help="which checkpoint")
    e.add_argument("--root", help="data folder (default: as trained)")
    e.add_argument("--device", help="auto, cpu or cuda")
    e.add_argument("--rotation-ensemble", action="store_true",
                   help="test-time ensemble of the task's four rotations (0/90/180/270 degrees): "
                   "concatenated embeddings for protonet and matching without FCE, averaged "
                   "log-probabilities of one adaptation per view for other classification learners")
    e.add_argument("--transductive", choices=("bd-cspn", "tim", "pt-map", "laplacianshot", "finetune"),
                   help="classify each episode's queries jointly on the run's embedding "
                   "(attnmeta.eval.transductive; protonet, matching, feat, transfer, baseline++, simpleshot, "
                   "contrastive)")
    e.add_argument("--oos", action="store_true",
                   help="clinc150: out-of-scope detection with CLINC150's oos utterances as extra queries "
                   "(AUROC of max-softmax and nearest-prototype scores; attnmeta.eval.oos)")
    e.add_argument("--oos-recall", type=float, default=0.9,
                   help="with --oos: report in-scope accuracy at this OOS recall (default 0.9)")
    e.add_argument("--beam", type=int,
                   help="sequence-to-sequence runs: beam size of decoding (default: the run's; 1 = greedy)")
    e.add_argument("--finetune-steps", type=int,
                   help="sequence-to-sequence runs: Adam steps of the test-time adaptation (default: the "
                   "run's)")
    e.add_argument("--hallucinate", type=int,
                   help="sequence-to-sequence runs: hallucinated pairs added to each test task's support set "
                   "(stems replaced by random letters; default: the run's, 0)")
    e.add_argument("--hallucinated-share", type=float,
                   help="sequence-to-sequence runs: share of each test-time fine-tuning batch drawn from the "
                   "hallucinated pairs, in [0, 1] (default: the run's; none = uniform over all pairs)")
    e.add_argument("--explore", type=float,
                   help="sequence-to-sequence runs with edit actions: fine-tune by imitation learning, the "
                   "roll-in following the model's own sampled action with this probability, in [0, 1] "
                   "(default: the run's finetune_explore, else its explore; none = teacher forcing on the "
                   "oracle's actions)")
    e.add_argument("--ensemble", type=int,
                   help="sequence-to-sequence runs: fine-tune this many copies per test task and decode with "
                   "their mean probabilities (default: the run's ensemble, 1)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_import_flag(e, "import a module or .py file first (a custom learner the run needs; a run folder's "
                     "own imports are never executed; repeatable)")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "plot",
        help="learning curves of one or several runs in one PNG",
        description="Plot training loss and train/validation metrics (95% CIs) of runs.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument(
        "-o", "--output", default="learning_curves.png", help="PNG file (default learning_curves.png)"
    )
    p.set_defaults(func=cmd_plot)

    q = sub.add_parser(
        "predict",
        help="label query images (or generate targets of query sources) with a trained run",
        description="Classification runs: fit to a support folder (one subfolder of images per class, "
        "named by the label) and print `file<TAB>label<TAB>probability` for each query image. "
        "Sequence-to-sequence runs: fit to a file of pairs (SIGMORPHON `lemma<TAB>form<TAB>tags` lines for "
        "sigmorphon2018 runs, a source<TAB>target .tsv or .jsonl file otherwise) and print the generated "
        "target of each query source (`lemma<TAB>form<TAB>tags`, or `source<TAB>target`).",
    )
    q.add_argument("run_dir", help="run folder or checkpoint folder")
    q.add_argument("--support", required=True,
                   help="folder with one subfolder of images per class (sequence runs: file of pairs)")
    q.add_argument("--query", required=True,
                   help="folder of images to label (sequence runs: file of sources, one a line; "
                   "lemma<TAB>tags for sigmorphon2018 runs)")
    q.add_argument("--beam", type=int, help="sequence runs: beam size (default: the run's; 1 = greedy)")
    _add_import_flag(q, "import a module or .py file first (a custom learner the run needs; repeatable)")
    q.set_defaults(func=cmd_predict)

    d = sub.add_parser(
        "detect",
        help="find the support classes in images with a trained detection run",
        description="Fit a detection run to a support folder (one subfolder of crops per class, named by the "
        "label; the same number of crops in each) and find those classes in every image of --images. Writes "
        "detections.json (per image: label, score, box [x0, y0, x1, y1] in pixels) and one PNG per image "
        "with the boxes drawn into --out (a new or empty folder). Example: attnmeta detect "
        "runs/omniglot-scenes-prototype-detector-5w1s --support crops/ --images scenes/ --out found/",
    )
    d.add_argument("run_dir", help="detection run folder or checkpoint folder")
    d.add_argument("--support", required=True, help="folder with one subfolder of crops per class")
    d.add_argument("--images", required=True, help="folder of images to search")
    d.add_argument("--out", required=True, help="new or empty folder for detections.json and the PNGs")
    d.add_argument("--score-threshold", type=float, default=0.3, help="keep boxes scoring at least this "
                   "(0..1, default 0.3)")
    d.add_argument("--max-detections", type=int, default=20, help="boxes kept per image (default 20)")
    _add_import_flag(d, "import a module or .py file first (a custom learner the run needs; repeatable)")
    d.set_defaults(func=cmd_detect)

    c = sub.add_parser(
        "compare",
        help="compare learners on the same fixed episodes (attnmeta.compare)",
        description="Delegates to attnmeta.compare; see `attnmeta compare --help`.",
        add_help=False,
    )
    c.add_argument("compare_args", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser(
        "recipes",
        help="list the named recipes (the figure each reached, its cost, its command)",
        description="Named recipes reproduce the published figures: `attnmeta recipes` lists them, "
        "`attnmeta recipes show NAME > my.yaml` prints one as a config file for --config, and "
        "`attnmeta recipes record RUN_DIR` writes a finished recipe run's results (maintainers).",
    )
    r.add_argument("action", nargs="?", choices=("list", "show", "record"), default="list")
    r.add_argument("target", nargs="?", help="recipe name (show) or run folder (record)")
    r.add_argument("--out", help="record: folder of the results files (default: the package's)")
    r.set_defaults(func=cmd_recipes)
    return parser
