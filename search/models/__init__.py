"""Data, augmentation, training (through a small reporter protocol), the cnn and inception models, the
frozen-trunk feature cache. TensorFlow is imported here, lazily by the callers."""
