"""Search quality per unit of compute: which strategy finds the best CNN for the same number of training epochs?

Strategies, each on the `cnn` space with the same data split per seed and an equal budget of training epochs:
  a) the service's default: TPE + Hyperband pruning, seed baseline enqueued first, run through the service's
     own Objective and run_worker (what `hpo search` runs);
  b) random search without pruning (no baseline);
  c) KerasTuner Hyperband through `--engine kerastuner` (cifar_hpo.search.engines.kerastuner; no baseline);
plus the seed baseline trained alone with the same data and max epochs.

Budget: epochs actually trained, counted per trial (a pruned trial counts the epochs it ran; a KerasTuner
Hyperband round that resumes a checkpoint counts only its new epochs). A run starts no trial once the budget
is spent; epochs beyond the budget (the last trial's overshoot) are excluded from its best-so-far curve.
Best-so-far = the highest validation accuracy of any epoch trained so far (pruned trials included).

    python benchmarks/search_efficiency.py --data /path/cifar10.npz            # the issue's default (hours on CPU)
    python benchmarks/search_efficiency.py --data X --train 2000 --val 1000 --max-epochs 4 --budget-epochs 24 --seeds 2

Writes the JSON to --out and a PNG (best-so-far vs cumulative epochs) next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
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
    "b_random_nopruning": "random search, no pruning",
    "c_kerastuner_hyperband": "KerasTuner Hyperband (--engine kerastuner)",
}
# Diagnostics, run only when named in --strategies: how much of (a) is the enqueued baseline?
EXTRA_STRATEGIES = {"a_nobaseline": "TPE + Hyperband pruning without the seed baseline"}
DEFAULT_STRATEGIES = tuple(STRATEGIES)
STRATEGIES.update(EXTRA_STRATEGIES)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search_efficiency.json"


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
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path; the PNG is written next to it")
    args = p.parse_args(argv)
    unknown = sorted(set(args.strategies.split(",")) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if min(args.train, args.val, args.max_epochs, args.budget_epochs, args.seeds) < 1:
        p.error("--train, --val, --max-epochs, --budget-epochs and --seeds must be >= 1")
    return args


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


def given_for(strategy: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    common = dict(space="cnn", epochs=args.max_epochs, subset=args.train, val_size=args.val, data=args.data,
                  seed=seed, weights=None, n_trials=None, timeout=None)
    if strategy == "a_tpe_hyperband":
        return {**common, "engine": "optuna", "sampler": None, "pruner": None, "baseline": None}  # defaults
    if strategy == "a_nobaseline":
        return {**common, "engine": "optuna", "sampler": None, "pruner": None, "baseline": False}
    if strategy == "b_random_nopruning":
        return {**common, "engine": "optuna", "sampler": "random", "pruner": "none", "baseline": False}
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


def run_strategy(strategy: str, args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, Any]:
    from cifar_hpo.search.study_setup import open_hpo_study

    name = f"{strategy}-s{seed}"
    start = time.perf_counter()
    opened = open_hpo_study("memory://", name, given_for(strategy, args, seed))
    if strategy == "c_kerastuner_hyperband":
        run_kerastuner(opened, args.budget_epochs, workdir)
    else:
        run_optuna(opened, args.budget_epochs)
    wall = time.perf_counter() - start
    trials = opened.study.get_trials(deepcopy=False)
    walk = best_so_far(trials, args.budget_epochs)
    states = [t.state for t in trials]
    best_trial = walk["trial"]
    return {
        "strategy": strategy, "seed": seed, "best_val_accuracy": walk["best"],
        "epochs_used": epochs_used(opened.study), "wall_seconds": round(wall, 1),
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
    for strategy in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == strategy]
        if mine:
            summary[strategy] = {key: mean_std([r[key] for r in mine])
                                 for key in ("best_val_accuracy", "epochs_used", "wall_seconds", "trials")}
    summary["baseline"] = {"best_val_accuracy": mean_std([b["best_val_accuracy"] for b in baselines]),
                           "final_val_accuracy": mean_std([b["final_val_accuracy"] for b in baselines])}
    # The issue's target: (a) ahead of (b) and (c) on mean best; (a) reaches (b)'s final best within half the budget.
    a, b, c = (summary.get(s, {}).get("best_val_accuracy", {}).get("mean") for s in DEFAULT_STRATEGIES)
    reach = []
    for run_a in (r for r in runs if r["strategy"] == "a_tpe_hyperband"):
        run_b = next((r for r in runs if r["strategy"] == "b_random_nopruning" and r["seed"] == run_a["seed"]), None)
        if run_b is not None:
            at = epochs_to_reach(run_a["curve"], run_b["best_val_accuracy"])
            reach.append({"seed": run_a["seed"], "b_final_best": run_b["best_val_accuracy"], "a_reaches_it_at_epoch": at,
                          "within_half_budget": at is not None and at <= budget / 2})
    summary["target"] = {
        "a_ahead_of_b": None if a is None or b is None else a > b,
        "a_ahead_of_c": None if a is None or c is None else a > c,
        "a_reaches_b_final_within_half_budget": reach,
    }
    return summary


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

    colours = dict(zip(STRATEGIES, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in result["runs"]:
        if run["curve"]:
            xs, ys = zip(*run["curve"])
            ax.step(xs, ys, where="post", color=colours[run["strategy"]], linestyle=styles[run["seed"] % len(styles)],
                    label=f"{run['strategy']} (seed {run['seed']})")
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
    result: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "command": "python benchmarks/search_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"space": "cnn", "data": args.data, "train": args.train, "val": args.val,
                   "max_epochs": args.max_epochs, "budget_epochs": args.budget_epochs, "seeds": list(range(args.seeds))},
        "strategies": {s: STRATEGIES[s] for s in strategies},
        "definitions": {
            "epochs_used": "training epochs actually run by the strategy's trials (a resumed Hyperband round "
                           "counts only its new epochs); may exceed the budget by the last trial's overshoot",
            "best_val_accuracy": "highest validation accuracy of any epoch within the first budget_epochs epochs",
            "curve": "[cumulative epochs, best-so-far validation accuracy]",
            "trial_log": "[trial number, state, epochs trained, best validation accuracy it reached, baseline, "
                         "validation accuracy per trained epoch]",
        },
        "runs": [], "baselines": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["summary"] = summarize(result["runs"], result["baselines"], args.budget_epochs)
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")

    with tempfile.TemporaryDirectory(prefix="search_efficiency_") as workdir:
        for seed in range(args.seeds):
            result["baselines"].append(run_baseline(args, seed))
            print(f"seed {seed} baseline: {result['baselines'][-1]['best_val_accuracy']:.4f}", file=sys.stderr)
            save()
            for strategy in strategies:
                run = run_strategy(strategy, args, seed, Path(workdir))
                result["runs"].append(run)
                print(f"seed {seed} {strategy}: best {run['best_val_accuracy']:.4f} in {run['epochs_used']} epochs, "
                      f"{run['trials']} trials, {run['wall_seconds']:.0f} s", file=sys.stderr)
                save()
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
