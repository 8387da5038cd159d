"""Database passwords never leak: not in messages, reports, nor on any process's command line (which `ps`
shows to every user of the machine)."""

import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from cifar_hpo.search.cli.main import build_parser, main
from cifar_hpo.search.cli.report import study_storages
from cifar_hpo.storage import mask_url

SECRET = "Zx9/q@r:7"  # the characters that broke the old pattern: / @ :
ENCODED = quote(SECRET, safe="")  # Zx9%2Fq%40r%3A7, as it stands in a valid URL


@pytest.mark.parametrize("url", [
    "postgresql://:s3cret@db.example:5432/hpo",  # empty user
    "postgresql://bob@db.example/hpo?password=s3cret&sslmode=require",  # libpq's query-string password
    "postgresql://bob:x@db.example/hpo?sslmode=require&PASSWORD=s3cret",
    "postgresql://bob:s3/cret@db.example:5432/hpo",  # unencoded / in the password
    "postgresql+psycopg://bob:s3@cr:et@db.example/hpo",  # unencoded @ and : (SQLAlchemy splits it wrongly)
    "postgresql://bob:s3%2Fcr%40et@db.example/hpo",  # percent-encoded
    "could not connect to postgresql://bob:s3cret@db.example/hpo: refused",  # a URL inside a message
    "host=db.example user=bob password=s3cret dbname=hpo",  # a libpq keyword string
])
def test_mask_url_hides_every_form_of_password(url):
    masked = mask_url(url)
    assert "s3" not in masked and "cret" not in masked and "et@" not in masked, masked
    assert "***" in masked and "db.example" in masked


def test_mask_url_keeps_urls_without_password():
    assert mask_url("sqlite:////tmp/hpo.db") == "sqlite:////tmp/hpo.db"
    assert mask_url("postgresql://bob@db.example:5432/hpo?sslmode=require") == \
        "postgresql://bob@db.example:5432/hpo?sslmode=require"


def test_every_command_takes_its_storage_from_HPO_STORAGE(monkeypatch):
    url = f"postgresql://bob:{ENCODED}@db.example/hpo"
    monkeypatch.setenv("HPO_STORAGE", url)
    parser = build_parser()
    for argv in (["search", "--study", "s"], ["worker", "--study", "s"], ["launch", "--study", "s", "--workers", "1"],
                 ["export", "--study", "s", "-o", "x.json"], ["dashboard"]):
        assert parser.parse_args(argv).storage == url, argv
    report = parser.parse_args(["report", "--study", "s", "--study", "t"])  # one --storage per study, or none
    assert study_storages(report.study, report.storage) == [("s", url), ("t", url)]
    assert SECRET not in parser.format_help() and ENCODED not in parser.format_help()
    monkeypatch.delenv("HPO_STORAGE")
    assert build_parser().parse_args(["worker", "--study", "s"]).storage == "sqlite:///hpo.db"


class CommandLines:
    """Records the command line of every descendant of this process while it runs (from /proc)."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}  # pid -> its command line (a zombie's reads empty: kept from before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        me, found = int(Path("/proc/self").resolve().name), []
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor != me:
                ancestor = parents.get(ancestor)
            if ancestor == me:
                found.append(pid)
        return found

    def _watch(self) -> None:
        while not self._stop.is_set():
            for pid in self._descendants():
                try:
                    line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if line:
                    self.seen[pid] = line
            time.sleep(0.05)

    def __enter__(self) -> "CommandLines":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.postgres
def test_launch_and_report_never_show_the_password(postgres_url, pg_study, tiny_npz, tmp_path, capfd):
    """trust auth: the server ignores the password, so a URL with one connects for real."""
    url = postgres_url.replace("postgres@", f"postgres:{ENCODED}@", 1)
    assert url != postgres_url
    with CommandLines() as commands:
        rc = main(["launch", "--study", pg_study, "--storage", url, "--workers", "2", "--n-trials", "2",
                   "--space", "cnn", "--data", str(tiny_npz), "--val-size", "100", "--epochs", "1"])
    launch_out = capfd.readouterr()
    out = tmp_path / "report"
    assert main(["report", "--study", pg_study, "--storage", url, "--out", str(out)]) == 0
    report_out = capfd.readouterr()
    assert rc == 0, launch_out.err
    workers = [line for line in commands.seen.values() if " worker " in line]
    assert len(workers) == 2, commands.seen  # the workers ran, and connected without the URL on their argv
    assert any("spawn_main" in line for line in commands.seen.values()), commands.seen  # their trial processes
    # The whole password, raw or percent-encoded: a 3-letter fragment also turns up by chance in the base64 of
    # the report's embedded PNGs, while '/', '@', ':' and '%' never do.
    forms = (SECRET, ENCODED)
    leaks = [f"argv of pid {pid}: {line}" for pid, line in commands.seen.items() if any(f in line for f in forms)]
    for name, text in [("launch stdout", launch_out.out), ("launch stderr", launch_out.err),
                       ("report stdout", report_out.out), ("report stderr", report_out.err)]:
        if any(form in text for form in forms):
            leaks.append(f"{name}: {text}")
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {"report.md", "report.html"} <= {path.name for path in files}
    leaks += [f"file {path}" for path in files if any(form.encode() in path.read_bytes() for form in forms)]
    assert not leaks, leaks
    assert "postgres:***@" in (out / "report.md").read_text()
