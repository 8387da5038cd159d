"""What the headline benchmarks share: resumable phases under a wall budget, every step an `hpo` command.

headline_cnn.py and headline_inception.py run the service as a user does (each step a recorded `hpo`
command); the study lives in a SQLite file under a state folder outside the clone and the wall clock spent
per phase in a state file beside it, so the same command continues where a stopped run left off.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class State:
    """Seconds spent per phase and what each phase produced, kept beside the study (resumable runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"seconds": {}, "commands": []}

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.data["seconds"][phase] = round(self.data["seconds"].get(phase, 0.0) + seconds, 1)
        self.save()

    def seconds(self, phase: str) -> float:
        return float(self.data["seconds"].get(phase, 0.0))

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def hpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifar_hpo.search.cli", *args]


def shown(command: list[str], data: str) -> str:
    """The command as a user types it (hpo ..., the data folder as DIR)."""
    words = ["hpo", *command[3:]] if command[:3] == hpo() else command
    return " ".join(w.replace(str(Path(data).parent), "DIR") for w in words)


def run_until(command: list[str], deadline_s: float, log: Path, state: State, phase: str) -> int:
    """Run ``command``; SIGTERM it at the deadline (the running trial is marked FAIL). The phase's seconds are
    added to the state every 30 s, so a run stopped from outside (a session's end) still counts its time."""
    counted = 0.0
    start = time.monotonic()
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed >= max(1.0, deadline_s):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=300)
                break
            try:
                proc.wait(timeout=min(30.0, max(1.0, deadline_s) - elapsed))
            except subprocess.TimeoutExpired:
                pass
            state.add_seconds(phase, time.monotonic() - start - counted)
            counted = time.monotonic() - start
    state.add_seconds(phase, time.monotonic() - start - counted)
    return proc.returncode


def add_run_args(parser: argparse.ArgumentParser, *, name: str, space_config: str) -> None:
    """The arguments both headline runs take (study, seed, state, split, output), with this run's defaults."""
    parser.add_argument("--space-config", default=str(ROOT / "benchmarks" / "configs" / space_config))
    parser.add_argument("--study", default=name)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "cifar-hpo" / "headline")
    parser.add_argument("--subset", type=int, help="train on N images (smoke tests; default all 45,000)")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name.replace('-', '_')}.json")


def search_phase(args: argparse.Namespace, url: str, state: State, log: Path, space: str, *flags: str) -> None:
    """`hpo search` on the study for the search's share of the budget (minus what earlier sessions spent);
    ``flags`` are the space's own (e.g. --weights)."""
    share = (args.budget_minutes - args.final_minutes) * 60 - state.seconds("search")
    if share <= 60:
        return
    command = hpo("search", "--space", space, "--study", args.study, "--storage", url, "--data", args.data, *flags,
                  "--epochs", str(args.epochs), "--n-trials", "1000", "--timeout", f"{int(share)}",
                  "--space-config", args.space_config, "--seed", str(args.seed), "--val-size", str(args.val_size),
                  *(["--subset", str(args.subset)] if args.subset else []))
    state.data["commands"].append(shown(command, args.data))
    code = run_until(command, share, log, state, "search")
    state.data["search_exit_codes"] = [*state.data.get("search_exit_codes", []), code]
    state.save()


def evaluate_kept_model(args: argparse.Namespace, url: str, state: State, log: Path, name: str) -> None:
    """Final phase without retraining: `hpo report --evaluate --top 1 --no-baseline` scores the kept model (an
    Optuna artifact) of the trial with the best validation accuracy ONCE on the test images, with the study's
    test-time augmentation."""
    if "final" in state.data:
        return
    folder = args.state_dir / f"{args.study}-report"
    report = hpo("report", "--study", args.study, "--storage", url, "--evaluate", "--top", "1", "--no-baseline",
                 "--data", args.data, "--out", str(folder))
    state.data["commands"].append(shown(report, args.data))
    code = run_until(report, 6 * 3600, log, state, "final")
    if code != 0:
        raise SystemExit(f"{name}: {shown(report, args.data)} failed (exit {code}); see {log}")
    study = json.loads((folder / "ranking.json").read_text())["studies"][0]
    chosen = study["ranking"][0]  # best validation accuracy: the configuration the search chose
    tested = next(t for t in study["test_ranking"] if t["trial"] == chosen["trial"])
    state.data["final"] = {"mode": "keep", "trial": chosen["trial"], "params": chosen.get("params"),
                           "val_accuracy": chosen.get("val_accuracy"), "test": tested,
                           "test_accuracy": tested.get("test_accuracy_mean"),
                           "classification_report": tested.get("classification_report")}
    state.save()


def trial_rows(url: str, study_name: str) -> tuple[list[dict[str, Any]], Any]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=url)
    start = min((t.datetime_start for t in study.trials if t.datetime_start), default=None)
    rows = []
    for t in study.trials:
        attrs = t.user_attrs
        done = t.datetime_complete
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "prior": attrs.get("prior"),
            "baseline": bool(attrs.get("baseline")), "params": t.params, "epochs_run": attrs.get("epochs_run"),
            "val_accuracy_per_epoch": [round(v, 4) for _, v in sorted(t.intermediate_values.items())],
            "fit_seconds": attrs.get("fit_seconds"), "wall_seconds": attrs.get("wall_seconds"),
            "train_images_per_s": attrs.get("train_images_per_s"), "n_params": attrs.get("params"),
            "precision": attrs.get("precision"), "cache_fill_seconds": attrs.get("cache_fill_seconds"),
            "started_after_s": round((t.datetime_start - start).total_seconds(), 1) if t.datetime_start and start else None,
            "finished_after_s": round((done - start).total_seconds(), 1) if done and start else None,
        })
    return rows, study


def plot(rows: list[dict[str, Any]], path: Path, budget_s: float, title: str,
         final: dict[str, Any] | None = None) -> None:
    """Where the time went: each trial's validation accuracy per epoch over its span of the search's wall clock
    (epochs spread evenly), the best finished trial so far, and the final training after the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        curve, begin, end = r["val_accuracy_per_epoch"], r.get("started_after_s"), r["finished_after_s"]
        if not curve or begin is None or end is None:
            continue
        step = (end - begin) / len(curve)
        label = f"trial {r['number']}" + (f" ({r['prior']})" if r["prior"] else "") + f", {r['state'].lower()}"
        ax.plot([(begin + step * (i + 1)) / 60 for i in range(len(curve))], curve, marker=".", label=label)
    points = sorted((r["finished_after_s"], max(r["val_accuracy_per_epoch"] or [0.0])) for r in rows
                    if r["finished_after_s"] is not None and r["state"] == "COMPLETE")
    best, xs, ys = 0.0, [], []
    for seconds, value in points:
        best = max(best, value)
        xs.append(seconds / 60)
        ys.append(best)
    if xs:
        ax.step(xs + [budget_s / 60], ys + ys[-1:], where="post", color="black", linewidth=1,
                label="best finished trial so far")
    history = (final or {}).get("history", {}).get("val_accuracy")
    if history:
        per_epoch = final["fit_seconds"] / len(history)
        ax.plot([(budget_s + per_epoch * (i + 1)) / 60 for i in range(len(history))], history, marker=".",
                color="tab:red", label=f"final training ({len(history)} epochs, trial {final['trial']})")
    ax.axvline(budget_s / 60, color="grey", linestyle="--", label="end of the search's share")
    ax.set_xlabel("wall clock (minutes)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
