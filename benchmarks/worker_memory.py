"""Trial isolation: resident memory of the process running trials, across many small trials.

Runs the same study twice side by side, --trials trials of the `cnn` space each (random sampler over the
default bounds, so architectures vary as in a real study), once with every trial in one process
(`--recycle-after 0`) and once with the service's default recycling of the trial process; every trial records
the resident memory (VmRSS) of the process that ran it, after clean-up (user attr worker_rss_mib).
Target: memory after trial 20 within 1.5x of memory after trial 2.

    python benchmarks/worker_memory.py --data PATH/cifar10.npz [--trials 20] [--subset 1000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import optuna

from cifar_hpo.search.cli import main as hpo
from cifar_hpo.search.cli.search import DEFAULT_RECYCLE_AFTER

RESULTS = Path(__file__).resolve().parent / "results" / "worker_memory.json"


def run(recycle_after: int, args: argparse.Namespace, folder: Path) -> dict:
    url = f"sqlite:///{folder / f'recycle-{recycle_after}.db'}"
    code = hpo(["search", "--study", "memory", "--storage", url, "--space", "cnn", "--sampler", "random",
                "--pruner", "none", "--no-baseline", "--n-trials", str(args.trials), "--epochs", str(args.epochs),
                "--subset", str(args.subset), "--val-size", str(args.val), "--recycle-after", str(recycle_after),
                *(["--data", args.data] if args.data else [])])
    trials = optuna.load_study(study_name="memory", storage=url).trials
    rss = [t.user_attrs.get("worker_rss_mib") for t in trials]
    trained = [r for r in rss if r is not None]
    return {"recycle_after": recycle_after, "exit_code": code,
            "states": {s: [t.state.name for t in trials].count(s) for s in {t.state.name for t in trials}},
            "params_of_each_trial": [t.user_attrs.get("params") for t in trials],
            "rss_mib_after_each_trial": rss,
            "rss_ratio_last_to_second": round(trained[-1] / trained[1], 3) if len(trained) > 1 else None,
            "rss_max_mib": max(trained) if trained else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 .npz (default: keras download)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hpo-memory-"))
    runs = [run(0, args, folder), run(DEFAULT_RECYCLE_AFTER, args, folder)]
    result = {
        "benchmark": "worker_memory",
        "command": "python benchmarks/worker_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "trials": args.trials, "subset": args.subset, "epochs": args.epochs, "runs": runs,
        "target": "rss_ratio_last_to_second <= 1.5 with the default recycling",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(r["recycle_after"], r["rss_ratio_last_to_second"], r["rss_mib_after_each_trial"])


if __name__ == "__main__":
    main()
