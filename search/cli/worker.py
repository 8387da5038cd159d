"""`hpo worker`: join an existing study and run its trials; every setting comes from the study itself."""

from __future__ import annotations

import argparse
from typing import Any

from cifar_hpo.search.cli.search import add_artifacts_flag, add_budget_flags, add_storage_flags, budget, run_trials
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.runtime.threads import limit_cpu_threads
from cifar_hpo.storage.urls import is_memory


def with_local_artifacts(settings: Any, artifacts: str | None) -> Any:
    """The study's settings with this machine's path to its artifact store, when one is given."""
    import dataclasses

    from cifar_hpo.search.settings import absolute_data_path

    return settings if artifacts is None else dataclasses.replace(settings, artifacts=absolute_data_path(artifacts))


def run(args: argparse.Namespace) -> int:
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.search.study_setup import open_hpo_study

    interrupt_once()
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, but got {args.threads}")
    opened = open_hpo_study(args.storage, args.study, None, heartbeat_interval=args.heartbeat,
                            data_override=args.data)
    opened.settings = with_local_artifacts(opened.settings, args.artifacts)
    if opened.settings.engine != "optuna":
        raise ConfigError(f"study {args.study!r} runs on the {opened.settings.engine} engine; resume it with hpo search")
    description = f"{args.study} worker {args.worker_index}"
    if args.recycle_after == 0 or is_memory(args.storage):
        limit_cpu_threads(args.threads)  # trials run in this process
    return run_trials(opened, args, budget(args, opened.settings.n_trials), description,
                      worker_index=args.worker_index, threads=args.threads, quiet=args.quiet)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="join an existing study and run its trials (any machine, same storage)",
        description="Join study NAME and run trials until the study has --n-trials finished trials in total "
        "(all workers together). Space, data, split, epochs, sampler and pruner come from the study.",
    )
    add_storage_flags(parser)
    add_budget_flags(parser)
    parser.add_argument("--data", metavar="PATH",
                        help="where the study's data is on this machine, if not at the stored path "
                        "(checked against the study's data fingerprint)")
    add_artifacts_flag(parser)
    parser.add_argument("--threads", type=int, metavar="T", help="CPU threads for TensorFlow (default: all)")
    parser.add_argument("--worker-index", type=int, default=0, metavar="I",
                        help="names this worker in its progress bar and trial processes (hpo launch sets it); the "
                        "sampler's draws depend on the trial number, so workers need no distinct index")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary (hpo launch sets it)")
    parser.set_defaults(run=run)
