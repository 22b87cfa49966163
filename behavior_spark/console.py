"""What a person sees on the console, and the log file that keeps everything else.

A command of the CLI opens a log file (`log.dir`) and points the process's standard error at it, so whatever the
libraries write there goes to the file: the JVM's start-up lines, TensorFlow's native start-up chatter, Spark's
Python workers and the Horovod ranks (their output is forwarded here). The terminal keeps a duplicate of the old
standard error for what we write for a person: warnings and errors, a line per stage that moves while it works (in a
terminal only; in a file or under a scheduler the same news arrives as plain log lines), and the summary table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from behavior_spark.results import StageResult

log = logging.getLogger(__name__)
SPARK_POLL_SECONDS = 0.5
_display: Display | None = None  # the live line of the stage at work, where the console is a terminal


def open_log_file(folder: str, command: str) -> tuple[Path, IO[str]]:
    """A new log file for this command, standard error (fd 2, which child processes inherit) pointed at it, and a
    stream to the terminal that standard error was before."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{command}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stderr.flush()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    return path, terminal


def console_handler(terminal: IO[str]) -> logging.Handler:
    """Warnings and errors of any logger, on the terminal, in one short line each."""
    handler = logging.StreamHandler(terminal)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler


def step(stage: str, detail: str, done: int | None = None, total: int | None = None) -> None:
    """News from a stage at work ("batch 2/5: 1,200,000 rows"): the live line in a terminal, a log line always."""
    counted = f" {done}/{total}" if done is not None and total is not None else ""
    log.info("%s%s: %s", stage, counted, detail)
    if _display is not None:
        _display.update(detail, done, total)


class Display:
    """One live line for the stage at work: its name, its news, the running Spark job's tasks, the time so far."""

    def __init__(self, console: Console, stage: str, spark=None):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<9}"),
            TextColumn("{task.fields[detail]}"),
            TextColumn("[dim]{task.fields[tasks]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(stage, total=None, stage=stage, detail="", tasks="")
        self.tracker = spark.sparkContext.statusTracker() if spark is not None else None
        self.stopped = threading.Event()

    def update(self, detail: str, done: int | None, total: int | None) -> None:
        shown = f"{detail} ({done}/{total})" if done is not None and total is not None else detail
        self.progress.update(self.task, detail=shown)

    def watch_spark(self) -> None:
        """Every half second: the tasks done of the Spark stages running now (a few numbers from the driver)."""
        tracker = self.tracker
        while tracker is not None and not self.stopped.wait(SPARK_POLL_SECONDS):
            with contextlib.suppress(Exception):  # a stage can end between the two calls
                infos = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
                done = sum(i.numCompletedTasks for i in infos if i)
                total = sum(i.numTasks for i in infos if i)
                self.progress.update(self.task, tasks=f"Spark tasks {done}/{total}" if total else "")


@contextlib.contextmanager
def live(console: Console | None, stage: str, spark=None) -> Iterator[None]:
    """A moving line for `stage` while the block runs, where `console` is a terminal; nothing otherwise."""
    global _display
    if console is None or not console.is_terminal:
        yield
        return
    tracks_spark = spark is not None and hasattr(spark, "sparkContext") and _has_context(spark)
    _display = Display(console, stage, spark if tracks_spark else None)
    watcher = threading.Thread(target=_display.watch_spark, daemon=True) if tracks_spark else None
    try:
        with _display.progress:
            if watcher:
                watcher.start()
            yield
    finally:
        _display.stopped.set()
        _display = None


def _has_context(spark) -> bool:
    try:
        return spark.sparkContext is not None
    except Exception:  # a Connect session has none
        return False


def summary_table(results: dict[str, StageResult], lake_root: str) -> Table:
    """Per stage: what went in, what came out, how long."""
    table = Table(title=f"behavior-spark: lakehouse at {lake_root}", title_justify="left", expand=False)
    table.add_column("stage", style="bold")
    table.add_column("in")
    table.add_column("out")
    table.add_column("time", justify="right")
    for stage, result in results.items():
        table.add_row(stage, result.went_in(), result.came_out(), f"{result.seconds:.0f} s")
    return table


def summary(results: dict[str, StageResult], lake_root: str, width: int = 120) -> str:
    """The summary table and, under it, what a user should read (quarantine reasons, warnings), as plain text."""
    screen = Console(file=io.StringIO(), width=width, color_system=None)
    screen.print(summary_table(results, lake_root))
    for stage, result in results.items():
        for note in result.notes():
            screen.print(f"{stage}: {note}", overflow="fold")
    return screen.file.getvalue()  # type: ignore[attr-defined]
