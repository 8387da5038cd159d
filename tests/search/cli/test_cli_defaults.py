"""Defaults a newcomer meets: --timeout units, a validation size that follows --subset, the study's metric
name, `-o -` and `hpo export --best` without -o, and a report hint that works from the current directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
import pytest
from hpo_testkit import create_tiny_study, make_study, sqlite_url

from cifar_hpo.search.cli import main
from cifar_hpo.search.cli.search import duration_arg
from cifar_hpo.search.settings import StudySettings, default_val_size, resolve
from cifar_hpo.search.study_note import study_note
from cifar_hpo.spaces import build_space


def test_timeout_accepts_units() -> None:
    assert [duration_arg(t) for t in ("90", "90s", "15m", "2h", "1.5h", "5400.0")] == [90, 90, 900, 7200, 5400, 5400]
    for bad in ("", "m", "15x", "-3m", "0", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_arg(bad)


def test_timeout_with_units_is_stored_in_seconds(tmp_path: Path, tiny_npz: Path) -> None:
    url = sqlite_url(tmp_path)
    assert main(["search", "--study", "t", "--storage", url, "--data", str(tiny_npz), "--val-size", "100",
                 "--epochs", "1", "--n-trials", "1", "--timeout", "15m", "--recycle-after", "0"]) == 0
    assert optuna.load_study(study_name="t", storage=url).user_attrs["hpo_settings"]["timeout"] == 900


def test_subset_without_val_size_gets_a_proportionate_validation_split() -> None:
    assert [default_val_size(s) for s in (None, 1000, 9000, 20000, 45000, 100000)] == [5000, 500, 1000, 2222, 5000, 5000]
    assert resolve(None, {"subset": 9000, "val_size": None}).val_size == 1000
    assert resolve(None, {"subset": 9000, "val_size": 300}).val_size == 300
    assert resolve(None, {"preset": "full"}).val_size == 5000
    stored = StudySettings(subset=9000, val_size=1000)
    assert resolve(stored, {"subset": 9000}).val_size == 1000  # a resume keeps the stored split
    note = study_note("s", resolve(None, {"subset": 9000}), build_space("cnn"), {})
    assert "1000 validation images (the default for --subset 9000" in note
    assert "(the default" not in study_note("s", StudySettings(subset=9000, val_size=700), build_space("cnn"), {})


def test_new_study_names_its_metric(tmp_path: Path, tiny_npz: Path) -> None:
    study = create_tiny_study(sqlite_url(tmp_path), "m", tiny_npz)
    assert study.metric_names == ["val_accuracy"]


@pytest.fixture
def study_url(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path)
    make_study(url, "s", StudySettings(space="cnn", epochs=3), n_complete=2)
    return url


def test_export_to_stdout(study_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--study", "s", "--storage", study_url, "--best", "-o", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["space"] == "cnn"
    assert "stdout" in captured.err


def test_export_best_without_output_writes_best_config_here(study_url: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["export", "--study", "s", "--storage", study_url, "--best"]) == 0
    out = capsys.readouterr().out
    assert json.loads((here / "best_config.json").read_text())["space"] == "cnn"
    assert "./best_config.json" in out and "hpo retrain --config best_config.json" in out
    assert main(["export", "--study", "s", "--storage", study_url, "--trial", "1"]) == 0
    assert (here / "trial_1_config.json").exists()


def test_report_retrain_hint_uses_the_report_folder(study_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--study", "s", "--storage", study_url, "--out", "rep"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "hpo retrain --config rep/best_config.json --out model.keras" in text
    assert "up to 3 epochs" in text
