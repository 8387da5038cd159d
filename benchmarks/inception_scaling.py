"""What inception accuracy costs on this machine: validation accuracy vs input size and unfrozen blocks.

The inception space's seed baseline (spaces/inception.py BASELINE: head, learning rates, augmentation 0.5)
with only the input size and the number of unfrozen top blocks changed, trained the way a trial trains it
(search/models/inception.py train_inception under the `auto` precision: the frozen trunk's features cached,
flip test-time augmentation on validation) on a stratified subset, for each size x blocks cell. Per cell: best validation accuracy and its
curve, the cache fill's seconds (the first cell of a size fills the trunk's features below its cut; a later
cell with fewer blocks computes its features from those), steady seconds per fine-tuning epoch, and what the
cell would take on the full split (45,000 / 5,000) if time grew linearly with images: ``projected_full``.

It answers "what would it take" where the 2.5-hour CPU headline (benchmarks/headline_inception.py, 139 px)
stops short of a target: the accuracy gained per step of input size or depth, and its price in minutes.

Resumable: the features live in a disk cache and every finished cell in a state file under --state (default
~/.cache/cifar-hpo/inception_scaling, outside the clone); the same command continues where a stopped one left
off, and a different configuration in the same folder is refused (--fresh discards it).

    python benchmarks/inception_scaling.py --data DIR/cifar10.npz --weights DIR/inception_v3_imagenet_notop.weights.h5 \
        [--sizes 139 175 224] [--blocks 1 2 3] [--subset 10000] [--val-size 2000] [--epochs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from transfer_cache import epoch_clock  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "inception_scaling.json"
DEFAULT_STATE = Path.home() / ".cache" / "cifar-hpo" / "inception_scaling"
FULL_TRAIN, FULL_VAL = 45_000, 5_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz")
    parser.add_argument("--weights", required=True, help="InceptionV3 ImageNet .weights.h5 (include_top=False)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[139, 175, 224], help="input sizes in px")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3], help="top blocks unfrozen")
    parser.add_argument("--subset", type=int, default=10_000, help="training images (default 10000)")
    parser.add_argument("--val-size", type=int, default=2_000, help="validation images (default 2000)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per cell, warm-up included (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--fresh", action="store_true", help="discard what --state holds and start over")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.sizes) < 75 or min(args.blocks) < 0 or min(args.subset, args.val_size, args.epochs) < 1:
        parser.error("--sizes must be >= 75 (InceptionV3's minimum), --blocks >= 0, the rest >= 1")
    return args


def projected_full(cell: dict[str, Any], args: argparse.Namespace, views: int) -> dict[str, float | None]:
    """The cell's minutes on the full split if every cost grew linearly with the images it touches."""
    fill_scale = (FULL_TRAIN * views + 2 * FULL_VAL) / (args.subset * views + 2 * args.val_size)
    epoch_scale = (FULL_TRAIN + 2 * FULL_VAL) / (args.subset + 2 * args.val_size)  # one view + validation, flipped
    epoch = cell["steady_seconds_per_epoch"]
    return {"cache_fill_minutes": round(cell["cache_fill_seconds"] * fill_scale / 60, 1),
            "minutes_per_fine_tuning_epoch": None if epoch is None else round(epoch * epoch_scale / 60, 1)}


def run_cell(size: int, blocks: int, split: Any, cache: Any, args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from cifar_hpo.search.models.inception import train_inception
    from cifar_hpo.search.models.precision import apply_precision
    from cifar_hpo.search.runtime.objective import clear_tensorflow_state
    from cifar_hpo.spaces.inception import BASELINE

    config = dataclasses.replace(BASELINE, input_size=size, unfreeze_blocks=blocks)
    settings = SimpleNamespace(tta="flip", weights=args.weights)
    keras.utils.set_random_seed(args.seed)
    policy = apply_precision("auto")  # as a new study's trial: mixed bf16 on a CPU that has it
    filled_before = cache.stats.compute_seconds
    clock = epoch_clock()
    start = time.perf_counter()
    _, result = train_inception(config, split, epochs=args.epochs, trial=None, seed=args.seed, settings=settings,
                                weights=args.weights, cache=cache, callbacks=[clock])
    wall = time.perf_counter() - start
    last_fit = max(i for i, first in enumerate(clock.first) if first)  # the fine-tuning fit call, if any
    steady = clock.seconds[last_fit + 1:]
    clear_tensorflow_state()
    return {"input_size": size, "unfreeze_blocks": blocks, "config": config.to_params(), "precision": policy,
            "best_val_accuracy": round(result.best_val_accuracy, 4),
            "val_accuracy": [round(v, 4) for v in result.val_accuracy],
            "cache_fill_seconds": round(cache.stats.compute_seconds - filled_before, 1),
            "epoch_seconds": [round(s, 1) for s in clock.seconds],
            "steady_seconds_per_epoch": round(statistics.median(steady), 1) if steady else None,
            "wall_seconds": round(wall, 1), "parameters": result.params,
            "train_images_per_s": round(result.images_per_s, 1)}


def write_result(state: dict[str, Any], args: argparse.Namespace, argv: list[str] | None, complete: bool) -> None:
    from cifar_hpo.search.models.inception import AUG_VIEWS

    result = {
        "benchmark": "inception_scaling",
        "what": "the inception seed baseline at each input size x unfrozen blocks, trained as a trial trains it "
                "(cached trunk features, flip TTA on validation) on a stratified subset",
        "command": "python benchmarks/inception_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": state["config"], "augmented_views": AUG_VIEWS,
        "complete": complete,  # false: the run stopped before every cell; the same command resumes it
        "cells": sorted(state["cells"], key=lambda c: (c["input_size"], c["unfreeze_blocks"])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cifar_hpo.search.models.data import load_cifar10, split_train_val
    from cifar_hpo.search.models.feature_cache import FeatureCache
    from cifar_hpo.search.models.inception import AUG_VIEWS, check_weights

    check_weights(args.weights)
    config = {"sizes": args.sizes, "blocks": args.blocks, "subset": args.subset, "val_size": args.val_size,
              "epochs": args.epochs, "seed": args.seed, "data": Path(args.data).name}
    state_path = args.state / "state.json"
    if args.fresh:
        shutil.rmtree(args.state, ignore_errors=True)
    args.state.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else {"config": config, "cells": []}
    if state["config"] != config:
        raise SystemExit(f"inception_scaling: {args.state} holds a run of another configuration ({state['config']}); "
                         "pass --fresh to discard it or --state NEW_FOLDER")
    split = split_train_val(load_cifar10(args.data), args.val_size, args.subset, args.seed)
    cache = FeatureCache(directory=args.state / "features", max_disk_bytes=None)
    cells = [(size, blocks) for size in args.sizes
             for blocks in sorted(args.blocks, reverse=True)]  # the lowest cut first: higher cuts start from its features
    for size, blocks in cells:
        if any(c["input_size"] == size and c["unfreeze_blocks"] == blocks for c in state["cells"]):
            continue
        cell = run_cell(size, blocks, split, cache, args)
        cell["projected_full"] = projected_full(cell, args, AUG_VIEWS)
        state["cells"].append(cell)
        state_path.write_text(json.dumps(state, indent=1) + "\n")
        # The JSON after every cell, so a run stopped by the clock still leaves what it measured (marked partial).
        write_result(state, args, argv, complete=len(state["cells"]) == len(cells))
        print(f"{size} px, {blocks} blocks: best validation {cell['best_val_accuracy']:.4f}, fill "
              f"{cell['cache_fill_seconds']:.0f} s, {cell['steady_seconds_per_epoch']} s/epoch", flush=True)
    write_result(state, args, argv, complete=len(state["cells"]) == len(cells))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
