"""The `cnn` space: a CNN trained from scratch on 32x32 images, with the recipe knobs that decide CIFAR-10
accuracy at a fixed cost.

Architecture: ``depth`` stages (filters ``base_filters * filter_growth**stage``), 2x2 max-pooling between
stages, then a head (flatten or global average pooling), one dense layer and a 10-way classifier. A stage is
either ``convs_per_block`` plain convolutions (VGG style; kernel size, padding and batch norm searched) or
``convs_per_block`` pre-activation residual units of two 3x3 convolutions each (batch norm, same padding).

Recipe: optimizer with its own learning-rate range (SGD with Nesterov momentum and Adam with decoupled weight
decay want learning rates a decade or more apart, so each has its parameter: ``sgd_learning_rate`` or
``adam_learning_rate``, only the one of the chosen optimizer is sampled), schedule (constant, cosine, linear
warm-up + cosine, one-cycle), weight decay, batch size, label smoothing, weight EMA (``use_ema``), and
augmentation: ``augment_strength`` in [0, 1] drives the whole policy (flips, padded random crops, random
erasing, rotation/zoom/contrast at higher strengths; search.models.augment), ``mixing`` adds MixUp or CutMix.

Conditional parameters keep impossible points out of the space: ``padding`` is only sampled where a valid
(unpadded) network still fits in 32x32 pixels, and kernel size, padding and batch norm only for plain stages.
The hand-tuned model of the project this service replaces is one point of the space (``BASELINE``), enqueued
as the first trial of every study; ``PRIORS`` are strong known recipes enqueued after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import optuna

from cifar_hpo.spaces.bounds import Choice, FloatRange, IntRange, suggest_params
from cifar_hpo.spaces.errors import InfeasibleConfig

NAME = "cnn"
IMAGE_SIZE = 32
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle")
MIXINGS = ("none", "mixup", "cutmix")
BLOCKS = ("plain", "residual")
# The augmentation policy a config was trained with: "crop_erase" (this space) or "legacy" (trials of
# studies created before flips + padded crops + erasing, whose params have no such field).
AUGMENT_POLICIES = ("crop_erase", "legacy")


@dataclass(frozen=True)
class CnnSpace:
    """Default bounds; every field can be overridden from TOML (see spaces.load_space)."""

    block: Choice = field(default_factory=lambda: Choice(BLOCKS))
    depth: IntRange = field(default_factory=lambda: IntRange(2, 4))
    convs_per_block: IntRange = field(default_factory=lambda: IntRange(1, 3))
    base_filters: Choice = field(default_factory=lambda: Choice((16, 32, 48, 64)))
    filter_growth: FloatRange = field(default_factory=lambda: FloatRange(1.0, 2.0, step=0.25))
    kernel_size: Choice = field(default_factory=lambda: Choice((3, 5)))  # plain stages only
    padding: Choice = field(default_factory=lambda: Choice(("same", "valid")))  # plain, where valid fits
    batch_norm: Choice = field(default_factory=lambda: Choice((True, False)))  # plain only (residual: always)
    conv_dropout: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.4))
    head: Choice = field(default_factory=lambda: Choice(("flatten", "global_avg")))
    dense_units: IntRange = field(default_factory=lambda: IntRange(64, 1024, log=True))
    dense_dropout: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.6))
    optimizer: Choice = field(default_factory=lambda: Choice(OPTIMIZERS))
    adam_learning_rate: FloatRange = field(default_factory=lambda: FloatRange(1e-4, 1e-2, log=True))
    sgd_learning_rate: FloatRange = field(default_factory=lambda: FloatRange(5e-3, 0.4, log=True))
    lr_schedule: Choice = field(default_factory=lambda: Choice(SCHEDULES))
    weight_decay: FloatRange = field(default_factory=lambda: FloatRange(1e-6, 1e-2, log=True))
    batch_size: Choice = field(default_factory=lambda: Choice((32, 64, 128, 256)))
    augment_strength: FloatRange = field(default_factory=lambda: FloatRange(0.0, 1.0))
    mixing: Choice = field(default_factory=lambda: Choice(MIXINGS))
    label_smoothing: FloatRange = field(default_factory=lambda: FloatRange(0.0, 0.2))
    use_ema: Choice = field(default_factory=lambda: Choice((False, True)))


@dataclass(frozen=True)
class LegacyCnnSpace:
    """Version 1 of the space (studies created before residual blocks, mixing, label smoothing, EMA,
    per-optimizer learning rates and the new schedules): their trials keep this space when resumed, since a
    parameter's choices may not change within an Optuna study."""

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
    optimizer: Choice = field(default_factory=lambda: Choice(OPTIMIZERS))
    learning_rate: FloatRange = field(default_factory=lambda: FloatRange(1e-4, 1e-2, log=True))
    lr_schedule: Choice = field(default_factory=lambda: Choice(("cosine", "constant")))
    weight_decay: FloatRange = field(default_factory=lambda: FloatRange(1e-6, 1e-2, log=True))
    batch_size: Choice = field(default_factory=lambda: Choice((32, 64, 128, 256)))
    augment_strength: FloatRange = field(default_factory=lambda: FloatRange(0.0, 1.0))


# A study stores the version of the space it was created with (StudySettings.space_version).
SPACES_BY_VERSION = {1: LegacyCnnSpace, 2: CnnSpace}
CURRENT_VERSION = 2

# Bound overrides for a CPU (the quick preset, search/presets.py): at most ~39M multiply-accumulates per
# image, seconds per epoch on 10,000 images with 2 cores; the recipe dimensions keep their full ranges, and
# both PRIORS lie inside.
CPU_BOUNDS: dict[str, dict[str, Any]] = {
    "depth": {"low": 2, "high": 3},
    "convs_per_block": {"low": 1, "high": 2},
    "base_filters": {"choices": [16, 32]},
    "filter_growth": {"low": 1.5, "high": 2.0, "step": 0.25},
    "kernel_size": {"value": 3},
    "dense_units": {"low": 64, "high": 512, "log": True},
    "batch_size": {"choices": [64, 128, 256]},
}


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
    block: str = "plain"
    mixing: str = "none"
    label_smoothing: float = 0.0
    use_ema: bool = False
    augment_policy: str = "crop_erase"

    def __post_init__(self) -> None:
        if self.depth < 1 or self.convs_per_block < 1 or self.base_filters < 1 or self.dense_units < 1:
            raise ValueError(f"depth, convs_per_block, base_filters and dense_units must be >= 1, but got {self}")
        choices = {"padding": ("same", "valid"), "head": ("flatten", "global_avg"), "optimizer": OPTIMIZERS,
                   "lr_schedule": SCHEDULES, "block": BLOCKS, "mixing": MIXINGS, "augment_policy": AUGMENT_POLICIES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, but got {name}={getattr(self, name)!r}")
        if self.block == "residual" and (self.padding != "same" or not self.batch_norm or self.kernel_size != 3):
            raise ValueError(f"residual blocks use 3x3 same-padded convolutions with batch norm, but got "
                             f"kernel_size={self.kernel_size}, padding={self.padding!r}, batch_norm={self.batch_norm}")
        if not 0.0 <= self.augment_strength <= 1.0:
            raise ValueError(f"augment_strength must be in [0, 1], but got augment_strength={self.augment_strength}")
        for name in ("conv_dropout", "dense_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), but got {name}={getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), but got label_smoothing={self.label_smoothing}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.batch_size < 1:
            raise ValueError(f"learning_rate > 0, weight_decay >= 0, batch_size >= 1 needed, but got {self}")

    def block_filters(self) -> list[int]:
        return [int(round(self.base_filters * self.filter_growth**block)) for block in range(self.depth)]

    def feature_map_sizes(self, image_size: int = IMAGE_SIZE) -> list[int]:
        """Spatial size after each block; raises InfeasibleConfig if the map shrinks to nothing."""
        return _feature_map_sizes(self.depth, self.convs_per_block, self.kernel_size, self.padding, image_size)

    def check_feasible(self) -> None:
        """Raises InfeasibleConfig when the blocks shrink the image to nothing (every space's Config has it)."""
        self.feature_map_sizes()

    def to_params(self) -> dict[str, Any]:
        """The trial parameters that describe this config, named as ``suggest`` asks them (for enqueueing)."""
        params = asdict(self)
        params[f"{self.optimizer}_learning_rate"] = params.pop("learning_rate")
        del params["augment_policy"]  # fixed by the space, not searched
        if self.block == "residual":
            for name in ("kernel_size", "padding", "batch_norm"):  # implied by residual blocks
                del params[name]
        elif not valid_padding_fits(self.depth, self.convs_per_block, self.kernel_size):
            del params["padding"]  # not asked: only 'same' fits
        return params


def _feature_map_sizes(depth: int, convs: int, kernel: int, padding: str, image_size: int = IMAGE_SIZE) -> list[int]:
    size, sizes = image_size, []
    for block in range(depth):
        for _ in range(convs):
            if padding == "valid":
                size -= kernel - 1
            if size < 1:
                raise InfeasibleConfig(f"feature map shrinks below 1x1 in block {block + 1} "
                                       f"(padding=valid, kernel_size={kernel}, convs_per_block={convs})")
        if block < depth - 1:
            if size < 2:
                raise InfeasibleConfig(f"feature map is {size}x{size} before pooling after block {block + 1}")
            size //= 2
        sizes.append(size)
    return sizes


def valid_padding_fits(depth: int, convs_per_block: int, kernel_size: int) -> bool:
    """Whether unpadded convolutions keep a feature map through every stage (else only 'same' is offered)."""
    try:
        _feature_map_sizes(depth, convs_per_block, kernel_size, "valid")
    except InfeasibleConfig:
        return False
    return True


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

# Strong known recipes, enqueued after the baseline (`--no-priors` turns them off) so the sampler starts from
# good regions and a study never ends below a strong hand recipe:
# - "vgg_bn": the hand-written 3 x 2 convolution model (32-64-128 filters, batch norm, global average pooling),
#   AdamW with warm-up + cosine, flips + crops, label smoothing: 87.2% validation in 15 epochs on this CPU.
# - "resnet": pre-activation residual stages (32-64-128, two units each, about ResNet-14 at twice ResNet-20's
#   width), SGD-Nesterov one-cycle, label smoothing 0.1, weight EMA, flips + crops + erasing.
PRIORS: dict[str, CnnConfig] = {
    "vgg_bn": CnnConfig(
        depth=3, convs_per_block=2, base_filters=32, filter_growth=2.0, kernel_size=3, padding="same",
        batch_norm=True, conv_dropout=0.0, head="global_avg", dense_units=128, dense_dropout=0.0,
        optimizer="adam", learning_rate=3e-3, lr_schedule="warmup_cosine", weight_decay=5e-4, batch_size=128,
        augment_strength=0.5, label_smoothing=0.1,
    ),
    "resnet": CnnConfig(
        block="residual", depth=3, convs_per_block=2, base_filters=32, filter_growth=2.0, kernel_size=3,
        padding="same", batch_norm=True, conv_dropout=0.0, head="global_avg", dense_units=128, dense_dropout=0.0,
        optimizer="sgd", learning_rate=0.1, lr_schedule="one_cycle", weight_decay=5e-4, batch_size=128,
        augment_strength=0.6, label_smoothing=0.1, use_ema=True,
    ),
}


def suggest(trial: optuna.trial.BaseTrial, space: CnnSpace | None = None) -> CnnConfig:
    """Sample one configuration; conditional parameters are asked only where they mean something."""
    space = space or CnnSpace()
    if isinstance(space, LegacyCnnSpace):  # version 1: every bound is a parameter, as that release asked them
        config = CnnConfig(**suggest_params(space, trial), augment_policy="legacy")
        config.check_feasible()
        return config
    ask = lambda name: getattr(space, name).suggest(trial, name)  # noqa: E731 (one-line helper)
    values: dict[str, Any] = {name: ask(name) for name in ("block", "depth", "convs_per_block", "base_filters",
                                                          "filter_growth")}
    if values["block"] == "residual":
        values.update(kernel_size=3, padding="same", batch_norm=True)
    else:
        values["kernel_size"] = ask("kernel_size")
        fits = valid_padding_fits(values["depth"], values["convs_per_block"], values["kernel_size"])
        values["padding"] = ask("padding") if fits else "same"
        values["batch_norm"] = ask("batch_norm")
    for name in ("conv_dropout", "head", "dense_units", "dense_dropout", "optimizer"):
        values[name] = ask(name)
    values["learning_rate"] = ask(f"{values['optimizer']}_learning_rate")
    for name in ("lr_schedule", "weight_decay", "batch_size", "augment_strength", "mixing", "label_smoothing",
                 "use_ema"):
        values[name] = ask(name)
    config = CnnConfig(**values)
    config.check_feasible()
    return config


def config_from_params(params: dict[str, Any]) -> CnnConfig:
    """Rebuild a config from stored trial parameters (reports, export, retrain).

    Trials of studies created before this space had residual blocks, mixing, label smoothing, EMA and
    per-optimizer learning rates keep their meaning: a single ``learning_rate``, plain blocks, none of the new
    ingredients, and the augmentation policy of that time (``augment_policy="legacy"``).
    """
    params = dict(params)
    legacy = "learning_rate" in params
    if not legacy:
        optimizer = params.get("optimizer", "adam")
        params["learning_rate"] = params.pop(f"{optimizer}_learning_rate")
        for name in [n for n in params if n.endswith("_learning_rate")]:
            del params[name]
    if params.get("block", "plain") == "residual":
        params.update(kernel_size=3, padding="same", batch_norm=True)
    params.setdefault("padding", "same")
    if legacy:
        params.setdefault("augment_policy", "legacy")
    known = {f.name for f in fields(CnnConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown cnn parameter(s) {unknown}")
    return CnnConfig(**params)


# The uniform names every space module exports (see spaces.get_space_module).
Space = CnnSpace
Config = CnnConfig
