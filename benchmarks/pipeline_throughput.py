"""Training throughput of the service's pipeline against a plain ``model.fit`` on the same arrays.

Both sides train the same model (the seed baseline unless --space-params says otherwise) with the same batch
size on the same in-memory uint8 arrays, validating every epoch; runs alternate (plain, service, plain, ...)
so machine noise hits both. Also measures the service's per-trial overhead: the time a trial spends
outside ``fit`` (suggest, build, pipeline, clear_session, storage writes) as a share of the trial.

    python benchmarks/pipeline_throughput.py --data PATH/cifar10.npz [--train 10000] [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import optuna  # noqa: E402

from cifar_hpo.search.models.cnn import build_cnn, compile_cnn  # noqa: E402
from cifar_hpo.search.models.data import load_cifar10, split_train_val  # noqa: E402
from cifar_hpo.search.runtime.objective import Objective, clear_tensorflow_state  # noqa: E402
from cifar_hpo.search.settings import StudySettings  # noqa: E402
from cifar_hpo.spaces.cnn import BASELINE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_throughput.json"


def plain_fit(split, epochs: int, seed: int) -> float:
    """The reference: model.fit on numpy arrays, no tf.data, no callbacks. Returns fit seconds."""
    keras.utils.set_random_seed(seed)
    mean, variance = split.train_channel_stats
    model = build_cnn(BASELINE, mean, variance, seed=seed)
    compile_cnn(model, BASELINE, len(split.x_train), epochs)
    start = time.perf_counter()
    one_hot = lambda y: keras.utils.to_categorical(y, 10)  # noqa: E731 (the cnn recipe's label-smoothed loss)
    model.fit(split.x_train, one_hot(split.y_train), batch_size=BASELINE.batch_size, epochs=epochs, verbose=0,
              validation_data=(split.x_val, one_hot(split.y_val)), validation_batch_size=512)
    seconds = time.perf_counter() - start
    clear_tensorflow_state()
    return seconds


def service_trial(split, epochs: int, seed: int) -> tuple[float, float]:
    """One trial through the service's objective on an in-memory study: (fit seconds, whole trial seconds)."""
    # float32 and no test-time flips: the same arithmetic and validation work as the plain fit above
    settings = StudySettings(epochs=epochs, seed=seed, pruner="none", n_trials=1, tta="none", precision="float32",
                             priors=False)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(BASELINE.to_params())
    objective = Objective(settings, split)
    start = time.perf_counter()
    study.optimize(objective, n_trials=1)
    trial_seconds = time.perf_counter() - start
    return study.trials[0].user_attrs["fit_seconds"], trial_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 .npz (default: keras download)")
    parser.add_argument("--train", type=int, default=10000, help="training images (stratified subset)")
    parser.add_argument("--val", type=int, default=2000, help="validation images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    split = split_train_val(load_cifar10(args.data), val_size=args.val, subset=args.train, seed=0)
    plain_fit(split, 1, 0)  # warm-up: first-call graph tracing and allocator growth hit whichever runs first
    plain, service, trial = [], [], []
    for repeat in range(args.repeats):
        plain.append(plain_fit(split, args.epochs, repeat))
        fit_s, trial_s = service_trial(split, args.epochs, repeat)
        service.append(fit_s)
        trial.append(trial_s)
    images = len(split.x_train) * args.epochs
    plain_ips = images / statistics.median(plain)
    service_ips = images / statistics.median(service)
    overhead = [(t - f) / t for f, t in zip(service, trial)]
    result = {
        "benchmark": "pipeline_throughput",
        "command": "python benchmarks/pipeline_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "model": "seed baseline (356,810 parameters)", "batch_size": BASELINE.batch_size,
        "train_images": len(split.x_train), "val_images": len(split.x_val), "epochs": args.epochs,
        "repeats": args.repeats,
        "plain_fit_seconds": [round(s, 3) for s in plain],
        "service_fit_seconds": [round(s, 3) for s in service],
        "service_trial_seconds": [round(s, 3) for s in trial],
        "plain_images_per_s": round(plain_ips, 1),
        "service_images_per_s": round(service_ips, 1),
        "throughput_ratio": round(service_ips / plain_ips, 3),
        "throughput_ratio_best_runs": round(min(plain) / min(service), 3),  # least disturbed run of each
        "overhead_share_median": round(statistics.median(overhead), 4),
        "targets": {"throughput_ratio": ">= 0.95", "overhead_share": "<= 0.03"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("plain_images_per_s", "service_images_per_s", "throughput_ratio",
                                             "throughput_ratio_best_runs", "overhead_share_median")}))


if __name__ == "__main__":
    main()
