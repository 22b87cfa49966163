"""Ingest of one commit against another on the same generated data, runs alternating in one sitting.

    .venv/bin/python -m bench.ab_ingest --base <commit> [--rows 4000000] [--rounds 2]

The base commit is checked out into a scratch git worktree; each run is a fresh process with a fresh lakehouse,
importing either that worktree's package or this checkout's, so both pay the same start-up. Alternating A, B, A, B
spreads the noise of a shared machine over both. Prints each run and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_ONE = """
import sys, time
from behavior_spark import ingest
from behavior_spark.config import load_settings
from behavior_spark.session import local_session
settings = load_settings(None, sys.argv[1:])
spark = local_session(settings.spark)
started = time.monotonic()
result = ingest.run(spark, settings)
print(ingest.__file__, file=sys.stderr)
counts = result if isinstance(result, dict) else result.as_dict()  # a dict before stage results were typed
print(round(time.monotonic() - started, 1), counts["rows_read"], counts["clean"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_ingest")
    parser.add_argument("--base", required=True, help="the commit to compare this checkout with")
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=".cache/bench/ab-ingest")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw = work / "raw"
    common = ["spark.master=local[2]", "spark.driver_memory=8g", f"ingest.input={raw}"]
    generate(raw, args.rows)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True)
        try:
            times: dict[str, list[float]] = {"base": [], "this": []}
            for round_ in range(args.rounds):
                for name, tree in (("base", base), ("this", ROOT)):
                    lake_root = work / f"lake-{name}-{round_}"
                    settings = [*common, f"lake.root={lake_root}", f"ingest.source={tree}/conf/sources/rees46.yaml"]
                    seconds, rows_read, clean = run_ingest(tree, settings)
                    times[name].append(seconds)
                    print(f"{name} round {round_}: {seconds} s ({rows_read} rows read, {clean} clean)", flush=True)
                    shutil.rmtree(lake_root, ignore_errors=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    base_s, this_s = statistics.median(times["base"]), statistics.median(times["this"])
    print(f"median: base {base_s} s, this {this_s} s, this / base = {this_s / base_s:.2f}x ({args.rows:,} raw rows)")


def generate(raw: Path, rows: int) -> None:
    overrides = [f"generate.rows={rows}", f"generate.output={raw}", f"generate.files={max(2, rows // 500_000)}"]
    code = (
        "from behavior_spark import generate; from behavior_spark.config import load_settings;"
        "from behavior_spark.session import local_session;"
        f"s = load_settings(None, {overrides!r}); generate.run(local_session(s.spark), s)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def run_ingest(tree: Path, settings: list[str]) -> tuple[float, int, int]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),  # before the editable install of this checkout
        "BEHAVIOR_SPARK_JARS": str(ROOT / ".cache" / "jars"),
        "BEHAVIOR_SPARK_PSEUDONYM_KEY": "benchmark-only-key-not-a-secret",
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE, *settings], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ingest failed in {tree}:\n{done.stderr[-3000:]}")
    if f"{tree}/behavior_spark/ingest" not in done.stderr:  # ingest.py, or the ingest/ package
        raise RuntimeError(f"the run in {tree} imported another checkout's package:\n{done.stderr[-500:]}")
    seconds, rows_read, clean = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(rows_read), int(clean)


if __name__ == "__main__":
    main()
