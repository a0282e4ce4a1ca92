"""``mtdeploy`` command line: parses, calls :mod:`mtdeploy.api`, prints, maps errors to exit codes.

Exit codes: 0 ok, 1 internal error (or `ladder` found a divergence), 2 bad input (a path that
cannot be written included), 3 does not fit the target, 128 + the signal when interrupted (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP: each ends the verb through its cleanup, see
:mod:`mtdeploy.interrupts`). One module per verb (``mtdeploy.cli.<verb>``, each with
``run(args) -> int``) holds everything the verb does with the user's files.
"""
from __future__ import annotations

import importlib
import os
import sys

from mtdeploy.cli.parser import build_parser, in_options
from mtdeploy.errors import MtdeployError
from mtdeploy.interrupts import exit_status, interrupts_raised

__all__ = ["build_parser", "main", "run_check"]


def __getattr__(name: str):
    # A verb's module loads only when that verb runs (the API, the checker, Lava, matplotlib),
    # so that `mtdeploy --help` stays fast; `run_check` therefore loads on first use too.
    if name == "run_check":
        from mtdeploy.cli.check import run_check

        return run_check
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    try:
        with interrupts_raised():
            return importlib.import_module(f"mtdeploy.cli.{args.verb}").run(args)
    except MtdeployError as exc:
        print(f"mtdeploy: error: {in_options(args.verb, str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:   # Interrupted says by which signal
        print(f"mtdeploy: {exc or 'interrupted'}", file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:   # e.g. `mtdeploy targets | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in mtdeploy, not the user's fault: say so plainly
        if os.environ.get("MTDEPLOY_DEBUG"):
            raise
        print(f"mtdeploy: internal error: {type(exc).__name__}: {exc}\n"
              "(set MTDEPLOY_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return 1
