"""The Horovod processes seen from the driver: launched with `horovod.spark.run` (Gloo), their output forwarded into
the log file with rank 0's epoch lines on the train stage's progress line, and the first rank's failure in the
error a user reads."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time

from behavior_spark import artifacts, console


class TrainingError(RuntimeError):
    """A Horovod rank failed; the message names the rank and its error."""


def run_workers(train_fn, num_proc: int, error_dir: str) -> list[dict]:
    """`horovod.spark.run` with Gloo; results sorted by rank. A failed rank raises TrainingError with its error."""
    import horovod.spark

    try:
        output = RankOutput()
        results = horovod.spark.run(
            _guarded(train_fn, error_dir), num_proc=num_proc, use_gloo=True, verbose=0, stdout=output, stderr=output
        )
    except Exception as error:
        raise TrainingError(_first_failure(error_dir) or f"Horovod training failed: {error}") from error
    finally:
        artifacts.delete_folder(error_dir)
    return sorted(results, key=lambda r: r["rank"])


def _guarded(train_fn, error_dir: str):
    """Wrap a worker function so its exception is written to `error_dir` before the process exits."""

    def guarded():
        try:
            return train_fn()
        except BaseException as error:
            rank = os.environ.get("HOROVOD_RANK", "?")
            record = {"rank": rank, "error": f"{type(error).__name__}: {error}", "at": time.time()}
            artifacts.write_bytes(artifacts.join(error_dir, f"rank-{rank}.json"), json.dumps(record).encode())
            raise

    return guarded


def _first_failure(error_dir: str) -> str | None:
    """The earliest recorded error: the rank that failed first, not the ones that lost their peer after it."""
    records = [json.loads(artifacts.read_bytes(artifacts.join(error_dir, n))) for n in artifacts.list_names(error_dir)]
    if not records:
        return None
    first = min(records, key=lambda r: r["at"])
    return f"Horovod rank {first['rank']} failed: {first['error']}"


EPOCH_LINE = re.compile(r"\[0\]<stdout>:epoch (?P<epoch>\d+)/(?P<epochs>\d+): (?P<detail>.*)")


def epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """What rank 0 prints after an epoch (the driver reads it from Horovod's forwarded output, `EPOCH_LINE`)."""
    loss, validation = logs.get("loss"), logs.get("val_loss")
    shown = [f"loss {loss:.4f}" if loss is not None else "", f"validation {validation:.4f}" if validation else ""]
    return f"epoch {epoch}/{epochs}: " + ", ".join(s for s in shown if s)


class RankOutput(io.TextIOBase):
    """Where Horovod forwards the ranks' output: the log file (standard error), and rank 0's epoch lines onto the
    stage's progress line."""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        for line in text.splitlines():
            if found := EPOCH_LINE.search(line):
                console.step("train", found["detail"], int(found["epoch"]), int(found["epochs"]))
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()
