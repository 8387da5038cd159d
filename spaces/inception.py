"""The `inception` space: transfer learning from an ImageNet-pretrained InceptionV3 trunk.

CIFAR images are resized up to ``input_size`` and fed to ``keras.applications.InceptionV3
(include_top=False)``. The top ``unfreeze_blocks`` Inception blocks (``mixed10`` downwards) are fine-tuned
after ``warmup_epochs`` epochs that train only the head (pooling, optional dense layer, dropout, softmax);
everything below the first trainable block stays frozen, so its output is computed once and cached
(cifar_hpo.search.models.feature_cache). BatchNormalization layers always run in inference mode.

Default bounds suit a CPU (inputs up to 139 px, at most 3 unfrozen blocks); a GPU study can widen them
from TOML, e.g. ``input_size = {choices = [299]}`` or ``unfreeze_blocks = {high = 6}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from cifar_hpo.spaces.bounds import Choice, FloatRange, IntRange, suggest_params
from cifar_hpo.spaces.errors import InfeasibleConfig

NAME = "inception"
MIN_INPUT_SIZE = 75  # smallest input keras.applications.InceptionV3 accepts
MAX_INPUT_SIZE = 299  # the size InceptionV3 was trained at; larger only costs time
TOP_BLOCK = 10  # the trunk's blocks are mixed0 .. mixed10
POOLINGS = ("avg", "max")
# Bound overrides for a CPU (the quick preset, search/presets.py): the two smaller inputs (trunk features of
# 10,000 images cached in minutes) and at most the top two blocks trained.
CPU_BOUNDS: dict[str, dict[str, Any]] = {
    "input_size": {"choices": [75, 107]},
    "unfreeze_blocks": {"low": 0, "high": 2},
    "warmup_epochs": {"low": 0, "high": 1},  # trials of the quick preset train 3 epochs
}



@dataclass(frozen=True)
class InceptionSpace:
    """Default bounds; every field can be overridden from TOML (see spaces.load_overrides)."""

    unfreeze_blocks: IntRange = field(default_factory=lambda: IntRange(0, 3))
    input_size: Choice = field(default_factory=lambda: Choice((75, 107, 139)))
    pooling: Choice = field(default_factory=lambda: Choice(POOLINGS))
    head_dropout: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.5))
    head_dense: Choice = field(default_factory=lambda: Choice((0, 256, 512)))
    head_lr: FloatRange = field(default_factory=lambda: FloatRange(1e-4, 1e-2, log=True))
    finetune_lr_fraction: FloatRange = field(default_factory=lambda: FloatRange(0.01, 0.5, log=True))
    warmup_epochs: IntRange = field(default_factory=lambda: IntRange(0, 3))
    label_smoothing: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.2))
    batch_size: Choice = field(default_factory=lambda: Choice((32, 64, 128)))
    # A grid, not a continuum: cached augmented views are keyed by strength, so a few values let
    # trials share them (cifar_hpo.search.models.feature_cache).
    augment_strength: FloatRange = field(default_factory=lambda: FloatRange(0.0, 1.0, step=0.25))

    def __post_init__(self) -> None:
        """Bounds no trial could use are refused when the space is built (TOML overrides included)."""
        sizes = self.input_size.choices if isinstance(self.input_size, Choice) else (self.input_size.low, self.input_size.high)
        bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or not MIN_INPUT_SIZE <= s <= MAX_INPUT_SIZE]
        if bad:
            raise ValueError(f"input_size must be integers in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}], but got {bad}")
        blocks = self.unfreeze_blocks
        if isinstance(blocks, IntRange) and not 0 <= blocks.low <= blocks.high <= TOP_BLOCK:
            raise ValueError(f"unfreeze_blocks must lie in [0, {TOP_BLOCK}], but got [{blocks.low}, {blocks.high}]")


@dataclass(frozen=True)
class InceptionConfig:
    """One transfer-learning recipe; what cifar_hpo.search.models.inception builds and trains."""

    unfreeze_blocks: int
    input_size: int
    pooling: str
    head_dropout: float
    head_dense: int
    head_lr: float
    finetune_lr_fraction: float
    warmup_epochs: int
    label_smoothing: float
    batch_size: int
    augment_strength: float

    def __post_init__(self) -> None:
        if not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError(f"input_size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}], but got input_size={self.input_size}")
        if self.unfreeze_blocks < 0:
            raise ValueError(f"unfreeze_blocks must be >= 0, but got unfreeze_blocks={self.unfreeze_blocks}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, but got pooling={self.pooling!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), but got head_dropout={self.head_dropout}")
        if self.head_dense < 0:
            raise ValueError(f"head_dense must be >= 0 (0 = no dense layer), but got head_dense={self.head_dense}")
        if self.head_lr <= 0 or not 0.0 < self.finetune_lr_fraction <= 1.0:
            raise ValueError(f"head_lr > 0 and finetune_lr_fraction in (0, 1] needed, but got head_lr={self.head_lr}, "
                             f"finetune_lr_fraction={self.finetune_lr_fraction}")
        if self.warmup_epochs < 0 or self.batch_size < 1:
            raise ValueError(f"warmup_epochs >= 0 and batch_size >= 1 needed, but got warmup_epochs={self.warmup_epochs}, "
                             f"batch_size={self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), but got label_smoothing={self.label_smoothing}")
        if not 0.0 <= self.augment_strength <= 1.0:
            raise ValueError(f"augment_strength must be in [0, 1], but got augment_strength={self.augment_strength}")

    def check_feasible(self) -> None:
        """Raises InfeasibleConfig when the trunk has fewer blocks than asked to unfreeze."""
        if self.unfreeze_blocks > TOP_BLOCK:
            raise InfeasibleConfig(
                f"unfreeze_blocks={self.unfreeze_blocks} but InceptionV3 has blocks mixed0..mixed{TOP_BLOCK}; "
                f"at most {TOP_BLOCK} can be unfrozen above a frozen cut"
            )

    @property
    def cut_block(self) -> int:
        """Index of the last frozen block: its output (``mixed{cut_block}``) is what the cache stores."""
        return TOP_BLOCK - self.unfreeze_blocks

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


# The hand-run project's recipe: frozen ImageNet InceptionV3 with augmentation and a small head first, then
# fine-tuning of the top blocks at a tenth of the learning rate. 139 px is the CPU-friendly input size
# (the measurement: 90.2% validation after 2 epochs on full CIFAR-10); 299 px on a GPU.
BASELINE = InceptionConfig(
    unfreeze_blocks=2, input_size=139, pooling="avg", head_dropout=0.3, head_dense=256, head_lr=1e-3,
    finetune_lr_fraction=0.1, warmup_epochs=2, label_smoothing=0.0, batch_size=64, augment_strength=0.5,
)
# No built-in recipes besides the baseline: the hand-run project's is already a fine-tuning recipe, and a
# space config can declare more ([inception.priors.NAME]).
PRIORS: dict[str, InceptionConfig] = {}


def suggest(trial: optuna.trial.BaseTrial, space: InceptionSpace | None = None) -> InceptionConfig:
    """Sample one configuration; raises InfeasibleConfig for points that cannot be built."""
    config = InceptionConfig(**suggest_params(space or InceptionSpace(), trial))
    config.check_feasible()
    return config


def config_from_params(params: dict[str, Any]) -> InceptionConfig:
    """Rebuild a config from stored trial parameters (reports, export, retrain)."""
    return InceptionConfig(**params)


# The uniform names every space module exports (see spaces.get_space_module).
Space = InceptionSpace
Config = InceptionConfig
