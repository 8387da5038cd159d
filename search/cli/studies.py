"""`hpo studies` lists the studies in a storage; `hpo delete` removes one (after a confirmation)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cifar_hpo.search.cli.search import STORAGE_HELP, add_storage_flags, default_storage
from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.storage.masking import mask_url

COLUMNS = ("study", "space", "complete", "pruned", "failed", "running", "best", "first trial")


def study_rows(url: str) -> list[tuple[str, ...]]:
    """One row per study: name, space, trials by state, best value, when its first trial started (Optuna
    keeps no creation time for a study)."""
    import optuna

    from cifar_hpo.storage import make_storage
    from cifar_hpo.storage.attrs import SETTINGS_ATTR
    from cifar_hpo.storage.counting import count_study_trials

    storage = make_storage(url, create=False)
    rows = []
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = count_study_trials(study, with_best=True)
        space = summary.user_attrs.get(SETTINGS_ATTR, {}).get("space", "-")
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "-"
        best = f"{counts.best:.4f}" if counts.best is not None else "-"
        rows.append((summary.study_name, space, str(counts.complete), str(counts.pruned), str(counts.failed),
                     str(counts.running), best, started))
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(COLUMNS, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (COLUMNS, *rows))


def run_studies(args: argparse.Namespace) -> int:
    rows = study_rows(args.storage)
    if not rows:
        print(f"no studies in {mask_url(args.storage)}; create one with `hpo search --study NAME ...`", file=sys.stderr)
        return ExitCode.OK
    print(format_table(rows))
    return ExitCode.OK


def run_delete(args: argparse.Namespace) -> int:
    import optuna

    from cifar_hpo.storage import make_storage, open_study

    storage = make_storage(args.storage, create=False)
    study = open_study(storage, args.study)  # a missing study is one clear line, with the names that exist
    where = mask_url(args.storage)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"refusing to delete study {args.study!r} without a confirmation: stdin is not a "
                              "terminal; pass --yes")
        n = len(study.get_trials(deepcopy=False))
        answer = input(f"delete study {args.study!r} and its {n} trial(s) from {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("hpo delete: nothing deleted", file=sys.stderr)
            return ExitCode.FAILURE
    optuna.delete_study(study_name=args.study, storage=storage)
    print(f"deleted study {args.study} from {where}")
    return ExitCode.OK


def register(subparsers: Any) -> None:
    studies = subparsers.add_parser(
        "studies", help="list the studies in a storage: space, trials by state, best value",
        description="One line per study: name, space, complete/pruned/failed/running trials, best validation "
        "accuracy, and when its first trial started.")
    studies.add_argument("--storage", default=default_storage(), metavar="URL", help=STORAGE_HELP)
    studies.set_defaults(run=run_studies)

    delete = subparsers.add_parser(
        "delete", help="delete a study and all its trials (asks first)",
        description="Delete study NAME with its trials and stored evaluations. Asks for a confirmation; --yes "
        "skips it (required when stdin is not a terminal).")
    add_storage_flags(delete)
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for a confirmation")
    delete.set_defaults(run=run_delete)
