"""`hpo search` end to end through main(argv) on tiny synthetic data; the database is checked afterwards."""

import dataclasses
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from cifar_hpo.search.cli import main
from cifar_hpo.spaces.cnn import BASELINE, PRIORS


def search_args(db, npz, *extra, epochs="2"):
    """A tiny study's flags; without the priors, which would add two enqueued trials these tests do not count."""
    return ["search", "--space", "cnn", "--study", "tiny", "--storage", f"sqlite:///{db}", "--data", str(npz),
            "--val-size", "100", "--epochs", epochs, "--seed", "0", "--no-priors", *extra]


def test_help_lists_subcommands_and_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("search", "worker", "launch"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    for flag in ("--space", "--study", "--storage", "--n-trials", "--timeout", "--sampler", "--pruner", "--epochs",
                 "--subset", "--val-size", "--data", "--space-config", "--seed", "--no-baseline",
                 "--precision"):
        assert flag in out, flag


def test_search_runs_and_stores_everything(tmp_path, tiny_npz):
    db = tmp_path / "s.db"
    assert main(search_args(db, tiny_npz, "--n-trials", "3")) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    first = study.trials[0]
    assert first.user_attrs["baseline"] is True
    assert first.params == BASELINE.to_params()
    assert first.state == TrialState.COMPLETE
    assert sorted(first.intermediate_values) == [1, 2]
    assert first.value == max(first.intermediate_values.values())
    assert first.user_attrs["params"] == 356_810
    for key in ("best_epoch", "epochs_run", "fit_seconds", "train_images_per_s", "wall_seconds", "history"):
        assert key in first.user_attrs, key
    assert first.user_attrs["train_images_per_s"] > 0
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert len(trial.intermediate_values) == 2
    settings = study.user_attrs["hpo_settings"]
    assert settings["epochs"] == 2 and settings["space"] == "cnn" and settings["data"] == str(tiny_npz)
    assert settings["data_fingerprint"]
    # the storage is in WAL mode, so a dashboard can read while workers write
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_resume_runs_more_trials_and_refuses_other_settings(tmp_path, tiny_npz, capsys):
    db = tmp_path / "s.db"
    assert main(search_args(db, tiny_npz, "--n-trials", "1")) == 0
    assert main(search_args(db, tiny_npz, "--n-trials", "2")) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert len(study.trials) == 2
    assert sum(1 for t in study.trials if t.user_attrs.get("baseline")) == 1
    capsys.readouterr()
    rc = main(search_args(db, tiny_npz, "--n-trials", "3", epochs="5"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "epochs: study has 2, command asks 5" in err[0]
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials) == 2


def test_no_baseline(tmp_path, tiny_npz):
    db = tmp_path / "s.db"
    assert main(search_args(db, tiny_npz, "--n-trials", "1", "--no-baseline", "--sampler", "random")) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert "baseline" not in study.trials[0].user_attrs


@pytest.mark.parametrize("bad", ["missing", "corrupt"])
def test_bad_data_is_one_clear_line_and_writes_nothing(tmp_path, capsys, bad):
    path = tmp_path / "cifar10.npz"
    if bad == "corrupt":
        path.write_bytes(b"\x00" * 100)
    db = tmp_path / "s.db"
    rc = main(search_args(db, path, "--n-trials", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("hpo search: error: --data") and "Traceback" not in err[0]
    if db.exists():
        assert optuna.get_all_study_names(f"sqlite:///{db}") == []


def test_space_config_errors_are_clear(tmp_path, tiny_npz, capsys):
    config = tmp_path / "space.toml"
    config.write_text("depth = {low = 6, high = 2}\n")
    rc = main(search_args(tmp_path / "s.db", tiny_npz, "--n-trials", "1", "--space-config", str(config)))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bounds of 'depth': low must be <= high" in err[0]


@pytest.mark.parametrize("bad", ["missing data", "bad space config"])
def test_bad_input_creates_no_database_file(tmp_path, tiny_npz, capsys, bad):
    """The README promises "nothing written": a new SQLite file is not created when the command cannot start."""
    db = tmp_path / "new.db"
    config = tmp_path / "space.toml"
    config.write_text("depth = {low = 6, high = 2}\n")
    extra = ["--space-config", str(config)] if bad == "bad space config" else []
    npz = tmp_path / "nonexistent.npz" if bad == "missing data" else tiny_npz
    rc = main(search_args(db, npz, "--n-trials", "1", *extra))
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("new.db")) == []


def test_space_config_is_stored_and_used(tmp_path, tiny_npz):
    config = tmp_path / "space.toml"
    config.write_text("[cnn]\ndepth = {value = 2}\nbatch_size = {choices = [64]}\n")
    db = tmp_path / "s.db"
    assert main(search_args(db, tiny_npz, "--n-trials", "2", "--space-config", str(config), epochs="1")) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert study.user_attrs["hpo_settings"]["space_overrides"] == {"depth": {"value": 2}, "batch_size": {"choices": [64]}}
    assert all(t.params.get("depth") == 2 for t in study.trials if t.params)
    # the baseline (depth 3) runs with the depth the config pins, its other values kept
    baseline = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert len(baseline) == 1 and (baseline[0].params["depth"], baseline[0].params["batch_size"]) == (2, 64)


def test_recycled_trial_processes_draw_new_suggestions(tmp_path, tiny_npz):
    """Each trial process gets its own sampler stream: a recycled process must not replay the last one's."""
    db = tmp_path / "s.db"
    assert main(search_args(db, tiny_npz, "--n-trials", "3", "--sampler", "random", "--no-baseline",
                            "--recycle-after", "1", epochs="1")) == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
    assert len(trials) == 3
    assert len({t.params["weight_decay"] for t in trials}) == 3
    assert len({t.user_attrs.get("worker") for t in trials}) == 3  # three processes, one trial each


def test_space_config_priors_are_enqueued_after_the_built_in_ones_and_stored(tmp_path, tiny_npz, capsys):
    config = tmp_path / "space.toml"
    config.write_text('[cnn]\nbase_filters = {choices = [8, 32]}\ndepth = {low = 2, high = 3}\n\n'
                      '[cnn.priors.tiny_resnet]\nlike = "resnet"\nbase_filters = 8\ndepth = 2\nbatch_size = 64\n')
    db = tmp_path / "s.db"
    args = [a for a in search_args(db, tiny_npz, "--space-config", str(config), "--no-baseline", "--n-trials", "3",
                                   epochs="1") if a != "--no-priors"]
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert [t.user_attrs.get("prior") for t in study.trials] == ["vgg_bn", "resnet", "tiny_resnet"]
    expected = dataclasses.replace(PRIORS["resnet"], base_filters=8, depth=2, batch_size=64).to_params()
    assert study.trials[2].params == pytest.approx(expected)
    stored = study.user_attrs["hpo_settings"]["space_overrides"]
    assert stored["priors"] == {"tiny_resnet": {"like": "resnet", "base_filters": 8, "depth": 2, "batch_size": 64}}
    assert main(args) == 0  # resumed with the same file: the same settings, nothing enqueued twice
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert [t.user_attrs.get("prior") for t in study.trials].count("tiny_resnet") == 1


def test_a_bad_space_config_prior_is_one_line_and_writes_nothing(tmp_path, tiny_npz, capsys):
    config = tmp_path / "space.toml"
    config.write_text('[cnn]\nbase_filters = {choices = [8, 16]}\n\n[cnn.priors.wide]\nlike = "resnet"\n')
    db = tmp_path / "new.db"
    rc = main(search_args(db, tiny_npz, "--space-config", str(config), "--n-trials", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "prior 'wide' of the space config: its base_filters lie outside the bounds" in err[0]
    assert not db.exists()
