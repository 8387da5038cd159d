"""`hpo search --engine kerastuner`: the same spaces searched by KerasTuner, every trial recorded in the study.

KerasTuner (Hyperband, Bayesian optimisation or random search) picks the configurations; the space's bounds
become KerasTuner hyperparameters of the same names, and each KerasTuner trial is written into the Optuna
study as it runs (same parameter names and distributions, validation accuracy per epoch as intermediate
values, the objective's user attrs plus ``engine="kerastuner"``), so `hpo report` and the dashboard read
both engines alike. KerasTuner's own files (oracle state, checkpoints) go to ``./kerastuner/<slug>-<hash>/``
(storage.names.safe_filename of the study name: any name, ``..`` or ``/abs`` included, stays inside
``./kerastuner/``).

How a KerasTuner trial maps onto an Optuna trial:
- COMPLETE: it trained to the study's ``epochs`` (every trial of ``bayesian`` and ``random``; Hyperband's
  last rounds). Its value is the best validation accuracy of its curve.
- PRUNED: Hyperband stopped it before ``epochs`` (``kerastuner_epochs`` in its user attrs), or the
  configuration cannot be built (user attr ``infeasible``; KerasTuner is told accuracy 0.0, the worst).
- A Hyperband round that continues an earlier trial's weights is a new Optuna trial (user attrs
  ``continues_trial``, ``initial_epoch``); it carries the earlier trial's curve for the epochs before
  ``initial_epoch``, so its curve, ``history``, ``best_epoch`` and ``epochs_run`` cover the whole run, while
  ``epochs_trained``, ``fit_seconds`` and ``wall_seconds`` count only this trial's own work.
- FAIL: an error or an interrupt during training (the search stops after 5 failures in a row).

Spaces with a model builder here (``cnn``) are trained by a KerasTuner HyperModel, so Hyperband resumes the
earlier round's checkpoint as KerasTuner does; other spaces (``inception``) go through the space's trainer
(cifar_hpo.search.runtime.objective.TRAINERS), the Optuna engine's own code path, and a Hyperband round retrains from scratch.
One search process per study and working directory (a lock file refuses a second one).
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras_tuner as kt
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.storage.attrs import TUNER_ATTR
from cifar_hpo.spaces import build_space, get_space_module
from cifar_hpo.spaces.bounds import Bound, Choice, FloatRange, IntRange, space_bounds
from cifar_hpo.storage.names import safe_filename

_logger = logging.getLogger(__name__)

ENGINE = "kerastuner"
TUNERS = ("hyperband", "bayesian", "random")
DEFAULT_TUNER = "hyperband"
WORKDIR = "kerastuner"
OBJECTIVE = "val_accuracy"
MAX_CONSECUTIVE_FAILURES = 5  # as the Optuna engine's worker loop
HYPERBAND_FACTOR = 3  # as search.settings.make_pruner


# --------------------------------------------------------------------------------------------------------
# Translation of a space's bounds (pure: no model, no TensorFlow graph)


def optuna_distribution(bound: Bound) -> BaseDistribution:
    """The distribution Optuna records for ``bound`` when the Optuna engine suggests it (see spaces.bounds)."""
    if isinstance(bound, IntRange):
        return IntDistribution(bound.low, bound.high, log=bound.log, step=bound.step)
    if isinstance(bound, FloatRange):
        return FloatDistribution(bound.low, bound.high, log=bound.log, step=bound.step)
    if isinstance(bound, Choice):
        return CategoricalDistribution(bound.choices)
    raise TypeError(f"unknown bound type {type(bound).__name__} ({bound!r})")


def optuna_distributions(space: Any) -> dict[str, BaseDistribution]:
    return {name: optuna_distribution(bound) for name, bound in space_bounds(space).items()}


def kerastuner_hyperparameters(space: Any) -> kt.HyperParameters:
    """The space as KerasTuner hyperparameters with the same names; a single-valued bound becomes Fixed."""
    hp = kt.HyperParameters()
    for name, bound in space_bounds(space).items():
        if isinstance(bound, Choice):
            kinds = {type(value) for value in bound.choices}
            if len(kinds) != 1 or kinds.pop() not in (int, float, str, bool):
                raise ConfigError(f"--engine kerastuner: choices of {name!r} must all be ints, floats, strings or "
                                  f"booleans of one type (KerasTuner's rule), but got {list(bound.choices)}")
            if len(bound.choices) == 1:
                hp.Fixed(name, bound.choices[0])
            else:
                hp.Choice(name, list(bound.choices))
        elif bound.low == bound.high:
            hp.Fixed(name, bound.low)
        elif isinstance(bound, IntRange):
            hp.Int(name, bound.low, bound.high, step=None if bound.log else bound.step,
                   sampling="log" if bound.log else "linear")
        else:
            hp.Float(name, bound.low, bound.high, step=bound.step, sampling="log" if bound.log else "linear")
    return hp


def params_from_values(space: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The space's parameters from KerasTuner's values (without its ``tuner/...`` entries), typed and on grid."""
    params: dict[str, Any] = {}
    for name, bound in space_bounds(space).items():
        value = values[name]
        if isinstance(bound, IntRange):
            value = int(value)
        elif isinstance(bound, FloatRange):
            value = float(value)
            if bound.step is not None:  # KerasTuner's grid arithmetic leaves float noise (1.7500000000000002)
                value = round(bound.low + round((value - bound.low) / bound.step) * bound.step, 10)
            value = min(max(value, bound.low), bound.high)
        elif isinstance(bound, Choice):  # KerasTuner stores booleans as 1/0: give back the space's own object
            same = [c for c in bound.choices if c == value]
            value = next((c for c in same if type(c) is type(value)), same[0] if same else value)
        params[name] = value
    return params


# --------------------------------------------------------------------------------------------------------
# Recording into the Optuna study


class ReportOnly:
    """Stands for an Optuna trial in PruningCallback: reports each epoch, never prunes (KerasTuner decides)."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:  # trainers record extras (e.g. feature_cache)
        self.trial.set_user_attr(key, value)


class StudyRecorder:
    """Writes KerasTuner trials into the Optuna study while they run (live in the dashboard)."""

    def __init__(self, study: optuna.Study, distributions: dict[str, BaseDistribution], tuner: str) -> None:
        self.study = study
        self.distributions = distributions
        self.tuner = tuner

    def begin(self, params: dict[str, Any], attrs: dict[str, Any]) -> optuna.trial.Trial:
        """A RUNNING trial with ``params``; the enqueued seed baseline is taken when these are its params."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting and waiting[0].user_attrs.get("baseline") and waiting[0].system_attrs.get("fixed_params") == params:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": none is needed here
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask(self.distributions)  # pops the oldest WAITING trial: the baseline
        else:
            template = optuna.trial.create_trial(state=TrialState.RUNNING, params=params,
                                                 distributions=self.distributions)
            # Study.add_trial returns no id; the storage call it wraps does (one process per study, see lock).
            trial_id = self.study._storage.create_new_trial(self.study._study_id, template_trial=template)
            trial = optuna.trial.Trial(self.study, trial_id)
        for key, value in {"engine": ENGINE, TUNER_ATTR: self.tuner, **attrs}.items():
            trial.set_user_attr(key, value)
        return trial

    def predecessor(self, kerastuner_trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The latest recorded trial of a KerasTuner trial id (Hyperband continues its checkpoint)."""
        matches = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                   if t.user_attrs.get("kerastuner_trial_id") == kerastuner_trial_id]
        return matches[-1] if matches else None

    def carry_curve(self, trial: optuna.trial.Trial, predecessor: optuna.trial.FrozenTrial, epochs: int) -> None:
        """Copy the earlier round's intermediate values for steps 1..epochs (the weights this trial starts from)."""
        for step, value in sorted(predecessor.intermediate_values.items()):
            if step <= epochs:
                trial.report(value, step)
        trial.set_user_attr("continues_trial", predecessor.number)

    def finish(self, trial: optuna.trial.Trial, result: Any, *, complete: bool, epochs_trained: int,
               wall_seconds: float) -> None:
        for key, value in result.user_attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("epochs_trained", epochs_trained)
        trial.set_user_attr("wall_seconds", round(wall_seconds, 3))
        if complete:
            self.study.tell(trial, result.best_val_accuracy)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)

    def infeasible(self, trial: optuna.trial.Trial, message: str) -> None:
        trial.set_user_attr("infeasible", message)
        self.study.tell(trial, state=TrialState.PRUNED)

    def fail(self, trial: optuna.trial.Trial, message: str) -> None:
        trial.set_user_attr("error", message[:500])
        self.study.tell(trial, state=TrialState.FAIL)

    def fail_orphans(self) -> int:
        """RUNNING trials of this engine left by a killed process (the lock proves none is alive here)."""
        orphans = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.user_attrs.get("engine") == ENGINE]
        for orphan in orphans:
            self.study.tell(orphan.number, state=TrialState.FAIL)
        return len(orphans)


# --------------------------------------------------------------------------------------------------------
# Training a trial


def _build_cnn(config: Any, stats: tuple[Any, Any], n_train: int, epochs: int, seed: int) -> Any:
    from cifar_hpo.search.models.cnn import build_cnn, compile_cnn

    model = build_cnn(config, *stats, seed=seed)
    compile_cnn(model, config, n_train, epochs)  # the schedule spans the study's epochs, as in the Optuna engine
    return model


# Spaces whose model KerasTuner builds and fits itself (Hyperband then resumes checkpoints natively):
# space -> builder(config, (mean, variance), n_train, max_epochs, seed) -> compiled model. The config must
# have ``batch_size``. Other spaces are trained by their trainer (cifar_hpo.search.runtime.objective.TRAINERS).
BUILDERS: dict[str, Callable[..., Any]] = {"cnn": _build_cnn}


@dataclass
class _Active:
    trial: optuna.trial.Trial
    config: Any
    seed: int
    result: Any = None


@dataclass
class SearchContext:
    """What every trial of one search needs; built once per process."""

    settings: Any
    split: Any
    tuner_name: str
    recorder: StudyRecorder
    space: Any = None
    module: Any = None
    stats: tuple[Any, Any] | None = None
    active: _Active | None = None
    stop: Callable[[], str | None] = lambda: None
    on_trial_end: Callable[[], None] = lambda: None
    failures_in_a_row: int = 0
    ran: int = 0
    stopped_because: str | None = None

    def __post_init__(self) -> None:
        self.space = build_space(self.settings.space, self.settings.space_overrides)
        self.module = get_space_module(self.settings.space)

    @property
    def builder(self) -> Callable[..., Any] | None:
        return BUILDERS.get(self.settings.space)


class _StopSearch(Exception):
    """Raised before KerasTuner creates a trial once the budget (n_trials, timeout, a caller's stop) is met."""


class SpaceHyperModel(kt.HyperModel):
    """Builds and fits the space's model for the running trial (spaces listed in BUILDERS)."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(name=f"hpo_{ctx.settings.space}")
        self.ctx = ctx

    def build(self, hp: kt.HyperParameters) -> Any:
        import keras

        ctx = self.ctx
        if ctx.active is None or ctx.builder is None:
            raise kt.errors.FatalError("SpaceHyperModel.build runs only inside a recorded trial")
        keras.utils.set_random_seed(ctx.active.seed)  # KerasTuner cleared the session just before
        if ctx.stats is None:
            ctx.stats = ctx.split.train_channel_stats
        return ctx.builder(ctx.active.config, ctx.stats, len(ctx.split.x_train), ctx.settings.epochs,
                           ctx.active.seed)

    def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
        from cifar_hpo.search.models.data import make_dataset
        from cifar_hpo.search.models.training import EpochTimer, PruningCallback, TrainResult, steps_per_epoch

        ctx, active = self.ctx, self.ctx.active
        assert active is not None  # build() checked it
        split, batch_size = ctx.split, active.config.batch_size
        initial = int(kwargs.get("initial_epoch", 0))
        epochs = int(kwargs.get("epochs", ctx.settings.epochs))
        if initial:  # resume the learning-rate schedule where the earlier round stopped
            model.optimizer.iterations.assign(initial * steps_per_epoch(len(split.x_train), batch_size))
        train_ds = make_dataset(split.x_train, split.y_train, batch_size, shuffle=True, seed=active.seed)
        val_ds = make_dataset(split.x_val, split.y_val, 512, shuffle=False)
        timer, report = EpochTimer(), PruningCallback(ReportOnly(active.trial))
        start = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial, verbose=0,
                            shuffle=False, callbacks=[timer, report, *kwargs.get("callbacks", [])])
        active.result = TrainResult(
            history={k: [float(v) for v in vs] for k, vs in history.history.items()},
            params=int(model.count_params()), fit_seconds=time.perf_counter() - start,
            train_seconds=sum(timer.train_seconds), train_images=len(split.x_train) * len(timer.train_seconds),
        )
        return history


def whole_curve(result: Any, predecessor: optuna.trial.FrozenTrial | None, initial: int) -> Any:
    """This round's result with the earlier round's first ``initial`` epochs in front (history, best_epoch)."""
    before = (predecessor.user_attrs.get("history") or {}) if predecessor is not None else {}
    if not initial or any(len(before.get(k, [])) < initial for k in result.history):
        return result  # no earlier curve to carry: keep this round's own
    from cifar_hpo.search.models.training import TrainResult

    history = {k: list(before[k][:initial]) + list(v) for k, v in result.history.items()}
    return TrainResult(history=history, params=result.params, fit_seconds=result.fit_seconds,
                       train_seconds=result.train_seconds, train_images=result.train_images)


class _RecordingMixin:
    """Overrides of KerasTuner's Tuner: budget checks, and one recorded Optuna trial per KerasTuner trial."""

    ctx: SearchContext

    def _populate_initial_space(self) -> None:
        # The space is declared up front (kerastuner_hyperparameters); KerasTuner would otherwise build a
        # model with default values only to discover it.
        hp = self.oracle.get_space()  # type: ignore[attr-defined]
        self.oracle.update_space(hp)  # type: ignore[attr-defined]

    def pre_create_trial(self) -> None:
        reason = self.ctx.stop()
        if reason:
            self.ctx.stopped_because = reason
            raise _StopSearch(reason)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)  # type: ignore[misc]
        self.ctx.on_trial_end()

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = self.ctx
        values = trial.hyperparameters.values
        params = params_from_values(ctx.space, values)
        epochs = int(values.get("tuner/epochs", ctx.settings.epochs))
        initial = int(values.get("tuner/initial_epoch", 0)) if ctx.builder is not None else 0
        attrs: dict[str, Any] = {"kerastuner_trial_id": trial.trial_id, "kerastuner_epochs": epochs,
                                 "initial_epoch": initial}
        for key in ("bracket", "round"):
            if f"tuner/{key}" in values:
                attrs[f"hyperband_{key}"] = int(values[f"tuner/{key}"])
        otrial = ctx.recorder.begin(params, attrs)
        predecessor = ctx.recorder.predecessor(values.get("tuner/trial_id", "")) if initial else None
        if predecessor is not None:
            ctx.recorder.carry_curve(otrial, predecessor, initial)
        start = time.perf_counter()
        try:
            config = ctx.module.suggest(optuna.trial.FixedTrial(params), ctx.space)  # the Optuna engine's checks
        except ctx.module.InfeasibleConfig as err:
            ctx.recorder.infeasible(otrial, str(err))
            return {OBJECTIVE: 0.0}
        ctx.active = _Active(otrial, config, ctx.settings.seed + otrial.number)
        try:
            results = self._train(trial, epochs, args, kwargs)
            own = ctx.active.result
        except KeyboardInterrupt:
            ctx.recorder.fail(otrial, "interrupted")
            raise
        except Exception as err:  # a failing trial fails only that trial
            ctx.recorder.fail(otrial, f"{type(err).__name__}: {err}")
            _logger.warning("trial %d failed: %s: %s", otrial.number, type(err).__name__, err)
            ctx.failures_in_a_row += 1
            if ctx.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise kt.errors.FatalError(f"{ctx.failures_in_a_row} trials failed in a row; last: {err}") from err
            raise kt.errors.FailedTrialError(str(err)) from err
        finally:
            from cifar_hpo.search.runtime.objective import clear_tensorflow_state

            clear_tensorflow_state()
            ctx.active = None
        ctx.failures_in_a_row = 0
        ctx.ran += 1
        ctx.recorder.finish(otrial, whole_curve(own, predecessor, initial), complete=epochs >= ctx.settings.epochs,
                            epochs_trained=own.epochs_run, wall_seconds=time.perf_counter() - start)
        return results

    def _train(self, trial: Any, epochs: int, args: tuple, kwargs: dict) -> Any:
        ctx = self.ctx
        assert ctx.active is not None
        if ctx.builder is not None:
            return super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        from cifar_hpo.search.runtime.objective import get_trainer

        import keras

        keras.utils.set_random_seed(ctx.active.seed)
        _, ctx.active.result = get_trainer(ctx.settings.space)(
            ctx.active.config, ctx.split, epochs=epochs, trial=ReportOnly(ctx.active.trial), seed=ctx.active.seed,
            settings=ctx.settings)
        return {OBJECTIVE: ctx.active.result.best_val_accuracy}

class RecordingHyperband(_RecordingMixin, kt.Hyperband):
    def __init__(self, ctx: SearchContext, **kwargs: Any) -> None:
        self.ctx = ctx
        super().__init__(**kwargs)


class RecordingBayesian(_RecordingMixin, kt.BayesianOptimization):
    def __init__(self, ctx: SearchContext, **kwargs: Any) -> None:
        self.ctx = ctx
        super().__init__(**kwargs)


class RecordingRandom(_RecordingMixin, kt.RandomSearch):
    def __init__(self, ctx: SearchContext, **kwargs: Any) -> None:
        self.ctx = ctx
        super().__init__(**kwargs)


TUNER_CLASSES = {"hyperband": RecordingHyperband, "bayesian": RecordingBayesian, "random": RecordingRandom}


# --------------------------------------------------------------------------------------------------------
# One search


def _legacy_project_name(study_name: str) -> str:
    """The project folder name versions before the slug-and-hash scheme used (unsafe characters -> '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", study_name) or "study"


def project_dir(study_name: str, *, resume: bool, root: Path = Path(WORKDIR)) -> Path:
    """KerasTuner's project folder for a study: ``root/<safe_filename(name)>``, always a direct child of root.

    A resumed study whose project an earlier version wrote to ``root/<name>/`` keeps using it (its oracle
    holds Hyperband's brackets and checkpoints), but only when that old folder name is the study name itself
    (the old rule changed no character, so no other study can have shared it), is not ``.``/``..``, and
    holds an ``oracle.json``. Any other old project is left untouched and the study continues in a new one.
    """
    new = root / safe_filename(study_name)
    legacy = _legacy_project_name(study_name)
    if (resume and not new.exists() and legacy == study_name and legacy not in (".", "..")
            and (root / legacy / "oracle.json").is_file()):
        return root / legacy
    return new


def checked_project_dir(directory: Path, root: Path) -> Path:
    """``directory`` if it is a folder directly inside ``root`` (the kerastuner root), else a ConfigError.

    Everything this engine may delete is the project folder, so it must never resolve to the root itself
    (pathlib reads ``root/.`` as ``root``), a folder above it (``..``) or anywhere else through a symlink.
    """
    if directory.name in ("", ".", "..") or directory.resolve().parent != root.resolve():
        raise ConfigError(f"KerasTuner project folder {str(directory)!r} is not a folder directly inside "
                          f"{str(root)!r}; refusing to use it")
    return directory


def _remove_stale_project(directory: Path, root: Path) -> None:
    """Delete an old project of a study created anew under the same name (checked to be inside the root)."""
    checked_project_dir(directory, root)
    if directory.is_symlink() or not directory.is_dir():
        raise ConfigError(f"KerasTuner project folder {str(directory)!r} is not a plain folder; remove it by hand")
    shutil.rmtree(directory)


def _inject_first(oracle: Any, params: dict[str, Any]) -> None:
    """Make ``params`` the oracle's first random draw (the seed baseline), unless it was already tried."""
    draw = oracle._random_values  # KerasTuner's own random draw, used by all three oracles

    def first_then_random() -> dict[str, Any] | None:
        if not oracle._duplicate(params):
            oracle._random_values = draw
            return dict(params)
        return draw()

    oracle._random_values = first_then_random


@dataclass
class SearchOutcome:
    ran: int  # trials this process ran (recorded), continuations included
    stopped_because: str  # "n_trials", "timeout", a caller's reason, or "tuner finished"


def make_tuner(ctx: SearchContext, directory: Path) -> Any:
    settings, study = ctx.settings, ctx.recorder.study
    # overwrite=False always: KerasTuner's overwrite deletes directory/project_name without any check (with
    # project ".." that is the working directory); run_search removes a stale project itself, checked.
    common: dict[str, Any] = dict(
        hypermodel=SpaceHyperModel(ctx), objective=kt.Objective(OBJECTIVE, "max"),
        hyperparameters=kerastuner_hyperparameters(ctx.space), seed=settings.seed, directory=str(directory.parent),
        project_name=directory.name, overwrite=False, max_consecutive_failed_trials=MAX_CONSECUTIVE_FAILURES,
    )
    if ctx.tuner_name == "hyperband":
        # No iteration limit: the search stops at the study's n_trials / timeout, as the Optuna engine does.
        tuner = RecordingHyperband(ctx, max_epochs=settings.epochs, factor=HYPERBAND_FACTOR,
                                   hyperband_iterations=None, **common)
    else:
        tuner = TUNER_CLASSES[ctx.tuner_name](ctx, max_trials=None, **common)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    baseline = [t for t in waiting if t.user_attrs.get("baseline")]
    if baseline:
        _inject_first(tuner.oracle, dict(baseline[0].system_attrs.get("fixed_params") or {}))
    return tuner


class _Lock:
    """An exclusive lock file in KerasTuner's project directory: one search process per study here."""

    def __init__(self, directory: Path) -> None:
        self.path = directory.with_name(directory.name + ".lock")
        self.handle: Any = None

    def __enter__(self) -> "_Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError:
            self.handle.close()
            raise ConfigError(f"another `hpo search --engine kerastuner` is running in {self.path.parent}/; "
                              "run one KerasTuner search per study") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def run_search(opened: Any, tuner_name: str, *, n_trials: int | None, timeout: float | None,
               directory: Path, root: Path = Path(WORKDIR), stop: Callable[[optuna.Study], str | None] | None = None,
               on_trial_end: Callable[[], None] | None = None) -> SearchOutcome:
    """Run KerasTuner on an opened hpo study until n_trials finished trials, the timeout, or ``stop`` says why.

    ``directory`` is KerasTuner's project directory (its oracle state and checkpoints); it must lie directly
    inside ``root`` (see project_dir): it is the only folder this function may delete.
    """
    from cifar_hpo.search.runtime.worker import count_trials

    checked_project_dir(directory, root)
    study = opened.study
    recorder = StudyRecorder(study, optuna_distributions(build_space(opened.settings.space,
                                                                     opened.settings.space_overrides)), tuner_name)
    ctx = SearchContext(opened.settings, opened.split, tuner_name, recorder)
    deadline = None if timeout is None else time.monotonic() + timeout

    def why_stop() -> str | None:
        if n_trials is not None and count_trials(study, with_best=False).finished >= n_trials:
            return "n_trials"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        return stop(study) if stop is not None else None

    ctx.stop = why_stop
    ctx.on_trial_end = on_trial_end or (lambda: None)
    with _Lock(directory):
        orphans = recorder.fail_orphans()
        if orphans:
            print(f"hpo search: {orphans} trial(s) left RUNNING by an earlier KerasTuner run marked FAIL",
                  file=sys.stderr)
        reason = why_stop()
        if reason:
            return SearchOutcome(0, reason)
        if opened.created and directory.exists():  # a new study never resumes an old KerasTuner project
            _remove_stale_project(directory, root)
        tuner = make_tuner(ctx, directory)
        try:
            tuner.search(verbose=0)
        except _StopSearch:
            pass
        except (RuntimeError, kt.errors.FatalError) as err:
            if isinstance(err, kt.errors.FatalError) or "consecutive failures" in str(err):
                raise SearchStopped(str(err).splitlines()[0]) from None
            raise
    return SearchOutcome(ctx.ran, ctx.stopped_because or "tuner finished")


class SearchStopped(RuntimeError):
    """Too many trials failed in a row: something is wrong with the setup, not one trial."""


def _tuner_for(study: optuna.Study, asked: str | None) -> str:
    """The tuner a resumed study was started with (a different one is a ConfigError), else the asked one."""
    stored = study.user_attrs.get(TUNER_ATTR)
    if stored is not None and asked is not None and asked != stored:
        raise ConfigError(f"study {study.study_name!r} was searched with --tuner {stored}; resume it with the same "
                          "tuner, or choose a new --study name")
    tuner = stored or asked or DEFAULT_TUNER
    if tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {list(TUNERS)}, but got {tuner!r}")
    if stored is None:
        study.set_user_attr(TUNER_ATTR, tuner)
    return tuner


def run_kerastuner(args: Any, given: dict[str, Any]) -> int:
    """`hpo search --engine kerastuner`: create/resume the study as the Optuna engine does, run KerasTuner."""
    from cifar_hpo.search.study_setup import open_hpo_study

    for flag in ("sampler", "pruner"):
        if given.get(flag) is not None:
            raise ConfigError(f"--{flag} applies to the optuna engine; with --engine kerastuner, --tuner "
                              "(hyperband, bayesian or random) decides sampling and early stopping")
    if getattr(args, "tuner", None) is not None and args.tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {list(TUNERS)}, but got {args.tuner!r}")
    opened = open_hpo_study(args.storage, args.study, given, heartbeat_interval=args.heartbeat,
                            space_config=args.space_config)
    for note in opened.notes:
        print(f"hpo search: {note}", file=sys.stderr)
    return run_opened(args, opened)


def run_opened(args: Any, opened: Any) -> int:
    """Run KerasTuner on a study already opened by `hpo search` (e.g. a resume that left out --engine)."""
    from cifar_hpo.search.cli.search import budget, summary_line
    from cifar_hpo.search.cli.progress import StudyProgress
    from cifar_hpo.search.runtime.worker import count_trials
    from cifar_hpo.storage.urls import mask_url

    if opened.settings.engine != ENGINE:
        raise ConfigError(f"study {args.study!r} runs on engine {opened.settings.engine!r}; drop --engine kerastuner")
    tuner = _tuner_for(opened.study, getattr(args, "tuner", None))
    verb = "created" if opened.created else "resumed"
    directory = project_dir(args.study, resume=not opened.created)
    print(f"study {args.study} {verb} in {mask_url(args.storage)} (space {opened.settings.space}, KerasTuner "
          f"{tuner}, files in {directory}/)", file=sys.stderr)
    n_trials = budget(args, opened.settings.n_trials)
    study = opened.study
    progress = StudyProgress(n_trials, args.study)
    progress.show(count_trials(study))
    try:
        run_search(opened, tuner, n_trials=n_trials, timeout=args.timeout, directory=directory,
                   on_trial_end=lambda: progress.show(count_trials(study)))
    except SearchStopped as err:
        print(f"hpo: search stopped: {err}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(summary_line(study))
    return 0
