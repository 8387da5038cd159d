"""What a person watching a study sees: on a terminal one progress bar (finished trials of the budget, the
running trials' epoch k/n and last validation accuracy or cache fill with its time left, best so far, a time
left that counts epochs); elsewhere (nohup, CI, a scheduler's log) one plain line per finished trial.

Everything comes from the storage: counts, the running trials' intermediate values (one per epoch), and the
phase a trial process stores in its user attrs (search/runtime/objective.py PhaseWriter): no extra IPC.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence, TextIO

from tqdm import tqdm

from cifar_hpo.storage.attrs import PHASE_ATTR
from cifar_hpo.storage.counting import TrialCounts

PHASE_STALE_S = 120.0  # a phase not updated for this long is not shown (its trial moved on or died)
DIGEST_CHARS = 70


def duration(seconds: float | None) -> str:
    """'45s', '12m', '2h05m'."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 600 else f"{round(seconds / 60)}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def params_digest(params: dict[str, Any], limit: int = DIGEST_CHARS) -> str:
    text = " ".join(f"{k}={_short(v)}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trial_seconds(trial: Any) -> float | None:
    wall = trial.user_attrs.get("wall_seconds")
    if wall is not None:
        return float(wall)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_line(trial: Any) -> str:
    """number, state, value, a short params digest, seconds."""
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    seconds = trial_seconds(trial)
    took = f"{seconds:.1f}s" if seconds is not None else "?"
    epochs = len(trial.intermediate_values)
    at = f" after {epochs} epoch{'' if epochs == 1 else 's'}" if trial.state.name == "PRUNED" and epochs else ""
    return f"trial {trial.number} {trial.state.name.lower()}{at} value {value} {took} [{params_digest(trial.params)}]"


def running_text(trial: Any, epochs: int | None, now: float) -> str:
    """What one running trial does now: its phase (cache fill ...) or its last epoch."""
    phase = trial.user_attrs.get(PHASE_ATTR)
    if (isinstance(phase, dict) and phase.get("done", 0) < phase.get("total", 0)
            and now - float(phase.get("at", 0)) < PHASE_STALE_S):
        share = phase["done"] / phase["total"]
        eta = phase.get("eta_s")
        left = f" ~{duration(eta)} left" if eta is not None else ""
        return f"t{trial.number} {phase.get('phase', 'working')} {share:.0%}{left}"
    values = trial.intermediate_values
    if not values:
        return f"t{trial.number} starting"
    step = max(values)
    of = f"/{epochs}" if epochs else ""
    return f"t{trial.number} epoch {step}{of} val {values[step]:.4f}"


class StudyProgress:
    """``poll(study)`` or ``show(counts)`` refresh it; ``epochs`` (per trial) enables the time-left estimate,
    ``deadline`` (a time.time() at which this command stops, its --timeout or its preset's) caps it."""

    def __init__(self, total: int | None, description: str, disable: bool = False, *, epochs: int | None = None,
                 deadline: float | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.epochs, self.description = total, epochs, description
        self.deadline = deadline
        self.mode = "off" if disable else ("bar" if _isatty(self.stream) else "lines")
        self._bar = None
        if self.mode == "bar":
            fmt = "{desc}: {n_fmt}/{total_fmt} trials |{bar}| {postfix}" if total else "{desc}: {n_fmt} trials, {postfix}"
            self._bar = tqdm(total=total, desc=description, file=self.stream, dynamic_ncols=True, bar_format=fmt)
        self._shown = 0
        self._known: set[int] = set()  # finished trials already counted (and printed, in lines mode)
        self._first = True
        self._epoch_seconds: list[tuple[float, int]] = []  # (seconds, epochs) of finished trials
        self._start = time.monotonic()

    # --- feeding --------------------------------------------------------------------------------------
    def poll(self, study: Any) -> None:
        """Read counts, running and newly finished trials from the storage and refresh."""
        if self.mode == "off":  # shows nothing: a quiet worker's parent would query every second for nothing
            return
        from optuna.trial import TrialState

        from cifar_hpo.storage.counting import count_study_trials

        counts = count_study_trials(study, with_best=True)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if counts.running else []
        done = counts.finished + counts.failed
        finished: list[Any] = []
        if done > len(self._known):
            finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                             TrialState.FAIL))
                        if t.number not in self._known]
        self.update(counts, running, finished)

    def update(self, counts: TrialCounts, running: Sequence[Any], finished: Sequence[Any],
               now: float | None = None) -> None:
        now = time.time() if now is None else now
        for trial in sorted(finished, key=lambda t: t.number):
            self._known.add(trial.number)
            seconds, epochs = trial_seconds(trial), len(trial.intermediate_values)
            if seconds is not None and epochs:
                self._epoch_seconds.append((seconds, epochs))
            if self.mode == "lines" and not self._first and not trial.user_attrs.get("surplus"):
                print(f"{self.description}: {trial_line(trial)}; {self.status(counts, [], now, short=True)}",
                      file=self.stream, flush=True)
        self._first = False  # trials finished before this command started are counted, not printed
        self.show(counts, running=running, now=now)

    def show(self, counts: TrialCounts, baseline_value: float | None = None, *, running: Sequence[Any] = (),
             now: float | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(counts.finished - self._shown)
        self._shown = counts.finished
        text = self.status(counts, running, time.time() if now is None else now)
        if baseline_value is not None:
            text += f", baseline {baseline_value:.4f}"
        self._bar.set_postfix_str(text, refresh=True)

    # --- text -----------------------------------------------------------------------------------------
    def status(self, counts: TrialCounts, running: Sequence[Any], now: float, short: bool = False) -> str:
        parts = []
        if short:
            parts.append(f"{counts.finished}/{self.total} finished" if self.total else f"{counts.finished} finished")
        parts += [f"{running_text(t, self.epochs, now)}" for t in sorted(running, key=lambda t: t.number)[:3]]
        if counts.best is not None:
            parts.append(f"best {counts.best:.4f}")
        if counts.pruned or counts.failed:
            parts.append(f"{counts.pruned} pruned, {counts.failed} failed")
        left = self.time_left(counts, running, now)
        if left is not None:
            parts.append(f"≤{duration(left)} left")
        return ", ".join(parts)

    def seconds_per_epoch(self, running: Sequence[Any], now: float) -> float | None:
        seconds = sum(s for s, _ in self._epoch_seconds)
        epochs = sum(e for _, e in self._epoch_seconds)
        for trial in running:  # while the first trials run: their time so far over the epochs they did
            if trial.intermediate_values and trial.datetime_start is not None:
                seconds += max(0.0, now - trial.datetime_start.timestamp())
                epochs += max(trial.intermediate_values)
        return seconds / epochs if epochs else None

    def time_left(self, counts: TrialCounts, running: Sequence[Any], now: float) -> float | None:
        """Epochs still to run (all of them for trials not started: an upper bound, since pruning cuts some)
        times seconds per epoch, over the trials running side by side; never past the command's deadline."""
        until_deadline = None if self.deadline is None else max(0.0, self.deadline - now)
        per_epoch = self.seconds_per_epoch(running, now) if self.total and self.epochs else None
        if per_epoch is None:
            return until_deadline
        waiting = max(0, self.total - counts.finished - counts.running)
        epochs_left = waiting * self.epochs + sum(max(0, self.epochs - max(t.intermediate_values, default=0))
                                                  for t in running)
        by_epochs = epochs_left * per_epoch / max(1, counts.running)
        return by_epochs if until_deadline is None else min(by_epochs, until_deadline)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class EpochProgress:
    """`hpo retrain`'s display: a Reporter (search/models/training.py) that prunes nothing and shows each
    epoch's validation accuracy, the best so far and the time left; a bar on a terminal, else one line per
    epoch. Also a phase sink (search/models/phase.py), so an inception cache fill shows its progress."""

    def __init__(self, epochs: int, description: str, *, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.epochs, self.description = epochs, description
        self.attrs: dict[str, Any] = {}
        self.best: float | None = None
        self._start = time.monotonic()
        self._phase_start = 0.0
        self._bar = None
        if _isatty(self.stream):
            self._bar = tqdm(total=epochs, desc=description, unit="epoch", file=self.stream, dynamic_ncols=True)

    def report(self, value: float, step: int) -> None:
        self.best = value if self.best is None else max(self.best, value)
        elapsed = time.monotonic() - self._start
        left = elapsed / step * (self.epochs - step) if step else None
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"val {value:.4f}, best {self.best:.4f}", refresh=True)
        else:
            print(f"{self.description}: epoch {step}/{self.epochs} val accuracy {value:.4f} (best {self.best:.4f}), "
                  f"{duration(elapsed)} so far, ~{duration(left)} left", file=self.stream, flush=True)

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Phase sink: shown on a terminal only (a log gets the epochs)."""
        now = time.monotonic()
        if done == 0:
            self._phase_start = now
        if self._bar is not None and done < total:
            left = (now - self._phase_start) * (total - done) / done if done else None
            self._bar.set_postfix_str(f"{phase} {done / total:.0%}" + (f" ~{duration(left)} left" if left else ""),
                                      refresh=True)
        if done >= total and self.best is None:  # the time left counts epochs, not the cache fill before them
            self._start = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
