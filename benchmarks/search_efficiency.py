"""Search quality per unit of compute: which strategy finds the best CNN for the same number of training epochs?

Strategies, each on the `cnn` space with the same data split per seed and an equal budget of training epochs:
  a) the service's default: TPE + Hyperband pruning, seed baseline enqueued first, run through the service's
     own Objective and run_worker (what `hpo search` runs);
  b) random search without pruning: a bare Optuna RandomSampler study (neither the seed baseline nor the
     service's priors enqueued): what a practitioner's own script would run;
  c) KerasTuner Hyperband through `--engine kerastuner` (cifar_hpo.search.engines.kerastuner; no baseline);
plus the seed baseline trained alone with the same data and max epochs. Diagnostics, run only when named in
--strategies: (a) without the baseline, and random search after the service's priors (how much of (a)'s lead
over (b) the priors make, and how much TPE + Hyperband adds to them).

Budget: epochs actually trained, counted per trial (a pruned trial counts the epochs it ran; a KerasTuner
Hyperband round that resumes a checkpoint counts only its new epochs). A run starts no trial once the budget
is spent; epochs beyond the budget (the last trial's overshoot) are excluded from its best-so-far curve.
Best-so-far = the highest validation accuracy of any epoch trained so far (pruned trials included).

    python benchmarks/search_efficiency.py --data /path/cifar10.npz            # the issue's default (hours on CPU)
    python benchmarks/search_efficiency.py --data X --train 2000 --val 1000 --max-epochs 4 --budget-epochs 24 --seeds 2
    python benchmarks/search_efficiency.py --data X --strategies a_tpe_hyperband,b_random_nopruning --min-resources 1 2 3

``--min-resources`` runs each Hyperband strategy of the Optuna engine once per first rung (epochs a trial
runs before it can be pruned); the summary's ``min_resource_choice`` says which one met the targets best.

Resumable (the default scale takes ~10 hours on 2 cores): the studies live in a SQLite file under --state
(default ~/.cache/cifar-hpo/search_efficiency, outside the clone) and every finished run in a state file
beside it, so the same command continues where a stopped one left off: finished runs are kept, an Optuna
run continues its study (a trial killed mid-way counts the epochs it trained), a KerasTuner run starts over.
A different configuration in the same --state folder is refused. The JSON (--out) is rewritten after every
finished run with all finished runs, so where the state folder is gone (a fresh machine) the same command takes
the finished runs from the JSON it finds at --out, if that JSON was written by the same configuration: commit
it as the runs finish, and a run of many hours can be spread over several machines or sessions (only the run
under way when one stopped starts over).

Writes the JSON to --out and a PNG (best-so-far vs cumulative epochs) next to it, both after every finished run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

STRATEGIES = {
    "a_tpe_hyperband": "service default: TPE + Hyperband pruning (+ seed baseline first)",
    "b_random_nopruning": "random search, no pruning (no baseline, no priors)",
    "c_kerastuner_hyperband": "KerasTuner Hyperband (--engine kerastuner)",
}
# Diagnostics, run only when named in --strategies: how much of (a) is the enqueued baseline, the priors?
EXTRA_STRATEGIES = {"a_nobaseline": "TPE + Hyperband pruning without the seed baseline",
                    "b_random_priors": "random search, no pruning, after the service's priors (no baseline)"}
DEFAULT_STRATEGIES = tuple(STRATEGIES)
STRATEGIES.update(EXTRA_STRATEGIES)
# The strategies whose pruner is the service's Hyperband: run once per --min-resources value.
HYPERBAND_STRATEGIES = ("a_tpe_hyperband", "a_nobaseline")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search_efficiency.json"
DEFAULT_STATE = Path.home() / ".cache" / "cifar-hpo" / "search_efficiency"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="CIFAR-10 .npz/folder/tar.gz (default: keras.datasets download)")
    p.add_argument("--train", type=int, default=10_000, help="training images (stratified subset; default 10000)")
    p.add_argument("--val", type=int, default=5_000, help="validation images (default 5000)")
    p.add_argument("--max-epochs", type=int, default=8, help="maximum epochs per trial (default 8)")
    p.add_argument("--budget-epochs", type=int, default=120, help="training epochs per strategy and seed (default 120)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="comma-separated, from " + ",".join(STRATEGIES) + " (default: the first three)")
    p.add_argument("--min-resources", type=int, nargs="+", metavar="EPOCHS",
                   help="Hyperband first rungs to compare, each a run of every Hyperband strategy (default: the "
                   "service's default only)")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE,
                   help=f"folder of the studies and finished runs, for resuming (default {DEFAULT_STATE})")
    p.add_argument("--fresh", action="store_true", help="discard what --state holds and start over")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path; the PNG is written next to it")
    p.add_argument("--max-runs", type=int, metavar="N",
                   help="stop after N runs finished by this process (the same command then goes on from there): "
                   "fits a long benchmark into sessions and leaves the CPU free at a run boundary")
    args = p.parse_args(argv)
    unknown = sorted(set(args.strategies.split(",")) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if min(args.train, args.val, args.max_epochs, args.budget_epochs, args.seeds, args.max_runs or 1) < 1:
        p.error("--train, --val, --max-epochs, --budget-epochs, --seeds and --max-runs must be >= 1")
    from cifar_hpo.search.settings import StudySettings

    args.min_resources = sorted(set(args.min_resources or [StudySettings.min_resource]))
    if not all(1 <= k <= args.max_epochs for k in args.min_resources):
        p.error(f"--min-resources must be between 1 and --max-epochs ({args.max_epochs})")
    return args


def variants(strategies: list[str], min_resources: list[int]) -> list[tuple[str, int | None]]:
    """(strategy, min_resource) runs per seed: Hyperband strategies once per first rung, the others once."""
    return [(s, k) for s in strategies for k in (min_resources if s in HYPERBAND_STRATEGIES else [None])]


def run_key(strategy: str, min_resource: int | None) -> str:
    """The run's name in the summary: the strategy, with its first rung where it has one."""
    return strategy if min_resource is None else f"{strategy}@mr{min_resource}"


def key_of(run: dict[str, Any]) -> str:
    """A finished run's ``run_key`` (runs recorded before first rungs were compared have only a strategy)."""
    return run.get("key", run["strategy"])


# ---------------------------------------------------------------------------------------------------------
# Curves from recorded trials


def trained_epochs(trial: FrozenTrial) -> list[tuple[int, float]]:
    """(step, val accuracy) of the epochs this trial trained itself (carried KerasTuner epochs excluded)."""
    initial = int(trial.user_attrs.get("initial_epoch", 0) or 0)
    return [(step, v) for step, v in sorted(trial.intermediate_values.items())
            if step > initial and v is not None and math.isfinite(v)]


def epochs_used(study: optuna.Study) -> int:
    return sum(len(trained_epochs(t)) for t in study.get_trials(deepcopy=False))


def best_so_far(trials: list[FrozenTrial], budget: int) -> dict[str, Any]:
    """Walk the trained epochs in trial order: the best-so-far curve within the budget and where it came from."""
    cum, best, best_trial, curve = 0, float("nan"), None, []
    for trial in sorted(trials, key=lambda t: t.number):
        for _, value in trained_epochs(trial):
            cum += 1
            if cum > budget:
                break
            if math.isnan(best) or value > best:
                best, best_trial = value, trial
            curve.append([cum, round(best, 5)])
    return {"best": best, "trial": best_trial, "curve": curve}


def epochs_to_reach(curve: list[list[float]], target: float) -> int | None:
    return next((int(c) for c, b in curve if b >= target - 1e-9), None)


# ---------------------------------------------------------------------------------------------------------
# One run per strategy and seed


def given_for(strategy: str, args: argparse.Namespace, seed: int, min_resource: int | None = None) -> dict[str, Any]:
    common = dict(space="cnn", epochs=args.max_epochs, subset=args.train, val_size=args.val, data=args.data,
                  seed=seed, weights=None, n_trials=None, timeout=None)
    if strategy == "a_tpe_hyperband":  # the service's defaults, but for the first rung being compared
        return {**common, "engine": "optuna", "sampler": None, "pruner": None, "baseline": None,
                "min_resource": min_resource}
    if strategy == "a_nobaseline":
        return {**common, "engine": "optuna", "sampler": None, "pruner": None, "baseline": False,
                "min_resource": min_resource}
    if strategy == "b_random_nopruning":
        return {**common, "engine": "optuna", "sampler": "random", "pruner": "none", "baseline": False,
                "priors": False}
    if strategy == "b_random_priors":
        return {**common, "engine": "optuna", "sampler": "random", "pruner": "none", "baseline": False,
                "priors": None}
    return {**common, "engine": "kerastuner", "sampler": None, "pruner": None, "baseline": False}


def run_optuna(opened: Any, budget: int) -> None:
    """The service's own worker loop, one finished trial at a time, until the epoch budget is spent."""
    from cifar_hpo.search.runtime.objective import Objective
    from cifar_hpo.search.runtime.worker import run_worker
    from cifar_hpo.storage.counting import count_study_trials

    objective = Objective(opened.settings, opened.split)
    while epochs_used(opened.study) < budget:
        run_worker(opened.study, objective, n_trials=count_study_trials(opened.study).finished + 1)


def run_kerastuner(opened: Any, budget: int, workdir: Path) -> None:
    from cifar_hpo.search.engines.kerastuner.tuner import run_search

    run_search(opened, "hyperband", n_trials=None, timeout=None, directory=workdir / opened.study.study_name,
               root=workdir, stop=lambda study: "budget" if epochs_used(study) >= budget else None)


def run_strategy(strategy: str, args: argparse.Namespace, seed: int, workdir: Path,
                 min_resource: int | None = None, storage_url: str = "memory://") -> dict[str, Any]:
    """One strategy on one seed until its epoch budget is spent. On a database storage, an Optuna run whose
    study exists continues it (its killed trial is failed first; ``resumed`` says so and ``wall_seconds``
    then counts this process only)."""
    from cifar_hpo.search.study_setup import open_hpo_study
    from cifar_hpo.storage import make_storage
    from cifar_hpo.storage.studies import study_exists

    name = f"{run_key(strategy, min_resource)}-s{seed}"
    resumed = storage_url != "memory://" and study_exists(make_storage(storage_url), name)
    if resumed and strategy == "c_kerastuner_hyperband":  # its tuner folder is not resumable here: start over
        optuna.delete_study(study_name=name, storage=make_storage(storage_url))
        shutil.rmtree(workdir / name, ignore_errors=True)
        resumed = False
    start = time.perf_counter()
    opened = open_hpo_study(storage_url, name, given_for(strategy, args, seed, min_resource))
    if strategy == "c_kerastuner_hyperband":
        run_kerastuner(opened, args.budget_epochs, workdir)
    else:
        with warnings.catch_warnings():  # Optuna marks fail_stale_trials experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(opened.study)  # a trial of a stopped run: its epochs still count
        run_optuna(opened, args.budget_epochs)
    wall = time.perf_counter() - start
    trials = opened.study.get_trials(deepcopy=False)
    walk = best_so_far(trials, args.budget_epochs)
    states = [t.state for t in trials]
    best_trial = walk["trial"]
    return {
        "strategy": strategy, "min_resource": min_resource, "key": run_key(strategy, min_resource), "seed": seed,
        "best_val_accuracy": walk["best"],
        "epochs_used": epochs_used(opened.study), "wall_seconds": round(wall, 1), "resumed": resumed,
        "trials": len(trials), "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "infeasible": sum(1 for t in trials if "infeasible" in t.user_attrs),
        "best_trial": None if best_trial is None else best_trial.number,
        "best_is_baseline": bool(best_trial is not None and best_trial.user_attrs.get("baseline")),
        "best_config": None if best_trial is None else dict(best_trial.params),
        "curve": walk["curve"],
        "trial_log": [trial_summary(t) for t in sorted(trials, key=lambda t: t.number)],
    }


def trial_summary(trial: FrozenTrial) -> list[Any]:
    """[number, state, epochs trained, best val accuracy it saw, baseline?, val accuracy per epoch] for looking
    into a run (the per-epoch curves of unpruned trials show how well early epochs rank configurations)."""
    epochs = trained_epochs(trial)
    best = max((v for _, v in epochs), default=None)
    return [trial.number, trial.state.name, len(epochs), None if best is None else round(best, 4),
            bool(trial.user_attrs.get("baseline")), [round(v, 4) for _, v in epochs]]


def run_baseline(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The hand-tuned seed model alone, same split and max epochs (the trainer the objective uses)."""
    import keras

    from cifar_hpo.search.models.cnn import train_cnn
    from cifar_hpo.search.models.data import load_cifar10, split_train_val
    from cifar_hpo.search.runtime.objective import clear_tensorflow_state
    from cifar_hpo.spaces.cnn import BASELINE

    split = split_train_val(load_cifar10(args.data), args.val, args.train, seed)
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    _, result = train_cnn(BASELINE, split, epochs=args.max_epochs, trial=None, seed=seed)
    clear_tensorflow_state()
    return {"seed": seed, "best_val_accuracy": result.best_val_accuracy, "final_val_accuracy": result.val_accuracy[-1],
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "wall_seconds": round(time.perf_counter() - start, 1),
            "config": BASELINE.to_params()}


# ---------------------------------------------------------------------------------------------------------
# Summary, JSON, PNG


def mean_std(values: list[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": round(mean, 5), "std": round(std, 5), "n": len(values)}


def summarize(runs: list[dict[str, Any]], baselines: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    keys = list(dict.fromkeys(key_of(r) for r in runs))
    for key in keys:
        mine = [r for r in runs if key_of(r) == key]
        summary[key] = {field: mean_std([r[field] for r in mine])
                        for field in ("best_val_accuracy", "epochs_used", "wall_seconds", "trials")}
    summary["baseline"] = {"best_val_accuracy": mean_std([b["best_val_accuracy"] for b in baselines]),
                           "final_val_accuracy": mean_std([b["final_val_accuracy"] for b in baselines])}
    # The targets, for each run of the service's default strategy (one per first rung): it reaches random
    # search's final best within half the budget in every seed, and its mean is ahead of random's by more
    # than one standard deviation (the larger of the two strategies' seed-to-seed standard deviations). Means
    # are over the seeds both have run, so a series still under way compares like with like.
    random_runs = {r["seed"]: r for r in runs if r["strategy"] == "b_random_nopruning"}
    after_priors = {r["seed"]: r["best_val_accuracy"] for r in runs if r["strategy"] == "b_random_priors"}
    kerastuner_mean = summary.get("c_kerastuner_hyperband", {}).get("best_val_accuracy", {}).get("mean")
    targets = {}
    for key in (k for k in keys if k.split("@")[0] == "a_tpe_hyperband"):
        mine = summary[key]["best_val_accuracy"]
        key_runs = [r for r in runs if key_of(r) == key]
        paired = sorted({r["seed"] for r in key_runs} & set(random_runs))
        a_paired = mean_std([r["best_val_accuracy"] for r in key_runs if r["seed"] in paired])
        b_paired = mean_std([random_runs[seed]["best_val_accuracy"] for seed in paired])
        reach = []
        for run in (r for r in key_runs if r["seed"] in random_runs):
            b_best = random_runs[run["seed"]]["best_val_accuracy"]
            at = epochs_to_reach(run["curve"], b_best)
            reach.append({"seed": run["seed"], "b_final_best": b_best, "a_reaches_it_at_epoch": at,
                          "within_half_budget": at is not None and at <= budget / 2})
        ahead = margin = None
        if paired:
            margin = round(a_paired["mean"] - b_paired["mean"], 5)
            if len(paired) >= 2:  # one seed has no spread to compare with
                ahead = margin > max(a_paired["std"], b_paired["std"])
        targets[key] = {
            "a_ahead_of_b": None if margin is None else margin > 0,
            "a_ahead_of_b_by_more_than_one_std": ahead, "margin_over_b": margin, "seeds_compared": paired,
            "a_ahead_of_c": None if kerastuner_mean is None or mine.get("mean") is None else mine["mean"] > kerastuner_mean,
            "a_reaches_b_final_within_half_budget": reach,
            "met": bool(ahead and reach and all(r["within_half_budget"] for r in reach)),
            # Not a target: per seed, what TPE + Hyperband adds over random search after the same priors.
            "vs_random_after_priors": [
                {"seed": run["seed"], "margin": round(run["best_val_accuracy"] - after_priors[run["seed"]], 5),
                 "a_reaches_it_at_epoch": epochs_to_reach(run["curve"], after_priors[run["seed"]])}
                for run in key_runs if run["seed"] in after_priors],
        }
    summary["target"] = targets
    summary["min_resource_choice"] = choose_min_resource(targets, summary)
    return summary


def choose_min_resource(targets: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any] | None:
    """The first rung to make the default: among the runs that met the targets, the best mean; if none met
    them, the best mean, said as such."""
    if not targets:
        return None
    met = [k for k, t in targets.items() if t["met"]]
    pool = met or list(targets)
    best = max(pool, key=lambda k: summary[k]["best_val_accuracy"]["mean"] or 0.0)
    rung = int(best.split("@mr")[1]) if "@mr" in best else None
    return {"key": best, "min_resource": rung, "met_targets": bool(met),
            "why": "best mean among the runs that met both targets" if met else "no run met both targets: best mean"}


def machine() -> dict[str, Any]:
    import keras_tuner
    import tensorflow as tf

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "host": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "python": platform.python_version(),
        "tensorflow": tf.__version__, "optuna": optuna.__version__, "keras_tuner": keras_tuner.__version__,
        "git_commit": commit,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(key_of(run) for run in result["runs"]))
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink")
    colours = {key: palette[i % len(palette)] for i, key in enumerate(keys)}
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in result["runs"]:
        if run["curve"]:
            xs, ys = zip(*run["curve"])
            key = key_of(run)
            ax.step(xs, ys, where="post", color=colours[key], linestyle=styles[run["seed"] % len(styles)],
                    label=f"{key} (seed {run['seed']})")
    for base in result["baselines"]:
        ax.axhline(base["best_val_accuracy"], color="grey", linestyle=styles[base["seed"] % len(styles)], linewidth=0.8,
                   label=f"seed baseline, {base['epochs']} epochs (seed {base['seed']})")
    cfg = result["config"]
    ax.set(xlabel="cumulative training epochs", ylabel="best validation accuracy so far", xlim=(0, cfg["budget_epochs"]),
           title=f"cnn space: {cfg['train']} train / {cfg['val']} val, <= {cfg['max_epochs']} epochs per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strategies = args.strategies.split(",")
    config = {"space": "cnn", "data": args.data, "train": args.train, "val": args.val, "max_epochs": args.max_epochs,
              "budget_epochs": args.budget_epochs, "seeds": list(range(args.seeds)),
              "min_resources": args.min_resources}
    state = RunState(args.state, config, fresh=args.fresh, earlier_result=args.out)
    result: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "command": "python benchmarks/search_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": state.data["started"],
        "machine": machine(),
        "config": config,
        "strategies": {s: STRATEGIES[s] for s in strategies},  # plus those of runs an earlier command made (below)
        "definitions": {
            "epochs_used": "training epochs actually run by the strategy's trials (a resumed Hyperband round "
                           "counts only its new epochs); may exceed the budget by the last trial's overshoot",
            "best_val_accuracy": "highest validation accuracy of any epoch within the first budget_epochs epochs",
            "curve": "[cumulative epochs, best-so-far validation accuracy]",
            "trial_log": "[trial number, state, epochs trained, best validation accuracy it reached, baseline, "
                         "validation accuracy per trained epoch]",
            "key": "strategy, with @mrK for a Hyperband strategy run with min_resource K",
        },
        "runs": state.data["runs"], "baselines": state.data["baselines"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        state.save()
        for run in result["runs"]:
            result["strategies"].setdefault(run["strategy"], STRATEGIES.get(run["strategy"], run["strategy"]))
        result["summary"] = summarize(result["runs"], result["baselines"], args.budget_epochs)
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        plot(result, args.out.with_suffix(".png"))  # the curves so far, for a benchmark spread over sessions

    workdir = args.state / "kerastuner"
    finished_here = 0
    for seed in range(args.seeds):
        if not any(b["seed"] == seed for b in result["baselines"]):
            result["baselines"].append(run_baseline(args, seed))
            print(f"seed {seed} baseline: {result['baselines'][-1]['best_val_accuracy']:.4f}", file=sys.stderr)
            save()
        for strategy, min_resource in variants(strategies, args.min_resources):
            key = run_key(strategy, min_resource)
            if any(key_of(r) == key and r["seed"] == seed for r in result["runs"]):
                continue  # finished by an earlier process
            run = run_strategy(strategy, args, seed, workdir, min_resource, state.storage_url)
            result["runs"].append(run)
            print(f"seed {seed} {key}: best {run['best_val_accuracy']:.4f} in {run['epochs_used']} epochs, "
                  f"{run['trials']} trials, {run['wall_seconds']:.0f} s", file=sys.stderr)
            save()
            finished_here += 1
            if args.max_runs is not None and finished_here >= args.max_runs:
                planned = {(run_key(s, k), seed) for seed in range(args.seeds)
                           for s, k in variants(strategies, args.min_resources)}
                left = len(planned - {(key_of(r), r["seed"]) for r in result["runs"]})
                print(f"search_efficiency: stopped after {finished_here} runs (--max-runs); {left} left, "
                      "the same command goes on", file=sys.stderr)
                return 0
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    print(json.dumps(result["summary"], indent=1))
    return 0


class RunState:
    """The runs finished so far and the studies of the run under way, in --state (outside the clone)."""

    def __init__(self, folder: Path, config: dict[str, Any], *, fresh: bool, earlier_result: Path | None = None) -> None:
        self.path = folder / "state.json"
        self.storage_url = f"sqlite:///{folder / 'studies.db'}"
        if fresh and folder.exists():
            for name in ("state.json", "studies.db", "studies.db-wal", "studies.db-shm"):
                (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / "kerastuner", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            if self.data["config"] != config:
                raise SystemExit(f"search_efficiency: {folder} holds a run of another configuration "
                                 f"({self.data['config']}); pass --fresh to discard it or --state NEW_FOLDER")
            print(f"search_efficiency: resuming from {folder} ({len(self.data['runs'])} runs finished)",
                  file=sys.stderr)
        elif not fresh and (earlier := _earlier_result(earlier_result, config)) is not None:
            self.data = {"config": config, "started": earlier["started"], "runs": earlier["runs"],
                         "baselines": earlier["baselines"]}
            print(f"search_efficiency: resuming from {earlier_result} ({len(self.data['runs'])} runs finished; "
                  f"no state in {folder})", file=sys.stderr)
        else:
            self.data = {"config": config, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "runs": [], "baselines": []}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=float) + "\n")


def _earlier_result(result: Path | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """The search_efficiency JSON at ``result`` if this configuration wrote it (else None: not resumed)."""
    try:
        earlier = json.loads(result.read_text()) if result is not None else None
    except (OSError, ValueError):
        return None
    same = isinstance(earlier, dict) and earlier.get("benchmark") == "search_efficiency" and earlier.get("config") == config
    return earlier if same else None


if __name__ == "__main__":
    sys.exit(main())
