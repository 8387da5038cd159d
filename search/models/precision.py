"""Numeric precision of training: the study's ``--precision`` turned into a Keras dtype policy, per process.

The study stores what was asked (``auto``, ``float32``, ``bf16``, ``fp16``); ``auto`` is resolved where trials
run, because workers of one study may sit on different machines: a CPU with AVX512-BF16 or AMX gets
``mixed_bfloat16`` (elsewhere bf16 is emulated and slower than float32, so ``float32``); a GPU of compute
capability >= 8.0 (Ampere and later, native bf16) gets ``mixed_bfloat16``, an older one ``mixed_float16``.

Why apply it before every model build, not once per process: ``keras.backend.clear_session()`` (run after
every trial) resets the global dtype policy to float32. Models keep float32 outputs (their softmax layer has
``dtype="float32"``), so losses and metrics are computed in float32; under ``mixed_float16`` Keras 3's
``Model.compile`` wraps the optimizer in a LossScaleOptimizer itself (``auto_scale_loss=True``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

# --precision value -> Keras dtype policy. "auto" is resolved by resolve().
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
PRECISIONS = ("auto", *POLICIES)
# Where a user attr records the policy a trial actually ran under.
PRECISION_ATTR = "precision"
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4+), AMX (Sapphire Rapids+).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BF16_GPU_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; below it, fp16 is the fast type


def check_precision(precision: str) -> None:
    """A ValueError naming the value when it is not one of PRECISIONS (settings turn it into a ConfigError)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {list(PRECISIONS)}, but got precision={precision!r}")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags; empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs TensorFlow sees (CUDA_VISIBLE_DEVICES applies), in device order."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        found.append(tuple(capability) if capability else (0, 0))
    return found


def resolve(precision: str, *, flags: Iterable[str] | None = None,
            gpus: Sequence[tuple[int, int]] | None = None) -> str:
    """The Keras policy for ``precision`` on this machine (``flags``/``gpus`` replace detection in tests).

    Explicit values are forced whatever the hardware. ``auto`` looks at the GPU TensorFlow places ops on
    (the first visible one), else at the CPU flags.
    """
    check_precision(precision)
    if precision != "auto":
        return POLICIES[precision]
    gpus = list(gpu_capabilities()) if gpus is None else list(gpus)
    if gpus:
        return "mixed_bfloat16" if tuple(gpus[0]) >= BF16_GPU_CAPABILITY else "mixed_float16"
    flags = cpu_flags() if flags is None else frozenset(flags)
    return "mixed_bfloat16" if BF16_CPU_FLAGS & set(flags) else "float32"


@lru_cache(maxsize=None)
def resolve_here(precision: str) -> str:
    """resolve() with this process's hardware, detected once (the hardware does not change under a worker)."""
    return resolve(precision)


def apply_precision(precision: str, reporter: Any = None) -> str:
    """Set the global dtype policy for the next model built; record it on ``reporter`` (a trial) if given.

    Call after any ``clear_session`` and before building the model. Returns the policy name.
    """
    import keras

    policy = resolve_here(precision)
    keras.mixed_precision.set_global_policy(policy)
    if reporter is not None:
        reporter.set_user_attr(PRECISION_ATTR, policy)
    return policy


def compute_dtype() -> str:
    """The compute dtype of the current global policy ("float32", "bfloat16" or "float16")."""
    import keras

    return str(keras.mixed_precision.global_policy().compute_dtype)
