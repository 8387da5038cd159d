"""Storage scaling: K worker processes on one study with a fast dummy objective, service vs plain Optuna.

Each trial sleeps --trial-seconds in total while reporting 10 intermediate values, so the ideal rate is
K / trial_seconds trials/s. Each configuration (storage x K x mode) runs in its own fresh study; "service"
workers use storage.make_storage + cifar_hpo.search.runtime.worker.run_worker (WAL/busy timeout/BEGIN
IMMEDIATE on SQLite, pre-ping pool on PostgreSQL, heartbeats, budget checks), "plain" workers use
optuna.load_study(storage=URL).optimize with Optuna's defaults, "proxy" workers are the service's talking to
`hpo storage-proxy` (grpc://) in front of PostgreSQL. All use RandomSampler, so the storage, not the sampler,
is measured. The order of the modes rotates per K so machine noise hits each.

The window opens once every worker has imported, connected and loaded the study (each says "ready").
``efficiency`` = trials done in the window / ideal, where a complete trial counts the share of its duration
(ask to tell) inside the window (see window_credit); ``efficiency_whole_trials`` counts only trials that
completed inside it (it rounds each worker down to whole trials: at most (window - 1 trial) / window).

Each row also records how busy the whole machine's CPUs were during the window (workers, proxy, database
server and anything else) and the machine CPU seconds per trial: a busy fraction near 1 means the cores,
not the storage, set the rate, and ``cores_needed_estimate`` = target efficiency x K / trial_seconds x CPU
seconds per trial says how many cores the efficiency target would take at that per-trial cost.

    python benchmarks/storage_scaling.py [--workers 1 4 8 16] [--seconds 15] [--sqlite-dir DIR]
                                         [--postgres postgresql://postgres@127.0.0.1:5432/test]
                                         [--modes plain service proxy]
    python benchmarks/storage_scaling.py --profile sleep   # 1 s trials: PostgreSQL 1/4/8/16 (with proxy), SQLite 1/4

Two profiles, kept side by side in one JSON (``runs``, one per profile; a rerun replaces its own):
``cpu`` (0.2 s trials, the default) finds where this machine's cores set the rate; ``sleep`` (1 s trials
that wait, as trials that train on another machine or wait for I/O do) measures the storage where the cores
are not the limit. Besides trials/s, each row counts trials lost (left RUNNING after every worker exited).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "storage_scaling.json"

WORKER = r'''
import json, sys, time, logging
import optuna
mode, url, study_name, trial_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.ERROR)
errors = {"locked": 0, "other": 0}
class Count(logging.Handler):
    def emit(self, record):
        text = record.getMessage().lower()
        if "locked" in text: errors["locked"] += 1
logging.getLogger("optuna").addHandler(Count())
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(10):
        time.sleep(trial_seconds / 10)
        trial.report(x * step, step)
    return x
sampler = optuna.samplers.RandomSampler()
if mode == "plain":
    study = optuna.load_study(study_name=study_name, storage=url, sampler=sampler)
else:  # service, directly or through the proxy (a grpc:// URL)
    from cifar_hpo.storage import make_storage
    from cifar_hpo.search.runtime.worker import run_worker
    study = optuna.load_study(study_name=study_name, storage=make_storage(url), sampler=sampler)
print("ready", flush=True)
start_at, stop_at = map(float, sys.stdin.readline().split())  # once every worker is ready
time.sleep(max(0.0, start_at - time.time()))
try:
    if mode == "plain":
        study.optimize(objective, timeout=stop_at - time.time(), catch=(Exception,))
    else:
        run_worker(study, objective, n_trials=10**9, timeout=stop_at - time.time())
except Exception as err:
    errors["locked" if "locked" in str(err).lower() else "other"] += 1
print(json.dumps(errors))
'''


def window_credit(trials: list, start_at: float, stop_at: float) -> tuple[float, int]:
    """(trials done in the window, completed trials that ended in it). A complete trial counts the share of
    its own duration (ask to tell) that fell inside the window, so one straddling the window's end counts in
    part: the whole-trial count undercounts by up to one trial per worker (1 s trials, 20 s window: <= 5%),
    which is the window's rounding, not the storage's cost. Gaps between a worker's trials count against it."""
    done, whole = 0.0, 0
    for trial in trials:
        if trial.state != optuna.trial.TrialState.COMPLETE or not trial.datetime_start or not trial.datetime_complete:
            continue
        begin, end = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
        inside = max(0.0, min(end, stop_at) - max(begin, start_at))
        done += inside / (end - begin) if end > begin else float(start_at <= end <= stop_at)
        whole += start_at <= end <= stop_at
    return done, whole


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat; None off Linux."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def run_config(mode: str, url: str, workers: int, seconds: float, trial_seconds: float) -> dict:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin_url = url.replace("postgresql://", "postgresql+psycopg://", 1)  # opened here with psycopg 3
    optuna.create_study(study_name=name, storage=admin_url)
    proxy, target = None, url
    if mode == "proxy":  # `hpo storage-proxy` in front of the database, the service's workers on grpc://
        from storage_proxy import PROXY, free_port

        port = free_port()
        proxy = subprocess.Popen([sys.executable, "-c", PROXY, url, str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        if proxy.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the proxy did not start: {proxy.communicate()[1][-2000:]}")
        target = f"grpc://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, mode, target, name, str(trial_seconds)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for proc in procs:  # the window opens once every worker has imported, connected and loaded the study
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker did not start: {proc.communicate()[1][-2000:]}")
    start_at = time.time() + 1.0
    stop_at = start_at + seconds
    for proc in procs:
        proc.stdin.write(f"{start_at} {stop_at}\n")
        proc.stdin.flush()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = machine_cpu_seconds()
    time.sleep(max(0.0, stop_at - time.time()))
    cpu_after = machine_cpu_seconds()
    outputs = [p.communicate(timeout=seconds + 300) for p in procs]
    late = time.time() > stop_at + 60
    if proxy is not None:
        proxy.terminate()
        proxy.communicate(timeout=60)
    reports, stderr_locked, error_samples = [], 0, []
    for proc, (out, err) in zip(procs, outputs):
        stderr_locked += err.lower().count("database is locked")
        try:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            reports.append({"locked": 0, "other": 1})
        if err.strip() or reports[-1]["locked"] or reports[-1]["other"]:
            error_samples.append(err.strip()[-1500:] or out.strip()[-300:])  # what went wrong, for the JSON
    study = optuna.load_study(study_name=name, storage=admin_url)
    trials = study.get_trials(deepcopy=False)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    lost = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)  # every worker has exited by now
    done, whole = window_credit(trials, start_at, stop_at)
    ideal = workers / trial_seconds
    optuna.delete_study(study_name=name, storage=admin_url)
    busy = None if cpu_before is None else [a - b for a, b in zip(cpu_after, cpu_before)]
    return {"mode": mode, "workers": workers, "trials_in_window": round(done, 2), "completed_in_window": whole,
            "trials_per_s": round(done / seconds, 3), "efficiency": round(done / seconds / ideal, 3),
            "efficiency_whole_trials": round(whole / seconds / ideal, 3), "failed_trials": failed,
            "lost_trials": lost, "locked_errors": sum(r["locked"] for r in reports) + stderr_locked,
            "worker_errors": sum(r["other"] for r in reports), "late": late,
            # every process on the machine (workers, proxy, database server, anything else) during the window
            "machine_cpu_busy": None if busy is None else round(busy[0] / busy[1], 3),
            "cpu_seconds_per_trial": None if busy is None or not done else round(busy[0] / done, 4),
            "error_samples": error_samples[:3]}


PROFILES = {
    "cpu": {"trial_seconds": 0.2, "seconds": 15.0, "workers": {"sqlite": [1, 4, 8, 16], "postgresql": [1, 4, 8, 16]},
            "modes": {"sqlite": ["plain", "service"], "postgresql": ["plain", "service"]}},
    "sleep": {"trial_seconds": 1.0, "seconds": 30.0, "workers": {"sqlite": [1, 4], "postgresql": [1, 4, 8, 16]},
              "modes": {"sqlite": ["plain", "service"], "postgresql": ["plain", "service", "proxy"]}},
}


def mode_order(modes: list[str], index: int) -> list[str]:
    """The modes rotated by one per worker count, so machine noise does not always hit the same one first."""
    shift = index % len(modes)
    return modes[shift:] + modes[:shift]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="cpu: 0.2 s trials (default); sleep: 1 s trials that wait (see the docstring)")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: the profile's)")
    parser.add_argument("--seconds", type=float, help="measured window per configuration (default: the profile's)")
    parser.add_argument("--trial-seconds", type=float, help="seconds each trial waits (default: the profile's)")
    parser.add_argument("--postgres", default=os.environ.get("HPO_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--sqlite-dir", type=Path, default=None)
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--modes", nargs="+", choices=("plain", "service", "proxy"),
                        help="default: the profile's (proxy: PostgreSQL through `hpo storage-proxy`, sleep profile)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    args.seconds = args.seconds or profile["seconds"]
    args.trial_seconds = args.trial_seconds or profile["trial_seconds"]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sqlite_dir = args.sqlite_dir or Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    rows = []
    for storage in args.storages:
        modes = [m for m in (args.modes or profile["modes"][storage]) if m != "proxy" or storage == "postgresql"]
        for index, workers in enumerate(args.workers or profile["workers"][storage]):
            for mode in mode_order(modes, index):
                url = (f"sqlite:///{sqlite_dir / f'{mode}-{workers}.db'}" if storage == "sqlite"
                       else args.postgres)
                row = {"storage": storage, **run_config(mode, url, workers, args.seconds, args.trial_seconds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    pairs: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        pairs.setdefault((row["storage"], row["workers"]), {})[row["mode"]] = row
    comparison = []
    for (storage, workers), pair in pairs.items():
        if "plain" not in pair or not pair["plain"]["trials_in_window"]:
            continue
        plain_per_trial = args.seconds * workers / pair["plain"]["trials_in_window"]
        for mode in (m for m in pair if m != "plain" and pair[m]["trials_in_window"]):
            per_trial = args.seconds * workers / pair[mode]["trials_in_window"]
            comparison.append({"storage": storage, "workers": workers, "mode": mode,
                               "plain_seconds_per_trial_per_worker": round(plain_per_trial, 4),
                               "seconds_per_trial_per_worker": round(per_trial, 4),
                               "overhead_vs_plain": round(per_trial / plain_per_trial - 1, 4),
                               "efficiency_minus_plain": round(pair[mode]["efficiency"] - pair["plain"]["efficiency"], 3)})
    cores_needed = [
        {"storage": row["storage"], "mode": row["mode"], "workers": row["workers"],
         "cores_for_efficiency_0.90": round(0.9 * row["workers"] / args.trial_seconds * row["cpu_seconds_per_trial"], 1)}
        for row in rows if row["cpu_seconds_per_trial"] and row["workers"] == max(r["workers"] for r in rows)]
    run = {
        "profile": args.profile,
        "command": "python " + " ".join(["benchmarks/storage_scaling.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "trial_seconds": args.trial_seconds, "window_seconds": args.seconds,
        "rows": rows, "comparison": comparison, "cores_needed_estimate": cores_needed,
        "targets": TARGETS[args.profile],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = _earlier_runs(args.out)
    runs[args.profile] = run
    args.out.write_text(json.dumps({"benchmark": "storage_scaling", "runs": runs}, indent=2) + "\n")


TARGETS = {
    "cpu": {"failed_or_locked": 0, "note": "on 2 cores this profile is CPU-bound from 8 workers: see machine_cpu_busy"},
    "sleep": {"failed_locked_or_lost": 0, "postgresql_efficiency_at_16": ">= 0.90",
              "service_efficiency_vs_plain": ">= plain's in the same run"},
}


def _earlier_runs(path: Path) -> dict:
    """The other profiles' runs already in the JSON (a file from before profiles is the cpu profile's run)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if "runs" in earlier:
        return earlier["runs"]
    return {"cpu": {"profile": "cpu", **{k: v for k, v in earlier.items() if k != "benchmark"}}}


if __name__ == "__main__":
    main()
