"""`hpo export` -> `hpo retrain` round trip on tiny synthetic data, `hpo report --evaluate` reuse, bad configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from cifar_hpo.reports.errors import ReportError
from cifar_hpo.reports.export import FORMAT_VERSION, parse_export, read_export
from cifar_hpo.search.cli import main
from cifar_hpo.search.models.data import CLASS_NAMES, load_cifar10
from cifar_hpo.search.settings import StudySettings
from hpo_testkit import SMALL_CNN, make_trial, sqlite_url


@pytest.fixture
def tiny_study(tmp_path: Path, tiny_npz: Path) -> tuple[str, Path]:
    """A study on the tiny data whose best trial and baseline is SMALL_CNN (best epoch 1 of 2)."""
    url = sqlite_url(tmp_path)
    settings = StudySettings(space="cnn", data=str(tiny_npz), data_fingerprint=load_cifar10(tiny_npz).fingerprint(),
                             val_size=100, epochs=2, seed=3)
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    for key, value in settings.to_attrs().items():
        study.set_user_attr(key, value)
    study.add_trial(make_trial(dict(SMALL_CNN), [0.9, 0.8], baseline=True))
    study.add_trial(make_trial(dict(SMALL_CNN, dense_units=100, optimizer="sgd"), [0.5, 0.6]))
    return url, tiny_npz


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("hpo ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_then_retrain_round_trip(tiny_study: tuple[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import keras

    url, data = tiny_study
    config = tmp_path / "best.json"
    assert main(["export", "--study", "tiny", "--storage", url, "--best", "-o", str(config)]) == 0
    document = json.loads(config.read_text())
    assert document["format_version"] == FORMAT_VERSION and document["space"] == "cnn"
    assert document["params"] == SMALL_CNN and document["epochs"] == 1 and document["seed"] == 3
    assert document["data"]["fingerprint"] == load_cifar10(data).fingerprint()
    assert document["data"]["val_size"] == 100 and document["source"] == {**document["source"], "trial": 0, "baseline": True}
    assert set(document["versions"]) >= {"tensorflow", "keras", "optuna"} and document["versions"]["optuna"]
    assert document["precision"] == "auto"  # the study's flag, so `hpo retrain` trains as the search did
    capsys.readouterr()

    model_path = tmp_path / "m.keras"
    assert main(["retrain", "--config", str(config), "--data", str(data), "--epochs", "1", "--seed", "5",
                 "--out", str(model_path)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in CLASS_NAMES) and "macro avg" in printed
    model = keras.models.load_model(model_path)
    assert model.output_shape == (None, 10)
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1 and metrics["seed"] == 5
    assert set(CLASS_NAMES) <= set(metrics["classification_report"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 200  # the tiny test split, evaluated once
    assert f"{metrics['test_accuracy']:.4f}" in printed


def test_report_evaluate_stores_runs_and_reuses_them(tiny_study: tuple[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import cifar_hpo.search.evaluate

    url, data = tiny_study
    out = tmp_path / "rep"
    args = ["report", "--study", "tiny", "--storage", url, "--out", str(out), "--top", "1", "--evaluate",
            "--seeds", "1", "--data", str(data)]
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    stored = [k for k in study.user_attrs if k.startswith("hpo_eval:")]
    assert stored == ["hpo_eval:t0:e1:s3"]  # trial 0 is both the best and the baseline: one run
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in CLASS_NAMES) and "trial 0 (baseline)" in md

    def no_training(*_: Any, **__: Any) -> Any:
        raise AssertionError("a second report must reuse the stored evaluation")

    monkeypatch.setattr(cifar_hpo.search.evaluate, "train_and_evaluate", no_training)
    assert main(args + ["--out", str(tmp_path / "rep2")]) == 0
    assert (tmp_path / "rep2" / "report.md").read_text().count("| airplane |") == 1


def test_report_evaluate_refuses_other_data(tiny_study: tuple[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from hpo_testkit import make_tiny_cifar
    import numpy as np

    url, _ = tiny_study
    other = tmp_path / "other.npz"
    np.savez(other, **make_tiny_cifar(seed=9))
    rc = main(["report", "--study", "tiny", "--storage", url, "--out", str(tmp_path / "r"), "--evaluate",
               "--data", str(other)])
    assert rc == 2 and "fingerprint" in one_line_error(capsys)


def test_exports_written_before_precision_retrain_in_float32(tiny_npz: Path) -> None:
    from cifar_hpo.search.evaluate import settings_for_export

    document = good_document(tiny_npz)
    assert parse_export(document).precision == "float32"
    assert settings_for_export(parse_export(document), None, None, None).precision == "float32"
    assert settings_for_export(parse_export({**document, "precision": "bf16"}), None, None, None).precision == "bf16"


def write(tmp_path: Path, document: Any, name: str = "c.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def good_document(data: Path) -> dict[str, Any]:
    return {"format_version": 1, "space": "cnn", "params": dict(SMALL_CNN), "epochs": 1, "seed": 0,
            "data": {"path": str(data), "fingerprint": None, "val_size": 100, "subset": None, "seed": 0}}


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer"),
    (lambda d: d.update(space="resnet"), "unknown space 'resnet'"),
    (lambda d: d["params"].update(momentum=0.9), "unknown parameter(s) ['momentum']"),
    (lambda d: d["params"].pop("depth"), "missing parameter(s) ['depth']"),
    (lambda d: d["params"].update(padding="full"), "invalid parameters"),
    (lambda d: d.pop("format_version"), "format_version"),
    (lambda d: d.update(epochs=0), "'epochs'"),
])
def test_bad_config_files_are_one_line_errors(change: Any, expected: str, tmp_path: Path, tiny_npz: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    document = good_document(tiny_npz)
    parse_export(document)  # the unchanged document is valid
    change(document)
    config = write(tmp_path, document)
    rc = main(["retrain", "--config", str(config), "--out", str(tmp_path / "m.keras")])
    line = one_line_error(capsys)
    assert rc == 2 and expected in line and str(config) in line
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("content, expected", [("{not json", "not valid JSON"), ("[1, 2]", "not an hpo config")])
def test_unreadable_config_files(content: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=expected):
        read_export(write(tmp_path, content))
    with pytest.raises(ReportError, match="does not exist"):
        read_export(tmp_path / "missing.json")


def test_retrain_checks_output_and_data_before_training(tmp_path: Path, tiny_npz: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    document = good_document(tiny_npz)
    config = write(tmp_path, document)
    assert main(["retrain", "--config", str(config), "--out", str(tmp_path / "m.h5")]) == 2
    assert ".keras" in one_line_error(capsys)
    document["data"]["fingerprint"] = "0000000000000000"
    config = write(tmp_path, document)
    assert main(["retrain", "--config", str(config), "--out", str(tmp_path / "m.keras")]) == 2
    assert "fingerprint" in one_line_error(capsys)


def test_export_errors(tiny_study: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = tiny_study
    assert main(["export", "--study", "tiny", "--storage", url, "--trial", "42", "-o", str(tmp_path / "x.json")]) == 2
    assert "no trial 42" in one_line_error(capsys)
    assert main(["export", "--study", "tiny", "--storage", url, "-o", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["export", "--study", "tiny", "--storage", url, "--trial", "1", "-o", str(tmp_path / "t1.json")]) == 0
    assert json.loads((tmp_path / "t1.json").read_text())["params"]["optimizer"] == "sgd"


def test_retrain_on_all_training_images_after_a_subset_search(tmp_path: Path, tiny_npz: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Search on a subset, retrain the winner on the whole training split; validation images do not move."""
    import numpy as np

    from cifar_hpo.search.models.data import split_train_val
    from cifar_hpo.search.evaluate import settings_for_export

    document = good_document(tiny_npz)
    document["data"]["subset"] = 100
    config = write(tmp_path, document)
    exported = read_export(config)
    data = load_cifar10(tiny_npz)
    searched = settings_for_export(exported, None, None, None)
    searched_val = split_train_val(data, searched.val_size, searched.subset, searched.seed).x_val
    for override, train_size in ((None, 100), ("all", 400), (250, 250)):
        settings = settings_for_export(exported, None, None, None, subset=override)
        split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
        assert len(split.y_train) == train_size
        assert np.array_equal(split.x_val, searched_val)

    model_path = tmp_path / "all.keras"
    assert main(["retrain", "--config", str(config), "--subset", "all", "--out", str(model_path)]) == 0
    assert "training images: all" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "all.metrics.json").read_text())
    assert metrics["training_subset"] is None and metrics["searched_subset"] == 100
    with pytest.raises(SystemExit) as exit_info:
        main(["retrain", "--config", str(config), "--subset", "0", "--out", str(model_path)])
    assert exit_info.value.code == 2 and "'all'" in capsys.readouterr().err


def test_retrain_defaults_to_all_images_shows_epochs_and_documents_the_input(tmp_path: Path, tiny_npz: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A config searched on a subset retrains on all training images by default and says so on its first
    line; each epoch is shown (a plain line off a terminal); the saved model takes raw 0-255 pixels, which
    the metrics file and the printed example say."""
    import keras
    import numpy as np

    document = good_document(tiny_npz)
    document["data"]["subset"] = 100
    document["epochs"] = 2
    config = write(tmp_path, document)
    model_path = tmp_path / "m.keras"
    assert main(["retrain", "--config", str(config), "--out", str(model_path)]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0].startswith("hpo retrain: cnn config") and "training images: all (400 images, 100 held out" in err[0]
    assert "the study searched on 100" in err[0]
    assert [line.split(" val accuracy")[0] for line in err[1:3]] == ["hpo retrain: epoch 1/2", "hpo retrain: epoch 2/2"]
    assert "left" in err[1]
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["training_subset"] is None and metrics["input"].startswith("uint8 or float 0-255, 32x32x3")
    assert "load_model" in captured.out and "do not divide by 255" in captured.out
    model = keras.models.load_model(model_path)
    x_test = load_cifar10(tiny_npz).x_test
    y_test = load_cifar10(tiny_npz).y_test
    raw = model.predict(x_test, verbose=0).argmax(axis=-1)
    assert np.isclose((raw == y_test).mean(), metrics["test_accuracy"])
    assert np.array_equal(raw, model.predict(x_test.astype("float32"), verbose=0).argmax(axis=-1))
