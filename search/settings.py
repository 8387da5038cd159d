"""Study settings: what a trial means. Stored in the study's user attrs when it is created, read back by
every worker, and compared with the flags of a resuming command (a difference is a clear error)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.reports.export import TTA_MODES
from cifar_hpo.search.models.precision import PRECISIONS
from cifar_hpo.search.presets import PRESET_NAMES, PRESETS, choose_preset
from cifar_hpo.spaces import SPACE_NAMES, current_version
from cifar_hpo.storage.attrs import FORMAT_ATTR, SETTINGS_ATTR

FORMAT = 1
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "median", "none")
ENGINES = ("optuna", "kerastuner")
# Flags that change how much is run, not what a trial means: a resuming command may change them.
BUDGET_FIELDS = ("n_trials", "timeout")
# The data's location may differ between machines; its fingerprint may not.
LOCAL_FIELDS = ("data", "artifacts")
# What a study written before a field existed meant by it (from_study fills it in): those studies trained in
# float32, without test-time augmentation or priors, and keep meaning that when resumed, reported or retrained.
LEGACY_DEFAULTS: dict[str, Any] = {"precision": "float32", "tta": "none", "priors": False, "space_version": 1,
                                   "preset": "full", "min_resource": 1}

# `hpo retrain --subset all`: the whole training split, whatever subset the study searched on.
ALL_IMAGES = "all"


@dataclass(frozen=True)
class StudySettings:
    space: str = "cnn"
    space_overrides: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # None: CIFAR-10 through keras.datasets
    data_fingerprint: str | None = None
    val_size: int = 5000
    subset: int | None = None
    epochs: int = 20
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "hyperband"
    # Hyperband's first rung (epochs a trial runs before it can be pruned); benchmarks/search_efficiency.py
    # compares 1, 2 and 3 (--min-resources).
    min_resource: int = 1
    baseline: bool = True
    weights: str = "imagenet"
    engine: str = "optuna"
    precision: str = "auto"  # resolved per trial process (search/models/precision.py)
    n_trials: int | None = None
    timeout: float | None = None
    tta: str | None = None  # test-time augmentation of validation and test scoring; None: the space's default
    priors: bool = True  # enqueue the space's strong known recipes after the baseline
    artifacts: str | None = None  # trial models' folder; None: beside a SQLite file (storage/artifacts.py)
    keep_models: int = 3  # models of the top K complete trials are kept; 0: none
    space_version: int | None = None  # the space's version at creation (None: the current one)
    preset: str = "full"  # what sized the study where its flags did not (search/presets.py)

    def __post_init__(self) -> None:
        if self.space_version is None and self.space in SPACE_NAMES:
            object.__setattr__(self, "space_version", current_version(self.space))
        if self.tta is None:  # horizontal flips: each image and its mirror (inception: the mirror's features cached)
            object.__setattr__(self, "tta", "flip")
        checks = [
            (self.tta in TTA_MODES, f"--tta must be one of {list(TTA_MODES)}, but got {self.tta!r}"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {list(SAMPLERS)}, but got {self.sampler!r}"),
            (self.pruner in PRUNERS, f"--pruner must be one of {list(PRUNERS)}, but got {self.pruner!r}"),
            (self.engine in ENGINES, f"--engine must be one of {list(ENGINES)}, but got {self.engine!r}"),
            (self.precision in PRECISIONS,
             f"--precision must be one of {list(PRECISIONS)}, but got {self.precision!r}"),
            (self.epochs >= 1, f"--epochs must be >= 1, but got {self.epochs}"),
            (1 <= self.min_resource <= self.epochs,
             f"--min-resource must be between 1 and --epochs ({self.epochs}), but got {self.min_resource}"),
            (self.min_resource == 1 or (self.pruner == "hyperband" and self.engine == "optuna"),
             "--min-resource applies to the hyperband pruner of the optuna engine; drop it or use --pruner hyperband"),
            (self.val_size >= 10, f"--val-size must be >= 10, but got {self.val_size}"),
            (self.subset is None or self.subset >= 10, f"--subset must be >= 10, but got {self.subset}"),
            (self.n_trials is None or self.n_trials >= 1, f"--n-trials must be >= 1, but got {self.n_trials}"),
            (self.timeout is None or self.timeout > 0, f"--timeout must be > 0 seconds, but got {self.timeout}"),
            (self.keep_models >= 0, f"--keep-models must be >= 0, but got {self.keep_models}"),
            (self.preset in PRESET_NAMES, f"--preset must be one of {list(PRESET_NAMES)}, but got {self.preset!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_attrs(self) -> dict[str, Any]:
        return {SETTINGS_ATTR: dataclasses.asdict(self), FORMAT_ATTR: FORMAT}

    @classmethod
    def from_study(cls, study: optuna.Study) -> "StudySettings":
        attrs = study.user_attrs
        if SETTINGS_ATTR not in attrs:
            raise ConfigError(f"study {study.study_name!r} was not created by hpo (no {SETTINGS_ATTR} attribute)")
        if attrs.get(FORMAT_ATTR, 0) > FORMAT:
            raise ConfigError(f"study {study.study_name!r} was written by a newer hpo (format {attrs[FORMAT_ATTR]}); upgrade cifar-hpo")
        stored = {**LEGACY_DEFAULTS, **attrs[SETTINGS_ATTR]}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


# --subset without --val-size: about one validation image for every 9 training images (CIFAR-10's own
# 45,000/5,000), within these bounds, so a quick study is not dominated by validating 5,000 images.
SUBSET_VAL_RATIO = 9
SUBSET_VAL_MIN, SUBSET_VAL_MAX = 500, 5000


def default_val_size(subset: int | None) -> int:
    """The validation size of a new study that gave no --val-size (5000, or proportionate to --subset)."""
    if subset is None:
        return StudySettings.val_size
    return min(SUBSET_VAL_MAX, max(SUBSET_VAL_MIN, round(subset / SUBSET_VAL_RATIO)))


def resolve(stored: StudySettings | None, given: dict[str, Any]) -> StudySettings:
    """Settings for this command: the stored ones, or new ones from ``given`` (the flags actually passed).

    A resuming command may repeat a setting or leave it out; a different value is a ConfigError.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if stored is None:
        preset = choose_preset(given)
        given = {**PRESETS[preset].fill(given), "preset": preset} if preset in PRESETS else {**given, "preset": preset}
        if "subset" in given and "val_size" not in given:
            given["val_size"] = default_val_size(given["subset"])
        return StudySettings(**given)
    conflicts = [
        f"{name}: study has {getattr(stored, name)!r}, command asks {value!r}"
        for name, value in given.items()
        if name not in BUDGET_FIELDS + LOCAL_FIELDS and getattr(stored, name) != value
    ]
    if conflicts:
        raise ConfigError(
            "settings differ from the existing study (" + "; ".join(conflicts) + "); "
            "drop those flags to resume it, or choose a new --study name"
        )
    return dataclasses.replace(stored, **{k: v for k, v in given.items() if k in BUDGET_FIELDS + LOCAL_FIELDS})


def run_timeout(given_timeout: float | None, settings: StudySettings) -> float | None:
    """This command's time limit: --timeout if given, else the study's preset's (None: none)."""
    if given_timeout is not None:
        return given_timeout
    preset = PRESETS.get(settings.preset)
    return preset.timeout if preset is not None else None


def absolute_data_path(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's random draws: a function of the study's seed and the trial's number only."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class _SeededPerTrial:
    """Reseeds the sampler's random draws for every trial from (study seed, trial number).

    Why per trial rather than per process: trial numbers are unique study-wide, so workers on any machine
    never replay each other's draws, and a serial study draws the same configurations however often it is
    resumed (the history the model-based phase sees is then the same too).
    """

    _study_seed: int
    # The trial this process asked for last: a Ctrl-C inside Optuna's ask, where the worker has not seen the
    # trial yet, would otherwise leave it RUNNING until its heartbeat goes stale (search/runtime/worker.py).
    last_trial_number: int | None = None

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.last_trial_number = trial.number
        # Optuna offers reseed_rng() (a fresh OS seed) but no reseed_rng(seed), so its RandomState is seeded here.
        self._rng.rng.seed(trial_seed(self._study_seed, trial.number))  # type: ignore[attr-defined]
        super().before_trial(study, trial)  # type: ignore[misc]


class TrialSeededRandomSampler(_SeededPerTrial, optuna.samplers.RandomSampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._study_seed = seed


class TrialSeededTPESampler(_SeededPerTrial, optuna.samplers.TPESampler):
    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._study_seed = seed
        # The start-up (random) draws: TPESampler.before_trial passes each trial on to it, so it reseeds too.
        # Optuna offers no public way to give TPESampler its independent sampler, hence the private attribute.
        self._random_sampler = TrialSeededRandomSampler(seed)


def make_sampler(settings: StudySettings) -> optuna.samplers.BaseSampler:
    """TPE (multivariate; constant liar so parallel workers spread out) or random, seeded per trial.

    Every process of every worker builds the same sampler: its draws depend on the trial number, not on
    which worker or process asks (see _SeededPerTrial).
    """
    if settings.sampler == "random":
        return TrialSeededRandomSampler(settings.seed)
    # Optuna's 10 random start-up trials are half of a 20-trial study; start modelling after a quarter.
    startup = max(5, min(10, (settings.n_trials or 40) // 4))
    # group=True: the cnn space has conditional parameters (per-optimizer learning rates, padding only where
    # it fits); grouped multivariate TPE models each set of parameters that occur together.
    return TrialSeededTPESampler(settings.seed, multivariate=True, group=True, constant_liar=True,
                                 n_startup_trials=startup)


# Hyperband keeps the best 1/3 at each rung (the KerasTuner engine's Hyperband uses the same factor).
HYPERBAND_REDUCTION_FACTOR = 3


def make_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (default), median, or none. Steps are epochs completed (1..epochs)."""
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=settings.min_resource, max_resource=settings.epochs,
                                              reduction_factor=HYPERBAND_REDUCTION_FACTOR)
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()
