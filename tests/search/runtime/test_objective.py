"""The objective: prior recipes train to the end, every other trial is pruned as the pruner says."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from cifar_hpo.search.runtime.objective import Objective
from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.search.study_setup import open_hpo_study


class PruneEverything(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_priors_are_never_pruned_other_trials_are(tiny_npz) -> None:
    # One epoch: a pruned trial stops after it too, but only the priors end COMPLETE.
    overrides = {"base_filters": {"choices": [8, 32]}, "dense_units": {"low": 16, "high": 128, "log": True}}
    opened = open_hpo_study("memory://", "priors", {"data": str(tiny_npz), "val_size": 100, "epochs": 1, "seed": 0,
                                                     "baseline": False, "space_overrides": overrides})
    opened.study.pruner = PruneEverything()
    run_worker(opened.study, Objective(opened.settings, opened.split), n_trials=3)
    trials = [t for t in opened.study.trials if not t.user_attrs.get("surplus")]  # not a trial that stepped back
    assert [t.user_attrs.get("prior") for t in trials] == ["vgg_bn", "resnet", None]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in trials] == [1, 1, 1]
