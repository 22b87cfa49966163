"""Run a benchmark: `python -m bench <name> [--sizes N,...]`; prints a Markdown table, saves it in bench/results."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench import bounds, ceiling, feed, gpu_check, heads, incremental, models, pseudonym, score, stages

BENCHES = {
    "stages": stages.main,
    "feed": feed.main,
    "score": score.main,
    "pseudonym": pseudonym.main,
    "models": models.main,
    "incremental": incremental.main,
    "gpu-check": gpu_check.main,
    "heads": heads.main,
    "ceiling": ceiling.main,
    "bounds": bounds.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--sizes", default="1000000,4000000,16000000", help="raw rows per step, comma separated")
    parser.add_argument("--workdir", default=".cache/bench", help="scratch folder for generated data and tables")
    parser.add_argument("--logs", help="ceiling: the logs, comma separated (generated, cdnow, completejourney; all)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where the table is saved")
    args = parser.parse_args()
    if args.logs and args.name != "ceiling":
        parser.error("--logs is for the ceiling bench")
    os.environ.setdefault("BEHAVIOR_SPARK_PSEUDONYM_KEY", "benchmark-only-key-not-a-secret")
    sizes, workdir = [int(s) for s in args.sizes.split(",")], Path(args.workdir)
    if args.logs:
        table = ceiling.main(sizes, workdir, tuple(args.logs.split(",")))
    else:
        table = BENCHES[args.name](sizes, workdir)
    print(table)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
