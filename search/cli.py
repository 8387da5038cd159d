"""`hpo`: the command line. main(argv) so tests call it in-process; exit 0 ok, 1 failure, 2 configuration."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from search.errors import ConfigError

# Each command module offers register(subparsers); imported eagerly (they are light: no TensorFlow).
COMMANDS = ("cmd_search", "cmd_worker", "cmd_launch", "cmd_report", "cmd_dashboard", "cmd_cache")
# Commands that run trials: an interrupt marks the trial they were running FAIL.
TRIAL_COMMANDS = ("search", "worker", "launch")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo",
        description="Hyperparameter search for CIFAR-10 classifiers: a CNN from scratch or InceptionV3 transfer "
        "learning, as Optuna studies in SQLite or PostgreSQL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"search.{name}").register(subparsers)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar replaces per-trial INFO lines
    from search.interrupts import hide_interrupted_trial_logs

    hide_interrupted_trial_logs()  # the CLI says "interrupted" in one line instead


def interrupted_message(args: argparse.Namespace | None) -> str | None:
    """The one line an interrupted command prints (None: hpo launch's workers, which launch speaks for)."""
    if args is None:
        return "hpo: interrupted"
    if getattr(args, "quiet", False):
        return None
    if args.command in TRIAL_COMMANDS:
        return (f"hpo {args.command}: interrupted; any trial it was running is marked FAIL. "
                "Run the same command again to resume.")
    return f"hpo {args.command}: interrupted"


def main(argv: list[str] | None = None) -> int:
    args = None
    try:  # Ctrl-C can come at any moment, also while the command modules are imported
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return int(args.run(args) or EXIT_OK)
    except ConfigError as err:
        print(f"hpo {args.command if args else '-'}: error: {err}", file=sys.stderr)  # args is set: parsing raises none
        return EXIT_CONFIG
    except KeyboardInterrupt:
        message = interrupted_message(args)
        if message:
            print(message, file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
