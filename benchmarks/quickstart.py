"""The README's quick start, measured: its first command in a fresh folder, then `hpo report`, timed.

    python benchmarks/quickstart.py --data DIR/cifar10.npz [--captures 120 480] [--out benchmarks/results/quickstart.json]

Runs `hpo search --space cnn --study cnn-demo --data DATA` exactly as the README gives it (only --data added,
since Keras downloads do not work everywhere), in a terminal (a detached tmux session, so the progress display
is the one a user sees), captures that terminal at the given seconds into docs/screenshots/progress-<s>s.txt,
then runs `hpo report --study cnn-demo` in the same folder. The JSON holds the machine, the wall clock of
each command, the preset the study ran under, every trial's state and value, the seed baseline's and the best
validation accuracy, and the report's files. Without tmux the search runs without a terminal (one line per
trial) and nothing is captured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"


def hpo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifar_hpo.search.cli", *args]


def run_in_terminal(command: list[str], folder: Path, captures: list[float]) -> tuple[int, float, list[Path]]:
    """Run ``command`` in a detached 150x12 tmux terminal; capture the screen at ``captures`` seconds."""
    session = f"hpo-quickstart-{os.getpid()}"
    rc_file = folder / ".rc"
    shell = f"cd {shlex.quote(str(folder))} && {shlex.join(command)}; echo $? > {shlex.quote(str(rc_file))}"
    start = time.monotonic()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "12", shell], check=True)
    shots, pending = [], sorted(captures)
    try:
        while not rc_file.exists():
            if pending and time.monotonic() - start >= pending[0]:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                        text=True).stdout
                path = SCREENSHOTS / f"progress-{int(pending.pop(0))}s.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(screen.rstrip() + "\n")
                shots.append(path)
            time.sleep(1.0)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return int(rc_file.read_text().strip() or 1), time.monotonic() - start, shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz")
    parser.add_argument("--captures", type=float, nargs="*", default=[120.0, 480.0],
                        help="seconds into the search at which to capture the terminal")
    parser.add_argument("--workdir", type=Path, help="fresh folder to run in (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart.json")
    args = parser.parse_args(argv)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-quickstart-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).expanduser().resolve())
    search = hpo_command("search", "--space", "cnn", "--study", "cnn-demo", "--data", data)
    if shutil.which("tmux"):
        code, search_s, shots = run_in_terminal(search, folder, args.captures)
    else:
        start = time.monotonic()
        code, shots = subprocess.run(search, cwd=folder).returncode, []
        search_s = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"quickstart: the search failed (exit {code}) in {folder}")
    start = time.monotonic()
    report = hpo_command("report", "--study", "cnn-demo")
    subprocess.run(report, cwd=folder, check=True, capture_output=True)
    report_s = time.monotonic() - start

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="cnn-demo", storage=f"sqlite:///{folder / 'hpo.db'}")
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "baseline": bool(t.user_attrs.get("baseline")),
               "prior": t.user_attrs.get("prior"), "epochs_run": t.user_attrs.get("epochs_run"),
               "wall_seconds": t.user_attrs.get("wall_seconds")} for t in study.trials]
    baseline = next((t for t in trials if t["baseline"]), None)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    result = {
        "what": "the README's quick start as a newcomer runs it, in a fresh folder",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "commands": ["hpo search --space cnn --study cnn-demo --data DIR/cifar10.npz", "hpo report --study cnn-demo"],
        "settings": study.user_attrs.get("hpo_settings"),
        "wall_seconds": {"search": round(search_s, 1), "report": round(report_s, 1),
                         "total": round(search_s + report_s, 1)},
        "baseline_val_accuracy": None if baseline is None else baseline["value"],
        "best": best, "trials": trials,
        "report_files": sorted(p.name for p in (folder / "report").iterdir()),
        "terminal_captures": [str(p.relative_to(ROOT)) for p in shots],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"search {search_s / 60:.1f} min, report {report_s:.0f} s; baseline val "
          f"{result['baseline_val_accuracy']}, best val {best and best['value']} (trial {best and best['number']}); "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
