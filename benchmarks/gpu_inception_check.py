"""GPU check of the inception space: a short `hpo search --space inception` on full CIFAR-10, as a user runs it.

One command for a lent GPU machine (a few minutes of device time): the service's own search (`hpo search`,
recycled trial processes, the frozen-trunk disk cache in a fresh directory) with the input size fixed at
--input-size, then a JSON of what it measured: the device, the cache fill (trunk images/s), per trial its
state, parameters, training images/s and best validation accuracy, and the study's best. Nothing is
tuned to the GPU: the space's defaults apart from the input size.

    python benchmarks/gpu_inception_check.py --data DIR/cifar10.npz \
        --weights DIR/inception_v3_imagenet_notop.weights.h5 [--input-size 139|299] [--n-trials 4] [--epochs 3]

At 139 px (the default) the seed baseline runs first; at any other size it lies outside the fixed space and
is not enqueued (the study says so). On a CPU it runs too (use --subset/--val-size to keep it short): the
JSON then lists no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = ROOT / "benchmarks" / "results" / "gpu_inception_check.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 .npz (default: keras download)")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a .weights.h5 file")
    parser.add_argument("--input-size", type=int, default=139, help="fixed input size in px (default 139)")
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, help="training images (default: all 45,000 after validation)")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=420.0, help="stop starting trials after SEC (default 420)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def trial_row(trial) -> dict:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name, "baseline": bool(attrs.get("baseline")),
            "params": trial.params, "best_val_accuracy": trial.value,
            "val_accuracy_per_epoch": [round(v, 4) for _, v in sorted(trial.intermediate_values.items())],
            "train_images_per_s": attrs.get("train_images_per_s"), "wall_seconds": attrs.get("wall_seconds"),
            "feature_cache": attrs.get("feature_cache"), "infeasible": attrs.get("infeasible")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import optuna
    import tensorflow as tf

    from cifar_hpo.search.cli import main as hpo

    gpus = tf.config.list_physical_devices("GPU")
    work = Path(tempfile.mkdtemp(prefix="hpo-gpu-check-"))
    os.environ["HPO_CACHE_DIR"] = str(work / "cache")  # a cold cache: its fill is part of what is measured
    space = work / "space.toml"
    space.write_text(f"[inception]\ninput_size = {{value = {args.input_size}}}\n")
    url = f"sqlite:///{work / 'check.db'}"
    command = ["search", "--space", "inception", "--study", "gpu-check", "--storage", url,
               "--weights", args.weights, "--space-config", str(space), "--epochs", str(args.epochs),
               "--n-trials", str(args.n_trials), "--val-size", str(args.val_size), "--timeout", str(args.timeout),
               *(["--data", args.data] if args.data else []), *(["--subset", str(args.subset)] if args.subset else [])]
    start = time.perf_counter()
    code = hpo(command)
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name="gpu-check", storage=url).trials
    fills = [t.user_attrs.get("feature_cache", {}) for t in trials]
    fill_seconds = sum(f.get("compute_seconds", 0.0) for f in fills)
    finished = [t for t in trials if t.value is not None]
    result = {
        "benchmark": "gpu_inception_check",
        "command": "python benchmarks/gpu_inception_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "hpo_command": "hpo " + " ".join(command),
        "exit_code": code,
        "machine": {"gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
                    "cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__},
        "input_size": args.input_size, "epochs": args.epochs, "wall_seconds": round(wall, 1),
        "cache_fill_seconds": round(fill_seconds, 1),
        "best_val_accuracy": max((t.value for t in finished), default=None),
        "trials": [trial_row(t) for t in trials],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("exit_code", "machine", "wall_seconds", "cache_fill_seconds",
                                              "best_val_accuracy")}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
