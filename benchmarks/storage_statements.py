"""Statements per trial, counted, not timed: the service's worker vs plain Optuna on the same storage.

One scripted trial (10 suggested parameters, 10 reported epochs under the service's Hyperband pruner, the
user attrs search/runtime/objective.py writes, no training) runs N times per mode and storage, on a fresh
study of the same name, with the same seeded RandomSampler, so both modes run the same trials and prune
them at the same epochs:

- plain:   optuna.load_study(storage=RDBStorage(URL)) + study.optimize, Optuna's defaults;
- service: storage.make_storage(URL) + search.runtime.worker.run_worker(study, objective, n_trials=budget,
           max_trials=N), as a trial process of `hpo worker` runs them (search/runtime/processes.py).

storage/statements.py counts statements by kind, transactions and pings; each event is labelled with its
cause from the caller's stack (heartbeat, stale-trial check, pre-ping, budget count, study id lookups, ...).
Per trial = steady state: the trials after ``--warmup`` (cold caches, loading the study and the storage's own
set-up are one-off costs of a process, reported apart). Costs that come with time, not trials (heartbeats
after a trial's first, the stale-trial reaper, progress polls) and the study note (once per study) are
counted once each and reported apart; "long_trials_with_time_driven_costs" adds them back for trials of 1 and
10 minutes, since a real trial trains for minutes and those costs grow with its length.

    python benchmarks/storage_statements.py [--trials 20] [--warmup 2] [--storages sqlite postgresql]
                                            [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy

from cifar_hpo.search.runtime import worker as worker_module
from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.search.settings import HYPERBAND_REDUCTION_FACTOR
from cifar_hpo.storage import make_storage
from cifar_hpo.storage.statements import StatementCounts, count_statements, difference

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "storage_statements.json"
STUDY_NAME = "storage-statements"
N_PARAMS = 10
N_EPOCHS = 10
SEED = 0
BUDGET = 10**6  # far away: the steady state, not the last trials of a study (see "surplus check")
MODES = ("plain", "service")
LONG_TRIAL_SECONDS = (60.0, 600.0)

# (function on the caller's stack, cause): the first match names the cause of a statement.
CAUSES = (
    ("record_heartbeat", "heartbeat"),
    ("_budget_slack", "budget count"),
    ("_active_before", "surplus check"),
    ("fail_stale_trials", "stale check at trial start"),
    ("get_study_id_from_name", "study id lookups (Optuna)"),
)
PRE_PING = "pre-ping"
REAPER = "stale-trial reaper"
TRIAL = "trial (Optuna)"


def cause_of(what: str) -> str:
    """The cause of one counted event, from the thread and the caller's stack."""
    if what == "pings":
        return PRE_PING
    if threading.current_thread().name == worker_module.REAPER_THREAD_NAME:
        return REAPER
    names = set()
    frame = sys._getframe(1)
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return next((cause for function, cause in CAUSES if function in names), TRIAL)


def make_pruner() -> optuna.pruners.BasePruner:
    """The service's default pruner (search/settings.py make_pruner) for 10-epoch trials."""
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=N_EPOCHS,
                                          reduction_factor=HYPERBAND_REDUCTION_FACTOR)


def scripted_objective(trial: optuna.trial.Trial) -> float:
    """What search/runtime/objective.py writes for a CNN trial, in the same order, without training."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    params = [trial.suggest_float(f"lr{i}", 1e-4, 1e-1, log=True) for i in range(4)]
    params += [trial.suggest_int(f"width{i}", 16, 128) / 128 for i in range(3)]
    params += [trial.suggest_float(f"dropout{i}", 0.0, 0.5) for i in range(N_PARAMS - 7)]
    trial.user_attrs.get("prior")  # the objective asks whether the trial is an enqueued prior recipe
    trial.set_user_attr("precision", "float32")
    quality = sum(params) / len(params)
    history, pruned_at = [], None
    for epoch in range(1, N_EPOCHS + 1):
        history.append(round(quality * (1 - 0.5 ** epoch), 5))
        trial.report(history[-1], epoch)
        if trial.should_prune():
            pruned_at = epoch
            break
    for key, value in {"best_epoch": len(history), "epochs_run": len(history), "params": 123456,
                       "fit_seconds": 12.345, "train_images_per_s": 4321.0,
                       "history": {"val_accuracy": history, "accuracy": history}}.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("wall_seconds", 13.0)
    trial.set_user_attr("worker_rss_mib", 1024.0)
    if pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruned_at}")
    return history[-1]


def admin_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def fresh_study(url: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=admin_url(url))
    except KeyError:
        pass
    optuna.create_study(study_name=name, storage=admin_url(url), direction="maximize")


def open_storage(mode: str, url: str) -> optuna.storages.RDBStorage:
    if mode == "service":
        return make_storage(url)  # type: ignore[return-value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(admin_url(url))


def run_trials(mode: str, url: str, n_trials: int, warmup: int, name: str = STUDY_NAME) -> dict[str, Any]:
    """Run ``n_trials`` scripted trials in this process on a fresh study ``name`` (the Hyperband brackets
    depend on the name); per-trial counts of the trials after ``warmup``."""
    if not 0 <= warmup < n_trials - 1:
        raise ValueError(f"warmup must be in [0, trials - 1), but got warmup={warmup}, trials={n_trials}")
    fresh_study(url, name)
    with count_statements(sqlalchemy.engine.Engine) as opening:  # the storage's own set-up (tables, version)
        storage = open_storage(mode, url)
    snapshots: list[dict[str, StatementCounts]] = []
    with count_statements(storage.engine, label=cause_of) as counter:
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(seed=SEED), pruner=make_pruner())

        def snapshot_then_run(trial: optuna.trial.Trial) -> float:
            # A snapshot as each trial starts, not an Optuna callback as it ends: Optuna reads every finished
            # trial back for its callbacks (~4 statements here), a cost neither mode has without them. The steady
            # state runs from the start of the first trial after the warm-up to the start of the last one.
            snapshots.append(counter.labels())
            return scripted_objective(trial)

        if mode == "service":
            run_worker(study, snapshot_then_run, n_trials=BUDGET, max_trials=n_trials)
        else:
            study.optimize(snapshot_then_run, n_trials=n_trials)
        total = counter.labels()
    states = [f"{t.state.name.lower()}@{len(t.intermediate_values)}" for t in study.get_trials(deepcopy=False)]
    if len(states) != n_trials or len(snapshots) != n_trials:
        raise RuntimeError(f"{mode} ran {len(states)} trials, not {n_trials}")
    steady = difference(snapshots[-1], snapshots[warmup])  # trial starts: warmup .. n_trials - 1
    steady.pop(REAPER, None)  # time-driven: reported per check, not per trial
    measured = n_trials - 1 - warmup
    per_trial = {cause: _per(counts, measured) for cause, counts in steady.items()}
    all_per_trial = _per(sum(steady.values(), StatementCounts()), measured)
    whole_run = sum((c for cause, c in total.items() if cause != REAPER), StatementCounts()) + opening.counts()
    one_off = whole_run.round_trips - all_per_trial["round_trips"] * n_trials
    return {
        "mode": mode,
        "per_trial": all_per_trial,
        "per_trial_by_cause": per_trial,
        "per_process_round_trips": round(one_off, 1),  # opening, loading, cold caches of the first trials
        "open_storage": opening.counts().as_dict(),
        "reaper_checks_during_run": total.get(REAPER, StatementCounts()).as_dict(),
        "trial_states": states,
        "heartbeat_rows": heartbeat_rows(storage, study),
    }


def _per(counts: StatementCounts, trials: int) -> dict[str, float]:
    return {key: round(value / trials, 2) for key, value in counts.as_dict().items()}


def heartbeat_rows(storage: optuna.storages.RDBStorage, study: optuna.Study) -> int:
    """Trials of the study that recorded a heartbeat (Optuna's trial_heartbeats table)."""
    from optuna.storages._rdb.models import TrialHeartbeatModel, TrialModel

    query = (sqlalchemy.select(sqlalchemy.func.count()).select_from(TrialHeartbeatModel)
             .join(TrialModel, TrialModel.trial_id == TrialHeartbeatModel.trial_id)
             .where(TrialModel.study_id == study._study_id))
    with storage.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def counted(storage: optuna.storages.RDBStorage, action: Callable[[], Any]) -> dict[str, int]:
    with count_statements(storage.engine) as counter:
        action()
    return counter.counts().as_dict()


def once_costs(url: str, name: str = STUDY_NAME) -> dict[str, dict[str, int]]:
    """The service's costs that come with time or once per study, each counted once on a fresh storage."""
    from cifar_hpo.search.cli.progress import StudyProgress
    from cifar_hpo.search.settings import StudySettings
    from cifar_hpo.search.study_note import annotate_new_study
    from cifar_hpo.spaces import build_space

    fresh_study(url, name)
    storage = make_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # the trial's first beat (counted per trial above)
    time.sleep(1.1)  # SQLite's now() has whole seconds: a later beat within the same second changes no row
    settings = StudySettings(epochs=N_EPOCHS, sampler="random", n_trials=100)
    lines = StudyProgress(100, "bench", epochs=N_EPOCHS, stream=io.StringIO())
    return {
        # every heartbeat interval (30 s by default) while a trial runs
        "heartbeat_beat": counted(storage, lambda: storage.record_heartbeat(trial._trial_id)),
        # every quarter heartbeat interval in each worker process (search/runtime/worker.py)
        "stale_check": counted(storage, lambda: optuna.storages.fail_stale_trials(study)),
        # every second in each quiet `hpo worker` (hpo launch's) and in a watching `hpo launch`/`hpo search`
        "progress_poll_quiet": counted(storage, lambda: StudyProgress(100, "bench", disable=True).poll(study)),
        "progress_poll_watching": counted(storage, lambda: lines.poll(study)),
        # once per study, by the process that creates it
        "study_note": counted(storage, lambda: annotate_new_study(study, settings, build_space("cnn"), {})),
    }


def attribution(plain: dict[str, Any], service: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cause: per-trial statements and round trips of each mode and the difference service - plain."""
    named = [cause for _, cause in CAUSES] + [PRE_PING, TRIAL]  # listed also when a mode has none
    causes = named + sorted((set(plain["per_trial_by_cause"]) | set(service["per_trial_by_cause"])) - set(named))
    rows = []
    for cause in causes:
        p = plain["per_trial_by_cause"].get(cause, {})
        s = service["per_trial_by_cause"].get(cause, {})
        rows.append({"cause": cause,
                     "plain_statements": p.get("statements", 0.0), "service_statements": s.get("statements", 0.0),
                     "statements_difference": round(s.get("statements", 0.0) - p.get("statements", 0.0), 2),
                     "plain_round_trips": p.get("round_trips", 0.0), "service_round_trips": s.get("round_trips", 0.0),
                     "round_trips_difference": round(s.get("round_trips", 0.0) - p.get("round_trips", 0.0), 2)})
    return sorted(rows, key=lambda row: -abs(row["round_trips_difference"]))


def compare(storage: str, plain: dict[str, Any], service: dict[str, Any], recycle_after: int) -> dict[str, Any]:
    p, s = plain["per_trial"], service["per_trial"]
    with_process = s["round_trips"] + service["per_process_round_trips"] / recycle_after
    return {
        "storage": storage,
        "same_trials": plain["trial_states"] == service["trial_states"],
        "plain_statements_per_trial": p["statements"], "service_statements_per_trial": s["statements"],
        "statements_ratio": round(s["statements"] / p["statements"], 3),
        "plain_round_trips_per_trial": p["round_trips"], "service_round_trips_per_trial": s["round_trips"],
        "round_trips_ratio": round(s["round_trips"] / p["round_trips"], 3),
        "plain_transactions_per_trial": p["begins"], "service_transactions_per_trial": s["begins"],
        f"service_round_trips_per_trial_with_process_costs_recycled_every_{recycle_after}": round(with_process, 1),
        "service_heartbeat_rows": service["heartbeat_rows"], "service_trials": len(service["trial_states"]),
    }


def long_trials(storage: str, plain: dict[str, Any], service: dict[str, Any], once: dict[str, dict[str, int]],
                recycle_after: int, seconds: float) -> dict[str, Any]:
    """Round trips of a trial that runs ``seconds`` (a real one trains for minutes): the per-trial counts plus
    what comes with time (heartbeats, the reaper's checks) and a share of the trial process's one-off costs.
    Plain Optuna without heartbeats has none of these; they are the price of crash recovery."""
    from cifar_hpo.storage.urls import DEFAULT_HEARTBEAT_S

    beats = max(0.0, seconds / DEFAULT_HEARTBEAT_S - 1)  # the first beat is in the per-trial counts
    checks = seconds / (DEFAULT_HEARTBEAT_S / worker_module.REAPER_CHECKS_PER_INTERVAL)
    time_driven = beats * once["heartbeat_beat"]["round_trips"] + checks * once["stale_check"]["round_trips"]
    service_total = service["per_trial"]["round_trips"] + time_driven + service["per_process_round_trips"] / recycle_after
    return {"storage": storage, "trial_seconds": seconds, "plain_round_trips": plain["per_trial"]["round_trips"],
            "service_round_trips": round(service_total, 1), "of_which_heartbeats_and_reaper": round(time_driven, 1),
            "ratio": round(service_total / plain["per_trial"]["round_trips"], 3)}


def main() -> None:
    from cifar_hpo.search.cli.search import DEFAULT_RECYCLE_AFTER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="first trials left out of the per-trial counts")
    parser.add_argument("--postgres", default=os.environ.get("HPO_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--sqlite-dir", type=Path, default=None)
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sqlite_dir = args.sqlite_dir or Path(tempfile.mkdtemp(prefix="hpo-statements-"))
    rows, comparison, table, once, projected = [], [], [], {}, []
    for storage in args.storages:
        def url_of(mode: str) -> str:
            return f"sqlite:///{sqlite_dir / f'{mode}.db'}" if storage == "sqlite" else args.postgres

        results = {mode: run_trials(mode, url_of(mode), args.trials, args.warmup) for mode in MODES}
        for mode in MODES:
            rows.append({"storage": storage, **results[mode]})
        comparison.append(compare(storage, results["plain"], results["service"], DEFAULT_RECYCLE_AFTER))
        table += [{"storage": storage, **row} for row in attribution(results["plain"], results["service"])]
        once[storage] = once_costs(url_of("service"))
        projected += [long_trials(storage, results["plain"], results["service"], once[storage], DEFAULT_RECYCLE_AFTER,
                                  seconds) for seconds in LONG_TRIAL_SECONDS]
        if storage == "postgresql":
            optuna.delete_study(study_name=STUDY_NAME, storage=admin_url(args.postgres))
        print(json.dumps(comparison[-1]), flush=True)
    result = {
        "benchmark": "storage_statements",
        "command": "python " + " ".join(["benchmarks/storage_statements.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {"optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__},
        "scripted_trial": {"params": N_PARAMS, "epochs": N_EPOCHS, "pruner": "hyperband", "sampler": f"random(seed={SEED})",
                           "trials": args.trials, "warmup_trials_left_out": args.warmup},
        "counting": "per trial = steady state (trials after the warm-up); round trips = statements + begins + "
                    "commits + rollbacks + pings; per-process and time-driven costs apart",
        "comparison": comparison,
        "attribution_per_trial": table,
        "time_driven_and_once": once,
        "long_trials_with_time_driven_costs": projected,
        "rows": rows,
        "targets": {"statements_ratio": "<= 1.0", "round_trips_ratio": "<= 1.0"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
