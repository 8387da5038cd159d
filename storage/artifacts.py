"""Trial models as Optuna artifacts: where a study's artifact store is, atomic uploads, keeping the top K.

Where: ``--artifacts DIR`` when the study was created with it (stored in its settings; a worker may pass its
own local path to the same store), else beside a SQLite database (``hpo.db`` -> ``hpo-artifacts/``). A
PostgreSQL or in-memory study has no natural "beside": it keeps models only when created with ``--artifacts``.

Never a half-written model behind a link: the model file is complete before it is uploaded, the store writes
to a temporary name and renames it into place (FileSystemArtifactStore writes in place), and the trial's link
is written only after that rename (optuna.artifacts.upload_artifact links first and writes second, so its
link is held back until the write returns: see _LinkAfterWrite). A process killed at any point leaves at
worst an unlinked file (a ``.partial-*`` name or an artifact no trial points to), never a link to a missing
or partial file.

Keeping the top K: after each upload, the models of complete trials that fell out of the top K by validation
value (and of trials that failed after uploading) are removed from the store. The removal is first marked in a
study user attr (REMOVED_MODEL_PREFIX + artifact id) that every reader here checks; then, on a database
storage, the trial's link itself is deleted, so optuna-dashboard no longer lists a model it cannot serve.
Optuna has no API that deletes a trial's system attr (nor may a finished trial be written to), so that one
row is deleted through Optuna's own schema model; through the gRPC proxy the marked link stays.

A writer killed mid-upload leaves a ``.partial-*`` file under no link; a keeper starting on the store removes
those older than PARTIAL_MAX_AGE_S (a younger one may be another worker's upload in progress).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Mapping, Sequence

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.storage.attrs import MODEL_ARTIFACT_ATTR, REMOVED_MODEL_PREFIX, SETTINGS_ATTR
from cifar_hpo.storage.counting import rdb_storage
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.storage.urls import is_memory, normalize_url, sqlite_path

_logger = logging.getLogger(__name__)

ARTIFACTS_SUFFIX = "-artifacts"
PARTIAL_PREFIX = ".partial-"
PARTIAL_MAX_AGE_S = 3600.0
# The trial system attr prefix under which optuna.artifacts links an artifact (optuna/artifacts/_upload.py).
ARTIFACT_LINK_PREFIX = "artifacts:"


def default_artifact_dir(url: str) -> Path | None:
    """``<db stem>-artifacts/`` beside a SQLite database; None for PostgreSQL and in-memory storages."""
    if is_memory(url):
        return None
    path = sqlite_path(normalize_url(url))
    return None if path is None else path.with_name(path.stem + ARTIFACTS_SUFFIX)


def artifact_dir(artifacts: str | None, url: str | None) -> Path | None:
    """The study's store folder: its ``--artifacts`` setting, else the default beside its database."""
    if artifacts:
        return Path(artifacts).expanduser().resolve()
    return None if url is None else default_artifact_dir(url)


def study_url(study: optuna.Study) -> str | None:
    """The storage URL a study was opened on (None in memory)."""
    storage = rdb_storage(study)
    return None if storage is None else str(storage.url)


class ModelStore(FileSystemArtifactStore):
    """A FileSystemArtifactStore whose writes are atomic and whose removals tolerate a file already gone.

    Atomic: the content goes to ``.partial-<id>-<pid>`` in the same folder, is flushed to disk, then renamed
    to the artifact's name (os.replace is atomic on one file system). Tolerant: two workers may prune the same
    model, and optuna-dashboard's "delete study" removes every linked artifact, pruned ones included.
    """

    def __init__(self, base_path: str | Path) -> None:
        self.path = Path(base_path)
        super().__init__(self.path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self._get_filepath(artifact_id)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=f"{PARTIAL_PREFIX}{artifact_id}-",
                                             delete=False) as out:
                try:
                    self._copy(content_body, out)
                    out.flush()
                    os.fsync(out.fileno())
                except BaseException:
                    os.unlink(out.name)
                    raise
            os.replace(out.name, final)
        except OSError as err:
            raise StorageError(f"cannot write to the artifact store {self.path}: {err.strerror or err}") from None

    def _copy(self, source: BinaryIO, target: IO[bytes]) -> None:
        """Copies in chunks (a seam for tests that kill a writer halfway)."""
        while chunk := source.read(1 << 20):
            target.write(chunk)

    def remove(self, artifact_id: str) -> None:
        try:
            super().remove(artifact_id)
        except ArtifactNotFound:
            pass

    def has(self, artifact_id: str) -> bool:
        return self._get_filepath(artifact_id).is_file()

    def file(self, artifact_id: str) -> Path:
        return self._get_filepath(artifact_id)

    def remove_stale_partials(self, max_age_s: float = PARTIAL_MAX_AGE_S) -> list[Path]:
        """Delete ``.partial-*`` files of writers that died (older than ``max_age_s``); returns them."""
        removed = []
        cutoff = time.time() - max_age_s
        for path in self.path.glob(f"{PARTIAL_PREFIX}*") if self.path.is_dir() else []:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # another keeper removed it first
                pass
        return removed


class UnionStore:
    """Several studies' stores behind one (optuna-dashboard serves a whole storage with one artifact store).
    Artifact ids are UUIDs, so the first store that has the file is the one."""

    def __init__(self, stores: Sequence[ModelStore]) -> None:
        if not stores:
            raise ValueError("UnionStore needs at least one store")
        self.stores = list(stores)

    def _holder(self, artifact_id: str) -> ModelStore | None:
        return next((s for s in self.stores if s.has(artifact_id)), None)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        holder = self._holder(artifact_id)
        if holder is None:
            raise ArtifactNotFound(f"artifact {artifact_id} is in none of {[str(s.path) for s in self.stores]}")
        return holder.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:  # uploads from the dashboard
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for store in self.stores:
            store.remove(artifact_id)


def store_for(artifacts: str | None, url: str | None) -> ModelStore | None:
    folder = artifact_dir(artifacts, url)
    return None if folder is None else ModelStore(folder)


def study_artifact_setting(user_attrs: Mapping[str, Any]) -> str | None:
    """The ``--artifacts`` folder stored in a study's settings (None: the default, or not an hpo study)."""
    settings = user_attrs.get(SETTINGS_ATTR)
    return settings.get("artifacts") if isinstance(settings, Mapping) else None


class _LinkAfterWrite:
    """The storage as upload_artifact sees it, with the trial's link held back until the write has returned.

    upload_artifact sets the link (a trial system attr) before it writes the file; a process killed between
    the two would leave a link to nothing. Everything but that one write goes to the real storage.
    """

    def __init__(self, storage: Any) -> None:
        self._real = storage
        self.links: list[tuple[int, str, Any]] = []

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.links.append((trial_id, key, value))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def commit(self) -> None:
        for trial_id, key, value in self.links:
            self._real.set_trial_system_attr(trial_id, key, value)


def upload_linked_after_write(store: Any, file_path: str | Path, trial: optuna.trial.Trial) -> str:
    """Upload ``file_path`` as an artifact of the running ``trial``; the link exists only once the file does."""
    staged = _LinkAfterWrite(trial.storage)
    artifact_id = upload_artifact(artifact_store=store, file_path=str(file_path), study_or_trial=trial,
                                  storage=staged)
    staged.commit()
    return artifact_id


def removed_models(user_attrs: Mapping[str, Any]) -> set[str]:
    """Artifact ids whose files were removed (their links stay: see the module docstring)."""
    return {key[len(REMOVED_MODEL_PREFIX):] for key in user_attrs if key.startswith(REMOVED_MODEL_PREFIX)}


def _rank_key(number: int, value: float) -> tuple[float, int]:
    return (-value, number)


def makes_top(trials: Iterable[FrozenTrial], value: float, number: int, keep: int) -> bool:
    """Would a trial with ``value`` rank within the top ``keep`` complete trials (ties: the earlier trial)?"""
    if keep <= 0:
        return False
    mine = _rank_key(number, value)
    better = sum(1 for t in trials if t.state == TrialState.COMPLETE and t.value is not None and t.number != number
                 and _rank_key(t.number, t.value) < mine)
    return better < keep


def models_to_drop(trials: Sequence[FrozenTrial], removed: set[str], keep: int,
                   current: tuple[int, float] | None = None) -> list[FrozenTrial]:
    """Trials whose model should go: complete ones outside the top ``keep`` (``current``, a running trial about
    to complete with that value, counted among them), and failed or pruned ones that uploaded anyway.
    Running trials' models stay: each is judged once its trial has a value."""
    ranked: list[tuple[tuple[float, int], FrozenTrial | None]] = [
        (_rank_key(t.number, t.value), t) for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and t.number != (current or (None,))[0]]
    if current is not None:
        ranked.append((_rank_key(*current), None))
    ranked.sort(key=lambda pair: pair[0])
    beyond = [t for _, t in ranked[keep:] if t is not None]
    finished_badly = [t for t in trials if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    return [t for t in beyond + finished_badly
            if t.user_attrs.get(MODEL_ARTIFACT_ATTR) and t.user_attrs[MODEL_ARTIFACT_ATTR] not in removed]


def drop_models(study: optuna.Study, store: ModelStore, keep: int, current: tuple[int, float] | None = None) -> list[int]:
    """Remove the models that fell out of the top ``keep``; returns their trial numbers.

    The removal is marked before the file goes, so a reader never meets an unmarked link to a missing file.
    """
    trials = study.get_trials(deepcopy=False)
    dropped = []
    for trial in models_to_drop(trials, removed_models(study.user_attrs), keep, current):
        artifact_id = trial.user_attrs[MODEL_ARTIFACT_ATTR]
        study.set_user_attr(REMOVED_MODEL_PREFIX + artifact_id, trial.number)
        delete_link(study, trial._trial_id, artifact_id)  # no public accessor for a frozen trial's id
        store.remove(artifact_id)
        dropped.append(trial.number)
    return dropped


def delete_link(study: optuna.Study, trial_id: int, artifact_id: str) -> bool:
    """Delete a finished trial's link to ``artifact_id`` on a database storage; False where it cannot (the
    removal marker then stands alone)."""
    storage = rdb_storage(study)
    if storage is None:
        return False
    import sqlalchemy
    from optuna.storages._rdb.models import TrialSystemAttributeModel  # no public API deletes a trial attr

    model = TrialSystemAttributeModel
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.delete(model).where(model.trial_id == trial_id,
                                                    model.key == ARTIFACT_LINK_PREFIX + artifact_id))
    return True


def kept_model(trial: FrozenTrial, user_attrs: Mapping[str, Any], store: ModelStore | None) -> str | None:
    """The artifact id of ``trial``'s model if it is still kept (linked, not marked removed, file present)."""
    artifact_id = trial.user_attrs.get(MODEL_ARTIFACT_ATTR)
    if store is None or not artifact_id or artifact_id in removed_models(user_attrs):
        return None
    return artifact_id if store.has(artifact_id) else None


class ModelKeeper:
    """Keeps the models of a study's top ``keep`` complete trials in ``store``."""

    def __init__(self, store: ModelStore, keep: int) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, but got {keep=}")
        self.store, self.keep = store, keep

    def wants(self, trial: optuna.trial.Trial, value: float) -> bool:
        """Whether the trial's model would be kept, so a model that would be dropped at once is never saved."""
        return makes_top(trial.study.get_trials(deepcopy=False), value, trial.number, self.keep)

    def add(self, trial: optuna.trial.Trial, file_path: str | Path, value: float) -> str:
        """Upload the running trial's model file, record it in the trial, drop models now outside the top K."""
        artifact_id = upload_linked_after_write(self.store, file_path, trial)
        trial.set_user_attr(MODEL_ARTIFACT_ATTR, artifact_id)
        dropped = drop_models(trial.study, self.store, self.keep, current=(trial.number, value))
        if dropped:
            _logger.info("models of trial(s) %s removed: outside the top %d", dropped, self.keep)
        return artifact_id


def keeper_for(study: optuna.Study, artifacts: str | None, keep: int) -> ModelKeeper | None:
    """The study's ModelKeeper, or None when it keeps no models (K=0, or no store for this storage)."""
    if keep <= 0:
        return None
    store = store_for(artifacts, study_url(study))
    if store is None:
        return None
    stale = store.remove_stale_partials()
    if stale:
        _logger.info("removed %d half-written model file(s) of killed workers from %s", len(stale), store.path)
    return ModelKeeper(store, keep)


def storage_artifact_store(storage: Any, url: str, extra: str | None = None) -> UnionStore | None:
    """One store over every study's artifact folder in a storage (``extra`` first: a local path to a store),
    for optuna-dashboard, which serves a whole storage with one artifact store; None when there is none."""
    folders = [Path(extra).expanduser().resolve()] if extra else []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        folder = artifact_dir(study_artifact_setting(summary.user_attrs), url)
        if folder is not None:
            folders.append(folder)
    default = default_artifact_dir(url)
    if default is not None:
        folders.append(default)
    unique = list(dict.fromkeys(folders))
    return UnionStore([ModelStore(f) for f in unique]) if unique else None
