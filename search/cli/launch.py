"""`hpo launch`: create the study if needed, then run K worker processes on it with one progress bar."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifar_hpo.search.cli.search import (STORAGE_ENV, add_budget_flags, add_storage_flags, add_study_flags,
                                         budget, given_settings, start_notes, summary_line)
from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.search.settings import run_timeout
from cifar_hpo.search.runtime.interrupts import STOP_SIGNALS, signals_held
from cifar_hpo.search.runtime.processes import fail_trials_of_processes, trial_process_pids
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.urls import is_memory, sqlite_path

if TYPE_CHECKING:
    import optuna

SQLITE_WRITERS_WARNING = 4
STOP_GRACE_S = 30  # above a worker's own grace for its trial process (processes.CHILD_STOP_GRACE_S)


def parse_gpus(text: str | None) -> list[str]:
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise ConfigError(f"--gpus must be a comma-separated list of GPU indices such as 0,1, but got {text!r}")
    return gpus


def worker_command(args: argparse.Namespace, index: int, n_trials: int | None, threads: int | None) -> list[str]:
    """The worker's command line; the storage URL is not on it (see worker_env): `ps` shows argv to everyone."""
    command = [sys.executable, "-m", "cifar_hpo.search.cli", "worker", "--study", args.study,
               "--heartbeat", str(args.heartbeat), "--worker-index", str(index), "--quiet",
               "--recycle-after", str(args.recycle_after)]
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if args.timeout is not None:
        command += ["--timeout", str(args.timeout)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if args.artifacts is not None:  # this machine's path to the store (a resumed study may store another)
        command += ["--artifacts", str(Path(args.artifacts).expanduser().resolve())]
    return command


def worker_env(index: int, gpus: list[str], storage: str) -> dict[str, str]:
    """The worker's environment: the storage URL (with any password) travels here, readable only by its user."""
    env = {**os.environ, STORAGE_ENV: storage}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def stop_workers(workers: list[subprocess.Popen], study: optuna.Study) -> None:
    """SIGTERM (each marks its running trial FAIL and exits), then SIGKILL after a grace period. Then the
    trials still RUNNING of the trial processes the workers ran are marked FAIL from here: a worker killed
    after its grace (and its trial process with it) could not do it."""
    trial_processes = [pid for proc in workers if proc.poll() is None for pid in trial_process_pids(proc.pid)]
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in workers:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    fail_trials_of_processes(study, trial_processes)


def run(args: argparse.Namespace) -> int:
    from cifar_hpo.search.cli.progress import StudyProgress
    from cifar_hpo.search.study_setup import open_hpo_study

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, but got {args.workers}")
    if args.workers > 1 and is_memory(args.storage):
        raise ConfigError("an in-memory storage cannot be shared by several worker processes; use sqlite:///FILE "
                          "or postgresql://...")
    gpus = parse_gpus(args.gpus)
    given = given_settings(args)
    if (given.get("engine") or "optuna") != "optuna":
        raise ConfigError("hpo launch runs the optuna engine; run --engine kerastuner with hpo search")
    if args.workers > SQLITE_WRITERS_WARNING and sqlite_path(args.storage) is not None:
        print(f"hpo launch: warning: {args.workers} writers on one SQLite file queue behind its single write lock; "
              "for many workers or several machines use PostgreSQL (--storage postgresql://...)", file=sys.stderr)
    opened = open_hpo_study(args.storage, args.study, given, heartbeat_interval=args.heartbeat,
                            space_config=args.space_config)
    for note in start_notes(opened, args.storage):
        print(f"hpo launch: {note}", file=sys.stderr)
    args.timeout = run_timeout(args.timeout, opened.settings)  # the workers get the preset's time limit too
    opened.release_data()  # the workers load their own
    n_trials = budget(args, opened.settings.n_trials)
    threads = None if gpus else max(1, (os.cpu_count() or 1) // args.workers)
    print(f"study {args.study} in {mask_url(args.storage)}: starting {args.workers} workers"
          + (f", GPUs {','.join(gpus)}" if gpus else f", {threads} CPU threads each"), file=sys.stderr)
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        # Only a flag: an exception could cut a storage query short; the loop below checks it every second.
        nonlocal stop
        stop = True

    # Ctrl-C and SIGTERM stop the workers (each marks its running trial FAIL and exits quietly); this
    # process prints the summary. Workers start with both signals held until they can handle them.
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    with signals_held():
        workers = [subprocess.Popen(worker_command(args, i, n_trials, threads), env=worker_env(i, gpus, args.storage))
                   for i in range(args.workers)]
    progress = StudyProgress(n_trials, f"{args.study} x{args.workers}", epochs=opened.settings.epochs,
                             deadline=None if args.timeout is None else time.time() + args.timeout)
    try:
        while not stop and any(proc.poll() is None for proc in workers):
            progress.poll(opened.study)
            time.sleep(1.0)
    finally:
        if stop:
            stop_workers(workers, opened.study)
        progress.poll(opened.study)
        progress.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [proc.wait() for proc in workers]
    print(summary_line(opened.study))
    if stop:
        print("hpo launch: stopped; running trials were marked FAIL. Run the same command to resume.", file=sys.stderr)
        return ExitCode.INTERRUPTED
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        print(f"hpo launch: worker(s) {failed} exited with codes {[codes[i] for i in failed]}", file=sys.stderr)
        # CONFIG: each failed worker printed its configuration/storage error
        return ExitCode.CONFIG if all(codes[i] == ExitCode.CONFIG for i in failed) else ExitCode.FAILURE
    return ExitCode.OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "launch", help="create the study if needed and run K worker processes on it",
        description="Create or resume a study (same flags as hpo search), start K `hpo worker` processes on it, "
        "show one progress bar. Ctrl-C or SIGTERM stops all workers cleanly.",
    )
    add_storage_flags(parser)
    add_budget_flags(parser)
    add_study_flags(parser)
    parser.add_argument("--workers", type=int, required=True, metavar="K", help="number of worker processes")
    parser.add_argument("--gpus", metavar="0,1,...",
                        help="one GPU per worker, round robin, through CUDA_VISIBLE_DEVICES")
    parser.set_defaults(run=run)
