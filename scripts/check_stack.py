"""Import each piece of the stack and start a Delta-enabled SparkSession; name the piece that fails."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.simplefilter("ignore")


def check_tensorflow() -> str:
    import tensorflow as tf

    return tf.__version__


def check_horovod() -> str:
    import horovod
    import horovod.tensorflow.keras as hvd

    hvd.init()
    return f"{horovod.__version__} (size {hvd.size()}, gloo built: {hvd.gloo_built()})"


def check_petastorm() -> str:
    import petastorm
    from petastorm.spark import make_spark_converter  # noqa: F401

    return petastorm.__version__


def check_delta_session() -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import delta  # noqa: F401

    from behavior_spark.config import SparkSettings
    from behavior_spark.session import local_session

    spark = local_session(SparkSettings(master="local[1]", shuffle_partitions=1))
    with tempfile.TemporaryDirectory() as folder:
        spark.range(3).write.format("delta").save(f"{folder}/check")
        rows = spark.read.format("delta").load(f"{folder}/check").count()
    version = spark.version
    spark.stop()
    if rows != 3:
        raise RuntimeError(f"wrote 3 rows to a Delta table, read back {rows}")
    return f"Spark {version}, Delta table written and read"


CHECKS = [
    ("tensorflow", check_tensorflow),
    ("horovod.tensorflow.keras", check_horovod),
    ("petastorm", check_petastorm),
    ("delta + SparkSession", check_delta_session),
]


def main() -> int:
    failed = []
    for name, check in CHECKS:
        try:
            print(f"  ok   {name}: {check()}")
        except Exception as error:  # report every piece, then fail
            failed.append(name)
            print(f"  FAIL {name}: {type(error).__name__}: {error}")
            traceback.print_exc(limit=3)
    if failed:
        print(f"stack check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
