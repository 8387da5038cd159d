"""Recording KerasTuner trials into the Optuna study as they run, so reports and the dashboard read both
engines alike (parameter names and distributions, validation accuracy per epoch, user attrs)."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from cifar_hpo.search.models.training import TrainResult
from cifar_hpo.search.runtime.objective import keep_trial_model
from cifar_hpo.storage.artifacts import ModelKeeper
from cifar_hpo.storage.attrs import TUNER_ATTR

ENGINE = "kerastuner"


class StudyRecorder:
    """Writes KerasTuner trials into the Optuna study while they run (live in the dashboard)."""

    def __init__(self, study: optuna.Study, distributions: dict[str, BaseDistribution], tuner: str,
                 keeper: ModelKeeper | None = None) -> None:
        self.study = study
        self.distributions = distributions
        self.tuner = tuner
        self.keeper = keeper  # keeps the models of the top K complete trials (None: none)

    def begin(self, params: dict[str, Any], attrs: dict[str, Any]) -> optuna.trial.Trial:
        """A RUNNING trial with ``params``; the enqueued seed baseline is taken when these are its params."""
        distributions = {name: self.distributions[name] for name in params}
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting and waiting[0].user_attrs.get("baseline") and waiting[0].system_attrs.get("fixed_params") == params:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": none is needed here
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask(distributions)  # pops the oldest WAITING trial: the baseline
        else:
            template = optuna.trial.create_trial(state=TrialState.RUNNING, params=params,
                                                 distributions=distributions)
            # No public API creates a RUNNING trial with given params and hands it back: Study.add_trial returns
            # None, and enqueue_trial + ask pops the oldest WAITING trial (the baseline may wait ahead of it).
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

    def keep_model(self, trial: optuna.trial.Trial, model: Any, result: Any) -> str | None:
        """Upload a trial's model before finish() tells it complete, as the Optuna engine's objective does
        (called while the model still exists: the trial's TensorFlow state is cleared before finish)."""
        return keep_trial_model(self.keeper, trial, model, result.best_val_accuracy)

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


def whole_curve(result: Any, predecessor: optuna.trial.FrozenTrial | None, initial: int) -> Any:
    """This round's result with the earlier round's first ``initial`` epochs in front (history, best_epoch)."""
    before = (predecessor.user_attrs.get("history") or {}) if predecessor is not None else {}
    if not initial or any(len(before.get(k, [])) < initial for k in result.history):
        return result  # no earlier curve to carry: keep this round's own
    history = {k: list(before[k][:initial]) + list(v) for k, v in result.history.items()}
    return TrainResult(history=history, params=result.params, fit_seconds=result.fit_seconds,
                       train_seconds=result.train_seconds, train_images=result.train_images)
