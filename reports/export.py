"""Versioned, self-contained config export: one trial's configuration plus what is needed to retrain it.

The file names the space and every parameter, the data it was searched on (path, fingerprint, split), the
epochs and seed, and the library versions. Loading checks all of it before any training, so a file from a
newer hpo, an unknown space or a wrong parameter is one clear ReportError.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.reports.errors import ReportError
from cifar_hpo.spaces import SPACE_NAMES, get_space_module
from cifar_hpo.spaces.bounds import space_bounds

FORMAT_VERSION = 1
KIND = "cifar-hpo-config"
LIBRARIES = ("tensorflow", "keras", "optuna", "scikit-learn", "numpy", "cifar-hpo")
DATA_FIELDS = ("path", "fingerprint", "val_size", "subset", "seed")
# Test-time augmentation a study scores validation and test images with (hpo search --tta).
TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class ExportedConfig:
    """A loaded, checked export: ``config`` is the space's typed Config, ready for its trainer."""

    space: str
    params: dict[str, Any]
    config: Any
    data: dict[str, Any]
    epochs: int
    seed: int
    weights: str | None
    tta: str  # test-time augmentation the study scored with ("none" for exports written before it existed)
    study: str | None
    trial: int | None
    versions: dict[str, str | None]
    source: str
    precision: str = "float32"  # the study's --precision; exports written before it existed came from float32


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (importing TensorFlow just for this is too slow)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def export_epochs(trial: FrozenTrial, max_epochs: int) -> int:
    """The trial's best epoch (1-based) when it recorded one, else the study's epoch budget."""
    best = trial.user_attrs.get("best_epoch")
    return int(best) if isinstance(best, int) and best >= 1 else int(max_epochs)


def build_export(study_name: str, trial: FrozenTrial, settings: Mapping[str, Any],
                 versions: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The export document of ``trial`` (settings: StudySettings as a dict)."""
    if not trial.params:
        raise ReportError(f"trial {trial.number} of study {study_name!r} has no parameters to export")
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "space": settings["space"],
        "params": dict(trial.params),
        "data": {
            "path": settings.get("data"), "fingerprint": settings.get("data_fingerprint"),
            "val_size": settings.get("val_size"), "subset": settings.get("subset"), "seed": settings.get("seed"),
        },
        "epochs": export_epochs(trial, settings.get("epochs", 1)),
        "seed": int(settings.get("seed", 0)) + trial.number,  # the seed the trial itself trained with
        "weights": settings.get("weights") if settings["space"] != "cnn" else None,
        "tta": settings.get("tta") or "none",
        "precision": settings.get("precision", "float32"),  # so `hpo retrain` trains as the search did
        "source": {
            "study": study_name, "trial": trial.number, "state": trial.state.name,
            "baseline": bool(trial.user_attrs.get("baseline", False)),
            "val_accuracy": trial.value if trial.state == TrialState.COMPLETE else None,
            "best_epoch": trial.user_attrs.get("best_epoch"), "n_params": trial.user_attrs.get("params"),
        },
        "versions": dict(versions if versions is not None else library_versions()),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_export(path: str | Path, document: Mapping[str, Any]) -> Path:
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise ReportError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def read_export(path: str | Path) -> ExportedConfig:
    """Read and check an export file; every problem is one ReportError line naming the file."""
    path = Path(path).expanduser()
    where = f"config {str(path)!r}"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"cannot read {where}: {err}") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{where} is not valid JSON ({err.msg} at line {err.lineno})") from None
    return parse_export(document, where, str(path))


def parse_export(document: Any, where: str = "config", source: str = "") -> ExportedConfig:
    if not isinstance(document, dict):
        raise ReportError(f"{where} is not an hpo config export (expected a JSON object)")
    version = document.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ReportError(f"{where} has no valid format_version (got {version!r}); export it with `hpo export`")
    if version > FORMAT_VERSION:
        raise ReportError(f"{where} has format_version {version}, newer than this hpo reads ({FORMAT_VERSION}); "
                          "upgrade cifar-hpo")
    space = document.get("space")
    if space not in SPACE_NAMES:
        raise ReportError(f"{where} names unknown space {space!r}; known spaces: {list(SPACE_NAMES)}")
    params = document.get("params")
    if not isinstance(params, dict):
        raise ReportError(f"{where} has no 'params' object")
    config = config_from_export(space, params, where)
    data = document.get("data") or {}
    if not isinstance(data, dict):
        raise ReportError(f"{where}: 'data' must be an object with {list(DATA_FIELDS)}")
    epochs, seed = document.get("epochs"), document.get("seed", 0)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ReportError(f"{where}: 'epochs' must be an integer >= 1, but got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"{where}: 'seed' must be an integer, but got {seed!r}")
    tta = document.get("tta", "none")
    if tta not in TTA_MODES:
        raise ReportError(f"{where}: 'tta' must be one of {list(TTA_MODES)}, but got {tta!r}")
    origin = document.get("source") or {}
    return ExportedConfig(
        space=space, params=dict(params), config=config, data={k: data.get(k) for k in DATA_FIELDS},
        epochs=epochs, seed=seed, weights=document.get("weights"), tta=tta, study=origin.get("study"),
        trial=origin.get("trial"), versions=dict(document.get("versions") or {}), source=source,
        precision=str(document.get("precision") or "float32"),
    )


def config_from_export(space: str, params: Mapping[str, Any], where: str) -> Any:
    """The space's Config from exported params: unknown, missing or invalid parameters are ReportErrors."""
    module = get_space_module(space)
    fields = dataclasses.fields(module.Config)
    # Parameter names are the space's bounds (as trials record them) or the Config's fields (older exports).
    expected = sorted({f.name for f in fields} | set(space_bounds(module.Space())))
    unknown = [name for name in params if name not in expected]
    if unknown:
        raise ReportError(f"{where}: unknown parameter(s) {unknown} for space {space!r}; expected {expected}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in params and not _derived(name, params)]
    if missing:
        raise ReportError(f"{where}: missing parameter(s) {missing} for space {space!r}")
    bad = [name for name, value in params.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise ReportError(f"{where}: parameter(s) {bad} are not finite numbers")
    try:
        return module.config_from_params(dict(params))
    except (ValueError, TypeError) as err:
        raise ReportError(f"{where}: invalid parameters for space {space!r}: {err}") from None


def _derived(name: str, params: Mapping[str, Any]) -> bool:
    """A Config field the space derives instead of asking (conditional parameters): the learning rate from
    ``<optimizer>_learning_rate``, and what residual blocks or a too-deep unpadded network imply."""
    if name == "learning_rate":
        return any(key.endswith("_learning_rate") for key in params)
    if name in ("kernel_size", "batch_norm"):
        return params.get("block") == "residual"
    return name == "padding"
