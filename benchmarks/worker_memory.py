"""Trial isolation: resident memory of one worker process across many small trials.

Runs --trials trials of the `cnn` space (random sampler over the default bounds, so architectures vary as in
a real study) through the service's Objective in one process, and records the resident set size (VmRSS)
after every trial. Target: RSS after 20 trials within 1.5x of RSS after 2.

    python benchmarks/worker_memory.py --data PATH/cifar10.npz [--trials 20] [--subset 1000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optuna  # noqa: E402

from search.data import load_cifar10, split_train_val  # noqa: E402
from search.objective import Objective  # noqa: E402
from search.settings import StudySettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "worker_memory.json"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 .npz (default: keras download)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = StudySettings(epochs=args.epochs, subset=args.subset, val_size=args.val, pruner="none", seed=0)
    split = split_train_val(load_cifar10(args.data), args.val, args.subset, 0)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rss: list[float] = []
    study.optimize(Objective(settings, split), n_trials=args.trials, catch=(Exception,),
                   callbacks=[lambda s, t: rss.append(round(rss_mib(), 1))])
    states = [t.state.name for t in study.trials]
    result = {
        "benchmark": "worker_memory",
        "command": "python benchmarks/worker_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "trials": args.trials, "subset": args.subset, "epochs": args.epochs,
        "states": {state: states.count(state) for state in sorted(set(states))},
        "rss_mib_after_each_trial": rss,
        "rss_ratio_last_to_second": round(rss[-1] / rss[1], 3),
        "target": "rss_ratio_last_to_second <= 1.5",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("states", "rss_ratio_last_to_second")}), rss)


if __name__ == "__main__":
    main()
