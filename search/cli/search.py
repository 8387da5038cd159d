"""`hpo search`: create or resume a study and run its trials from this command (one worker)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from cifar_hpo.search.errors import ConfigError, ExitCode, SearchStopped
from cifar_hpo.search.models.precision import PRECISIONS
from cifar_hpo.search.presets import PRESET_NAMES, PRESETS
from cifar_hpo.search.settings import (ENGINES, PRUNERS, SAMPLERS, TTA_MODES, StudySettings, absolute_data_path,
                                       run_timeout)
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.urls import DEFAULT_HEARTBEAT_S, DEFAULT_URL, is_memory

DEFAULT_N_TRIALS = 20
DEFAULT_RECYCLE_AFTER = 5
# The storage URL when --storage is left out: a URL with a password stays off the command line, where `ps`
# shows it to every user (hpo launch hands it to its workers this way too).
STORAGE_ENV = "HPO_STORAGE"
STORAGE_HELP = (f"sqlite:///FILE, postgresql://USER[:PASSWORD]@HOST:PORT/DB, or grpc://HOST:PORT (a running hpo "
                f"storage-proxy, for many workers) (default: ${STORAGE_ENV}, else "
                f"{DEFAULT_URL}, relative to the working directory); keep a password out of the command line "
                f"with ${STORAGE_ENV}, PGPASSWORD or ~/.pgpass")


DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_arg(text: str) -> float:
    """`--timeout 90|90s|15m|2h`: seconds."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in DURATION_UNITS and text[-1:] else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90, 90s, 15m or 2h, but got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, but got {text!r}")
    return value * DURATION_UNITS[unit]


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or DEFAULT_URL


def add_storage_flags(parser: argparse.ArgumentParser, *, study_required: bool = True) -> None:
    parser.add_argument("--study", required=study_required, metavar="NAME", help="study name")
    parser.add_argument("--storage", default=default_storage(), metavar="URL", help=STORAGE_HELP)


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=int, metavar="N",
                        help=f"study-wide total of finished (complete or pruned) trials to reach (default: the "
                        f"study's, else {DEFAULT_N_TRIALS}); shared by all workers")
    parser.add_argument("--timeout", type=duration_arg, metavar="TIME",
                        help="stop starting trials after TIME: seconds (90, 90s), minutes (15m) or hours (2h, 1.5h)")
    parser.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT_S, metavar="SEC",
                        help=f"trial heartbeat interval; a trial silent for 1.5 intervals is failed and retried "
                        f"(default {DEFAULT_HEARTBEAT_S})")
    parser.add_argument("--recycle-after", type=int, default=DEFAULT_RECYCLE_AFTER, metavar="N",
                        help="run trials in a child process replaced every N trials, so TensorFlow memory "
                        f"cannot grow from trial to trial (default {DEFAULT_RECYCLE_AFTER}; 0: in this process)")


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that define a new study; stored in it, and checked against it on resume."""
    parser.add_argument("--preset", choices=PRESET_NAMES,
                        help="size of a new study where its flags do not say: quick (about 15 min on a 2-core CPU: "
                        "10,000 images, CPU-sized models, 12 trials or 15 min) or full (the whole space, all "
                        "images); default: quick where no GPU is visible and nothing is sized by a flag, else full")
    parser.add_argument("--space", choices=("cnn", "inception"), help="search space (default cnn)")
    parser.add_argument("--engine", choices=ENGINES, help="optuna (default) or kerastuner")
    parser.add_argument("--sampler", choices=SAMPLERS, help="tpe (default) or random")
    parser.add_argument("--pruner", choices=PRUNERS, help="hyperband over epochs (default), median, or none")
    parser.add_argument("--epochs", type=int, metavar="MAX_EPOCHS", help="maximum epochs per trial (default 20)")
    parser.add_argument("--min-resource", type=int, metavar="EPOCHS",
                        help=f"hyperband pruner: epochs every trial runs before it can be pruned (default "
                        f"{StudySettings.min_resource})")
    parser.add_argument("--subset", type=int, metavar="N",
                        help="train on a stratified subset of N images of the training split (quick studies)")
    parser.add_argument("--val-size", type=int, metavar="N",
                        help="validation images split off the training set, stratified (default 5000)")
    parser.add_argument("--data", metavar="PATH",
                        help="CIFAR-10 as .npz (x_train,y_train,x_test,y_test), cifar-10-batches-py folder or "
                        "cifar-10-python.tar.gz (default: download through keras.datasets)")
    parser.add_argument("--space-config", metavar="FILE", help="TOML file overriding the space's bounds")
    parser.add_argument("--seed", type=int, help="seed of the sampler, split and trials (default 0)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not enqueue the hand-tuned seed baseline as the first trial")
    parser.add_argument("--no-priors", action="store_true",
                        help="do not enqueue the space's strong known recipes after the baseline")
    parser.add_argument("--tta", choices=TTA_MODES,
                        help="test-time augmentation of validation and test scoring (default flip: each image and its mirror)")
    parser.add_argument("--weights", metavar="imagenet|PATH",
                        help="inception space: ImageNet weights through Keras (default) or a .weights.h5 file")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="training precision (default auto: resolved by each trial process, mixed bf16 on a "
                        "CPU with AVX512-BF16/AMX or a GPU of compute capability >= 8.0, mixed fp16 on older "
                        "GPUs, else float32); bf16/fp16 force mixed precision, float32 turns it off")
    add_artifacts_flag(parser)
    parser.add_argument("--keep-models", type=int, metavar="K",
                        help=f"keep the trained models of the top K complete trials as Optuna artifacts (default "
                        f"{StudySettings.keep_models}; 0: none)")


def add_artifacts_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", metavar="DIR",
                        help="folder of the trial models (an Optuna artifact store; default: beside a SQLite file, "
                        "e.g. hpo-artifacts/ for hpo.db; a PostgreSQL study keeps models only with this flag); "
                        "stored in the study, a worker elsewhere may name its own path to the same folder")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The study-defining flags actually passed (None = left out)."""
    return {
        "space": args.space, "engine": args.engine, "sampler": args.sampler, "pruner": args.pruner,
        "min_resource": args.min_resource, "epochs": args.epochs, "subset": args.subset, "val_size": args.val_size, "data": args.data,
        "seed": args.seed, "baseline": False if args.no_baseline else None, "weights": args.weights,
        "priors": False if args.no_priors else None, "tta": args.tta, "precision": args.precision,
        "n_trials": args.n_trials, "timeout": args.timeout, "preset": args.preset,
        "artifacts": absolute_data_path(args.artifacts), "keep_models": args.keep_models,
    }


def start_notes(opened: Any, url: str) -> list[str]:
    """One-line notes for the start of a run: the setup's notes and, for a study a preset just sized, its sizes."""
    notes = [*opened.notes, artifacts_note(opened, url)]
    if opened.created and opened.settings.preset in PRESETS and opened.settings.preset != "full":
        notes.append(PRESETS[opened.settings.preset].describe(opened.settings))
    return [note for note in notes if note]


def artifacts_note(opened: Any, url: str) -> str | None:
    """Why a study that should keep models keeps none (a PostgreSQL study created without --artifacts)."""
    from cifar_hpo.storage.artifacts import artifact_dir

    settings = opened.settings
    if settings.keep_models == 0 or is_memory(url) or artifact_dir(settings.artifacts, url) is not None:
        return None
    return ("trial models are not kept: on PostgreSQL or a storage proxy pass --artifacts DIR (a folder every "
            "worker can reach), or --keep-models 0 to silence this")


def budget(args: argparse.Namespace, stored_n_trials: int | None) -> int | None:
    if args.n_trials is not None:
        return args.n_trials
    if stored_n_trials is not None:
        return stored_n_trials
    return None if args.timeout is not None else DEFAULT_N_TRIALS


def run_trials(opened: Any, args: argparse.Namespace, n_trials: int | None, description: str, *,
               worker_index: int = 0, threads: int | None = None, quiet: bool = False) -> int:
    """Run trials for this command with a progress bar; returns the exit code.

    On a database storage trials run in recycled child processes (search/worker_process.py); an in-memory
    study cannot be shared with a child, so it runs here.
    """
    from cifar_hpo.search.cli.progress import StudyProgress

    study = opened.study
    deadline = None if args.timeout is None else time.time() + args.timeout
    progress = StudyProgress(n_trials, description, disable=quiet, epochs=opened.settings.epochs, deadline=deadline)
    try:
        if is_memory(args.storage) or args.recycle_after == 0:
            code = _run_here(opened, n_trials, args.timeout, progress)
        else:
            from cifar_hpo.search.runtime.processes import ChildJob, run_in_child_processes

            opened.release_data()  # the trial processes load their own
            job = ChildJob(url=args.storage, study=study.study_name, heartbeat=args.heartbeat,
                           worker_index=worker_index, n_trials=n_trials,
                           deadline=deadline,
                           recycle_after=args.recycle_after, data_override=getattr(args, "data", None),
                           threads=threads, artifacts_override=absolute_data_path(getattr(args, "artifacts", None)))
            code = run_in_child_processes(job, on_poll=lambda: progress.poll(study))
    finally:
        progress.close()
    if not quiet:
        print(summary_line(study))
    return code


def _run_here(opened: Any, n_trials: int | None, timeout: float | None, progress: Any) -> int:
    from cifar_hpo.search.runtime.objective import Objective
    from cifar_hpo.search.runtime.worker import run_worker

    progress.poll(opened.study)
    try:
        run_worker(opened.study, Objective(opened.settings, opened.split), n_trials=n_trials, timeout=timeout,
                   on_trial_end=lambda s, t: progress.poll(s))
    except SearchStopped as err:
        print(f"hpo: worker stopped: {err}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK


def summary_line(study: Any) -> str:
    from cifar_hpo.storage.counting import count_study_trials

    counts = count_study_trials(study, with_best=True)
    best = f"{counts.best:.4f}" if counts.best is not None else "none"
    return (f"study {study.study_name}: {counts.finished} finished ({counts.complete} complete, {counts.pruned} pruned), "
            f"{counts.failed} failed; best validation accuracy {best}")


def run(args: argparse.Namespace) -> int:
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.search.study_setup import open_hpo_study

    interrupt_once()
    given = given_settings(args)
    if args.tuner is not None and args.engine != "kerastuner":
        raise ConfigError("--tuner applies to --engine kerastuner only")
    if (args.engine or "optuna") == "kerastuner":
        return run_kerastuner(args, given)
    opened = open_hpo_study(args.storage, args.study, given, heartbeat_interval=args.heartbeat,
                            space_config=args.space_config)
    if opened.settings.engine == "kerastuner":  # resumed without --engine: the study says which engine
        return run_kerastuner_opened(args, opened)
    for note in start_notes(opened, args.storage):
        print(f"hpo search: {note}", file=sys.stderr)
    args.timeout = run_timeout(args.timeout, opened.settings)  # a preset's study: its time limit unless given
    verb = "created" if opened.created else "resumed"
    print(f"study {args.study} {verb} in {mask_url(args.storage)} (space {opened.settings.space})", file=sys.stderr)
    return run_trials(opened, args, budget(args, opened.settings.n_trials), args.study)


# `--engine kerastuner`: the same study flow, with KerasTuner choosing the trials (keras-tuner imported lazily).

def run_kerastuner(args: argparse.Namespace, given: dict[str, Any]) -> int:
    """`hpo search --engine kerastuner`: create/resume the study as the Optuna engine does, run KerasTuner."""
    from cifar_hpo.search.engines.kerastuner.tuner import TUNERS
    from cifar_hpo.search.study_setup import open_hpo_study

    for flag in ("sampler", "pruner"):
        if given.get(flag) is not None:
            raise ConfigError(f"--{flag} applies to the optuna engine; with --engine kerastuner, --tuner "
                              "(hyperband, bayesian or random) decides sampling and early stopping")
    if getattr(args, "tuner", None) is not None and args.tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {list(TUNERS)}, but got {args.tuner!r}")
    opened = open_hpo_study(args.storage, args.study, given, heartbeat_interval=args.heartbeat,
                            space_config=args.space_config)
    for note in start_notes(opened, args.storage):
        print(f"hpo search: {note}", file=sys.stderr)
    return run_kerastuner_opened(args, opened)


def run_kerastuner_opened(args: argparse.Namespace, opened: Any) -> int:
    """Run KerasTuner on a study already opened by `hpo search` (e.g. a resume that left out --engine)."""
    from cifar_hpo.search.cli.progress import StudyProgress
    from cifar_hpo.search.engines.kerastuner.recorder import ENGINE
    from cifar_hpo.search.engines.kerastuner.tuner import project_dir, run_search, tuner_for

    if opened.settings.engine != ENGINE:
        raise ConfigError(f"study {args.study!r} runs on engine {opened.settings.engine!r}; drop --engine kerastuner")
    args.timeout = run_timeout(args.timeout, opened.settings)
    tuner = tuner_for(opened.study, getattr(args, "tuner", None))
    verb = "created" if opened.created else "resumed"
    directory = project_dir(args.study, resume=not opened.created)
    print(f"study {args.study} {verb} in {mask_url(args.storage)} (space {opened.settings.space}, KerasTuner "
          f"{tuner}, files in {directory}/)", file=sys.stderr)
    n_trials = budget(args, opened.settings.n_trials)
    study = opened.study
    progress = StudyProgress(n_trials, args.study, epochs=opened.settings.epochs,
                             deadline=None if args.timeout is None else time.time() + args.timeout)
    progress.poll(study)
    try:
        run_search(opened, tuner, n_trials=n_trials, timeout=args.timeout, directory=directory,
                   on_trial_end=lambda: progress.poll(study),
                   on_note=lambda note: print(f"hpo search: {note}", file=sys.stderr))
    except SearchStopped as err:
        print(f"hpo: search stopped: {err}", file=sys.stderr)
        return ExitCode.FAILURE
    finally:
        progress.close()
    print(summary_line(study))
    return ExitCode.OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search", help="create or resume a study and run its trials (one worker)",
        description="Create a study (or resume it: the same command again) and run its trials from here. "
        "Settings are stored in the study; a resumed study refuses different settings.",
    )
    add_storage_flags(parser)
    add_budget_flags(parser)
    add_study_flags(parser)
    parser.add_argument("--tuner", choices=("hyperband", "bayesian", "random"),
                        help="with --engine kerastuner: which KerasTuner tuner (default hyperband)")
    parser.set_defaults(run=run)


