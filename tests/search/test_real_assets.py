"""The real CIFAR-10 from ../shared/assets through `hpo search` (marked assets; CI runs it)."""

import optuna
import pytest
from optuna.trial import TrialState

from cifar_hpo.search.cli import main
from cifar_hpo.spaces.cnn import BASELINE

pytestmark = pytest.mark.assets


def test_real_cifar10_study_beats_chance(real_assets, tmp_path):
    db = tmp_path / "s.db"
    rc = main(["search", "--space", "cnn", "--study", "real", "--storage", f"sqlite:///{db}", "--data",
               str(real_assets / "cifar10.npz"), "--subset", "2000", "--epochs", "2", "--n-trials", "2", "--seed", "0"])
    assert rc == 0
    study = optuna.load_study(study_name="real", storage=f"sqlite:///{db}")
    baseline = study.trials[0]
    assert baseline.params == BASELINE.to_params() and baseline.state == TrialState.COMPLETE
    assert sorted(baseline.intermediate_values) == [1, 2]
    assert study.best_value > 0.2  # ten classes: chance is 0.1
    assert study.user_attrs["hpo_settings"]["data_fingerprint"] == "80387ddb9a0edf3f"
