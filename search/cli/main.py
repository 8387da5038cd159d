"""`hpo`: the command line. main(argv) so tests call it in-process; exit 0 ok, 1 failure, 2 configuration."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cifar_hpo.search.errors import CONFIGURATION_ERRORS
from cifar_hpo.search.runtime.quiet import quiet_libraries

# Each command module offers register(subparsers); imported eagerly (they are light: no TensorFlow).
COMMANDS = ("search", "worker", "launch", "report", "dashboard", "cache")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo",
        description="Hyperparameter search for CIFAR-10 classifiers: a CNN from scratch or InceptionV3 transfer "
        "learning, as Optuna studies in SQLite or PostgreSQL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cifar_hpo.search.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or EXIT_OK)
    except CONFIGURATION_ERRORS as err:
        print(f"hpo {args.command}: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as err:
        from cifar_hpo.storage.urls import mask_url, storage_fault  # lazy: the CLI's start-up stays light

        fault = storage_fault(err)  # disk full, read-only, ... hit outside a worker loop (opening, reading)
        if fault is None:
            raise
        where = f" {mask_url(args.storage)}" if isinstance(getattr(args, "storage", None), str) else ""
        print(f"hpo {args.command}: error: storage{where}: {fault}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print(f"hpo {args.command}: interrupted; a trial that was running is marked FAIL. "
              "Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
