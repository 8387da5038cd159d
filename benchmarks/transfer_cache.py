"""Frozen-trunk cache benchmark: the same inception configurations trained with and without the cache.

For each configuration, on a CIFAR-10 subset: seconds per epoch (training + validation; "steady" leaves
out the first epoch of each fit call, which also traces the graph), the one-off
seconds spent filling the cache (trunk over the training views and the validation images), and the
validation accuracy, cached and uncached side by side. Writes benchmarks/results/transfer_cache.json.

    nice -n 10 .venv/bin/python benchmarks/transfer_cache.py --data /work/assets/cifar10.npz \
        --weights /work/assets/inception_v3_imagenet_notop.weights.h5 --subset 1000 --val-size 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configurations(input_size: int) -> dict[str, Any]:
    from spaces.inception import BASELINE

    base = dataclasses.replace(BASELINE, input_size=input_size)
    return {
        "frozen_extractor": dataclasses.replace(base, unfreeze_blocks=0),
        "finetune_top2": dataclasses.replace(base, unfreeze_blocks=2, warmup_epochs=1),
    }


def epoch_clock() -> Any:
    """A Keras callback recording each epoch's wall seconds (training + validation) and whether it was the
    first epoch of a ``fit`` call (which also traces the train function: not steady state)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.first: list[bool] = []
            self._fresh = True

        def on_train_begin(self, logs: Any = None) -> None:
            self._fresh = True

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.first.append(self._fresh)
            self._fresh = False

    return EpochClock()


def run_one(config: Any, split: Any, *, epochs: int, weights: str, cached: bool, seed: int) -> dict[str, Any]:
    import keras

    from search.feature_cache import FeatureCache
    from search.inception_model import train_inception
    from search.objective import clear_tensorflow_state

    keras.utils.set_random_seed(seed)
    cache = FeatureCache() if cached else None  # cold, memory only: the fill is part of what is measured
    start = time.perf_counter()
    clock = epoch_clock()
    _, result = train_inception(config, split, epochs=epochs, trial=None, seed=seed, weights=weights, cache=cache,
                                callbacks=[clock])
    wall = time.perf_counter() - start
    steady = [s for s, first in zip(clock.seconds, clock.first) if not first]
    clear_tensorflow_state()
    return {
        "wall_seconds": round(wall, 2),
        "cache_fill_seconds": round(cache.stats.compute_seconds, 2) if cache else 0.0,
        "seconds_per_epoch": round(result.fit_seconds / result.epochs_run, 2),
        "epoch_seconds": [round(s, 2) for s in clock.seconds],
        "steady_seconds_per_epoch": round(sum(steady) / len(steady), 2) if steady else None,
        "train_seconds_per_epoch": round(result.train_seconds / result.epochs_run, 2),
        "train_images_per_s": round(result.images_per_s, 1),
        "val_accuracy": [round(v, 4) for v in result.val_accuracy],
        "best_val_accuracy": round(result.best_val_accuracy, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a .weights.h5 file")
    parser.add_argument("--subset", type=int, default=1000, help="training images")
    parser.add_argument("--val-size", type=int, default=1000, help="validation images")
    parser.add_argument("--input-size", type=int, default=139)
    parser.add_argument("--epochs", type=int, default=3, help="3: each phase of finetune_top2 has a steady epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("frozen_extractor", "finetune_top2"), action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_cache.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from search.data import load_cifar10, split_train_val
    from search.inception_model import AUG_VIEWS, check_weights

    check_weights(args.weights)
    split = split_train_val(load_cifar10(args.data), args.val_size, args.subset, args.seed)
    results: dict[str, Any] = {}
    for name, config in configurations(args.input_size).items():
        if args.only and name not in args.only:
            continue
        row: dict[str, Any] = {"config": config.to_params()}
        for mode in ("uncached", "cached"):
            row[mode] = run_one(config, split, epochs=args.epochs, weights=args.weights, cached=mode == "cached",
                                seed=args.seed)
            print(name, mode, row[mode], flush=True)
        row["speedup_per_epoch"] = round(row["uncached"]["seconds_per_epoch"] / row["cached"]["seconds_per_epoch"], 2)
        if row["cached"]["steady_seconds_per_epoch"] and row["uncached"]["steady_seconds_per_epoch"]:
            row["speedup_per_epoch_steady"] = round(
                row["uncached"]["steady_seconds_per_epoch"] / row["cached"]["steady_seconds_per_epoch"], 2)
        row["speedup_wall_including_fill"] = round(row["uncached"]["wall_seconds"] / row["cached"]["wall_seconds"], 2)
        row["val_accuracy_difference_points"] = round(
            100 * (row["cached"]["best_val_accuracy"] - row["uncached"]["best_val_accuracy"]), 2)
        results[name] = row

    report = {
        "what": "inception configurations trained with and without the frozen-trunk feature cache",
        "data": {"train_images": len(split.x_train), "val_images": len(split.x_val), "input_size": args.input_size,
                 "epochs": args.epochs, "seed": args.seed, "augmented_views_cached": AUG_VIEWS,
                 "weights": Path(args.weights).name if args.weights != "imagenet" else "imagenet"},
        "machine": {"cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
                    "platform": platform.platform(), "tensorflow": tf.__version__,
                    "load_average_at_start": os.getloadavg()[0]},
        "command": "python benchmarks/transfer_cache.py " + " ".join(argv or sys.argv[1:]),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
