"""Open (create or resume) an hpo study: settings from the study, data checked against its fingerprint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from cifar_hpo.search.models.data import Cifar10, Split, load_cifar10, split_train_val
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.study_note import annotate_new_study
from cifar_hpo.search.settings import StudySettings, absolute_data_path, make_pruner, make_sampler, resolve
from cifar_hpo.spaces import build_space, declared_priors, get_space_module, load_overrides, place_recipe
from cifar_hpo.storage import make_storage, open_study, study_exists
from cifar_hpo.storage.studies import create_or_load_study
from cifar_hpo.storage.urls import DEFAULT_HEARTBEAT_S, is_memory, normalize_url, sqlite_path


METRIC_NAME = "val_accuracy"  # the objective every trial returns: best validation accuracy


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
    space and data are checked first. Two processes creating the same study at once: one creates it
    (settings, note, baseline); the other then resumes it, with the same settings check (and conflict
    error) as any resuming command.
    """
    prepared = None
    if given is not None and _is_new_sqlite_file(url):
        prepared = _prepare(None, given, name, data_override, space_config)
    storage = make_storage(url, heartbeat_interval=heartbeat_interval, create=given is not None)
    exists = study_exists(storage, name)
    if not exists and given is None:
        open_study(storage, name)  # raises the "does not exist" StorageError with the known names
    if prepared is None or exists:  # exists: the stored settings decide (another process may have created it)
        stored = StudySettings.from_study(optuna.load_study(study_name=name, storage=storage)) if exists else None
        prepared = _prepare(stored, given, name, data_override, space_config)
    settings, space, declared, data = prepared
    split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
    notes: list[str] = []
    if exists:
        return OpenedStudy(_load(storage, name, settings), settings, split, False, notes)

    def prepare(study: optuna.Study) -> None:  # runs only in the process that creates the study
        study.set_metric_names([METRIC_NAME])  # optuna-dashboard labels its axes with it instead of "Objective Value"
        annotate_new_study(study, settings, space, declared)
        note = enqueue_baseline(study, settings.space, space) if settings.baseline else ""
        if note:
            notes.append(note)
        if settings.priors and settings.engine == "optuna":  # KerasTuner draws its own first trials
            notes.extend(enqueue_priors(study, settings.space, space, declared))

    study, created = create_or_load_study(storage, name, settings.to_attrs(), sampler=make_sampler(settings),
                                          pruner=make_pruner(settings), prepare=prepare)
    if not created:  # another process created it since our check: resume it, refused if the settings differ
        stored = StudySettings.from_study(study)
        settings, _, _ = _settings(stored, _given_with_paths(given, stored, space_config), data_override)
        check_fingerprint(settings, data.fingerprint(), settings.data, f"study {name!r}")
        settings = dataclasses.replace(settings, data_fingerprint=data.fingerprint())
        split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
        study = _load(storage, name, settings)
    return OpenedStudy(study, settings, split, created=created, notes=notes)


def _is_new_sqlite_file(url: str) -> bool:
    path = sqlite_path(normalize_url(url)) if not is_memory(url) else None
    return path is not None and not path.exists()


def _given_with_paths(given: dict[str, Any] | None, stored: StudySettings | None,
                      space_config: str | None) -> dict[str, Any]:
    """The flags passed, with the data path made absolute and the --space-config file read into overrides."""
    given = dict(given or {})
    if "data" in given:
        given["data"] = absolute_data_path(given["data"])
    if space_config is not None:
        space_name = given.get("space") or (stored.space if stored else "cnn")
        try:
            given["space_overrides"] = load_overrides(space_config, space_name)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
    return given


def _prepare(stored: StudySettings | None, given: dict[str, Any] | None, name: str, data_override: str | None,
             space_config: str | None) -> tuple[StudySettings, Any, dict[str, Any], Cifar10]:
    """Settings, space, declared priors and data for this command; every ConfigError a bad flag can cause
    comes from here."""
    settings, space, declared = _settings(stored, _given_with_paths(given, stored, space_config), data_override)
    data = load_study_data(settings, None, f"study {name!r}")
    return dataclasses.replace(settings, data_fingerprint=data.fingerprint()), space, declared, data


def _settings(stored: StudySettings | None, given: dict[str, Any],
              data_override: str | None) -> tuple[StudySettings, Any, dict[str, Any]]:
    """This command's settings (stored ones checked against ``given``), the search space they define and the
    recipes their space config declares (``declared_priors``), checked here, before anything is written."""
    settings = resolve(stored, given)
    if data_override is not None:
        settings = dataclasses.replace(settings, data=absolute_data_path(data_override))
    try:
        space = build_space(settings.space, settings.space_overrides, settings.space_version)
        declared = declared_priors(settings.space, settings.space_overrides, space)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"space {settings.space!r}: {err}") from None
    if settings.space == "inception":
        from cifar_hpo.search.models.inception import check_weights

        check_weights(settings.weights)
    return settings, space, declared


def _load(storage: Any, name: str, settings: StudySettings) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(settings),
                             pruner=make_pruner(settings))


def load_study_data(settings: StudySettings, data_override: str | None, what: str) -> Cifar10:
    """The study's data (or ``data_override``), refused when its fingerprint is not the one ``what`` ran on."""
    path = absolute_data_path(data_override) if data_override else settings.data
    data = load_cifar10(path)
    check_fingerprint(settings, data.fingerprint(), path, what)
    return data


def check_fingerprint(settings: StudySettings, fingerprint: str, path: str | None, what: str) -> None:
    if settings.data_fingerprint not in (None, fingerprint):
        raise ConfigError(
            f"the data at {path or 'keras.datasets.cifar10'} (fingerprint {fingerprint}) is not the data {what} "
            f"was run on ({settings.data_fingerprint}); pass --data with that data"
        )


def enqueue_baseline(study: optuna.Study, space_name: str, space: Any) -> str:
    """Queue the hand-tuned model as the first trial, unless the (overridden) bounds exclude it."""
    baseline = get_space_module(space_name).BASELINE
    return _enqueue_inside(study, space_name, space, baseline, {"baseline": True}, "seed baseline")


def enqueue_priors(study: optuna.Study, space_name: str, space: Any, declared: dict[str, Any]) -> list[str]:
    """Queue the space's strong known recipes (after the baseline), those the bounds exclude skipped, then
    ``declared``: the recipes the space config declares (``declared_priors``, already checked)."""
    priors = {**get_space_module(space_name).PRIORS, **declared}
    notes = [_enqueue_inside(study, space_name, space, config, {"prior": name}, f"prior {name!r}")
             for name, config in priors.items()]
    return [note for note in notes if note]


def _enqueue_inside(study: optuna.Study, space_name: str, space: Any, config: Any, user_attrs: dict[str, Any],
                    what: str) -> str:
    """Queue ``config`` as ``place_recipe`` places it. Returns "" if queued unchanged, else the note saying
    which pinned values changed it, or why it was not queued."""
    placement = place_recipe(space_name, space, config)
    if placement.refusal:
        return f"{what} not enqueued: {placement.refusal}"
    study.enqueue_trial(placement.params, user_attrs=user_attrs, skip_if_exists=True)
    if placement.pinned:
        pins = ", ".join(f"{key} = {value}" for key, value in placement.pinned.items())
        return f"{what} enqueued with the study's pinned {pins}"
    return ""
