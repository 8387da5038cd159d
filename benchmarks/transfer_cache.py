"""Frozen-trunk cache benchmark: the same inception configurations trained with and without the cache.

For each configuration, on a CIFAR-10 subset: seconds per epoch (training + validation; "steady" is the
median of the fine-tuning epochs after the first of its fit call, which also traces the graph), the one-off
seconds spent filling the cache (trunk over the training views and the validation images), and the
validation accuracy, cached and uncached side by side, for each of --seeds seeds (modes alternate, so load
changes hit both). Writes benchmarks/results/transfer_cache.json.

Also recorded per configuration (``compute_bound``): the speedup to expect if epoch time were proportional to
the multiply-accumulates of the convolutions (an uncached epoch runs the whole network forward on training
and validation images and back through the trainable part; a cached one only the trainable part). It is an
estimate, not a hard limit: the uncached epoch also pays for resizing, augmentation and the memory-bound
layers (batch norm, pooling, concatenation) at the trunk's high resolutions, which it does not count, so a
measured speedup can exceed it.

    nice -n 10 .venv/bin/python benchmarks/transfer_cache.py --data /work/assets/cifar10.npz \
        --weights /work/assets/inception_v3_imagenet_notop.weights.h5 --subset 1000 --val-size 1000

The cache fill's own speed (``extraction``): the frozen trunk's images/s in float32 (before) and under the
mixed bfloat16 policy the cache fill uses on a CPU with bf16 (after), per batch size, with the bf16 features'
cosine similarity to float32 (benchmarks/precision.py's extraction, the same measurement). ``--extraction-only``
measures just that and keeps the rest of an existing JSON:

    python benchmarks/transfer_cache.py --data DIR/cifar10.npz --weights DIR/inception_v3_imagenet_notop.weights.h5 \
        --extraction-only [--extract-images 500] [--trunk-batches 16,32,64] [--extract-repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configurations(input_size: int) -> dict[str, Any]:
    from cifar_hpo.spaces.inception import BASELINE

    base = dataclasses.replace(BASELINE, input_size=input_size)
    return {
        "frozen_extractor": dataclasses.replace(base, unfreeze_blocks=0),
        "finetune_top1": dataclasses.replace(base, unfreeze_blocks=1, warmup_epochs=1),
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


def conv_macs_above_cut(config: Any) -> tuple[float, float]:
    """(multiply-accumulates per image of all convolutions, of those above the cut) for random weights."""
    import keras

    from cifar_hpo.search.models.inception import block_name, load_trunk

    trunk = load_trunk(None, config.input_size)
    names = [layer.name for layer in trunk.layers]
    cut = names.index(block_name(config.cut_block))
    total = above = 0.0
    for index, layer in enumerate(trunk.layers):
        if isinstance(layer, keras.layers.Conv2D):
            height, width, filters = layer.output.shape[1:]
            macs = height * width * layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1] * filters
            total += macs
            above += macs if index > cut else 0.0
    return total, above


def mac_speedup_estimate(config: Any, n_train: int, n_val: int) -> dict[str, float]:
    """The per-epoch speedup if time followed convolution MACs (backward ~ 2x forward for trained layers; the
    head is negligible): uncached = train * (1 + 2a) + val, cached = train * 3a + val * a, a = share above the
    cut. ``ceiling`` is that ratio (None for a frozen extractor, where only the head is above the cut)."""
    total, above = conv_macs_above_cut(config)
    share = above / total
    uncached = n_train * (1 + 2 * share) + n_val
    cached = n_train * 3 * share + n_val * share
    return {"share_of_convolution_macs_above_cut": round(share, 4),
            "ceiling": round(uncached / cached, 2) if cached else None}  # None: nothing above the cut but the head


def run_one(config: Any, split: Any, *, epochs: int, weights: str, cached: bool, seed: int) -> dict[str, Any]:
    import keras

    from cifar_hpo.search.models.feature_cache import FeatureCache
    from cifar_hpo.search.models.inception import train_inception
    from cifar_hpo.search.runtime.objective import clear_tensorflow_state

    keras.utils.set_random_seed(seed)
    cache = FeatureCache() if cached else None  # cold, memory only: the fill is part of what is measured
    start = time.perf_counter()
    clock = epoch_clock()
    _, result = train_inception(config, split, epochs=epochs, trial=None, seed=seed, weights=weights, cache=cache,
                                callbacks=[clock])
    wall = time.perf_counter() - start
    # Steady state of the phase that matters, the last fit call (fine-tuning when there is one, else the
    # head-only epochs): its epochs after the first, which also traced the graph.
    last_fit = max(i for i, first in enumerate(clock.first) if first)
    steady = clock.seconds[last_fit + 1:]
    clear_tensorflow_state()
    return {
        "wall_seconds": round(wall, 2),
        "cache_fill_seconds": round(cache.stats.compute_seconds, 2) if cache else 0.0,
        "seconds_per_epoch": round(result.fit_seconds / result.epochs_run, 2),
        "epoch_seconds": [round(s, 2) for s in clock.seconds],
        "steady_seconds_per_epoch": round(statistics.median(steady), 2) if steady else None,
        "train_seconds_per_epoch": round(result.train_seconds / result.epochs_run, 2),
        "train_images_per_s": round(result.images_per_s, 1),
        "val_accuracy": [round(v, 4) for v in result.val_accuracy],
        "best_val_accuracy": round(result.best_val_accuracy, 4),
    }


def ratio(run: dict[str, Any], field: str) -> float | None:
    uncached, cached = run["uncached"][field], run["cached"][field]
    return round(uncached / cached, 2) if uncached and cached else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median speedups and the mean (and spread) of the accuracy difference over seeds."""
    def median(field: str) -> float | None:
        values = [r[field] for r in runs if r[field] is not None]
        return round(statistics.median(values), 2) if values else None

    diffs = [r["val_accuracy_difference_points"] for r in runs]
    return {"seeds": len(runs), "median_speedup_per_epoch": median("speedup_per_epoch"),
            "median_speedup_per_epoch_steady": median("speedup_per_epoch_steady"),
            "median_speedup_wall_including_fill": median("speedup_wall_including_fill"),
            "val_accuracy_difference_points_mean": round(statistics.mean(diffs), 2),
            "val_accuracy_difference_points_std": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else None,
            "best_val_accuracy_uncached_mean": round(statistics.mean(r["uncached"]["best_val_accuracy"] for r in runs), 4),
            "best_val_accuracy_cached_mean": round(statistics.mean(r["cached"]["best_val_accuracy"] for r in runs), 4)}


def measure_extraction(x: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Trunk images/s, float32 (before) vs mixed bf16 (after, what the cache fill uses where the CPU has bf16)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from precision import extraction

    from cifar_hpo.search.models.precision import resolve_here

    batches = [int(b) for b in args.trunk_batches.split(",")]
    section = extraction(x[:args.extract_images], args.weights, batches, args.extract_repeats,
                         lambda line: print(line, flush=True))
    speed = section["median_images_per_s_by_batch"]
    best = {policy: max(by_batch.values()) for policy, by_batch in speed.items()}
    return {**section, "policy_auto_resolves_to": resolve_here("auto"),
            "before_float32_best_images_per_s": best["float32"],
            "after_bf16_best_images_per_s": best["mixed_bfloat16"],
            "after_over_before": round(best["mixed_bfloat16"] / best["float32"], 3)}


def extraction_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    from cifar_hpo.search.models.data import load_cifar10

    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    section = measure_extraction(load_cifar10(args.data).x_train, args)
    section["command"] = "python benchmarks/transfer_cache.py " + " ".join(argv or sys.argv[1:])
    report["extraction"] = section
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"extraction: float32 {section['before_float32_best_images_per_s']} -> bf16 "
          f"{section['after_bf16_best_images_per_s']} images/s ({section['after_over_before']}x); wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a .weights.h5 file")
    parser.add_argument("--subset", type=int, default=1000, help="training images")
    parser.add_argument("--val-size", type=int, default=1000, help="validation images")
    parser.add_argument("--input-size", type=int, default=139)
    parser.add_argument("--epochs", type=int, default=4,
                        help="4: one warm-up and three fine-tuning epochs, two of them steady")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 (the data split stays seed 0)")
    parser.add_argument("--only", choices=("frozen_extractor", "finetune_top1", "finetune_top2"), action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_cache.json")
    parser.add_argument("--extract-images", type=int, default=500, help="images per extraction measurement")
    parser.add_argument("--trunk-batches", default="16,32,64", help="comma-separated extraction batch sizes")
    parser.add_argument("--extract-repeats", type=int, default=2)
    parser.add_argument("--extraction-only", action="store_true",
                        help="measure only the trunk's extraction speed, float32 vs bf16; keep the JSON's other results")
    args = parser.parse_args(argv)
    if args.extraction_only:
        return extraction_only(args, argv)

    import tensorflow as tf

    from cifar_hpo.search.models.data import load_cifar10, split_train_val
    from cifar_hpo.search.models.inception import AUG_VIEWS, check_weights

    check_weights(args.weights)
    split = split_train_val(load_cifar10(args.data), args.val_size, args.subset, 0)
    results: dict[str, Any] = {}
    for name, config in configurations(args.input_size).items():
        if args.only and name not in args.only:
            continue
        row: dict[str, Any] = {"config": config.to_params(),
                               "compute_bound": mac_speedup_estimate(config, len(split.x_train), len(split.x_val)),
                               "runs": []}
        for seed in range(args.seeds):
            modes = ("uncached", "cached") if seed % 2 == 0 else ("cached", "uncached")
            run = {"seed": seed}
            for mode in modes:
                run[mode] = run_one(config, split, epochs=args.epochs, weights=args.weights,
                                    cached=mode == "cached", seed=seed)
                print(name, seed, mode, run[mode], flush=True)
            run["speedup_per_epoch"] = ratio(run, "seconds_per_epoch")
            run["speedup_per_epoch_steady"] = ratio(run, "steady_seconds_per_epoch")
            run["speedup_wall_including_fill"] = ratio(run, "wall_seconds")
            run["val_accuracy_difference_points"] = round(
                100 * (run["cached"]["best_val_accuracy"] - run["uncached"]["best_val_accuracy"]), 2)
            row["runs"].append(run)
        row["summary"] = summarize(row["runs"])
        results[name] = row

    report = {
        "what": "inception configurations trained with and without the frozen-trunk feature cache",
        "data": {"train_images": len(split.x_train), "val_images": len(split.x_val), "input_size": args.input_size,
                 "epochs": args.epochs, "seeds": args.seeds, "augmented_views_cached": AUG_VIEWS,
                 "weights": Path(args.weights).name if args.weights != "imagenet" else "imagenet"},
        "machine": {"cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
                    "platform": platform.platform(), "tensorflow": tf.__version__,
                    "load_average_at_start": os.getloadavg()[0]},
        "command": "python benchmarks/transfer_cache.py " + " ".join(argv or sys.argv[1:]),
        "results": results,
        "extraction": measure_extraction(split.x_train, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
