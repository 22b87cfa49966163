"""behavior-spark: raw user-behaviour logs to customer insight on Spark."""

__version__ = "0.1.0"
