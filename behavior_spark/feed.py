"""The training data feed: Parquet row groups through Petastorm into fixed-size tf.data batches, fast.

Two things make Petastorm's stock `make_tf_dataset` slow on this data (measured in `bench feed`):
- it decodes an array column row by row (`to_pandas()` then `np.vstack` of Python lists), and
- it unbatches every row group into single rows and batches them again, one row at a time through TensorFlow.
So the training table is written wide, one scalar Parquet column per array element (`numeric_0`, ...), which
Petastorm's columnar reader (`make_batch_reader`) decodes at Arrow speed; each row group is stacked back into
matrices with one vectorised op, and `rebatch` cuts the stream of variable-size groups into fixed-size batches.

The Spark side (`to_wide`) is a plain column projection; the TensorFlow side is imported only on workers.
"""

from __future__ import annotations

import warnings

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F


def to_wide(df: DataFrame, widths: dict[str, int]) -> DataFrame:
    """Replace each fixed-length array column `name` by scalar columns `name_0` .. `name_{width-1}`."""
    return df.select(*wide_columns(widths), *(c for c in df.columns if c not in widths))


def wide_columns(widths: dict[str, int]) -> list[Column]:
    """The array columns' elements as scalar columns, in order."""
    return [F.col(name)[i].alias(element(name, i)) for name, width in widths.items() for i in range(width)]


def element(name: str, index: int) -> str:
    return f"{name}_{index}"


def open_reader(file_urls: list[str], rank: int, size: int, threads: int, seed: int):
    """An endless, row-group-shuffled Petastorm reader of this rank's shard; stop it with `close(reader)`."""
    from petastorm import make_batch_reader

    return make_batch_reader(
        file_urls,
        cur_shard=rank,
        shard_count=size,
        num_epochs=None,  # endless: every rank runs the same number of steps, whatever its shard's size
        workers_count=threads,
        shuffle_row_groups=True,
        seed=seed,
    )


def close(reader) -> None:
    reader.stop()
    reader.join()


def batches(reader, widths: dict[str, int], labels: list[str], batch_size: int):
    """A tf.data.Dataset of ({name: matrix}, {label: vector}) batches of exactly `batch_size` rows."""
    import tensorflow as tf
    from petastorm.tf_utils import make_petastorm_dataset

    @tf.autograph.experimental.do_not_convert
    def stack(group):
        inputs = {
            name: tf.stack([getattr(group, element(name, i)) for i in range(width)], axis=1)
            for name, width in widths.items()
        }
        return inputs, {label: getattr(group, label) for label in labels}

    return (
        make_petastorm_dataset(reader)
        .map(stack, num_parallel_calls=tf.data.AUTOTUNE)
        .rebatch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def petastorm_cache_url(location: str) -> str:
    """Petastorm wants a URL every worker can open: dbfs:/ through the /dbfs mount, local paths as file://."""
    if location.startswith("dbfs:"):
        return "file:///dbfs/" + location.removeprefix("dbfs:").lstrip("/")
    return location if "://" in location else f"file://{location}"


class converter:
    """A Petastorm converter over a DataFrame, materialised under `cache_url` and deleted on exit."""

    def __init__(self, spark: SparkSession, cache_url: str, df: DataFrame):
        from petastorm.spark import SparkDatasetConverter, make_spark_converter

        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.converter = make_spark_converter(df)

    def __enter__(self):
        return self.converter

    def __exit__(self, *exc) -> None:
        self.converter.delete()
