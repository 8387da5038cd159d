"""`hpo dashboard`: served in a subprocess on the live SQLite file that workers write to, checked through its
JSON API, its bound address, and a real headless Chromium (marked `browser`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from hpo_testkit import ROOT, make_tiny_cifar
from cifar_hpo.search.cli import main
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.search.study_note import annotate_new_study
from cifar_hpo.spaces import build_space
from cifar_hpo.storage import make_storage, open_study
from cifar_hpo.storage.errors import StorageError

get_note = pytest.importorskip("optuna_dashboard").get_note

ARTIFACTS = ROOT / "test-artifacts"
LOCKED = "database is locked"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic")

# A plain Optuna worker on make_storage: many small writes (5 intermediate values, 2 user attrs per trial).
WRITER = """
import sys, optuna
from cifar_hpo.storage import make_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=make_storage(sys.argv[1], create=False))
def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    for step in range(1, 6):
        trial.report(x * step / 5, step)
    trial.set_user_attr("best_epoch", 5)
    trial.set_user_attr("train_images_per_s", 1000.0 + trial.number)
    return x
study.optimize(objective, n_trials=int(sys.argv[3]))
"""


# ---------------------------------------------------------------- helpers

class Dashboard:
    """`hpo dashboard --port 0` in a subprocess; the URL it prints tells the port it got."""

    def __init__(self, storage_url: str, workdir: Path, *extra: str) -> None:
        self.out, self.err = workdir / "dashboard.out", workdir / "dashboard.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cifar_hpo.search.cli", "dashboard", "--storage", storage_url, "--port", "0", *extra],
                cwd=ROOT, stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while (match := re.search(r"open (http://[^/\s]+)(\S*)", self.out.read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"dashboard did not start: {self.err.read_text()}")
            time.sleep(0.1)
        self.base, self.page = match.group(1), match.group(1) + match.group(2)
        self.port = int(self.base.rsplit(":", 1)[1])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            assert response.status == 200
            return json.loads(response.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)


def study_id(dashboard: Dashboard, name: str) -> int:
    studies = dashboard.get("/api/studies")["study_summaries"]
    return next(s["study_id"] for s in studies if s["study_name"] == name)


def poll_while_running(dashboard: Dashboard, sid: int, procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Read the study list and the study's trials as fast as the dashboard answers until the workers exit."""
    counts: list[int] = []
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "workers did not finish in time"
        assert any(s["study_id"] == sid for s in dashboard.get("/api/studies")["study_summaries"])
        counts.append(len(dashboard.get(f"/api/studies/{sid}")["trials"]))
    return counts


def settled(dashboard: Dashboard, sid: int, expected: int) -> dict:
    """The study detail once the dashboard's trial cache (a TTL of a few seconds) shows all ``expected`` trials."""
    deadline = time.monotonic() + 30
    while True:
        detail = dashboard.get(f"/api/studies/{sid}")
        if len(detail["trials"]) == expected and all(t["state"] != "Running" for t in detail["trials"]):
            return detail
        assert time.monotonic() < deadline, f"dashboard shows {len(detail['trials'])} trials, storage has {expected}"
        time.sleep(0.5)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # kernel stores host order
                found.add(socket.inet_ntop(family, words))
    return found


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (the route a packet out would take), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent by a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def sqlite_study(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=name, storage=make_storage(url), direction="maximize")
    return url


# ---------------------------------------------------------------- configuration errors (in-process)

def test_port_in_use_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = sqlite_study(tmp_path, "s")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rc = main(["dashboard", "--storage", url, "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "in use" in err and "--port" in err and "Traceback" not in err


@pytest.mark.parametrize("url, expected", [
    ("not-a-url", "not a database URL"),
    ("memory://", "cannot be watched"),
    ("sqlite:///{tmp}/missing.db", "does not exist"),
    ("postgresql://postgres@127.0.0.1:1/test", "cannot open storage"),
])
def test_bad_storage_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, url: str,
                                        expected: str) -> None:
    rc = main(["dashboard", "--storage", url.format(tmp=tmp_path), "--port", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "missing.db").exists()  # a dashboard never creates a storage


def test_unknown_study_and_bad_port(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = sqlite_study(tmp_path, "known")
    assert main(["dashboard", "--storage", url, "--study", "other", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "'other' does not exist" in err and "known" in err
    assert main(["dashboard", "--storage", url, "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err


# ---------------------------------------------------------------- live SQLite: plain Optuna writers

@pytest.fixture(scope="module")
def hammered(tmp_path_factory: pytest.TempPathFactory):
    """A study as `hpo search` creates it (settings, note) that two Optuna writers on make_storage fill with
    50 trials, while the dashboard's API is read as fast as it answers."""
    work = tmp_path_factory.mktemp("hammer")
    name, url, per_writer = "hammer", f"sqlite:///{work / 'study.db'}", 25
    settings = StudySettings(data=str(work / "tiny.npz"), val_size=100, epochs=5, n_trials=2 * per_writer)
    annotate_new_study(open_study(make_storage(url), name, create_attrs=settings.to_attrs()), settings,
                       build_space("cnn"), {})
    dashboard = Dashboard(url, work, "--study", name)
    try:
        sid = study_id(dashboard, name)
        logs = [(work / f"writer{i}.log").open("w") for i in range(2)]
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(per_writer)], cwd=ROOT,
                                    stdout=log, stderr=log) for log in logs]
        counts = poll_while_running(dashboard, sid, writers, timeout=240)
        yield {"dashboard": dashboard, "name": name, "sid": sid, "counts": counts, "writers": writers,
               "expected": 2 * per_writer, "detail": settled(dashboard, sid, 2 * per_writer),
               "logs": [(work / f"writer{i}.log").read_text() for i in range(2)]}
    finally:
        dashboard.stop()


def test_api_answers_while_writers_hammer_the_same_sqlite_file(hammered: dict) -> None:
    assert [w.returncode for w in hammered["writers"]] == [0, 0], hammered["logs"]
    assert not any(LOCKED in text for text in hammered["logs"] + [hammered["dashboard"].err.read_text()])
    counts = hammered["counts"]
    assert len(counts) >= 3 and counts == sorted(counts)  # the dashboard kept answering while trials grew
    trials = hammered["detail"]["trials"]
    assert len(trials) == hammered["expected"]
    assert all(t["state"] == "Complete" and len(t["intermediate_values"]) == 5 for t in trials)
    assert all({a["key"] for a in t["user_attrs"]} == {"best_epoch", "train_images_per_s"} for t in trials)


def test_study_note_is_served(hammered: dict) -> None:
    body = hammered["detail"]["note"]["body"]
    for text in ("hammer: `cnn` space", "tiny.npz", "100 validation images", "up to 5 epochs per trial, 50 trials",
                 "pruner**: hyperband", "| depth | [2, 4] |", "| adam_learning_rate |"):
        assert text in body


def test_prints_the_study_link_and_listens_on_loopback_only(hammered: dict) -> None:
    dashboard = hammered["dashboard"]
    assert dashboard.page == f"http://127.0.0.1:{dashboard.port}/dashboard/studies/{hammered['sid']}"
    if sys.platform.startswith("linux"):
        assert listening_addresses(dashboard.port) == {"127.0.0.1"}
    other = non_loopback_address()
    if other is not None:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://{other}:{dashboard.port}/api/studies", timeout=5)


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    dashboard = Dashboard(sqlite_study(tmp_path, "s"), tmp_path)
    assert dashboard.get("/api/studies")["study_summaries"][0]["study_name"] == "s"
    assert dashboard.stop() == 0
    assert "stopped" in dashboard.err.read_text() and "Traceback" not in dashboard.err.read_text()


@pytest.mark.postgres
def test_serves_a_postgresql_storage(postgres_url: str, pg_study: str, tmp_path: Path) -> None:
    optuna.create_study(study_name=pg_study, storage=make_storage(postgres_url), direction="maximize")
    dashboard = Dashboard(postgres_url, tmp_path, "--study", pg_study)
    try:
        assert pg_study in {s["study_name"] for s in dashboard.get("/api/studies")["study_summaries"]}
        assert dashboard.get(f"/api/studies/{study_id(dashboard, pg_study)}")["name"] == pg_study
    finally:
        assert dashboard.stop() == 0


# ---------------------------------------------------------------- a real browser

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; skipped when absent unless HPO_REQUIRE_BROWSER=1 (CI), which fails instead."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium required (HPO_REQUIRE_BROWSER=1) but `chromium` is not installed; "
                        "apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


def render(chromium: str, url: str, screenshot: Path, profile: Path) -> str:
    """The page's text after its scripts ran and its API calls answered; a screenshot of it is kept."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
         "--window-size=1400,900", "--hide-scrollbars", f"--screenshot={screenshot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def check_rendered(chromium: str, study: dict, tag: str, profiles: Path) -> None:
    """The trials page names the study and shows every trial; the note page shows the space's bounds."""
    dashboard, name, sid = study["dashboard"], study["name"], study["sid"]
    n_trials = len(study["detail"]["trials"])
    text = render(chromium, f"{dashboard.page}/trials", ARTIFACTS / f"dashboard-{tag}-trials.png",
                  profiles / "trials")
    assert f"{name} (id={sid})" in text
    assert f"{n_trials} Trials" in text
    assert "Trial 0 " in text  # the list is virtualised: only the rows on screen are in the DOM
    assert "Intermediate Values" in text and "best_epoch" in text  # the selected trial's curve and attrs
    note = render(chromium, f"{dashboard.page}/note", ARTIFACTS / f"dashboard-{tag}-note.png", profiles / "note")
    assert f"{name}: cnn space" in note and "augment_strength" in note and "tiny.npz" in note


@pytest.mark.browser
def test_chromium_renders_the_study_with_its_trials(chromium: str, hammered: dict, tmp_path: Path) -> None:
    check_rendered(chromium, hammered, "hammer", tmp_path)


# ---------------------------------------------------------------- live SQLite: real `hpo` workers (slow)

@pytest.fixture(scope="module")
def live_study(tmp_path_factory: pytest.TempPathFactory):
    """`hpo search` and an `hpo worker` train tiny trials into one SQLite file while the dashboard is polled."""
    work = tmp_path_factory.mktemp("live")
    np.savez(work / "tiny.npz", **make_tiny_cifar())
    name, url = "check", f"sqlite:///{work / 's.db'}"
    command = [sys.executable, "-m", "cifar_hpo.search.cli", "search", "--study", name, "--storage", url, "--data",
               str(work / "tiny.npz"), "--val-size", "100", "--epochs", "2", "--pruner", "none", "--n-trials", "4"]
    logs = [(work / f"worker{i}.log").open("w") for i in range(2)]
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT)]
    deadline = time.monotonic() + 180
    while not study_is_created(url, name):
        assert workers[0].poll() is None and time.monotonic() < deadline, (work / "worker0.log").read_text()
        time.sleep(0.5)
    join = [sys.executable, "-m", "cifar_hpo.search.cli", "worker", "--study", name, "--storage", url, "--quiet"]
    workers.append(subprocess.Popen(join, cwd=ROOT, stdout=logs[1], stderr=subprocess.STDOUT))
    dashboard = Dashboard(url, work, "--study", name)
    try:
        sid = study_id(dashboard, name)
        counts = poll_while_running(dashboard, sid, workers, timeout=600)
        detail = settled(dashboard, sid, len(make_storage(url, create=False).get_all_trials(sid)))
        yield {"dashboard": dashboard, "name": name, "sid": sid, "counts": counts, "detail": detail,
               "workers": workers, "logs": [(work / f"worker{i}.log").read_text() for i in range(2)]}
    finally:
        dashboard.stop()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def study_is_created(url: str, name: str) -> bool:
    """True once the study exists with its note (the note is written right after the settings)."""
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(url, create=False))
    except (ConfigError, StorageError, KeyError):  # StorageError: the SQLite file is not there yet
        return False
    return bool(get_note(study))


@pytest.mark.slow
def test_dashboard_follows_hpo_workers_without_locking(live_study: dict) -> None:
    logs = live_study["logs"]
    assert [w.returncode for w in live_study["workers"]] == [0, 0], logs
    assert not any(LOCKED in text for text in logs + [live_study["dashboard"].err.read_text()])
    assert live_study["counts"] and live_study["counts"] == sorted(live_study["counts"])
    trials = live_study["detail"]["trials"]
    assert len(trials) >= 4
    complete = [t for t in trials if t["state"] == "Complete"]
    assert complete
    for trial in complete:  # enough to judge a trial from the dashboard alone
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"params", "train_images_per_s", "best_epoch", "history"} <= set(attrs)
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2]
    # The workers' trial processes kept the best complete trials' models (default: 3, beside the SQLite file),
    # and the dashboard serves them: a Keras zip file each.
    with_model = [t for t in complete if t["artifacts"]]
    assert 1 <= len(with_model) <= len(complete)
    for trial in with_model:
        [artifact] = trial["artifacts"]
        url = f"{live_study['dashboard'].base}/artifacts/{live_study['sid']}/{trial['trial_id']}/{artifact['artifact_id']}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read(2) == b"PK"  # .keras files are zip archives
        except urllib.error.HTTPError:  # a model that fell out of the top 3 since: its link stays, its file is gone
            assert len(with_model) > 3


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_renders_a_live_hpo_study(chromium: str, live_study: dict, tmp_path: Path) -> None:
    check_rendered(chromium, live_study, "live", tmp_path)


# ---------------------------------------------------------------- trial models (Optuna artifacts)

def test_serves_each_studys_kept_models_for_download(tmp_path: Path) -> None:
    """Two studies: one with its store beside the SQLite file (the default), one with --artifacts elsewhere;
    the dashboard lists each trial's model and serves its bytes as they are in the store."""
    from cifar_hpo.storage.artifacts import ModelKeeper, ModelStore

    url = f"sqlite:///{tmp_path / 'study.db'}"
    stores = {"beside": ModelStore(tmp_path / "study-artifacts"), "elsewhere": ModelStore(tmp_path / "models")}
    uploaded: dict[str, tuple[int, str, bytes]] = {}
    for name, store in stores.items():
        settings = StudySettings(data=str(tmp_path / "tiny.npz"), val_size=100, epochs=1,
                                 artifacts=str(store.path) if name == "elsewhere" else None)
        study = open_study(make_storage(url), name, create_attrs=settings.to_attrs())
        trial = study.ask()
        model = tmp_path / f"trial-{trial.number}.keras"
        model.write_bytes(os.urandom(300_000))
        artifact_id = ModelKeeper(store, keep=1).add(trial, model, 0.5)
        study.tell(trial, 0.5)
        uploaded[name] = (trial._trial_id, artifact_id, model.read_bytes())
    dashboard = Dashboard(url, tmp_path)
    try:
        for name, (trial_id, artifact_id, content) in uploaded.items():
            sid = study_id(dashboard, name)
            detail = dashboard.get(f"/api/studies/{sid}")
            assert detail["trials"][0]["trial_id"] == trial_id
            [listed] = detail["trials"][0]["artifacts"]
            assert listed["artifact_id"] == artifact_id and listed["filename"] == "trial-0.keras"
            with urllib.request.urlopen(f"{dashboard.base}/artifacts/{sid}/{trial_id}/{artifact_id}", timeout=30) as r:
                assert r.status == 200 and r.read() == content == stores[name].file(artifact_id).read_bytes()
    finally:
        assert dashboard.stop() == 0
