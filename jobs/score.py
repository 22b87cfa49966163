"""spark-submit entry point for the `score` stage: `spark-submit jobs/score.py --conf conf/local.yaml [--set k=v]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
