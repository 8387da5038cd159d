"""One progress bar for a study: finished trials of the budget, pruned and failed counts, best so far."""

from __future__ import annotations

import sys

from tqdm import tqdm

from cifar_hpo.storage.counting import TrialCounts


class StudyProgress:
    def __init__(self, total: int | None, description: str, disable: bool = False) -> None:
        # disable=None: off when stderr is not a terminal, so logs and CI output stay clean
        self._bar = tqdm(total=total, desc=description, unit="trial", file=sys.stderr, dynamic_ncols=True,
                         disable=True if disable else None)
        self._shown = 0

    def show(self, counts: TrialCounts, baseline_value: float | None = None) -> None:
        self._bar.update(counts.finished - self._shown)
        self._shown = counts.finished
        postfix = {"pruned": counts.pruned, "failed": counts.failed, "running": counts.running}
        if counts.best is not None:
            postfix["best"] = f"{counts.best:.4f}"
        if baseline_value is not None:
            postfix["baseline"] = f"{baseline_value:.4f}"
        self._bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        self._bar.close()
