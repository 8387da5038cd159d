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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras_tuner as kt
import optuna
from optuna.trial import TrialState

from cifar_hpo.search.engines.kerastuner.hypermodel import OBJECTIVE, SearchContext, SpaceHyperModel, ActiveTrial
from cifar_hpo.search.engines.kerastuner.recorder import StudyRecorder, whole_curve
from cifar_hpo.search.models.training import ReportOnly
from cifar_hpo.search.engines.kerastuner.translate import kerastuner_hyperparameters, params_from_values
from cifar_hpo.search.errors import ConfigError, SearchStopped
from cifar_hpo.search.runtime.worker import MAX_CONSECUTIVE_FAILURES
from cifar_hpo.search.settings import HYPERBAND_REDUCTION_FACTOR
from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import optuna_distributions
from cifar_hpo.storage.artifacts import keeper_for
from cifar_hpo.storage.attrs import TUNER_ATTR
from cifar_hpo.storage.names import safe_filename

_logger = logging.getLogger(__name__)

TUNERS = ("hyperband", "bayesian", "random")
DEFAULT_TUNER = "hyperband"
WORKDIR = "kerastuner"


class _StopSearch(Exception):
    """Raised before KerasTuner creates a trial once the budget (n_trials, timeout, a caller's stop) is met."""


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
        # KerasTuner draws every bound; the space's own suggest decides which are parameters of this point
        # (conditional ones, e.g. only the chosen optimizer's learning rate), as in the Optuna engine.
        fixed = optuna.trial.FixedTrial(params)
        try:
            config, infeasible = ctx.module.suggest(fixed, ctx.space), None
            params = fixed.params
        except ctx.module.InfeasibleConfig as err:
            config, infeasible = None, str(err)
        otrial = ctx.recorder.begin(params, attrs)
        predecessor = ctx.recorder.predecessor(values.get("tuner/trial_id", "")) if initial else None
        if predecessor is not None:
            ctx.recorder.carry_curve(otrial, predecessor, initial)
        start = time.perf_counter()
        if config is None:
            ctx.recorder.infeasible(otrial, infeasible or "infeasible configuration")
            return {OBJECTIVE: 0.0}
        ctx.active = ActiveTrial(otrial, config, ctx.settings.seed + otrial.number)
        complete = epochs >= ctx.settings.epochs
        try:
            results = self._train(trial, epochs, args, kwargs)
            own = ctx.active.result
            if complete:
                ctx.recorder.keep_model(otrial, ctx.active.model, whole_curve(own, predecessor, initial))
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
        ctx.recorder.finish(otrial, whole_curve(own, predecessor, initial), complete=complete,
                            epochs_trained=own.epochs_run, wall_seconds=time.perf_counter() - start)
        return results

    def _train(self, trial: Any, epochs: int, args: tuple, kwargs: dict) -> Any:
        ctx = self.ctx
        assert ctx.active is not None
        if ctx.builder is not None:
            return super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        from cifar_hpo.search.runtime.objective import get_trainer

        import keras

        from cifar_hpo.search.models.precision import apply_precision

        keras.utils.set_random_seed(ctx.active.seed)
        apply_precision(ctx.settings.precision, ctx.active.trial)
        ctx.active.model, ctx.active.result = get_trainer(ctx.settings.space)(
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
    # KerasTuner has no public API to queue a first trial; its oracles all draw through _random_values.
    draw = oracle._random_values

    def first_then_random() -> dict[str, Any] | None:
        if not oracle._duplicate(params):  # no public API for this check either
            oracle._random_values = draw  # no public API: restore the oracle's own draw
            return dict(params)
        return draw()

    oracle._random_values = first_then_random  # no public API to queue a trial (see above)


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
        tuner = RecordingHyperband(ctx, max_epochs=settings.epochs, factor=HYPERBAND_REDUCTION_FACTOR,
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
               on_trial_end: Callable[[], None] | None = None,
               on_note: Callable[[str], None] = lambda note: None) -> SearchOutcome:
    """Run KerasTuner on an opened hpo study until n_trials finished trials, the timeout, or ``stop`` says why.

    ``directory`` is KerasTuner's project directory (its oracle state and checkpoints); it must lie directly
    inside ``root`` (see project_dir): it is the only folder this function may delete.
    """
    from cifar_hpo.storage.counting import count_study_trials

    checked_project_dir(directory, root)
    study = opened.study
    recorder = StudyRecorder(study, optuna_distributions(build_space(
        opened.settings.space, opened.settings.space_overrides, opened.settings.space_version)), tuner_name,
                             keeper=keeper_for(study, opened.settings.artifacts, opened.settings.keep_models))
    ctx = SearchContext(opened.settings, opened.split, tuner_name, recorder)
    deadline = None if timeout is None else time.monotonic() + timeout

    def why_stop() -> str | None:
        if n_trials is not None and count_study_trials(study).finished >= n_trials:
            return "n_trials"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        return stop(study) if stop is not None else None

    ctx.stop = why_stop
    ctx.on_trial_end = on_trial_end or (lambda: None)
    with _Lock(directory):
        orphans = recorder.fail_orphans()
        if orphans:
            on_note(f"{orphans} trial(s) left RUNNING by an earlier KerasTuner run marked FAIL")
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


def tuner_for(study: optuna.Study, asked: str | None) -> str:
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
