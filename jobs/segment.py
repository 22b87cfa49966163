"""spark-submit entry point for the `segment` stage: `spark-submit jobs/segment.py --conf conf/local.yaml [--set k=v]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
