"""`hpo report`, `hpo export`, `hpo retrain`: rank a study's configurations, test the best, hand one over.

Light at import (the CLI imports every command module): Optuna, matplotlib and TensorFlow load inside
the command functions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifar_hpo.search.cli.search import STORAGE_HELP, add_storage_flags, default_storage
from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.storage.masking import mask_url

DEFAULT_TOP = 5
DEFAULT_SEEDS = 2
# The saved model's contract, written into MODEL.metrics.json: resizing and scaling are layers of the model.
MODEL_INPUT = "uint8 or float 0-255, 32x32x3 (RGB, shape (N, 32, 32, 3))"
MODEL_OUTPUT = "10 class probabilities (softmax), in class_names order"
STDOUT = "-"
BEST_CONFIG = "best_config.json"  # as in a report folder (reports/build.py)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1, but got {value}")


def _load(url: str, name: str) -> tuple[Any, Any]:
    """An existing study and its settings (never creates a storage file or a study)."""
    from cifar_hpo.search.settings import StudySettings
    from cifar_hpo.storage import make_storage, open_study

    study = open_study(make_storage(url, create=False), name)
    return study, StudySettings.from_study(study)


# ------------------------------------------------------------------------------------------- report
def study_storages(studies: list[str], storages: list[str] | None) -> list[tuple[str, str]]:
    """(study, storage URL) pairs: one --storage for every study, or one per --study in the same order (studies
    from different machines or databases compared in one report)."""
    storages = storages or [default_storage()]
    if len(storages) == 1:
        return [(name, storages[0]) for name in studies]
    if len(storages) != len(studies):
        raise ConfigError(f"give one --storage for all studies or one per --study, in the same order "
                          f"({len(studies)} studies, {len(storages)} storages)")
    return list(zip(studies, storages))


def run_report(args: argparse.Namespace) -> int:
    import dataclasses

    from cifar_hpo.reports.build import study_ranking, write_report
    from cifar_hpo.reports.ranking import rank_trials
    from cifar_hpo.reports.render import ReportMeta
    from cifar_hpo.search.models.data import CLASS_NAMES
    from cifar_hpo.search.evaluate import (choose_candidates, evaluate_candidates, evaluate_kept_models,
                                           evaluation_seeds, kept_models, stored_evaluations,
                                           stored_model_evaluations)
    from cifar_hpo.search.study_setup import load_study_data
    from cifar_hpo.storage.artifacts import store_for

    _positive("--top", args.top)
    _positive("--epochs", args.epochs)
    evaluate = args.evaluate or args.retrain
    places = list(dict.fromkeys(study_storages(args.study, args.storage)))
    opened = [(*_load(url, name), url) for name, url in places]
    plans = []
    for study, settings, url in opened:  # every study and its data checked before any training
        trials = study.get_trials(deepcopy=False)
        seeds = evaluation_seeds(settings, args.seeds)
        candidates = choose_candidates(trials, rank_trials(trials), args.top, settings, args.epochs,
                                       with_baseline=not args.no_baseline)
        # The trials' own kept models are evaluated as they are (no retraining), unless --retrain.
        store = None if args.retrain else store_for(args.artifacts or settings.artifacts, url)
        models = kept_models(study, settings, candidates, store)
        retrained = [c for c in candidates if c.key not in models]
        stored = stored_evaluations(study, candidates, seeds, settings.data_fingerprint)
        own = stored_model_evaluations(study, models, settings.data_fingerprint)
        stored.update(own)
        missing = evaluate and (any(key not in own for key in models)
                                or any(len(stored.get(c.key, [])) < len(seeds) for c in retrained))
        data = load_study_data(settings, args.data, f"study {study.study_name!r}") if missing else None
        plans.append((study, settings, candidates, seeds, stored, data, models, store, retrained))
    rankings, images = [], {}
    for study, settings, candidates, seeds, evaluations, data, models, store, retrained in plans:
        if data is not None:
            def on_run(text: str, s: str = study.study_name) -> None:
                print(f"hpo report: {s}: {text}", file=sys.stderr)

            evaluations = {**evaluate_candidates(study, settings, data, retrained, seeds, on_run=on_run),
                           **evaluate_kept_models(study, settings, data, candidates, models, store, on_run=on_run)}
        rankings.append(study_ranking(study, dataclasses.asdict(settings), evaluations, CLASS_NAMES, images))
    meta = ReportMeta(generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      storage=", ".join(dict.fromkeys(mask_url(url) for _, url in places)), top_k=args.top, class_names=list(CLASS_NAMES),
                      folder=args.out)
    written = write_report(args.out, rankings, images, meta)
    for r in rankings:
        best = f"{r.rows[0].val_accuracy:.4f} (trial {r.rows[0].trial})" if r.rows else "none"
        line = f"study {r.study}: {r.counts.complete} complete, {r.counts.pruned} pruned, {r.counts.failed} failed; best val accuracy {best}"
        # the test result of the configuration validation chose (the best of K on the test set would flatter)
        tested = {t.trial: t for t in r.test_rows}
        t = next((tested[row.trial] for row in r.rows if row.trial in tested), None)
        if t is not None:
            line += (f"; test accuracy of the chosen configuration {t.mean:.4f} +- {t.std:.4f} over {t.seeds} "
                     f"seed(s) ({t.key})")
        print(line)
    print(f"report written to {written.folder} ({len(written.files)} files: report.md, report.html, ranking.csv, "
          f"ranking.json, {sum(f.endswith('.png') for f in written.files)} PNG)")
    return ExitCode.OK


# ------------------------------------------------------------------------------------------- export
def run_export(args: argparse.Namespace) -> int:
    import dataclasses

    from optuna.trial import TrialState

    from cifar_hpo.reports.export import build_export, write_export
    from cifar_hpo.reports.ranking import rank_trials

    study, settings = _load(args.storage, args.study)
    trials = study.get_trials(deepcopy=False)
    if args.trial is not None:
        matches = [t for t in trials if t.number == args.trial]
        if not matches:
            raise ConfigError(f"study {args.study!r} has no trial {args.trial} (trials 0..{len(trials) - 1})")
        trial = matches[0]
        if trial.state != TrialState.COMPLETE:
            print(f"hpo export: note: trial {trial.number} is {trial.state.name.lower()}, not complete", file=sys.stderr)
    else:
        rows = rank_trials(trials)
        if not rows:
            raise ConfigError(f"study {args.study!r} has no completed trial to export")
        trial = next(t for t in trials if t.number == rows[0].trial)
    document = build_export(args.study, trial, dataclasses.asdict(settings))
    value = f"val accuracy {trial.value:.4f}, " if trial.value is not None else ""
    epochs = f"{document['epochs']} epoch{'' if document['epochs'] == 1 else 's'}"
    what = f"trial {trial.number} of study {args.study} ({settings.space}, {value}{epochs})"
    if args.output == STDOUT:  # `-o -`: the document is the output; the note goes to stderr
        print(json.dumps(document, indent=2))
        print(f"hpo export: wrote {what} to stdout", file=sys.stderr)
        return ExitCode.OK
    output = args.output or (BEST_CONFIG if args.trial is None else f"trial_{trial.number}_config.json")
    path = write_export(output, document)
    print(f"exported {what} to {path if args.output else f'./{path} (in the current directory)'}; retrain it with: "
          f"hpo retrain --config {shlex.quote(str(path))} --out model.keras")
    return ExitCode.OK


# ------------------------------------------------------------------------------------------ retrain
def subset_arg(text: str) -> int | str:
    """`--subset N|all`: a positive image count, or all of the training split."""
    from cifar_hpo.search.settings import ALL_IMAGES  # only when --subset is given: keeps the CLI's start-up light

    if text == ALL_IMAGES:
        return ALL_IMAGES
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or 'all', but got {value}")
    return value


def metrics_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name[: -len(".keras")] + ".metrics.json")


def run_retrain(args: argparse.Namespace) -> int:
    from cifar_hpo.reports.evaluation import format_report_text
    from cifar_hpo.reports.export import read_export
    from cifar_hpo.search.models.data import CLASS_NAMES
    from cifar_hpo.search.cli.progress import EpochProgress
    from cifar_hpo.search.evaluate import retrain_exported, settings_for_export
    from cifar_hpo.search.models.phase import phase_sink
    from cifar_hpo.search.settings import ALL_IMAGES
    from cifar_hpo.search.study_setup import load_study_data

    _positive("--epochs", args.epochs)
    out = Path(args.out).expanduser()
    if out.suffix != ".keras":
        raise ConfigError(f"--out must end in .keras (Keras' native format), but got {str(out)!r}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    exported = read_export(args.config)
    # All training images unless --subset says otherwise: retraining the winner is the last step, and a
    # study searched on a quick subset would otherwise hand over a model trained on that subset.
    subset = ALL_IMAGES if args.subset is None else args.subset
    settings = settings_for_export(exported, args.data, args.epochs, args.weights, subset=subset)
    if settings.space == "inception":
        from cifar_hpo.search.models.inception import check_weights

        check_weights(settings.weights)
    data = load_study_data(settings, args.data, f"config {args.config!r}")
    seed = exported.seed if args.seed is None else args.seed
    n_train = (settings.subset or len(data.y_train) - settings.val_size)
    searched = exported.data.get("subset")
    trains_on = ("training images: all" if settings.subset is None else f"training images: {settings.subset}")
    trains_on += f" ({n_train} images, {settings.val_size} held out for validation"
    trains_on += f"; the study searched on {searched})" if searched and searched != settings.subset else ")"
    print(f"hpo retrain: {exported.space} config (study {exported.study}, trial {exported.trial}): {trains_on}, "
          f"{settings.epochs} epoch{'' if settings.epochs == 1 else 's'}, seed {seed}", file=sys.stderr)
    progress = EpochProgress(settings.epochs, "hpo retrain")
    try:
        with phase_sink(progress):
            model, result, run = retrain_exported(exported, settings, data, seed, reporter=progress)
    finally:
        progress.close()
    model.save(out)
    metrics = {
        "config": str(Path(args.config).expanduser().resolve()), "model": str(out.resolve()),
        "space": exported.space, "study": exported.study, "trial": exported.trial, "params": exported.params,
        "epochs": settings.epochs, "seed": seed, "data": settings.data, "data_fingerprint": data.fingerprint(),
        "training_subset": settings.subset, "searched_subset": exported.data.get("subset"),  # None: all images
        "test_accuracy": run.accuracy, "classification_report": run.report, "confusion_matrix": run.confusion,
        "class_names": list(CLASS_NAMES), "n_params": result.params, "fit_seconds": round(result.fit_seconds, 3),
        "history": result.history, "best_val_accuracy": result.best_val_accuracy,
        "input": MODEL_INPUT, "output": MODEL_OUTPUT,
    }
    metrics_file = metrics_path(out)
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_report_text(run.report, CLASS_NAMES))
    print(f"\ntest accuracy {run.accuracy:.4f}; model {out}; metrics {metrics_file}")
    print(usage_example(out))
    return ExitCode.OK


def usage_example(model: Path) -> str:
    """How to use the saved model: the preprocessing is inside it, so it takes raw pixels."""
    from cifar_hpo.search.models.data import CLASS_NAMES

    return (f"\nThe model takes raw pixels ({MODEL_INPUT}); do not divide by 255. For example:\n"
            "    import keras, numpy as np\n"
            f"    model = keras.models.load_model({str(model)!r})\n"
            "    (_, _), (x_test, _) = keras.datasets.cifar10.load_data()  # uint8, shape (10000, 32, 32, 3)\n"
            "    classes = model.predict(x_test[:8]).argmax(axis=-1)  # " + ", ".join(
                f"{i} {name}" for i, name in enumerate(CLASS_NAMES)))


# ----------------------------------------------------------------------------------------- register
def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report", help="rank a study's configurations; optionally retrain the best and evaluate them on the test set",
        description="Write report.md, a self-contained report.html, ranking.csv/json, best_config.json and PNG plots. "
        "--evaluate scores the top configurations and the baseline on the test set: a trial whose trained model the "
        "study kept (hpo search --keep-models) is evaluated as it is, the others are retrained with several seeds; "
        "--retrain retrains them all. Results are stored in the study and reused by the next report.")
    report.add_argument("--study", action="append", required=True, metavar="NAME",
                        help="study name; repeat to compare studies side by side")
    report.add_argument("--storage", action="append", metavar="URL",
                        help=STORAGE_HELP + "; repeat it, once per --study in the same order, to compare studies "
                        "kept in different storages")
    report.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                        help=f"configurations shown and evaluated (default {DEFAULT_TOP})")
    report.add_argument("--out", default="report", metavar="DIR", help="output folder (default ./report)")
    report.add_argument("--no-baseline", action="store_true",
                        help="with --evaluate: leave the seed baseline out (it is evaluated by default, for the gain)")
    report.add_argument("--evaluate", action="store_true",
                        help="evaluate the top K and the baseline on the test set: the trials' own kept models "
                        "directly, the others retrained on the training split")
    report.add_argument("--retrain", action="store_true",
                        help="with or without --evaluate: retrain every configuration with --seeds seeds, even "
                        "where the trial's model was kept")
    report.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                        help=f"seeds per retrained configuration (default {DEFAULT_SEEDS})")
    report.add_argument("--artifacts", metavar="DIR",
                        help="where the study's artifact store (its kept models) is on this machine, if not at the "
                        "stored path")
    report.add_argument("--epochs", type=int, metavar="E",
                        help="epochs for --evaluate (default: each trial's best epoch)")
    report.add_argument("--data", metavar="PATH", help="where the study's data is on this machine (checked by fingerprint)")
    report.set_defaults(run=run_report)

    export = subparsers.add_parser(
        "export", help="write one trial's configuration as a versioned JSON file",
        description="A self-contained config: space, parameters, data settings and fingerprint, epochs, seed, versions.")
    add_storage_flags(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, metavar="N", help="trial number")
    which.add_argument("--best", action="store_true", help="the best trial by validation accuracy (default)")
    export.add_argument("-o", "--output", metavar="FILE.json",
                        help=f"file to write, or - for stdout (default: ./{BEST_CONFIG}, or ./trial_N_config.json "
                        "with --trial N)")
    export.set_defaults(run=run_export)

    retrain = subparsers.add_parser(
        "retrain", help="train an exported configuration, evaluate it on the test set, save the model",
        description="Trains on all training images (less the study's validation split; --subset N for fewer), "
        "prints the classification report on the test set, writes MODEL.keras and MODEL.metrics.json beside it. "
        "The model takes raw 0-255 pixels: its preprocessing is inside it.")
    retrain.add_argument("--config", required=True, metavar="FILE.json", help="a file written by hpo export")
    retrain.add_argument("--data", metavar="PATH", help="where the data is on this machine (checked by fingerprint)")
    retrain.add_argument("--epochs", type=int, metavar="E", help="epochs (default: the config's)")
    retrain.add_argument("--seed", type=int, metavar="S", help="training seed (default: the config's)")
    retrain.add_argument("--subset", type=subset_arg, metavar="N|all",
                         help="train on N images of the training split instead of all of it (default: all, whatever "
                              "subset the study searched on; the validation images stay the same)")
    retrain.add_argument("--weights", metavar="imagenet|PATH", help="inception space: where the ImageNet weights are")
    retrain.add_argument("--out", required=True, metavar="MODEL.keras", help="model file to write")
    retrain.set_defaults(run=run_retrain)
