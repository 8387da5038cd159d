"""Trial models as Optuna artifacts (storage/artifacts.py): where the store is, atomic uploads whose link comes
after the file (even for a process killed mid-write), and keeping only the top K complete trials' models."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState, create_trial

from cifar_hpo.storage import make_storage
from cifar_hpo.storage.artifacts import (PARTIAL_PREFIX, ModelKeeper, ModelStore, UnionStore, default_artifact_dir,
                                         drop_models, kept_model, makes_top, models_to_drop, removed_models,
                                         upload_linked_after_write)
from cifar_hpo.storage.attrs import MODEL_ARTIFACT_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)


def linked_files(study: optuna.Study, store: ModelStore) -> dict[int, list[Path]]:
    """Every trial's linked artifact files (through Optuna's public listing)."""
    return {t.number: [store.file(m.artifact_id) for m in get_all_artifact_meta(t, storage=study._storage)]
            for t in study.get_trials(deepcopy=False)}


def test_default_store_lies_beside_a_sqlite_file_only(tmp_path: Path) -> None:
    assert default_artifact_dir(f"sqlite:///{tmp_path / 'hpo.db'}") == tmp_path / "hpo-artifacts"
    assert default_artifact_dir("postgresql://postgres@127.0.0.1:5432/test") is None
    assert default_artifact_dir("memory://") is None


def test_write_is_atomic_and_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "store")
    store.write("a1", io.BytesIO(b"x" * 3_000_000))
    assert store.file("a1").read_bytes() == b"x" * 3_000_000

    def half_then_fail(source, target) -> None:
        target.write(source.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_copy", half_then_fail)
    with pytest.raises(Exception, match="No space left"):
        store.write("a2", io.BytesIO(b"y" * 1000))
    assert sorted(p.name for p in store.path.iterdir()) == ["a1"]  # no a2, no partial file
    store.remove("a2")  # a file already gone is not an error (two workers may prune the same model)


def test_the_link_is_written_only_after_the_file(tmp_path: Path) -> None:
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"), direction="maximize")
    trial = study.ask()
    model = tmp_path / "trial-0.keras"
    model.write_bytes(b"model bytes")
    seen_during_write: list[int] = []

    class Watching(ModelStore):
        def _copy(self, source, target) -> None:
            seen_during_write.append(len(get_all_artifact_meta(trial)))
            super()._copy(source, target)

    store = Watching(tmp_path / "store")
    artifact_id = upload_linked_after_write(store, model, trial)
    assert seen_during_write == [0]
    [meta] = get_all_artifact_meta(trial)
    assert meta.artifact_id == artifact_id and meta.filename == "trial-0.keras"
    assert store.file(artifact_id).read_bytes() == b"model bytes"


KILLED_UPLOAD = """
import os, sys, time, optuna
from cifar_hpo.storage import make_storage
from cifar_hpo.storage.artifacts import ModelKeeper, ModelStore

url, store_dir, model, marker = sys.argv[1:5]
study = optuna.load_study(study_name="s", storage=make_storage(url))
trial = study.ask()

class SlowStore(ModelStore):
    def _copy(self, source, target):
        target.write(source.read(500_000))  # half of the 1 MB model
        target.flush()
        open(marker, "w").close()  # halfway: the test kills this process now
        time.sleep(120)
        target.write(source.read())

ModelKeeper(SlowStore(store_dir), keep=3).add(trial, model, 0.9)
"""


def test_a_worker_killed_mid_upload_leaves_no_link_to_a_missing_or_partial_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=make_storage(url), direction="maximize")
    store = ModelStore(tmp_path / "store")
    # An earlier trial whose model was uploaded completely.
    done = study.ask()
    complete_model = tmp_path / "trial-0.keras"
    complete_model.write_bytes(os.urandom(200_000))
    ModelKeeper(store, keep=3).add(done, complete_model, 0.5)
    study.tell(done, 0.5)

    model, marker = tmp_path / "trial-1.keras", tmp_path / "halfway"
    model.write_bytes(os.urandom(1_000_000))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD, url, str(store.path), str(model), str(marker)],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    links = linked_files(study, store)
    assert links[1] == []  # the killed trial links nothing
    assert [p.read_bytes() for p in links[0]] == [complete_model.read_bytes()]
    for paths in links.values():  # every linked file exists and is whole
        assert all(p.is_file() and not p.name.startswith(PARTIAL_PREFIX) for p in paths)
    leftovers = [p for p in store.path.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 500_000  # half-written, under a name no link uses


def frozen(number: int, value: float | None, state: TrialState = TrialState.COMPLETE,
           artifact: str | None = None) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                         user_attrs={MODEL_ARTIFACT_ATTR: artifact} if artifact else {})
    trial.number = number
    return trial


def test_top_k_ranking_with_the_running_trial_counted() -> None:
    trials = [frozen(0, 0.5, artifact="a0"), frozen(1, 0.7, artifact="a1"), frozen(2, 0.6, artifact="a2"),
              frozen(3, None, TrialState.FAIL, artifact="a3"), frozen(4, None, TrialState.RUNNING, artifact="a4")]
    assert makes_top(trials, 0.65, 5, keep=2) and not makes_top(trials, 0.55, 5, keep=2)
    assert makes_top(trials, 0.6, 5, keep=3) and not makes_top(trials, 0.5, 5, keep=3)  # ties: the earlier trial
    assert not makes_top(trials, 0.99, 5, keep=0)
    drop = models_to_drop(trials, removed=set(), keep=2, current=(5, 0.65))
    assert sorted(t.number for t in drop) == [0, 2, 3]  # 0.6 and 0.5 fall out; the failed one goes; running stays
    assert [t.number for t in models_to_drop(trials, removed={"a0", "a3"}, keep=2)] == []  # already removed


def test_drop_models_removes_files_and_marks_the_links(tmp_path: Path) -> None:
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"), direction="maximize")
    store = ModelStore(tmp_path / "store")
    keeper = ModelKeeper(store, keep=2)
    ids = {}
    for value in (0.5, 0.7, 0.6, 0.8):
        trial = study.ask()
        path = tmp_path / f"trial-{trial.number}.keras"
        path.write_bytes(f"model {value}".encode())
        ids[trial.number] = keeper.add(trial, path, value)
        study.tell(trial, value)
    trials = study.get_trials()
    kept = {t.number for t in trials if kept_model(t, study.user_attrs, store)}
    assert kept == {1, 3}  # 0.7 and 0.8
    assert sorted(p.name for p in store.path.iterdir()) == sorted([ids[1], ids[3]])
    assert removed_models(study.user_attrs) == {ids[0], ids[2]}
    # The removed models' links are gone too (a fresh read, as optuna-dashboard lists them): every link that
    # is left points to a file that exists.
    fresh = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    links = linked_files(fresh, store)
    assert {n: len(paths) for n, paths in links.items()} == {0: 0, 1: 1, 2: 0, 3: 1}
    assert all(p.is_file() for paths in links.values() for p in paths)
    assert drop_models(study, store, keep=2) == []  # nothing more to drop


def test_a_starting_keeper_removes_old_half_written_files_only(tmp_path: Path) -> None:
    from cifar_hpo.storage.artifacts import PARTIAL_MAX_AGE_S, keeper_for

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=make_storage(url), direction="maximize")
    store = tmp_path / "store"
    store.mkdir()
    old, young, model = store / f"{PARTIAL_PREFIX}a-1", store / f"{PARTIAL_PREFIX}b-2", store / "c"
    for path in (old, young, model):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - PARTIAL_MAX_AGE_S - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(model, (an_hour_ago, an_hour_ago))
    assert keeper_for(study, str(store), keep=2) is not None
    assert sorted(p.name for p in store.iterdir()) == sorted([young.name, model.name])


def test_union_store_serves_each_studys_folder(tmp_path: Path) -> None:
    a, b = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b")
    a.write("id-a", io.BytesIO(b"A"))
    b.write("id-b", io.BytesIO(b"B"))
    union = UnionStore([a, b])
    assert union.open_reader("id-b").read() == b"B" and union.open_reader("id-a").read() == b"A"
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        union.open_reader("id-c")
