"""HOW trials run: CLI, study settings, worker loop, launcher, data pipeline, models and training.

The only package that imports TensorFlow, and only lazily inside functions, so `hpo --help` is fast.
"""
