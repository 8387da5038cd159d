"""Presets size a new study where its flags do not: quick on a machine without a GPU, full with one."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hpo_testkit import sqlite_url

from cifar_hpo.search import presets
from cifar_hpo.search.cli import main
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.settings import StudySettings, resolve, run_timeout
from cifar_hpo.spaces import build_space, cnn


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "gpu_visible", lambda: False)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "gpu_visible", lambda: True)


def test_an_unsized_command_on_a_cpu_gets_the_quick_preset(no_gpu: None) -> None:
    settings = resolve(None, {"space": "cnn"})
    assert settings.preset == "quick"
    assert (settings.subset, settings.val_size, settings.epochs, settings.n_trials, settings.timeout) == \
        (10_000, 1111, 6, 12, 900)
    assert settings.space_overrides == cnn.CPU_BOUNDS
    space = build_space("cnn", settings.space_overrides)
    assert space.depth.high == 3 and space.base_filters.choices == (16, 32)


def test_an_unsized_command_with_a_gpu_gets_the_full_space(gpu: None) -> None:
    settings = resolve(None, {"space": "cnn"})
    assert settings.preset == "full"
    assert (settings.subset, settings.val_size, settings.epochs, settings.n_trials, settings.space_overrides) == \
        (None, 5000, 20, None, {})


@pytest.mark.parametrize("flag", [{"subset": 2000}, {"epochs": 3}, {"n_trials": 4}, {"timeout": 60.0},
                                  {"val_size": 300}, {"space_overrides": {"depth": {"value": 2}}}])
def test_a_command_that_sizes_anything_is_sized_by_its_user(no_gpu: None, flag: dict) -> None:
    settings = resolve(None, {"space": "cnn", **flag})
    assert settings.preset == "full" and settings.epochs == flag.get("epochs", 20)


def test_a_named_preset_fills_in_only_what_the_flags_left_out(gpu: None) -> None:
    settings = resolve(None, {"space": "cnn", "preset": "quick", "epochs": 3, "subset": 2000})
    assert (settings.preset, settings.epochs, settings.subset, settings.val_size, settings.n_trials) == \
        ("quick", 3, 2000, 500, 12)
    inception = resolve(None, {"space": "inception", "preset": "quick"})
    assert inception.epochs == 3 and build_space("inception", inception.space_overrides).input_size.choices == (75, 107)


def test_a_resumed_study_keeps_its_preset(no_gpu: None) -> None:
    stored = resolve(None, {"space": "cnn"})
    assert resolve(stored, {"space": "cnn"}) == stored
    with pytest.raises(ConfigError, match="preset: study has 'quick', command asks 'full'"):
        resolve(stored, {"preset": "full"})
    # a study from before presets was sized by its flags, and resumes as full
    assert StudySettings().preset == "full"


def test_the_time_limit_is_the_flag_else_the_preset(no_gpu: None) -> None:
    quick = resolve(None, {"space": "cnn"})
    assert run_timeout(None, quick) == 900 and run_timeout(60.0, quick) == 60.0
    assert run_timeout(None, StudySettings()) is None


def test_cuda_visible_devices_can_hide_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert presets.gpu_visible() is False


def test_search_says_what_the_preset_chose(no_gpu: None, tmp_path: Path, tiny_npz: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path)
    assert main(["search", "--study", "q", "--storage", url, "--data", str(tiny_npz), "--preset", "quick",
                 "--subset", "300", "--val-size", "100", "--epochs", "1", "--n-trials", "1",
                 "--recycle-after", "0"]) == 0
    err = capsys.readouterr().err
    assert "preset quick (no GPU found): 300 training images, CPU-sized models, up to 1 epoch per trial, " \
           "1 trial or 15 min, whichever comes first" in err
    stored = optuna.load_study(study_name="q", storage=url).user_attrs["hpo_settings"]
    assert stored["preset"] == "quick" and stored["space_overrides"] == cnn.CPU_BOUNDS and stored["timeout"] == 900
