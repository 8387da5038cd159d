"""The objective a worker runs: suggest a Config, train it, record what a person needs, return val accuracy."""

from __future__ import annotations

import ctypes
import importlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from cifar_hpo.search.models.data import Split
from cifar_hpo.search.models.phase import phase_sink
from cifar_hpo.search.models.precision import apply_precision
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.spaces import build_space, get_space_module
from cifar_hpo.storage.artifacts import ModelKeeper, keeper_for
from cifar_hpo.storage.attrs import PHASE_ATTR, WORKER_ATTR, process_tag  # PHASE_ATTR: for the progress display
from cifar_hpo.storage.errors import StorageError

_logger = logging.getLogger(__name__)

# Space name -> trainer "module:function"; a trainer takes (config, split, epochs=, trial=, seed=, settings=)
# and returns (model, TrainResult).
TRAINERS = {"cnn": "cifar_hpo.search.models.cnn:train_cnn", "inception": "cifar_hpo.search.models.inception:train_inception"}


def get_trainer(space: str) -> Callable[..., Any]:
    module, function = TRAINERS[space].split(":")
    return getattr(importlib.import_module(module), function)


def clear_tensorflow_state() -> None:
    """Drop the previous trial's graph, layers and optimizer state, and hand freed heap pages back (glibc
    keeps them mapped otherwise). This slows memory growth but does not stop it (measured in
    benchmarks/worker_memory.py): recycled trial processes (search/worker_process.py) are what bound it.
    """
    import keras

    keras.backend.clear_session(free_memory=True)  # also runs gc.collect()
    _release_freed_heap()


def resident_mib() -> float | None:
    """This process's resident memory (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _release_freed_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


PHASE_EVERY_S = 3.0


class PhaseWriter:
    """Stores a trial's current phase in its user attrs, at most every PHASE_EVERY_S seconds (and at its end),
    so a long cache fill shows its own progress and time left without a write per chunk."""

    def __init__(self, trial: optuna.trial.Trial, every_s: float = PHASE_EVERY_S) -> None:
        self.trial, self.every_s = trial, every_s
        self._phase, self._start, self._last = "", 0.0, float("-inf")

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self._phase or done == 0:
            self._phase, self._start = phase, now
        finished = done >= total
        if not finished and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self._start
        eta = elapsed * (total - done) / done if 0 < done < total else None
        self.trial.set_user_attr(PHASE_ATTR, {"phase": phase, "done": done, "total": total,
                                              "eta_s": None if eta is None else round(eta, 1), "at": time.time()})


def keep_trial_model(keeper: ModelKeeper | None, trial: optuna.trial.Trial, model: Any, value: float) -> str | None:
    """Upload a trial's trained model (before the trial is told complete: a finished trial takes no link) when
    it ranks within the study's kept top K; returns the artifact id, or None when it is not kept.

    The model is saved to a temporary file first, so only a complete file is uploaded. Not being able to keep
    it (a full disk) costs the model, not the trial: the reason goes to the trial's user attrs.
    """
    if keeper is None or model is None or not math.isfinite(value) or not keeper.wants(trial, value):
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-model-") as folder:
            path = Path(folder) / f"trial-{trial.number}.keras"  # the file name the dashboard downloads
            model.save(path)
            return keeper.add(trial, path, value)
    except (OSError, StorageError) as err:
        _logger.warning("trial %d: model not kept: %s", trial.number, err)
        trial.set_user_attr("model_artifact_error", str(err)[:300])
        return None


class Objective:
    """Callable for ``study.optimize``; holds the data split so it is loaded once per worker."""

    def __init__(self, settings: StudySettings, split: Split) -> None:
        self.settings = settings
        self.split = split
        self.space = build_space(settings.space, settings.space_overrides, settings.space_version)
        self.module = get_space_module(settings.space)
        self.trainer = get_trainer(settings.space)
        self._keeper: ModelKeeper | None | bool = False  # False: not looked up yet (needs the study's storage)

    def keeper(self, study: optuna.Study) -> ModelKeeper | None:
        if self._keeper is False:
            self._keeper = keeper_for(study, self.settings.artifacts, self.settings.keep_models)
        return self._keeper  # type: ignore[return-value]

    def __call__(self, trial: optuna.trial.Trial) -> float:
        import keras

        start = time.perf_counter()
        trial.set_user_attr(WORKER_ATTR, process_tag(os.getpid()))
        try:
            config = self.module.suggest(trial, self.space)
        except self.module.InfeasibleConfig as err:
            # Pruned rather than failed: the sampler learns from pruned trials, it ignores failed ones.
            trial.set_user_attr("infeasible", str(err))
            raise optuna.TrialPruned(f"infeasible configuration: {err}") from None
        seed = self.settings.seed + trial.number
        keras.utils.set_random_seed(seed)
        try:
            apply_precision(self.settings.precision, trial)  # after the last trial's clear_session reset it
            with phase_sink(PhaseWriter(trial)):
                # Prior recipes train to the end: pruning one early (e.g. during its warm-up) would let a study
                # end below a strong hand recipe; every other trial is pruned as the pruner says.
                from cifar_hpo.search.models.training import ReportOnly

                reporter = ReportOnly(trial) if trial.user_attrs.get("prior") else trial
                model, result = self.trainer(config, self.split, epochs=self.settings.epochs, trial=reporter,
                                             seed=seed, settings=self.settings)
            for key, value in result.user_attrs().items():
                trial.set_user_attr(key, value)
            if result.pruned_at is None:  # it completes: keep its model if it ranks within the top K
                keep_trial_model(self.keeper(trial.study), trial, model, result.best_val_accuracy)
            del model
        finally:
            clear_tensorflow_state()
        trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 3))
        rss = resident_mib()
        if rss is not None:
            trial.set_user_attr("worker_rss_mib", rss)  # after clean-up: shows memory creeping across trials
        if result.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {result.pruned_at}")
        return result.best_val_accuracy
