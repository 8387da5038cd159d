"""Open (create or resume) an hpo study: settings from the study, data checked against its fingerprint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from search.data import Cifar10, Split, load_cifar10, split_train_val
from search.errors import ConfigError
from search.study_note import annotate_new_study
from search.settings import StudySettings, absolute_data_path, make_pruner, make_sampler, resolve
from spaces import build_space, get_space_module, load_overrides
from spaces.bounds import outside_bounds
from storage import make_storage, open_study, study_exists
from storage.urls import DEFAULT_HEARTBEAT_S, is_memory, normalize_url, sqlite_path


@dataclass
class OpenedStudy:
    study: optuna.Study
    settings: StudySettings
    split: Split | None
    created: bool
    notes: list[str]  # one-line messages for the CLI to print (e.g. baseline not enqueued)

    def release_data(self) -> None:
        """For a process that only watches while others train (they load their own copy): frees the split."""
        self.split = None


def open_hpo_study(url: str, name: str, given: dict[str, Any] | None, *,
                   heartbeat_interval: int = DEFAULT_HEARTBEAT_S, data_override: str | None = None,
                   space_config: str | None = None) -> OpenedStudy:
    """``given`` holds the flags passed (None: join an existing study, never create).

    Every check that can fail runs before anything is written, so a bad flag leaves the storage untouched:
    for a SQLite file that does not exist yet, even opening the storage would create it, so the flags,
    space and data are checked first.
    """
    prepared = None
    if given is not None and _is_new_sqlite_file(url):
        prepared = _prepare(None, given, name, data_override, space_config)
    storage = make_storage(url, heartbeat_interval=heartbeat_interval, create=given is not None)
    exists = study_exists(storage, name)
    if not exists and given is None:
        open_study(storage, name)  # raises the "does not exist" ConfigError with the known names
    if prepared is None or exists:  # exists: another process created the study meanwhile
        stored = StudySettings.from_study(optuna.load_study(study_name=name, storage=storage)) if exists else None
        prepared = _prepare(stored, given, name, data_override, space_config)
    settings, space, split = prepared
    study = open_study(storage, name, create_attrs=settings.to_attrs() if not exists else None,
                       sampler=make_sampler(settings), pruner=make_pruner(settings))
    notes = []
    if not exists:
        annotate_new_study(study, settings, space)
        note = enqueue_baseline(study, settings.space, space) if settings.baseline else ""
        if note:
            notes.append(note)
    return OpenedStudy(study, settings, split, created=not exists, notes=notes)


def _is_new_sqlite_file(url: str) -> bool:
    path = sqlite_path(normalize_url(url)) if not is_memory(url) else None
    return path is not None and not path.exists()


def _prepare(stored: StudySettings | None, given: dict[str, Any] | None, name: str, data_override: str | None,
             space_config: str | None) -> tuple[StudySettings, Any, Split]:
    """Settings, space and data split for this command; every ConfigError a bad flag can cause comes from here."""
    if given is not None and "data" in given:
        given = {**given, "data": absolute_data_path(given["data"])}
    if space_config is not None:
        space_name = (given or {}).get("space") or (stored.space if stored else "cnn")
        try:
            given = {**(given or {}), "space_overrides": load_overrides(space_config, space_name)}
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
    settings = resolve(stored, given or {})
    if data_override is not None:
        settings = dataclasses.replace(settings, data=absolute_data_path(data_override))
    try:
        space = build_space(settings.space, settings.space_overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"space {settings.space!r}: {err}") from None
    if settings.space == "inception":
        from search.inception_model import check_weights

        check_weights(settings.weights)
    data = load_study_data(settings, None, f"study {name!r}")
    settings = dataclasses.replace(settings, data_fingerprint=data.fingerprint())
    split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
    return settings, space, split


def load_study_data(settings: StudySettings, data_override: str | None, what: str) -> Cifar10:
    """The study's data (or ``data_override``), refused when its fingerprint is not the one ``what`` ran on."""
    path = absolute_data_path(data_override) if data_override else settings.data
    data = load_cifar10(path)
    fingerprint = data.fingerprint()
    if settings.data_fingerprint not in (None, fingerprint):
        raise ConfigError(
            f"the data at {path or 'keras.datasets.cifar10'} (fingerprint {fingerprint}) is not the data {what} "
            f"was run on ({settings.data_fingerprint}); pass --data with that data"
        )
    return data


def enqueue_baseline(study: optuna.Study, space_name: str, space: Any) -> str:
    """Queue the hand-tuned model as the first trial, unless the (overridden) bounds exclude it."""
    params = get_space_module(space_name).BASELINE.to_params()
    outside = outside_bounds(space, params)
    if outside:
        return f"seed baseline not enqueued: its {', '.join(outside)} lie outside this study's bounds"
    study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
    return ""
