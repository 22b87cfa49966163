"""behavior-spark: raw user-behaviour logs to customer insight on Spark."""

import os

# TensorFlow 2.18's `tf.keras` is Keras 3 unless this is set before TensorFlow is imported; the model, its .h5 files
# and Horovod's Keras integration use the Keras 2 API (the tf-keras package). Every process that runs the model
# (driver, Horovod workers, scoring Python workers) imports this package first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
