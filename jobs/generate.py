"""spark-submit entry point for the `generate` stage: `spark-submit jobs/generate.py --conf conf/local.yaml [--set k=v]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
