"""The KerasTuner HyperModel of a space: builds the space's model for the running recorded trial and fits it
through the service's own training loop (models.training.fit_tracked), reporting each epoch to the trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras_tuner as kt
import optuna

from cifar_hpo.search.engines.kerastuner.recorder import StudyRecorder
from cifar_hpo.search.models.training import ReportOnly
from cifar_hpo.spaces import build_space, get_space_module

OBJECTIVE = "val_accuracy"


def _build_cnn(config: Any, stats: tuple[Any, Any], n_train: int, epochs: int, seed: int) -> Any:
    from cifar_hpo.search.models.cnn import build_cnn, compile_cnn

    model = build_cnn(config, *stats, seed=seed)
    compile_cnn(model, config, n_train, epochs)  # the schedule spans the study's epochs, as in the Optuna engine
    return model


# Spaces whose model KerasTuner builds and fits itself (their inputs come from the space's trainer module) (Hyperband then resumes checkpoints natively):
# space -> builder(config, (mean, variance), n_train, max_epochs, seed) -> compiled model. The config must
# have ``batch_size``. Other spaces are trained by their trainer (cifar_hpo.search.runtime.objective.TRAINERS).
BUILDERS: dict[str, Callable[..., Any]] = {"cnn": _build_cnn}


@dataclass
class ActiveTrial:
    trial: optuna.trial.Trial
    config: Any
    seed: int
    result: Any = None
    model: Any = None  # the trained model, kept until the trial is recorded (its model may be uploaded)


@dataclass
class SearchContext:
    """What every trial of one search needs; built once per process."""

    settings: Any
    split: Any
    tuner_name: str
    recorder: StudyRecorder
    space: Any = None
    module: Any = None
    stats: tuple[Any, Any] | None = None
    active: ActiveTrial | None = None
    stop: Callable[[], str | None] = lambda: None
    on_trial_end: Callable[[], None] = lambda: None
    failures_in_a_row: int = 0
    ran: int = 0
    stopped_because: str | None = None

    def __post_init__(self) -> None:
        self.space = build_space(self.settings.space, self.settings.space_overrides,
                                 self.settings.space_version)
        self.module = get_space_module(self.settings.space)

    @property
    def builder(self) -> Callable[..., Any] | None:
        return BUILDERS.get(self.settings.space)


class SpaceHyperModel(kt.HyperModel):
    """Builds and fits the space's model for the running trial (spaces listed in BUILDERS)."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(name=f"hpo_{ctx.settings.space}")
        self.ctx = ctx

    def build(self, hp: kt.HyperParameters) -> Any:
        import keras

        ctx = self.ctx
        if ctx.active is None or ctx.builder is None:
            raise kt.errors.FatalError("SpaceHyperModel.build runs only inside a recorded trial")
        from cifar_hpo.search.models.precision import apply_precision

        keras.utils.set_random_seed(ctx.active.seed)  # KerasTuner cleared the session just before
        apply_precision(ctx.settings.precision, ctx.active.trial)  # clear_session reset the policy too
        if ctx.stats is None:
            ctx.stats = ctx.split.train_channel_stats
        return ctx.builder(ctx.active.config, ctx.stats, len(ctx.split.x_train), ctx.settings.epochs,
                           ctx.active.seed)

    def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        from cifar_hpo.search.models.cnn import cnn_inputs
        from cifar_hpo.search.models.training import fit_tracked, steps_per_epoch

        ctx, active = self.ctx, self.ctx.active
        if active is None:
            raise kt.errors.FatalError("SpaceHyperModel.fit runs only inside a recorded trial")
        split, batch_size = ctx.split, active.config.batch_size
        initial = int(kwargs.get("initial_epoch", 0))
        epochs = int(kwargs.get("epochs", ctx.settings.epochs))
        if initial:  # resume the learning-rate schedule where the earlier round stopped
            model.optimizer.iterations.assign(initial * steps_per_epoch(len(split.x_train), batch_size))
        inputs = cnn_inputs(active.config, split, seed=active.seed, tta=ctx.settings.tta)
        # KerasTuner's callbacks (e.g. the checkpoint Hyperband continues from) come after the validation
        # scorer, so they read the same val_accuracy as the trial.
        active.model = model
        active.result = fit_tracked(model, inputs.train, None, epochs=epochs, initial_epoch=initial,
                                    n_train=len(split.x_train), trial=ReportOnly(active.trial),
                                    callbacks=[*inputs.callbacks, *kwargs.get("callbacks", [])])
        return {OBJECTIVE: active.result.best_val_accuracy}
