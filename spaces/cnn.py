"""The `cnn` space: a VGG-style CNN trained from scratch on 32x32 images.

Architecture: ``depth`` blocks of ``convs_per_block`` convolutions (filters ``base_filters *
filter_growth**block``), 2x2 max-pooling between blocks, then a head (flatten or global average
pooling), one dense layer and a 10-way softmax. The hand-tuned model of the project this service
replaces is one point of the space (``BASELINE``) and is enqueued as the first trial of every study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from cifar_hpo.spaces.bounds import Choice, FloatRange, IntRange, suggest_params
from cifar_hpo.spaces.errors import InfeasibleConfig

NAME = "cnn"
IMAGE_SIZE = 32



@dataclass(frozen=True)
class CnnSpace:
    """Default bounds; every field can be overridden from TOML (see spaces.load_space)."""

    depth: IntRange = field(default_factory=lambda: IntRange(2, 4))
    convs_per_block: IntRange = field(default_factory=lambda: IntRange(1, 3))
    base_filters: Choice = field(default_factory=lambda: Choice((16, 32, 48, 64)))
    filter_growth: FloatRange = field(default_factory=lambda: FloatRange(1.0, 2.0, step=0.25))
    kernel_size: Choice = field(default_factory=lambda: Choice((3, 5)))
    padding: Choice = field(default_factory=lambda: Choice(("same", "valid")))
    batch_norm: Choice = field(default_factory=lambda: Choice((True, False)))
    conv_dropout: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.4))
    head: Choice = field(default_factory=lambda: Choice(("flatten", "global_avg")))
    dense_units: IntRange = field(default_factory=lambda: IntRange(64, 1024, log=True))
    dense_dropout: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.6))
    optimizer: Choice = field(default_factory=lambda: Choice(("adam", "sgd")))
    learning_rate: FloatRange = field(default_factory=lambda: FloatRange(1e-4, 1e-2, log=True))
    lr_schedule: Choice = field(default_factory=lambda: Choice(("cosine", "constant")))
    weight_decay: FloatRange = field(default_factory=lambda: FloatRange(1e-6, 1e-2, log=True))
    batch_size: Choice = field(default_factory=lambda: Choice((32, 64, 128, 256)))
    augment_strength: FloatRange = field(default_factory=lambda: FloatRange(0.0, 1.0))


@dataclass(frozen=True)
class CnnConfig:
    """One fully specified CNN and its training recipe; what build_cnn and the trainer take."""

    depth: int
    convs_per_block: int
    base_filters: int
    filter_growth: float
    kernel_size: int
    padding: str
    batch_norm: bool
    conv_dropout: float
    head: str
    dense_units: int
    dense_dropout: float
    optimizer: str
    learning_rate: float
    lr_schedule: str
    weight_decay: float
    batch_size: int
    augment_strength: float

    def __post_init__(self) -> None:
        if self.depth < 1 or self.convs_per_block < 1 or self.base_filters < 1 or self.dense_units < 1:
            raise ValueError(f"depth, convs_per_block, base_filters and dense_units must be >= 1, but got {self}")
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', but got padding={self.padding!r}")
        if self.head not in ("flatten", "global_avg"):
            raise ValueError(f"head must be 'flatten' or 'global_avg', but got head={self.head!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', but got optimizer={self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', but got lr_schedule={self.lr_schedule!r}")
        if not 0.0 <= self.augment_strength <= 1.0:
            raise ValueError(f"augment_strength must be in [0, 1], but got augment_strength={self.augment_strength}")
        for name in ("conv_dropout", "dense_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), but got {name}={getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.batch_size < 1:
            raise ValueError(f"learning_rate > 0, weight_decay >= 0, batch_size >= 1 needed, but got {self}")

    def block_filters(self) -> list[int]:
        return [int(round(self.base_filters * self.filter_growth**block)) for block in range(self.depth)]

    def feature_map_sizes(self, image_size: int = IMAGE_SIZE) -> list[int]:
        """Spatial size after each block; raises InfeasibleConfig if the map shrinks to nothing."""
        size, sizes = image_size, []
        for block in range(self.depth):
            for _ in range(self.convs_per_block):
                if self.padding == "valid":
                    size -= self.kernel_size - 1
                if size < 1:
                    raise InfeasibleConfig(
                        f"feature map shrinks below 1x1 in block {block + 1} "
                        f"(padding=valid, kernel_size={self.kernel_size}, convs_per_block={self.convs_per_block})"
                    )
            if block < self.depth - 1:
                if size < 2:
                    raise InfeasibleConfig(f"feature map is {size}x{size} before pooling after block {block + 1}")
                size //= 2
            sizes.append(size)
        return sizes

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


# The hand-tuned notebook model: Conv 32 -> pool -> Conv 64 -> pool -> Conv 128 -> Flatten -> Dense 128
# -> Dropout 0.5 -> Dense 10, 3x3 valid convolutions, Adam 1e-3, batch 64, no augmentation: 356,810
# parameters. Weight decay sits at the space's floor (1e-6): a log range cannot hold 0, and 1e-6 is
# negligible next to Adam's step.
BASELINE = CnnConfig(
    depth=3, convs_per_block=1, base_filters=32, filter_growth=2.0, kernel_size=3, padding="valid",
    batch_norm=False, conv_dropout=0.0, head="flatten", dense_units=128, dense_dropout=0.5,
    optimizer="adam", learning_rate=1e-3, lr_schedule="constant", weight_decay=1e-6, batch_size=64, augment_strength=0.0,
)
BASELINE_PARAMS = 356_810


def suggest(trial: optuna.trial.BaseTrial, space: CnnSpace | None = None) -> CnnConfig:
    """Sample one configuration; raises InfeasibleConfig for points that cannot be built."""
    config = CnnConfig(**suggest_params(space or CnnSpace(), trial))
    config.feature_map_sizes()
    return config


def config_from_params(params: dict[str, Any]) -> CnnConfig:
    """Rebuild a config from stored trial parameters (reports, export, retrain)."""
    return CnnConfig(**params)


# The uniform names every space module exports (see spaces.get_space_module).
Space = CnnSpace
Config = CnnConfig
