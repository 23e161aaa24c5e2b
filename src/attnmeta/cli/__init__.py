"""The ``attnmeta`` command (also ``python -m attnmeta`` and ``torchrun -m attnmeta``).

attnmeta train sinusoid                                   # the README's main job (~1 minute on 2 CPUs)
attnmeta train --recipe omniglot-protonet --root ../shared/data/omniglot
attnmeta train clinc150 --algo protonet --root ../shared/data/text/clinc150   # few-shot intents (text)
attnmeta train --resume runs/omniglot-maml-5w1s
attnmeta eval runs/omniglot-maml-5w1s --ways 20 --shots 1
attnmeta plot runs/a runs/b -o curves.png
attnmeta predict runs/omniglot-maml-5w1s --support support/ --query query/
attnmeta recipes
attnmeta compare ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from attnmeta.cli.commands import _train_config  # noqa: F401  (tests build configs as the CLI does)
from attnmeta.cli.parser import TRAIN_FLAGS, build_parser  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnmeta``; returns the exit status (0 done, 2 bad input, 130 interrupted).

    An error caused by the user's input or environment (``attnmeta.errors.is_user_error``) is printed as one
    line; any other exception is a bug and keeps its traceback. ``--debug`` (anywhere on the command line,
    or ``ATTNMETA_DEBUG=1``) shows the traceback of every error.
    """
    from attnmeta.errors import is_user_error, one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("ATTNMETA_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["compare"]:  # attnmeta.compare parses its own arguments (and its own --help)
        argv = ["compare", "--", *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nattnmeta {args.command}: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"attnmeta {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
