"""Mixed precision on this CPU: training images/s and validation accuracy, bf16 against float32, and the
InceptionV3 trunk's feature extraction (images/s per batch size, and how close bf16 features are to float32).

Training: cnn-space models (--models; default the seed baseline, spaces/cnn.py BASELINE, and a stronger
batch-norm model: depth 3, 2 convs per block, 32 filters x2, batch norm, global average pooling, batch 128,
constant learning rate; or the study's priors, prior_vgg_bn and prior_resnet, whose schedules settle the last
epoch's accuracy), each trained with the same data and epochs under both policies. Repeat ``r`` uses seed ``--seed + r`` for both policies (same
seed, same initial weights and batches: a paired comparison; across repeats the seed changes, so the spread
of accuracy over repeats shows the seed noise the bf16-float32 difference has to be read against).
Precisions alternate within each repeat (and which goes first alternates between repeats) so load changes on
a shared machine hit both. images/s is over the epochs after the first (the first also traces the graph);
the median over repeats is reported with every value. The batch-norm model needs a few hundred steps before
its moving statistics (momentum 0.99) make validation in inference mode meaningful: keep
--train/128 * --epochs above ~150.

Extraction: the frozen trunk below the BASELINE cut (mixed8, 139 px), as the feature cache runs it, over
--extract-images images for each --trunk-batches size under each policy; cosine similarity and relative
error of the bf16 features (stored as the cache stores them, STORE_DTYPE) against the float32 ones.

    PYTHONPATH=... python benchmarks/precision.py --data /work/assets/cifar10.npz \
        --weights /work/assets/inception_v3_imagenet_notop.weights.h5 [--train 2000 --val 1000 --epochs 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifar_hpo.search.models.cnn import build_cnn, cnn_inputs, compile_cnn  # noqa: E402
from cifar_hpo.search.models.data import load_cifar10, split_train_val  # noqa: E402
from cifar_hpo.search.models.feature_cache import STORE_DTYPE  # noqa: E402
from cifar_hpo.search.models.precision import BF16_CPU_FLAGS, cpu_flags, resolve  # noqa: E402
from cifar_hpo.search.models.training import EpochTimer, fit_tracked  # noqa: E402
from cifar_hpo.search.runtime.objective import clear_tensorflow_state  # noqa: E402
from cifar_hpo.spaces.cnn import BASELINE, PRIORS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
POLICIES = ("float32", "mixed_bfloat16")
MODELS = {
    "baseline": BASELINE,
    "batchnorm": dataclasses.replace(BASELINE, depth=3, convs_per_block=2, base_filters=32, filter_growth=2.0,
                                     padding="same", batch_norm=True, head="global_avg", dense_dropout=0.3,
                                     batch_size=128),
    # the study's priors (spaces/cnn.py PRIORS): warm-up + cosine / one-cycle end each run at a small learning
    # rate, so the last epoch's validation accuracy is settled enough to compare the two precisions by
    **{f"prior_{name}": config for name, config in PRIORS.items()},
}
DEFAULT_MODELS = ("baseline", "batchnorm")


def train_once(config: Any, split: Any, policy: str, epochs: int, seed: int) -> dict[str, Any]:
    """train_cnn's recipe (same builder, compile, pipeline, fit_tracked) with per-epoch timing."""
    clear_tensorflow_state()
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    mean, variance = split.train_channel_stats
    model = build_cnn(config, mean, variance, seed=seed)
    compile_cnn(model, config, len(split.x_train), epochs)
    inputs = cnn_inputs(config, split, seed=seed, tta="none")
    timer = EpochTimer()  # before the validation scorer: it times training only
    result = fit_tracked(model, inputs.train, None, epochs=epochs, n_train=len(split.x_train), trial=None,
                         callbacks=[timer, *inputs.callbacks])
    steady = timer.train_seconds[1:] or timer.train_seconds
    out = {
        "policy": policy, "output_dtype": str(model.output.dtype),
        "images_per_s": round(len(split.x_train) * len(steady) / sum(steady), 1),
        "first_epoch_s": round(timer.train_seconds[0], 2),
        "val_accuracy": round(result.val_accuracy[-1], 4), "best_val_accuracy": round(result.best_val_accuracy, 4),
        "train_loss": round(result.history["loss"][-1], 4),
    }
    clear_tensorflow_state()
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    speed = [r["images_per_s"] for r in runs]
    acc = [r["val_accuracy"] for r in runs]
    return {"median_images_per_s": round(statistics.median(speed), 1), "images_per_s": speed,
            "median_val_accuracy": round(statistics.median(acc), 4), "val_accuracy": acc,
            "val_accuracy_spread": round(max(acc) - min(acc), 4)}


def training(split: Any, epochs: int, repeats: int, seed: int, log: Any,
             models: tuple[str, ...] = DEFAULT_MODELS) -> dict[str, Any]:
    runs: dict[str, dict[str, list]] = {m: {p: [] for p in POLICIES} for m in models}
    for repeat in range(repeats):
        order = POLICIES if repeat % 2 == 0 else POLICIES[::-1]
        for name in models:
            config = MODELS[name]
            for policy in order:
                run = train_once(config, split, policy, epochs, seed + repeat)
                run["seed"] = seed + repeat
                runs[name][policy].append(run)
                log(f"repeat {repeat + 1} {name} {policy}: {run}")
    out = {}
    for name, by_policy in runs.items():
        summary = {p: summarize(r) for p, r in by_policy.items()}
        f32, bf16 = summary["float32"], summary["mixed_bfloat16"]
        paired = list(zip(by_policy["float32"], by_policy["mixed_bfloat16"]))
        pairs = [b["images_per_s"] / f["images_per_s"] for f, b in paired]
        points = [round(100 * (b["val_accuracy"] - f["val_accuracy"]), 2) for f, b in paired]
        out[name] = {
            "config": dataclasses.asdict(MODELS[name]), "runs": by_policy, "summary": summary,
            "ratio_bf16_over_float32": round(bf16["median_images_per_s"] / f32["median_images_per_s"], 3),
            "ratio_per_repeat": [round(r, 3) for r in pairs],
            "val_accuracy_points_bf16_minus_float32": round(100 * (bf16["median_val_accuracy"] - f32["median_val_accuracy"]), 2),
            "val_accuracy_points_per_seed": points,
            # the paired difference's mean and its standard error over seeds: what a 0.5-point bound is read against
            "val_accuracy_points_mean": round(statistics.mean(points), 2),
            "val_accuracy_points_standard_error": (round(statistics.stdev(points) / len(points) ** 0.5, 2)
                                                   if len(points) > 1 else None),
        }
    return out


def extraction(x: np.ndarray, weights: str, batches: list[int], repeats: int, log: Any) -> dict[str, Any]:
    """The trunk below the BASELINE cut at 139 px, as cut_features runs it (features cast to STORE_DTYPE).

    Both trunks are built first; then, per repeat and batch size, the policies alternate (which goes first
    alternates too), and the median images/s over repeats is kept."""
    from cifar_hpo.search.models.inception import TRUNK_BATCH, build_inception
    from cifar_hpo.spaces.inception import BASELINE as INCEPTION

    pixels = x.astype("float32")
    clear_tensorflow_state()
    bottoms = {}
    for policy in POLICIES:  # no clear_session in between: it would reset the policy, not the models
        keras.mixed_precision.set_global_policy(policy)
        bottoms[policy] = build_inception(INCEPTION, weights).bottom
    runs: dict[str, dict[int, list[float]]] = {p: {b: [] for b in batches} for p in POLICIES}
    features: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for batch in batches:
            for policy in (POLICIES if (repeat + batch) % 2 == 0 else POLICIES[::-1]):
                if repeat == 0:
                    bottoms[policy].predict(pixels[:batch], batch_size=batch, verbose=0)  # trace at this size
                start = time.perf_counter()
                out = bottoms[policy].predict(pixels, batch_size=batch, verbose=0)
                runs[policy][batch].append(round(len(pixels) / (time.perf_counter() - start), 1))
                log(f"extraction repeat {repeat + 1} {policy} batch {batch}: {runs[policy][batch][-1]} images/s")
                if batch == TRUNK_BATCH or policy not in features:
                    features[policy] = np.asarray(out).astype(STORE_DTYPE).astype("float32")
    clear_tensorflow_state()
    speed = {p: {b: statistics.median(v) for b, v in by_batch.items()} for p, by_batch in runs.items()}
    a = features["float32"].reshape(len(x), -1)
    b = features["mixed_bfloat16"].reshape(len(x), -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    best = {p: max(s, key=s.get) for p, s in speed.items()}
    return {
        "input_size": INCEPTION.input_size, "cut": f"mixed{INCEPTION.cut_block}", "images": len(x),
        "store_dtype": STORE_DTYPE, "trunk_batch": TRUNK_BATCH, "repeats": repeats,
        "median_images_per_s_by_batch": speed, "images_per_s_runs": runs,
        "best_batch": best,
        "ratio_bf16_over_float32_at_trunk_batch": round(speed["mixed_bfloat16"].get(TRUNK_BATCH, float("nan"))
                                                        / speed["float32"].get(TRUNK_BATCH, float("nan")), 3),
        "cosine_bf16_vs_float32": {"median": round(float(np.median(cosine)), 5), "min": round(float(cosine.min()), 5)},
        "relative_l2_error": round(float(np.linalg.norm(a - b) / np.linalg.norm(a)), 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="cifar10.npz")
    parser.add_argument("--weights", help="InceptionV3 notop .weights.h5 (extraction is skipped without it)")
    parser.add_argument("--train", type=int, default=2000, help="training images (stratified subset)")
    parser.add_argument("--val", type=int, default=1000, help="validation images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated models to train, of {', '.join(MODELS)} (default %(default)s)")
    parser.add_argument("--extract-images", type=int, default=500)
    parser.add_argument("--trunk-batches", default="16,32,64", help="comma-separated extraction batch sizes")
    parser.add_argument("--extract-repeats", type=int, default=2)
    parser.add_argument("--sections", default="training,extraction",
                        help="what to measure (comma-separated); with --merge, other sections stay as in --out")
    parser.add_argument("--merge", action="store_true", help="update these sections of an existing --out file")
    parser.add_argument("--shared", action="store_true", help="note in the JSON that other jobs shared the machine")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    if not models or set(models) - set(MODELS):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    unknown = sorted(set(sections) - {"training", "extraction"})
    if unknown or ("extraction" in sections and not args.weights):
        parser.error(f"--sections: unknown {unknown}" if unknown else "the extraction section needs --weights")
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if args.merge and out.exists() else {}
    result.update({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "bf16_flags": sorted(BF16_CPU_FLAGS & cpu_flags()), "auto_resolves_to": resolve("auto")},
        "versions": {"keras": keras.__version__, "tensorflow": __import__("tensorflow").__version__},
    })
    command = "python benchmarks/precision.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    data = load_cifar10(args.data)
    for name in sections:
        start, load_before = time.perf_counter(), os.getloadavg()
        if name == "training":
            split = split_train_val(data, args.val, args.train, args.seed)
            section = {"scale": {"train": len(split.x_train), "val": len(split.x_val), "epochs": args.epochs,
                                 "repeats": args.repeats, "seeds": [args.seed + r for r in range(args.repeats)]},
                       "models": training(split, args.epochs, args.repeats, args.seed, log, models)}
        else:
            batches = [int(b) for b in args.trunk_batches.split(",") if b.strip()]
            section = extraction(data.x_train[:args.extract_images], args.weights, batches, args.extract_repeats, log)
        result[name] = {"command": command, "shared_machine": args.shared,
                        "loadavg_before": [round(v, 2) for v in load_before], **section,
                        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                        "wall_seconds": round(time.perf_counter() - start, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
