"""Presets: how big a new study is when its flags do not say, sized to the machine it starts on.

``quick`` (the default where no GPU is visible) gives a real result in about 15 minutes on a 2-core CPU: a
stratified 10,000-image training subset (validation proportionate: 1,111 images), models cut to what trains
in seconds per epoch on a CPU (the space's ``CPU_BOUNDS``), a few epochs per trial, 12 trials or 15 minutes,
whichever comes first. ``full`` (the default where a GPU is visible) is the whole space on all 45,000 training
images. The machine's preset applies to a command that sizes nothing (no --subset, --val-size, --epochs,
--n-trials, --timeout or --space-config): one that sizes anything is sized by its user, as before presets
(``full``), unless it names --preset, which then fills in what it left out. The preset's name is stored in
the study, so a resumed study keeps it and a command asking another preset is refused like any other setting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_hpo.reports.render import plural
from cifar_hpo.spaces import get_space_module

PRESET_NAMES = ("quick", "full")


@dataclass(frozen=True)
class Preset:
    name: str
    subset: int | None = None
    epochs: dict[str, int] = field(default_factory=dict)  # per space
    n_trials: int | None = None
    timeout: float | None = None  # seconds; used when the command gives no --timeout
    cpu_bounds: bool = False  # the space's CPU_BOUNDS unless --space-config is given

    def fill(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` (the flags passed, None = left out) with this preset's values where a flag is missing."""
        space = given.get("space") or "cnn"
        defaults: dict[str, Any] = {"subset": self.subset, "epochs": self.epochs.get(space),
                                    "n_trials": self.n_trials, "timeout": self.timeout}
        if self.cpu_bounds:
            defaults["space_overrides"] = dict(getattr(get_space_module(space), "CPU_BOUNDS", {}))
        filled = dict(given)
        for key, value in defaults.items():
            if filled.get(key) is None and value is not None:
                filled[key] = value
        return filled

    def describe(self, settings: Any) -> str:
        """One line for the start of a run: what this preset chose and how long it will take."""
        if self.name == "full":
            return (f"preset full: the whole {settings.space} space on all training images, up to "
                    f"{settings.epochs} epochs per trial (hours on a CPU; minutes per trial on a GPU)")
        images = f"{settings.subset:,}" if settings.subset else "all"
        limit = plural(settings.n_trials, "trial") if settings.n_trials else "no trial limit"
        minutes = f" or {settings.timeout / 60:g} min, whichever comes first" if settings.timeout else ""
        return (f"preset quick (no GPU found): {images} training images, CPU-sized models, up to "
                f"{plural(settings.epochs, 'epoch')} per trial, {limit}{minutes} (about 15 min on 2 CPU cores); --preset full searches the "
                "whole space on all images")


PRESETS = {
    "quick": Preset("quick", subset=10_000, epochs={"cnn": 6, "inception": 3}, n_trials=12, timeout=15 * 60.0,
                    cpu_bounds=True),
    "full": Preset("full"),
}


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing TensorFlow (seconds of start-up):
    the driver's device list, else `nvidia-smi -L`; CUDA_VISIBLE_DEVICES="" or "-1" hides every GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


SIZING_FIELDS = ("subset", "val_size", "epochs", "n_trials", "timeout", "space_overrides")


def choose_preset(given: dict[str, Any]) -> str:
    """The preset of a new study: the one named, else the machine's when nothing is sized, else full."""
    if given.get("preset") is not None:
        return given["preset"]
    if any(given.get(name) is not None for name in SIZING_FIELDS):
        return "full"
    return "full" if gpu_visible() else "quick"
