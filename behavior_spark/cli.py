"""`behavior-spark <stage>`: the command line shared by the console script and the spark-submit jobs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import IO

from rich.console import Console

from behavior_spark import console
from behavior_spark.config import ConfigError, Settings, load_settings

STAGE_NAMES = ["generate", "inspect", "ingest", "featurize", "train", "score", "segment", "export", "report", "run"]
EXIT_FAILED, EXIT_BAD_CONFIG = 1, 2
DEFAULT_CONF = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"
log = logging.getLogger("behavior_spark")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="behavior-spark", description="Customer insight from behaviour logs.")
    parser.add_argument(
        "stage",
        choices=STAGE_NAMES,
        help="the stage to run; `run` runs ingest to report in order; `inspect` shows what ingest would do",
    )
    parser.add_argument(
        "--conf",
        type=Path,
        default=DEFAULT_CONF if DEFAULT_CONF.is_file() else None,
        help=f"settings file (default: {DEFAULT_CONF})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting; repeatable",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="train: a retry of run train.run_id continues from its last checkpoint (train.resume=true)",
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=None,
        metavar="FRACTION",
        help="inspect: look at this fraction of the rows (0-1) instead of all of them",
    )
    args = parser.parse_args(argv)
    if args.resume:
        args.overrides.append("train.resume=true")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings(args.conf, args.overrides)
    except ConfigError as error:
        print(f"behavior-spark: bad configuration: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    log_file, terminal = console.open_log_file(settings.log.dir, args.stage)
    configure_logging(settings, terminal)
    screen = Console(file=terminal, width=None if terminal.isatty() else 120)
    screen.print(f"behavior-spark {args.stage}: the full log is in {log_file}")
    try:
        run(args.stage, settings, screen, args.sample)
    except ConfigError as error:
        log.error("bad configuration: %s", error)
        return EXIT_BAD_CONFIG
    except Exception as error:  # the last line a user reads names the stage and the cause
        log.debug("traceback", exc_info=True)
        log.error("%s failed: %s: %s (more in %s)", args.stage, type(error).__name__, _first_line(error), log_file)
        return EXIT_FAILED
    return 0


def run(stage: str, settings: Settings, screen: Console, sample: float | None = None) -> object:
    """Run `stage` (or `run`: the pipeline); print what a person reads to standard output."""
    from behavior_spark import pipeline
    from behavior_spark.session import get_spark

    spark = get_spark(settings.spark)
    if stage == "inspect":
        from behavior_spark.ingest import inspect

        look = inspect.run(spark, settings, sample)
        print(inspect.render(look))
        return look
    lake_root = settings.lake.root
    if stage != "run":
        return {stage: pipeline.run_stage(stage, spark, settings, screen)}  # its line on the console says it all
    results = pipeline.run_all(spark, settings, screen)
    print(console.summary(results, lake_root), end="")
    return results


def configure_logging(settings: Settings, terminal: IO[str]) -> None:
    """Everything into the log file (standard error now points there): our own progress at the configured level,
    every library's from WARNING up; warnings and errors of any logger on the terminal as well."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger().addHandler(console.console_handler(terminal))
    logging.captureWarnings(True)  # Python warnings through logging: in the file, and on the terminal
    log.setLevel(settings.log.level)
    logging.getLogger("petastorm").setLevel(logging.ERROR)  # advice about file sizes of its own cache
    # Inherited by Spark's Python workers and the Horovod processes, which start after this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
