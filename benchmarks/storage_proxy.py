"""Storage proxy: K workers with sleeping trials on PostgreSQL, directly vs through `hpo storage-proxy`.

Each trial sleeps --trial-seconds while reporting 10 intermediate values; workers are the service's own
(storage.make_storage + search.runtime.worker.run_worker: budget checks, heartbeats or liveness, stale-trial
reaper), with RandomSampler so the storage, not the sampler, is measured. Per mode:

- connections open at PostgreSQL: pg_stat_activity rows of the study's database, sampled every 0.25 s
  during the window (max and mean), ours told apart from any other client by application_name (PGAPPNAME);
- transactions reaching PostgreSQL: pg_stat_database xact_commit + xact_rollback of the database from
  before the workers start to after every process has exited (exiting backends flush their counts), per
  trial completed in that span. The counter is the whole database's, so the studies live in a database of
  their own (--database, created and dropped here): nothing else lands in it but autovacuum, and
  ``other_connections_max`` shows whether any other client was connected;
- SQL statements sent per trial, counted by the processes that talk to PostgreSQL (each worker directly,
  the proxy otherwise) with a SQLAlchemy before_cursor_execute listener (pool pre-pings not included);
- trials/s and efficiency = completed in the window / (K x window / trial seconds); the window opens once
  every worker has started (imported, connected, loaded the study: ``seconds_to_ready``);
- the machine's CPU busy fraction during the window (every process: workers, proxy, database, anything
  else), and the CPU seconds per trial of the workers and of the proxy: a busy fraction near 1 means the
  cores, not the storage, set the rate.

The samplers and counters connect to the server's ``postgres`` database, so they add nothing to the counts.

    python benchmarks/storage_proxy.py [--workers 16] [--seconds 20] [--trial-seconds 1] [--rounds 1]
                                       [--postgres postgresql://postgres@127.0.0.1:5432/test]
                                       [--database hpo_bench_proxy]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy

from storage_scaling import machine_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "storage_proxy.json"
APP_NAME = "hpo-bench-proxy-study"  # PGAPPNAME of every process this benchmark points at PostgreSQL

WORKER = r'''
import itertools, json, sys, time, warnings
import optuna, sqlalchemy
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.ERROR)
from cifar_hpo.storage import make_storage
from cifar_hpo.search.runtime.worker import run_worker
url, study_name, trial_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
statements = itertools.count()
storage = make_storage(url)
if hasattr(storage, "engine"):  # direct: this process talks to PostgreSQL itself
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *args: next(statements))
study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
print("ready", flush=True)
start_at, stop_at = map(float, sys.stdin.readline().split())  # once every worker is ready
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(10):
        time.sleep(trial_seconds / 10)
        trial.report(x * step, step)
    return x
in_window = total = 0
def count(study, trial):
    global in_window, total
    if trial.state == optuna.trial.TrialState.COMPLETE:
        total += 1
        in_window += trial.datetime_complete.timestamp() <= stop_at
time.sleep(max(0.0, start_at - time.time()))
errors = 0
try:
    run_worker(study, objective, n_trials=10**9, timeout=stop_at - time.time(), on_trial_end=count)
except Exception as err:
    errors = 1
    print(repr(err), file=sys.stderr)
print(json.dumps({"in_window": in_window, "completed": total, "statements": next(statements), "errors": errors}))
'''

PROXY = r'''
import itertools, json, sys, warnings
import sqlalchemy
warnings.simplefilter("ignore")
from cifar_hpo.search.runtime.interrupts import interrupt_once
from cifar_hpo.storage import make_storage
from cifar_hpo.storage.proxy import start_server
statements = itertools.count()
storage = make_storage(sys.argv[1])  # what `hpo storage-proxy --storage URL` serves
sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *args: next(statements))
server = start_server(storage, "127.0.0.1", int(sys.argv[2]))
print("ready", flush=True)
interrupt_once()
try:
    server.wait()
except KeyboardInterrupt:
    server.stop()
print(json.dumps({"statements": next(statements)}), flush=True)
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class ConnectionSampler(threading.Thread):
    """pg_stat_activity of ``database`` every ``every_s`` seconds: (ours, others) per sample."""

    def __init__(self, admin: sqlalchemy.Engine, database: str, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.admin, self.database, self.every_s = admin, database, every_s
        self.samples: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FILTER (WHERE application_name = :app), "
                                "count(*) FILTER (WHERE application_name <> :app) "
                                "FROM pg_stat_activity WHERE datname = :db")
        with self.admin.connect() as conn:
            while not self.stop.wait(self.every_s):
                ours, others = conn.execute(query, {"app": APP_NAME, "db": self.database}).one()
                self.samples.append((ours, others))


def transactions(admin: sqlalchemy.Engine, database: str) -> int:
    with admin.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                            "WHERE datname = :db"), {"db": database}).scalar_one()


def run_mode(mode: str, url: str, workers: int, seconds: float, trial_seconds: float) -> dict:
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)  # no-op for the URL main() renders
    database = sqlalchemy.engine.make_url(sa_url).database
    admin = sqlalchemy.create_engine(sqlalchemy.engine.make_url(sa_url).set(database="postgres"),
                                     isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    name = f"bench-proxy-{uuid.uuid4().hex[:8]}"
    # NullPool: this process keeps no connection open while the workers are measured
    setup = optuna.storages.RDBStorage(sa_url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    optuna.create_study(study_name=name, storage=setup)
    time.sleep(1.5)  # the setup connections' counts are flushed when they exit
    env = {**os.environ, "PGAPPNAME": APP_NAME}
    xacts_before = transactions(admin, database)
    proxy = None
    target = url
    if mode == "proxy":
        port = free_port()
        proxy = subprocess.Popen([sys.executable, "-c", PROXY, url, str(port)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proxy.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the proxy did not start: {proxy.communicate()[1][-2000:]}")
        target = f"grpc://127.0.0.1:{port}"
    launched = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, target, name, str(trial_seconds)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for proc in procs:  # the window opens once every worker has imported, connected and loaded the study
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker did not start: {proc.communicate()[1][-2000:]}")
    ready_s = time.monotonic() - launched
    start_at = time.time() + 1.0
    stop_at = start_at + seconds
    for proc in procs:
        proc.stdin.write(f"{start_at} {stop_at}\n")
        proc.stdin.flush()
    time.sleep(max(0.0, start_at - time.time()))
    sampler = ConnectionSampler(admin, database)
    sampler.start()
    cpu_before = machine_cpu_seconds()
    proxy_cpu_before = process_cpu_seconds(proxy.pid) if proxy else None
    workers_cpu_before = sum(process_cpu_seconds(p.pid) or 0.0 for p in procs)
    time.sleep(max(0.0, stop_at - time.time()))
    cpu_after = machine_cpu_seconds()
    proxy_cpu_after = process_cpu_seconds(proxy.pid) if proxy else None
    workers_cpu = sum(process_cpu_seconds(p.pid) or 0.0 for p in procs) - workers_cpu_before
    sampler.stop.set()
    sampler.join()
    outputs = [p.communicate(timeout=seconds + 300) for p in procs]
    proxy_report = {"statements": 0}
    if proxy is not None:
        proxy.terminate()
        out, err = proxy.communicate(timeout=60)
        proxy_report = json.loads(out.strip().splitlines()[-1])
    time.sleep(1.5)  # exiting backends flush their transaction counts
    xacts = transactions(admin, database) - xacts_before
    reports, errors = [], []
    for out, err in outputs:
        try:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            reports.append({"in_window": 0, "completed": 0, "statements": 0, "errors": 1})
        if reports[-1]["errors"] or "Traceback" in err:
            errors.append(err.strip()[-1000:])
    trials = optuna.load_study(study_name=name, storage=setup).get_trials(deepcopy=False)
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    optuna.delete_study(study_name=name, storage=setup)
    setup.engine.dispose()
    admin.dispose()
    in_window = sum(r["in_window"] for r in reports)
    statements = sum(r["statements"] for r in reports) + proxy_report["statements"]
    ours = [s[0] for s in sampler.samples] or [0]
    others = [s[1] for s in sampler.samples] or [0]
    busy = None if cpu_before is None else [a - b for a, b in zip(cpu_after, cpu_before)]
    rate = in_window / seconds
    return {
        "mode": mode, "workers": workers,
        "postgres_connections_max": max(ours), "postgres_connections_mean": round(statistics.mean(ours), 1),
        "other_connections_max": max(others), "connection_samples": len(sampler.samples),
        "transactions": xacts, "trials_completed": completed,
        "transactions_per_trial": round(xacts / completed, 2) if completed else None,
        "statements": statements, "statements_per_trial": round(statements / completed, 2) if completed else None,
        "completed_in_window": in_window, "trials_per_s": round(rate, 3),
        "efficiency": round(rate / (workers / trial_seconds), 3), "failed_trials": failed,
        "seconds_to_ready": round(ready_s, 1),
        "machine_cpu_busy": None if busy is None else round(busy[0] / busy[1], 3),
        "workers_cpu_seconds_per_trial": round(workers_cpu / in_window, 4) if in_window else None,
        "proxy_cpu_cores": (None if proxy_cpu_before is None or proxy_cpu_after is None
                            else round((proxy_cpu_after - proxy_cpu_before) / seconds, 3)),
        "proxy_cpu_seconds_per_trial": (None if proxy_cpu_before is None or proxy_cpu_after is None or not in_window
                                        else round((proxy_cpu_after - proxy_cpu_before) / in_window, 4)),
        "worker_errors": len(errors), "error_samples": errors[:3],
    }


SUMMARY_KEYS = ("postgres_connections_max", "postgres_connections_mean", "transactions_per_trial",
                "statements_per_trial", "trials_per_s", "efficiency", "machine_cpu_busy",
                "workers_cpu_seconds_per_trial", "proxy_cpu_seconds_per_trial", "proxy_cpu_cores")


def summarize(rows: list[dict]) -> dict:
    """Per mode: the mean over rounds of each measure (min and max too, where rounds disagree)."""
    summary = {}
    for mode in dict.fromkeys(row["mode"] for row in rows):
        mine = [row for row in rows if row["mode"] == mode]
        summary[mode] = {}
        for key in SUMMARY_KEYS:
            values = [row[key] for row in mine if row.get(key) is not None]
            if values:
                summary[mode][key] = {"mean": round(statistics.mean(values), 3), "min": min(values), "max": max(values)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per mode")
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1, help="each round runs both modes, in alternating order")
    parser.add_argument("--postgres", default=os.environ.get("HPO_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--database", default="hpo_bench_proxy",
                        help="a database of its own on that server, created and dropped here (its counters are ours)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    server = sqlalchemy.engine.make_url(args.postgres.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sqlalchemy.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{args.database}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{args.database}"')
    url = server.set(database=args.database).render_as_string(hide_password=False)
    rows = []
    try:
        for round_index in range(args.rounds):
            for mode in ("direct", "proxy") if round_index % 2 == 0 else ("proxy", "direct"):
                row = {"round": round_index, **run_mode(mode, url, args.workers, args.seconds, args.trial_seconds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        admin.dispose()
    result = {
        "benchmark": "storage_proxy",
        "command": "python " + " ".join(["benchmarks/storage_proxy.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "workers": args.workers, "trial_seconds": args.trial_seconds, "window_seconds": args.seconds,
        "rows": rows, "summary": summarize(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
