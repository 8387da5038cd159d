"""`--engine kerastuner`: the same spaces searched by KerasTuner, every trial recorded in the Optuna study."""
