"""CPU threads per worker."""

from __future__ import annotations

import os


def limit_cpu_threads(threads: int | None) -> None:
    """A fair share of cores per worker: TensorFlow otherwise sizes its pools for the whole machine."""
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
