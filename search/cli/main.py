"""`hpo`: the command line. main(argv) so tests call it in-process; exit codes are search.errors.ExitCode."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cifar_hpo.search.errors import CONFIGURATION_ERRORS, ExitCode
from cifar_hpo.search.runtime.quiet import quiet_libraries

# Each command module offers register(subparsers); imported eagerly (they are light: no TensorFlow).
COMMANDS = ("search", "worker", "launch", "studies", "report", "dashboard", "storage_proxy", "cache")
# Commands that run trials: an interrupt marks the trial they were running FAIL.
TRIAL_COMMANDS = ("search", "worker", "launch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo",
        description="Hyperparameter search for CIFAR-10 classifiers: a CNN from scratch or InceptionV3 transfer "
        "learning, as Optuna studies in SQLite or PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"hpo (cifar-hpo) {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep TensorFlow's start-up and library log lines (hidden by default)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cifar_hpo.search.cli.{name}").register(subparsers)
    for sub in subparsers.choices.values():  # -v also after the command: `hpo search ... -v`
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="keep TensorFlow's start-up and library log lines")
    return parser


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cifar-hpo")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


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
    """Run one command; every error a user can fix is one line on stderr and ExitCode.CONFIG."""
    args = None
    try:  # Ctrl-C can come at any moment, also while the command modules are imported
        args = build_parser().parse_args(argv)
        quiet_libraries(True if args.verbose else None)  # None: HPO_VERBOSE, set by a parent `hpo -v`
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return int(args.run(args) or ExitCode.OK)
    except CONFIGURATION_ERRORS as err:
        print(f"hpo {args.command if args else '-'}: error: {err}", file=sys.stderr)  # args is set: parsing raises none
        return ExitCode.CONFIG
    except Exception as err:
        from cifar_hpo.storage.faults import storage_fault  # lazy: the CLI's start-up stays light
        from cifar_hpo.storage.masking import mask_url

        fault = storage_fault(err)  # disk full, read-only, ... hit outside a worker loop (opening, reading)
        if fault is None:
            raise
        urls = getattr(args, "storage", None)
        urls = [urls] if isinstance(urls, str) else urls or []  # hpo report takes one per study
        where = f" {', '.join(mask_url(url) for url in urls)}" if urls else ""
        print(f"hpo {args.command if args else '-'}: error: storage{where}: {fault}", file=sys.stderr)
        return ExitCode.CONFIG
    except KeyboardInterrupt:
        message = interrupted_message(args)
        if message:
            print(message, file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
