"""The short note a new study carries (space, bounds, data, budget), shown by optuna-dashboard."""

from __future__ import annotations

from typing import Any

import optuna

from search.settings import StudySettings


def annotate_new_study(study: optuna.Study, settings: StudySettings, space: Any) -> None:
    """Placeholder until the dashboard work lands: writes nothing yet."""
