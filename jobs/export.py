"""spark-submit entry point: `spark-submit jobs/export.py --conf conf/local.yaml [--set section.key=value]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
